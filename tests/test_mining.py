"""Hard-negative mining: negatives come from below the positive's rank; reranker relabelling."""

import numpy as np
import pytest

from qgjax.errors import ConfigError
from qgjax.retrieval.mining import MiningConfig, finish_example, mine_batch, plan_example

RETRIEVED = [f"d{i}" for i in range(10)]          # ranks 0..9


def test_negatives_below_positive_rank_seeded():
  cfg = MiningConfig(top_k=10, num_negatives=3, seed=0)
  seen = set()
  for key in (f"q{i}" for i in range(40)):
    rec = finish_example(plan_example(key, "d4", RETRIEVED, cfg), None, cfg)
    assert rec["pos_id"] == "d4" and rec["pos_rank"] == 4 and not rec["relabelled"]
    assert len(rec["neg_ids"]) == 3 and all(r > 4 for r in rec["neg_ranks"])
    assert rec["neg_ranks"] == sorted(rec["neg_ranks"])
    assert rec["neg_ids"] == [RETRIEVED[r] for r in rec["neg_ranks"]]
    seen.add(tuple(rec["neg_ids"]))
    # same (seed, key) -> same draw, whatever else was mined before
    again = finish_example(plan_example(key, "d4", RETRIEVED, cfg), None, cfg)
    assert again == rec
  assert len(seen) > 5                                   # the draw depends on the key
  other = MiningConfig(top_k=10, num_negatives=3, seed=1)
  draws = [finish_example(plan_example(f"q{i}", "d4", RETRIEVED, other), None, other)["neg_ids"] for i in range(40)]
  assert draws != [finish_example(plan_example(f"q{i}", "d4", RETRIEVED, cfg), None, cfg)["neg_ids"]
                   for i in range(40)]
  # every doc below the positive gets drawn sometime, none above it ever
  all_negs = {d for t in seen for d in t}
  assert all_negs == {"d5", "d6", "d7", "d8", "d9"}


def test_missing_positive_and_too_few():
  cfg = MiningConfig(top_k=10, num_negatives=3)
  assert finish_example(plan_example("q", "zz", RETRIEVED, cfg), None, cfg) == "positive_not_retrieved"
  cfg_all = MiningConfig(top_k=10, num_negatives=3, missing_positive="sample_all")
  rec = finish_example(plan_example("q", "zz", RETRIEVED, cfg_all), None, cfg_all)
  assert rec["pos_rank"] == -1 and len(rec["neg_ids"]) == 3
  assert finish_example(plan_example("q", "d9", RETRIEVED, cfg), None, cfg) == "too_few_negatives"
  short = finish_example(plan_example("q", "d8", RETRIEVED, cfg), None, cfg)   # one doc below
  assert short["neg_ids"] == ["d9"]
  with pytest.raises(ConfigError):
    MiningConfig(relabel="gecko")


def test_settings_from_config_names_an_unknown_key_and_the_known_ones():
  assert MiningConfig.from_config({"top_k": 20, "num_negatives": 2}) == MiningConfig(top_k=20, num_negatives=2)
  assert MiningConfig.from_config(None) == MiningConfig()
  with pytest.raises(ConfigError, match=r"unknown mining setting\(s\) \['top_kk'\]; known: .*'top_k'"):
    MiningConfig.from_config({"top_kk": 20})
  from qgjax.retrieval.scann_index import ScannParams
  assert ScannParams.from_config({"num_leaves": 8}).num_leaves == 8
  with pytest.raises(ConfigError, match=r"unknown ScaNN setting\(s\) \['leaves'\]"):
    ScannParams.from_config({"leaves": 8})


# Reranker scores: the positive d2 scores 0.5; d1 (above it) 0.9 and d7 (below it) 0.8 beat it.
SCORES = {"d0": 0.1, "d1": 0.9, "d2": 0.5, "d3": 0.2, "d4": 0.3, "d5": 0.1, "d6": 0.0, "d7": 0.8, "d8": 0.2,
          "d9": 0.4}


def scorer(queries, docs):
  assert all(q == "what is d2" for q in queries)
  return np.asarray([SCORES[d.removeprefix("text of ")] for d in docs], np.float32)


def _mine(mode, **kw):
  cfg = MiningConfig(top_k=10, num_negatives=7, relabel=mode, relabel_depth=3, relabel_oversample=2, **kw)
  ex = [{"key": "q1", "query": "what is d2", "pos_id": "d2", "doc_id": "d2"}]
  return mine_batch(ex, [RETRIEVED], cfg, scorer, doc_text=lambda d: f"text of {d}")


