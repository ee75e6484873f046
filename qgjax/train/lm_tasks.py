"""SFT, RSFT, DPO and RSFT+DPO on the generator (decoder-only or T5): config -> TaskSetup -> `loop.fit`.

  sft       masked token NLL of the query given the prompt (data: SFT records)
  rsft      the same objective on best-of-n records (the `pairs` stage's RSFT output)
  dpo       DPO / IPO on preference pairs
  rsft_dpo  DPO + dpo.sft_weight * NLL of the chosen query (AQE's combined objective)

DPO's reference log-probs (`config.dpo.reference`):
  "precomputed"  one pass of the initial model over the pairs before training, stored with the
                 pairs (`<workdir>/pairs_with_ref.jsonl`, fields ref_chosen / ref_rejected =
                 summed log-probs); nothing of the reference stays in memory while training.
                 Pairs that already carry ref_chosen / ref_rejected are used as they are.
  "adapters_off" (LoRA only) the frozen base model without the adapters, run in the step.

The generator's kind (`config.model.kind`: auto | decoder | t5) only changes how log-probs are
computed (`Generator.completion_logprobs` / `pair_logprobs`): a decoder continues the prompt,
T5 encodes it and decodes the query. Batches (prompts left-padded, completions right-padded
ending in EOS), losses, the reference pass and the jitted step are the same for both.
"""

from __future__ import annotations

import io
import json
import os
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.data import storage
from qgjax.errors import ConfigError
from qgjax.train import examples as ex
from qgjax.train.checkpoint import write_json
from qgjax.train.data import Column, StepLoader
from qgjax.train.generator import Generator, load_generator
from qgjax.train.logprobs import split_common_prefix
from qgjax.train.loop import TaskSetup, fit
from qgjax.train.losses import dpo_loss, masked_nll, rsft_dpo_loss

REFERENCE_SAVE_EVERY_S = 30.0   # how often a reference pass saves its progress (a kill loses at most this much)

PAIR_SPEC = {"prompt": Column("prompt", "left"), "chosen": Column("completion", "right"),
             "rejected": Column("completion", "right")}
SFT_SPEC = {"prompt": Column("prompt", "left"), "completion": Column("completion", "right")}


def _load(config: Any) -> Generator:
  """The generator of config.model, its kind resolved (auto: from the model dir's config.json)."""
  from qgjax.models.registry import model_kind

  return load_generator(config, kind=model_kind(config.model.name, config.model.kind))


