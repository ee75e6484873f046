"""How the cross-encoder reward ranks a document's pool samples against the BM25 rank reward and against
copying: per document, Spearman rho of cross_encoder vs bm25_rank and vs the longest copied span (words),
averaged; and which sample each reward would choose (its span, length, in-document words).
python reward_agreement.py <scored stage dir> -> prints JSON and writes <dir>/../reward_agreement.json"""
import json, sys, collections
import numpy as np
from scipy.stats import spearmanr
sys.path.insert(0, "/work/main")
from qgjax.data.beir import Corpus
from qgjax.data.records import iter_records
from qgjax.evaluation.query_quality import text_words, longest_copied_span

stage = sys.argv[1]
corpus = Corpus("/work/shared/data/nfcorpus/corpus.jsonl")
by_doc = collections.defaultdict(list)
for _, _, r in iter_records(stage):
  by_doc[r["doc_id"]].append(r)
rho_bm25, rho_span, chosen = [], [], collections.defaultdict(list)
for d, recs in by_doc.items():
  doc = text_words(corpus.get_many([d])[0].contents)
  span = np.array([longest_copied_span(text_words(r["query"]), doc) for r in recs], float)
  words = np.array([len(text_words(r["query"])) for r in recs], float)
  ce = np.array([r["rewards"]["cross_encoder"] for r in recs])
  bm = np.array([r["rewards"]["bm25_rank"] for r in recs])
  if len(set(ce)) > 1 and len(set(bm)) > 1:
    rho_bm25.append(spearmanr(ce, bm)[0])
  if len(set(ce)) > 1 and len(set(span)) > 1:
    rho_span.append(spearmanr(ce, span)[0])
  for name, v in (("cross_encoder", ce), ("bm25_rank", bm)):
    i = int(np.argmax(v))
    chosen[name].append((span[i], words[i]))
  chosen["all samples"].extend(zip(span, words))
out = {"documents": len(by_doc), "spearman_ce_vs_bm25_rank": float(np.nanmean(rho_bm25)),
       "spearman_ce_vs_copied_span": float(np.nanmean(rho_span)),
       "best_sample": {k: {"copied_span_words": float(np.mean([s for s, _ in v])),
                           "query_words": float(np.mean([w for _, w in v]))} for k, v in chosen.items()}}
print(json.dumps(out, indent=1))
json.dump(out, open(stage.rstrip("/").rsplit("/", 1)[0] + "/reward_agreement.json", "w"), indent=1)
