"""Dense-retriever rewards: rank and cosine of the source document under a bi-encoder.

rewards `dense_rank` (= -rank, or 1 / rank) and `dense_cosine` (cosine of query and source
document; the best over the targets), rank `dense`. The bi-encoder is any sentence-transformers
/ HF directory `qgjax.models.bert` loads (default: all-MiniLM-L6-v2, offline). Corpus
embeddings are computed once (jitted, length-bucketed); with `dense.cache_dir` they go to the
embedding store that `mine` and `evaluate` share, keyed by corpus file, model files and length.

Ranks come from one jitted function over the corpus in chunks (`target_ranks`): a scan computes
each target's score with the same chunk matmul that scores every document, then a second scan
counts the documents ranked before it (higher score, or equal score and a larger doc id: the
trec_eval order). Nothing of size [queries, corpus] is kept.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from qgjax.retrieval.bm25 import descending_id_rank
from qgjax.rewards.base import RewardBatch, RewardContext, ScoreOutput, rank_reward


@functools.partial(jax.jit, static_argnames=("depth",))
def target_ranks(queries: jax.Array, corpus: jax.Array, tie: jax.Array, valid: jax.Array,
                 targets: jax.Array, target_mask: jax.Array, *, depth: int
                 ) -> tuple[jax.Array, jax.Array]:
  """Best rank and the scores of each query's target documents.

  Args:
    queries: f32[B, D].
    corpus: f32[C, S, D], the corpus in C chunks of S rows (rows past the end are padding).
    tie: int32[C, S], tie order (lower comes first among equal scores).
    valid: bool[C, S], False for padding rows.
    targets: int32[B, G], flat row ids of the targets (padded), target_mask: bool[B, G].
    depth: ranks above it become depth + 1.
  Returns:
    (int32[B] best rank over the valid targets, f32[B, G] target scores).
  """
  num_chunks, chunk, _ = corpus.shape
  hp = lax.Precision.HIGHEST

  def gather(acc, xs):
    block, c = xs
    scores = jnp.einsum("bd,sd->bs", queries, block, precision=hp)
    local = targets - c * chunk
    inside = (local >= 0) & (local < chunk)
    picked = jnp.take_along_axis(scores, jnp.clip(local, 0, chunk - 1), axis=1)
    return jnp.where(inside, picked, acc), None

  t_scores, _ = lax.scan(gather, jnp.zeros(targets.shape, jnp.float32),
                         (corpus, jnp.arange(num_chunks)))
  t_tie = tie.reshape(-1)[targets]

  def count(acc, xs):
    block, tie_c, valid_c = xs
    scores = jnp.einsum("bd,sd->bs", queries, block, precision=hp)[:, None, :]
    before = (scores > t_scores[:, :, None]) | (
        (scores == t_scores[:, :, None]) & (tie_c[None, None, :] < t_tie[:, :, None]))
    before = before & valid_c[None, None, :]
    return acc + before.sum(-1, dtype=jnp.int32), None

  counts, _ = lax.scan(count, jnp.zeros(targets.shape, jnp.int32), (corpus, tie, valid))
  ranks = jnp.where(target_mask, counts + 1, jnp.iinfo(jnp.int32).max)
  best = ranks.min(axis=-1)
  return jnp.where(best > depth, depth + 1, best).astype(jnp.int32), t_scores


class DenseIndex:
  """Corpus embeddings f32[N, D] laid out as chunks for `target_ranks`."""

  def __init__(self, embeddings: np.ndarray, doc_ids: list[str], chunk: int = 4096,
               row_bucket: int = 64):
    n, d = embeddings.shape
    self.row_bucket = int(row_bucket)
    self.doc_ids = doc_ids
    self.index_of = {x: i for i, x in enumerate(doc_ids)}
    self.chunk = min(chunk, max(n, 1))
    c = -(-n // self.chunk)
    pad = c * self.chunk - n
    self.norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    self.corpus = jnp.asarray(np.pad(embeddings.astype(np.float32), ((0, pad), (0, 0)))
                              .reshape(c, self.chunk, d))
    tie = np.concatenate([descending_id_rank(doc_ids), np.full(pad, n, np.int64)])
    self.tie = jnp.asarray(tie.astype(np.int32).reshape(c, self.chunk))
    self.valid = jnp.asarray((np.arange(c * self.chunk) < n).reshape(c, self.chunk))

  def ranks_and_scores(self, query_emb: np.ndarray, targets: list[list[str]], depth: int
                       ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Best rank (int32[B]) and per-target inner products (list of f32[G_i]) for each query."""
    n = len(targets)
    b = self.row_bucket * -(-n // self.row_bucket)  # static shapes: few compilations
    g = 1 << (max(len(t) for t in targets) - 1).bit_length()
    rows = np.zeros((b, g), np.int32)
    mask = np.zeros((b, g), bool)
    for i, t in enumerate(targets):
      rows[i, :len(t)] = [self.index_of[d] for d in t]
      mask[i, :len(t)] = True
    mask[n:, 0] = True  # padding rows: harmless target 0, results dropped
    q = np.zeros((b, query_emb.shape[1]), np.float32)
    q[:n] = query_emb
    ranks, scores = target_ranks(jnp.asarray(q), self.corpus, self.tie, self.valid,
                                 jnp.asarray(rows), jnp.asarray(mask), depth=int(depth))
    ranks, scores = np.asarray(ranks)[:n], np.asarray(scores)
    return ranks, [scores[i, :len(t)] for i, t in enumerate(targets)]


def corpus_embeddings(corpus, encoder, cfg) -> np.ndarray:
  """f32[N, D] embeddings of `corpus` (title + text), rows in corpus order.

  With `cfg.cache_dir` they live in the resumable store that `qgjax mine` and `qgjax evaluate`
  use too (`qgjax.retrieval.dense.corpus_store_dir`): one encode per (corpus, model, max_len)
  for every stage pointed at that directory. Without it they are computed in memory.
  """
  from qgjax.retrieval.dense import corpus_store_dir, embed_corpus
  max_len = int(cfg.max_len)
  if not cfg.cache_dir:
    from qgjax.data.progress import progress_enabled
    return encoder.encode([doc.contents for doc in corpus], batch_size=int(cfg.batch_size), max_len=max_len,
                          progress_bar=progress_enabled())
  ids, emb = embed_corpus(str(corpus.path), corpus_store_dir(cfg.cache_dir, str(corpus.path), encoder, max_len),
                          encoder, batch_size=int(cfg.batch_size), max_len=max_len, corpus=corpus)
  if ids != list(corpus.doc_ids):
    raise RuntimeError(f"embedding store rows do not follow {corpus.path}'s order")
  return emb


class DenseScorer:

  def __init__(self, encoder, index: DenseIndex, cfg, depth: int, transform: str):
    self.encoder, self.index, self.cfg = encoder, index, cfg
    self.depth, self.transform = int(depth), transform

  @property
  def model_config(self):
    """The encoder's model config (its `dtype` and `attention_impl`: what the run reports)."""
    return self.encoder.module.config

  def __call__(self, batch: RewardBatch) -> ScoreOutput:
    q = self.encoder.encode_queries(batch.texts, batch_size=int(self.cfg.batch_size),
                                    max_len=min(int(self.cfg.max_len), int(self.cfg.query_max_len)))
    ranks, dots = self.index.ranks_and_scores(q, batch.targets, self.depth)
    q_norm = np.linalg.norm(q.astype(np.float64), axis=1)
    cos = []
    for i, (t, d) in enumerate(zip(batch.targets, dots)):
      norms = np.array([self.index.norms[self.index.index_of[x]] for x in t]) * q_norm[i]
      cos.append(float(np.max(d.astype(np.float64) / np.maximum(norms, 1e-12))))
    return ScoreOutput({"dense_rank": rank_reward(ranks, self.transform),
                        "dense_cosine": np.asarray(cos)}, {"dense": ranks})


def build(ctx: RewardContext) -> DenseScorer:
  if "dense" not in ctx.cache:
    cfg = ctx.config.dense
    from qgjax.retrieval.dense import DenseEncoder
    encoder = DenseEncoder.load(cfg.model)
    emb = corpus_embeddings(ctx.corpus, encoder, cfg)
    index = DenseIndex(emb, ctx.corpus.doc_ids, chunk=int(cfg.chunk), row_bucket=int(ctx.config.batch_size))
    ctx.cache["dense"] = DenseScorer(encoder, index, cfg, ctx.config.depth, ctx.config.rank_reward)
  return ctx.cache["dense"]
