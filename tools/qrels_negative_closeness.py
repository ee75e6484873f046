"""Are a collection's BM25 hard negatives really negatives? How close they are to the query compared
with the judged documents, by a bi-encoder's cosine.

For `--examples` training examples drawn (seeded) from `qgjax.retrieval.qrels_examples` (a judged pair
with one BM25 negative from the query's `--depth` best unjudged documents, as the cross-encoder's
qrels mode draws them) and one random document each, prints the mean cosine of the query with the
judged document, the BM25 negative and the random document, and how often the judged one wins. A
judged document that loses to its BM25 negative about as often as it wins means the negatives are
about as relevant as the positives (loose judgements), and a re-ranker trained to separate them
learns little.

  python tools/qrels_negative_closeness.py --data ../shared/data/nfcorpus --split train
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qgjax.data.beir import Corpus  # noqa: E402
from qgjax.models import bert  # noqa: E402
from qgjax.models.text_encoding import encode_texts  # noqa: E402
from qgjax.retrieval.qrels_examples import qrels_examples  # noqa: E402


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--data", required=True, help="BEIR dir with corpus.jsonl, queries and qrels/<split>.tsv")
  ap.add_argument("--split", default="train")
  ap.add_argument("--depth", type=int, default=30, help="BM25 depth the negative is drawn from")
  ap.add_argument("--examples", type=int, default=300)
  ap.add_argument("--encoder", default="all-minilm-l6-v2")
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args(argv)

  examples = [e for e in qrels_examples(a.data, a.split, negatives=1, depth=a.depth, seed=a.seed) if e.negative_ids]
  rng = random.Random(a.seed)
  sample = rng.sample(examples, min(a.examples, len(examples)))
  corpus = Corpus(os.path.join(a.data, "corpus.jsonl"))
  ids = corpus.doc_ids
  random_docs = [rng.choice(ids) for _ in sample]
  module, params, tok, _ = bert.load_bi_encoder(a.encoder)

  def embed_docs(doc_ids):
    return encode_texts(module, params, tok, [d.contents for d in corpus.get_many(doc_ids)], max_len=256)

  q = encode_texts(module, params, tok, [e.query for e in sample], max_len=64)
  cos = {name: np.sum(q * embed_docs(ds), axis=1) for name, ds in (
      ("judged", [e.doc_id for e in sample]), ("bm25_negative", [e.negative_ids[0] for e in sample]),
      ("random", random_docs))}
  print(json.dumps({
      "examples": len(sample), "depth": a.depth, "encoder": a.encoder,
      "mean_cosine": {k: round(float(v.mean()), 4) for k, v in cos.items()},
      "judged_beats_bm25_negative": round(float(np.mean(cos["judged"] > cos["bm25_negative"])), 4),
      "judged_beats_random": round(float(np.mean(cos["judged"] > cos["random"])), 4)}, indent=1))


if __name__ == "__main__":
  main()
