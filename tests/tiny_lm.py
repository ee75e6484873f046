"""Tiny random models for tests: a Llama in HF layout (config.json + safetensors + a real word-level
tokenizer), a Flan-T5-shaped T5 in HF layout (make_tiny_t5) and a BERT bi-encoder in
sentence-transformers layout (make_tiny_bert).

The tokenizer is a `tokenizers` WordLevel model over the words of the demo collection plus
ChatML special tokens and a chat template, so the whole text pipeline (templating, truncation,
EOS, padding) runs as with SmolLM2, in milliseconds instead of loading the GGUF.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


def _demo_words() -> list[str]:
  from qgjax.train.demo import DEMO_BEIR, DEMO_DIR

  words = set()
  for path in [os.path.join(DEMO_BEIR, "corpus.jsonl"), os.path.join(DEMO_BEIR, "queries.jsonl")] + \
      [os.path.join(DEMO_DIR, f) for f in os.listdir(DEMO_DIR)]:
    with open(path) as f:
      words.update(re.findall(r"\w+|[^\w\s]", f.read().lower()))
  words.update("write one short search query that this document answers reply with the only".split())
  return sorted(words)


def make_tiny_lm(out_dir: str, *, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                 seed: int = 0) -> str:
  """Writes the tiny model directory and returns it (reused when it already exists)."""
  if os.path.isfile(os.path.join(out_dir, "model.safetensors")):
    return out_dir
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  from qgjax.models.hf_checkpoint import write_safetensors_dir

  vocab = {t: i for i, t in enumerate(SPECIALS + _demo_words())}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
                                 bos_token="<|im_start|>")
  fast.chat_template = CHAT_TEMPLATE
  os.makedirs(out_dir, exist_ok=True)
  fast.save_pretrained(out_dir)
  v, d, f, hd = len(vocab), hidden, 2 * hidden, hidden // heads
  cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": v, "hidden_size": d,
         "intermediate_size": f, "num_hidden_layers": layers, "num_attention_heads": heads,
         "num_key_value_heads": kv_heads, "head_dim": hd, "hidden_act": "silu", "rms_norm_eps": 1e-6,
         "rope_theta": 10000.0, "max_position_embeddings": 512, "tie_word_embeddings": True,
         "bos_token_id": vocab["<|im_start|>"], "eos_token_id": vocab["<|im_end|>"], "pad_token_id": 0}
  rng = np.random.default_rng(seed)
  w = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)
  t = {"model.embed_tokens.weight": w(v, d), "model.norm.weight": np.ones(d, np.float32)}
  for i in range(layers):
    p = f"model.layers.{i}."
    t.update({p + "input_layernorm.weight": np.ones(d, np.float32),
              p + "post_attention_layernorm.weight": np.ones(d, np.float32),
              p + "self_attn.q_proj.weight": w(heads * hd, d), p + "self_attn.k_proj.weight": w(kv_heads * hd, d),
              p + "self_attn.v_proj.weight": w(kv_heads * hd, d), p + "self_attn.o_proj.weight": w(d, heads * hd),
              p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d), p + "mlp.down_proj.weight": w(d, f)})
  write_safetensors_dir(t, out_dir, cfg)
  with open(os.path.join(out_dir, "generation_config.json"), "w") as fh:
    json.dump({"eos_token_id": cfg["eos_token_id"]}, fh)
  return out_dir


T5_SPECIALS = ["<pad>", "</s>", "<unk>"]   # ids 0, 1, 2 as in T5's sentencepiece vocabulary


def make_tiny_t5(out_dir: str, *, d_model: int = 32, layers: int = 2, heads: int = 4, seed: int = 0) -> str:
  """A random T5 v1.1 / Flan-T5-shaped model (gated-GELU, untied LM head, no output rescale) as
  T5ForConditionalGeneration writes it, with a word-level tokenizer over the demo words that, like
  T5's, appends </s> to every encoded text (pad 0, EOS 1, no chat template). Reused when present."""
  if os.path.isfile(os.path.join(out_dir, "model.safetensors")):
    return out_dir
  import torch
  import transformers
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

  from qgjax.models.hf_checkpoint import write_safetensors_dir

  vocab = {t: i for i, t in enumerate(T5_SPECIALS + _demo_words())}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                     special_tokens=[("</s>", vocab["</s>"])])
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                              unk_token="<unk>")
  os.makedirs(out_dir, exist_ok=True)
  fast.save_pretrained(out_dir)
  cfg = transformers.T5Config(
      vocab_size=len(vocab), d_model=d_model, d_kv=d_model // heads, d_ff=2 * d_model, num_layers=layers,
      num_decoder_layers=layers, num_heads=heads, relative_attention_num_buckets=8,
      relative_attention_max_distance=20, dropout_rate=0.1, feed_forward_proj="gated-gelu", pad_token_id=0,
      eos_token_id=1, decoder_start_token_id=0)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(cfg)
  # transformers 5 always ties T5's head: write the hub's Flan-T5 layout (own lm_head.weight) by hand.
  tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
             if not k.endswith("embed_tokens.weight")}
  rng = np.random.default_rng(seed)
  tensors["lm_head.weight"] = (0.3 * rng.standard_normal(tensors["shared.weight"].shape)).astype(np.float32)
  config = model.config.to_dict()
  config.pop("scale_decoder_outputs", None)
  config["tie_word_embeddings"] = False
  write_safetensors_dir(tensors, out_dir, config)
  return out_dir


def make_tiny_bert(out: str) -> str:
  """A random 2-layer, 32-wide BERT bi-encoder with MiniLM's tokenizer (sentence-transformers layout)."""
  from transformers import AutoTokenizer

  from qgjax.models import bert

  tokenizer = AutoTokenizer.from_pretrained(bert.resolve_model_dir("all-minilm-l6-v2"))
  cfg = bert.EncoderConfig(vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4,
                           intermediate_size=64, max_position_embeddings=160)
  module = bert.BiEncoder(cfg, pooling="mean", normalize=True)
  bert.save_bi_encoder_st(bert.init_params(module, seed=0), module, tokenizer, out, max_seq_length=128)
  return out
