"""ReadQG on a decoder-only generator (SmolLM2, Llama, Qwen2): the same soft prompts, a causal LM frozen.

Where no T5 weights are available the soft prompts steer a decoder-only LM instead. Each row is

  [P_inst ; r * P_true + (1 - r) * P_false ; document tokens (<= max_doc_tokens) ; separator]  ->  " " query EOS

(separator: readqg.separator, "\\nQuery:" by default). Batches put the soft prefix in slots
[0, P) and the left-padded document + separator after it ([prefix ; pad ; doc ; sep]); the
padding is masked and RoPE positions are cumsum(mask) - 1, so this equals the unpadded sequence.
The 2B prompts (each document under r+ and r-) run ONCE, filling a KV cache; the 4B completions
(forward q+ | r+, q- | r-, swapped q- | r+, q+ | r-) attend to it (logprobs.shared_prompt_logprobs).
The losses are qgjax.methods.readqg.objective's (`readqg_objective`); the self-contrastive term mean-pools
the last layer's final-norm hidden states over the prefix + document positions (not the
separator) of the 2B prompts. Only P_inst, P_true, P_false train.

Export: `soft_prompt.safetensors` + `readqg.json` {"kind": "decoder", "generator": the frozen
base (registry name or absolute path; its weights are not copied), "separator", ...}; read by
qgjax.methods.readqg.generate.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.data import storage
from qgjax.errors import ConfigError
from qgjax.train import examples as ex
from qgjax.train.data import Column
from qgjax.train.logprobs import decoder_fns, shared_prompt_logprobs
from qgjax.train.loop import TaskSetup
from qgjax.train.losses import mean_pool, same_inputs
from qgjax.methods.readqg.objective import (calibration_variant, fingerprint, loaders, readqg_objective,
                                            save_soft_prompt, split_rows, train_texts)

SPEC = {"prompt": Column("source", "left"), "positive": Column("query", "right"),
        "negative": Column("query", "right")}
DEFAULT_SEPARATOR = "\nQuery:"
COMPLETION_PREFIX = " "   # queries follow the separator as running text: "...\nQuery: <query>"


def separator_ids(tokenizer: Any, separator: str) -> list[int]:
  """The separator's token ids (no special tokens); ConfigError when it has none."""
  ids = list(tokenizer(separator, add_special_tokens=False)["input_ids"]) if separator else []
  if not ids:
    raise ConfigError(f"readqg.separator={separator!r} has no tokens; the decoder variant needs one (e.g. '\\nQuery:')")
  return [int(i) for i in ids]


def prompt_ids(tokenizer: Any, documents: list[str], max_doc: int, sep: list[int]) -> list[list[int]]:
  """Documents -> token ids cut to max_doc, then the separator (what training and generation feed)."""
  docs = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
  return [[int(t) for t in d[:max_doc]] + sep for d in docs]


def prefixed_inputs(fns: Any, soft: Any, r: jax.Array, tokens: jax.Array, mask: jax.Array):
  """tokens int32[N, S] left-padded, r f32[N] -> (embeds [N, P + S, D], mask bool[N, P + S])."""
  from qgjax.models.soft_prompt import build_prefix, prepend

  return prepend(build_prefix(soft, r), fns.embed(tokens), mask)


def readqg_decoder_loss_fn(module: Any, rq: Any, n_sep: int):
  """(soft_params, lm_params, batch) -> (loss, metrics); batch: prompt [B, S] (left-padded doc +
  separator), positive / negative [B, Tc] (right-padded, EOS), r_positive / r_negative f32[B], weight.
  The states that predict the query tokens come out only for readqg.calibration = "margin"."""
  with_states = calibration_variant(rq) == "margin"

  def loss_fn(soft, lm, batch):
    b = batch["prompt"].shape[0]
    fns = decoder_fns(module, {"params": lm})
    tokens = jnp.concatenate([batch["prompt"]] * 2)
    r = jnp.concatenate([batch["r_positive"], batch["r_negative"]])
    prompt_mask = jnp.concatenate([batch["prompt_mask"]] * 2)
    embeds, mask = prefixed_inputs(fns, soft, r, tokens, prompt_mask)
    q = jnp.concatenate([batch["positive"], batch["negative"], batch["negative"], batch["positive"]])
    qm = jnp.concatenate([batch["positive_mask"], batch["negative_mask"], batch["negative_mask"],
                          batch["positive_mask"]])
    out = shared_prompt_logprobs(fns, None, mask, q, qm, prompt_embeds=embeds, with_states=with_states)
    lp, hidden = out[:2]                                                # 4B rows, [2B, P+S, D]
    fw, rev = split_rows(lp, 2 * b)
    states = (out[2][:2 * b], out[2][2 * b:]) if with_states else None   # [2B, Tc, D] each
    pooled = mean_pool(hidden, mask.at[:, mask.shape[1] - n_sep:].set(False))   # prefix + document
    return readqg_objective(fw, rev, pooled, batch["weight"], rq, same_inputs(tokens, prompt_mask, r),
                            states=states)
  return loss_fn


