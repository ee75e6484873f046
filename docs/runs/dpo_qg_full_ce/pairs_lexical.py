"""What the preference pairs prefer beyond their reward: per side (chosen, rejected) the mean BM25 and MiniLM rank of
the source document, the share in BM25's top 100, the longest copied span and the words; and the share of pairs whose
chosen query also has the better BM25 rank. python pairs_lexical.py <pairs.jsonl> -> JSON on stdout."""
import json, os, sys
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from qgjax.data.beir import Corpus
from qgjax.evaluation.query_quality import text_words, longest_copied_span
corpus = Corpus(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "shared", "data", "nfcorpus", "corpus.jsonl"))
P = [json.loads(l) for l in open(sys.argv[1])]
docs = {d.doc_id: text_words(d.contents) for d in corpus.get_many(sorted({p["doc_id"] for p in P}))}
out = {"pairs": len(P)}
for side in ("chosen", "rejected"):
  bm = np.array([-p[f"rewards_{side}"]["bm25_rank"] for p in P]); de = np.array([-p[f"rewards_{side}"]["dense_rank"] for p in P])
  span = [longest_copied_span(text_words(p[side]), docs[p["doc_id"]]) for p in P]
  words = [len(text_words(p[side])) for p in P]
  out[side] = {"mean_bm25_rank": float(bm.mean()), "bm25_top100": float((bm <= 100).mean()), "mean_dense_rank": float(de.mean()),
               "copied_span": float(np.mean(span)), "words": float(np.mean(words))}
out["chosen_better_bm25_rank_share"] = float(np.mean([p["rewards_chosen"]["bm25_rank"] > p["rewards_rejected"]["bm25_rank"] for p in P]))
print(json.dumps(out, indent=1))
