"""Bi-encoder (retriever) training with InfoNCE: in-batch negatives over the global batch + mined hard negatives.

Loss for a global batch of B queries, their positives and H mined negatives each:

  candidates = [pos_0 .. pos_{B-1}, neg_{0,0} .. neg_{B-1,H-1}]     (B * (1 + H) documents)
  logits[i, j] = <q_i, c_j> / temperature   (q, c L2-normalised with similarity="cos", the default)
  loss = mean_i  -log softmax(logits[i])[i]

Every query sees every candidate of the whole global batch, on all devices: the step is
jitted over global arrays sharded on the batch axis (`NamedSharding`), so `q @ candidates.T`
makes XLA all-gather the candidate embeddings across devices (no per-device-only negatives).
A candidate that is the same document as query i's positive (another query of the same
document, or a mined negative equal to it) is masked out of row i, so it never counts as a
negative. Towers: `shared` (one encoder) or separate query / document encoders.
`config.loss = "margin_mse"` replaces InfoNCE by GPL's MarginMSE on the mined negatives, against
the reranker's scores stored by `qgjax mine` (qgjax.train.margin_mse).

  qgjax train --config configs/retriever.py:tiny
  qgjax train --config configs/retriever.py --config.data.train=runs/nfcorpus/mine \
      --config.data.corpus=../shared/data/nfcorpus --config.workdir=runs/nfcorpus/retriever

Data: the tuples of `qgjax mine` ({query, pos_id, neg_ids, ...}; a sharded output dir or a
.jsonl file; records with a `skip` field are ignored) and the BEIR corpus they point into. Export: a sentence-transformers directory
(`SentenceTransformer(dir)` loads it); separate towers export `<dir>/query` and `<dir>/doc`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.data import storage
from qgjax.errors import ConfigError, InputError
from qgjax.train.data import Column, StepLoader
from qgjax.train.retriever_model import RetrieverModel, Towers, check_towers, encode_chunking, similarity_normalizes
from qgjax.train.margin_mse import (check_teacher_weight, margin_mse_loss, retriever_loss_name, teacher_columns,
                                     teacher_scores)

log = logging.getLogger(__name__)

MASKED = -1e9


def infonce_loss(q: jax.Array, pos: jax.Array, neg: jax.Array | None = None, *, temperature: float = 0.05,
                 pos_key: jax.Array | None = None, neg_key: jax.Array | None = None,
                 weight: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """InfoNCE over in-batch + hard negatives.

  q f32[B, D], pos f32[B, D], neg f32[B, H, D] (or None); pos_key [B] / neg_key [B, H]: document
  identities (any numeric dtype; equal key = same document) used to mask false in-batch
  negatives; weight f32[B] (0 drops a row from the mean but keeps its documents as negatives).
  Returns (loss scalar, metrics: accuracy, pos_score, hardest_neg_score).
  """
  b = q.shape[0]
  q, pos = q.astype(jnp.float32), pos.astype(jnp.float32)   # scores and softmax in f32 whatever the tower computed in
  cands = pos if neg is None else jnp.concatenate([pos, neg.astype(jnp.float32).reshape(-1, neg.shape[-1])], axis=0)
  logits = jnp.einsum("bd,cd->bc", q, cands, preferred_element_type=jnp.float32)
  labels = jnp.arange(b)
  if pos_key is not None:
    cand_key = pos_key if neg is None else jnp.concatenate([pos_key, neg_key.reshape(-1)], axis=0)
    same_doc = pos_key[:, None] == cand_key[None, :]
    not_label = jnp.arange(cands.shape[0])[None, :] != labels[:, None]
    logits = jnp.where(same_doc & not_label, MASKED, logits)
  scaled = logits / temperature
  logz = jax.nn.logsumexp(scaled, axis=-1)
  ce = logz - scaled[labels, labels]
  w = jnp.ones((b,), jnp.float32) if weight is None else weight.astype(jnp.float32)
  loss = jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1e-9)
  pos_score = logits[labels, labels]
  neg_logits = jnp.where(jnp.arange(cands.shape[0])[None, :] == labels[:, None], MASKED, logits)
  hardest = jnp.max(neg_logits, axis=-1)
  wsum = jnp.maximum(jnp.sum(w), 1e-9)
  metrics = {"accuracy": jnp.sum((pos_score > hardest) * w) / wsum,
             "pos_score": jnp.sum(pos_score * w) / wsum, "hardest_neg_score": jnp.sum(hardest * w) / wsum}
  return loss, metrics


# ------------------------------------------------------------------------------------------------
# The task: towers, data, loss, export.


def encode_batch(towers: Towers, params: Any, frozen: Any, batch: Mapping[str, jax.Array], num_negatives: int,
                 keys=(None, None, None)):
  """A retriever batch -> (q f32[B, D], pos f32[B, D], neg f32[B, H, D] or None, neg_key f32[B, H] or None);
  keys: dropout keys of the query, positive and negative encodes (None: deterministic)."""
  q = towers.encode(params, "query", batch["query"], batch["query_mask"], keys[0], frozen)
  p = towers.encode(params, "doc", batch["pos"], batch["pos_mask"], keys[1], frozen)
  neg = neg_key = None
  if num_negatives:
    toks = jnp.concatenate([batch[f"neg{h}"] for h in range(num_negatives)], axis=0)   # [H * B, L]
    mask = jnp.concatenate([batch[f"neg{h}_mask"] for h in range(num_negatives)], axis=0)
    n = towers.encode(params, "doc", toks, mask, keys[2], frozen)
    neg = n.reshape(num_negatives, q.shape[0], -1).swapaxes(0, 1)                        # [B, H, D]
    neg_key = jnp.stack([batch[f"neg{h}_key"] for h in range(num_negatives)], axis=1)
  return q, p, neg, neg_key


def student_pass(towers: Towers, params: Any, frozen: Any, loader: StepLoader, num_negatives: int):
  """One file-order pass of `loader` through the student at `params` -> yields (batch, s_pos f[B],
  s_neg f[B, H]) per step (inner products of the encoder outputs; rows with weight 0 are wrap-around repeats)."""
  from qgjax.train.margin_mse import student_scores

  @jax.jit
  def scores(params, frozen, batch):
    q, p, neg, _ = encode_batch(towers, params, frozen, batch, num_negatives)
    return student_scores(q, p, neg)

  params, frozen = jax.device_put((params, frozen))   # host trees: moved once, not at every call
  for step in range(loader.steps_per_epoch):
    batch = loader.batch(step)
    s_pos, s_neg = scores(params, frozen, {k: jnp.asarray(v) for k, v in batch.items()})
    yield batch, np.asarray(s_pos), np.asarray(s_neg)


def _from_process_0(tree: Any) -> Any:
  """Every process gets process 0's copy of a tree of host arrays (its float rounding wins)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    tree = jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))
  return tree


