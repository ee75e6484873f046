"""Documents from a text dataset already prepared with TensorFlow Datasets (no TensorFlow needed).

```
tfds:<builder_dir>[:split][?id=F&title=F&text=F]     e.g. tfds:~/tensorflow_datasets/my_corpus/1.0.0:train
```

`<builder_dir>` is a prepared dataset's version directory (`dataset_info.json`, `features.json`,
`*.array_record-*` shards); the split defaults to `train` and may be a slice (`train[:1000]`).
It is opened offline with `tfds.builder_from_directory(dir).as_data_source(split)`: a
random-access source over array_record files, read in record order a chunk at a time and never
copied whole. Fields map to `Document` (defaults `id`, `title` (optional), `text`); bytes are
decoded as UTF-8. `TfdsCorpus` has `Corpus`'s interface: one validating scan keeps only a
doc-id -> record-index table. Needs the `tfds` extra (`tensorflow-datasets`).
"""

from __future__ import annotations

import os
import pathlib
import urllib.parse
from typing import Any, Iterator

from qgjax.data.beir import Document
from qgjax.errors import ConfigError, InputError

PREFIX = "tfds:"
_CHUNK = 256


def is_tfds_spec(spec: Any) -> bool:
  return isinstance(spec, str) and spec.startswith(PREFIX)


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
  """`tfds:<dir>[:split][?id=F&title=F&text=F]` -> (dir, split, {id/title/text: field})."""
  if not is_tfds_spec(spec):
    raise ConfigError(f"not a TFDS corpus spec (expected 'tfds:<builder_dir>[:split]'): {spec!r}")
  rest, _, query = spec[len(PREFIX):].partition("?")
  colon = rest.find(":", rest.rfind("/") + 1)  # a split has no '/', and may hold ':' (train[:10])
  builder_dir, split = (rest[:colon], rest[colon + 1:]) if colon >= 0 else (rest, "")
  fields = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
  unknown = sorted(set(fields) - {"id", "title", "text"})
  if unknown or not builder_dir:
    raise ConfigError(f"bad TFDS corpus spec {spec!r}: expected 'tfds:<builder_dir>[:split]"
                      f"[?id=F&title=F&text=F]'" + (f" (unknown keys {unknown})" if unknown else ""))
  return os.path.expanduser(builder_dir), split or "train", fields


def _import_tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ConfigError("reading a 'tfds:' corpus needs tensorflow-datasets: install the `tfds` extra "
                      "(pip install 'qgjax[tfds]')") from e
  return tfds


def _hint(root: pathlib.Path) -> str:
  found = sorted(str(p.parent) for p in [*root.glob("*/dataset_info.json"), *root.glob("*/*/dataset_info.json")])
  return f"; prepared datasets below it: {', '.join(found[:5])}" if found else ""


def open_data_source(builder_dir: str, split: str = "train"):
  """(random-access data source, feature names) of a prepared array_record dataset."""
  tfds = _import_tfds()
  root = pathlib.Path(builder_dir)
  if not (root / "dataset_info.json").is_file():
    what = "directory not found" if not root.is_dir() else "not a prepared TFDS dataset (no dataset_info.json)"
    raise InputError(f"{what}; point at the version directory, e.g. <data_dir>/<name>/1.0.0{_hint(root)}",
                     path=str(root))
  try:
    builder = tfds.builder_from_directory(str(root))
  except Exception as e:  # a corrupt dataset_info.json / features.json
    raise InputError(f"cannot open as a TFDS dataset: {e}", path=str(root)) from e
  fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
  if str(fmt) != "array_record":
    raise InputError(f"dataset is stored as {fmt}; reading without TensorFlow needs array_record "
                     "(prepare it with file_format='array_record')", path=str(root))
  splits = sorted(builder.info.splits.keys())
  if any(part.partition("[")[0].strip() not in splits for part in split.split("+")):
    raise ConfigError(f"{root}: no split '{split}' (available: {', '.join(splits) or 'none'})")
  try:
    source = builder.as_data_source(split)
  except Exception as e:  # a bad slice, missing shard files
    raise InputError(f"split '{split}': cannot open data source: {e}", path=str(root)) from e
  return source, set(builder.info.features.keys())


