"""Streaming readers for the BEIR layout.

```
<data_dir>/corpus.jsonl          {"_id": str, "title": str (optional), "text": str} per line
<data_dir>/queries.jsonl         {"_id": str, "text": str} per line (or queries_<split>.jsonl)
<data_dir>/qrels/<split>.tsv     header `query-id<TAB>corpus-id<TAB>score`, integer grades
```

The corpus is never copied into memory: `Corpus` scans the file once (validating every line)
and keeps only a doc-id -> byte-offset table, iterates documents lazily and fetches one by id
with a seek. Queries and qrels are small and are loaded into dicts. Bad input raises
`InputError` naming the file, the 1-based line and the field; qrels that point to unknown
documents or queries only warn (real BEIR data has a few) and are kept. `data_dir` may be a gs://
URL (qgjax.data.storage): the same reads, through gcsfs' seekable files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import warnings
from typing import Iterator

from qgjax.data import storage
from qgjax.errors import InputError

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class Document:
  doc_id: str
  title: str
  text: str

  @property
  def contents(self) -> str:
    """Title and text joined by a space (what BM25 indexes, as Pyserini's BEIR 'flat')."""
    return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclasses.dataclass(frozen=True)
class Query:
  query_id: str
  text: str


class QrelsWarning(UserWarning):
  """Qrels that name documents or queries absent from the corpus / query file."""


def _decode_line(raw: bytes, path: PathLike, line_no: int) -> dict | None:
  """One JSONL line -> dict; None for a blank line. Raises InputError on bad UTF-8/JSON."""
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise InputError(f"not valid UTF-8 ({e.reason} at byte {e.start})", path=str(path),
                     line=line_no) from None
  if not text.strip():
    return None
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", path=str(path),
                     line=line_no) from None
  if not isinstance(obj, dict):
    raise InputError(f"expected a JSON object, got {type(obj).__name__}", path=str(path),
                     line=line_no)
  return obj


def _id_field(obj: dict, path: PathLike, line_no: int) -> str:
  if "_id" not in obj:
    raise InputError("missing id", path=str(path), line=line_no, field="_id")
  value = obj["_id"]
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise InputError(f"id must be a string, got {type(value).__name__}", path=str(path),
                     line=line_no, field="_id")
  value = str(value)
  if not value.strip():
    raise InputError("empty id", path=str(path), line=line_no, field="_id")
  return value


def _str_field(obj: dict, name: str, path: PathLike, line_no: int, required: bool) -> str:
  if name not in obj or obj[name] is None:
    if required:
      raise InputError("missing field", path=str(path), line=line_no, field=name)
    return ""
  value = obj[name]
  if not isinstance(value, str):
    raise InputError(f"must be a string, got {type(value).__name__}", path=str(path),
                     line=line_no, field=name)
  return value


def _parse_document(obj: dict, path: PathLike, line_no: int) -> Document:
  doc_id = _id_field(obj, path, line_no)
  text = _str_field(obj, "text", path, line_no, required=True)
  title = _str_field(obj, "title", path, line_no, required=False)
  if not text.strip() and not title.strip():
    raise InputError(f"document '{doc_id}' has empty text (and no title)", path=str(path),
                     line=line_no, field="text")
  return Document(doc_id, title, text)


def _parse_query(obj: dict, path: PathLike, line_no: int) -> Query:
  query_id = _id_field(obj, path, line_no)
  text = _str_field(obj, "text", path, line_no, required=True)
  if not text.strip():
    raise InputError(f"query '{query_id}' has empty text", path=str(path), line=line_no,
                     field="text")
  return Query(query_id, text)


def _iter_raw_lines(path: PathLike) -> Iterator[tuple[int, int, bytes]]:
  """Yields (1-based line number, byte offset, raw line) of a file, read in binary."""
  file = storage.as_path(path)
  if not file.is_file():
    raise InputError("file not found", path=str(path))
  offset = 0
  with file.open("rb") as f:
    for line_no, raw in enumerate(f, start=1):
      yield line_no, offset, raw
      offset += len(raw)