def fit_margin_scale(towers: Towers, params: Any, frozen: Any, loader: StepLoader, num_negatives: int
                     ) -> tuple[float, float]:
  """The least-squares margin_scale (margin_mse.fitted_scale) of the teacher's margins on the student's at
  `params`, over one file-order pass of `loader` (every row on every process, so all processes fit the same
  scale up to float rounding; process 0's is used) -> (scale, Pearson of the margins)."""
  from qgjax.train.margin_mse import fitted_scale

  student, teacher, weight = [], [], []
  for batch, s_pos, s_neg in student_pass(towers, params, frozen, loader, num_negatives):
    student.append(s_pos[:, None] - s_neg)
    ce_pos, ce_neg = teacher_scores(batch, num_negatives)
    teacher.append(np.asarray(ce_pos)[:, None] - np.asarray(ce_neg))
    weight.append(batch["weight"])
  fit = np.asarray(fitted_scale(np.concatenate(student), np.concatenate(teacher), np.concatenate(weight)))
  fit = _from_process_0(fit)
  return float(fit[0]), float(fit[1])


def mix_start_student(towers: Towers, params: Any, frozen: Any, loader: StepLoader, num_negatives: int,
                      weight: float, train_rows: np.ndarray
                      ) -> tuple[dict[str, list[float]], float, np.ndarray]:
  """The teacher columns of `loader`'s rows (all of them, file order) mixed with the student at `params`
  (margin_mse.mixed_teacher; every process scores every row, process 0's result is used) ->
  ({ce_pos, ce_neg{h}: one value per row}, k: the student-to-teacher spread ratio, the student's margins
  f[N, H])."""
  from qgjax.train.margin_mse import mixed_teacher

  n, h = loader.num_examples, num_negatives
  s_pos, s_neg = np.zeros(n), np.zeros((n, h))
  for step, (batch, sp, sn) in enumerate(student_pass(towers, params, frozen, loader, h)):
    rows = np.arange(step * loader.batch_size, (step + 1) * loader.batch_size)
    keep = rows < n                      # file order: row i of step s is example s * B + i
    s_pos[rows[keep]], s_neg[rows[keep]] = sp[keep], sn[keep]
  ce_pos = loader.scalars["ce_pos"]
  ce_neg = np.stack([loader.scalars[f"ce_neg{j}"] for j in range(h)], axis=1)
  mixed_pos, mixed_neg, k = mixed_teacher(ce_pos, ce_neg, s_pos, s_neg, weight, train_rows)
  mixed_pos, mixed_neg, margins, k = _from_process_0((mixed_pos, mixed_neg, s_pos[:, None] - s_neg, np.asarray(k)))
  cols = {"ce_pos": mixed_pos.tolist(), **{f"ce_neg{j}": mixed_neg[:, j].tolist() for j in range(h)}}
  return cols, float(k), margins


