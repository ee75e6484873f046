"""BM25 rank of the source (or gold) document: the AQE reward, lower rank = better.

reward `bm25_rank` = -rank (or 1 / rank with `rank_reward="reciprocal"`); rank `bm25`.
Uses the project's BM25 (`config.bm25`: bm25s by default, Pyserini optional), ranked with
the trec_eval tie order; documents below `config.depth` get rank depth + 1. With bm25s a batch
is ranked at once (`Bm25sRetriever.ranks_of`: its scores from one pass over its terms' postings,
every target compared against its query's row), no Python loop over queries or documents.
"""

from __future__ import annotations

from qgjax.retrieval.bm25 import open_bm25_from_config
from qgjax.rewards.base import RewardBatch, RewardContext, ScoreOutput, rank_reward


class BM25RankScorer:

  def __init__(self, retriever, depth: int, transform: str):
    self.retriever, self.depth, self.transform = retriever, int(depth), transform

  def __call__(self, batch: RewardBatch) -> ScoreOutput:
    ranks = self.retriever.ranks_of(batch.texts, batch.targets, depth=self.depth)
    return ScoreOutput({"bm25_rank": rank_reward(ranks, self.transform)}, {"bm25": ranks})


def build(ctx: RewardContext) -> BM25RankScorer:
  if "bm25" not in ctx.cache:
    retriever = open_bm25_from_config(ctx.corpus, ctx.config.bm25)
    ctx.cache["bm25"] = BM25RankScorer(retriever, ctx.config.depth, ctx.config.rank_reward)
  return ctx.cache["bm25"]
