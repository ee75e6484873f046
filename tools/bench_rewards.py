"""Score-stage throughput of the rewards at two corpus sizes: bm25_rank, dense_rank, cross_encoder.

  python tools/bench_rewards.py                       # NFCorpus test queries; full corpus and a 1/4 subset
  python tools/bench_rewards.py --fraction 0.25 --repeats 3 --batch-size 64 --doc-max-len 64

Records: the NFCorpus test queries (323), each with one target document (its highest-graded
judged document, smallest id among equals): generated-query style {doc_id, query}. Sizes: the
full corpus (3,633 documents) and a random subset of --fraction of it that keeps every target.
For each size the reward's scorer (the object `qgjax score` builds) runs over all records in
score-job batches (--batch-size); queries/s is the best of --repeats passes after a warm-up pass
(which compiles). Building the index or corpus embeddings is timed apart (`build_s`): the score
job does it once per run. Beside each rank reward the search itself is timed on the same corpus
and batches: BM25 top-100 (bm25s scores + top-k per query) and dense exact top-100 (query
encoding + jitted matmul + top_k, `ExactIndex`), so `reward_over_search` shows whether the
reward's cost grows with N beyond the search. Query encoding (MiniLM) dominates the dense
figures and does not depend on N, so the dense rank and search are also timed on precomputed
query embeddings (`*_given_embeddings`): the stage that does depend on N. Within a size, the
timed functions take turns in each round, so load from other jobs hits them alike. `bm25_rank_before` is the former ranking (each
query's full N-document score vector, `rank_from_scores` per target), checked equal to the new one.

Models: dense_rank uses all-MiniLM-L6-v2 (offline package); the full corpus is encoded once at
--doc-max-len tokens (cached under --cache) and the subset's index takes its rows; queries are
encoded per batch at the score config's query_max_len (64), as in the score job. cross_encoder:
no pretrained cross-encoder ships offline, so a tiny random BERT cross-encoder (2 layers, 32 wide,
MiniLM's tokenizer; as the tests build one) stands in; its cost per query does not involve N.
Writes tools/results/bench_rewards.json (raw figures, ratio = small / large throughput per
reward, settings, machine, versions, load averages, command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))

from bench_common import machine  # noqa: E402

REWARDS = ("bm25_rank", "dense_rank", "cross_encoder")


def versions() -> dict:
  from importlib.metadata import version

  import jax
  out = {"jax": jax.__version__, "numpy": np.__version__}
  for pkg in ("bm25s", "flax", "transformers"):
    try:
      out[pkg] = version(pkg)
    except Exception:  # noqa: BLE001
      out[pkg] = "?"
  return out


def records(data_dir: str) -> tuple[list[str], list[list[str]]]:
  """(query texts, [[target doc id]]) of the test queries: each query's highest-graded judged doc."""
  from qgjax.data.beir import load_beir
  data = load_beir(data_dir, "test")
  texts, targets = [], []
  for qid, text in data.queries.items():
    judged = sorted((-g, d) for d, g in data.qrels[qid].items() if g > 0)
    if judged:
      texts.append(text)
      targets.append([judged[0][1]])
  return texts, targets


def write_subset(corpus_path: str, keep: set[str], out_dir: str) -> str:
  """corpus.jsonl lines whose _id is in `keep` (corpus order) -> out_dir/corpus.jsonl."""
  out = os.path.join(out_dir, "corpus.jsonl")
  with open(corpus_path, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
    for line in src:
      if line.strip() and json.loads(line)["_id"] in keep:
        dst.write(line)
  return out


def tiny_cross_encoder(out_dir: str) -> str:
  from qgjax.models import bert
  tok = bert.load_bi_encoder("all-minilm-l6-v2")[2]
  cfg = bert.EncoderConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                           max_position_embeddings=512, num_labels=1)
  module = bert.CrossEncoder(cfg)
  return bert.save_cross_encoder_hf(bert.init_params(module, seed=0), module, tok, out_dir)