def retriever_loss_fn(towers: Towers, num_negatives: int, temperature: float, seed: int = 0,
                      loss: str = "infonce", margin_scale: float = 1.0):
  """(params, frozen, batch) -> (loss, metrics) for `loop.fit`; loss "infonce" or "margin_mse"
  (the batch then carries the teacher's ce_pos / ce_neg{h}; margin_scale multiplies the student's margins)."""

  def loss_fn(params, frozen, batch):
    rng = None
    if towers.dropout:
      rng = jax.random.fold_in(jax.random.key(seed), batch["step"][0].astype(jnp.int32))
    keys = jax.random.split(rng, 3) if rng is not None else (None, None, None)
    q, p, neg, neg_key = encode_batch(towers, params, frozen, batch, num_negatives, keys)
    if loss == "margin_mse":
      ce_pos, ce_neg = teacher_scores(batch, num_negatives)
      return margin_mse_loss(q, p, neg, ce_pos, ce_neg, weight=batch["weight"], scale=margin_scale)
    return infonce_loss(q, p, neg, temperature=temperature, pos_key=batch["pos_key"], neg_key=neg_key,
                        weight=batch["weight"])

  return loss_fn


class _StepColumn(StepLoader):
  """A StepLoader whose batches also carry the global step (per row) for dropout keys."""

  def batch(self, step: int) -> dict[str, np.ndarray]:
    out = super().batch(step)
    out["step"] = np.full(len(out["weight"]), step, np.float32)
    return out


def read_tuples(path: str) -> tuple[list[dict], list[tuple[str, int]]]:
  """Training tuples of `qgjax mine` (a complete sharded output directory or a .jsonl file), the
  skipped examples left out -> (tuples, (file, line) of each) for errors that point at the record."""
  from qgjax.data.records import iter_records
  if not storage.as_path(path).exists():
    raise InputError("training tuples not found (run `qgjax mine` first?)", path=path)
  out, where = [], []
  for src, line, rec in iter_records(path):
    if "skip" not in rec:
      out.append(rec)
      where.append((src, line))
  return out, where


def _doc_key(doc_row: Mapping[str, int], doc_id: str) -> float:
  """Document identity as an f32-exact number (corpus row < 2^24) for the duplicate mask."""
  return float(doc_row[doc_id] % (1 << 24))


