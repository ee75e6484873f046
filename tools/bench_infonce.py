"""Bi-encoder training throughput: qgjax InfoNCE step vs sentence-transformers MultipleNegativesRankingLoss.

  python tools/bench_infonce.py                        # nfcorpus train pairs, batch 32, 1 hard negative
  python tools/bench_infonce.py --data "" --steps 6    # the shipped demo corpus (quick check)
  python tools/bench_infonce.py --set encode_chunk=0 --out /tmp/infonce_whole.json   # a qgjax config key

Same model (all-MiniLM-L6-v2, f32, dropout on as in sentence-transformers' train mode), same
examples in the same order ((query, positive, one negative) from qrels; the negative a seeded
random other document), same batch, same max length, AdamW, on CPU. qgjax: the jitted,
sharded `train_step` of `qgjax train --config configs/retriever.py` (length buckets, in-batch +
hard negatives, duplicate masking); compilation is done before timing (one step per distinct
shape). sentence-transformers: `model.tokenize` (pads to the longest in the batch) + forward +
MNRL (scale 20 = temperature 0.05) + backward + AdamW step, the core of its trainer without the
Trainer's bookkeeping (its fastest path). The two are timed in alternating rounds to share
whatever else runs on the machine. Writes tools/results/bench_infonce.json.

Each system runs in its own worker process (`bench_workers.Worker`, same environment, one running
at a time), as each runs for its users. In one process the two share glibc's heap and the
kernel's free pages: after a sentence-transformers round qgjax's steps spent 1.7-3.3 s each in the
kernel re-faulting its per-step buffer (3.0-3.7 s steps became 3.6-5.3 s). `--in-process`
reproduces that setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build_examples(data_dir: str, n: int, seed: int) -> tuple[list[dict], str]:
  from qgjax.data import demo_dir
  from qgjax.data.beir import Corpus, load_qrels, load_queries, queries_path

  data_dir = data_dir or str(demo_dir())
  # a collection's training queries when it has them (NFCorpus), else its judged test queries (the demo)
  split = "train" if os.path.isfile(os.path.join(data_dir, "qrels", "train.tsv")) else "test"
  corpus = Corpus(os.path.join(data_dir, "corpus.jsonl"))
  queries = load_queries(queries_path(data_dir, split))
  qrels = load_qrels(os.path.join(data_dir, "qrels", f"{split}.tsv"), doc_ids=corpus)
  ids = corpus.doc_ids
  rng = np.random.default_rng(seed)
  pairs = [(q, d) for q in sorted(qrels) if q in queries for d, g in sorted(qrels[q].items()) if g > 0 and d in corpus]
  rng.shuffle(pairs)
  out = []
  for q, d in pairs[:n]:
    neg = ids[int(rng.integers(len(ids)))]
    while neg == d:
      neg = ids[int(rng.integers(len(ids)))]
    out.append({"query": queries[q], "pos_id": d, "neg_ids": [neg]})
  return out, data_dir


def qgjax_trainer(tuples_path: str, data_dir: str, batch: int, max_len: int, steps: int, overrides=()):
  """-> (run(step_indices) -> seconds, loader): the retriever task's jitted step, compiled up front.

  `overrides`: more (config key, value) pairs, e.g. ("model.name", a tiny model dir).
  """
  import jax

  from qgjax.config import build_config
  from qgjax.parallel.mesh import mesh_from_config
  from qgjax.parallel.sharding import put_batch, rules_for
  from qgjax.train.infonce import setup_retriever
  from qgjax.train.optim import make_optimizer
  from qgjax.train.step import create_state, make_train_step, state_shardings

  cfg = build_config("configs/retriever.py", [
      ("data.train", tuples_path), ("data.corpus", data_dir), ("batch_size", str(batch)),
      ("data.doc_max_len", str(max_len)), ("data.query_max_len", str(min(64, max_len))),
      ("model.dropout", "true"), ("model.dtype", "float32"), ("num_negatives", "1"),
      ("optim.warmup_steps", "0"), ("optim.schedule", "constant"), ("optim.grad_clip", "0"), *overrides])
  setup = setup_retriever(cfg)
  mesh = mesh_from_config(cfg)
  rules = rules_for(mesh, None)
  tx, schedule = make_optimizer(cfg.optim, steps)
  shardings = state_shardings(setup.abstract_trainable, setup.abstract_frozen, tx, mesh, rules)
  state = create_state(setup.trainable, setup.frozen, shardings, tx, mesh, rules)
  step_fn = make_train_step(setup.loss_fn, tx, schedule, mesh=mesh, rules=rules, shardings=shardings,
                            example_batch=setup.train.batch(0))
  holder = {"state": state}

  def compile_shapes(step_ids):
    seen = set()
    t = time.perf_counter()
    for s in step_ids:
      b = setup.train.batch(s)
      sig = tuple(sorted((k, v.shape) for k, v in b.items()))
      if sig not in seen:
        seen.add(sig)
        holder["state"], m = step_fn(holder["state"], put_batch(b, mesh, rules))
        jax.block_until_ready(m)
    return len(seen), time.perf_counter() - t

  def run(step_ids):
    t = time.perf_counter()
    m = None
    for s in step_ids:
      holder["state"], m = step_fn(holder["state"], put_batch(setup.train.batch(s), mesh, rules))
    jax.block_until_ready(m)
    return time.perf_counter() - t, float(m["loss"])

  return run, compile_shapes, setup.train


def st_trainer(examples: list[dict], corpus_texts: dict, batch: int, max_len: int, lr: float):
  """-> run(rows_per_step) -> (seconds, last loss): MNRL training on the given example rows per step."""
  import torch
  from sentence_transformers import SentenceTransformer
  from sentence_transformers.losses import MultipleNegativesRankingLoss

  from qgjax.models.bert import resolve_model_dir

  model = SentenceTransformer(resolve_model_dir("all-minilm-l6-v2"), device="cpu")
  model.max_seq_length = max_len
  model.train()
  loss_fn = MultipleNegativesRankingLoss(model, scale=20.0)
  opt = torch.optim.AdamW(model.parameters(), lr=lr, eps=1e-6, weight_decay=0.01)

  def features(texts):
    return {k: v for k, v in model.tokenize(texts).items()}

  def run(rows_per_step):
    t = time.perf_counter()
    loss = None
    for rows in rows_per_step:
      assert len(rows) == batch, (len(rows), batch)
      ex = [examples[i] for i in rows]
      feats = [features([e["query"] for e in ex]), features([corpus_texts[e["pos_id"]] for e in ex]),
               features([corpus_texts[e["neg_ids"][0]] for e in ex])]
      loss = loss_fn(feats, None)
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t, float(loss.detach())

  return run


def _examples(args) -> tuple[list[dict], str]:
  data_dir = args.data if args.data and os.path.isdir(args.data) else ""
  return build_examples(data_dir, args.examples, args.seed)


def _overrides(args) -> list[tuple[str, str]]:
  """--set KEY=VALUE options -> (config key, value) pairs for qgjax's retriever config."""
  pairs = []
  for item in args.set:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"--set expects KEY=VALUE (a configs/retriever.py key), got {item!r}")
    pairs.append((key, value))
  return pairs


