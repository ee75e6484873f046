"""Reranker training examples from qrels (qgjax.retrieval.qrels_examples) on a hand-built BEIR dir whose
BM25 order is known by construction: equal-length documents, term frequency k of the query word."""

import json

import numpy as np
import pytest

from qgjax.data import demo_dir
from qgjax.errors import ConfigError, InputError
from qgjax.retrieval.qrels_examples import qrels_examples, sample_negatives

FILLER = ["lamp", "desk", "chair", "sofa", "rug", "vase"]


def _doc(word: str, tf: int) -> str:
  """Six words: `word` tf times, then filler (so BM25 ranks the documents of `word` by tf)."""
  return " ".join([word] * tf + FILLER[: 6 - tf])


# zebra: z6 > z5 > ... > z1 (tf 6..1); yak: y3 > y2 > y1; wombat: w1 only
DOCS = {**{f"z{k}": _doc("zebra", k) for k in range(1, 7)}, **{f"y{k}": _doc("yak", k) for k in range(1, 4)},
        "w1": _doc("wombat", 1)}
QUERIES = {"q1": "zebra", "q2": "yak", "q3": "wombat"}
# q1: z6 (2) and z4 (1) relevant, z2 judged non-relevant (0: may be a negative); q2: y1, y2; q3: w1
QRELS = [("q1", "z6", 2), ("q1", "z4", 1), ("q1", "z2", 0), ("q2", "y1", 1), ("q2", "y2", 1), ("q3", "w1", 1)]


def _beir(root, qrels=QRELS, queries=QUERIES, split="train"):
  (root / "qrels").mkdir(parents=True)
  (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in DOCS.items()))
  (root / f"queries_{split}.jsonl").write_text(
      "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
  (root / "qrels" / f"{split}.tsv").write_text(
      "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in qrels))
  return root


def test_positives_and_bm25_negatives(tmp_path):
  root = _beir(tmp_path / "beir")
  ex = qrels_examples(root, "train", negatives=2, depth=3, seed=0)
  assert [(e.query_id, e.query, e.doc_id) for e in ex] == [
      ("q1", "zebra", "z6"), ("q1", "zebra", "z4"), ("q2", "yak", "y1"), ("q2", "yak", "y2"), ("q3", "wombat", "w1")]
  order = ["z5", "z3", "z2", "z1"]          # q1's BM25 order without its relevant z6, z4 (z2 is grade 0)
  for e in ex[:2]:
    assert len(e.negative_ids) == 2 and set(e.negative_ids) <= set(order[:3])      # depth 3
    assert list(e.negative_ids) == sorted(e.negative_ids, key=order.index)        # rank order
  assert [e.negative_ids for e in ex[2:]] == [("y3",), ("y3",), ()]   # fewer candidates than asked; none
  # grade >= 2 only: z4 is no example but is still judged relevant, so never a negative
  (only,) = qrels_examples(root, "train", min_relevance=2, negatives=3, depth=3, seed=0)
  assert (only.doc_id, only.negative_ids) == ("z6", ("z5", "z3", "z2"))
  assert [e.negative_ids for e in qrels_examples(root, "train", negatives=0, depth=3)] == [()] * 5


def test_negatives_depend_only_on_seed_query_and_document(tmp_path):
  root = _beir(tmp_path / "a")
  shuffled = _beir(tmp_path / "b", qrels=QRELS[::-1])
  key = lambda ex: {(e.query_id, e.doc_id): e.negative_ids for e in ex}
  first = key(qrels_examples(root, "train", negatives=1, depth=3, seed=7))
  assert first == key(qrels_examples(root, "train", negatives=1, depth=3, seed=7))
  assert first == key(qrels_examples(shuffled, "train", negatives=1, depth=3, seed=7))
  draws = {qrels_examples(root, "train", negatives=1, depth=3, seed=s)[0].negative_ids for s in range(12)}
  assert len(draws) > 1 and set().union(*draws) <= {"z5", "z3", "z2"}


def test_sample_negatives_by_hand():
  rng = np.random.default_rng(0)
  ranked = ["a", "b", "c", "d", "e"]
  assert sample_negatives(ranked, {"b"}, depth=3, count=3, rng=rng) == ("a", "c", "d")
  assert sample_negatives(ranked, {"a", "b", "c", "d", "e"}, depth=3, count=1, rng=rng) == ()
  got = sample_negatives(ranked, {"c"}, depth=4, count=2, rng=np.random.default_rng(1))
  want = np.sort(np.random.default_rng(1).choice(4, size=2, replace=False))
  assert got == tuple(["a", "b", "d", "e"][i] for i in want)


def test_errors_name_the_file_and_the_id(tmp_path):
  root = _beir(tmp_path / "ok")
  with pytest.raises(InputError, match=r"no qrels for split 'dev' \(available: train\)") as e:
    qrels_examples(root, "dev")
  assert "dev.tsv" in str(e.value)
  bad_q = _beir(tmp_path / "bad_q", qrels=QRELS + [("q9", "z1", 1)])
  with pytest.raises(InputError, match=r"query id 'q9'.*queries_train.jsonl") as e:
    qrels_examples(bad_q, "train")
  assert "train.tsv" in str(e.value)
  bad_d = _beir(tmp_path / "bad_d", qrels=QRELS + [("q2", "nope", 1)])
  with pytest.raises(InputError, match=r"document id 'nope' \(judged for query 'q2'\).*corpus.jsonl") as e:
    qrels_examples(bad_d, "train")
  assert "train.tsv" in str(e.value)
  with pytest.raises(InputError, match="no judgement with grade >= 3"):
    qrels_examples(root, "train", min_relevance=3)
  with pytest.raises(ConfigError, match="min_relevance"):
    qrels_examples(root, "train", min_relevance=0)
  with pytest.raises(ConfigError, match="negatives <= depth"):
    qrels_examples(root, "train", negatives=4, depth=3)


def test_demo_collection():
  lines = (demo_dir() / "qrels" / "test.tsv").read_text().splitlines()[1:]
  judged = [tuple(l.split("\t")) for l in lines]
  relevant = {}
  for q, d, g in judged:
    if int(g) >= 1:
      relevant.setdefault(q, set()).add(d)
  ex = qrels_examples(demo_dir(), "test", negatives=2, depth=10, seed=0)
  assert sorted((e.query_id, e.doc_id) for e in ex) == sorted((q, d) for q, d, g in judged if int(g) >= 1)
  assert all(len(e.negative_ids) == 2 and not set(e.negative_ids) & relevant[e.query_id] for e in ex)
