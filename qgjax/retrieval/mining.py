"""Hard-negative mining for generated queries (arXiv 2505.19307), with reranker relabelling.

For a generated query q of source document d+ (its positive):

1. retrieve the top `top_k` documents for q with the dense index;
2. find the rank r of d+ in that list (0-based);
3. candidates = the documents ranked below r (ranks r+1 .. top_k-1), visited in an order
   drawn from a seed that depends only on (seed, query key), so a resumed or re-sharded run
   draws the same negatives;
4. optionally score with a reranker the positive, the top `relabel_depth` retrieved documents
   and the first `num_negatives * relabel_oversample` candidates (with store_scores alone, no
   false-negative check: the positive and the first `num_negatives` candidates, the ones step 5
   keeps, so a MarginMSE mining scores 1 + num_negatives pairs a query); a document that scores above
   the positive (by more than `relabel_margin`) is a likely false negative:
     relabel     -> the best-scoring such document becomes the positive (Gecko style); all of
                    them leave the negative pool
     drop        -> they leave the negative pool; the positive stays
     drop_query  -> the example is dropped
     none        -> no reranker
   relabel_positive (Gecko, arXiv 2403.20327; with relabel none or drop): the reranker's top
   document among those it scored becomes the positive when it beats the source document by
   more than `positive_margin`; it leaves the negative pool, the other scored documents stay
   candidates (relabel=none) or leave the pool as false negatives (relabel=drop);
5. negatives = the first `num_negatives` candidates left, reported in rank order.
   After a relabel they stay the ones below the original positive's rank: the reranker scored
   every one of them at most the old positive's score (+ margin), so below the new positive's,
   even where the new positive was retrieved further down than some of them (with
   relabel_positive the new positive is the best-scored document, so above them all);
6. store_scores: the record also carries the reranker's scores of its positive and negatives,
   `ce_pos` and `ce_neg` (aligned with neg_ids), the targets of a MarginMSE retriever loss
   (GPL, arXiv 2112.07577). Negatives then come only from the candidates the reranker scored.

When d+ is not among the top_k, `missing_positive` decides: "skip" the query (default) or
"sample_all" (every retrieved document is a candidate). Examples with fewer than
`min_negatives` negatives are skipped. Every skip is counted by reason.

  plan = plan_example(key, pos_id, retrieved_ids, cfg)                 # what to score
  rec = finish_example(plan, scores_or_None, cfg)                      # -> record | SkipReason
  outcomes = mine_outcomes(examples, retrieved, cfg, scorer, doc_text)  # both, batched
"""

from __future__ import annotations

import collections
import dataclasses
import zlib
from typing import Callable, Mapping, Sequence

import numpy as np

from qgjax.config_checks import settings_from_config
from qgjax.errors import ConfigError

RELABEL_MODES = ("none", "relabel", "drop", "drop_query")
MISSING_MODES = ("skip", "sample_all")