def passes_per_second(fns: dict, batches, n: int, repeats: int) -> dict:
  """{name: records/s} of each fn over every batch: one warm-up pass (compiles), then `repeats`
  rounds in which each fn makes one timed pass in turn (so load drift hits all alike); best pass."""
  for fn in fns.values():
    for b in batches:
      fn(b)
  best = {k: float("inf") for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t = time.perf_counter()
      for b in batches:
        fn(b)
      best[k] = min(best[k], time.perf_counter() - t)
  return {k: n / v for k, v in best.items()}


def bench_size(name, corpus, emb_rows, full_emb, texts, targets, config, encoder, ce_model, args, log) -> dict:
  from qgjax.retrieval.bm25 import open_bm25_from_config, rank_from_scores
  from qgjax.retrieval.exact import ExactIndex
  from qgjax.rewards.base import RewardBatch
  from qgjax.rewards.bm25_rank import BM25RankScorer
  from qgjax.rewards.cross_encoder import CrossEncoderScorer
  from qgjax.rewards.dense import DenseIndex, DenseScorer

  bs, depth = int(args.batch_size), int(config.depth)
  batches = [RewardBatch(texts[s:s + bs], targets[s:s + bs], [{}] * len(texts[s:s + bs]))
             for s in range(0, len(texts), bs)]
  n = len(texts)
  out = {"docs": len(corpus), "build_s": {}, "qps": {}}

  t = time.perf_counter()
  retriever = open_bm25_from_config(corpus, config.bm25)
  out["build_s"]["bm25_index"] = round(time.perf_counter() - t, 3)
  bm25 = BM25RankScorer(retriever, depth, config.rank_reward)

  def before(batch):
    return np.array([min(rank_from_scores(retriever._scores(q), retriever._index_of[d], depth, retriever._tie_rank)
                         for d in t) for q, t in zip(batch.texts, batch.targets)], np.int32)

  for b in batches:
    np.testing.assert_array_equal(bm25(b).ranks["bm25"], before(b))
  out["qps"].update(passes_per_second({"bm25_rank": bm25, "bm25_rank_before": before,
                                       "bm25_search_top100": lambda b: retriever.search(b.texts, k=100)},
                                      batches, n, args.repeats))
  log(f"[{name}] bm25: {out['qps']['bm25_rank']:.1f} q/s (before {out['qps']['bm25_rank_before']:.1f}, "
      f"search {out['qps']['bm25_search_top100']:.1f})")

  emb = full_emb[emb_rows]
  t = time.perf_counter()
  index = DenseIndex(emb, list(corpus.doc_ids), chunk=int(config.dense.chunk), row_bucket=bs)
  exact = ExactIndex(emb)
  out["build_s"]["dense_index"] = round(time.perf_counter() - t, 3)
  dense = DenseScorer(encoder, index, config.dense, depth, config.rank_reward)
  qlen = min(int(config.dense.max_len), int(config.dense.query_max_len))

  def encode(batch):
    return encoder.encode_queries(batch.texts, batch_size=int(config.dense.batch_size), max_len=qlen)

  q_emb = {id(b): encode(b) for b in batches}   # the N-dependent stage alone, on fixed query embeddings
  out["qps"].update(passes_per_second({
      "dense_rank": dense, "dense_search_top100": lambda b: exact.search(encode(b), 100),
      "dense_query_encoding": encode,
      "dense_rank_given_embeddings": lambda b: index.ranks_and_scores(q_emb[id(b)], b.targets, depth),
      "dense_search_top100_given_embeddings": lambda b: exact.search(q_emb[id(b)], 100)}, batches, n, args.repeats))
  log(f"[{name}] dense: {out['qps']['dense_rank']:.1f} q/s (search {out['qps']['dense_search_top100']:.1f}); "
      f"given embeddings: rank {out['qps']['dense_rank_given_embeddings']:.1f}, "
      f"search {out['qps']['dense_search_top100_given_embeddings']:.1f}")

  ce = CrossEncoderScorer(ce_model, corpus, config.cross_encoder)
  out["qps"].update(passes_per_second({"cross_encoder": ce}, batches, n, args.repeats))
  log(f"[{name}] cross_encoder: {out['qps']['cross_encoder']:.1f} q/s")
  q = out["qps"]
  out["reward_over_search"] = {  # time per query of the reward / of the search
      "bm25_rank": q["bm25_search_top100"] / q["bm25_rank"],
      "dense_rank": q["dense_search_top100"] / q["dense_rank"],
      "dense_rank_given_embeddings": q["dense_search_top100_given_embeddings"] / q["dense_rank_given_embeddings"]}
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "nfcorpus"))
  ap.add_argument("--fraction", type=float, default=0.25)
  ap.add_argument("--batch-size", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--doc-max-len", type=int, default=64, help="corpus tokens for the MiniLM embeddings")
  ap.add_argument("--cache", default=os.path.join(REPO, "runs", "bench_rewards_cache"))
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default=os.path.join(REPO, "tools", "results", "bench_rewards.json"))
  args = ap.parse_args(argv)
  os.environ.setdefault("QGJAX_PROGRESS", "0")

  from qgjax.config import build_config
  from qgjax.data.beir import Corpus
  from qgjax.models.bert import load_cross_encoder
  from qgjax.retrieval.dense import DenseEncoder, embed_corpus

  def log(msg):
    print(msg, flush=True)

  corpus_path = os.path.join(args.data, "corpus.jsonl")
  texts, targets = records(args.data)
  full = Corpus(corpus_path)
  ids = list(full.doc_ids)
  wanted = {d for t in targets for d in t}
  rng = np.random.default_rng(args.seed)
  others = [d for d in ids if d not in wanted]
  size = int(round(args.fraction * len(ids)))
  keep = wanted | set(rng.choice(others, size=max(size - len(wanted), 0), replace=False).tolist())
  log(f"{len(texts)} queries, {len(wanted)} distinct targets; corpus {len(ids)} docs, subset {len(keep)}")

  config = build_config(os.path.join(REPO, "configs", "score.py"), [("batch_size", str(args.batch_size))])
  config.dense.max_len = args.doc_max_len
  encoder = DenseEncoder.load(config.dense.model)
  t = time.perf_counter()
  emb_ids, full_emb = embed_corpus(corpus_path, os.path.join(args.cache, f"minilm-{args.doc_max_len}"), encoder,
                                   batch_size=int(config.dense.batch_size), max_len=args.doc_max_len, corpus=full)
  encode_s = time.perf_counter() - t
  assert emb_ids == ids
  row = {d: i for i, d in enumerate(ids)}

  results = {"command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO)] + (argv if argv is not None
                                                                                       else sys.argv[1:])),
             "machine": machine(), "versions": versions(),
             "settings": {"data": os.path.abspath(args.data), "queries": len(texts), "targets_per_query": 1,
                          "batch_size": args.batch_size, "repeats": args.repeats, "depth": int(config.depth),
                          "rank_reward": config.rank_reward, "bm25": config.bm25.to_dict(),
                          "dense": {"model": config.dense.model, "doc_max_len": args.doc_max_len,
                                    "query_max_len": int(config.dense.query_max_len), "chunk": int(config.dense.chunk)},
                          "cross_encoder": {"model": "tiny random BERT cross-encoder (2 layers, hidden 32, "
                                                     "MiniLM tokenizer), no pretrained one ships offline",
                                            "max_len": int(config.cross_encoder.max_len),
                                            "batch_size": int(config.cross_encoder.batch_size)},
                          "corpus_encode_s": round(encode_s, 1), "subset_seed": args.seed,
                          "devices": _devices()},
             "sizes": {}}
  with tempfile.TemporaryDirectory() as tmp:
    ce_model = load_cross_encoder(tiny_cross_encoder(os.path.join(tmp, "ce")))
    os.makedirs(os.path.join(tmp, "subset"))
    subset = Corpus(write_subset(corpus_path, keep, os.path.join(tmp, "subset")))
    for name, corpus in (("large", full), ("small", subset)):
      rows = np.array([row[d] for d in corpus.doc_ids])
      results["sizes"][name] = bench_size(name, corpus, rows, full_emb, texts, targets, config, encoder, ce_model,
                                          args, log)
  small, large = results["sizes"]["small"]["qps"], results["sizes"]["large"]["qps"]
  results["ratio"] = {k: small[k] / large[k] for k in large}
  results["load_avg_after"] = list(os.getloadavg())
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  log(f"{'reward':<38}{'N=' + str(results['sizes']['large']['docs']):>12}{'N=' + str(len(keep)):>12}"
      f"{'small/large':>13}")
  for k in large:
    log(f"{k:<38}{large[k]:>12.1f}{small[k]:>12.1f}{results['ratio'][k]:>13.2f}")
  log(f"wrote {args.out}")
  return 0


def _devices() -> str:
  import jax
  return f"{jax.device_count()} x {jax.devices()[0].platform}"


if __name__ == "__main__":
  sys.exit(main())
