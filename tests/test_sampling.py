"""The jitted sampler on real qgjax models (tiny random Llama / T5): greedy, top-k/top-p, beam
search against transformers, seeds independent of batch size and device count, compile count,
log-probs against a full forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qgjax.models.decoder import positions_from_mask
from qgjax.models.registry import load_decoder
from qgjax.sampling.batching import bucketed, pad_prompts
from qgjax.sampling.engine import Sampler, local_data_mesh
from qgjax.sampling.decoder import prefill_chunk_count
from qgjax.sampling.logits import SamplingParams, choose_tokens, logsumexp, top_k
from qgjax.models.hf_checkpoint import write_safetensors_dir

N_NEW = 6


def write_tiny_llama(path: str, *, vocab: int = 97, hidden: int = 32, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2, std: float = 0.5, seed: int = 0) -> str:
  """A random Llama in HF layout. std 0.5 gives peaked, varied next-token distributions (with
  small weights a random LM repeats one token, which would make the tests below weak)."""
  hd, ff = hidden // heads, 2 * hidden
  cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
         "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": heads,
         "num_key_value_heads": kv_heads, "head_dim": hd, "hidden_act": "silu", "rms_norm_eps": 1e-6,
         "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": False,
         "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
  rng = np.random.default_rng(seed)
  w = lambda *shape: (rng.standard_normal(shape) * std).astype(np.float32)
  t = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": np.ones(hidden, np.float32),
       "lm_head.weight": w(vocab, hidden)}
  for i in range(layers):
    p = f"model.layers.{i}."
    t.update({p + "input_layernorm.weight": 1 + w(hidden) / 5, p + "post_attention_layernorm.weight": 1 + w(hidden) / 5,
              p + "self_attn.q_proj.weight": w(heads * hd, hidden), p + "self_attn.k_proj.weight": w(kv_heads * hd, hidden),
              p + "self_attn.v_proj.weight": w(kv_heads * hd, hidden), p + "self_attn.o_proj.weight": w(hidden, heads * hd),
              p + "mlp.gate_proj.weight": w(ff, hidden), p + "mlp.up_proj.weight": w(ff, hidden),
              p + "mlp.down_proj.weight": w(hidden, ff)})
  write_safetensors_dir(t, path, cfg)
  return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  path = write_tiny_llama(str(tmp_path_factory.mktemp("tiny_llama")))
  model, params, _ = load_decoder(path, tokenizer=False)
  return path, model, params


def _prompts(vocab: int, count: int, seed: int = 0, lo: int = 3, hi: int = 14) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(4, vocab, size=int(rng.integers(lo, hi))).tolist() for _ in range(count)]


def _sample_all(model, params, sampling, prompts, *, batch_size, length=16, seed=0, devices=1, **kw):
  sampler = Sampler.for_decoder(model, params, sampling, batch_size=batch_size, seed=seed,
                                mesh=local_data_mesh(devices), **kw)
  ids = [f"doc-{i}" for i in range(len(prompts))]
  outs = [sampler.run(prompts[i:i + batch_size], ids[i:i + batch_size], length)
          for i in range(0, len(prompts), batch_size)]
  cat = lambda f: np.concatenate([getattr(o, f) for o in outs])
  return cat("tokens"), cat("logprobs"), cat("lengths"), sampler


_FORWARD = {}
REF_LEN = 32


def _forward(model, params, seq: list[int]) -> np.ndarray:
  """Full forward pass without a cache -> logits f32[len(seq), V]. The sequence is right-padded
  to REF_LEN (a causal LM's outputs at real positions do not see the padding): one compile."""
  if model not in _FORWARD:
    _FORWARD[model] = jax.jit(lambda p, t: model.apply({"params": p}, t, positions_from_mask(jnp.ones_like(t)))[0])
  tokens = np.zeros((1, REF_LEN), np.int32)
  tokens[0, :len(seq)] = seq
  return np.asarray(_FORWARD[model](params, tokens))[0, :len(seq)]


def _greedy_reference(model, params, prompt: list[int], n_new: int, eos=()) -> tuple[list[int], list[float]]:
  """Argmax decoding by full forward passes over the growing sequence (no cache, no padding)."""
  seq, toks, lps = list(prompt), [], []
  for _ in range(n_new):
    logits = _forward(model, params, seq)[-1].astype(np.float64)
    tok = int(np.argmax(logits))
    toks.append(tok)
    lps.append(float(logits[tok] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()))
    seq.append(tok)
    if tok in eos:
      break
  return toks, lps


def test_temperature_zero_and_top_k_one_equal_greedy_reference(tiny):
  _, model, params = tiny
  prompts = _prompts(model.config.vocab_size, 4)
  greedy = SamplingParams(max_new_tokens=N_NEW, temperature=0.0)
  top1 = SamplingParams(max_new_tokens=N_NEW, num_samples=2, temperature=0.8, top_k=1)
  t0, lp0, _, _ = _sample_all(model, params, greedy, prompts, batch_size=4)
  t1, lp1, _, _ = _sample_all(model, params, top1, prompts, batch_size=4)
  for i, prompt in enumerate(prompts):
    ref_toks, ref_lps = _greedy_reference(model, params, prompt, N_NEW)
    np.testing.assert_array_equal(t0[i, 0], ref_toks)
    np.testing.assert_allclose(lp0[i, 0], ref_lps, atol=1e-4)
    for j in range(2):
      np.testing.assert_array_equal(t1[i, j], ref_toks)
  # and real sampling at temperature 1 does differ from greedy somewhere
  t2, _, _, _ = _sample_all(model, params, SamplingParams(max_new_tokens=N_NEW, temperature=1.0), prompts,
                            batch_size=4)
  assert (t2[:, 0] != t0[:, 0]).any()


def test_same_seed_same_samples_at_any_batch_size_and_device_count(tiny):
  _, model, params = tiny
  prompts = _prompts(model.config.vocab_size, 16, seed=1)
  sp = SamplingParams(max_new_tokens=N_NEW, num_samples=3, temperature=1.0, top_p=0.9)
  ref_t, ref_lp, _, _ = _sample_all(model, params, sp, prompts, batch_size=4, seed=7)
  assert len({tuple(r) for r in ref_t.reshape(-1, N_NEW).tolist()}) > 40  # the 48 samples mostly differ
  for batch_size, devices in [(16, 1), (16, 8)]:
    t, lp, _, sampler = _sample_all(model, params, sp, prompts, batch_size=batch_size, seed=7, devices=devices)
    np.testing.assert_array_equal(t, ref_t, err_msg=f"batch {batch_size}, {devices} devices")
    np.testing.assert_allclose(lp, ref_lp, rtol=2e-5, atol=1e-5)  # f32 sums blocked differently per shape
  assert sampler.params["lm_head"]["kernel"].sharding.mesh.devices.size == 8
  other = sampler.run(prompts, [f"doc-{i}" for i in range(16)], 16, seed=8).tokens
  assert (other != ref_t).mean() > 0.5 and sampler.num_compiles == 1


def test_prefill_in_chunks_gives_the_same_samples(tiny):
  _, model, params = tiny
  assert prefill_chunk_count(64, 256, 1024) == 16        # 16 groups of 4 prompts x 256 tokens
  assert prefill_chunk_count(16, 16, 16, devices=8) == 2  # a group spans all 8 devices
  assert prefill_chunk_count(64, 256, 0) == prefill_chunk_count(4, 16, 1000) == 1
  prompts = _prompts(model.config.vocab_size, 16, seed=3)
  sp = SamplingParams(max_new_tokens=N_NEW, num_samples=2, temperature=1.0, top_k=20)
  ref_t, ref_lp, _, _ = _sample_all(model, params, sp, prompts, batch_size=16, prefill_chunk_tokens=0)
  for devices in (1, 8):   # 16 groups of 1 prompt; 2 groups of 8 (one per device)
    t, lp, _, _ = _sample_all(model, params, sp, prompts, batch_size=16, devices=devices, prefill_chunk_tokens=16)
    np.testing.assert_array_equal(t, ref_t, err_msg=f"{devices} devices")
    np.testing.assert_allclose(lp, ref_lp, rtol=2e-5, atol=1e-5)


def test_chunked_logsumexp_and_top_k_equal_the_plain_ones():
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((8, 4096)) * 3).astype(np.float32)   # 4 chunks of 1024 / 16 of 256
  x[0] = -np.inf                                 # a fully masked row
  x[1, :1024] = -np.inf                          # a fully masked chunk
  x[2] = np.round(x[2])                          # many ties
  x[3] = 0.0                                     # all tied: the lowest indices win
  x[4, ::7] = 9.5                                # ties at the top spread over many chunks
  x[5, 3000:] = -1e30                            # what top-p / top-k masking writes
  got = np.asarray(jax.jit(logsumexp)(x))
  want = np.asarray(jax.nn.logsumexp(x, axis=-1))
  assert got[0] == -np.inf
  np.testing.assert_allclose(got[1:], want[1:], rtol=1e-6)
  values, ids = jax.jit(lambda x: top_k(x, 10))(x[1:])
  ref_values, ref_ids = jax.lax.top_k(x[1:], 10)
  np.testing.assert_array_equal(np.asarray(ids), np.asarray(ref_ids))
  np.testing.assert_array_equal(np.asarray(values), np.asarray(ref_values))
  np.testing.assert_array_equal(np.asarray(ids)[2], np.arange(10))
  # ...and on a vocabulary that does not split into chunks (a prime) it is lax.top_k itself
  y = rng.standard_normal((3, 1031)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(top_k(y, 5)[1]), np.asarray(jax.lax.top_k(y, 5)[1]))
  np.testing.assert_allclose(np.asarray(logsumexp(y)), np.asarray(jax.nn.logsumexp(y, axis=-1)), rtol=1e-6)


