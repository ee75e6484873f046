"""Query-quality metrics of a generation output: diversity and rel+ / rel- / Δrel.

  diversity   per document with >= 2 generated queries, the mean pairwise angular distance
              arccos(cos(e_i, e_j)) / pi of the queries' bi-encoder embeddings (0 = identical
              directions, 0.5 = orthogonal); averaged over documents.
  rel+        mean scorer relevance F(q, d) of the positive queries with their source document.
  rel-        with `label_field` (e.g. ReadQG's relevance r): the same for the negative queries
              (label < positive_threshold). Without labels: every query scored against another
              document of the corpus drawn with a seed (a mismatched baseline).
  Δrel        rel+ - rel-.
  copying     how much each query reads like its source document (`lexical_copying`): words per
              query, share ending in "?", share of query words that occur in the document, the
              longest run of consecutive query words found verbatim in it, and the share of
              queries that repeat an earlier one of the output. A reward that BM25 overlap can
              game (DPO-QG's bm25_rank) drives the middle two up.

The scorer is any `qgjax.retrieval.dense.load_pair_scorer` config: bi_encoder (cosine) or
cross_encoder (logit). Used by `qgjax evaluate --config configs/evaluate.py
--config.reports='("query_quality",)' --config.query_quality.input=runs/x/generate`.
"""

from __future__ import annotations

import collections
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from qgjax.errors import ConfigError, InputError


