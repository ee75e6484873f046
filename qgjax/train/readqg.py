"""ReadQG (relevance-aware diverse query generation): T5 with only soft prompts trainable.

The encoder input is [P_inst ; r * P_true + (1 - r) * P_false ; document] (qgjax.models.soft_prompt);
only P_inst, P_true, P_false train, the T5 stays frozen. Each training row is a document with a
relevance-entailed query q+ (relevance r+, 1 by default) and a contradicted one q- (r-, 0):

  MLE          -log P(q+ | d, r+) - log P(q- | d, r-)                 token mean over both
  contrastive  in-batch self-contrastive loss over the mean-pooled encoder states of all
               2B (document, relevance prompt) inputs, temperature tau: each must be nearest to
               itself, so different documents and different relevance prompts stay apart
  calibration  max(0, eps - log P_fw + log P_rev): the decoder inputs swapped between the
               entailed and the contradicted query, P_fw = P(q+ | r+), P(q- | r-) and
               P_rev = P(q- | r+), P(q+ | r-) (per-token mean log-probs)
  loss = MLE + readqg.contrastive_weight * contrastive + readqg.calibration_weight * calibration

The document is encoded once per relevance prompt (2B encoder rows); the 4B teacher-forced
decodes (forward and swapped) reuse those encoder states.

Records (JSONL): {"document" | "doc_id", "positive", "negative", "r_positive"?, "r_negative"?}
or the document-centric form {"passage" | "document" | "doc_id", "positive": [...], "negative":
[...], "positive_score"?: [...], "negative_score"?: [...]} (i-th positive paired with the
i-th negative; scores, min-max rescaled per document, become r).

Export: the T5 (unchanged, HF layout) + `soft_prompt.safetensors` (instruction, true, false)
+ `readqg.json`; `load_soft_prompt(dir)` reads the prompt back.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.errors import ConfigError, InputError
from qgjax.train import examples as ex
from qgjax.train.data import Column, StepLoader
from qgjax.train.logprobs import encdec_decode_logprobs, t5_fns
from qgjax.train.loop import TaskSetup, fit
from qgjax.train.losses import calibration_hinge, masked_nll, mean_pool, self_contrastive_loss

SPEC = {"source": Column("source", "right"), "positive": Column("query", "right"),
        "negative": Column("query", "right")}


def _rescale(scores: list[float]) -> list[float]:
  lo, hi = min(scores), max(scores)
  return [1.0 if hi == lo else (s - lo) / (hi - lo) for s in scores]


def load_readqg(path: str, corpus: Any = None) -> dict[str, list]:
  """Records -> {"document", "positive", "negative", "r_positive", "r_negative", "group"}."""
  out: dict[str, list] = {k: [] for k in ("document", "positive", "negative", "r_positive", "r_negative", "group")}
  for line, obj in ex.read_jsonl(path):
    if any(k in obj for k in ("document", "passage", "doc_text")):
      doc = ex._text_field(obj, ("document", "passage", "doc_text"), path, line)
    elif "doc_id" in obj:
      if corpus is None or str(obj["doc_id"]) not in corpus:
        raise InputError("doc_id not found (set data.corpus to the BEIR corpus)", path=path, line=line, field="doc_id")
      doc = corpus[str(obj["doc_id"])].contents
    else:
      raise InputError("missing; expected document, passage or doc_id", path=path, line=line, field="document")
    group = str(obj.get("doc_id", line))
    pos, neg = obj.get("positive"), obj.get("negative")
    if isinstance(pos, list) or isinstance(neg, list):
      if not (isinstance(pos, list) and isinstance(neg, list)) or not pos or not neg:
        raise InputError("positive and negative must both be non-empty lists", path=path, line=line,
                         field="positive")
      n = min(len(pos), len(neg))
      both = list(obj.get("positive_score", [1.0] * len(pos))) + list(obj.get("negative_score", [0.0] * len(neg)))
      if len(both) != len(pos) + len(neg):
        raise InputError("scores must have one entry per query", path=path, line=line, field="positive_score")
      r = _rescale([float(x) for x in both]) if "positive_score" in obj else both
      rp, rn = r[: len(pos)], r[len(pos):]
      for i in range(n):
        out["document"].append(doc)
        out["positive"].append(str(pos[i]))
        out["negative"].append(str(neg[i]))
        out["r_positive"].append(float(rp[i]))
        out["r_negative"].append(float(rn[i]))
        out["group"].append(group)
    else:
      out["document"].append(doc)
      out["positive"].append(ex._text_field(obj, ("positive",), path, line))
      out["negative"].append(ex._text_field(obj, ("negative",), path, line))
      for k, default in (("r_positive", 1.0), ("r_negative", 0.0)):
        try:
          out[k].append(float(obj.get(k, default)))
        except (TypeError, ValueError):
          raise InputError("must be a number", path=path, line=line, field=k) from None
      out["group"].append(group)
  if not out["document"]:
    raise InputError("no records", path=path)
  return out


def readqg_loss_fn(module: Any, rq: Any):
  """(soft_params, t5_params, batch) -> (loss, metrics); see the module docstring."""
  from qgjax.models.soft_prompt import build_prefix, prepend

  tau = float(rq.get("tau", 0.25))
  eps = float(rq.get("calibration_margin", 1.0))
  w_con = float(rq.get("contrastive_weight", 1.0))
  w_cal = float(rq.get("calibration_weight", 1.0))

  def loss_fn(soft, t5, batch):
    b = batch["source"].shape[0]
    src = jnp.concatenate([batch["source"]] * 2)
    smask = jnp.concatenate([batch["source_mask"]] * 2).astype(bool)
    r = jnp.concatenate([batch["r_positive"], batch["r_negative"]])
    prefix = build_prefix(soft, r)                                      # [2B, P, D]
    fns = t5_fns(module, {"params": t5}, prefix=lambda emb, m: prepend(prefix, emb, m))
    enc = fns.encode(src, smask)                                        # [2B, P+S, D]
    enc_mask = jnp.concatenate([jnp.ones(prefix.shape[:2], bool), smask], axis=1)
    con = self_contrastive_loss(mean_pool(enc, enc_mask), tau)
    q_fw = jnp.concatenate([batch["positive"], batch["negative"]])
    m_fw = jnp.concatenate([batch["positive_mask"], batch["negative_mask"]])
    q_rev = jnp.concatenate([batch["negative"], batch["positive"]])
    m_rev = jnp.concatenate([batch["negative_mask"], batch["positive_mask"]])
    lp = encdec_decode_logprobs(fns, jnp.concatenate([enc, enc]), jnp.concatenate([enc_mask, enc_mask]),
                                jnp.concatenate([q_fw, q_rev]), jnp.concatenate([m_fw, m_rev]))
    w = jnp.concatenate([batch["weight"]] * 2)
    fw_token, fw_mask = lp.token[: 2 * b], lp.mask[: 2 * b] * w[:, None]
    mle = masked_nll(fw_token, fw_mask)
    mean_lp = lp.mean
    cal = calibration_hinge(mean_lp[: 2 * b], mean_lp[2 * b:], eps)
    loss = mle + w_con * con + w_cal * cal
    fw_pos, fw_neg = mean_lp[:b], mean_lp[b: 2 * b]
    metrics = {"mle": mle, "contrastive": con, "calibration": cal,
               "logp/pos_given_pos": jnp.mean(fw_pos), "logp/neg_given_neg": jnp.mean(fw_neg),
               "logp/neg_given_pos": jnp.mean(mean_lp[2 * b: 3 * b]),
               "logp/pos_given_neg": jnp.mean(mean_lp[3 * b:]),
               "calibration/accuracy": jnp.mean((mean_lp[: 2 * b] > mean_lp[2 * b:]).astype(jnp.float32))}
    return loss, metrics
  return loss_fn


def _as_dict(x: Any) -> dict:
  return {} if not x else (x.to_dict() if hasattr(x, "to_dict") else dict(x))


def _load_t5(config: Any):
  """(module, params, tokenizer) from config.model: a local HF T5 dir, or init="random" + a tokenizer."""
  from qgjax.models.t5 import T5Config, T5Model, init_params, load_t5
  from qgjax.parallel.backend import compute_dtype
  from qgjax.models.registry import load_tokenizer, resolve

  m = config.model
  dtype = str(compute_dtype(None, m.get("dtype", "auto")))
  if m.get("init", "pretrained") == "pretrained":
    module, params, tokenizer = load_t5(resolve(m.name), dtype="float32")
    if tokenizer is None:
      raise ConfigError(f"{m.name} has no tokenizer files (tokenizer.json / spiece.model)")
    module = T5Model(module.config.replace(dtype=dtype))
    return module, jax.tree.map(lambda x: np.asarray(x, np.float32), params), tokenizer
  if m.get("init") != "random":
    raise ConfigError(f"model.init={m.init!r}; expected 'pretrained' or 'random'")
  tokenizer = load_tokenizer(resolve(m.tokenizer))
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  cfg = T5Config(vocab_size=len(tokenizer), pad_token_id=int(pad), eos_token_id=int(tokenizer.eos_token_id),
                 decoder_start_token_id=int(pad), dtype=dtype, dropout_rate=0.0, **_as_dict(m.get("t5", None)))
  module = T5Model(cfg)
  return module, jax.tree.map(lambda x: np.asarray(x, np.float32), init_params(module, int(config.get("seed", 0)))), tokenizer


def save_soft_prompt(soft: Any, out_dir: str, meta: dict) -> None:
  from safetensors.numpy import save_file

  os.makedirs(out_dir, exist_ok=True)
  save_file({k: np.asarray(v, np.float32) for k, v in soft.items()}, os.path.join(out_dir, "soft_prompt.safetensors"))
  with open(os.path.join(out_dir, "readqg.json"), "w") as f:
    json.dump(meta, f, indent=2)


def load_soft_prompt(out_dir: str) -> tuple[dict, dict]:
  """-> ({"instruction", "true", "false"} arrays, readqg.json metadata)."""
  from safetensors.numpy import load_file

  with open(os.path.join(out_dir, "readqg.json")) as f:
    meta = json.load(f)
  return dict(load_file(os.path.join(out_dir, "soft_prompt.safetensors"))), meta


def setup_readqg(config: Any) -> TaskSetup:
  from qgjax.models.soft_prompt import SoftPrompt, init_soft_prompt
  from qgjax.models.t5 import save_t5_hf

  module, t5_params, tokenizer = _load_t5(config)
  rq = config.readqg
  corpus = None
  if config.data.get("corpus", ""):
    from qgjax.data.beir import Corpus
    c = config.data.corpus
    corpus = Corpus(c if c.endswith(".jsonl") else os.path.join(c, "corpus.jsonl"))
  texts = load_readqg(config.data.train, corpus)
  max_doc = int(config.data.get("max_doc_tokens", 256))
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
  from qgjax.models.t5 import _sample_inputs
  abstract_t5 = jax.eval_shape(module.init, jax.random.key(0), *_sample_inputs())["params"]
  frac = float(config.data.get("eval_fraction", 0.0))
  h = np.asarray([zlib.crc32(f"{config.get('seed', 0)}:{g}".encode()) / 2**32 for g in texts["group"]])
  train_idx, eval_idx = np.nonzero(h >= frac)[0], np.nonzero(h < frac)[0]
  buckets = {"source": tuple(config.data.source_buckets), "query": tuple(config.data.query_buckets)}

  def loader(idx, shuffle):
    return StepLoader({k: [v[i] for i in idx] for k, v in cols.items()}, SPEC, batch_size=int(config.batch_size),
                      buckets=buckets, pad_id=module.config.pad_token_id, seed=int(config.get("seed", 0)),
                      bucket_window=int(config.data.get("bucket_window", 8)), shuffle=shuffle,
                      process_index=jax.process_index(), process_count=jax.process_count())

  def export(params, frozen, out_dir):
    from qgjax.parallel.distributed import is_main_process
    from qgjax.train.generator import gather_to_host

    soft_host = gather_to_host(params)
    if is_main_process():
      save_t5_hf(jax.device_get(frozen), module.config.replace(dtype="float32"), out_dir, tokenizer)
      save_soft_prompt(soft_host, out_dir, {"inst_len": int(rq.inst_len), "rel_len": int(rq.rel_len),
                                            "instruction": rq.instruction, "max_doc_tokens": max_doc})
    return out_dir

  fp = {"task": "readqg", "model": str(config.model.name or config.model.get("tokenizer", "")),
        "batch_size": int(config.batch_size), "seed": int(config.get("seed", 0)),
        "train_file": os.path.abspath(config.data.train), "inst_len": int(rq.inst_len), "rel_len": int(rq.rel_len)}
  train = loader(train_idx, True)
  evals = loader(eval_idx, False) if len(eval_idx) else None
  return TaskSetup(soft, t5_params, abstract_soft, abstract_t5, readqg_loss_fn(module, rq), train, evals, export, fp,
                   {"train_rows": int(len(train_idx)), "eval_rows": int(len(eval_idx)), "truncated": train.truncated})


def run_readqg(config: Any) -> dict:
  return fit(setup_readqg(config), config)
