"""BM25: scores against a hand-written Lucene BM25 in numpy, deterministic ties, ranks, save/load."""

import importlib.util
import math
import warnings
from collections import Counter

import numpy as np
import pytest

from qgjax.data import demo_dir
from qgjax.data.beir import Corpus, Document, load_beir
from qgjax.errors import InputError
from qgjax.evaluation.ir_metrics import evaluate, rank_documents
from qgjax.retrieval import bm25
from qgjax.retrieval.bm25 import BM25Settings, build_bm25, load_bm25, open_bm25

DOCS = [
    Document("d1", "Cats", "The cat sat on the mat with another cat"),
    Document("d2", "", "dogs chase cats in the park"),
    Document("d3", "", "a dog sleeps"),
    Document("d4", "Birds", "birds sing at dawn while cats sleep"),
    Document("d5", "", "dogs chase cats in the park"),  # same text as d2: score ties
    Document("d0", "", "dogs chase cats in the park"),
]


def _lucene_bm25(docs, query, k1=0.9, b=0.4):
  """Reference: Lucene (>= 8) BM25 over the same analysed tokens, written out in numpy.

  Lucene 8 dropped the constant (k1 + 1) factor of the numerator; ranks are unchanged.
  """
  analyzer = bm25.Analyzer(BM25Settings())
  toks = [analyzer(d.contents) for d in docs]
  n, avgdl = len(docs), np.mean([len(t) for t in toks])
  scores = np.zeros(n)
  for term in analyzer(query):
    df = sum(term in t for t in toks)
    if df == 0:
      continue
    idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
    for i, t in enumerate(toks):
      tf = Counter(t)[term]
      scores[i] += idf * tf / (tf + k1 * (1 - b + b * len(t) / avgdl))
  return scores


def test_analyzer_matches_lucene_defaults():
  a = bm25.Analyzer(BM25Settings())
  assert a("The Cats were running, a B-52 and the dogs' bowls") == \
      ["cat", "were", "run", "b", "52", "dog", "bowl"]


@pytest.mark.parametrize("query", ["cat", "dogs chase cats", "sleeping birds at dawn", "the mat cat cat"])
def test_scores_match_hand_computed_lucene_bm25(query):
  retriever = build_bm25(DOCS)
  ids, scores = retriever.search([query], k=10)
  ref = _lucene_bm25(DOCS, query)
  want = {d.doc_id: s for d, s in zip(DOCS, ref) if s > 0}
  got = dict(zip(ids[0], scores[0].tolist()))
  assert set(got) == set(want)
  for d in want:
    assert got[d] == pytest.approx(want[d], rel=1e-5)
  assert ids[0] == rank_documents(got)  # score desc, ties by doc id desc (trec_eval order)


def test_ties_break_by_doc_id_descending_and_ranks_agree_with_search():
  retriever = build_bm25(DOCS)
  ids, scores = retriever.search(["dogs chase cats"], k=10)
  tied = [d for d in ids[0] if d in ("d0", "d2", "d5")]
  assert tied == ["d5", "d2", "d0"] and ids[0][:3] == tied
  queries = ["cat", "dogs chase cats", "dawn", "dog"]
  for q in queries:
    found, _ = retriever.search([q], k=10)
    for pos, d in enumerate(found[0], start=1):
      assert retriever.rank_of(q, d, depth=10) == pos
  # k cuts inside a group of ties: the kept ones are the first in doc id descending order
  ids2, _ = retriever.search(["dogs chase cats"], k=2)
  assert ids2[0] == ["d5", "d2"]


def test_ranks_of_batched_depth_and_unmatched():
  retriever = build_bm25(DOCS)
  queries = ["dogs chase cats", "dogs chase cats", "cat", "zebra", "the a"]
  docs = ["d0", "d0", "d3", "d1", "d1"]
  ranks = retriever.ranks_of(queries, docs, depth=10)
  assert ranks.dtype == np.int32
  # d0 is 3rd (tied with d2, d5; lowest id last); d3 shares no term with "cat"; no known terms
  assert ranks.tolist() == [3, 3, 11, 11, 11]
  assert retriever.ranks_of(["dogs chase cats"], ["d0"], depth=2).tolist() == [3]
  assert retriever.rank_of("dogs chase cats", "d5", depth=1) == 1
  # a set of targets (several gold documents): the best rank among them
  assert retriever.ranks_of(["dogs chase cats", "cat"], [["d0", "d2"], ["d3", "d4"]], 10).tolist() == [2, 5]
  with pytest.raises(InputError, match="not in the BM25 index"):
    retriever.ranks_of(["cat"], ["nope"])
  with pytest.raises(InputError, match="not in the BM25 index"):
    retriever.ranks_of(["cat"], [["d1", "nope"]])
  empty_ids, empty_scores = retriever.search(["the a", ""], k=5)
  assert empty_ids == [[], []] and all(s.size == 0 for s in empty_scores)


