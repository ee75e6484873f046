"""How far a trained bi-encoder has pulled its space together, on the whole corpus and the test queries.

  python docs/runs/dpo_qg_full_ce_margin_mse/collapse.py <BEIR dir> NAME=<model>:<embedding store> ...  > collapse.jsonl

<embedding store> is the model's cached corpus embeddings (<run>/cache/embeddings/emb-*, written by the
evaluate stages; its manifest names the model). For each model, over all corpus documents D and the test
queries Q (unit vectors, cosine):

  doc_doc_cos      mean cosine of two distinct documents (|sum|^2 - n) / (n (n - 1))
  query_doc_cos    mean cosine of a test query to a document, over all (query, document)
  relevant_cos     mean cosine of a test query to its judged-relevant documents (grade >= 1)
  relevant_z       the same in units of the query's own spread: mean over queries of
                   (mean relevant cosine - mean cosine to all documents) / std of its cosines to all documents
  top1_top100_gap  mean over queries of cosine(rank 1) - cosine(rank 100)

A collapsed space has doc_doc_cos and query_doc_cos near 1 and a small top1_top100_gap; relevant_z says
whether relevant documents still stand out of the crowd once the crowd is measured on the same scale.
"""
import json
import sys

import numpy as np

from qgjax.data.beir import load_beir
from qgjax.retrieval.dense import DenseEncoder
from qgjax.retrieval.embeddings_store import load_embeddings


def load_store(store):
  ids, emb = load_embeddings(store)
  return emb.astype(np.float64), {d: i for i, d in enumerate(ids)}


def main(data_dir, specs):
  data = load_beir(data_dir, "test")
  qids = sorted(data.queries)
  for spec in specs:
    name, rest = spec.split("=", 1)
    model, store = rest.rsplit(":", 1)
    emb, row = load_store(store)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    n = len(emb)
    total = emb.sum(0)
    doc_doc = (total @ total - n) / (n * (n - 1))
    q = np.asarray(DenseEncoder.load(model).encode_queries([data.queries[i] for i in qids], max_len=64), np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sims = q @ emb.T                                                    # [Q, D]
    rel_cos, rel_z = [], []
    for i, qid in enumerate(qids):
      rel = [row[d] for d, g in data.qrels[qid].items() if g >= 1 and d in row]
      if rel:
        rel_cos.append(sims[i, rel].mean())
        rel_z.append((sims[i, rel].mean() - sims[i].mean()) / sims[i].std())
    ranked = -np.sort(-sims, axis=1)
    print(json.dumps({"model": name, "path": model, "documents": n, "queries": len(qids),
                      "doc_doc_cos": round(float(doc_doc), 4), "query_doc_cos": round(float(sims.mean()), 4),
                      "relevant_cos": round(float(np.mean(rel_cos)), 4), "relevant_z": round(float(np.mean(rel_z)), 3),
                      "top1_top100_gap": round(float((ranked[:, 0] - ranked[:, 99]).mean()), 4)}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