def build_columns(tuples: Sequence[Mapping], corpus, tokenizer, *, num_negatives: int, query_max_len: int,
                  doc_max_len: int, source: str = "", where: Sequence[tuple[str, int]] | None = None
                  ) -> dict[str, list]:
  """Tuples -> token columns query / pos / neg{h} and scalar keys, for StepLoader.

  An example with fewer than `num_negatives` negatives reuses its own (cyclically); one with none
  is an error unless num_negatives == 0. `where`: each tuple's (file, line) for errors (else
  `source` and the tuple's position).
  """
  doc_ids = corpus.doc_ids if hasattr(corpus, "doc_ids") else list(corpus)
  doc_row = {d: i for i, d in enumerate(doc_ids)}
  needed: dict[str, None] = {}
  for i, t in enumerate(tuples):
    path, line = where[i] if where is not None else (source, i + 1)
    for field in ("query", "pos_id"):
      if field not in t:
        raise InputError("missing field", path=path, line=line, field=field)
    ids = [t["pos_id"]] + list(t.get("neg_ids", []))[: max(num_negatives, 0) or 0]
    if num_negatives and not t.get("neg_ids"):
      raise InputError("example has no negatives (set num_negatives=0 for in-batch only)", path=path,
                       line=line, field="neg_ids")
    for d in ids:
      if d not in doc_row:
        in_corpus = f" {corpus.path}" if hasattr(corpus, "path") else ""
        raise InputError(f"document {d!r} is not in the corpus{in_corpus} (wrong data.corpus?)", path=path,
                         line=line, field="pos_id" if d == t["pos_id"] else "neg_ids")
      needed[d] = None
  docs = corpus.get_many(list(needed)) if hasattr(corpus, "get_many") else [corpus[d] for d in needed]
  texts = [d.contents for d in docs]
  enc = tokenizer(texts, truncation=True, max_length=doc_max_len, padding=False)["input_ids"]
  doc_tokens = dict(zip(needed, enc))
  q_tokens = tokenizer([str(t["query"]) for t in tuples], truncation=True, max_length=query_max_len,
                       padding=False)["input_ids"]
  cols: dict[str, list] = {"query": q_tokens, "pos": [doc_tokens[t["pos_id"]] for t in tuples],
                           "pos_key": [_doc_key(doc_row, t["pos_id"]) for t in tuples]}
  for h in range(num_negatives):
    negs = [list(t["neg_ids"]) for t in tuples]
    cols[f"neg{h}"] = [doc_tokens[n[h % len(n)]] for n in negs]
    cols[f"neg{h}_key"] = [_doc_key(doc_row, n[h % len(n)]) for n in negs]
  return cols


def retriever_spec(num_negatives: int) -> dict[str, Column]:
  spec = {"query": Column("query"), "pos": Column("doc")}
  spec.update({f"neg{h}": Column("doc") for h in range(num_negatives)})
  return spec


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  if fraction <= 0 or n < 4:
    return np.arange(n), np.zeros((0,), np.int64)
  rng = np.random.default_rng([seed, 7])
  is_eval = rng.random(n) < fraction
  return np.nonzero(~is_eval)[0], np.nonzero(is_eval)[0]


def example_cap(data: Any) -> int:
  """The most training tuples to use (0 = all): data.max_examples, else the number of tuples at
  data.max_examples_like (another mine output, counted as read_tuples reads it)."""
  cap, like = int(data.max_examples or 0), str(data.max_examples_like or "")
  if cap < 0:
    raise ConfigError(f"config.data.max_examples must be >= 0 (0 = all tuples); got {cap}")
  if cap and like:
    raise ConfigError("set config.data.max_examples or config.data.max_examples_like, not both")
  if like:
    cap = len(read_tuples(like)[0])
    if not cap:
      raise InputError("no training tuples to take the count from (config.data.max_examples_like)", path=like)
  return cap


def _subset(idx: np.ndarray, cap: int, seed: int) -> np.ndarray:
  """A seeded random `cap` of `idx`, in their order (all of them when cap is 0 or not smaller)."""
  if not cap or cap >= len(idx):
    return idx
  return np.sort(np.random.default_rng([seed, 11]).choice(idx, cap, replace=False))


def bert_retriever_model(config: Any) -> RetrieverModel:
  """The BERT-family bi-encoder of `config.model` (a sentence-transformers / HF dir or name)."""
  from qgjax.models.bert import BiEncoder, load_bi_encoder
  from qgjax.parallel.backend import model_numerics

  m = config.model
  if config.train_mode != "full" or m.pooling or m.query_prefix:
    raise ConfigError("train_mode=lora, model.pooling and model.query_prefix are for model.family=decoder; "
                      "a BERT-family retriever trains fully with the checkpoint's pooling")
  module, params, tokenizer, info = load_bi_encoder(m.name, dtype="float32")
  dtype, attention = model_numerics(m)
  overrides = {"dtype": dtype, "attention_impl": attention}
  if m.remat:
    overrides["remat"] = True
  normalize = similarity_normalizes(config, module.normalize)
  module = BiEncoder(dataclasses.replace(info["config"], **overrides), pooling=module.pooling, normalize=normalize)
  towers = Towers(module, shared=check_towers(config), dropout=bool(m.dropout), **encode_chunking(config))
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  trainable = {"query": params} if towers.shared else {"query": params, "doc": jax.tree.map(np.copy, params)}
  abstract_one = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 2), jnp.int32),
                                jnp.ones((1, 2), bool))["params"]
  abstract = {"query": abstract_one} if towers.shared else {"query": abstract_one, "doc": abstract_one}

  def export(p, frozen, out_dir, max_seq_length):
    return export_towers(p, module, tokenizer, out_dir, max_seq_length=max_seq_length,
                         passthrough=info.get("passthrough"))

  return RetrieverModel(towers, trainable, {}, abstract, {}, tokenizer, int(info["max_seq_length"]), export)