def _iter_unique(path: PathLike, parse, id_of, kind: str) -> Iterator:
  """Streams parse(obj) for each non-blank line of a JSONL file, rejecting a repeated `_id`."""
  seen: set[str] = set()
  for line_no, _, raw in _iter_raw_lines(path):
    obj = _decode_line(raw, path, line_no)
    if obj is None:
      continue
    item = parse(obj, path, line_no)
    if id_of(item) in seen:
      raise InputError(f"duplicate {kind} id '{id_of(item)}'", path=str(path), line=line_no, field="_id")
    seen.add(id_of(item))
    yield item


def iter_corpus(path: PathLike) -> Iterator[Document]:
  """Streams the documents of a corpus.jsonl, validating each line and rejecting duplicate ids."""
  return _iter_unique(path, _parse_document, lambda doc: doc.doc_id, "document")


def iter_queries(path: PathLike) -> Iterator[Query]:
  """Streams the queries of a queries*.jsonl, validating each line and rejecting duplicate ids."""
  return _iter_unique(path, _parse_query, lambda query: query.query_id, "query")


def load_queries(path: PathLike) -> dict[str, str]:
  """queries*.jsonl -> {query_id: text}, in file order."""
  return {q.query_id: q.text for q in iter_queries(path)}


class Corpus:
  """A corpus.jsonl read lazily: one validating scan builds a doc-id -> byte-offset table.

  `for doc in corpus` streams `Document`s in file order; `corpus[doc_id]` seeks to one;
  `len(corpus)`, `doc_id in corpus` and `corpus.doc_ids` (file order) come from the table.
  """

  def __init__(self, path: PathLike):
    self.path = storage.as_path(path)
    self._offsets: dict[str, int] = {}
    self._lines: dict[str, int] = {}
    for line_no, offset, raw in _iter_raw_lines(self.path):
      obj = _decode_line(raw, self.path, line_no)
      if obj is None:
        continue
      doc = _parse_document(obj, self.path, line_no)
      if doc.doc_id in self._offsets:
        raise InputError(f"duplicate document id '{doc.doc_id}' (first on line "
                         f"{self._lines[doc.doc_id]})", path=str(self.path), line=line_no,
                         field="_id")
      self._offsets[doc.doc_id] = offset
      self._lines[doc.doc_id] = line_no
    if not self._offsets:
      raise InputError("corpus has no documents", path=str(self.path))

  def __len__(self) -> int:
    return len(self._offsets)

  def __contains__(self, doc_id: object) -> bool:
    return doc_id in self._offsets

  @property
  def doc_ids(self) -> list[str]:
    return list(self._offsets)

  def __iter__(self) -> Iterator[Document]:
    for line_no, _, raw in _iter_raw_lines(self.path):
      obj = _decode_line(raw, self.path, line_no)
      if obj is not None:
        yield _parse_document(obj, self.path, line_no)

  def __getitem__(self, doc_id: str) -> Document:
    if doc_id not in self._offsets:
      raise KeyError(doc_id)
    with self.path.open("rb") as f:
      f.seek(self._offsets[doc_id])
      raw = f.readline()
    obj = _decode_line(raw, self.path, self._lines[doc_id])
    return _parse_document(obj, self.path, self._lines[doc_id])

  def get_many(self, doc_ids: list[str]) -> list[Document]:
    """Documents for `doc_ids` (in that order), reading the file once in offset order."""
    order = sorted(range(len(doc_ids)), key=lambda i: self._offsets[doc_ids[i]])
    out: list[Document | None] = [None] * len(doc_ids)
    with self.path.open("rb") as f:
      for i in order:
        f.seek(self._offsets[doc_ids[i]])
        line_no = self._lines[doc_ids[i]]
        out[i] = _parse_document(_decode_line(f.readline(), self.path, line_no), self.path, line_no)
    return out  # type: ignore[return-value]


