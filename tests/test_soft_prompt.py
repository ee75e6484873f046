"""Soft prompts: text initialisation, relevance interpolation, prepending into T5 and the decoder LM."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qgjax.models import soft_prompt as sp
from qgjax.models import t5

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "true", "false", "write", "a", "query", "for", "this",
         "document", "cats", "sleep", "all", "day"]


@pytest.fixture(scope="module")
def tokenizer():
  transformers = pytest.importorskip("transformers")
  return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


@pytest.fixture(scope="module")
def tiny_t5():
  config = t5.T5Config(vocab_size=len(WORDS), d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=1,
                       num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=16)
  model = t5.T5Model(config)
  return model, t5.init_params(model, seed=0)


def test_init_is_the_token_embeddings_of_the_text(tokenizer):
  table = np.random.default_rng(0).normal(size=(len(WORDS), 8)).astype(np.float32)
  ids = tokenizer("write a query", add_special_tokens=False)["input_ids"]
  assert ids == [7, 8, 9]
  long = sp.init_soft_prompt(table, tokenizer, "write a query", inst_len=7, rel_len=3)
  np.testing.assert_array_equal(long["instruction"], table[[7, 8, 9, 7, 8, 9, 7]])  # repeated
  np.testing.assert_array_equal(long["true"], table[[5, 5, 5]])
  np.testing.assert_array_equal(long["false"], table[[6, 6, 6]])
  short = sp.init_soft_prompt(table, tokenizer, "write a query", inst_len=2, rel_len=1)
  np.testing.assert_array_equal(short["instruction"], table[[7, 8]])  # truncated
  assert short["true"].shape == (1, 8)
  with pytest.raises(Exception, match="no tokens"):
    sp.init_soft_prompt(table, tokenizer, "", inst_len=2, rel_len=1)


def test_relevance_prompt_interpolates_true_and_false():
  rng = np.random.default_rng(1)
  params = {k: jnp.asarray(rng.normal(size=(n, 6)).astype(np.float32))
            for k, n in (("instruction", 4), ("true", 3), ("false", 3))}
  r = jnp.asarray([1.0, 0.0, 0.3])
  prefix = np.asarray(sp.build_prefix(params, r))
  assert prefix.shape == (3, 7, 6) and prefix.dtype == np.float32
  for row in range(3):
    np.testing.assert_array_equal(prefix[row, :4], params["instruction"])
  np.testing.assert_array_equal(prefix[0, 4:], params["true"])
  np.testing.assert_array_equal(prefix[1, 4:], params["false"])
  np.testing.assert_allclose(prefix[2, 4:], 0.3 * np.asarray(params["true"]) + 0.7 * np.asarray(params["false"]),
                             atol=1e-6)
  # The module form gives the same prefix and carries ("prompt_len", "embed") on every parameter.
  module = sp.SoftPrompt(inst_len=4, rel_len=3, d_model=6)
  boxed = module.init(jax.random.PRNGKey(0), r)["params"]
  assert {k: v.names for k, v in boxed.items()} == {k: ("prompt_len", "embed") for k in params}
  np.testing.assert_array_equal(module.apply({"params": params}, r), prefix)


def test_prefix_in_t5_equals_the_prompt_tokens(tokenizer, tiny_t5):
  model, params = tiny_t5
  table = params["shared"]["embedding"]
  inst_ids = tokenizer("write a query for this document", add_special_tokens=False)["input_ids"]
  soft = sp.init_soft_prompt(table, tokenizer, "write a query for this document", inst_len=len(inst_ids), rel_len=1)
  tokens = jnp.asarray([[13, 14, 15, 16], [13, 14, 0, 0]])
  mask = tokens != 0
  embeds = model.apply({"params": params}, tokens, method=t5.T5Model.embed)
  for r, word in ((1.0, 5), (0.0, 6)):
    x, m = sp.prepend(sp.build_prefix(soft, jnp.full((2,), r)), embeds, mask)
    assert x.shape == (2, len(inst_ids) + 1 + 4, 16) and m.shape == x.shape[:2]
    got = model.apply({"params": params}, None, m, embeds=x, method=t5.T5Model.encode)
    prompt = jnp.asarray([inst_ids + [word]] * 2)
    want = model.apply({"params": params}, jnp.concatenate([prompt, tokens], 1), m, method=t5.T5Model.encode)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_soft_prompt_trains_through_a_frozen_t5(tokenizer, tiny_t5):
  model, params = tiny_t5
  soft = sp.init_soft_prompt(params["shared"]["embedding"], tokenizer, "write a query", inst_len=4, rel_len=2)
  tokens = jnp.asarray([[13, 14, 15], [16, 13, 0]])
  mask = tokens != 0
  dec = jnp.asarray([[0, 13, 14], [0, 15, 16]])

  @jax.jit
  def loss(soft_params, r):
    embeds = model.apply({"params": params}, tokens, method=t5.T5Model.embed)
    x, m = sp.prepend(sp.build_prefix(soft_params, r), embeds, mask)
    logits = model.apply({"params": params}, None, m, dec, embeds=x)
    return -jnp.mean(jax.nn.log_softmax(logits)[:, :, 13])

  g = jax.grad(loss)(soft, jnp.asarray([1.0, 0.0]))
  for name in ("instruction", "true", "false"):
    assert np.abs(np.asarray(g[name])).sum() > 0
  # r = 1 for every row: the false prompt gets no gradient.
  g1 = jax.grad(loss)(soft, jnp.asarray([1.0, 1.0]))
  assert np.abs(np.asarray(g1["false"])).max() == 0


def test_prefix_in_the_decoder_lm_equals_the_prompt_tokens(tokenizer):
  decoder = pytest.importorskip("qgjax.models.decoder")
  config = decoder.DecoderConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=24, num_layers=1,
                                 num_heads=2, num_kv_heads=1, head_dim=8, scan_layers=False)
  model = decoder.DecoderLM(config)
  tokens = jnp.asarray([[13, 14, 15]])
  pos = jnp.arange(3)[None]
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), tokens, pos))["params"]
  inst_ids = tokenizer("write a query", add_special_tokens=False)["input_ids"]
  soft = sp.init_soft_prompt(params["embed_tokens"]["embedding"], tokenizer, "write a query",
                             inst_len=len(inst_ids), rel_len=1)
  embeds = model.apply({"params": params}, tokens, method=decoder.DecoderLM.embed)
  x, m = sp.prepend(sp.build_prefix(soft, jnp.asarray([0.0])), embeds, jnp.ones((1, 3), bool))
  n = x.shape[1]
  got, _ = model.apply({"params": params}, None, jnp.arange(n)[None], m, embeds=x)
  full = jnp.asarray([inst_ids + [6, 13, 14, 15]])
  want, _ = model.apply({"params": params}, full, jnp.arange(n)[None], m)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