def _plan(args) -> list[list[int]]:
  return [list(range(1 + r * args.steps, 1 + (r + 1) * args.steps)) for r in range(args.rounds)]


class QgjaxSystem:
  """qgjax's retriever step, compiled for every shape of the plan; also the source of each step's rows."""

  def __init__(self, args):
    import jax
    examples, data_dir = _examples(args)
    tmp = tempfile.mkdtemp(prefix="bench_infonce_")
    path = os.path.join(tmp, "tuples.jsonl")
    with open(path, "w") as f:
      for e in examples:
        f.write(json.dumps(e) + "\n")
    plan = [s for p in _plan(args) for s in p]
    self._run, compile_shapes, loader = qgjax_trainer(path, data_dir, args.batch, args.max_len, len(plan) + 1,
                                                      overrides=_overrides(args))
    shapes, compile_s = compile_shapes(plan)
    # examples are in file order in setup_retriever (eval_fraction 0), so loader rows index `examples`
    self.info = {"data_dir": data_dir, "examples": len(examples), "shapes": shapes, "compile_s": compile_s,
                 "rows": {str(s): [int(i) for i in loader.indices(s)] for s in [0] + plan},
                 "versions": {"jax": jax.__version__}}

  def run(self, steps, rows):
    del rows
    return self._run(steps)


