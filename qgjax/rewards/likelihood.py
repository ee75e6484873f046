"""The generator's own length-normalised log-likelihood of a generated query.

reward `lm_likelihood` = logprob / num_tokens, from what the generate stage stored with each
sample: `logprob` (the summed log-probability of the sampled tokens) and the token count in
`num_tokens` (or `length`), or a list `token_logprobs` (then its mean). Nothing is recomputed.
"""

from __future__ import annotations

import numpy as np

from qgjax.errors import InputError
from qgjax.rewards.base import RewardBatch, RewardContext, ScoreOutput

COUNT_FIELDS = ("num_tokens", "length")


def normalised_logprob(record: dict) -> float:
  if isinstance(record.get("token_logprobs"), list):
    values = record["token_logprobs"]
    if not values:
      raise InputError("token_logprobs is empty", field="token_logprobs")
    return float(np.mean(np.asarray(values, np.float64)))
  if "logprob" not in record:
    raise InputError("the lm_likelihood reward needs the summed 'logprob' of each sample",
                     field="logprob")
  for name in COUNT_FIELDS:
    if name in record:
      n = int(record[name])
      if n < 1:
        raise InputError(f"token count must be >= 1, got {n}", field=name)
      return float(record["logprob"]) / n
  raise InputError(f"the lm_likelihood reward needs a token count ({' or '.join(COUNT_FIELDS)}) "
                   "or token_logprobs in each record", field=COUNT_FIELDS[0])


class LikelihoodScorer:

  def __call__(self, batch: RewardBatch) -> ScoreOutput:
    return ScoreOutput({"lm_likelihood": np.array([normalised_logprob(r) for r in batch.records])})


def build(ctx: RewardContext) -> LikelihoodScorer:
  return ctx.cache.setdefault("lm_likelihood", LikelihoodScorer())
