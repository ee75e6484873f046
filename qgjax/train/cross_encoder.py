"""Cross-encoder (reranker) training, ReadQG style: BCE with the in-batch hardest negative document
plus a query-query margin loss over generated positive / negative queries.

For a batch of B examples (q+_i, q-_i, d_i) (a document, a generated query relevant to it and
one that is not; e.g. ReadQG's r=1 / r=0 queries or `qgjax pairs`' chosen / rejected):

  s+_i   = F(q+_i, d_i)
  j*_i   = argmax_{j in pool(i)} F(q+_i, d_j)     pool(i): the next `hard_negative_pool` documents of
                                                 the global batch (other documents only), scored
                                                 without gradient
  s-_i   = F(q+_i, d_{j*_i})                      the in-batch hardest negative document
  sq-_i  = F(q-_i, d_i)
  loss   = BCE(s+, 1) + BCE(s-, 0) + margin_weight * max(0, margin + sq- - s+)

F is the one-label logit of a `CrossEncoder` on `[CLS] q [SEP] d [SEP]`. Pairs are assembled
inside the jitted step from separately tokenised queries (`[CLS] q [SEP]`) and documents
(`[CLS] d [SEP]`, CLS dropped when joined; RoBERTa joins with `</s></s>`), so any (query, doc)
combination of the batch costs no host work.

  qgjax train --config configs/cross_encoder.py:tiny
  qgjax train --config configs/cross_encoder.py --config.data.train=runs/nfcorpus/pairs/pairs.jsonl \
      --config.data.corpus=../shared/data/nfcorpus --config.workdir=runs/nfcorpus/cross_encoder
  qgjax train --config configs/cross_encoder.py:qrels        # NFCorpus's training qrels, BM25 negatives

Qrels mode (config.data.qrels_split set, config.data.corpus a BEIR dir): the examples are the split's
judged (query, relevant document) pairs with BM25 hard negative documents (`qgjax.retrieval.
qrels_examples`); each (pair, negative) is one example with q+ = the query, d = the relevant document
and one more term, BCE(F(q+, d_bm25), 0). There is no q- (the margin term is 0 and F(q-, d) is not
computed), and pool documents of the same query (its other positives) are never its in-batch negative.

Export: an HF `*ForSequenceClassification` directory (transformers, sentence-transformers'
CrossEncoder and `qgjax.models.bert.load_cross_encoder` read it).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.data import storage
from qgjax.errors import ConfigError, InputError
from qgjax.train.data import Column, StepLoader


def join_pairs(q: jax.Array, q_mask: jax.Array, d: jax.Array, d_mask: jax.Array, *, pad_id: int,
               joiner: int | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """[CLS] q [SEP] + [CLS] d [SEP] -> [CLS] q [SEP] d [SEP] per row (right-padded inputs).

  q int32[N, Lq], d int32[N, Ld] with boolean masks. joiner None drops d's first token (BERT);
  an id replaces it (RoBERTa: `</s>`, giving `<s> q </s></s> d </s>`). Returns tokens, mask and
  token_type_ids int32[N, Lq + Ld - 1] for BERT, [N, Lq + Ld] with a joiner (the longest pair that
  fits; type 1 on the document part when joiner is None).
  """
  n, lq = q.shape
  ld = d.shape[1]
  skip = 1 if joiner is None else 0
  length = lq + ld - skip
  q_len = jnp.sum(q_mask, axis=1).astype(jnp.int32)
  d_len = jnp.sum(d_mask, axis=1).astype(jnp.int32)
  if joiner is not None:
    d = d.at[:, 0].set(joiner)
  t = jnp.arange(length)[None, :]
  in_q = t < q_len[:, None]
  d_pos = t - q_len[:, None] + skip
  in_d = (~in_q) & (d_pos < d_len[:, None])
  q_tok = jnp.take_along_axis(q, jnp.clip(t, 0, lq - 1).repeat(n, 0), axis=1)
  d_tok = jnp.take_along_axis(d, jnp.clip(d_pos, 0, ld - 1), axis=1)
  tokens = jnp.where(in_q, q_tok, jnp.where(in_d, d_tok, pad_id)).astype(jnp.int32)
  mask = in_q | in_d
  types = (in_d & (joiner is None)).astype(jnp.int32)
  return tokens, mask, types


def _bce(logits: jax.Array, label: float) -> jax.Array:
  """Binary cross-entropy with logits, per element."""
  return jnp.logaddexp(0.0, logits) - label * logits


def readqg_ce_loss(s_pos: jax.Array, s_hard: jax.Array, s_qneg: jax.Array, *, margin: float = 0.0,
                   margin_weight: float = 1.0, has_qneg: jax.Array | None = None,
                   has_hard: jax.Array | None = None, weight: jax.Array | None = None,
                   s_neg_doc: jax.Array | None = None, has_neg_doc: jax.Array | None = None
                   ) -> tuple[jax.Array, dict]:
  """The loss above from the three score vectors f32[B].

  has_qneg / has_hard: 0 where an example has no q- / no negative document in its pool; only that
  term is dropped for the example, its BCE(s+) and the rest still count. s_neg_doc f32[B]: the
  scores F(q+, d-) of a given negative document per example (qrels mode: a BM25 hard negative),
  adding BCE(s_neg_doc, 0) where has_neg_doc is 1.
  """
  w = jnp.ones_like(s_pos) if weight is None else weight
  hq = jnp.ones_like(s_pos) if has_qneg is None else has_qneg
  hh = jnp.ones_like(s_pos) if has_hard is None else has_hard
  wsum = jnp.maximum(jnp.sum(w), 1e-9)
  bce = _bce(s_pos, 1.0) + hh * _bce(s_hard, 0.0)
  if s_neg_doc is not None:
    hn = jnp.ones_like(s_pos) if has_neg_doc is None else has_neg_doc
    bce = bce + hn * _bce(s_neg_doc, 0.0)
  hinge = jnp.maximum(0.0, margin + s_qneg - s_pos) * hq
  loss = jnp.sum(w * (bce + margin_weight * hinge)) / wsum
  metrics = {"bce": jnp.sum(w * bce) / wsum, "margin_loss": jnp.sum(w * hinge) / jnp.maximum(jnp.sum(w * hq), 1e-9),
             "doc_accuracy": jnp.sum(w * hh * (s_pos > s_hard)) / jnp.maximum(jnp.sum(w * hh), 1e-9),
             "query_accuracy": jnp.sum(w * hq * (s_pos > s_qneg)) / jnp.maximum(jnp.sum(w * hq), 1e-9)}
  if s_neg_doc is not None:
    metrics["neg_doc_accuracy"] = jnp.sum(w * hn * (s_pos > s_neg_doc)) / jnp.maximum(jnp.sum(w * hn), 1e-9)
  return loss, metrics


def ce_loss_fn(module: Any, *, pool: int, margin: float, margin_weight: float, pad_id: int, joiner: int | None,
               query_negatives: bool = True):
  """(params, frozen, batch) -> (loss, metrics) for `loop.fit`.

  batch: qpos / qneg [B, Lq], doc [B, Ld] (+ masks), doc_key f32[B], has_qneg f32[B], weight f32[B].
  Qrels mode adds query_key f32[B] and, when its examples have BM25 negatives, neg_doc [B, Ld] (+ mask)
  and has_neg_doc f32[B] (a given negative document per example, its BCE term); pool documents of an
  example with the same query_key are its positives, never its in-batch negative. query_negatives False: no q- anywhere (qrels mode),
  F(q-, d) is not computed and the margin term is 0.
  """

  def score(params, q, qm, d, dm):
    tokens, mask, types = join_pairs(q, qm, d, dm, pad_id=pad_id, joiner=joiner)
    return module.apply({"params": params}, tokens, mask, types)[:, 0]

  def score_together(params, pairs):
    """{name: (q, qm, d, dm)} -> {name: f32[rows]}: pair sets of one (Lq, Ld) shape in one forward pass
    (one [sum rows, Lq + Ld] batch instead of several small ones: larger matmuls, same scores)."""
    groups: dict[tuple, list[str]] = {}
    for name, (pq, _, pd, _) in pairs.items():
      groups.setdefault((pq.shape[1], pd.shape[1]), []).append(name)
    out = {}
    for names in groups.values():
      parts = [pairs[n] for n in names]
      scores = score(params, *(jnp.concatenate([x[i] for x in parts]) for i in range(4)))
      offsets = np.cumsum([x[0].shape[0] for x in parts])[:-1]
      out.update(zip(names, jnp.split(scores, offsets)))
    return out

  def loss_fn(params, frozen, batch):
    del frozen
    q, qm, d, dm = batch["qpos"], batch["qpos_mask"], batch["doc"], batch["doc_mask"]
    b = q.shape[0]
    p = min(pool, b - 1)
    # hardest in-batch negative document among the next p documents (no gradient through the choice)
    shifts = jnp.arange(1, p + 1)
    cand = (jnp.arange(b)[:, None] + shifts[None, :]) % b                         # [B, p]
    same = batch["doc_key"][cand] == batch["doc_key"][:, None]
    if "query_key" in batch:
      same = same | (batch["query_key"][cand] == batch["query_key"][:, None])
    if p == 1:   # one candidate: it is the negative (or there is none), no pool scoring needed
      hard = cand[:, 0]
    else:
      flat_q = jnp.repeat(q, p, axis=0)
      flat_qm = jnp.repeat(qm, p, axis=0)
      pool_scores = jax.lax.stop_gradient(
          score(params, flat_q, flat_qm, d[cand.reshape(-1)], dm[cand.reshape(-1)]).reshape(b, p))
      pool_scores = jnp.where(same, -jnp.inf, pool_scores)
      hard = jnp.take_along_axis(cand, jnp.argmax(pool_scores, axis=1)[:, None], axis=1)[:, 0]
    has_hard = jnp.any(~same, axis=1).astype(jnp.float32)   # no other document among the next p
    pairs = {"pos": (q, qm, d, dm), "hard": (q, qm, d[hard], dm[hard])}
    if query_negatives:
      pairs["qneg"] = (batch["qneg"], batch["qneg_mask"], d, dm)
    if "neg_doc" in batch:
      pairs["neg_doc"] = (q, qm, batch["neg_doc"], batch["neg_doc_mask"])
    s = score_together(params, pairs)
    s_pos, s_hard, s_neg_doc = s["pos"], s["hard"], s.get("neg_doc")
    if query_negatives:
      s_qneg, has_qneg = s["qneg"], batch["has_qneg"]
    else:
      s_qneg, has_qneg = jax.lax.stop_gradient(s_pos), jnp.zeros_like(s_pos)
    loss, metrics = readqg_ce_loss(s_pos, s_hard, s_qneg, margin=margin, margin_weight=margin_weight,
                                   has_qneg=has_qneg, has_hard=has_hard, weight=batch["weight"],
                                   s_neg_doc=s_neg_doc, has_neg_doc=batch.get("has_neg_doc"))
    extra = {} if s_neg_doc is None else {"neg_doc_score": jnp.mean(s_neg_doc)}
    return loss, dict(metrics, pos_score=jnp.mean(s_pos), hard_neg_score=jnp.mean(s_hard), **extra)

  return loss_fn


# ------------------------------------------------------------------------------------------------
# The task.


def read_query_pairs(path: str, pos_field: str, neg_field: str) -> list[dict]:
  """{doc_id, <pos_field>, <neg_field>?} records (a .jsonl file or a sharded output dir)."""
  from qgjax.data.records import iter_records
  out = []
  for src, line, rec in iter_records(path):
    for field in ("doc_id", pos_field):
      if not isinstance(rec.get(field), (str, int)) or not str(rec.get(field)).strip():
        raise InputError("missing or empty", path=src, line=line, field=field)
    neg = rec.get(neg_field)
    if neg is not None and not isinstance(neg, str):
      raise InputError("must be a string", path=src, line=line, field=neg_field)
    out.append({"doc_id": str(rec["doc_id"]), "qpos": str(rec[pos_field]), "qneg": neg or ""})
  if not out:
    raise InputError("no training records", path=path)
  return out


def read_qrels_records(data, seed: int, corpus=None) -> list[dict]:
  """Qrels mode: one record {doc_id, qpos, qneg: "", query_id, neg_doc_id} per (judged pair, BM25
  negative) of `qgjax.retrieval.qrels_examples` (neg_doc_id None for a pair without one) from the
  `data.qrels_split` qrels of the BEIR dir `data.corpus`."""
  from qgjax.retrieval.qrels_examples import qrels_examples

  examples = qrels_examples(data.corpus, data.qrels_split, min_relevance=int(data.min_relevance),
                            negatives=int(data.negatives_per_pair), depth=int(data.negative_depth), seed=seed,
                            bm25=data.bm25, corpus=corpus)
  return [{"doc_id": e.doc_id, "qpos": e.query, "qneg": "", "query_id": e.query_id, "neg_doc_id": neg}
          for e in examples for neg in (e.negative_ids or (None,))]


def build_columns(records: Sequence[Mapping], corpus, tokenizer, *, query_max_len: int, doc_max_len: int,
                  source: str = "") -> dict[str, list]:
  """Token and scalar columns of `SPEC`; records with "neg_doc_id" (qrels mode) add query_key (pool
  documents of the same query are not negatives) and, when any record has a BM25 negative, neg_doc and
  has_neg_doc (the columns `ce_loss_fn` reads for it; `QRELS_SPEC`)."""
  qrels_mode = bool(records) and "neg_doc_id" in records[0]
  wanted = {r["doc_id"] for r in records} | ({r["neg_doc_id"] for r in records} - {None} if qrels_mode else set())
  ids = sorted(wanted)
  missing = [d for d in ids if d not in corpus]
  if missing:
    raise InputError(f"document {missing[0]!r} is not in the corpus ({len(missing)} missing)", path=source,
                     field="doc_id")
  docs = dict(zip(ids, (doc.contents for doc in corpus.get_many(ids))))
  doc_tok = dict(zip(ids, tokenizer([docs[d] for d in ids], truncation=True, max_length=doc_max_len)["input_ids"]))
  tok = lambda texts: tokenizer(list(texts), truncation=True, max_length=query_max_len)["input_ids"]
  row = {d: i for i, d in enumerate(corpus.doc_ids)}
  qneg = [r["qneg"] or r["qpos"] for r in records]   # placeholder where absent; has_qneg = 0 masks it
  cols = {"qpos": tok(r["qpos"] for r in records), "qneg": tok(qneg), "doc": [doc_tok[r["doc_id"]] for r in records],
          "doc_key": [float(row[r["doc_id"]] % (1 << 24)) for r in records],
          "has_qneg": [1.0 if r["qneg"] else 0.0 for r in records]}
  if qrels_mode:
    qkey = {q: i for i, q in enumerate(dict.fromkeys(r["query_id"] for r in records))}
    cols["query_key"] = [float(qkey[r["query_id"]] % (1 << 24)) for r in records]
    if any(r["neg_doc_id"] is not None for r in records):
      # the positive stands in where a pair has no negative; has_neg_doc = 0 masks it. Without any
      # negative the columns are left out, so the step scores no stand-in pairs.
      cols["neg_doc"] = [doc_tok[r["neg_doc_id"] or r["doc_id"]] for r in records]
      cols["has_neg_doc"] = [0.0 if r["neg_doc_id"] is None else 1.0 for r in records]
  return cols


SPEC = {"qpos": Column("query"), "qneg": Column("query"), "doc": Column("doc")}
QRELS_SPEC = dict(SPEC, neg_doc=Column("doc"))


def setup_cross_encoder(config: Any):
  import dataclasses

  from qgjax.data.beir import Corpus
  from qgjax.models.bert import CrossEncoder, load_cross_encoder, save_cross_encoder_hf
  from qgjax.parallel.backend import model_numerics
  from qgjax.train.generator import gather_to_host
  from qgjax.train.loop import TaskSetup

  d, m = config.data, config.model
  qrels_mode = bool(d.qrels_split)
  if qrels_mode and (d.train or not d.corpus or d.corpus.endswith(".jsonl")):
    raise ConfigError("qrels mode (config.data.qrels_split) trains from config.data.corpus, a BEIR dir with "
                      f"qrels/{d.qrels_split}.tsv; leave config.data.train empty (it is {d.train!r}, corpus "
                      f"{d.corpus!r})")
  if not qrels_mode and (not d.train or not d.corpus):
    raise ConfigError("config.data.train (query pairs) and config.data.corpus (BEIR dir) must be set, or "
                      "config.data.qrels_split with a BEIR dir as config.data.corpus")
  if int(config.accum_steps or 1) != 1:
    raise ConfigError("cross-encoder training needs accum_steps=1 (the hardest negative is mined in the batch)")
  module, params, tokenizer, info = load_cross_encoder(m.name, num_labels=1, new_head=bool(m.new_head),
                                                       seed=int(config.seed))
  dtype, attention = model_numerics(m)
  module = CrossEncoder(dataclasses.replace(module.config, dtype=dtype, attention_impl=attention))
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), bool))["params"]
  corpus = Corpus(d.corpus if d.corpus.endswith(".jsonl") else os.path.join(d.corpus, "corpus.jsonl"))
  if qrels_mode:
    records = read_qrels_records(d, int(config.seed), corpus)
    source = os.path.join(d.corpus, "qrels", f"{d.qrels_split}.tsv")
  else:
    records, source = read_query_pairs(d.train, d.pos_field, d.neg_field), d.train
  max_q = int(d.query_max_len)
  joiner = int(tokenizer.sep_token_id) if module.config.is_roberta else None
  # the joined pair is Lq + Ld - 1 wide for BERT (the document's [CLS] is dropped), Lq + Ld with a joiner
  max_d = int(min(d.doc_max_len, info["max_seq_length"] - max_q + (1 if joiner is None else 0)))
  cols = build_columns(records, corpus, tokenizer, query_max_len=max_q, doc_max_len=max_d, source=source)
  buckets = {"query": tuple(sorted({b for b in d.query_buckets if b < max_q} | {max_q})),
             "doc": tuple(sorted({b for b in d.doc_buckets if b < max_d} | {max_d}))}
  pad_id = int(tokenizer.pad_token_id or 0)
  train = StepLoader(cols, QRELS_SPEC if "neg_doc" in cols else SPEC, batch_size=int(config.batch_size), buckets=buckets,
                     pad_id=pad_id,
                     seed=int(config.seed), bucket_window=int(d.bucket_window), shuffle=True,
                     process_index=jax.process_index(), process_count=jax.process_count())
  c = config.loss
  loss_fn = ce_loss_fn(module, pool=int(c.hard_negative_pool), margin=float(c.margin),
                       margin_weight=float(c.margin_weight), pad_id=pad_id, joiner=joiner,
                       query_negatives=not qrels_mode)

  def export(p, frozen, out_dir):
    from qgjax.parallel.distributed import is_main_process
    host = gather_to_host(p)
    if is_main_process():
      save_cross_encoder_hf(host, CrossEncoder(dataclasses.replace(module.config, dtype="float32")), tokenizer,
                            out_dir)
    return out_dir

  fp = {"task": config.task, "model": str(m.name), "batch_size": int(config.batch_size),
        "seed": int(config.seed), "train": storage.absolute(source), "loss": c.to_dict()}
  extra = {"train_examples": len(records), "with_negative_query": int(sum(cols["has_qneg"])),
           "initialised": info.get("initialised", []), "truncated": train.truncated}
  if qrels_mode:
    fp["qrels"] = {"min_relevance": int(d.min_relevance), "negatives_per_pair": int(d.negatives_per_pair),
                   "negative_depth": int(d.negative_depth),
                   "bm25": {k: v for k, v in d.bm25.items() if k != "cache_dir"}}
    extra.update(judged_pairs=len({(r["query_id"], r["doc_id"]) for r in records}),
                 queries=len({r["query_id"] for r in records}), with_bm25_negative=int(sum(cols.get("has_neg_doc", []))))
  return TaskSetup(params, {}, abstract, {}, loss_fn, train, None, export, fp, extra)


def run_cross_encoder(config: Any) -> dict:
  from qgjax.train.loop import fit
  return fit(setup_cross_encoder(config), config)