def load_qrels(path: PathLike, *, doc_ids=None, query_ids=None,
               min_grade: int | None = None) -> dict[str, dict[str, int]]:
  """qrels/<split>.tsv -> {query_id: {doc_id: grade}}.

  The `query-id corpus-id score` header is optional. Judgements naming ids absent from
  `doc_ids` / `query_ids` (any container; skipped when None) are kept but reported in one
  `QrelsWarning` with their count and a few examples. `min_grade` drops lower grades.
  """
  qrels: dict[str, dict[str, int]] = {}
  unknown_docs: list[str] = []
  unknown_queries: list[str] = []
  for line_no, _, raw in _iter_raw_lines(path):
    try:
      text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
      raise InputError(f"not valid UTF-8 ({e.reason})", path=str(path), line=line_no) from None
    if not text.strip():
      continue
    cols = text.split("\t")
    if line_no == 1 and cols[0].strip().lower() in ("query-id", "query_id", "qid"):
      continue
    if len(cols) != 3:
      raise InputError(f"expected 3 tab-separated columns (query-id, corpus-id, score), got "
                       f"{len(cols)}", path=str(path), line=line_no)
    qid, did, grade_text = (c.strip() for c in cols)
    if not qid:
      raise InputError("empty query id", path=str(path), line=line_no, field="query-id")
    if not did:
      raise InputError("empty corpus id", path=str(path), line=line_no, field="corpus-id")
    try:
      grade = int(grade_text)
    except ValueError:
      try:
        as_float = float(grade_text)
      except ValueError:
        as_float = None
      if as_float is None or not as_float.is_integer():
        raise InputError(f"score must be an integer grade, got {grade_text!r}", path=str(path),
                         line=line_no, field="score") from None
      grade = int(as_float)
    judged = qrels.setdefault(qid, {})
    if did in judged and judged[did] != grade:
      raise InputError(f"conflicting grades for ({qid}, {did}): {judged[did]} and {grade}",
                       path=str(path), line=line_no, field="score")
    if min_grade is not None and grade < min_grade:
      continue
    judged[did] = grade
    if doc_ids is not None and did not in doc_ids:
      unknown_docs.append(did)
    if query_ids is not None and qid not in query_ids:
      unknown_queries.append(qid)
  for kind, missing in (("documents", unknown_docs), ("queries", unknown_queries)):
    if missing:
      uniq = sorted(set(missing))
      warnings.warn(f"{path}: {len(missing)} judgements name {len(uniq)} {kind} not in the "
                    f"{'corpus' if kind == 'documents' else 'query file'} (kept), e.g. "
                    f"{', '.join(uniq[:5])}", QrelsWarning, stacklevel=2)
  return {q: d for q, d in qrels.items() if d}


def queries_path(data_dir: PathLike, split: str | None = None) -> pathlib.Path:
  """`queries_<split>.jsonl` when it exists, else `queries.jsonl`."""
  root = storage.as_path(data_dir)
  if split:
    candidate = root / f"queries_{split}.jsonl"
    if candidate.is_file():
      return candidate
  return root / "queries.jsonl"


@dataclasses.dataclass
class BeirData:
  """A BEIR directory: lazy corpus, queries that have judgements in `split`, and its qrels."""
  root: pathlib.Path
  corpus: Corpus
  queries: dict[str, str]
  qrels: dict[str, dict[str, int]]


def load_beir(data_dir: PathLike, split: str = "test", *, only_judged: bool = True) -> BeirData:
  """Opens `data_dir` in BEIR layout. `only_judged` keeps only queries with qrels in `split`."""
  root = storage.as_path(data_dir)
  if not root.is_dir():
    raise InputError("BEIR data directory not found", path=str(root))
  corpus = Corpus(root / "corpus.jsonl")
  queries = load_queries(queries_path(root, split))
  qrels_file = root / "qrels" / f"{split}.tsv"
  if not qrels_file.is_file():
    available = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
    raise InputError(f"no qrels for split '{split}' (available: {', '.join(available) or 'none'})",
                     path=str(qrels_file))
  qrels = load_qrels(qrels_file, doc_ids=corpus, query_ids=queries)
  if only_judged:
    queries = {q: t for q, t in queries.items() if q in qrels}
  return BeirData(root, corpus, queries, qrels)