def test_logprobs_match_full_forward_and_shared_prompt_matches_broadcast_cache(tiny):
  _, model, params = tiny
  prompts = _prompts(model.config.vocab_size, 4, seed=2)
  sp = SamplingParams(max_new_tokens=N_NEW, num_samples=3, temperature=1.0, top_k=20)
  toks, lps, _, _ = _sample_all(model, params, sp, prompts, batch_size=4)
  toks_b, lps_b, _, _ = _sample_all(model, params, sp, prompts, batch_size=4, shared_prompt=False)
  np.testing.assert_array_equal(toks, toks_b)
  np.testing.assert_allclose(lps, lps_b, atol=1e-5)
  for i, prompt in enumerate(prompts):
    for j in range(3):
      logp = np.asarray(jax.nn.log_softmax(_forward(model, params, prompt + toks[i, j].tolist())))
      ref = [logp[len(prompt) - 1 + k, toks[i, j, k]] for k in range(N_NEW)]
      np.testing.assert_allclose(lps[i, j], ref, atol=1e-4)


def test_eos_stops_rows_and_pads_after(tiny):
  _, model, params = tiny
  prompts = _prompts(model.config.vocab_size, 4, seed=3)
  ref_toks, _ = _greedy_reference(model, params, prompts[0], N_NEW)
  stop_at = next(k for k in range(1, N_NEW) if ref_toks[k] not in ref_toks[:k])
  eos = ref_toks[stop_at]
  sp = SamplingParams(max_new_tokens=N_NEW, temperature=0.0, eos_token_ids=(eos,), pad_token_id=0)
  toks, lps, lengths, _ = _sample_all(model, params, sp, prompts, batch_size=4)
  for i, prompt in enumerate(prompts):
    ref, ref_lp = _greedy_reference(model, params, prompt, N_NEW, eos=(eos,))
    assert lengths[i, 0] == len(ref)
    np.testing.assert_array_equal(toks[i, 0, :len(ref)], ref)
    assert (toks[i, 0, len(ref):] == 0).all() and (lps[i, 0, len(ref):] == 0).all()
  assert lengths[0, 0] == stop_at + 1 < N_NEW


