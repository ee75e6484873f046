"""Small training files derived from the shipped demo collection (qgjax/data/demo), for the tiny configs.

Each judged (query, document) pair of the demo qrels gives:
  sft.jsonl     {"doc_id", "query"}                              the judged query as the target
  pairs.jsonl   {"doc_id", "chosen", "rejected", "reward_chosen": grade, "reward_rejected": 0}
                rejected = a query judged for a different document (off-topic for this one)
  readqg.jsonl  {"doc_id", "document", "positive", "negative", "r_positive": 1.0, "r_negative": 0.0}

  python -m qgjax.train.demo     # rewrites qgjax/train/demo/*.jsonl (tests check they are current)
"""

from __future__ import annotations

import json
import os

DEMO_BEIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "demo")
DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo")


def demo_records() -> dict[str, list[dict]]:
  from qgjax.data.beir import load_beir

  data = load_beir(DEMO_BEIR, "test")
  qids = sorted(data.qrels)
  sft, pairs, readqg = [], [], []
  for i, qid in enumerate(qids):
    for doc_id, grade in sorted(data.qrels[qid].items()):
      if grade <= 0:
        continue
      # the next query (cyclically) that is not judged relevant to this document
      other = next(q for q in qids[i + 1:] + qids[:i] if doc_id not in data.qrels[q])
      query, negative = data.queries[qid], data.queries[other]
      sft.append({"doc_id": doc_id, "query": query})
      pairs.append({"doc_id": doc_id, "chosen": query, "rejected": negative, "reward_chosen": float(grade),
                    "reward_rejected": 0.0})
      readqg.append({"doc_id": doc_id, "document": data.corpus[doc_id].contents, "positive": query,
                     "negative": negative, "r_positive": 1.0, "r_negative": 0.0})
  return {"sft": sft, "pairs": pairs, "readqg": readqg}


def demo_path(name: str) -> str:
  """Path of a shipped demo file: "sft", "pairs" or "readqg"."""
  return os.path.join(DEMO_DIR, f"{name}.jsonl")


def write_demo_files(out_dir: str = DEMO_DIR) -> dict[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for name, records in demo_records().items():
    paths[name] = os.path.join(out_dir, f"{name}.jsonl")
    with open(paths[name], "w", encoding="utf-8") as f:
      for r in records:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
  return paths


if __name__ == "__main__":
  for name, path in write_demo_files().items():
    print(name, path)
