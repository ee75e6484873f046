"""Rewards per generated (query, document): retrieval ranks, dense similarity, cross-encoder
relevance, an LLM judge, the generator's own likelihood; retention@k.

  name            module                     reward (higher is better)            rank stored as
  bm25_rank       qgjax.rewards.bm25_rank    -rank (or 1/rank) of the source doc   bm25
  bm25_ndcg       qgjax.rewards.bm25_rank    nDCG@k of BM25's list, targets gain 1 bm25
  dense_rank      qgjax.rewards.dense        -rank (or 1/rank) under a bi-encoder  dense
  dense_cosine    qgjax.rewards.dense        cosine(query, source doc)
  cross_encoder   qgjax.rewards.cross_encoder  cross-encoder logit R(q, d)
  lm_likelihood   qgjax.rewards.likelihood   logprob / num_tokens
  llm_judge       qgjax.rewards.llm_judge    an instruct LM's P(yes) / (P(yes) + P(no))

`build_scorers(names, ctx)` loads each model once, shared between the rewards that use it.
"""

from __future__ import annotations

import importlib

from qgjax.errors import ConfigError

# reward name -> "module:builder"; a builder takes a RewardContext and returns a Scorer.
REWARDS: dict[str, str] = {
    "bm25_rank": "qgjax.rewards.bm25_rank:build",
    "bm25_ndcg": "qgjax.rewards.bm25_rank:build",
    "dense_rank": "qgjax.rewards.dense:build",
    "dense_cosine": "qgjax.rewards.dense:build",
    "cross_encoder": "qgjax.rewards.cross_encoder:build",
    "lm_likelihood": "qgjax.rewards.likelihood:build",
    "llm_judge": "qgjax.rewards.llm_judge:build",
}


def build_scorers(names, ctx) -> list:
  """The distinct scorers that produce `names` (in order of first need)."""
  scorers = []
  for name in names:
    if name not in REWARDS:
      import difflib
      close = difflib.get_close_matches(name, REWARDS, n=1)
      hint = f" did you mean '{close[0]}'?" if close else ""
      raise ConfigError(f"unknown reward '{name}';{hint} rewards: {', '.join(REWARDS)}")
    module, _, fn = REWARDS[name].partition(":")
    scorer = getattr(importlib.import_module(module), fn)(ctx)
    if not any(s is scorer for s in scorers):
      scorers.append(scorer)
  return scorers
