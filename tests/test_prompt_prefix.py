"""A prompt prefix common to every prompt, prefilled once per batch (qgjax.sampling.decoder
`prefix_tokens`, Sampler `prefix_tokens`, PromptBuilder.common_prefix): the same samples as the
whole prompts prefilled row by row, on a tiny random decoder in f32."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from qgjax.models.decoder import DecoderConfig, DecoderLM
from qgjax.sampling.decoder import generate_decoder, prefill_chunk_count
from qgjax.sampling.engine import Sampler
from qgjax.sampling.keys import id_hashes, prompt_keys
from qgjax.sampling.logits import SamplingParams

CONFIG = DecoderConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, attention_bias=True, max_position_embeddings=128,
                       rms_norm_eps=1e-5)


def _model():
  model = DecoderLM(CONFIG)
  params = model.init(jax.random.key(3), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32))["params"]
  # O(1) logits so that a wrong attention mask or position changes the argmax
  params = jax.tree.map(lambda x: x * 8.0 if x.ndim == 2 else x, params)
  return model, params


def _prompts(prefix_len: int, rest_lengths, seed: int = 0):
  rng = np.random.default_rng(seed)
  prefix = rng.integers(1, CONFIG.vocab_size, prefix_len).tolist()
  rests = [rng.integers(1, CONFIG.vocab_size, n).tolist() for n in rest_lengths]
  return prefix, rests


def _left_pad(lists, length):
  tokens = np.zeros((len(lists), length), np.int32)
  mask = np.zeros((len(lists), length), bool)
  for i, t in enumerate(lists):
    tokens[i, length - len(t):] = t
    mask[i, length - len(t):] = True
  return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.parametrize("chunk_tokens", [0, 8])
@pytest.mark.parametrize("sampling", [SamplingParams(max_new_tokens=6, temperature=0.0),
                                      SamplingParams(max_new_tokens=6, num_samples=3, temperature=1.0)])
def test_prefix_prefilled_once_gives_the_samples_of_the_whole_prompts(sampling, chunk_tokens):
  model, params = _model()
  prefix, rests = _prompts(9, [5, 1, 7, 3])
  ids = ["d0", "d1", "d2", "d3"]
  keys = prompt_keys(np.uint32(0), jnp.asarray(id_hashes(ids)))
  whole_t, whole_m = _left_pad([prefix + r for r in rests], 16)
  rest_t, rest_m = _left_pad(rests, 7)
  if chunk_tokens:   # the prefixed prefill runs in 2 groups of 2 prompts
    assert prefill_chunk_count(4, 7, chunk_tokens) == 2
  ref = generate_decoder(model, params, whole_t, whole_m, keys, sampling)
  out = generate_decoder(model, params, rest_t, rest_m, keys, sampling, prefill_chunk_tokens=chunk_tokens,
                         prefix_tokens=jnp.asarray(prefix, jnp.int32))
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
  np.testing.assert_array_equal(np.asarray(out.lengths), np.asarray(ref.lengths))
  np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(ref.logprobs), rtol=1e-4, atol=1e-4)
  # and a different prefix changes them: the rows do attend to it
  other = generate_decoder(model, params, rest_t, rest_m, keys, sampling,
                           prefix_tokens=jnp.asarray(prefix[::-1], jnp.int32))
  assert not np.array_equal(np.asarray(other.tokens), np.asarray(ref.tokens))


def test_sampler_uses_the_prefix_only_for_batches_that_start_with_it():
  model, params = _model()
  prefix, rests = _prompts(9, [5, 2, 6])
  sampling = SamplingParams(max_new_tokens=5, num_samples=2, temperature=1.0)
  plain = Sampler.for_decoder(model, params, sampling, batch_size=8, seed=7)
  shared = Sampler.for_decoder(model, params, sampling, batch_size=8, seed=7, prefix_tokens=prefix)
  prompts = [prefix + r for r in rests]
  ids = ["a", "b", "c"]
  ref, out = plain.run(prompts, ids, 16), shared.run(prompts, ids, 16)
  assert shared.prefixed_prompts == 3 and plain.prefixed_prompts == 0
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, rtol=1e-4, atol=1e-4)
  # one prompt without the prefix: the batch is prefilled whole, same samples as the plain sampler
  mixed = prompts[:2] + [[5] + rests[2]]
  np.testing.assert_array_equal(shared.run(mixed, ids, 16).tokens, plain.run(mixed, ids, 16).tokens)
  assert shared.prefixed_prompts == 3
  # a bucket no longer than the prefix: prefilled whole too
  assert not shared._starts_with_prefix([prefix], len(prefix))


def test_common_prefix_is_what_every_prompt_starts_with(tmp_path):
  from transformers import AutoTokenizer

  from qgjax.sampling.prompts import PromptBuilder, default_prompt_config
  from tests.tiny_lm import make_tiny_lm

  tok = AutoTokenizer.from_pretrained(make_tiny_lm(str(tmp_path / "lm")))
  docs = ["the coral reef is damaged by warm water", "vitamin d helps bones", "x"]
  for mode in ("plain", "few_shot", "contrastive", "expansion"):
    builder = PromptBuilder(default_prompt_config(mode), tok)
    prefix = builder.common_prefix()
    if mode == "expansion":
      prompts = [builder.expansion_prompt(d) for d in docs]
    else:
      prompts = [builder.document_prompt(d, docs[-1] if mode == "contrastive" else None) for d in docs]
    assert all(p[:len(prefix)] == prefix and len(p) > len(prefix) for p in prompts), mode
    # it stops where the prompts begin to differ (one token early, for merges at the boundary)
    first_diff = next(i for i in range(len(prompts[0])) if prompts[0][i] != prompts[1][i])
    assert len(prefix) == first_diff - 1, mode
  few_shot = PromptBuilder(default_prompt_config("few_shot"), tok).common_prefix()
  plain = PromptBuilder(default_prompt_config("plain"), tok).common_prefix()
  assert len(few_shot) > len(plain) + 50   # the examples are part of the few-shot prefix


def test_prefix_refused_where_it_cannot_apply():
  from qgjax.errors import ConfigError

  model, params = _model()
  with pytest.raises(ConfigError, match="shared_prompt=True"):
    Sampler.for_decoder(model, params, SamplingParams(), batch_size=2, shared_prompt=False, prefix_tokens=[1, 2])
