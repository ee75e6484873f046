"""ReadQG's shared parts: records, the objective, soft-prompt files, the train/eval loaders.

ReadQG (relevance-aware diverse query generation) trains only soft prompts on a frozen
generator: a T5 (qgjax.methods.readqg.t5) or a decoder-only LM (qgjax.methods.readqg.decoder);
qgjax.methods.readqg.task picks one by `model.kind`. Both share `readqg_objective`.

The input is [P_inst ; r * P_true + (1 - r) * P_false ; document] (qgjax.models.soft_prompt);
only P_inst, P_true, P_false train. Each training row is a document with a relevance-entailed
query q+ (relevance r+, 1 by default) and a contradicted one q- (r-, 0):

  MLE          -log P(q+ | d, r+) - log P(q- | d, r-)                 token mean over both
  contrastive  in-batch self-contrastive loss over the mean-pooled encoder states of all
               2B (document, relevance prompt) inputs, temperature tau: each must be nearest to
               itself, so different documents and different relevance prompts stay apart
  calibration  readqg.calibration = "rank": max(0, eps - log P_fw + log P_rev): the decoder
               inputs swapped between the entailed and the contradicted query, P_fw = P(q+ | r+),
               P(q- | r-) and P_rev = P(q- | r+), P(q+ | r-) (per-token mean log-probs),
               eps = readqg.calibration_margin.
               "margin" (the authors' SLiC-style variant): max(0, gamma * sim - log P_fw + log P_rev)
               with gamma = readqg.calibration_margin and sim the greedy-matching F1 (summed over
               readqg.calibration_ngrams, qgjax.train.losses.greedy_match_f1) between the decoder's
               final-norm states of the forward and of the swapped teacher-forced query, held
               constant. The log-probs are the same per-token means in both variants (the authors
               use summed NLL / padded length), so eps and gamma are in nats per token.
  loss = MLE + readqg.contrastive_weight * contrastive + readqg.calibration_weight * calibration

Records (JSONL): {"document" | "doc_id", "positive", "negative", "r_positive"?, "r_negative"?}
or the document-centric form {"passage" | "document" | "doc_id", "positive": [...], "negative":
[...], "positive_score"?: [...], "negative_score"?: [...]} (i-th positive paired with the
i-th negative; scores, min-max rescaled per document, become r).

Export: the frozen generator (decoder-only: its name) + `soft_prompt.safetensors` (instruction,
true, false) + `readqg.json`; `load_soft_prompt(dir)` reads the prompt back.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.data import storage
from qgjax.errors import ConfigError, InputError
from qgjax.train import examples as ex
from qgjax.train.data import StepLoader
from qgjax.train.logprobs import SeqLogprobs
from qgjax.train.losses import (calibration_hinge, calibration_margin_hinge, greedy_match_f1, masked_nll,
                                self_contrastive_loss)

CALIBRATIONS = ("rank", "margin")


def calibration_variant(rq: Any) -> str:
  """readqg.calibration checked: "rank" | "margin" (ConfigError otherwise, and for bad ngram sizes)."""
  kind = str(rq.calibration)
  if kind not in CALIBRATIONS:
    raise ConfigError(f"readqg.calibration={kind!r}; expected one of {CALIBRATIONS}")
  ngrams = tuple(rq.calibration_ngrams)
  if kind == "margin" and (not ngrams or any(int(n) != n or n < 1 for n in ngrams)):
    raise ConfigError(f"readqg.calibration_ngrams={ngrams}: positive integers expected (e.g. (1, 2))")
  return kind


def rescale(scores: list[float]) -> list[float]:
  """Min-max to [0, 1]; all equal -> all 1.0."""
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
      given = "positive_score" in obj or "negative_score" in obj
      r = rescale([float(x) for x in both]) if given else both
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


def readqg_objective(fw: SeqLogprobs, rev: SeqLogprobs, pooled: jax.Array, weight: jax.Array, rq: Any,
                     same_input: jax.Array | None = None, states: tuple[jax.Array, jax.Array] | None = None):
  """The ReadQG loss from per-row log-probs; shared by the T5 and the decoder-only variant.

  fw: the 2B forward rows [q+ | r+ ; q- | r-]; rev: the 2B swapped rows [q- | r+ ; q+ | r-];
  pooled f32[2B, D]: mean-pooled states of the 2B (prefix + document) inputs; weight f32[B]
  (0 on the rows that only fill an eval batch) weights the MLE tokens; same_input bool[2B, 2B]:
  rows with the same document and r, no negatives of each other; states (calibration "margin"
  only): the decoder states that predict each query token, ([2B, Tc, D] forward, [2B, Tc, D]
  swapped), masked by fw.mask / rev.mask. -> (loss, metrics)
  """
  kind = calibration_variant(rq)
  tau = float(rq.tau)
  eps = float(rq.calibration_margin)
  w_con = float(rq.contrastive_weight)
  w_cal = float(rq.calibration_weight)
  b = weight.shape[0]
  con = self_contrastive_loss(pooled, tau, same_input=same_input)
  mle = masked_nll(fw.token, fw.mask * jnp.concatenate([weight] * 2)[:, None])
  fw_mean, rev_mean = fw.mean, rev.mean
  extra = {}
  if kind == "margin":
    if states is None:
      raise ValueError("readqg.calibration='margin' needs the decoder states of the forward and swapped queries")
    sim = jax.lax.stop_gradient(greedy_match_f1(states[0], fw.mask, states[1], rev.mask,
                                                tuple(int(n) for n in rq.calibration_ngrams)))
    cal = calibration_margin_hinge(fw_mean, rev_mean, sim, eps)
    extra = {"calibration/similarity": jnp.mean(sim)}
  else:
    cal = calibration_hinge(fw_mean, rev_mean, eps)
  loss = mle + w_con * con + w_cal * cal
  metrics = {"mle": mle, "contrastive": con, "calibration": cal, **extra,
             "logp/pos_given_pos": jnp.mean(fw_mean[:b]), "logp/neg_given_neg": jnp.mean(fw_mean[b:]),
             "logp/neg_given_pos": jnp.mean(rev_mean[:b]), "logp/pos_given_neg": jnp.mean(rev_mean[b:]),
             "calibration/accuracy": jnp.mean((fw_mean > rev_mean).astype(jnp.float32))}
  return loss, metrics


def split_rows(lp: SeqLogprobs, n: int) -> tuple[SeqLogprobs, SeqLogprobs]:
  """SeqLogprobs of 2n rows -> (the first n rows, the last n)."""
  return SeqLogprobs(*(x[:n] for x in lp)), SeqLogprobs(*(x[n:] for x in lp))


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


def generator_kind(m: Any) -> str:
  """config.model -> "t5" | "decoder": model.kind, or with kind="auto" what model.name holds
  (init="random" builds a tiny T5)."""
  kind = m.kind
  if kind in ("t5", "decoder"):
    return kind
  if kind != "auto":
    raise ConfigError(f"model.kind={kind!r}; expected 'auto', 't5' or 'decoder'")
  if m.init == "random":
    return "t5"
  if not m.name:
    raise ConfigError("model.name is empty: a local HF T5 dir, or a decoder-only LM (e.g. smollm2-135m-instruct)")
  from qgjax.models.registry import model_kind
  return model_kind(m.name, "auto")


def train_texts(config: Any) -> dict[str, list]:
  """config.data.train (+ data.corpus for doc_id records) -> load_readqg's columns."""
  corpus = None
  if config.data.corpus:
    from qgjax.data.beir import Corpus
    c = config.data.corpus
    corpus = Corpus(c if c.endswith(".jsonl") else os.path.join(c, "corpus.jsonl"))
  return load_readqg(config.data.train, corpus)


