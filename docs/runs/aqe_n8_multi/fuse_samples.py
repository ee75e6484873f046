"""Fusing the per-sample BM25 runs instead of joining the samples into one expansion (a dev-split check).

  python docs/runs/aqe_n8_multi/fuse_samples.py /work/runs/aqe_n8/split/data dev \
      /work/runs/aqe_n8_multi/sampled_aligned_dev 1,2,4,8

For each query's 8 sampled expansions, BM25 over query x k + that one expansion (depth 1000), then the 8 runs
fused per query by reciprocal rank (RRF, constant 60) and by CombSUM of the BM25 scores; prints nDCG@10 of
each fusion per k and of the query alone. Compare with the joined expansion's dev curve in results.md.
"""
import collections
import pathlib
import sys

from qgjax.data.beir import Corpus, load_qrels, load_queries, queries_path
from qgjax.evaluation.ir_metrics import evaluate
from qgjax.methods.aqe.repeats import sampled_expansions
from qgjax.retrieval.bm25 import default_bm25_config, open_bm25_from_config
from qgjax.rewards.base import aqe_text


def main(data_dir: str, split: str, source: str, ks: str) -> None:
  data = pathlib.Path(data_dir)
  corpus = Corpus(data / "corpus.jsonl")
  qrels = load_qrels(data / "qrels" / f"{split}.tsv", doc_ids=corpus, min_grade=1)
  samples = sampled_expansions(source, 8)
  texts = load_queries(queries_path(data, split))
  qids = [q for q in samples if q in qrels]
  judged = {q: qrels[q] for q in qids}
  bm25 = open_bm25_from_config(corpus, default_bm25_config())
  alone = bm25.search([texts[q] for q in qids], k=1000).as_run(qids)
  print(f"query alone: nDCG@10 {evaluate(alone, judged, ['nDCG@10'])['nDCG@10']:.4f} over {len(qids)} queries")
  for k in (int(x) for x in ks.split(",")):
    keys = [f"{q}\t{i}" for q in qids for i, _, _ in samples[q]]
    run = bm25.search([aqe_text(texts[q], t, k) for q in qids for _, t, _ in samples[q]], k=1000).as_run(keys)
    rrf = collections.defaultdict(lambda: collections.defaultdict(float))
    combsum = collections.defaultdict(lambda: collections.defaultdict(float))
    for key, docs in run.items():
      q = key.split("\t")[0]
      for rank, (d, score) in enumerate(sorted(docs.items(), key=lambda kv: -kv[1]), start=1):
        rrf[q][d] += 1.0 / (60 + rank)
        combsum[q][d] += score
    print(f"k = {k}: RRF {evaluate(rrf, judged, ['nDCG@10'])['nDCG@10']:.4f}, "
          f"CombSUM {evaluate(combsum, judged, ['nDCG@10'])['nDCG@10']:.4f}")


if __name__ == "__main__":
  main(*sys.argv[1:5])
