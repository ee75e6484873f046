"""ReadQG on a frozen T5: the encoder input is [P_inst ; r P_true + (1 - r) P_false ; document].

The document is encoded once per relevance prompt (2B encoder rows); the 4B teacher-forced
decodes (forward and swapped) reuse those encoder states. Losses: qgjax.methods.readqg.objective.
Export: the T5 (unchanged, HF layout) + the soft prompts (`readqg.json` kind "t5").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.errors import ConfigError
from qgjax.methods.readqg.objective import (calibration_variant, fingerprint, loaders, readqg_objective,
                                            save_soft_prompt, split_rows, train_texts)
from qgjax.train import examples as ex
from qgjax.train.data import Column
from qgjax.train.logprobs import encdec_decode_logprobs, t5_fns
from qgjax.train.loop import TaskSetup
from qgjax.train.losses import mean_pool, same_inputs

SPEC = {"source": Column("source", "right"), "positive": Column("query", "right"),
        "negative": Column("query", "right")}


def readqg_loss_fn(module: Any, rq: Any):
  """(soft_params, t5_params, batch) -> (loss, metrics); see the module docstring. The decoder states
  come out of the teacher-forced decode only for readqg.calibration = "margin"."""
  from qgjax.models.soft_prompt import build_prefix, prepend

  with_states = calibration_variant(rq) == "margin"

  def loss_fn(soft, t5, batch):
    b = batch["source"].shape[0]
    src = jnp.concatenate([batch["source"]] * 2)
    smask = jnp.concatenate([batch["source_mask"]] * 2).astype(bool)
    r = jnp.concatenate([batch["r_positive"], batch["r_negative"]])
    prefix = build_prefix(soft, r)                                      # [2B, P, D]
    fns = t5_fns(module, {"params": t5}, prefix=lambda emb, m: prepend(prefix, emb, m))
    enc = fns.encode(src, smask)                                        # [2B, P+S, D]
    enc_mask = jnp.concatenate([jnp.ones(prefix.shape[:2], bool), smask], axis=1)
    q_fw = jnp.concatenate([batch["positive"], batch["negative"]])
    m_fw = jnp.concatenate([batch["positive_mask"], batch["negative_mask"]])
    q_rev = jnp.concatenate([batch["negative"], batch["positive"]])
    m_rev = jnp.concatenate([batch["negative_mask"], batch["positive_mask"]])
    out = encdec_decode_logprobs(fns, jnp.concatenate([enc, enc]), jnp.concatenate([enc_mask, enc_mask]),
                                 jnp.concatenate([q_fw, q_rev]), jnp.concatenate([m_fw, m_rev]),
                                 with_states=with_states)
    lp, states = out if with_states else (out, None)
    fw, rev = split_rows(lp, 2 * b)
    states = (states[:2 * b], states[2 * b:]) if with_states else None
    return readqg_objective(fw, rev, mean_pool(enc, enc_mask), batch["weight"], rq, same_inputs(src, smask, r),
                            states=states)
  return loss_fn


def _as_dict(x: Any) -> dict:
  return {} if not x else (x.to_dict() if hasattr(x, "to_dict") else dict(x))


def _load_t5(config: Any):
  """(module, params, tokenizer) from config.model: a local HF T5 dir, or init="random" + a tokenizer."""
  from qgjax.models.t5 import T5Config, T5Model, init_params, load_t5
  from qgjax.parallel.backend import model_numerics
  from qgjax.models.registry import load_tokenizer, resolve

  m = config.model
  dtype, attention = model_numerics(m)
  if m.init == "pretrained":
    module, params, tokenizer = load_t5(resolve(m.name), dtype="float32", attention_impl=attention)
    if tokenizer is None:
      raise ConfigError(f"{m.name} has no tokenizer files (tokenizer.json / spiece.model)")
    module = T5Model(module.config.replace(dtype=dtype))
    return module, jax.tree.map(lambda x: np.asarray(x, np.float32), params), tokenizer
  if m.init != "random":
    raise ConfigError(f"model.init={m.init!r}; expected 'pretrained' or 'random'")
  tokenizer = load_tokenizer(resolve(m.tokenizer))
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  cfg = T5Config(vocab_size=len(tokenizer), pad_token_id=int(pad), eos_token_id=int(tokenizer.eos_token_id),
                 decoder_start_token_id=int(pad), dtype=dtype, attention_impl=attention, dropout_rate=0.0,
                 **_as_dict(m.t5))
  module = T5Model(cfg)
  return module, jax.tree.map(lambda x: np.asarray(x, np.float32), init_params(module, int(config.seed))), tokenizer


def setup_readqg_t5(config: Any) -> TaskSetup:
  from qgjax.models.soft_prompt import SoftPrompt, init_soft_prompt
  from qgjax.models.t5 import sample_inputs, save_t5_hf

  module, t5_params, tokenizer = _load_t5(config)
  rq = config.readqg
  texts = train_texts(config)
  max_doc = int(config.data.max_doc_tokens)
  eos = int(tokenizer.eos_token_id)
  docs = [list(x[:max_doc - 1]) + [eos] for x in tokenizer(texts["document"], add_special_tokens=False)["input_ids"]]
  cols = {"source": docs, "positive": ex.tokenize_completions(tokenizer, texts["positive"]),
          "negative": ex.tokenize_completions(tokenizer, texts["negative"]),
          "r_positive": texts["r_positive"], "r_negative": texts["r_negative"]}
  soft = init_soft_prompt(t5_params["shared"]["embedding"], tokenizer, rq.instruction, int(rq.inst_len),
                          int(rq.rel_len), dtype=np.float32)
  soft = jax.tree.map(np.asarray, soft)
  abstract_soft = jax.eval_shape(SoftPrompt(int(rq.inst_len), int(rq.rel_len), module.config.d_model).init,
                                 jax.random.key(0), jnp.zeros((1,)))["params"]
  abstract_t5 = jax.eval_shape(module.init, jax.random.key(0), *sample_inputs())["params"]
  train, evals = loaders(cols, SPEC, texts["group"], config, module.config.pad_token_id)

  def export(params, frozen, out_dir):
    from qgjax.parallel.distributed import is_main_process
    from qgjax.train.generator import gather_to_host

    soft_host = gather_to_host(params)
    if is_main_process():
      save_t5_hf(jax.device_get(frozen), module.config.replace(dtype="float32"), out_dir, tokenizer)
      save_soft_prompt(soft_host, out_dir, {"kind": "t5", "inst_len": int(rq.inst_len), "rel_len": int(rq.rel_len),
                                            "instruction": rq.instruction, "max_doc_tokens": max_doc})
    return out_dir

  return TaskSetup(soft, t5_params, abstract_soft, abstract_t5, readqg_loss_fn(module, rq), train, evals, export,
                   fingerprint(config, "t5"), {"train_rows": train.num_examples,
                                               "eval_rows": evals.num_examples if evals else 0,
                                               "truncated": train.truncated})