@dataclasses.dataclass(frozen=True)
class MiningConfig:
  top_k: int = 100                 # retrieval depth
  num_negatives: int = 8           # negatives per example
  min_negatives: int = 1           # fewer available -> skip the example
  seed: int = 0
  missing_positive: str = "skip"   # positive not in the top_k: "skip" | "sample_all"
  relabel: str = "none"            # "none" | "relabel" | "drop" | "drop_query"
  relabel_depth: int = 10          # top retrieved docs the reranker checks (besides sampled negatives)
  relabel_margin: float = 0.0      # a doc is a false negative if score > score(positive) + margin
  relabel_oversample: int = 2      # candidates scored per needed negative
  relabel_positive: bool = False   # Gecko: the reranker's top document becomes the positive ...
  positive_margin: float = 0.0     # ... when its score > score(source document) + positive_margin
  store_scores: bool = False       # write the reranker's ce_pos / ce_neg with each tuple (MarginMSE)

  def __post_init__(self):
    if self.relabel not in RELABEL_MODES:
      raise ConfigError(f"mining.relabel must be one of {RELABEL_MODES}, got {self.relabel!r}")
    if self.relabel_positive and self.relabel not in ("none", "drop"):
      raise ConfigError(f"mining.relabel_positive works with relabel none or drop, not {self.relabel!r} "
                        "(relabel=relabel already makes the best false negative the positive)")
    if self.missing_positive not in MISSING_MODES:
      raise ConfigError(f"mining.missing_positive must be one of {MISSING_MODES}, got {self.missing_positive!r}")
    if self.top_k < 2 or self.num_negatives < 1 or self.min_negatives < 0:
      raise ConfigError("mining needs top_k >= 2, num_negatives >= 1, min_negatives >= 0")

  @classmethod
  def from_config(cls, cfg: Mapping | None) -> MiningConfig:
    return settings_from_config(cls, cfg, "mining")

  @property
  def checks_false_negatives(self) -> bool:
    """Whether the reranker judges documents against the positive (relabel or relabel_positive)."""
    return self.relabel != "none" or self.relabel_positive

  @property
  def uses_reranker(self) -> bool:
    return self.checks_false_negatives or self.store_scores


def example_rng(seed: int, key: str) -> np.random.Generator:
  """A generator that depends only on (seed, key): order- and sharding-independent."""
  return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8"))])


@dataclasses.dataclass
class Plan:
  key: str
  pos_id: str
  retrieved: list[str]              # top_k doc ids, best first
  pos_rank: int | None              # rank of the positive, None when not retrieved
  candidates: list[int]             # ranks of negative candidates in visiting order
  to_score: list[str]               # doc ids the reranker must score (positive first); [] without one


def plan_example(key: str, pos_id: str, retrieved: Sequence[str], cfg: MiningConfig) -> Plan:
  """Step 1-3 (+ the set the reranker must score) for one query."""
  retrieved = list(retrieved)
  pos_rank = retrieved.index(pos_id) if pos_id in retrieved else None
  if pos_rank is None and cfg.missing_positive == "skip":
    return Plan(key, pos_id, retrieved, None, [], [])
  first = 0 if pos_rank is None else pos_rank + 1
  ranks = [r for r in range(first, len(retrieved)) if retrieved[r] != pos_id]
  order = [ranks[i] for i in example_rng(cfg.seed, key).permutation(len(ranks))]
  to_score: list[str] = []
  if cfg.checks_false_negatives:
    want = [pos_id] + retrieved[: cfg.relabel_depth] + \
        [retrieved[r] for r in order[: cfg.num_negatives * cfg.relabel_oversample]]
  elif cfg.store_scores:   # nothing is dropped: the negatives are the first num_negatives of the draw
    want = [pos_id] + [retrieved[r] for r in order[: cfg.num_negatives]]
  if cfg.uses_reranker:
    seen = set()
    to_score = [d for d in want if not (d in seen or seen.add(d))]
  return Plan(key, pos_id, retrieved, pos_rank, order, to_score)


