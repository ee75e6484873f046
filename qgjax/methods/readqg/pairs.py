r"""ReadQG's document-centric training pairs from a collection with graded judgements.

  qgjax pipeline --config configs/readqg_recipe.py:tiny      # runs this as its `pairs` stage

For every document judged by at least `min_queries` (default 2m) queries of `split`: the grades
are min-max rescaled per document to [0, 1]; the m highest become positives, the m lowest
negatives (ties by a seeded hash of the query id), the i-th positive paired with the i-th negative.
A pair is kept only when its positive's grade is strictly above its negative's, so a document with
fewer than m queries above its lowest grade gives fewer than m pairs. Documents whose judged
queries all share one grade (nothing to contrast) are dropped unless keep_flat (then all m pairs
are kept, every r 1.0). Outputs in `workdir`:
  pairs.jsonl     {doc_id, positive: [m queries], negative: [m], positive_score, negative_score}
                  (what `qgjax train --config configs/readqg.py` reads; scores already in [0, 1])
  ce_pairs.jsonl  {doc_id, chosen, rejected}: the i-th positive with the i-th negative (a
                  cross-encoder trained on the collection's own queries, the supervised reference)
  summary.json    counts of documents kept and dropped
On P processes process 0 alone writes them (no model); the others wait at the pipeline's barrier.
"""

from __future__ import annotations

import json

from qgjax.config import require
from qgjax.data import storage
from qgjax.data.beir import Corpus, load_qrels, load_queries, queries_path
from qgjax.data.safe_files import ensure_dir, write_json_atomic
from qgjax.errors import ConfigError, InputError
from qgjax.methods.readqg.objective import rescale
from qgjax.sampling.keys import id_hash


def document_pairs(judged: dict[str, int], m: int, seed: int, strict: bool = True
                   ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
  """{query_id: grade} of one document -> (top-m positives, bottom-m negatives) as (qid, rescaled).

  The i-th positive goes with the i-th negative; strict keeps only the pairs whose positive is
  graded above its negative (positives' grades fall and negatives' rise with i, so a prefix).
  """
  qids = sorted(judged, key=lambda q: (-judged[q], id_hash(f"{seed}:{q}"), q))
  scores = dict(zip(qids, rescale([float(judged[q]) for q in qids])))
  pos, neg = qids[:m], list(reversed(qids[-m:]))
  k = sum(judged[p] > judged[n] for p, n in zip(pos, neg)) if strict else m
  return [(q, scores[q]) for q in pos[:k]], [(q, scores[q]) for q in neg[:k]]


def run(config) -> dict:
  from qgjax.parallel.distributed import is_main_process

  require(config, "data_dir", "workdir", "split", "m")
  if not is_main_process():
    return {"pairs": str(storage.as_path(config.workdir) / "pairs.jsonl"), "written_by": "process 0"}
  m = int(config.m)
  need = int(config.min_queries) or 2 * m
  if m < 1 or need < 2 * m:
    raise ConfigError(f"readqg pairs: need m >= 1 and min_queries >= 2m; got m={m}, min_queries={need}")
  root = storage.as_path(config.data_dir)
  corpus = Corpus(root / "corpus.jsonl")
  queries = load_queries(queries_path(root, config.split))
  qrels = load_qrels(root / "qrels" / f"{config.split}.tsv", doc_ids=corpus, query_ids=queries)
  by_doc: dict[str, dict[str, int]] = {}
  for qid, docs in qrels.items():
    if qid not in queries:
      continue
    for doc_id, grade in docs.items():
      if doc_id in corpus:
        by_doc.setdefault(doc_id, {})[qid] = int(grade)
  pairs, ce, few, flat, tied = [], [], 0, 0, 0
  for doc_id in sorted(by_doc):
    judged = by_doc[doc_id]
    if len(judged) < need:
      few += 1
      continue
    one_grade = len(set(judged.values())) == 1
    if one_grade and not config.keep_flat:
      flat += 1
      continue
    pos, neg = document_pairs(judged, m, int(config.seed), strict=not one_grade)
    tied += m - len(pos)
    pairs.append({"doc_id": doc_id, "positive": [queries[q] for q, _ in pos],
                  "negative": [queries[q] for q, _ in neg], "positive_score": [s for _, s in pos],
                  "negative_score": [s for _, s in neg]})
    ce += [{"doc_id": doc_id, "chosen": queries[p], "rejected": queries[n]} for (p, _), (n, _) in zip(pos, neg)]
  if not pairs:
    raise InputError(f"no document has {need} or more judged queries with different grades in "
                     f"qrels/{config.split}.tsv ({few} too few, {flat} all one grade); lower m or use a "
                     "collection with more judgements per document", path=str(root))
  out = ensure_dir(config.workdir, what="readqg pairs workdir")   # a gs:// URL: its epath.Path
  for name, records in (("ce_pairs.jsonl", ce), ("pairs.jsonl", pairs)):  # pairs.jsonl last: the marker
    storage.write_bytes_atomic(out / name,   # temp + rename; gs://: one upload
                               "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
  summary = {"documents": len(pairs), "rows": len(ce), "dropped_few_queries": few, "dropped_one_grade": flat,
             "dropped_tied_pairs": tied,
             "judged_documents": len(by_doc), "m": m, "min_queries": need}
  write_json_atomic(out / "summary.json", summary, sort_keys=False)
  return summary