class TfdsCorpus:
  """A split of a prepared TFDS dataset read as `Document`s, with `Corpus`'s interface.

  `for doc in corpus` streams in record order; `corpus[doc_id]` reads one record;
  `len`, `in`, `doc_ids` come from the id table built by one validating scan.
  """

  def __init__(self, builder_dir: str, split: str = "train", *, id_field: str = "id",
               title_field: str | None = "title", text_field: str = "text"):
    self.path = pathlib.Path(builder_dir)
    self.split = split
    self._source, names = open_data_source(builder_dir, split)
    if title_field and title_field not in names and title_field == "title":
      title_field = None  # the default title is optional; a named one must exist
    for field in (id_field, text_field, title_field):
      if field and field not in names:
        raise InputError(f"split '{split}': no such feature (features: {', '.join(sorted(names))})",
                         path=str(self.path), field=field)
    self.id_field, self.title_field, self.text_field = id_field, title_field, text_field
    self._index: dict[str, int] = {}
    for i, doc in self._scan():
      if doc.doc_id in self._index:
        raise self._error(i, id_field, f"duplicate document id '{doc.doc_id}' (first at record "
                          f"{self._index[doc.doc_id]})")
      self._index[doc.doc_id] = i
    if not self._index:
      raise InputError(f"split '{split}': corpus has no documents", path=str(self.path))

  @classmethod
  def from_spec(cls, spec: str) -> "TfdsCorpus":
    builder_dir, split, fields = parse_spec(spec)
    if not fields.get("id", "x") or not fields.get("text", "x"):
      raise ConfigError(f"bad TFDS corpus spec {spec!r}: empty id or text field name")
    kw = {f"{k}_field": ((v or None) if k == "title" else v) for k, v in fields.items()}
    return cls(builder_dir, split, **kw)

  def _error(self, index: int, field: str, message: str) -> InputError:
    return InputError(f"split '{self.split}', record {index}: {message}", path=str(self.path), field=field)

  def _str(self, record: dict, index: int, field: str, is_id: bool = False) -> str:
    if field not in record:
      raise self._error(index, field, "missing field")
    value = record[field]
    if hasattr(value, "ndim") and value.ndim == 0:
      value = value.item()  # numpy scalar
    if isinstance(value, bytes):
      try:
        return value.decode("utf-8")
      except UnicodeDecodeError as e:
        raise self._error(index, field, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if isinstance(value, str) or (is_id and isinstance(value, int) and not isinstance(value, bool)):
      return str(value)
    raise self._error(index, field, f"must be text, got {type(value).__name__}")

  def _document(self, record: Any, index: int) -> Document:
    if not isinstance(record, dict):
      raise self._error(index, self.id_field, f"expected a dict of features, got {type(record).__name__}")
    doc_id = self._str(record, index, self.id_field, is_id=True)
    if not doc_id.strip():
      raise self._error(index, self.id_field, "empty id")
    text = self._str(record, index, self.text_field)
    title = self._str(record, index, self.title_field) if self.title_field else ""
    if not text.strip() and not title.strip():
      raise self._error(index, self.text_field, f"document '{doc_id}' has empty text (and no title)")
    return Document(doc_id, title, text)

  def _scan(self) -> Iterator[tuple[int, Document]]:
    for start in range(0, len(self._source), _CHUNK):
      keys = list(range(start, min(start + _CHUNK, len(self._source))))
      for i, record in zip(keys, self._source.__getitems__(keys)):
        yield i, self._document(record, i)

  def __len__(self) -> int:
    return len(self._index)

  def __contains__(self, doc_id: object) -> bool:
    return doc_id in self._index

  @property
  def doc_ids(self) -> list[str]:
    return list(self._index)

  def __iter__(self) -> Iterator[Document]:
    for _, doc in self._scan():
      yield doc

  def __getitem__(self, doc_id: str) -> Document:
    i = self._index[doc_id]
    return self._document(self._source[i], i)

  def get_many(self, doc_ids: list[str]) -> list[Document]:
    """Documents for `doc_ids` (in that order), fetched in one batched read."""
    keys = [self._index[d] for d in doc_ids]
    return [self._document(r, i) for i, r in zip(keys, self._source.__getitems__(keys) if keys else [])]