def generator_ref(name: str) -> str:
  """What readqg.json records for the frozen base: a registry name or a gs:// URL as is, a path made absolute."""
  from qgjax.models.registry import KNOWN_MODELS

  return name if str(name).strip().lower() in KNOWN_MODELS else storage.absolute(os.path.expanduser(name))


def setup_readqg_decoder(config: Any) -> TaskSetup:
  from qgjax.models.soft_prompt import SoftPrompt, init_soft_prompt
  from qgjax.train.generator import load_generator

  m = config.model
  if not m.name:
    raise ConfigError("model.name is empty: the decoder ReadQG variant needs a decoder-only LM "
                      "(e.g. smollm2-135m-instruct or a local HF dir)")
  if m.init != "pretrained":
    raise ConfigError(f"model.init={m.init!r}: the decoder ReadQG variant trains on a pretrained LM (model.name)")
  if config.train_mode != "full":
    raise ConfigError("train_mode: the ReadQG generator is frozen (only the soft prompts train); leave it 'full'")
  gen = load_generator(config)   # trainable = the LM's params, used here as the frozen tree
  tokenizer, rq = gen.tokenizer, config.readqg
  separator = str(rq.separator)
  sep = separator_ids(tokenizer, separator)
  max_doc = int(config.data.max_doc_tokens)
  if max(config.data.source_buckets) < max_doc + len(sep):
    raise ConfigError(f"data.source_buckets {tuple(config.data.source_buckets)}: the largest must hold "
                      f"max_doc_tokens + the separator ({max_doc} + {len(sep)} tokens)")
  texts = train_texts(config)
  cols = {"prompt": prompt_ids(tokenizer, texts["document"], max_doc, sep),
          "positive": ex.tokenize_completions(tokenizer, [COMPLETION_PREFIX + q for q in texts["positive"]]),
          "negative": ex.tokenize_completions(tokenizer, [COMPLETION_PREFIX + q for q in texts["negative"]]),
          "r_positive": texts["r_positive"], "r_negative": texts["r_negative"]}
  lm = gen.trainable
  soft = init_soft_prompt(lm["embed_tokens"]["embedding"], tokenizer, rq.instruction, int(rq.inst_len),
                          int(rq.rel_len), dtype=np.float32)
  soft = jax.tree.map(np.asarray, soft)
  abstract_soft = jax.eval_shape(SoftPrompt(int(rq.inst_len), int(rq.rel_len), gen.config.hidden_size).init,
                                 jax.random.key(0), jnp.zeros((1,)))["params"]
  pad = gen.config.pad_token_id
  train, evals = loaders(cols, SPEC, texts["group"], config, 0 if pad is None else int(pad))
  meta = {"kind": "decoder", "generator": generator_ref(m.name), "separator": separator,
          "completion_prefix": COMPLETION_PREFIX, "inst_len": int(rq.inst_len), "rel_len": int(rq.rel_len),
          "instruction": rq.instruction, "max_doc_tokens": max_doc, "hidden_size": int(gen.config.hidden_size)}

  def export(params, frozen, out_dir):
    from qgjax.parallel.distributed import is_main_process
    from qgjax.train.generator import gather_to_host

    soft_host = gather_to_host(params)
    if is_main_process():
      save_soft_prompt(soft_host, out_dir, meta)
    return out_dir

  return TaskSetup(soft, lm, abstract_soft, gen.abstract_trainable, readqg_decoder_loss_fn(gen.module, rq, len(sep)),
                   train, evals, export, fingerprint(config, "decoder"),
                   {"train_rows": train.num_examples, "eval_rows": evals.num_examples if evals else 0,
                    "truncated": train.truncated, "separator_tokens": len(sep)})
