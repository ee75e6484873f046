"""BEIR readers: the shipped demo corpus, lazy access, and errors naming file, line and field."""

import json
import warnings

import pytest

from qgjax.data import beir, demo_dir
from qgjax.errors import InputError


def _jsonl(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return path


def test_demo_corpus_is_valid_beir():
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the demo has no dangling qrels
    data = beir.load_beir(demo_dir(), "test")
  assert 40 <= len(data.corpus) <= 60 and 20 <= len(data.queries) <= 30
  assert set(data.queries) == set(data.qrels)
  for judged in data.qrels.values():
    assert all(d in data.corpus and g in (1, 2) for d, g in judged.items())
  docs = list(data.corpus)
  assert [d.doc_id for d in docs] == data.corpus.doc_ids
  assert all(len(d.text.split()) >= 40 and d.title for d in docs)
  assert len({d.text for d in docs}) == len(docs)


def test_corpus_random_access_by_offset(tmp_path):
  rows = [{"_id": "a", "title": "T", "text": "first"}, {"_id": 7, "text": "second ü"},
          {"_id": "c", "title": "", "text": "third"}]
  path = _jsonl(tmp_path / "corpus.jsonl", rows[:1] + [""] + rows[1:])  # a blank line is skipped
  corpus = beir.Corpus(path)
  assert len(corpus) == 3 and corpus.doc_ids == ["a", "7", "c"] and "7" in corpus
  assert corpus["7"] == beir.Document("7", "", "second ü")
  assert corpus["a"].contents == "T first" and corpus["c"].contents == "third"
  assert [d.doc_id for d in corpus.get_many(["c", "a", "7"])] == ["c", "a", "7"]
  with pytest.raises(KeyError):
    corpus["zzz"]


@pytest.mark.parametrize("rows, line, field, message", [
    ([{"_id": "a", "text": "x"}, '{"_id": "b", "text": "y"'], 2, None, "malformed JSON"),
    ([{"_id": "a", "text": "x"}, {"title": "t", "text": "y"}], 2, "_id", "missing id"),
    ([{"_id": "a", "title": "t"}], 1, "text", "missing field"),
    ([{"_id": "a", "text": "x"}, {"_id": "b", "text": "y"}, {"_id": "a", "text": "z"}], 3, "_id",
     "duplicate document id 'a'"),
    ([{"_id": "a", "text": "  ", "title": ""}], 1, "text", "empty text"),
    ([{"_id": "a", "text": 5}], 1, "text", "must be a string"),
    ([{"_id": ["a"], "text": "x"}], 1, "_id", "id must be a string"),
    (['["a", "b"]'], 1, None, "expected a JSON object"),
])
def test_corpus_errors_name_file_line_field(tmp_path, rows, line, field, message):
  path = _jsonl(tmp_path / "corpus.jsonl", rows)
  with pytest.raises(InputError) as err:
    beir.Corpus(path)
  e = err.value
  assert e.path == str(path) and e.line == line and e.field == field and message in str(e)
  assert str(e).startswith(f"{path}:{line}")
  with pytest.raises(InputError):  # the streaming reader reports the same
    list(beir.iter_corpus(path))


def test_corpus_text_may_be_empty_when_title_is_not(tmp_path):
  path = _jsonl(tmp_path / "corpus.jsonl", [{"_id": "a", "title": "Only a title", "text": ""}])
  assert beir.Corpus(path)["a"].contents == "Only a title"


def test_query_errors(tmp_path):
  path = _jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}])
  with pytest.raises(InputError, match=r"queries.jsonl:2, field '_id': duplicate query id 'q1'"):
    beir.load_queries(path)
  path = _jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": ""}])
  with pytest.raises(InputError, match="field 'text': query 'q1' has empty text"):
    beir.load_queries(path)
  with pytest.raises(InputError, match="file not found"):
    beir.load_queries(tmp_path / "nope.jsonl")


def test_qrels_parse_and_errors(tmp_path):
  path = tmp_path / "test.tsv"
  path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td1\t1.0\n")
  assert beir.load_qrels(path) == {"q1": {"d1": 2, "d2": 0}, "q2": {"d1": 1}}
  assert beir.load_qrels(path, min_grade=1) == {"q1": {"d1": 2}, "q2": {"d1": 1}}
  path.write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
  with pytest.raises(InputError, match=r"test.tsv:2, field 'score': score must be an integer"):
    beir.load_qrels(path)
  path.write_text("q1\td1\n")
  with pytest.raises(InputError, match=r"test.tsv:1: expected 3 tab-separated columns"):
    beir.load_qrels(path)
  path.write_text("q1\td1\t1\nq1\td1\t2\n")
  with pytest.raises(InputError, match="conflicting grades"):
    beir.load_qrels(path)


def test_qrels_with_unknown_ids_warn_with_count_and_examples(tmp_path):
  root = tmp_path / "ds"
  (root / "qrels").mkdir(parents=True)
  _jsonl(root / "corpus.jsonl", [{"_id": "d1", "text": "x"}, {"_id": "d2", "text": "y"}])
  _jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "b"}])
  (root / "qrels" / "test.tsv").write_text(
      "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tgone-1\t1\nq2\tgone-2\t1\nq9\td2\t1\n")
  with pytest.warns(beir.QrelsWarning) as record:
    data = beir.load_beir(root, "test")
  messages = [str(w.message) for w in record]
  assert any("2 judgements name 2 documents not in the corpus (kept), e.g. gone-1, gone-2" in m
             for m in messages)
  assert any("1 judgements name 1 queries not in the query file" in m for m in messages)
  assert data.qrels["q1"] == {"d1": 1, "gone-1": 1}  # kept: they still count for recall
  assert set(data.queries) == {"q1", "q2"}
  with pytest.raises(InputError, match=r"no qrels for split 'dev' \(available: test\)"):
    beir.load_beir(root, "dev")


def test_queries_path_prefers_split_file(tmp_path):
  (tmp_path / "queries.jsonl").write_text("")
  assert beir.queries_path(tmp_path, "dev").name == "queries.jsonl"
  (tmp_path / "queries_dev.jsonl").write_text("")
  assert beir.queries_path(tmp_path, "dev").name == "queries_dev.jsonl"


def test_nfcorpus_loads(shared_data):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", beir.QrelsWarning)
    data = beir.load_beir(shared_data / "nfcorpus", "test")
  assert len(data.corpus) == 3633 and len(data.queries) == 323
  assert data.corpus["MED-10"].title.startswith("Statin Use and Breast Cancer Survival")
