"""Scaling check: generation, DPO and InfoNCE throughput at 1, 2, 4, 8 simulated CPU devices.

  python tools/bench_scaling.py                          # tiny models, ~4 min on 2 busy cores
  python tools/bench_scaling.py --preset small --steps 5 # wider/deeper random models
  python tools/bench_scaling.py --counts 1,8 --no-write  # quick look, results not saved
  python tools/bench_scaling.py --projection             # only (re)write tools/results/scaling_projection.md

Each device count runs in a fresh subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N
(a mesh of N "data" devices over the same CPU cores): this is a correctness and overhead check,
not a speed-up measurement. Every count must give the same generated tokens and the same
losses (to 1e-5): the sharded programs (batch split N ways, gradient all-reduce, InfoNCE's
all-gather of the global batch) compute what one device computes. Throughput at 8 devices over
1 device (`ratio`) then measures what the partitioning and collectives cost on shared cores.

Workloads (random weights, fixed seeds; no files read):
  generate  qgjax.sampling.engine.Sampler over a Llama-style DecoderLM: `--gen-batch` prompts of
            `--prompt-len` tokens, `--samples` samples each, `--new-tokens` tokens (no EOS stop);
            figure: generated tokens/s.
  dpo       qgjax's jitted `train_step` with the DPO loss (LoRA, reference = adapters off) on the
            same decoder; `--train-batch` pairs per step; figure: pairs/s.
  infonce   the retriever step (shared BERT tower, InfoNCE over the global batch + 1 mined
            negative); `--train-batch` queries per step; figure: queries/s.

Writes tools/results/bench_scaling.json (machine, versions, command, settings, per-count
figures, `ratio`) and prints a table. The TPU / GPU projection for 100M documents is in
tools/results/scaling_projection.md (written by `--projection`, from `projection()` below).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "tools", "results")
sys.path.insert(0, REPO)

PRESETS = {  # decoder (hidden, layers, heads, kv_heads, vocab), encoder (hidden, layers, heads, vocab)
    "tiny": dict(dec=(64, 2, 4, 2, 512), enc=(64, 2, 4, 1024)),
    "small": dict(dec=(256, 4, 8, 4, 4096), enc=(256, 4, 8, 8192)),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--counts", default="1,2,4,8", help="device counts, comma separated")
  p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
  p.add_argument("--gen-batch", type=int, default=16, help="prompts per generate call (a multiple of 8)")
  p.add_argument("--prompt-len", type=int, default=32)
  p.add_argument("--samples", type=int, default=2)
  p.add_argument("--new-tokens", type=int, default=16)
  p.add_argument("--train-batch", type=int, default=16, help="pairs / queries per train step (a multiple of 8)")
  p.add_argument("--seq-len", type=int, default=32, help="DPO completion / InfoNCE text length")
  p.add_argument("--steps", type=int, default=16, help="timed repetitions per workload (after compiling)")
  p.add_argument("--timeout", type=int, default=300, help="seconds per device count")
  p.add_argument("--out", default=os.path.join(RESULTS, "bench_scaling.json"))
  p.add_argument("--no-write", action="store_true")
  p.add_argument("--projection", action="store_true", help="only write tools/results/scaling_projection.md")
  p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--worker-out", default="", help=argparse.SUPPRESS)
  return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# Worker: one device count, in its own process.

def _digest(*arrays) -> str:
  import numpy as np

  h = hashlib.sha1()
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def _decoder(args):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from qgjax.models.decoder import DecoderConfig, DecoderLM

  d, layers, heads, kv, vocab = PRESETS[args.preset]["dec"]
  cfg = DecoderConfig(vocab_size=vocab, hidden_size=d, intermediate_size=4 * d, num_layers=layers,
                      num_heads=heads, num_kv_heads=kv, head_dim=d // heads)
  module = DecoderLM(cfg)
  init_args = (jax.random.key(0), jnp.ones((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32))
  abstract = jax.eval_shape(module.init, *init_args)["params"]
  return module, random_params(nn.unbox(abstract), 0), abstract


def random_params(abstract, seed: int):
  """Numpy weights for an abstract tree (no compiled init): norm scales 1, biases 0, else N(0, 0.05)."""
  import jax
  import numpy as np

  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = jax.tree_util.keystr(path).lower()
    if "norm" in name and "scale" in name or name.endswith("['scale']"):
      return np.ones(leaf.shape, leaf.dtype)
    if "bias" in name:
      return np.zeros(leaf.shape, leaf.dtype)
    return (0.05 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(make, abstract)


def _timed(fn, steps: int) -> tuple[float, list]:
  """fn(i) -> host result; the first call compiles (untimed); -> (median seconds per call, results).

  The median, not the mean: the cores are shared, and a stray busy second should not move it."""
  import numpy as np

  outs, times = [fn(0)], []
  for i in range(1, steps + 1):
    t0 = time.perf_counter()
    outs.append(fn(i))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), outs


def bench_generate(args, module, params, mesh) -> dict:
  import numpy as np

  from qgjax.sampling.engine import Sampler
  from qgjax.sampling.logits import SamplingParams

  sp = SamplingParams(max_new_tokens=args.new_tokens, num_samples=args.samples, temperature=1.0, top_k=50,
                      top_p=0.95, eos_token_ids=(), pad_token_id=0)
  sampler = Sampler.for_decoder(module, params, sp, batch_size=args.gen_batch, seed=0, mesh=mesh)
  rng = np.random.default_rng(0)
  vocab = module.config.vocab_size
  prompts = [rng.integers(1, vocab, rng.integers(args.prompt_len // 2, args.prompt_len + 1)).tolist()
             for _ in range(args.gen_batch)]
  ids = [f"doc-{i}" for i in range(args.gen_batch)]
  sec, outs = _timed(lambda i: sampler.run(prompts, ids, args.prompt_len, seed=i % 2), args.steps)
  tokens = args.gen_batch * args.samples * args.new_tokens
  return {"tokens_per_s": tokens / sec, "seconds_per_call": sec, "compiles": sampler.num_compiles,
          "digest": _digest(outs[0].tokens, outs[1].tokens),
          "logprob_sum": float(np.sum(outs[0].logprobs))}


def _train(loss_fn, trainable, frozen, abstract_trainable, abstract_frozen, batches, mesh, steps: int) -> dict:
  import jax

  from qgjax.config import build_config
  from qgjax.parallel import sharding
  from qgjax.train.optim import make_optimizer
  from qgjax.train.step import create_state, make_train_step, state_shardings

  rules = sharding.rules_for(mesh)
  optim = build_config(os.path.join(REPO, "configs", "dpo.py")).optim
  optim.update(lr=1e-3, warmup_steps=0, schedule="constant", grad_clip=1.0)
  tx, sched = make_optimizer(optim, 100)
  shard = state_shardings(abstract_trainable, abstract_frozen, tx, mesh, rules)
  state = create_state(trainable, frozen, shard, tx, mesh, rules)
  step = make_train_step(loss_fn, tx, sched, mesh=mesh, rules=rules, shardings=shard, example_batch=batches[0])
  box = {"state": state}

  def run(i):
    box["state"], m = step(box["state"], sharding.put_batch(batches[i % len(batches)], mesh, rules))
    return float(jax.device_get(m["loss"]))

  sec, losses = _timed(run, steps)
  return {"seconds_per_step": sec, "losses": losses}


def bench_dpo(args, module, params, abstract, mesh) -> dict:
  import jax
  import numpy as np

  from qgjax.config import build_config
  from qgjax.models.lora import LoraConfig, init_lora
  from qgjax.train import lm_tasks
  from qgjax.train.generator import Generator, _abstract_adapters

  spec = LoraConfig(rank=8, alpha=16.0, targets="q_proj|v_proj|up_proj")
  lora = jax.device_get(init_lora(jax.random.key(1), params, spec))
  lora = jax.tree.map(lambda x: x + 0.02 * np.random.default_rng(x.size).standard_normal(x.shape).astype(x.dtype), lora)
  gen = Generator(module, None, lora, params, _abstract_adapters(lora, abstract), abstract, "lora", spec)
  rng = np.random.default_rng(0)
  b, tp, tc, vocab = args.train_batch, args.prompt_len, args.seq_len, module.config.vocab_size
  batches = []
  for _ in range(2):
    pm = np.arange(tp)[None] >= rng.integers(0, tp // 2, (b, 1))                       # left padding
    cm, rm = (np.arange(tc)[None] < rng.integers(2, tc + 1, (b, 1)) for _ in range(2))
    batches.append({"prompt": rng.integers(1, vocab, (b, tp)).astype(np.int32), "prompt_mask": pm,
                    "chosen": rng.integers(1, vocab, (b, tc)).astype(np.int32), "chosen_mask": cm,
                    "rejected": rng.integers(1, vocab, (b, tc)).astype(np.int32), "rejected_mask": rm,
                    "weight": np.ones(b, np.float32)})
  dpo = build_config(os.path.join(REPO, "configs", "dpo.py")).dpo
  dpo.update(beta=0.5, reference="adapters_off", share_prompt=True)
  out = _train(lm_tasks.dpo_loss_fn(gen, dpo), gen.trainable, gen.frozen, gen.abstract_trainable,
               gen.abstract_frozen, batches, mesh, args.steps)
  return {"pairs_per_s": b / out["seconds_per_step"], **out}


def bench_infonce(args, mesh) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np

  from qgjax.models.bert import BiEncoder, EncoderConfig
  from qgjax.train.infonce import Towers, retriever_loss_fn

  d, layers, heads, vocab = PRESETS[args.preset]["enc"]
  cfg = EncoderConfig(vocab_size=vocab, hidden_size=d, num_layers=layers, num_heads=heads, intermediate_size=4 * d,
                      max_position_embeddings=max(64, 2 * args.seq_len))
  module = BiEncoder(cfg, pooling="mean", normalize=True)
  abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), bool))
  params = random_params(nn.unbox(abstract["params"]), 1)
  rng = np.random.default_rng(0)
  b, t = args.train_batch, args.seq_len
  batches = []
  for _ in range(2):
    batch = {"weight": np.ones(b, np.float32), "pos_key": np.arange(b, dtype=np.float32),
             "neg0_key": 1000 + np.arange(b, dtype=np.float32)}
    for name, length in (("query", t // 2), ("pos", t), ("neg0", t)):
      batch[name] = rng.integers(1, vocab, (b, length)).astype(np.int32)
      batch[name + "_mask"] = np.arange(length)[None] < rng.integers(2, length + 1, (b, 1))
    batches.append(batch)
  loss_fn = retriever_loss_fn(Towers(module, shared=True), 1, 0.05)
  out = _train(loss_fn, {"query": params}, {}, {"query": abstract["params"]}, {}, batches, mesh, args.steps)
  return {"queries_per_s": b / out["seconds_per_step"], **out}


def worker(args) -> dict:
  import jax

  from qgjax.parallel.mesh import make_mesh

  assert jax.device_count() == args.worker, (jax.device_count(), args.worker)
  mesh = make_mesh([("data", -1)])
  module, params, abstract = _decoder(args)
  out = {"devices": jax.device_count()}
  for name, fn in (("generate", lambda: bench_generate(args, module, params, mesh)),
                   ("dpo", lambda: bench_dpo(args, module, params, abstract, mesh)),
                   ("infonce", lambda: bench_infonce(args, mesh))):
    t0 = time.perf_counter()
    out[name] = fn()
    out[name]["wall_s"] = round(time.perf_counter() - t0, 2)
  return out


# ------------------------------------------------------------------------------------------------
# Driver: one subprocess per device count.

def run_count(n: int, argv: list[str], timeout: int) -> dict:
  """Runs the worker with N simulated devices; the child is always killed on timeout/failure."""
  with tempfile.TemporaryDirectory() as tmp:
    out_path = os.path.join(tmp, "out.json")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", str(n), "--worker-out", out_path]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
      log, _ = proc.communicate(timeout=timeout)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.returncode != 0 or not os.path.isfile(out_path):
      raise RuntimeError(f"{n} devices: worker exited with {proc.returncode}:\n{(log or '')[-3000:]}")
    with open(out_path) as f:
      return json.load(f)


def check_same(results: dict[int, dict]) -> dict:
  """Outputs and losses equal at every device count (generated tokens exactly, losses to 1e-5)."""
  import numpy as np

  base = results[min(results)]
  checks = {}
  for n, r in results.items():
    checks[n] = {
        "generate_tokens_equal": r["generate"]["digest"] == base["generate"]["digest"],
        "generate_logprob_diff": abs(r["generate"]["logprob_sum"] - base["generate"]["logprob_sum"]),
        "dpo_loss_max_diff": float(np.max(np.abs(np.subtract(r["dpo"]["losses"], base["dpo"]["losses"])))),
        "infonce_loss_max_diff": float(np.max(np.abs(np.subtract(r["infonce"]["losses"], base["infonce"]["losses"])))),
    }
    c = checks[n]
    c["ok"] = bool(c["generate_tokens_equal"] and c["dpo_loss_max_diff"] < 1e-5 and c["infonce_loss_max_diff"] < 1e-5)
  return checks


FIGURES = (("generate", "tokens_per_s", "gen tokens/s"), ("dpo", "pairs_per_s", "DPO pairs/s"),
           ("infonce", "queries_per_s", "InfoNCE queries/s"))


def table(results: dict[int, dict], checks: dict) -> str:
  head = f"{'devices':>7} " + " ".join(f"{label:>18}" for _, _, label in FIGURES) + "  same outputs"
  lines = [head, "-" * len(head)]
  for n in sorted(results):
    r = results[n]
    lines.append(f"{n:>7} " + " ".join(f"{r[w][k]:>18.1f}" for w, k, _ in FIGURES) + f"  {checks[n]['ok']}")
  return "\n".join(lines)


def versions() -> dict:
  import importlib.metadata as md

  return {p: md.version(p) for p in ("jax", "jaxlib", "flax", "optax", "numpy")}


def machine() -> dict:
  return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
          "processor": platform.processor() or platform.machine()}


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.worker:
    result = worker(args)
    with open(args.worker_out, "w") as f:
      json.dump(result, f)
    return 0
  if args.projection:
    path = os.path.join(RESULTS, "scaling_projection.md")
    measured = None
    if os.path.isfile(args.out):
      with open(args.out) as f:
        measured = json.load(f)
    with open(path, "w") as f:
      f.write(projection_markdown(measured))
    print(f"wrote {path}")
    return 0
  raw = sys.argv[1:] if argv is None else list(argv)
  child_argv = [a for a in raw if a != "--no-write"]
  counts = [int(c) for c in args.counts.split(",")]
  for n in counts:
    if args.gen_batch % n or args.train_batch % n:
      raise SystemExit(f"--gen-batch and --train-batch must divide by every device count ({n})")
  results = {}
  for n in counts:
    t0 = time.perf_counter()
    results[n] = run_count(n, child_argv, args.timeout)
    print(f"{n} devices done in {time.perf_counter() - t0:.0f} s", flush=True)
  checks = check_same(results)
  print(table(results, checks))
  lo, hi = min(counts), max(counts)
  ratio = {w: results[hi][w][k] / results[lo][w][k] for w, k, _ in FIGURES}
  print(f"ratio ({hi} devices / {lo} device): " + ", ".join(f"{w} {v:.2f}" for w, v in ratio.items()))
  report = {"tool": "tools/bench_scaling.py", "command": "python tools/bench_scaling.py " + " ".join(raw),
            "machine": machine(), "versions": versions(),
            "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "worker_out", "out", "no_write")},
            "models": PRESETS[args.preset],
            "note": ("simulated CPU devices share the same cores: a correctness and overhead check, "
                     "not a speed-up; ratio = throughput at the largest count / the smallest"),
            "per_count": {str(n): results[n] for n in counts}, "checks": {str(n): c for n, c in checks.items()},
            "ratio": ratio, "ratio_counts": [hi, lo]}
  if not args.no_write:
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)
    print(f"wrote {args.out}")
  return 0 if all(c["ok"] for c in checks.values()) else 1


# ------------------------------------------------------------------------------------------------
# Projection: 100M documents x 5 queries, SmolLM2-135M generation + MiniLM cross-encoder scoring.

# Published per-chip figures (dense bf16 peak, HBM bandwidth, interconnect per chip) and list prices.
CHIPS = {
    "v5e": dict(peak=197e12, hbm=819e9, hbm_gb=16, link=200e9, count=64, usd_per_chip_h=1.20,
                system="TPU v5e-64 (v5litepod-64, 16 hosts x 4 chips)", link_name="ICI 1,600 Gbit/s"),
    "h100": dict(peak=989e12, hbm=3.35e12, hbm_gb=80, link=450e9, count=8, usd_per_chip_h=3.00,
                 system="8x H100 SXM (one host, NVLink)", link_name="NVLink 900 GB/s bidir."),
}
# SmolLM2-135M (Llama): 30 layers, d=576, 9 heads / 3 kv heads of 64, MLP 1536, vocab 49152, tied head.
SMOL = dict(layers=30, d=576, kv_heads=3, head_dim=64, mlp=1536, vocab=49152)
# MiniLM-L6-H384 cross-encoder (ms-marco-MiniLM-L-6-v2 shape): 6 layers, d=384, MLP 1536.
MINILM = dict(layers=6, d=384, mlp=1536, vocab=30522)
WORK = dict(docs=100e6, queries_per_doc=5, prompt_tokens=300, decode_steps=24, pair_tokens=288,
            docs_per_chip_batch=512)
# Assumed efficiency against the roofline (not measured here): prefill and encoder matmuls reach
# these fractions of peak FLOP/s (576- and 384-wide matrices, head_dim 64 / 32), decode this
# fraction of HBM bandwidth.
EFF = dict(prefill=0.45, decode_bw=0.60, encoder=0.35)


def _smol_counts() -> dict:
  m = SMOL
  d, kv = m["d"], m["kv_heads"] * m["head_dim"]
  per_layer = 2 * d * d + 2 * d * kv + 3 * d * m["mlp"]
  body, embed = m["layers"] * per_layer, m["vocab"] * d
  return dict(body=body, embed=embed, params=body + embed, kv_bytes_per_token=2 * m["layers"] * kv * 2)


def projection() -> dict:
  """Per-chip and per-system time and cost for 100M docs x 5 queries: generate + cross-encoder score."""
  w, s, c = WORK, _smol_counts(), MINILM
  n, attn = w["queries_per_doc"], 4 * SMOL["layers"] * SMOL["d"]            # attention FLOPs per token per ctx
  prefill_flops = w["prompt_tokens"] * (2 * s["body"] + attn * w["prompt_tokens"] / 2)
  decode_flops = n * w["decode_steps"] * (2 * s["params"] + attn * (w["prompt_tokens"] + w["decode_steps"]))
  # bytes per decode step per document (bf16): the shared prompt KV once (qgjax's shared-prefix
  # path), each sample's own KV (on average half the steps), and the weights over the batch.
  kv_doc = (w["prompt_tokens"] + n * w["decode_steps"] / 2) * s["kv_bytes_per_token"]
  weights = 2 * s["params"]
  decode_bytes = w["decode_steps"] * (kv_doc + weights / w["docs_per_chip_batch"])
  step_intensity = (n * (2 * s["params"] + attn * w["prompt_tokens"])) / (kv_doc + weights / w["docs_per_chip_batch"])
  enc_body = c["layers"] * (4 * c["d"] ** 2 + 2 * c["d"] * c["mlp"])
  pair_flops = w["pair_tokens"] * (2 * enc_body + 4 * c["layers"] * c["d"] * w["pair_tokens"])
  score_flops = n * pair_flops
  out = {"model": {"smollm2_params": s["params"], "smollm2_body": s["body"], "kv_bytes_per_token": s["kv_bytes_per_token"],
                   "minilm_body_params": enc_body},
         "per_doc": {"prefill_flops": prefill_flops, "decode_flops": decode_flops, "decode_bytes": decode_bytes,
                     "decode_flops_per_byte": step_intensity, "score_flops": score_flops},
         "work": w, "efficiency": EFF, "systems": {}}
  for name, chip in CHIPS.items():
    ridge = chip["peak"] / chip["hbm"]
    t_prefill = prefill_flops / (chip["peak"] * EFF["prefill"])
    t_decode = max(decode_bytes / (chip["hbm"] * EFF["decode_bw"]), decode_flops / (chip["peak"] * EFF["prefill"]))
    t_score = score_flops / (chip["peak"] * EFF["encoder"])
    t_doc = t_prefill + t_decode + t_score
    roof = (prefill_flops / chip["peak"] + max(decode_bytes / chip["hbm"], decode_flops / chip["peak"])
            + score_flops / chip["peak"])
    docs_s = chip["count"] / t_doc
    hours = w["docs"] / docs_s / 3600
    out["systems"][name] = {
        "system": chip["system"], "chips": chip["count"], "ridge_flops_per_byte": ridge,
        "ms_per_doc_per_chip": {"prefill": 1e3 * t_prefill, "decode": 1e3 * t_decode, "score": 1e3 * t_score,
                                "total": 1e3 * t_doc, "roofline_total": 1e3 * roof},
        "docs_per_s": docs_s, "hours": hours, "chip_hours": hours * chip["count"],
        "usd": hours * chip["count"] * chip["usd_per_chip_h"], "usd_per_chip_h": chip["usd_per_chip_h"],
        "kv_gb_per_batch": w["docs_per_chip_batch"] * (w["prompt_tokens"] + n * 32) * s["kv_bytes_per_token"] / 1e9}
  return out


def projection_markdown(measured: dict | None = None) -> str:
  p = projection()
  w, pd, m = p["work"], p["per_doc"], p["model"]
  g = lambda x: f"{x / 1e9:.1f}"
  lines = [
      "# Scaling projection: 100M documents x 5 queries (generate with SmolLM2-135M, score with a MiniLM cross-encoder)",
      "",
      "Written by `python tools/bench_scaling.py --projection` (numbers from `projection()` in that file;",
      "change the assumptions there, not here). Roofline model: published per-chip peaks, bytes and FLOPs",
      "counted per document, an explicit efficiency factor per phase. Nothing below ran on a TPU or GPU.",
      "",
      "## What one document costs",
      "",
      f"Assumptions: prompt {w['prompt_tokens']} tokens (plain prompt + a document cut at 256 tokens), "
      f"{w['queries_per_doc']} samples sharing it, {w['decode_steps']} decode steps per batch (queries of ~16 tokens, "
      f"max_new_tokens=32, a batch stops when all rows have), cross-encoder input {w['pair_tokens']} tokens "
      f"(query + document), bf16 weights and KV cache, {w['docs_per_chip_batch']} documents "
      f"({w['docs_per_chip_batch'] * w['queries_per_doc']} rows) per chip per batch.",
      "",
      f"- SmolLM2-135M: {m['smollm2_params'] / 1e6:.1f}M parameters ({m['smollm2_body'] / 1e6:.1f}M outside the "
      f"tied embedding); KV cache {m['kv_bytes_per_token']:,} bytes per token (30 layers x 2 x 3 kv heads x 64 x 2 B).",
      f"- Prefill: {g(pd['prefill_flops'])} GFLOP per document (2 x body params x tokens + attention): compute bound.",
      f"- Decode: {g(pd['decode_flops'])} GFLOP and {pd['decode_bytes'] / 1e6:.0f} MB of HBM reads per document. Per "
      f"step and document the chip reads the shared prompt KV once ({w['prompt_tokens']} x 23 KB = 6.9 MB), each "
      f"sample's own KV, and 1/{w['docs_per_chip_batch']} of the 269 MB of weights: "
      f"{pd['decode_flops_per_byte']:.0f} FLOP/byte, below the ridge points (v5e "
      f"{p['systems']['v5e']['ridge_flops_per_byte']:.0f}, H100 {p['systems']['h100']['ridge_flops_per_byte']:.0f}): "
      "**decode is memory-bandwidth bound**, and the bytes are the prompt's KV cache, not the weights. Without "
      "qgjax's shared-prefix path every sample would read its own copy of the prompt KV: about 5x the bytes.",
      f"- Scoring: 5 pairs x {g(pd['score_flops'] / 5)} GFLOP = {g(pd['score_flops'])} GFLOP per document "
      f"(MiniLM-L6: {m['minilm_body_params'] / 1e6:.1f}M parameters outside the embeddings): compute bound.",
      "",
      f"Efficiency assumed: prefill {EFF['prefill']:.0%} of peak FLOP/s, decode {EFF['decode_bw']:.0%} of HBM "
      f"bandwidth, encoder {EFF['encoder']:.0%} of peak (384-wide matrices, 32-wide heads fill the MXU / tensor "
      "cores poorly). Roofline = 100% of each.",
      "",
      "## Throughput and cost",
      "",
      "| system | ms/doc/chip prefill | decode | score | total (roofline) | docs/s | wall time | chip-hours | cost |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, r in p["systems"].items():
    t = r["ms_per_doc_per_chip"]
    lines.append(f"| {r['system']} | {t['prefill']:.3f} | {t['decode']:.3f} | {t['score']:.3f} | "
                 f"{t['total']:.2f} ({t['roofline_total']:.2f}) | {r['docs_per_s']:,.0f} | {r['hours']:.2f} h | "
                 f"{r['chip_hours']:.0f} | ${r['usd']:,.0f} at ${r['usd_per_chip_h']:.2f}/chip-h |")
  v5e, h100 = p["systems"]["v5e"], p["systems"]["h100"]
  lines += [
      "",
      f"KV cache per chip batch: {v5e['kv_gb_per_batch']:.1f} GB (prompt + 5 x 32 generated tokens x 512 documents), "
      f"inside v5e's 16 GB with the 0.27 GB of weights; an H100 (80 GB) can hold 4-5x larger batches, which "
      "changes little: the weights are already a small share of the decode bytes.",
      "",
      "Prices: v5e $1.20 per chip-hour on demand (Cloud TPU list price; about $0.54 with a 3-year commitment); "
      "H100 $3.00 per GPU-hour (a mid-range of 2024-25 cloud prices, $2-4 at GPU clouds, more at hyperscalers "
      "on demand). Scale the cost columns linearly with your price.",
      "",
      "## Collectives per step",
      "",
      "- Generation and scoring: none. Parameters are replicated on every chip (269 MB + 45 MB in bf16), each "
      "process samples and scores its own documents (`qgjax generate` splits the corpus i, i+P, ...; records go "
      "to `process-<i>` parts). Throughput scales linearly with chips until the hosts cannot feed them.",
      "- DPO with LoRA rank 8 on all projections: 2.4M adapter parameters, a 9.8 MB f32 gradient all-reduce "
      "per step (~0.1 ms over v5e ICI at 200 GB/s per chip); full fine-tuning: 538 MB per step reduce-scattered "
      "+ all-gathered with FSDP (~5 ms on v5e ICI, ~2.4 ms on NVLink), small next to a step over a 256-pair batch.",
      "- InfoNCE: all-gather of the embeddings of the global batch (B x (2 + h) x 384 x 4 B: 19 MB for B=4096, "
      "h=1) plus the 91 MB MiniLM gradient all-reduce: ~1 ms on v5e ICI.",
      "",
      "## What limits it",
      "",
      "1. On the chip: prefill and cross-encoder FLOPs (compute bound) and the decode's HBM reads of the prompt KV "
      "(memory bound); together about "
      f"{v5e['ms_per_doc_per_chip']['total']:.1f} ms per document on a v5e chip and "
      f"{h100['ms_per_doc_per_chip']['total']:.2f} ms on an H100 at the efficiencies above. Shorter documents "
      "(MS MARCO passages of ~80 tokens) cut prefill, decode bytes and scoring roughly 3x.",
      f"2. On the host: {v5e['docs_per_s'] / 16:,.0f} documents/s per v5e host ({5 * v5e['docs_per_s'] / 16:,.0f} "
      f"records/s) and {h100['docs_per_s']:,.0f} documents/s on the H100 host must be tokenized, detokenized, "
      "post-processed and written; `qgjax generate` does this in one Python loop per process. That is a budget "
      f"of {1e6 * 16 / (5 * v5e['docs_per_s']):.0f} microseconds per record on a v5e host and "
      f"{1e6 / (5 * h100['docs_per_s']):.0f} on the H100 host: the H100 box is host-bound unless it runs "
      "one process per GPU (`launch/multi_gpu.sh --mode process-per-gpu`) and overlaps the host work with the device.",
      "3. Not a limit: collectives (none in generation and scoring) and input bytes (a 300-token prompt is 1.2 KB).",
  ]
  if measured:
    per = {int(n): r for n, r in measured["per_count"].items()}
    checks = {int(n): c for n, c in measured["checks"].items()}
    lines += ["", "## Measured here: the same work at 1-8 simulated CPU devices", "",
              f"`{measured['command'].strip()}` on {measured['machine']['cpu_count']} CPU cores "
              f"(jax {measured['versions']['jax']}); every count on the same cores, so this checks that sharding "
              "changes no result and shows what partitioning costs, not a speed-up. Other jobs shared the cores while it "
              "ran: the throughputs move by tens of percent between runs (the medians of "
              f"{measured['settings']['steps']} timed steps are shown); the equality checks do not.", "",
              "| devices | gen tokens/s | DPO pairs/s | InfoNCE queries/s | same tokens and losses |",
              "|---|---|---|---|---|"]
    for n in sorted(per):
      r = per[n]
      lines.append(f"| {n} | {r['generate']['tokens_per_s']:,.0f} | {r['dpo']['pairs_per_s']:,.1f} | "
                   f"{r['infonce']['queries_per_s']:,.1f} | {checks[n]['ok']} |")
    ratio = measured["ratio"]
    lines += ["", f"ratio (8 / 1 device): generate {ratio['generate']:.2f}, DPO {ratio['dpo']:.2f}, "
              f"InfoNCE {ratio['infonce']:.2f}. On CPU each simulated device runs its own small kernels on the "
              "same two cores: a decode step split 8 ways pays 8 launches per step for the same work, while the "
              "train steps can gain from running the per-device programs on both cores at once. Neither carries "
              "over to a TPU or GPU, where the per-chip roofline above applies; what carries over is that the "
              "sharded programs compute the same tokens and losses at every count."]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  sys.exit(main())