def test_batched_ranks_equal_the_per_query_ranks():
  """ranks_of (the batch's scores from one np.add.at over its postings, every target ranked at
  once; also in blocks of 3 queries and pair blocks) equals ranking each query's bm25s
  get_scores_from_ids vector with rank_from_scores, on a corpus of few words (many exact ties),
  with several targets per query, repeated query words, unknown words and every depth cut."""
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(12)]
  docs = [Document(f"doc{i:03d}", "", " ".join(rng.choice(words, size=int(rng.integers(1, 6)))))
          for i in range(300)]
  retriever = build_bm25(docs)
  queries = [" ".join(rng.choice(words + ["zzz"], size=int(rng.integers(1, 5)))) for _ in range(60)] + ["", "zzz"]
  targets = [[docs[j].doc_id for j in rng.choice(300, size=int(rng.integers(1, 4)), replace=False)] for _ in queries]
  for depth in (1, 5, 40, 1000):
    want = []
    for q, t in zip(queries, targets):
      scores = retriever._scores(q)
      want.append(min(bm25.rank_from_scores(scores, retriever._index_of[d], depth, retriever._tie_rank) for d in t))
    assert retriever.ranks_of(queries, targets, depth=depth).tolist() == want
    assert retriever.ranks_of(queries, targets, depth=depth, max_block=900).tolist() == want
    each = [[bm25.rank_from_scores(retriever._scores(q), retriever._index_of[d], depth, retriever._tie_rank) for d in t]
            for q, t in zip(queries, targets)]
    assert [r.tolist() for r in retriever.target_ranks(queries, targets, depth=depth, max_block=900)] == each
  assert len(set(retriever.ranks_of(queries, targets, depth=1000).tolist())) > 10   # the ranks really vary
  assert retriever.target_ranks([], []) == [] and retriever.ranks_of([], []).tolist() == []


def test_save_load_and_cache(tmp_path, monkeypatch):
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  queries = ["how do vaccines work", "black hole event horizon", "sourdough starter"]
  built = build_bm25(corpus, index_dir=tmp_path / "idx")
  loaded = load_bm25(tmp_path / "idx")
  a, b = built.search(queries, k=20), loaded.search(queries, k=20)
  assert a.doc_ids == b.doc_ids
  for x, y in zip(a.scores, b.scores):
    np.testing.assert_array_equal(x, y)
  assert loaded.settings == BM25Settings() and len(loaded) == len(corpus)
  first = open_bm25(corpus, cache_dir=tmp_path / "cache")
  calls = []
  monkeypatch.setattr(bm25, "build_bm25", lambda *a, **k: calls.append(1))
  second = open_bm25(corpus, cache_dir=tmp_path / "cache")  # loaded, not rebuilt
  assert not calls and second.search(queries, 5).doc_ids == first.search(queries, 5).doc_ids
  with pytest.raises(InputError, match="not a qgjax BM25 index"):
    load_bm25(tmp_path)


def test_settings_from_config_and_bad_values():
  s = BM25Settings.from_config({"k1": 1.2, "stemmer": "none", "stopwords": ""})
  assert s.k1 == 1.2 and s.stemmer is None and s.stopwords is None and s.b == 0.4
  from qgjax.errors import ConfigError
  with pytest.raises(ConfigError, match="unknown stemmer 'klingon'"):
    build_bm25(DOCS, settings=BM25Settings(stemmer="klingon"))
  with pytest.raises(ConfigError, match="unknown BM25 backend 'lucene'"):
    build_bm25(DOCS, backend="lucene")


def test_demo_corpus_is_searchable():
  data = load_beir(demo_dir())
  retriever = build_bm25(data.corpus)
  qids = list(data.queries)
  run = retriever.search([data.queries[q] for q in qids], k=10).as_run(qids)
  assert evaluate(run, data.qrels, ["nDCG@10"])["nDCG@10"] > 0.8


def test_nfcorpus_ndcg_close_to_pyserini(shared_data):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    data = load_beir(shared_data / "nfcorpus", "test")
  retriever = build_bm25(data.corpus)
  qids = list(data.queries)
  run = retriever.search([data.queries[q] for q in qids], k=100).as_run(qids)
  ndcg = evaluate(run, data.qrels, ["nDCG@10"])["nDCG@10"]
  assert abs(ndcg - 0.3218) < 0.01, ndcg


_HAS_PYSERINI = importlib.util.find_spec("pyserini") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_PYSERINI, reason="the pyserini extra is not installed")
def test_pyserini_backend_same_interface(tmp_path):
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  lucene = build_bm25(corpus, backend="pyserini", index_dir=tmp_path / "lucene")
  fast = build_bm25(corpus)
  queries = ["how do mRNA vaccines work", "glaciers retreat as the climate warms",
             "bread without yeast", "black hole event horizon"]
  a, b = lucene.search(queries, k=5), fast.search(queries, k=5)
  for x, y in zip(a.doc_ids, b.doc_ids):
    assert x[0] == y[0] and len(set(x) & set(y)) >= min(3, len(x)) and len(x) == len(y)
  for sa, sb in zip(a.scores, b.scores):  # same formula; Lucene stores lengths in 1 byte
    np.testing.assert_allclose(sa[:1], sb[:1], rtol=0.05)
  assert [len(x) for x in a.doc_ids] == [5, 5, 5, 1]
  second = [a.doc_ids[i][1] for i in range(3)] + ["demo-02"]
  assert lucene.ranks_of(queries, second, depth=5).tolist() == [2, 2, 2, 6]
  assert lucene.rank_of("zebra quagga", "demo-01", depth=5) == 6
  again = load_bm25(tmp_path / "lucene")
  assert again.backend == "pyserini" and again.search(queries, 5).doc_ids == a.doc_ids
