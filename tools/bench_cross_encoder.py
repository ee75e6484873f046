"""Cross-encoder (reranker) training throughput: qgjax's step vs sentence-transformers' CrossEncoder + BCE.

  python tools/bench_cross_encoder.py                      # NFCorpus training qrels, 16 pairs a step
  python tools/bench_cross_encoder.py --data "" --steps 4  # the shipped demo collection (quick check)

The reward model of the DPO-QG recipe (`qgjax train --config configs/cross_encoder.py:qrels`): all-MiniLM-L6-v2
with a new one-logit head, each step B judged (query, document) pairs of the collection's training qrels
(label 1) and each query against the next example's document (label 0; left out where that is the same
query or document), BCE, AdamW, on CPU, float32.

qgjax: the jitted `train_step` of the cross_encoder task (pairs joined inside the step, length buckets),
compiled for every shape before timing. sentence-transformers: `CrossEncoder(all-MiniLM-L6-v2,
num_labels=1)` and its `BinaryCrossEntropyLoss` (`model.preprocess` pads each batch to its longest pair)
+ backward + AdamW, the core of its trainer without the Trainer's bookkeeping, on the same examples in
the same order; documents cut to the same 128 tokens as qgjax's (their first 126 word pieces, decoded),
the model in eval mode (no dropout: qgjax's cross-encoder has none). Each system runs in its own worker
process (`bench_workers`), rounds alternate. Writes tools/results/bench_cross_encoder.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _config(args):
  from qgjax.config import build_config

  tiny = not args.data
  preset = "configs/cross_encoder.py:" + ("tiny,qrels" if tiny else "qrels")
  overrides = [("batch_size", str(args.batch)), ("optim.warmup_steps", "0"), ("optim.schedule", "constant"),
               ("optim.lr", "5e-5"), ("data.negatives_per_pair", "0"), ("loss.hard_negative_pool", "1"),
               ("data.doc_max_len", str(args.doc_len)), ("data.doc_buckets", str(args.doc_len)),
               ("model.dtype", "float32")]
  if not tiny:
    overrides.append(("data.corpus", args.data))
  return build_config(preset, overrides)


def _plan(args) -> list[list[int]]:
  return [list(range(1 + r * args.steps, 1 + (r + 1) * args.steps)) for r in range(args.rounds)]


class QgjaxSystem:
  """qgjax's cross-encoder step, compiled for every shape of the plan; also the source of each step's rows."""

  def __init__(self, args):
    import jax

    from qgjax.parallel.mesh import mesh_from_config
    from qgjax.parallel.sharding import put_batch, rules_for
    from qgjax.train.cross_encoder import setup_cross_encoder
    from qgjax.train.optim import make_optimizer
    from qgjax.train.step import create_state, make_train_step, state_shardings

    cfg = _config(args)
    setup = setup_cross_encoder(cfg)
    mesh = mesh_from_config(cfg)
    rules = rules_for(mesh, None)
    plan = [s for p in _plan(args) for s in p]
    tx, schedule = make_optimizer(cfg.optim, len(plan) + 1)
    shardings = state_shardings(setup.abstract_trainable, setup.abstract_frozen, tx, mesh, rules)
    self.state = create_state(setup.trainable, setup.frozen, shardings, tx, mesh, rules)
    self.step = make_train_step(setup.loss_fn, tx, schedule, mesh=mesh, rules=rules, shardings=shardings,
                                example_batch=setup.train.batch(0))
    self.batch = lambda s: put_batch(setup.train.batch(s), mesh, rules)
    seen, t = set(), time.perf_counter()
    for s in plan:
      b = setup.train.batch(s)
      sig = tuple(sorted((k, v.shape) for k, v in b.items()))
      if sig not in seen:
        seen.add(sig)
        self.state, m = self.step(self.state, self.batch(s))
        jax.block_until_ready(m)
    self.info = {"examples": setup.info["train_examples"], "shapes": len(seen), "compile_s": time.perf_counter() - t,
                 "rows": {str(s): [int(i) for i in setup.train.indices(s)] for s in [0] + plan},
                 "versions": {"jax": jax.__version__}}

  def run(self, steps, rows):
    import jax
    del rows
    t = time.perf_counter()
    m = None
    for s in steps:
      self.state, m = self.step(self.state, self.batch(s))
    jax.block_until_ready(m)
    return time.perf_counter() - t, float(m["loss"])


class SentenceTransformersSystem:
  """sentence-transformers' CrossEncoder + BinaryCrossEntropyLoss on the rows qgjax's loader gives each step."""

  def __init__(self, args, rows0):
    import sentence_transformers
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from qgjax.data.beir import Corpus
    from qgjax.models.bert import resolve_model_dir
    from qgjax.train.cross_encoder import read_qrels_records

    cfg = _config(args)
    corpus = Corpus(os.path.join(cfg.data.corpus, "corpus.jsonl"))
    self.records = read_qrels_records(cfg.data, int(cfg.seed), corpus)   # the order qgjax's loader indexes
    self.model = CrossEncoder(resolve_model_dir("all-minilm-l6-v2"), num_labels=1, max_length=512, device="cpu")
    self.model.eval()
    tok = self.model.tokenizer
    ids = sorted({r["doc_id"] for r in self.records})
    cut = tok([d.contents for d in corpus.get_many(ids)], truncation=True, max_length=int(cfg.data.doc_max_len),
              add_special_tokens=True)["input_ids"]
    self.docs = dict(zip(ids, tok.batch_decode(cut, skip_special_tokens=True)))
    self.loss = BinaryCrossEntropyLoss(self.model)
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=5e-5, eps=1e-6, weight_decay=0.01)
    self.pairs_done = 0
    self.run(None, [rows0])  # warm-up (allocator, threads)
    self.info = {"versions": {"torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
                              "torch_threads": torch.get_num_threads()}}

  def run(self, steps, rows_per_step):
    import torch
    del steps
    t = time.perf_counter()
    loss = None
    for rows in rows_per_step:
      ex = [self.records[i] for i in rows]
      queries, docs, labels = [], [], []
      for i, e in enumerate(ex):
        queries.append(e["qpos"]), docs.append(self.docs[e["doc_id"]]), labels.append(1.0)
        o = ex[(i + 1) % len(ex)]
        if o["doc_id"] != e["doc_id"] and o["query_id"] != e["query_id"]:
          queries.append(e["qpos"]), docs.append(self.docs[o["doc_id"]]), labels.append(0.0)
      loss = self.loss([queries, docs], torch.tensor(labels))
      loss.backward()
      self.opt.step()
      self.opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t, float(loss.detach())


def main(argv=None) -> int:
  from bench_workers import huge_pages_first
  huge_pages_first(argv)
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nfcorpus"),
                  help='BEIR dir with qrels/train.tsv; "" = the demo collection (its test qrels)')
  ap.add_argument("--batch", type=int, default=16, help="judged pairs a step (each adds one negative pair)")
  ap.add_argument("--doc-len", type=int, default=128)
  ap.add_argument("--steps", type=int, default=12, help="timed steps per round")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--worker", choices=("qgjax", "st"), help=argparse.SUPPRESS)
  ap.add_argument("--out", default="tools/results/bench_cross_encoder.json")
  args = ap.parse_args(argv)
  if args.data and not os.path.isdir(args.data):
    args.data = ""
  if args.worker:
    from bench_workers import LocalSystem, qgjax_or_peer, serve
    serve(LocalSystem(qgjax_or_peer(QgjaxSystem, SentenceTransformersSystem, args)).request)
    return 0

  from bench_common import load_avg, machine, write_result
  from bench_sampling import matmul_peak
  from bench_workers import Worker, alternate_rounds, prepare_both

  here = os.path.abspath(__file__)
  passed = ["--data", args.data, "--batch", str(args.batch), "--doc-len", str(args.doc_len), "--steps",
            str(args.steps), "--rounds", str(args.rounds)]
  systems = {name: Worker(name, [sys.executable, here, "--worker", name] + passed) for name in ("qgjax", "st")}
  try:
    q_info, st_info, rows = prepare_both(systems)
    print(f"{q_info['examples']} judged pairs; batch {args.batch}; doc_len {args.doc_len}; qgjax compiled "
          f"{q_info['shapes']} shapes in {q_info['compile_s']:.1f}s", flush=True)
    peak = {k: round(v, 1) for k, v in matmul_peak().items()}  # the host's f32 matmul speed: ratios differ by host
    load_start = load_avg()
    res = alternate_rounds(systems, _plan(args), rows, args.batch, "judged_pairs_per_s")
  finally:
    for w in systems.values():
      w.close()
  rate = {k: round(sum(x["steps"] for x in v) * args.batch / sum(x["seconds"] for x in v), 2) for k, v in res.items()}
  out = {"command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
         "machine": machine(), "matmul_peak_gflops": peak, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
         "isolation": "one process per system, same environment; rounds alternate, one system running at a time",
         "versions": {**q_info["versions"], **st_info["versions"]},
         "setup": {"model": "all-MiniLM-L6-v2 + new one-logit head", "data": args.data or "demo (test qrels)",
                   "judged_pairs": q_info["examples"], "batch_judged_pairs": args.batch,
                   "negatives": "the next example's document, 1 per judged pair", "doc_len": args.doc_len,
                   "dtype": "float32", "dropout": False, "qgjax_shapes_compiled": q_info["shapes"],
                   "qgjax_compile_s": round(q_info["compile_s"], 1)},
         "rounds": res, "judged_pairs_per_s": rate,
         "ratio": round(rate["qgjax"] / rate["sentence_transformers"], 2),
         "load_avg": {"start": load_start, "end": load_avg()}}
  write_result(args.out, out, {"ratio": out["ratio"], "judged_pairs_per_s": rate})
  return 0


if __name__ == "__main__":
  sys.exit(main())