def test_relabel_gecko_style():
  (rec,), stats = _mine("relabel")
  assert rec["pos_id"] == "d1" and rec["orig_pos_id"] == "d2" and rec["relabelled"]
  assert sorted(rec["false_negatives"]) == ["d1", "d7"]
  assert "d7" not in rec["neg_ids"] and "d2" not in rec["neg_ids"] and "d1" not in rec["neg_ids"]
  assert set(rec["neg_ids"]) == {"d3", "d4", "d5", "d6", "d8", "d9"}
  assert rec["query"] == "what is d2" and rec["doc_id"] == "d2"     # the input fields travel along
  assert stats["kept"] == 1 and stats["relabelled_positives"] == 1


def test_relabel_drop_and_drop_query_and_margin():
  (rec,), _ = _mine("drop")
  assert rec["pos_id"] == "d2" and not rec["relabelled"]
  assert "d7" not in rec["neg_ids"] and set(rec["neg_ids"]) == {"d3", "d4", "d5", "d6", "d8", "d9"}
  records, stats = _mine("drop_query")
  assert records == [] and stats["false_negative_above_positive"] == 1
  # with a margin of 0.35 only d1 (0.9 > 0.5 + 0.35) is a false negative; d7 stays a negative
  (rec,), _ = _mine("relabel", relabel_margin=0.35)
  assert rec["pos_id"] == "d1" and rec["false_negatives"] == ["d1"] and "d7" in rec["neg_ids"]
  # no reranker, no relabelling: d7 is a negative
  (rec,), _ = _mine("none")
  assert "d7" in rec["neg_ids"] and rec["false_negatives"] == []


def test_relabel_positive_gecko_keeps_other_negatives():
  # the reranker's top document d1 (0.9) beats the source d2 (0.5): it becomes the positive; with
  # relabel=none d7 (0.8, below d1) stays a negative, with relabel=drop it leaves with d1
  (rec,), stats = _mine("none", relabel_positive=True)
  assert rec["pos_id"] == "d1" and rec["orig_pos_id"] == "d2" and rec["relabelled"] and rec["pos_rank"] == 2
  assert rec["false_negatives"] == [] and set(rec["neg_ids"]) == {"d3", "d4", "d5", "d6", "d7", "d8", "d9"}
  assert stats["relabelled_positives"] == 1
  (rec,), _ = _mine("drop", relabel_positive=True)
  assert rec["pos_id"] == "d1" and rec["false_negatives"] == ["d1", "d7"]
  assert set(rec["neg_ids"]) == {"d3", "d4", "d5", "d6", "d8", "d9"}
  # the margin: 0.9 > 0.5 + 0.35 relabels, 0.9 > 0.5 + 0.45 does not
  (rec,), _ = _mine("none", relabel_positive=True, positive_margin=0.35)
  assert rec["pos_id"] == "d1"
  (rec,), stats = _mine("none", relabel_positive=True, positive_margin=0.45)
  assert rec["pos_id"] == "d2" and not rec["relabelled"] and stats["relabelled_positives"] == 0
  with pytest.raises(ConfigError, match="relabel_positive works with relabel none or drop"):
    MiningConfig(relabel="relabel", relabel_positive=True)
  with pytest.raises(ConfigError, match="need a reranker"):
    mine_batch([{"key": "q", "query": "q", "pos_id": "d2"}], [RETRIEVED], MiningConfig(relabel_positive=True))


def test_store_scores_are_the_rerankers_scores_of_the_tuple():
  (rec,), _ = _mine("none", relabel_positive=True, store_scores=True)
  assert rec["ce_pos"] == pytest.approx(0.9) and len(rec["ce_neg"]) == len(rec["neg_ids"]) == 7
  np.testing.assert_allclose(rec["ce_neg"], [SCORES[d] for d in rec["neg_ids"]], rtol=1e-6)
  # without relabelling: the source positive's score, and the reranker scores only the positive and the
  # negatives the tuple keeps, which are the ones mining without a reranker draws
  cfg = MiningConfig(top_k=10, num_negatives=2, relabel_oversample=2, relabel_depth=1, store_scores=True)
  plain = MiningConfig(top_k=10, num_negatives=2)
  for key in ("q1", "q2", "q3"):
    plan = plan_example(key, "d2", RETRIEVED, cfg)
    sc = {d: SCORES[d] for d in plan.to_score}
    rec = finish_example(plan, sc, cfg)
    assert plan.to_score == ["d2"] + sorted(rec["neg_ids"], key=plan.to_score.index)
    assert rec["neg_ids"] == finish_example(plan_example(key, "d2", RETRIEVED, plain), None, plain)["neg_ids"]
    assert rec["pos_id"] == "d2" and rec["ce_pos"] == 0.5 and len(plan.to_score) == 1 + 2
    assert rec["ce_neg"] == [SCORES[d] for d in rec["neg_ids"]] and len(rec["neg_ids"]) == 2
  # a positive with fewer documents below it than num_negatives: all of them scored, all kept
  plan = plan_example("q1", "d8", RETRIEVED, cfg)
  assert plan.to_score == ["d8", "d9"] and finish_example(plan, SCORES, cfg)["neg_ids"] == ["d9"]
