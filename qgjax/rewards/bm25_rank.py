"""BM25 rank of the source (or gold) document: the AQE reward, lower rank = better.

reward `bm25_rank` = -rank (or 1 / rank with `rank_reward="reciprocal"`) of the best-ranked target;
rank `bm25`. reward `bm25_ndcg` = nDCG@`ndcg_cutoff` of BM25's ranking with every target document
relevant (gain 1): where a query has many judged documents (an AQE query with qrels), it rewards
bringing all of them up, as the evaluation's nDCG@10 does, not only the best one.
Uses the project's BM25 (`config.bm25`: bm25s by default, Pyserini optional), ranked with
the trec_eval tie order; documents below `config.depth` get rank depth + 1. With bm25s a batch
is ranked at once (`Bm25sRetriever.ranks_of`: its scores from one pass over its terms' postings,
every target compared against its query's row), no Python loop over queries or documents.
"""

from __future__ import annotations

import numpy as np

from qgjax.errors import ConfigError
from qgjax.retrieval.bm25 import open_bm25_from_config
from qgjax.rewards.base import RewardBatch, RewardContext, ScoreOutput, rank_reward


def binary_ndcg(ranks: np.ndarray, cutoff: int) -> float:
  """nDCG@cutoff of a ranking in which exactly the documents at `ranks` (1 = first; ranks beyond the
  list count as missing) are relevant, gain 1 each: sum 1/log2(1 + r) over r <= cutoff, divided by
  the same sum for the ideal ranking (all of them first)."""
  ranks = np.asarray(ranks, np.float64)
  dcg = float(np.sum(1.0 / np.log2(1.0 + ranks[ranks <= cutoff])))
  ideal = float(np.sum(1.0 / np.log2(2.0 + np.arange(min(len(ranks), cutoff)))))
  return dcg / ideal if ideal else 0.0


class BM25RankScorer:
  """bm25_rank always; bm25_ndcg too when given its cutoff (each target's rank, a per-query loop, is
  only worked out then: without it the best rank comes from the vectorised `ranks_of`)."""

  def __init__(self, retriever, depth: int, transform: str, ndcg_cutoff: int | None = None):
    if ndcg_cutoff is not None and int(ndcg_cutoff) < 1:
      raise ConfigError(f"config.ndcg_cutoff must be >= 1 (the k of the bm25_ndcg reward); got {ndcg_cutoff}")
    self.retriever, self.depth, self.transform = retriever, int(depth), transform
    self.ndcg_cutoff = None if ndcg_cutoff is None else int(ndcg_cutoff)

  def __call__(self, batch: RewardBatch) -> ScoreOutput:
    if self.ndcg_cutoff is None:
      ranks = self.retriever.ranks_of(batch.texts, batch.targets, depth=self.depth)
      return ScoreOutput({"bm25_rank": rank_reward(ranks, self.transform)}, {"bm25": ranks})
    per_target = self.retriever.target_ranks(batch.texts, batch.targets, depth=self.depth)
    ranks = np.array([r.min() for r in per_target], np.int32)
    ndcg = np.array([binary_ndcg(r, self.ndcg_cutoff) for r in per_target], np.float64)
    return ScoreOutput({"bm25_rank": rank_reward(ranks, self.transform), "bm25_ndcg": ndcg}, {"bm25": ranks})


def build(ctx: RewardContext) -> BM25RankScorer:
  if "bm25" not in ctx.cache:
    retriever = open_bm25_from_config(ctx.corpus, ctx.config.bm25)
    cutoff = ctx.config.get("ndcg_cutoff", 10) if "bm25_ndcg" in ctx.config.rewards else None
    ctx.cache["bm25"] = BM25RankScorer(retriever, ctx.config.depth, ctx.config.rank_reward, cutoff)
  return ctx.cache["bm25"]