def _split_eval(doc_ids: list[str], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic split by document (a document's pairs all land on one side)."""
  if fraction <= 0:
    return np.arange(len(doc_ids)), np.zeros((0,), np.int64)
  h = np.asarray([zlib.crc32(f"{seed}:{d}".encode()) / 2**32 for d in doc_ids])
  is_eval = h < fraction
  return np.nonzero(~is_eval)[0], np.nonzero(is_eval)[0]


def _loader(columns: dict, spec: dict, config: Any, *, shuffle: bool, batch_size: int | None = None) -> StepLoader:
  d = config.data
  return StepLoader(columns, spec, batch_size=batch_size or int(config.batch_size),
                    buckets={"prompt": tuple(d.prompt_buckets), "completion": tuple(d.completion_buckets)},
                    pad_id=0, seed=int(config.seed), bucket_window=int(d.bucket_window),
                    shuffle=shuffle, process_index=jax.process_index(), process_count=jax.process_count())


def _prompts(gen: Generator, config: Any) -> ex.RecordPrompts:
  """Prompts as `qgjax generate` renders them (config.prompt)."""
  d = config.data
  corpus = None
  if d.corpus:
    from qgjax.data.beir import Corpus
    path = d.corpus if d.corpus.endswith(".jsonl") else os.path.join(d.corpus, "corpus.jsonl")
    corpus = Corpus(path)
  return ex.RecordPrompts(config.prompt, gen.tokenizer, corpus)


def _read_json(path: str) -> Any:
  try:
    return json.loads(storage.read_bytes(path))
  except (OSError, ValueError):
    return None


def _take(columns: dict, idx: np.ndarray) -> dict:
  return {k: [v[i] for i in idx] for k, v in columns.items()}


def _inputs(config: Any) -> dict:
  """What the training sequences are made of: the model (and dtype), the pairs file, the prompt
  that turns a record into a prompt, and the corpus its doc_ids point into."""
  corpus = config.data.corpus
  return {"model": str(config.model.name), "dtype": str(config.model.dtype),
          "train_file": storage.absolute(config.data.train),
          "prompt": json.loads(config.prompt.to_json()),
          "corpus": storage.absolute(corpus) if corpus else ""}


def _fingerprint(config: Any, gen: Generator) -> dict:
  fp = {"task": config.task, "train_mode": gen.mode, "batch_size": int(config.batch_size),
        "seed": int(config.seed), **_inputs(config)}
  if gen.mode == "lora":
    fp["lora"] = {k: config.lora[k] for k in sorted(config.lora.keys())}
  return fp


# ------------------------------------------------------------------------------------------------
# SFT / RSFT


def sft_loss_fn(gen: Generator):
  def loss_fn(params, frozen, batch):
    lp = gen.completion_logprobs(params, frozen, batch["prompt"], batch["prompt_mask"], batch["completion"],
                                 batch["completion_mask"])
    mask = lp.mask * batch["weight"][:, None]
    nll = masked_nll(lp.token, mask)
    return nll, {"nll": nll, "tokens": jnp.sum(mask)}
  return loss_fn


def setup_sft(config: Any) -> TaskSetup:
  gen = _load(config)
  texts = ex.load_sft(config.data.train, _prompts(gen, config))
  train_idx, eval_idx = _split_eval(texts["group"], float(config.data.eval_fraction), int(config.seed))
  cols = {"prompt": texts["prompt"], "completion": ex.tokenize_completions(gen.tokenizer, texts["completion"])}
  train = _loader(_take(cols, train_idx), SFT_SPEC, config, shuffle=True)
  evals = _loader(_take(cols, eval_idx), SFT_SPEC, config, shuffle=False) if len(eval_idx) else None
  return TaskSetup(gen.trainable, gen.frozen, gen.abstract_trainable, gen.abstract_frozen, sft_loss_fn(gen),
                   train, evals, gen.export, _fingerprint(config, gen),
                   {"train_examples": int(len(train_idx)), "eval_examples": int(len(eval_idx)),
                    "truncated": train.truncated})


def run_sft(config: Any) -> dict:
  return fit(setup_sft(config), config)


run_rsft = run_sft


# ------------------------------------------------------------------------------------------------
# DPO / IPO / RSFT+DPO


def dpo_loss_fn(gen: Generator, dpo: Any, *, sft_weight: float = 0.0, prefix: list[int] | None = None):
  """prefix: the token ids split off the front of every prompt of the data (`split_common_prefix`)."""
  reference = dpo.reference
  loss_type = dpo.loss_type
  share = bool(dpo.share_prompt)
  beta, ls = float(dpo.beta), float(dpo.label_smoothing)
  length_alpha = float(dpo.get("length_alpha", 0.0))
  if length_alpha and loss_type != "sigmoid":
    raise ConfigError(f"dpo.length_alpha={length_alpha} (R-DPO) needs dpo.loss_type='sigmoid', got {loss_type!r}")
  if length_alpha < 0:
    raise ConfigError(f"dpo.length_alpha must be >= 0 (a bonus per token the chosen is longer); got {length_alpha}")
  prefix_ids = np.asarray(prefix, np.int32) if prefix else None

  def loss_fn(params, frozen, batch):
    args = (batch["prompt"], batch["prompt_mask"], batch["chosen"], batch["chosen_mask"], batch["rejected"],
            batch["rejected_mask"])
    pre = None if prefix_ids is None else jnp.asarray(prefix_ids)
    c, r = gen.pair_logprobs(params, frozen, *args, share_prompt=share, prefix=pre)
    if reference == "precomputed":
      ref_c, ref_r = batch["ref_chosen"], batch["ref_rejected"]
    else:
      rc, rr = gen.pair_logprobs(params, frozen, *args, share_prompt=share, adapters=False, prefix=pre)
      ref_c, ref_r = jax.lax.stop_gradient(rc.total), jax.lax.stop_gradient(rr.total)
    if loss_type == "ipo":  # IPO compares per-token mean log-probs
      pi_c, pi_r = c.mean, r.mean
      ref_c, ref_r = ref_c / jnp.maximum(c.count, 1.0), ref_r / jnp.maximum(r.count, 1.0)
    else:
      pi_c, pi_r = c.total, r.total
    kw = dict(beta=beta, label_smoothing=ls, loss_type=loss_type, weights=batch["weight"])
    if length_alpha:
      kw.update(length_alpha=length_alpha, len_chosen=c.count, len_rejected=r.count)
    if sft_weight > 0:
      out = rsft_dpo_loss(pi_c, pi_r, ref_c, ref_r, c.token, c.mask, sft_weight=sft_weight, **kw)
    else:
      out = dpo_loss(pi_c, pi_r, ref_c, ref_r, **kw)
    return out.loss, out.metrics
  return loss_fn


def reference_logprobs(gen: Generator, columns: dict, config: Any, prefix: list[int] | None = None, *,
                       partial: str | None = None, key: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Summed log-probs of chosen / rejected under the initial model (adapters off), one pass in file
  order: two float64 arrays [num pairs]; prefix: the tokens split off the front of every prompt in
  `columns`.

  partial: an .npz file the pass saves its progress to (process 0, at most every
  REFERENCE_SAVE_EVERY_S seconds) and resumes from when its `key` (what the values are computed from)
  matches, so a pass killed midway loses at most that much work; the caller removes it once the
  values are stored."""
  from qgjax.parallel.mesh import mesh_from_config
  from qgjax.parallel.sharding import activate, put_batch, put_on_mesh, rules_for, tree_shardings
  from qgjax.data.progress import progress

  mesh = mesh_from_config(config)
  rules = rules_for(mesh, config.sharding_rules)
  if gen.mode == "lora":
    params, abstract = gen.frozen, gen.abstract_frozen
    logprobs_of = lambda p, *a, **k: gen.pair_logprobs({}, p, *a, adapters=False, **k)
  else:
    params, abstract = gen.trainable, gen.abstract_trainable
    logprobs_of = lambda p, *a, **k: gen.pair_logprobs(p, {}, *a, **k)
  params = put_on_mesh(params, tree_shardings(abstract, mesh, rules))
  share = bool(config.dpo.share_prompt)
  batch_size = int(config.reference_batch_size or config.batch_size)
  loader = _loader(columns, PAIR_SPEC, config, shuffle=False, batch_size=batch_size)

  prefix_ids = np.asarray(prefix, np.int32) if prefix else None

  @jax.jit
  def ref_step(p, b):
    pre = None if prefix_ids is None else jnp.asarray(prefix_ids)
    c, r = logprobs_of(p, b["prompt"], b["prompt_mask"], b["chosen"], b["chosen_mask"], b["rejected"],
                       b["rejected_mask"], share_prompt=share, prefix=pre)
    return c.total, r.total

  from jax.experimental import multihost_utils
  key_text = json.dumps({**(key or {}), "batch_size": batch_size, "num_pairs": loader.num_examples,
                         "tokens_crc32": _tokens_crc(columns), "prefix": [int(t) for t in (prefix or [])],
                         "share_prompt": share}, sort_keys=True)
  start, out_c, out_r = _resume_reference(partial, key_text, loader.num_examples)
  if jax.process_count() > 1:   # every process goes on from process 0's file (it alone writes it)
    start = int(multihost_utils.broadcast_one_to_all(np.int32(start)))
    out_c, out_r = (np.asarray(multihost_utils.broadcast_one_to_all(a.astype(np.float32)), np.float64)
                    for a in (out_c, out_r))
  saved_at = time.monotonic()
  for s in progress(range(start, loader.steps_per_epoch), total=loader.steps_per_epoch, initial=start,
                    desc="reference log-probs", unit="batch"):
    host = loader.batch(s)
    with activate(mesh, rules):
      c, r = ref_step(params, put_batch(host, mesh, rules))
    if jax.process_count() > 1:
      c, r = multihost_utils.process_allgather((c, r), tiled=True)
    rows = loader.epoch_order(0)[s]
    keep = (s * batch_size + np.arange(batch_size)) < loader.num_examples
    out_c[rows[keep]] = np.asarray(c)[keep]
    out_r[rows[keep]] = np.asarray(r)[keep]
    if partial and jax.process_index() == 0 and time.monotonic() - saved_at >= REFERENCE_SAVE_EVERY_S:
      _save_reference(partial, key_text, s + 1, out_c, out_r)
      saved_at = time.monotonic()
  return out_c, out_r


def _tokens_crc(columns: dict) -> int:
  """CRC32 of the prompt / chosen / rejected token ids, row by row (what a partial pass was computed on)."""
  crc = 0
  for name in ("prompt", "chosen", "rejected"):
    for row in columns[name]:
      crc = zlib.crc32(np.asarray(row, np.int32).tobytes() + b"|", crc)
  return crc


def _resume_reference(partial: str | None, key_text: str, n: int) -> tuple[int, np.ndarray, np.ndarray]:
  """(batches done, ref_chosen, ref_rejected) from a partial reference pass whose key and size match;
  (0, zeros, zeros) when there is none (or it was made from other inputs, or cannot be read)."""
  fresh = (0, np.zeros(n, np.float64), np.zeros(n, np.float64))
  if not partial or jax.process_index() != 0 or not storage.as_path(partial).is_file():
    return fresh
  try:
    with np.load(io.BytesIO(storage.read_bytes(partial))) as z:
      if str(z["key"]) != key_text or z["ref_chosen"].shape != (n,):
        return fresh
      return int(z["steps_done"]), z["ref_chosen"].astype(np.float64), z["ref_rejected"].astype(np.float64)
  except (OSError, ValueError, KeyError):
    return fresh


def _save_reference(partial: str, key_text: str, steps_done: int, ref_c: np.ndarray, ref_r: np.ndarray) -> None:
  buf = io.BytesIO()
  np.savez(buf, key=np.asarray(key_text), steps_done=np.int64(steps_done), ref_chosen=ref_c, ref_rejected=ref_r)
  storage.as_path(partial).parent.mkdir(parents=True, exist_ok=True)
  storage.write_bytes_atomic(partial, buf.getvalue())


def setup_dpo(config: Any, *, sft_weight: float | None = None) -> TaskSetup:
  gen = _load(config)
  dpo = config.dpo
  reference = dpo.reference
  if reference not in ("precomputed", "adapters_off"):
    raise ConfigError(f"dpo.reference={reference!r}; expected 'precomputed' or 'adapters_off'")
  if reference == "adapters_off" and gen.mode != "lora":
    raise ConfigError("dpo.reference='adapters_off' needs train_mode='lora' (the base model is the reference)")
  src = config.data.train
  stored = os.path.join(storage.absolute(config.workdir), "pairs_with_ref.jsonl")
  stored_inputs = stored[: -len(".jsonl")] + ".inputs.json"   # what the stored reference was computed from
  inputs = _inputs(config)
  texts = ex.load_pairs(src, _prompts(gen, config))
  cols = {"prompt": texts["prompt"],
          "chosen": ex.tokenize_completions(gen.tokenizer, texts["chosen"]),
          "rejected": ex.tokenize_completions(gen.tokenizer, texts["rejected"])}
  info: dict = {}
  prefix: list[int] = []
  if gen.kind != "t5" and bool(dpo.share_prompt) and bool(dpo.share_prompt_prefix):
    prefix, cols["prompt"] = split_common_prefix(cols["prompt"])
    info["shared_prefix_tokens"] = len(prefix)
  if reference == "precomputed":
    if "ref_chosen" in texts:
      info["reference"] = f"stored in {src}"
      cols["ref_chosen"], cols["ref_rejected"] = texts["ref_chosen"], texts["ref_rejected"]
    elif storage.as_path(stored).is_file() and _read_json(stored_inputs) == inputs:
      done = ex.load_pairs(stored, None)
      if done["chosen"] != texts["chosen"] or done["rejected"] != texts["rejected"] or "ref_chosen" not in done:
        raise ConfigError(f"{stored} does not match {src}; delete it or use a new workdir")
      info["reference"] = f"stored in {stored}"
      cols["ref_chosen"], cols["ref_rejected"] = done["ref_chosen"], done["ref_rejected"]
    else:   # none yet, or made from another model / prompt / pairs file: (re)compute it
      partial = stored[: -len(".jsonl")] + ".partial.npz"
      ref_c, ref_r = reference_logprobs(gen, cols, config, prefix, partial=partial,
                                        key={**inputs, "train_mode": gen.mode})
      if jax.process_index() == 0:
        storage.as_path(stored).parent.mkdir(parents=True, exist_ok=True)
        ex.write_pairs_with_reference(src, stored, ref_c, ref_r)
        write_json(stored_inputs, inputs)   # written last: a kill in between leaves a cache that is not reused
        storage.remove(partial)
      info["reference"] = f"computed into {stored}"
      cols["ref_chosen"], cols["ref_rejected"] = list(ref_c), list(ref_r)
  else:
    info["reference"] = "base model with adapters off"
  train_idx, eval_idx = _split_eval(texts["group"], float(config.data.eval_fraction), int(config.seed))
  train = _loader(_take(cols, train_idx), PAIR_SPEC, config, shuffle=True)
  evals = _loader(_take(cols, eval_idx), PAIR_SPEC, config, shuffle=False) if len(eval_idx) else None
  weight = float(dpo.sft_weight) if sft_weight is None else sft_weight
  info.update(train_pairs=int(len(train_idx)), eval_pairs=int(len(eval_idx)), truncated=train.truncated)
  # share_prompt_prefix changes the cost of a step, not its result: a run resumes with either; length_alpha
  # is absent at 0 (plain DPO), so checkpoints written before the key existed still resume
  fp = dict(_fingerprint(config, gen), dpo={k: dpo[k] for k in sorted(dpo.keys())
                                            if k != "share_prompt_prefix" and not (k == "length_alpha" and not dpo[k])})
  return TaskSetup(gen.trainable, gen.frozen, gen.abstract_trainable, gen.abstract_frozen,
                   dpo_loss_fn(gen, dpo, sft_weight=weight, prefix=prefix), train, evals, gen.export, fp, info)


def run_dpo(config: Any) -> dict:
  return fit(setup_dpo(config, sft_weight=0.0), config)


def run_rsft_dpo(config: Any) -> dict:
  weight = float(config.dpo.sft_weight)
  if weight <= 0:
    raise ConfigError("task rsft_dpo needs dpo.sft_weight > 0 (the weight of the RSFT term)")
  return fit(setup_dpo(config, sft_weight=weight), config)