def angular_distances(emb: np.ndarray) -> np.ndarray:
  """f32[n, D] -> the n(n-1)/2 pairwise angular distances arccos(cos) / pi (f64)."""
  x = np.asarray(emb, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  cos = np.clip(x @ x.T, -1.0, 1.0)
  iu = np.triu_indices(len(x), k=1)
  return np.arccos(cos[iu]) / np.pi


def diversity(groups: Mapping[str, Sequence[int]], emb: np.ndarray) -> dict:
  """groups: doc_id -> row indices into emb. Returns mean (over docs) of mean pairwise angular distance."""
  per_doc = [float(np.mean(angular_distances(emb[list(rows)]))) for rows in groups.values() if len(rows) >= 2]
  return {"diversity": float(np.mean(per_doc)) if per_doc else None, "docs": len(per_doc),
          "diversity_std": float(np.std(per_doc)) if per_doc else None}


def relevance(records: Sequence[Mapping], doc_text: Callable[[str], str], scorer, *, doc_ids: Sequence[str],
              label_field: str = "", positive_threshold: float = 0.5, seed: int = 0) -> dict:
  """rel+, rel- and Δrel of `records` ({doc_id, query, <label_field>?}) under `scorer`."""
  pos = list(range(len(records)))
  if label_field:
    labels = []
    for i, r in enumerate(records):
      if label_field not in r:
        raise InputError(f"record {i} has no label", field=label_field)
      labels.append(float(r[label_field]))
    pos = [i for i, v in enumerate(labels) if v >= positive_threshold]
    neg = [i for i, v in enumerate(labels) if v < positive_threshold]
    s = np.asarray(scorer([records[i]["query"] for i in pos + neg],
                          [doc_text(records[i]["doc_id"]) for i in pos + neg]), np.float64)
    s_pos, s_neg = s[:len(pos)], s[len(pos):]
    how = f"{label_field} >= {positive_threshold} vs below"
  else:
    rng = np.random.default_rng(seed)
    others = []
    for r in records:
      while True:
        d = doc_ids[int(rng.integers(len(doc_ids)))]
        if d != r["doc_id"] or len(doc_ids) == 1:
          break
      others.append(d)
    queries = [r["query"] for r in records]
    s = np.asarray(scorer(queries + queries, [doc_text(r["doc_id"]) for r in records] + [doc_text(d) for d in others]),
                   np.float64)
    s_pos, s_neg = s[:len(records)], s[len(records):]
    how = "source document vs a random other document (seeded)"
  rel_pos = float(np.mean(s_pos)) if len(s_pos) else None
  rel_neg = float(np.mean(s_neg)) if len(s_neg) else None
  return {"rel+": rel_pos, "rel-": rel_neg,
          "delta_rel": (rel_pos - rel_neg) if rel_pos is not None and rel_neg is not None else None,
          "n_pos": int(len(s_pos)), "n_neg": int(len(s_neg)), "rel-_from": how}


_WORD = re.compile(r"[a-z0-9]+")


def text_words(text: str) -> list[str]:
  """Lower-cased alphanumeric words of `text`."""
  return _WORD.findall(text.lower())


def longest_copied_span(query: list[str], doc: list[str]) -> int:
  """Length of the longest run of consecutive query words that occurs in the same order in `doc`
  (longest common substring over words; 0 when no word is shared)."""
  best, prev = 0, [0] * (len(doc) + 1)
  for qw in query:
    cur = [0] * (len(doc) + 1)
    for j, dw in enumerate(doc, 1):
      if qw == dw:
        cur[j] = prev[j - 1] + 1
        best = max(best, cur[j])
    prev = cur
  return best


def lexical_copying(records: Sequence[Mapping], doc_text: Callable[[str], str]) -> dict:
  """Means over records {doc_id, query}: words, question share, in-document word share, longest
  verbatim span (words), and the share of duplicate queries (the same words as an earlier one)."""
  if not records:
    raise InputError("no generated queries to assess")
  words, questions, in_doc, spans, seen, dups = [], 0, [], [], set(), 0
  for r in records:
    q, d = text_words(r["query"]), text_words(doc_text(r["doc_id"]))
    vocab = set(d)
    words.append(len(q))
    questions += r["query"].rstrip().endswith("?")
    in_doc.append(sum(w in vocab for w in q) / len(q) if q else 0.0)
    spans.append(longest_copied_span(q, d))
    key = " ".join(q)
    dups += key in seen
    seen.add(key)
  n = len(records)
  return {"words": float(np.mean(words)), "question_share": questions / n, "in_document_word_share": float(np.mean(in_doc)),
          "longest_copied_span": float(np.mean(spans)), "duplicate_share": dups / n}


def query_quality(records: Sequence[Mapping], corpus, *, encoder, scorer, label_field: str = "",
                  positive_threshold: float = 0.5, seed: int = 0, batch_size: int = 64) -> dict:
  """Both metrics for generated records {doc_id, query, ...} over a `Corpus`."""
  if not records:
    raise InputError("no generated queries to assess")
  emb = encoder.encode([r["query"] for r in records], batch_size=batch_size, max_len=64)
  groups: dict[str, list[int]] = collections.defaultdict(list)
  for i, r in enumerate(records):
    groups[r["doc_id"]].append(i)
  out = {"queries": len(records), "docs": len(groups)}
  out.update(diversity(groups, emb))
  texts: dict[str, str] = {}

  def doc_text(d: str) -> str:
    if d not in texts:
      texts[d] = corpus[d].contents
    return texts[d]

  out.update(relevance(records, doc_text, scorer, doc_ids=corpus.doc_ids, label_field=label_field,
                       positive_threshold=positive_threshold, seed=seed))
  out["copying"] = lexical_copying(records, doc_text)
  return out


def report(config: Any, data, runs) -> dict:
  """`qgjax evaluate` report hook: reads `config.query_quality.input` (a generation output)."""
  from qgjax.data.records import iter_records
  from qgjax.retrieval.dense import DenseEncoder, load_pair_scorer

  del runs
  cfg = config.query_quality
  if not cfg.input:
    raise ConfigError("the query_quality report needs config.query_quality.input (a generation output)")
  records = []
  for path, line, rec in iter_records(cfg.input):
    if "doc_id" not in rec or not isinstance(rec.get("query"), str):
      raise InputError("need doc_id and query", path=path, line=line, field="query")
    if str(rec["doc_id"]) not in data.corpus:
      raise InputError(f"document '{rec['doc_id']}' is not in the corpus", path=path, line=line, field="doc_id")
    records.append({**rec, "doc_id": str(rec["doc_id"])})
    if cfg.max_records and len(records) >= int(cfg.max_records):
      break
  encoder = DenseEncoder.load(cfg.encoder)
  scorer = load_pair_scorer(cfg.scorer.to_dict(), encoder)
  if scorer is None:
    raise ConfigError("query_quality.scorer.kind must be bi_encoder or cross_encoder")
  out = query_quality(records, data.corpus, encoder=encoder, scorer=scorer, label_field=cfg.label_field,
                      positive_threshold=float(cfg.positive_threshold), seed=int(cfg.seed))
  out["scorer"] = f"{cfg.scorer.kind}:{cfg.scorer.model or cfg.encoder}"
  return out