def test_compile_count_one_program_per_bucket(tiny):
  _, model, params = tiny
  prompts = _prompts(model.config.vocab_size, 11, seed=4, lo=2, hi=24)
  buckets = (8, 16, 24)
  sampler = Sampler.for_decoder(model, params, SamplingParams(max_new_tokens=3, num_samples=2, top_k=5),
                                batch_size=4, mesh=local_data_mesh(1))
  items = list(enumerate(prompts))
  used, compile_s = set(), []
  for _ in range(2):  # a second pass over the corpus compiles nothing new
    for bucket, group in bucketed(items, lambda it: len(it[1]), buckets, 4):
      used.add(bucket)
      out = sampler.run([p for _, p in group], [f"d{i}" for i, _ in group], bucket)
      assert out.tokens.shape == (len(group), 2, 3)
    compile_s.append(sampler.compile_s)
  assert sampler.num_compiles == len(used) == 3
  assert compile_s[0] > 0 and compile_s[1] == compile_s[0]  # only the calls that compiled are timed


def test_pad_prompts_left_and_filler_rows():
  batch = pad_prompts([[5, 6, 7], [8]], 4, 3, pad_id=0)
  np.testing.assert_array_equal(batch.tokens, [[0, 5, 6, 7], [0, 0, 0, 8], [0, 0, 0, 0]])
  np.testing.assert_array_equal(batch.mask, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
  np.testing.assert_array_equal(batch.valid, [1, 1, 0])
  right = pad_prompts([[5, 6]], 3, 2, pad_id=0, side="right")
  np.testing.assert_array_equal(right.mask, [[1, 1, 0], [1, 0, 0]])
  with pytest.raises(ValueError):
    pad_prompts([[1] * 5], 4, 2, pad_id=0)


def test_top_k_top_p_draw_from_the_right_distribution():
  logits = jnp.log(jnp.asarray([[0.05, 0.4, 0.1, 0.3, 0.15]] * 6000))
  keys = jax.random.split(jax.random.key(0), 6000)
  probs = np.asarray([0.05, 0.4, 0.1, 0.3, 0.15])
  # top-k 3 keeps {1, 3, 4} renormalised; top-p 0.75 keeps the smallest top set with mass >= 0.75: {1, 3, 4}
  # (0.4 + 0.3 = 0.7 < 0.75); top-p 0.7 keeps {1, 3}; after top-k 2 the nucleus is taken over the
  # renormalised {1: 0.571, 3: 0.429} (as HF applies top-k, then top-p).
  for sp, kept in [(SamplingParams(top_k=3), [1, 3, 4]), (SamplingParams(top_p=0.75), [1, 3, 4]),
                   (SamplingParams(top_p=0.7), [1, 3]), (SamplingParams(top_k=2, top_p=0.6), [1, 3]),
                   (SamplingParams(top_k=2, top_p=0.55), [1])]:
    toks, lps = jax.jit(lambda l, k: choose_tokens(l, k, sp))(logits, keys)
    toks = np.asarray(toks)
    assert set(np.unique(toks)) == set(kept), sp
    freq = np.bincount(toks, minlength=5)[kept] / len(toks)
    np.testing.assert_allclose(freq, probs[kept] / probs[kept].sum(), atol=0.025)
    np.testing.assert_allclose(np.asarray(lps), np.log(probs[toks]), atol=1e-5)  # raw model log-probs
  hot = SamplingParams(temperature=2.0)
  toks, _ = jax.jit(lambda l, k: choose_tokens(l, k, hot))(logits, keys)
  flat = np.sqrt(probs) / np.sqrt(probs).sum()  # softmax(log p / 2)
  np.testing.assert_allclose(np.bincount(np.asarray(toks), minlength=5) / 6000, flat, atol=0.025)


# ---------------------------------------------------------------------------------------------
# Beam search against transformers (torch) on the same weights.

torch_ref = pytest.mark.torch_ref


@torch_ref
@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (0.5, True)])
def test_beam_search_matches_transformers_decoder(tiny, length_penalty, early_stopping):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path, model, params = tiny
  ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  prompts = _prompts(model.config.vocab_size, 3, seed=5, lo=3, hi=9)
  ref_toks = _greedy_reference(model, params, prompts[0], N_NEW)[0]
  eos = next(t for k, t in enumerate(ref_toks) if k >= 2 and t not in ref_toks[:k])  # an EOS that beams meet
  sp = SamplingParams(max_new_tokens=N_NEW, num_samples=3, num_beams=3, eos_token_ids=(eos,), pad_token_id=0,
                      length_penalty=length_penalty, early_stopping=early_stopping)
  sampler = Sampler.for_decoder(model, params, sp, batch_size=4, mesh=local_data_mesh(1))
  out = sampler.run(prompts, ["a", "b", "c"], 16)
  width = max(map(len, prompts))
  ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
  attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    hf = ref.generate(input_ids=ids, attention_mask=attn, num_beams=3, num_return_sequences=3, do_sample=False,
                      max_new_tokens=N_NEW, eos_token_id=eos, pad_token_id=0, length_penalty=length_penalty,
                      early_stopping=early_stopping, output_scores=True, return_dict_in_generate=True)
  hf_seq = hf.sequences[:, width:].numpy().reshape(3, 3, -1)
  hf_scores = hf.sequences_scores.numpy().reshape(3, 3)
  saw_eos = False
  for i in range(3):
    for j in range(3):
      n = int(out.lengths[i, j])
      hf_row = hf_seq[i, j]
      hf_n = len(hf_row) if eos not in hf_row.tolist() else hf_row.tolist().index(eos) + 1
      saw_eos |= eos in out.tokens[i, j, :n].tolist()
      assert n == hf_n, (i, j)
      np.testing.assert_array_equal(out.tokens[i, j, :n], hf_row[:n])
  np.testing.assert_allclose(out.scores, hf_scores, atol=1e-4)
  assert saw_eos