def loaders(cols: dict, spec: dict, groups: list[str], config: Any, pad_id: int) -> tuple[StepLoader, Any]:
  """(train loader, eval loader | None): documents hashed into the eval split by data.eval_fraction."""
  frac = float(config.data.eval_fraction)
  h = np.asarray([zlib.crc32(f"{config.seed}:{g}".encode()) / 2**32 for g in groups])
  train_idx, eval_idx = np.nonzero(h >= frac)[0], np.nonzero(h < frac)[0]
  if not len(train_idx):
    raise ConfigError(f"data.eval_fraction={frac} leaves no training documents in {config.data.train}")
  groups_of = {name: col.group for name, col in spec.items()}
  buckets = {g: tuple(config.data[f"{g}_buckets"]) for g in set(groups_of.values())}

  def loader(idx, shuffle):
    return StepLoader({k: [v[i] for i in idx] for k, v in cols.items()}, spec, batch_size=int(config.batch_size),
                      buckets=buckets, pad_id=pad_id, seed=int(config.seed),
                      bucket_window=int(config.data.bucket_window), shuffle=shuffle,
                      process_index=jax.process_index(), process_count=jax.process_count())
  return loader(train_idx, True), (loader(eval_idx, False) if len(eval_idx) else None)


def fingerprint(config: Any, kind: str) -> dict:
  rq = config.readqg
  fp = {"task": "readqg", "model": str(config.model.name or config.model.tokenizer),
        "batch_size": int(config.batch_size), "seed": int(config.seed),
        "train_file": storage.absolute(config.data.train), "inst_len": int(rq.inst_len), "rel_len": int(rq.rel_len)}
  return fp if kind == "t5" else dict(fp, kind=kind)   # T5 runs keep their earlier fingerprint