def finish_example(plan: Plan, scores: Mapping[str, float] | None, cfg: MiningConfig) -> dict | str:
  """Steps 4-5: -> a training record, or the reason (str) the example is skipped.

  Record: {pos_id, orig_pos_id, pos_rank, relabelled, neg_ids, neg_ranks, false_negatives}
  (+ ce_pos, ce_neg with store_scores). `pos_rank` is the retrieval rank of the original
  positive (-1: not retrieved).
  """
  if plan.pos_rank is None and cfg.missing_positive == "skip":
    return "positive_not_retrieved"
  pos_id, relabelled, false_neg = plan.pos_id, False, []
  candidates = plan.candidates
  if cfg.uses_reranker:
    if scores is None:
      raise ValueError("relabelling needs reranker scores")
    best = lambda docs: max(docs, key=lambda d: (scores[d], -plan.retrieved.index(d)))   # ties: higher rank
    s_pos = scores[plan.pos_id]
    if cfg.relabel != "none":
      false_neg = [d for d in plan.to_score[1:] if scores[d] > s_pos + cfg.relabel_margin]
    if false_neg and cfg.relabel == "drop_query":
      return "false_negative_above_positive"
    if false_neg and cfg.relabel == "relabel":
      pos_id, relabelled = best(false_neg), True
    if cfg.relabel_positive and len(plan.to_score) > 1:
      top = best(plan.to_score[1:])
      if scores[top] > s_pos + cfg.positive_margin:
        pos_id, relabelled = top, True
    # Only the prefix of the visiting order that the reranker saw is safe to draw from.
    excluded = set(false_neg) | {pos_id}
    candidates = [r for r in candidates[: cfg.num_negatives * cfg.relabel_oversample]
                  if plan.retrieved[r] not in excluded]
  chosen = sorted(candidates[: cfg.num_negatives])
  if len(chosen) < max(cfg.min_negatives, 1):
    return "too_few_negatives"
  record = {"pos_id": pos_id, "orig_pos_id": plan.pos_id,
            "pos_rank": -1 if plan.pos_rank is None else plan.pos_rank, "relabelled": relabelled,
            "neg_ids": [plan.retrieved[r] for r in chosen], "neg_ranks": chosen, "false_negatives": false_neg}
  if cfg.store_scores:
    record["ce_pos"] = scores[pos_id]
    record["ce_neg"] = [scores[d] for d in record["neg_ids"]]
  return record


Scorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]   # (query texts, doc texts) -> f32[N]


def mine_outcomes(examples: Sequence[Mapping], retrieved: Sequence[Sequence[str]], cfg: MiningConfig,
                  scorer: Scorer | None = None, doc_text: Callable[[str], str] | None = None) -> list[dict | str]:
  """Mines a batch. examples: [{"key", "query", "pos_id", ...extra fields kept}], retrieved: top_k ids each.

  The reranker (if any) scores every (query, doc) pair the plans ask for in one call.
  Returns, aligned with `examples`, a record (the example's fields + the mining fields) or the
  reason (str) it was skipped.
  """
  plans = [plan_example(str(ex["key"]), str(ex["pos_id"]), ids, cfg) for ex, ids in zip(examples, retrieved)]
  scores: list[dict | None] = [None] * len(plans)
  if cfg.uses_reranker:
    if scorer is None or doc_text is None:
      raise ConfigError("mining.relabel, relabel_positive and store_scores need a reranker (config.reranker)")
    pairs = [(i, d) for i, p in enumerate(plans) for d in p.to_score]
    scores = [{} for _ in plans]
    if pairs:
      values = np.asarray(scorer([examples[i]["query"] for i, _ in pairs], [doc_text(d) for _, d in pairs]),
                          np.float32).reshape(-1)
      for (i, d), v in zip(pairs, values):
        scores[i][d] = float(v)
  out: list[dict | str] = []
  for ex, plan, sc in zip(examples, plans, scores):
    res = finish_example(plan, sc, cfg)
    out.append(res if isinstance(res, str) else {**{k: v for k, v in ex.items() if k != "pos_id"}, **res})
  return out


def mine_batch(examples: Sequence[Mapping], retrieved: Sequence[Sequence[str]], cfg: MiningConfig,
               scorer: Scorer | None = None, doc_text: Callable[[str], str] | None = None
               ) -> tuple[list[dict], collections.Counter]:
  """`mine_outcomes` -> (kept records, Counter of outcomes: "kept", "relabelled_positives", skip reasons)."""
  records, stats = [], collections.Counter()
  for res in mine_outcomes(examples, retrieved, cfg, scorer, doc_text):
    if isinstance(res, str):
      stats[res] += 1
      continue
    stats["kept"] += 1
    stats["relabelled_positives"] += int(res["relabelled"])
    records.append(res)
  return records, stats
