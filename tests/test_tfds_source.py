"""qgjax.data.tfds_source: real TFDS datasets prepared offline (array_record, no TensorFlow) read back."""

from __future__ import annotations

import sys

import pytest

from qgjax.errors import ConfigError, InputError

try:
  import tensorflow_datasets as tfds
except ImportError:
  tfds = None

needs_tfds = pytest.mark.skipif(tfds is None, reason="tensorflow-datasets not installed (the `tfds` extra)")

ROWS = [{"id": "d0", "title": "Café", "text": "Zürich lies on a lake."},
        {"id": "d1", "title": "", "text": "no title here"},
        {"id": "d2", "title": "日本", "text": "Tokyo is the capital of Japan."}]


def _prepare(data_dir, splits: dict[str, list[dict]], names=("id", "title", "text")) -> str:
  """Prepares a tiny GeneratorBasedBuilder (Text features `names`) as array_record; its builder dir."""

  class TinyCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):  # disable_shuffling: records stay in generation order
      return tfds.core.DatasetInfo(builder=self, disable_shuffling=True, features=tfds.features.FeaturesDict(
        {n: tfds.features.Text() for n in names}))

    def _split_generators(self, dl_manager):
      return {name: self._generate_examples(rows) for name, rows in splits.items()}

    def _generate_examples(self, rows):
      for i, row in enumerate(rows):
        yield i, row

  builder = TinyCorpus(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_dir)


@pytest.fixture(scope="module")
def builder_dir(tmp_path_factory):
  return _prepare(tmp_path_factory.mktemp("tfds"), {"train": ROWS, "test": ROWS[:1]})


@needs_tfds
def test_reads_back_what_was_written(builder_dir):
  from qgjax.data.tfds_source import TfdsCorpus

  corpus = TfdsCorpus(builder_dir)
  docs = list(corpus)
  assert [(d.doc_id, d.title, d.text) for d in docs] == [(r["id"], r["title"], r["text"]) for r in ROWS]
  assert len(corpus) == 3 and corpus.doc_ids == ["d0", "d1", "d2"] and "d1" in corpus and "x" not in corpus
  assert corpus["d2"].text == ROWS[2]["text"] and corpus["d1"].contents == "no title here"
  assert [d.doc_id for d in corpus.get_many(["d2", "d0"])] == ["d2", "d0"]
  assert [d.doc_id for d in TfdsCorpus(builder_dir, "test")] == ["d0"]
  assert [d.doc_id for d in TfdsCorpus.from_spec(f"tfds:{builder_dir}:train[1:]")] == ["d1", "d2"]
  untitled = TfdsCorpus.from_spec(f"tfds:{builder_dir}?title=")
  assert untitled["d0"].title == "" and untitled["d0"].text == ROWS[0]["text"]


@needs_tfds
def test_custom_field_names_and_streaming_chunks(tmp_path, monkeypatch):
  from qgjax.data import tfds_source

  rows = [{"doc_id": f"n{i}", "body": f"passage {i}"} for i in range(7)]
  d = _prepare(tmp_path, {"train": rows}, names=("doc_id", "body"))
  monkeypatch.setattr(tfds_source, "_CHUNK", 3)  # several chunked reads over the source
  corpus = tfds_source.TfdsCorpus.from_spec(f"tfds:{d}?id=doc_id&text=body")
  assert [(doc.doc_id, doc.title, doc.text) for doc in corpus] == [(r["doc_id"], "", r["body"]) for r in rows]


def test_parse_spec():
  from qgjax.data.tfds_source import parse_spec

  assert parse_spec("tfds:/d/my_ds/1.0.0") == ("/d/my_ds/1.0.0", "train", {})
  assert parse_spec("tfds:/d/1.0.0:test[:10]?id=doc_id&title=") == ("/d/1.0.0", "test[:10]",
                                                                   {"id": "doc_id", "title": ""})
  assert parse_spec("tfds:rel:validation") == ("rel", "validation", {})
  for bad in ("tfds:", "tfds:/d?ids=x", "/d/1.0.0"):
    with pytest.raises(ConfigError):
      parse_spec(bad)


def test_without_tfds_says_install_the_extra(monkeypatch, tmp_path):
  from qgjax.data.tfds_source import TfdsCorpus

  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import` raises ImportError
  with pytest.raises(ConfigError, match=r"install the `tfds` extra"):
    TfdsCorpus(str(tmp_path))


@needs_tfds
def test_errors_name_directory_split_record_and_field(builder_dir, tmp_path):
  from qgjax.data.tfds_source import TfdsCorpus

  with pytest.raises(InputError, match="directory not found") as e:
    TfdsCorpus(str(tmp_path / "nope"))
  assert e.value.path == str(tmp_path / "nope")
  parent = str(builder_dir).rsplit("/", 2)[0]  # <data_dir>: holds <name>/1.0.0
  with pytest.raises(InputError, match=r"not a prepared TFDS dataset.*prepared datasets below it: .*1\.0\.0"):
    TfdsCorpus(parent)
  with pytest.raises(ConfigError, match=r"no split 'validation' \(available: test, train\)"):
    TfdsCorpus(builder_dir, "validation")
  with pytest.raises(InputError, match=r"no such feature") as e:
    TfdsCorpus.from_spec(f"tfds:{builder_dir}?text=body")
  assert e.value.field == "body" and e.value.path == builder_dir

  row = lambda i, title, text: {"id": i, "title": title, "text": text}
  cases = [([row("a", "", "x"), row("a", "", "y")], "id", 1, "duplicate document id 'a'"),
           ([row("a", "", "x"), row("b", "", " ")], "text", 1, "empty text"),
           ([row("", "t", "x")], "id", 0, "empty id"),
           ([row("a", "t", b"ok \xff")], "text", 0, "not valid UTF-8")]
  for k, (rows, field, index, message) in enumerate(cases):
    d = _prepare(tmp_path / f"bad{k}", {"train": rows})
    with pytest.raises(InputError, match=message) as e:
      TfdsCorpus(d)
    assert (e.value.path, e.value.field) == (d, field)
    assert f"split 'train', record {index}:" in str(e.value)


@needs_tfds
def test_generate_accepts_tfds_corpus_spec(builder_dir):
  from qgjax.jobs.generate import _corpus, _negative_picker

  corpus = _corpus(f"tfds:{builder_dir}:train")
  assert [d.doc_id for d in corpus] == ["d0", "d1", "d2"]
  negative = _negative_picker(corpus, seed=0)("d0")  # contrastive prompts fetch other docs by id
  assert negative.doc_id in ("d1", "d2")
