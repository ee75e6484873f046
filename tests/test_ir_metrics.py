"""IR metrics against pytrec_eval (through ir_measures) on random runs with many score ties."""

import math
import random

import pytest

from qgjax.errors import InputError
from qgjax.evaluation import ir_metrics

ir_measures = pytest.importorskip("ir_measures")


def _random_case(seed, n_queries=30, n_docs=40):
  rng = random.Random(seed)
  docs = [f"d{rng.randint(0, 10**6)}" for _ in range(n_docs)]
  qrels, run = {}, {}
  for q in range(n_queries):
    qid = f"q{q}"
    if rng.random() < 0.9:  # some queries judged only in the run (ignored)
      judged = rng.sample(docs, rng.randint(1, 12))
      qrels[qid] = {d: rng.choice([-1, 0, 0, 1, 1, 2, 3]) for d in judged}
    if rng.random() < 0.9:  # some judged queries missing from the run (count 0)
      retrieved = rng.sample(docs, rng.randint(1, 30))
      # few distinct score values -> many ties, broken by doc id
      run[qid] = {d: float(rng.choice([0.5, 1.0, 1.25, 2.0, 3.0])) for d in retrieved}
  return run, qrels


@pytest.mark.parametrize("seed", range(6))
def test_matches_pytrec_eval_with_ties(seed):
  run, qrels = _random_case(seed)
  ks = (1, 3, 5, 10, 20)
  ref_measures = [m @ k for k in ks for m in (ir_measures.nDCG, ir_measures.R, ir_measures.Success,
                                               ir_measures.P)] + [ir_measures.RR]
  ref = {}
  for m in ir_measures.pytrec_eval.iter_calc(ref_measures, qrels, run):
    ref[(m.query_id, str(m.measure))] = m.value
  names = [f"{m}@{k}" for k in ks for m in ("nDCG", "R", "Success", "P")] + [f"RR@{k}" for k in ks]
  ours = ir_metrics.evaluate_per_query(run, qrels, names)
  assert set(ours) == set(qrels)
  for qid in qrels:
    for k in ks:
      for m in ("nDCG", "R", "Success", "P"):
        assert ours[qid][f"{m}@{k}"] == pytest.approx(ref[(qid, f"{m}@{k}")], abs=1e-12), (qid, m, k)
      rr = ref[(qid, "RR")]  # pytrec's RR has no cutoff; RR@k is RR when the first hit is within k
      assert ours[qid][f"RR@{k}"] == pytest.approx(rr if rr >= 1 / k - 1e-12 else 0.0, abs=1e-12)
  agg = ir_measures.pytrec_eval.calc_aggregate(ref_measures, qrels, run)
  mine = ir_metrics.evaluate(run, qrels, names)
  for k in ks:
    assert mine[f"nDCG@{k}"] == pytest.approx(agg[ir_measures.nDCG @ k], abs=1e-12)
    assert mine[f"R@{k}"] == pytest.approx(agg[ir_measures.R @ k], abs=1e-12)


def test_hand_computed_values():
  qrels = {"q": {"a": 1, "b": 2, "c": 0, "z": 1}}
  run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.5}}  # ties: c, b, a (doc id descending)
  assert ir_metrics.rank_documents(run["q"]) == ["c", "b", "a", "d"]
  got = ir_metrics.evaluate(run, qrels, ["nDCG@3", "MRR@10", "RR@1", "Recall@2", "Acc@1", "Acc@2", "P@4"])
  dcg = 2 / math.log2(3) + 1 / math.log2(4)
  idcg = 2 + 1 / math.log2(3) + 1 / math.log2(4)
  assert got["nDCG@3"] == pytest.approx(dcg / idcg)
  assert got["MRR@10"] == pytest.approx(0.5) and got["RR@1"] == 0.0
  assert got["Recall@2"] == pytest.approx(1 / 3) and got["P@4"] == pytest.approx(2 / 4)
  assert got["Acc@1"] == 0.0 and got["Acc@2"] == 1.0


def test_unknown_measure_names_the_options():
  with pytest.raises(InputError, match="unknown measure 'NDCG10'"):
    ir_metrics.parse_measure("NDCG10")


def test_trec_run_roundtrip_keeps_order_and_exact_scores(tmp_path):
  run, _ = _random_case(0)
  run["q0"]["d-float"] = 0.1 + 0.2  # not representable in few digits
  path = tmp_path / "run.trec"
  ir_metrics.write_trec_run(path, run, tag="bm25")
  back = ir_metrics.read_trec_run(path)
  assert back == run
  lines = path.read_text().splitlines()
  q0 = [l.split() for l in lines if l.startswith("q0 ")]
  assert [c[2] for c in q0] == ir_metrics.rank_documents(run["q0"])
  assert [int(c[3]) for c in q0] == list(range(1, len(q0) + 1)) and q0[0][5] == "bm25"
  path.write_text("q1 Q0 d1 1 notanumber x\n")
  with pytest.raises(InputError, match=r"run.trec:1, field 'score'"):
    ir_metrics.read_trec_run(path)
  path.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d1 2 1.0 x\n")
  with pytest.raises(InputError, match="appears twice"):
    ir_metrics.read_trec_run(path)


def test_format_table():
  text = ir_metrics.format_table({"bm25": {"nDCG@10": 0.31234}}, ["nDCG@10", "R@100"])
  assert "0.3123" in text and text.splitlines()[2].startswith("bm25")