def setup_retriever(config: Any):
  """config -> loop.TaskSetup for the bi-encoder (config.model.family: bert | decoder)."""
  from qgjax.data.beir import Corpus
  from qgjax.train.loop import TaskSetup

  d, m = config.data, config.model
  if int(config.accum_steps or 1) != 1:
    raise ConfigError("retriever training needs accum_steps=1: accumulation would shrink the in-batch "
                      "negatives to one microbatch; use more devices or a smaller batch_size instead")
  if not d.train:
    raise ConfigError("config.data.train must name the mined tuples (qgjax mine's output)")
  if not d.corpus:
    raise ConfigError("config.data.corpus must name the BEIR corpus the tuples point into")
  if m.family == "bert":
    model = bert_retriever_model(config)
  elif m.family == "decoder":
    from qgjax.train.decoder_retriever import decoder_retriever_model
    model = decoder_retriever_model(config)
  else:
    raise ConfigError(f"config.model.family must be 'bert' or 'decoder', got {m.family!r}")
  towers, tokenizer, similarity = model.towers, model.tokenizer, config.similarity

  corpus_path = d.corpus if d.corpus.endswith(".jsonl") else os.path.join(d.corpus, "corpus.jsonl")
  corpus = Corpus(corpus_path)
  tuples, where = read_tuples(d.train)
  if not tuples:
    raise InputError("no training tuples", path=d.train)
  if model.query_prefix:
    tuples = [{**t, "query": model.query_prefix + str(t["query"])} if "query" in t else t for t in tuples]
  h = int(config.num_negatives)
  max_q, max_d = int(d.query_max_len), int(min(d.doc_max_len, model.max_seq_length))
  cols = build_columns(tuples, corpus, tokenizer, num_negatives=h, query_max_len=max_q, doc_max_len=max_d,
                       source=d.train, where=where)
  loss = retriever_loss_name(config, h)
  margin_scale = float(config.margin_scale)
  if margin_scale <= 0:
    raise ConfigError(f"config.margin_scale must be > 0; got {margin_scale}")
  if loss == "margin_mse":
    cols.update(teacher_columns(tuples, h, where))
  seed = int(config.seed)
  train_idx, eval_idx = _split(len(tuples), float(d.eval_fraction), seed)
  cap = example_cap(d)
  train_idx = _subset(train_idx, cap, seed)
  take = lambda idx: {k: [v[i] for i in idx] for k, v in cols.items()}
  buckets = {"query": tuple(sorted({b for b in d.query_buckets if b < max_q} | {max_q})),
             "doc": tuple(sorted({b for b in d.doc_buckets if b < max_d} | {max_d}))}
  kw = dict(batch_size=int(config.batch_size), buckets=buckets, pad_id=int(tokenizer.pad_token_id or 0), seed=seed,
            bucket_window=int(d.bucket_window), process_index=jax.process_index(),
            process_count=jax.process_count())
  teacher_weight = check_teacher_weight(float(config.get("teacher_weight", 1.0)))
  mixed = {}
  if teacher_weight != 1.0:
    if loss != "margin_mse":
      raise ConfigError(f"teacher_weight={teacher_weight} mixes MarginMSE's teacher with the start student; "
                        f"it needs loss=margin_mse (got {loss!r})")
    every_row = _StepColumn(cols, retriever_spec(h), shuffle=False, **{**kw, "process_index": 0, "process_count": 1})
    mixed_cols, k, start_margins = mix_start_student(towers, model.trainable, model.frozen, every_row, h,
                                                     teacher_weight, train_idx)
    cols.update(mixed_cols)
    mixed = {"teacher_mix": {"teacher_weight": teacher_weight, "student_to_teacher": k}}
    log.info("teacher mixed with the start student: %.2f x teacher + %.2f x %.4g x student scores on %d tuples "
             "(the spread ratio from the %d training tuples)", teacher_weight, 1 - teacher_weight, k, len(tuples),
             len(train_idx))
  train = _StepColumn(take(train_idx), retriever_spec(h), shuffle=True, **kw)
  evals = _StepColumn(take(eval_idx), retriever_spec(h), shuffle=False, **kw) if len(eval_idx) else None
  fit_n = int(config.get("margin_scale_fit", 0) or 0)
  fitted = {}
  if loss == "margin_mse" and fit_n > 0:
    if mixed:   # the start student's margins are already known: least squares of the mixed ones on them
      from qgjax.train.margin_mse import fitted_scale
      rows = train_idx[:fit_n]
      target = np.asarray(cols["ce_pos"])[rows, None] - np.stack([np.asarray(cols[f"ce_neg{j}"])[rows]
                                                                  for j in range(h)], axis=1)
      margin_scale, pearson = fitted_scale(start_margins[rows], target, np.ones(len(rows)))
    else:
      fit_loader = _StepColumn(take(train_idx[:fit_n]), retriever_spec(h), shuffle=False,
                               **{**kw, "process_index": 0, "process_count": 1})
      margin_scale, pearson = fit_margin_scale(towers, model.trainable, model.frozen, fit_loader, h)
    fitted = {"margin_scale": margin_scale, "margin_scale_fit": {"tuples": min(fit_n, len(train_idx)),
                                                                  "pearson": pearson}}
    log.info("margin_scale fitted on %d training tuples: %.4g (student vs teacher margins, Pearson %.3f)",
             fitted["margin_scale_fit"]["tuples"], margin_scale, pearson)

  def export(p, frozen, out_dir):
    return model.export(p, frozen, out_dir, max_d)

  fp = {"task": config.task, "model": str(m.name), "towers": config.towers, "batch_size": int(config.batch_size),
        "num_negatives": h, "temperature": float(config.temperature), "similarity": similarity, "seed": seed,
        "train": storage.absolute(d.train), **model.fingerprint}
  if loss != "infonce":
    fp["loss"] = loss   # absent for InfoNCE, so earlier runs still resume
  if mixed:
    fp["teacher_weight"] = teacher_weight   # absent at 1 (the teacher alone), so earlier runs still resume
  if fitted:
    fp["margin_scale_fit"] = fit_n      # the fitted value is recomputed on resume (same start, same tuples)
  elif margin_scale != 1.0:
    fp["margin_scale"] = margin_scale   # likewise absent at the default
  if cap:
    fp["max_examples"] = cap   # likewise absent without a cap
  extra = {"train_examples": int(len(train_idx)), "eval_examples": int(len(eval_idx)), "tuples_read": len(tuples),
           "truncated": train.truncated, "towers": config.towers, **mixed, **fitted}
  return TaskSetup(model.trainable, model.frozen, model.abstract_trainable, model.abstract_frozen,
                   retriever_loss_fn(towers, h, float(config.temperature), seed, loss, margin_scale),
                   train, evals, export, fp, extra)


