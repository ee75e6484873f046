"""Dense retrieval: a bi-encoder, corpus embeddings on disk, and the index policy (exact or ScaNN).

  enc = DenseEncoder.load("all-minilm-l6-v2")                   # or a sentence-transformers dir
  ids, emb = embed_corpus(corpus_path, store_dir, enc)           # resumable, sharded .npy store
  index = build_index(emb, index_cfg, cache_dir=...)             # logs "exact" or "scann" and why
  run = search_run(index, ids, enc.encode(queries, ...), k=100)  # [{doc_id: score}] per query

Policy: `index.kind = "auto"` uses exact search below `index.scann_min_rows` corpus rows and
ScaNN at or above it. The default threshold is where `tools/bench_mining.py` saw ScaNN stop
paying for itself on this machine class (exact matmul + top_k against ScaNN at recall@100 >=
0.95, build time included for one pass of queries); see tools/results/bench_mining.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from qgjax.data import storage
from qgjax.data.beir import Corpus
from qgjax.data.progress import progress
from qgjax.errors import ConfigError
from qgjax.parallel.distributed import agree, barrier, is_main_process
from qgjax.retrieval.embeddings_store import EmbeddingStoreWriter, is_complete, load_embeddings, read_manifest
from qgjax.retrieval.exact import ExactIndex
from qgjax.retrieval.scann_index import ScannIndex, ScannParams, vectors_digest

log = logging.getLogger("qgjax.retrieval")

# Corpus rows from which `kind="auto"` picks ScaNN (tools/bench_mining.py, "policy" in its JSON).
SCANN_MIN_ROWS = 200_000


@dataclasses.dataclass
class DenseEncoder:
  """A bi-encoder with its params and tokenizer; `encode(texts)` -> np.float32[N, D].

  Either family: a BERT-family BiEncoder or a decoder LM's DecoderEncoder (detected from the
  model: qgjax.models.decoder_encoder.encoder_family). `encode_queries` prepends the model's
  query instruction (info["query_prefix"], the export's "query" prompt; "" for BERT models).
  """
  module: Any
  params: Any
  tokenizer: Any
  info: dict

  @classmethod
  def load(cls, name_or_path: str, dtype: str = "float32") -> DenseEncoder:
    from qgjax.models.decoder_encoder import encoder_family, load_decoder_encoder
    if encoder_family(name_or_path) == "decoder":
      return cls(*load_decoder_encoder(name_or_path, dtype=dtype))
    from qgjax.models.bert import load_bi_encoder
    module, params, tokenizer, info = load_bi_encoder(name_or_path, dtype=dtype)
    return cls(module, params, tokenizer, info)

  def encode_queries(self, queries: Sequence[str], **kwargs) -> np.ndarray:
    """`encode` of the queries with the model's query instruction in front."""
    prefix = str(self.info.get("query_prefix", ""))
    return self.encode([prefix + q for q in queries] if prefix else queries, **kwargs)

  @property
  def dim(self) -> int:
    return int(self.info["config"].hidden_size)

  @property
  def name(self) -> str:
    return str(self.info.get("path", "?"))

  @property
  def fingerprint(self) -> str:
    """Digest of the model's files (see qgjax.models.registry.files_fingerprint)."""
    from qgjax.models.registry import files_fingerprint
    return files_fingerprint(self.name)

  def max_len_for(self, max_len: int | None) -> int:
    """The length texts are truncated to: `max_len` capped at the model's max_seq_length."""
    return int(min(max_len or self.info["max_seq_length"], self.info["max_seq_length"]))

  def encode(self, texts: Sequence[str], *, batch_size: int = 64, max_len: int | None = None,
             progress_bar: bool = False) -> np.ndarray:
    """np.float32[N, D], batches split over every device (params replicated there once, kept)."""
    from qgjax.models.bert import encode_texts
    from qgjax.parallel.data_parallel import data_mesh, replicate
    max_len = self.max_len_for(max_len)
    self.params = replicate(self.params, data_mesh())
    return encode_texts(self.module, self.params, self.tokenizer, list(texts), batch_size=batch_size,
                        max_len=max_len, progress=progress_bar)


def relevance_from_logits(logits: np.ndarray) -> np.ndarray:
  """f32[N, L] -> f64[N]: the logit when L == 1, else log-softmax of the last label."""
  logits = np.asarray(logits, np.float64)
  if logits.shape[1] == 1:
    return logits[:, 0]
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted[:, -1] - np.log(np.exp(shifted).sum(axis=1))


def _corpus_fingerprint(path: str) -> dict:
  if storage.is_remote(path):
    return {"corpus": os.fspath(path), "bytes": int(storage.filesystem().info(os.fspath(path))["size"])}
  st = os.stat(path)
  return {"corpus": os.path.abspath(path), "bytes": st.st_size}


def embed_corpus(corpus_path: str, store_dir: str, encoder: DenseEncoder, *, batch_size: int = 64,
                 max_len: int = 256, shard_rows: int = 8192, extra_meta: Mapping | None = None,
                 corpus: Corpus | None = None) -> tuple[list[str], np.ndarray]:
  """Encodes every document (title + " " + text) into `store_dir`; resumes a killed run.

  Returns (doc ids, np.float32[N, D]) in corpus order. A complete store is read, not redone.
  Several processes: all encode (each 1/P of every batch, `DenseEncoder.encode`), process 0 alone
  reads the store's state first and writes it; all read it back after a barrier.
  """
  max_len = encoder.max_len_for(max_len)
  meta = {"model": encoder.name, "model_files": encoder.fingerprint, "max_len": max_len,
          **_corpus_fingerprint(corpus_path), **dict(extra_meta or {})}
  main = is_main_process()
  manifest = read_manifest(store_dir) if main else None
  complete = bool(manifest is not None and manifest.get("complete") and manifest.get("meta") == meta)
  (complete,) = agree([complete])   # several processes: process 0 reads the store and writes it
  if complete:
    if main:
      log.info("embeddings: %s is complete (%d rows); reusing it", store_dir, manifest["rows"])
    return load_embeddings(store_dir)
  if manifest is not None and manifest.get("meta") == meta and manifest.get("shard_rows"):
    shard_rows = int(manifest["shard_rows"])  # a layout detail: resume a shared store as it was begun
  corpus = corpus or Corpus(corpus_path)
  n = len(corpus)
  with contextlib.ExitStack() as stack:
    writer = (stack.enter_context(EmbeddingStoreWriter(store_dir, dim=encoder.dim, meta=meta, shard_rows=shard_rows))
              if main else None)
    start, shard_rows = agree([writer.num_rows, shard_rows] if main else [0, 0])
    if start and main:
      log.info("embeddings: resuming %s at row %d of %d", store_dir, start, n)
    bar = progress(total=n, desc="embed corpus", unit="doc", initial=start)
    ids, texts = [], []
    t0 = time.perf_counter()
    for row, doc in enumerate(corpus):
      if row < start:
        continue
      ids.append(doc.doc_id)
      texts.append(doc.contents)
      if len(ids) == shard_rows or row == n - 1:
        emb = encoder.encode(texts, batch_size=batch_size, max_len=max_len)  # every process encodes 1/P
        if writer is not None:
          writer.write_shard(ids, emb)
        bar.update(len(ids))
        ids, texts = [], []
    bar.close()
    if writer is not None:
      writer.finish(seconds=round(time.perf_counter() - t0, 2))
  barrier(f"embeddings {store_dir}")
  return load_embeddings(store_dir)


def choose_index_kind(num_rows: int, kind: str = "auto", scann_min_rows: int = SCANN_MIN_ROWS) -> tuple[str, str]:
  """-> ("exact" | "scann", reason)."""
  if kind == "exact" or kind == "scann":
    return kind, f"index.kind={kind}"
  if kind != "auto":
    raise ConfigError(f"index.kind must be auto, exact or scann; got {kind!r}")
  if num_rows < scann_min_rows:
    return "exact", f"{num_rows} rows < scann_min_rows={scann_min_rows}: exact search is as fast"
  return "scann", f"{num_rows} rows >= scann_min_rows={scann_min_rows}"


def build_index(emb: np.ndarray, index_cfg: Mapping[str, Any], *, cache_dir: str | None = None,
                report: Callable[[str], None] | None = None):
  """The dense index over emb f32[N, D] that `index_cfg` asks for; says which and why.

  index_cfg: every key of `default_index_config()` (a config's `index` group, as a dict):
  {"kind": auto|exact|scann, "scann_min_rows": int, "scann": {ScannParams fields},
  "corpus_chunk": int, "query_block": int}. A ScaNN index is saved under `cache_dir` (by process
  0 alone when several build it) and loaded from there next time (when its row count, settings
  and vectors match).
  """
  cfg = dict(index_cfg)
  kind, reason = choose_index_kind(emb.shape[0], cfg["kind"], int(cfg["scann_min_rows"]))
  say = report or (lambda msg: log.info(msg))
  if kind == "exact":
    say(f"index: exact search (jitted matmul + top_k) over {emb.shape[0]} x {emb.shape[1]}; {reason}")
    return ExactIndex(emb, corpus_chunk=int(cfg["corpus_chunk"]), query_block=int(cfg["query_block"]))
  params = ScannParams.from_config(cfg["scann"]).resolved(emb.shape[0])
  digest = vectors_digest(emb) if cache_dir else ""
  if cache_dir and ScannIndex.is_saved(cache_dir):
    index = ScannIndex.load(cache_dir)
    if index.num_rows == emb.shape[0] and index.params == params and index.data_digest == digest:
      say(f"index: ScaNN loaded from {cache_dir} ({reason})")
      return index
  t0 = time.perf_counter()
  index = ScannIndex.build(emb, params)
  say(f"index: ScaNN over {emb.shape[0]} x {emb.shape[1]} built in {time.perf_counter() - t0:.1f}s "
      f"(leaves={params.num_leaves}, search={params.leaves_to_search}, reorder={params.reorder}); {reason}")
  if cache_dir and is_main_process():
    index.data_digest = digest
    index.save(cache_dir)
  return index


def search_run(index, doc_ids: Sequence[str], query_emb: np.ndarray, k: int,
               query_ids: Sequence[str] | None = None, batch: int = 4096) -> dict[str, dict[str, float]]:
  """-> {query_id: {doc_id: score}} with the top k of each query (query_ids default "0", "1", ...)."""
  query_ids = list(query_ids) if query_ids is not None else [str(i) for i in range(len(query_emb))]
  run: dict[str, dict[str, float]] = {}
  for start in range(0, len(query_emb), batch):
    scores, rows = index.search(query_emb[start:start + batch], k)
    for qid, s_row, r_row in zip(query_ids[start:start + batch], scores, rows):
      run[qid] = {doc_ids[r]: float(s) for s, r in zip(s_row, r_row) if r >= 0}
  return run


__all__ = ["DenseEncoder", "embed_corpus", "build_index", "choose_index_kind", "search_run", "SCANN_MIN_ROWS",
           "is_complete"]


# ------------------------------------------------------------------------------------------------
# Pair scorers (rerankers): (query texts, doc texts) -> f32[N], higher = more relevant.


class CrossEncoderPairScorer:
  """A one-label cross-encoder's logit (multi-label: log P(last label)), jitted and length-bucketed."""

  def __init__(self, path: str, *, max_len: int = 512, batch_size: int = 32):
    from qgjax.models.bert import load_cross_encoder
    from qgjax.parallel.data_parallel import data_mesh, replicate
    self.module, params, self.tokenizer, self.info = load_cross_encoder(path)
    self.params = replicate(params, data_mesh())  # batches run data-parallel over every device
    self.max_len = int(min(max_len, self.info["max_seq_length"]))
    self.batch_size = int(batch_size)

  def __call__(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
    from qgjax.models.bert import score_pairs
    logits = score_pairs(self.module, self.params, self.tokenizer, list(queries), list(docs),
                         batch_size=self.batch_size, max_len=self.max_len)
    return relevance_from_logits(logits).astype(np.float32)


class BiEncoderPairScorer:
  """Cosine similarity of the two texts' bi-encoder embeddings."""

  def __init__(self, encoder: DenseEncoder, *, query_max_len: int = 64, doc_max_len: int = 256,
               batch_size: int = 64):
    self.encoder, self.query_max_len, self.doc_max_len = encoder, query_max_len, doc_max_len
    self.batch_size = batch_size

  def __call__(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
    """f32[N] cosines of N (query, doc) pairs; each distinct text is encoded once (mining asks for a
    query with each of its candidates, and a document for every query that retrieved it)."""
    q_texts, q_row = _distinct(queries)
    d_texts, d_row = _distinct(docs)
    q = self.encoder.encode_queries(q_texts, batch_size=self.batch_size, max_len=self.query_max_len).astype(np.float64)
    d = self.encoder.encode(d_texts, batch_size=self.batch_size, max_len=self.doc_max_len).astype(np.float64)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    return np.sum(q[q_row] * d[d_row], axis=1).astype(np.float32)


def _distinct(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
  """(distinct texts in first-seen order, int[N] row of each input text among them)."""
  row_of: dict[str, int] = {}
  rows = np.asarray([row_of.setdefault(t, len(row_of)) for t in texts], np.int64)
  return list(row_of), rows


def load_pair_scorer(cfg: Mapping[str, Any], encoder: DenseEncoder | None = None):
  """cfg {"kind": none|cross_encoder|bi_encoder, "model", "max_len", "batch_size"} (every key: a
  config's reranker / scorer group) -> scorer or None.

  bi_encoder with an empty model reuses `encoder`.
  """
  kind = cfg["kind"]
  if kind in ("none", "", None):
    return None
  if kind == "cross_encoder":
    if not cfg["model"]:
      raise ConfigError("reranker.kind=cross_encoder needs reranker.model: a local HF "
                        "*ForSequenceClassification directory (e.g. one `qgjax train --config "
                        "configs/cross_encoder.py` exported)")
    return CrossEncoderPairScorer(cfg["model"], max_len=int(cfg["max_len"]), batch_size=int(cfg["batch_size"]))
  if kind == "bi_encoder":
    enc = DenseEncoder.load(cfg["model"]) if cfg["model"] else encoder
    if enc is None:
      raise ConfigError("reranker.kind=bi_encoder needs reranker.model")
    return BiEncoderPairScorer(enc, doc_max_len=int(cfg["max_len"]), batch_size=int(cfg["batch_size"]))
  raise ConfigError(f"reranker.kind must be none, cross_encoder or bi_encoder; got {kind!r}")


# ------------------------------------------------------------------------------------------------
# `qgjax evaluate` stages: dense (first stage or re-scoring) and rerank (cross-encoder).


def tower_dirs(model: str) -> tuple[str, str]:
  """(query model, doc model): a retriever export with separate towers has query/ and doc/ subdirs."""
  if os.path.isdir(os.path.join(model, "query")) and os.path.isdir(os.path.join(model, "doc")):
    return os.path.join(model, "query"), os.path.join(model, "doc")
  return model, model


def corpus_store_dir(cache_dir: str, corpus_path: str, encoder: DenseEncoder, max_len: int) -> str:
  """The embedding store for (corpus file, encoder files, truncation length) under `cache_dir`.

  One key for every stage that encodes a corpus (score's dense rewards, mine, evaluate), so
  stages given the same `cache_dir` share one store: the corpus is encoded once per model. The
  corpus counts by path, size and content hash (an edited corpus gets a new store; the same bytes
  with a new mtime keep theirs), the model by its
  files (a re-export into the same directory is re-encoded), the length as the one texts are
  really cut to (`max_len_for`).
  """
  import hashlib
  import json
  from qgjax.retrieval.bm25 import corpus_fingerprint
  key = json.dumps([corpus_fingerprint(corpus_path), encoder.name, encoder.fingerprint, encoder.max_len_for(max_len)])
  return os.path.join(cache_dir, "emb-" + hashlib.sha256(key.encode()).hexdigest()[:16])


def evaluation_run(config, data, queries: Mapping[str, str], previous=None) -> dict[str, dict[str, float]]:
  """Dense retrieval of `queries` over `data.corpus` with `config.dense` (top `config.depth`).

  As a later stage (`bm25+dense`) it re-scores the previous stage's candidates instead.
  config.dense: model (sentence-transformers dir / name; a separate-towers export works),
  max_len, query_max_len, batch_size, cache_dir, index {kind, scann_min_rows, scann}.
  """
  cfg = config.dense
  q_model, d_model = tower_dirs(cfg.model)
  q_enc = DenseEncoder.load(q_model)
  d_enc = q_enc if d_model == q_model else DenseEncoder.load(d_model)
  corpus_path = str(data.corpus.path)
  max_len = int(cfg.max_len)
  store = corpus_store_dir(cfg.cache_dir or os.path.join(config.workdir, "dense_cache"), corpus_path,
                           d_enc, max_len)
  ids, emb = embed_corpus(corpus_path, store, d_enc,
                          batch_size=int(cfg.batch_size), max_len=max_len, corpus=data.corpus)
  qids = list(queries)
  q_emb = q_enc.encode_queries([queries[q] for q in qids], batch_size=int(cfg.batch_size),
                               max_len=int(cfg.query_max_len))
  if previous is None:
    index_cfg = cfg.index.to_dict() if hasattr(cfg.index, "to_dict") else dict(cfg.index)
    index = build_index(emb, index_cfg, report=lambda m: log.info(m))
    return search_run(index, ids, q_emb, int(config.depth), qids)
  row = {d: i for i, d in enumerate(ids)}
  run = {}
  for qi, qid in enumerate(qids):
    cands = [d for d in previous.get(qid, {}) if d in row]
    scores = emb[[row[d] for d in cands]] @ q_emb[qi] if cands else np.zeros(0)
    run[qid] = {d: float(s) for d, s in zip(cands, scores)}
  return run


def rerank_run(config, data, queries: Mapping[str, str], previous=None) -> dict[str, dict[str, float]]:
  """Re-scores the top `config.rerank.depth` of the previous stage with the cross-encoder `config.rerank.model`."""
  if previous is None:
    raise ConfigError("rerank needs a first stage, e.g. --config.retriever=bm25+rerank")
  cfg = config.rerank
  scorer = load_pair_scorer({"kind": "cross_encoder", "model": cfg.model, "max_len": cfg.max_len,
                             "batch_size": cfg.batch_size})
  depth = int(cfg.depth)
  pairs = []
  for qid in queries:
    top = sorted(previous.get(qid, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
    pairs += [(qid, d) for d, _ in top]
  docs = {d: doc.contents for d, doc in zip(*_unique_docs(data.corpus, [d for _, d in pairs]))}
  bar = progress(total=len(pairs), desc="rerank", unit="pair")
  scores = []
  step = 4096
  for s in range(0, len(pairs), step):
    chunk = pairs[s:s + step]
    scores.extend(scorer([queries[q] for q, _ in chunk], [docs[d] for _, d in chunk]).tolist())
    bar.update(len(chunk))
  bar.close()
  run: dict[str, dict[str, float]] = {q: {} for q in queries}
  for (qid, d), s in zip(pairs, scores):
    run[qid][d] = float(s)
  return run


def _unique_docs(corpus, doc_ids: Sequence[str]):
  ids = sorted(set(doc_ids))
  return ids, corpus.get_many(ids)


def default_index_config():
  """The `index` config group shared by configs/mine.py and configs/evaluate.py (dense)."""
  import ml_collections
  return ml_collections.ConfigDict(dict(
      kind="auto", scann_min_rows=SCANN_MIN_ROWS, corpus_chunk=16384, query_block=256,
      scann=ml_collections.ConfigDict(dict(
          num_leaves=0, leaves_to_search=0, reorder=0, training_sample_size=250_000, dims_per_block=2,
          anisotropic_threshold=0.2, hash_type="lut16", spherical=True, k_build=100, threads=0))))