class SentenceTransformersSystem:
  """sentence-transformers MNRL training on the rows qgjax's loader gives each step (warmed up on step 0)."""

  def __init__(self, args, rows0):
    import sentence_transformers
    import torch

    from qgjax.data.beir import Corpus
    examples, data_dir = _examples(args)
    corpus = Corpus(os.path.join(data_dir, "corpus.jsonl"))
    needed = sorted({e["pos_id"] for e in examples} | {n for e in examples for n in e["neg_ids"]})
    texts = {d.doc_id: d.contents for d in corpus.get_many(needed)}
    self._run = st_trainer(examples, texts, args.batch, args.max_len, 2e-5)
    self._run([rows0])  # warm-up (allocator, threads)
    self.info = {"versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                              "torch_threads": torch.get_num_threads()}}

  def run(self, steps, rows):
    return self._run(rows)


def main(argv=None) -> int:
  from bench_workers import huge_pages_first
  huge_pages_first(argv)
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nfcorpus"))
  ap.add_argument("--examples", type=int, default=2048)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--max-len", type=int, default=128)
  ap.add_argument("--steps", type=int, default=12, help="timed steps per round")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--in-process", action="store_true",
                  help="run both systems in this one process (they then share the heap; see the docstring)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="a configs/retriever.py key for qgjax's step, e.g. encode_chunk=0 (repeatable)")
  ap.add_argument("--worker", choices=("qgjax", "st"), help=argparse.SUPPRESS)
  ap.add_argument("--out", default="tools/results/bench_infonce.json")
  args = ap.parse_args(argv)
  if args.worker:  # one system in this process, driven by the parent over stdin/stdout
    from bench_workers import LocalSystem, qgjax_or_peer, serve
    serve(LocalSystem(qgjax_or_peer(QgjaxSystem, SentenceTransformersSystem, args)).request)
    return 0

  from bench_common import load_avg, machine, write_result
  from bench_sampling import matmul_peak
  from bench_workers import LocalSystem, Worker, alternate_rounds, prepare_both, qgjax_or_peer

  if args.in_process:
    systems = {name: LocalSystem(qgjax_or_peer(QgjaxSystem, SentenceTransformersSystem, args))
               for name in ("qgjax", "st")}
  else:
    here = os.path.abspath(__file__)
    passed = ["--data", args.data, "--examples", str(args.examples), "--batch", str(args.batch),
              "--max-len", str(args.max_len), "--steps", str(args.steps), "--rounds", str(args.rounds),
              "--seed", str(args.seed)] + [a for item in args.set for a in ("--set", item)]
    systems = {name: Worker(name, [sys.executable, here, "--worker", name] + passed) for name in ("qgjax", "st")}
  try:
    q_info, st_info, rows = prepare_both(systems)
    print(f"{q_info['examples']} examples from {q_info['data_dir']}; batch {args.batch}; max_len {args.max_len}; "
          f"qgjax compiled {q_info['shapes']} shapes in {q_info['compile_s']:.1f}s; "
          f"{'one process' if args.in_process else 'one process per system'}", flush=True)
    peak = {k: round(v, 1) for k, v in matmul_peak().items()}  # the host's f32 matmul speed: ratios differ by host
    load_start = load_avg()
    res = alternate_rounds(systems, _plan(args), rows, args.batch, "examples_per_s")
  finally:
    for w in systems.values():
      w.close()
  best = {k: max(x["examples_per_s"] for x in v) for k, v in res.items()}
  total_rate = {k: round(sum(x["steps"] for x in v) * args.batch / sum(x["seconds"] for x in v), 2)
                for k, v in res.items()}
  out = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
         "machine": machine(), "matmul_peak_gflops": peak, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
         "isolation": "one process (shared heap)" if args.in_process else
                      "one process per system, same environment; rounds alternate, one system running at a time",
         "versions": {**q_info["versions"], **st_info["versions"]},
         "setup": {"model": "all-MiniLM-L6-v2", "data": os.path.abspath(q_info["data_dir"]),
                   "examples": q_info["examples"], "batch": args.batch, "max_len": args.max_len, "hard_negatives": 1,
                   "temperature": 0.05, "dropout": True, "dtype": "float32", "qgjax_shapes_compiled": q_info["shapes"],
                   "qgjax_compile_s": round(q_info["compile_s"], 1),
                   "qgjax_config": dict(_overrides(args)) or "configs/retriever.py defaults"},
         "rounds": res, "examples_per_s_overall": total_rate, "examples_per_s_best_round": best,
         "ratio": round(total_rate["qgjax"] / total_rate["sentence_transformers"], 2), "target_ratio": 1.5,
         "load_avg": {"start": load_start, "end": load_avg()}}
  write_result(args.out, out, {"ratio": out["ratio"], "examples_per_s": total_rate})
  return 0


if __name__ == "__main__":
  sys.exit(main())
