"""Bi-encoder training throughput: qgjax InfoNCE step vs sentence-transformers MultipleNegativesRankingLoss.

  python tools/bench_infonce.py                        # nfcorpus train pairs, batch 32, 1 hard negative
  python tools/bench_infonce.py --data "" --steps 6    # the shipped demo corpus (quick check)

Same model (all-MiniLM-L6-v2, f32, dropout on as in sentence-transformers' train mode), same
examples in the same order ((query, positive, one negative) from qrels; the negative a seeded
random other document), same batch, same max length, AdamW, on CPU. qgjax: the jitted,
sharded `train_step` of `qgjax train --config configs/retriever.py` (length buckets, in-batch +
hard negatives, duplicate masking); compilation is done before timing (one step per distinct
shape). sentence-transformers: `model.tokenize` (pads to the longest in the batch) + forward +
MNRL (scale 20 = temperature 0.05) + backward + AdamW step, the core of its trainer without the
Trainer's bookkeeping (its fastest path). The two are timed in alternating rounds to share
whatever else runs on the machine. Writes tools/results/bench_infonce.json.
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

  if not data_dir:
    data_dir = str(demo_dir())
    split = "test"
  else:
    split = "train"
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


def qgjax_trainer(tuples_path: str, data_dir: str, batch: int, max_len: int, steps: int):
  """-> (run(step_indices) -> seconds, loader): the retriever task's jitted step, compiled up front."""
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
      ("optim.warmup_steps", "0"), ("optim.schedule", "constant"), ("optim.grad_clip", "0")])
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


def st_trainer(examples: list[dict], corpus_texts: dict, loader, batch: int, max_len: int, lr: float):
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

  def run(step_ids):
    t = time.perf_counter()
    loss = None
    for s in step_ids:
      rows = loader.indices(s)
      ex = [examples[loader_rows[i]] for i in rows]
      feats = [features([e["query"] for e in ex]), features([corpus_texts[e["pos_id"]] for e in ex]),
               features([corpus_texts[e["neg_ids"][0]] for e in ex])]
      loss = loss_fn(feats, None)
      loss.backward()
      opt.step()
      opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t, float(loss.detach())

  loader_rows = list(range(len(examples)))
  return run


def main(argv=None) -> int:
  if argv is None:  # as `qgjax` runs: glibc huge pages for XLA:CPU buffers (shared by the peer in this process)
    from qgjax.host_allocator import reexec_with_huge_pages
    reexec_with_huge_pages()
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nfcorpus"))
  ap.add_argument("--examples", type=int, default=2048)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--max-len", type=int, default=128)
  ap.add_argument("--steps", type=int, default=12, help="timed steps per round")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default="tools/results/bench_infonce.json")
  args = ap.parse_args(argv)
  import jax
  import torch

  from bench_mining import load_avg, machine

  data_dir = args.data if args.data and os.path.isdir(args.data) else ""
  examples, data_dir = build_examples(data_dir, args.examples, args.seed)
  from qgjax.data.beir import Corpus
  corpus = Corpus(os.path.join(data_dir, "corpus.jsonl"))
  needed = sorted({e["pos_id"] for e in examples} | {n for e in examples for n in e["neg_ids"]})
  texts = {d.doc_id: d.contents for d in corpus.get_many(needed)}
  tmp = tempfile.mkdtemp(prefix="bench_infonce_")
  path = os.path.join(tmp, "tuples.jsonl")
  with open(path, "w") as f:
    for e in examples:
      f.write(json.dumps(e) + "\n")
  total = args.rounds * args.steps + 1
  run_q, compile_q, loader = qgjax_trainer(path, data_dir, args.batch, args.max_len, total)
  # examples are in file order in setup_retriever (eval_fraction 0), so loader rows index `examples`
  run_st = st_trainer(examples, texts, loader, args.batch, args.max_len, 2e-5)
  plan = [list(range(1 + r * args.steps, 1 + (r + 1) * args.steps)) for r in range(args.rounds)]
  shapes, compile_s = compile_q([s for p in plan for s in p])
  run_st([0])  # warm-up (allocator, threads)
  res = {"qgjax": [], "sentence_transformers": []}
  print(f"{len(examples)} examples from {data_dir}; batch {args.batch}; max_len {args.max_len}; "
        f"qgjax compiled {shapes} shapes in {compile_s:.1f}s", flush=True)
  load_start = load_avg()
  for r, steps in enumerate(plan):
    for name, fn in (("sentence_transformers", run_st), ("qgjax", run_q)):
      secs, loss = fn(steps)
      res[name].append({"round": r, "steps": len(steps), "seconds": round(secs, 3),
                        "examples_per_s": round(len(steps) * args.batch / secs, 2), "last_loss": round(loss, 4)})
      print(f"round {r} {name}: {res[name][-1]['examples_per_s']} examples/s", flush=True)
  best = {k: max(x["examples_per_s"] for x in v) for k, v in res.items()}
  total_rate = {k: round(sum(x["steps"] for x in v) * args.batch / sum(x["seconds"] for x in v), 2)
                for k, v in res.items()}
  import sentence_transformers
  out = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
         "machine": machine(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
         "versions": {"jax": jax.__version__, "torch": torch.__version__,
                      "sentence_transformers": sentence_transformers.__version__,
                      "torch_threads": torch.get_num_threads()},
         "setup": {"model": "all-MiniLM-L6-v2", "data": os.path.abspath(data_dir), "examples": len(examples),
                   "batch": args.batch, "max_len": args.max_len, "hard_negatives": 1, "temperature": 0.05,
                   "dropout": True, "dtype": "float32", "qgjax_shapes_compiled": shapes,
                   "qgjax_compile_s": round(compile_s, 1)},
         "rounds": res, "examples_per_s_overall": total_rate, "examples_per_s_best_round": best,
         "ratio": round(total_rate["qgjax"] / total_rate["sentence_transformers"], 2), "target_ratio": 1.5,
         "load_avg": {"start": load_start, "end": load_avg()}}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  print(json.dumps({"ratio": out["ratio"], "examples_per_s": total_rate}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