def export_towers(params: Any, module: Any, tokenizer: Any, out_dir: str, *, max_seq_length: int,
                  passthrough: Mapping | None = None) -> str | dict[str, str]:
  """Writes sentence-transformers dir(s): shared -> out_dir; separate -> out_dir/query, out_dir/doc."""
  from flax import linen as nn

  from qgjax.models.bert import save_bi_encoder_st
  from qgjax.parallel.distributed import is_main_process
  from qgjax.train.generator import gather_to_host

  host = gather_to_host(params)
  import dataclasses
  module = type(module)(dataclasses.replace(module.config, dtype="float32"), pooling=module.pooling,
                        normalize=module.normalize)
  if not is_main_process():
    return out_dir
  if set(host) == {"query"}:
    save_bi_encoder_st(nn.unbox(host["query"]), module, tokenizer, out_dir, max_seq_length=max_seq_length,
                       passthrough=passthrough)
    return out_dir
  out = {}
  for tower in ("query", "doc"):
    path = os.path.join(out_dir, tower)
    save_bi_encoder_st(nn.unbox(host[tower]), module, tokenizer, path, max_seq_length=max_seq_length,
                       passthrough=passthrough)
    out[tower] = path
  return out


def run_retriever(config: Any) -> dict:
  from qgjax.train.loop import fit
  return fit(setup_retriever(config), config)