def _tiny_t5(tmp_path, torch, transformers):
  torch.manual_seed(0)
  cfg = transformers.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                              num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                              feed_forward_proj="gated-gelu", decoder_start_token_id=0, eos_token_id=1,
                              pad_token_id=0, tie_word_embeddings=True)
  hf = transformers.T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # sharper random logits so that EOS and ties are rare but reachable
    hf.shared.weight.mul_(4.0)
  hf.save_pretrained(str(tmp_path), safe_serialization=True)
  return hf


@torch_ref
def test_t5_greedy_sampling_and_beam_search_match_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from qgjax.models.t5 import load_t5

  hf = _tiny_t5(tmp_path, torch, transformers)
  model, params, _ = load_t5(str(tmp_path))
  prompts = _prompts(50, 3, seed=6, lo=3, hi=10)
  width = 12
  ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
  attn = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
  greedy = SamplingParams(max_new_tokens=N_NEW, temperature=0.0, eos_token_ids=(1,), pad_token_id=0)
  beam = SamplingParams(max_new_tokens=N_NEW, num_samples=2, num_beams=3, eos_token_ids=(1,), pad_token_id=0,
                        length_penalty=0.8)
  results = {}
  for name, sp in (("greedy", greedy), ("beam", beam)):
    sampler = Sampler.for_seq2seq(model, params, sp, batch_size=4, mesh=local_data_mesh(1))
    results[name] = sampler.run(prompts, ["a", "b", "c"], width)
  with torch.no_grad():
    hf_greedy = hf.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=N_NEW,
                            output_scores=True, return_dict_in_generate=True)
    hf_beam = hf.generate(input_ids=ids, attention_mask=attn, num_beams=3, num_return_sequences=2,
                          do_sample=False, max_new_tokens=N_NEW, length_penalty=0.8, output_scores=True,
                          return_dict_in_generate=True)
  g = results["greedy"]
  hf_g = hf_greedy.sequences[:, 1:].numpy()  # drop the decoder start token
  hf_lp = torch.stack([torch.log_softmax(s, -1) for s in hf_greedy.scores], 1).numpy()
  for i in range(3):
    n = int(g.lengths[i, 0])
    np.testing.assert_array_equal(g.tokens[i, 0, :n], hf_g[i, :n])
    np.testing.assert_allclose(g.logprobs[i, 0, :n], hf_lp[i, np.arange(n), hf_g[i, :n]], atol=1e-4)
  b = results["beam"]
  hf_b = hf_beam.sequences[:, 1:].numpy().reshape(3, 2, -1)
  for i in range(3):
    for j in range(2):
      n = int(b.lengths[i, j])
      np.testing.assert_array_equal(b.tokens[i, j, :n], hf_b[i, j, :n])
  np.testing.assert_allclose(b.scores, hf_beam.sequences_scores.numpy().reshape(3, 2), atol=1e-4)
