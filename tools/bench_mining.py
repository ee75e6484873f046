"""ScaNN against the fastest exact search (faiss IndexFlatIP, jitted matmul + top_k): recall@100 vs QPS.

  python tools/bench_mining.py          # nfcorpus; clustered 10k-1M; MiniLM-like Gaussian 30k-1M
  python tools/bench_mining.py --sizes 100000 --gauss-sizes "" --queries 500 --nfcorpus ""   # quicker

Data: (1) real all-MiniLM-L6-v2 embeddings of a BEIR corpus (docs: title + text; queries:
queries.jsonl), encoded with qgjax's jitted encoder and cached under --cache; (2) "clustered":
unit vectors in D=384 around N/100 random unit centres (clusters of ~100 points, the depth of
the top-100; noise norm = `--spread` x centre norm), queries from the same mixture; (3)
"minilm-gauss": unit vectors from a Gaussian fitted to the real document embeddings (MiniLM's
anisotropy, no clusters; much harder for the tree than (2)). The score statistics (mean top-1
/ top-100 inner product) of each set are recorded beside the timings.

For each size: exact QPS (best of --repeats passes) for faiss and for `ExactIndex`, the exact
top-100 as ground truth, ScaNN build time, and for a grid of (leaves_to_search, reorder) the
recall@100 and QPS. ratio = best ScaNN QPS with recall@100 >= 0.95 / best exact QPS. The
policy block says from which corpus size ScaNN pays for itself when mining one query per
document (build + N / QPS_scann < N / QPS_exact); `qgjax mine` uses it as `scann_min_rows`.
Writes tools/results/bench_mining.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import load_avg, machine  # noqa: E402

TARGET_RECALL = 0.95


def clustered(n: int, d: int, n_clusters: int, spread: float, seed: int, block: int = 100_000) -> np.ndarray:
  """f32[n, d] unit vectors: centre + spread * N(0, I/d), normalised (made in blocks; f32 only)."""
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((n_clusters, d), dtype=np.float32)
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  out = np.empty((n, d), np.float32)
  for s in range(0, n, block):
    m = min(block, n - s)
    x = centers[rng.integers(0, n_clusters, m)] + (spread / math.sqrt(d)) * rng.standard_normal((m, d), dtype=np.float32)
    out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def timed(fn, repeats: int):
  best, out = float("inf"), None
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t)
  return best, out


def recall(rows: np.ndarray, truth: np.ndarray) -> float:
  return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b) for a, b in zip(rows, truth)]))


def bench_set(name: str, corpus: np.ndarray, queries: np.ndarray, grid: list[tuple[int, int]], num_leaves: int,
              k: int, repeats: int, log) -> dict:
  import faiss

  from qgjax.retrieval.exact import ExactIndex
  from qgjax.retrieval.scann_index import ScannIndex, ScannParams

  n, d = corpus.shape
  q = len(queries)
  res = {"name": name, "rows": n, "dim": d, "queries": q, "k": k, "load_avg_start": load_avg()}
  # exact, jitted
  t = time.perf_counter()
  ex = ExactIndex(corpus)
  ex.search(queries[:8], k)
  res["exact_jax_setup_s"] = round(time.perf_counter() - t, 3)
  secs, (scores, truth) = timed(lambda: ex.search(queries, k), repeats)
  res["exact_jax_qps"] = round(q / secs, 1)
  res["score_top1_mean"] = round(float(scores[:, 0].mean()), 4)
  res["score_topk_mean"] = round(float(scores[:, -1].mean()), 4)
  del ex
  log(f"[{name}] exact jax {res['exact_jax_qps']} QPS")
  # exact, faiss
  fi = faiss.IndexFlatIP(d)
  fi.add(corpus)
  fi.search(queries[:8], k)
  secs, (_, frows) = timed(lambda: fi.search(queries, k), repeats)
  res["exact_faiss_qps"] = round(q / secs, 1)
  res["faiss_recall_vs_jax"] = round(recall(frows, truth), 5)
  res["faiss_threads"] = faiss.omp_get_max_threads()
  del fi
  log(f"[{name}] exact faiss {res['exact_faiss_qps']} QPS")
  best_exact = max(res["exact_jax_qps"], res["exact_faiss_qps"])
  res["best_exact"] = "faiss IndexFlatIP" if res["exact_faiss_qps"] >= res["exact_jax_qps"] else "jax matmul+top_k"
  res["best_exact_qps"] = best_exact
  # ScaNN
  params = ScannParams(num_leaves=num_leaves, leaves_to_search=grid[0][0], reorder=grid[0][1], k_build=k)
  t = time.perf_counter()
  index = ScannIndex.build(corpus, params)
  res["scann_build_s"] = round(time.perf_counter() - t, 2)
  res["scann_params"] = {kk: v for kk, v in index.params.__dict__.items()}
  log(f"[{name}] ScaNN built in {res['scann_build_s']} s ({index.params.num_leaves} leaves)")
  curve = []
  for leaves, reorder in grid:
    leaves = min(leaves, index.params.num_leaves)
    index.search(queries[:32], k, leaves_to_search=leaves, reorder=reorder)
    secs, (_, rows) = timed(lambda: index.search(queries, k, leaves_to_search=leaves, reorder=reorder), repeats)
    point = {"leaves_to_search": leaves, "reorder": reorder, "recall": round(recall(rows, truth), 4),
             "qps": round(q / secs, 1), "speedup_vs_best_exact": round(q / secs / best_exact, 2)}
    curve.append(point)
    log(f"[{name}] ScaNN leaves={leaves} reorder={reorder}: recall@{k} {point['recall']} "
        f"{point['qps']} QPS ({point['speedup_vs_best_exact']}x)")
  res["scann_curve"] = curve
  good = [p for p in curve if p["recall"] >= TARGET_RECALL]
  res["best_scann_at_target"] = max(good, key=lambda p: p["qps"]) if good else None
  res["ratio"] = round(res["best_scann_at_target"]["qps"] / best_exact, 2) if good else None
  res["max_recall"] = max(p["recall"] for p in curve)
  if good:  # one query per document, the mining workload
    scann_s = res["scann_build_s"] + n / res["best_scann_at_target"]["qps"]
    res["mine_n_queries_s"] = {"exact": round(n / best_exact, 1), "scann_incl_build": round(scann_s, 1)}
  res["load_avg_end"] = load_avg()
  return res


def grid_for(n: int) -> tuple[int, list[tuple[int, int]]]:
  """num_leaves = 2 sqrt(N); leaves_to_search from 1% to 40% of them; reorder 250 / 500 / 1000."""
  leaves = max(10, int(round(2 * math.sqrt(n))))
  fractions = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
  searches = sorted({max(1, int(round(f * leaves))) for f in fractions})
  return leaves, [(s, r) for s in searches for r in (250, 500, 1000)]


def gaussian_like(real: np.ndarray, n: int, seed: int, block: int = 100_000) -> np.ndarray:
  """f32[n, D] unit vectors from N(mean, cov) fitted to `real` embeddings (no cluster structure,
  MiniLM's anisotropy): harder for partitioning than the clustered sets."""
  mu = real.mean(0, dtype=np.float64)
  chol = np.linalg.cholesky(np.cov(real, rowvar=False) + 1e-6 * np.eye(real.shape[1])).astype(np.float32)
  rng = np.random.default_rng(seed)
  out = np.empty((n, real.shape[1]), np.float32)
  for s in range(0, n, block):
    m = min(block, n - s)
    x = mu.astype(np.float32) + rng.standard_normal((m, real.shape[1]), dtype=np.float32) @ chol.T
    out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def real_embeddings(beir_dir: str, cache: str, log) -> tuple[np.ndarray, np.ndarray]:
  from qgjax.data.beir import iter_queries
  from qgjax.retrieval.dense import DenseEncoder, embed_corpus

  enc = DenseEncoder.load("all-minilm-l6-v2")
  _, docs = embed_corpus(os.path.join(beir_dir, "corpus.jsonl"), os.path.join(cache, "corpus_emb"), enc,
                         batch_size=64, max_len=256, shard_rows=1024)
  qpath = os.path.join(cache, "queries_emb.npy")
  if os.path.isfile(qpath):
    queries = np.load(qpath)
  else:
    texts = [q.text for q in iter_queries(os.path.join(beir_dir, "queries.jsonl"))]
    queries = enc.encode(texts, batch_size=64, max_len=64)
    np.save(qpath, queries)
  log(f"[real] {docs.shape[0]} docs, {queries.shape[0]} queries")
  return docs, queries


def versions() -> dict:
  import faiss
  import jax
  out = {"jax": jax.__version__, "numpy": np.__version__, "faiss": faiss.__version__}
  try:
    from importlib.metadata import version
    out["scann"] = version("scann")
  except Exception:  # noqa: BLE001
    out["scann"] = "?"
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--sizes", default="10000,30000,100000,1000000")
  ap.add_argument("--gauss-sizes", default="30000,100000,1000000")
  ap.add_argument("--queries", type=int, default=1000)
  ap.add_argument("--dim", type=int, default=384)
  ap.add_argument("--spread", type=float, default=1.0)
  ap.add_argument("--k", type=int, default=100)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--nfcorpus", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nfcorpus"))
  ap.add_argument("--cache", default="runs/bench_mining_cache")
  ap.add_argument("--out", default="tools/results/bench_mining.json")
  args = ap.parse_args(argv)
  log = lambda msg: print(msg, flush=True)
  results = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
             "machine": machine(), "versions": versions(), "target": {"recall_at_100": TARGET_RECALL,
                                                                     "ratio_at_1M": 5.0},
             "data": {"clustered": f"unit vectors, D={args.dim}, N/100 centres, spread={args.spread}, "
                                   f"queries from the same mixture, seed={args.seed}"},
             "sets": []}
  real = None
  if args.nfcorpus and os.path.isdir(args.nfcorpus):
    docs, queries = real_embeddings(args.nfcorpus, os.path.join(args.cache, "nfcorpus"), log)
    leaves, grid = grid_for(docs.shape[0])
    results["sets"].append(bench_set("nfcorpus-minilm", docs, queries, grid, leaves, args.k, args.repeats, log))
    _write(args.out, results)
    real = docs
  for n in [int(s) for s in args.sizes.split(",") if s]:
    x = clustered(n + args.queries, args.dim, max(1, n // 100), args.spread, args.seed)
    leaves, grid = grid_for(n)
    results["sets"].append(bench_set(f"clustered-{n}", x[:n], x[n:], grid, leaves, args.k, args.repeats, log))
    del x
    _write(args.out, results)
  if real is not None:
    results["data"]["minilm-gauss"] = ("unit vectors from a Gaussian (mean, full covariance) fitted to the "
                                       "nfcorpus MiniLM document embeddings; queries from the same Gaussian")
    for n in [int(s) for s in args.gauss_sizes.split(",") if s]:
      x = gaussian_like(real, n + args.queries, args.seed + 1)
      leaves, grid = grid_for(n)
      results["sets"].append(bench_set(f"minilm-gauss-{n}", x[:n], x[n:], grid, leaves, args.k, args.repeats, log))
      del x
      _write(args.out, results)
  results["policy"] = policy(results["sets"])
  _write(args.out, results)
  log(json.dumps({s["name"]: {"ratio": s["ratio"], "best_exact_qps": s["best_exact_qps"],
                              "best_scann": s["best_scann_at_target"]} for s in results["sets"]}, indent=1))
  return 0


def policy(sets: list[dict]) -> dict:
  """Per synthetic family, the smallest size from which ScaNN (build included) beats exact search
  for N queries; the policy threshold is the largest of them (the harder family decides)."""
  out = {"rule": "build + N/QPS_scann(recall>=0.95) < N/QPS_best_exact, one query per document", "families": {}}
  for family in ("clustered", "minilm-gauss"):
    members = sorted((s for s in sets if s["name"].rsplit("-", 1)[0] == family), key=lambda s: s["rows"])
    pays = [s["rows"] for s in members if s.get("mine_n_queries_s")
            and s["mine_n_queries_s"]["scann_incl_build"] < s["mine_n_queries_s"]["exact"]]
    out["families"][family] = {"scann_pays_from_rows": pays[0] if pays else None,
                               "exact_wins_at": [s["rows"] for s in members if s["rows"] not in pays]}
  firsts = [f["scann_pays_from_rows"] for f in out["families"].values() if f["scann_pays_from_rows"]]
  out["scann_min_rows"] = max(firsts) if firsts else None
  return out


def _write(path: str, obj: dict) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


if __name__ == "__main__":
  sys.exit(main())
