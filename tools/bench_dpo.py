"""qgjax's DPO train step against TRL's DPOTrainer (PyTorch, CPU) on the same model, data and batch.

  python tools/bench_dpo.py                         # 4 pairs/step, 6 timed steps, NFCorpus documents
  python tools/bench_dpo.py --batch 8 --steps 10 --max-doc-tokens 128

Model: SmolLM2-135M-Instruct (the offline GGUF dequantised by qgjax and exported once as an HF
safetensors directory, which TRL then loads with transformers: identical f32 weights on both
sides), full fine-tuning (every weight trains), AdamW, lr 5e-6, beta 0.1, sigmoid loss, grad
clip 1.0, f32, no dropout, no activation checkpointing on either side (TRL's default
gradient_checkpointing=True is turned off so both do the same arithmetic).
Data: preference pairs over ../shared/data/nfcorpus (fallback: the shipped demo collection):
for each judged (query, document) pair of the train qrels, chosen = the judged query, rejected =
a query judged for another document. The prompt is the plain query-generation chat prompt of
`qgjax generate` (document cut to --max-doc-tokens), given to both systems as the same finished
prompt text; completions end with EOS.
Reference log-probs: both precompute them before training (qgjax: dpo.reference=precomputed;
TRL: precompute_ref_log_probs=True), so the timed steps hold one policy model. The two passes
are compared pair by pair (`ref_logp_max_abs_diff`): the same numbers from two implementations.
Timing: both warm up (qgjax compiles; TRL runs --warmup steps), then the steps run interleaved
(qgjax step i, TRL step i, alternating who goes first) so both see the same machine load; examples/s = pairs / summed
step time. TRL's step is its own `training_step` (forward of [chosen; rejected] rows each with
the full prompt, backward) + clip + AdamW + scheduler, as `Trainer.train` runs it. qgjax's is
`qgjax.train.step.make_train_step` over `lm_tasks.dpo_loss_fn` (prompt once per pair via the KV
cache, vocabulary projection only on completion positions).
Writes tools/results/bench_dpo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from bench_common import load_avg, machine  # noqa: E402


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=4, help="preference pairs per step (both systems)")
  p.add_argument("--steps", type=int, default=6, help="timed steps per system")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps per system first")
  p.add_argument("--pairs", type=int, default=64, help="pairs in the data set")
  p.add_argument("--max-doc-tokens", type=int, default=96)
  p.add_argument("--lr", type=float, default=5e-6)
  p.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "nfcorpus"))
  p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "qgjax_bench_dpo"))
  p.add_argument("--out", default=os.path.join(ROOT, "tools", "results", "bench_dpo.json"))
  return p.parse_args()


def build_pairs(data_dir: str, n: int, tokenizer, max_doc_tokens: int) -> list[dict]:
  """[{prompt (finished chat prompt text), chosen, rejected, doc_id}] from judged train/test qrels."""
  from qgjax.data.beir import load_beir
  from qgjax.sampling.prompts import PromptBuilder, default_prompt_config
  from qgjax.train.demo import DEMO_BEIR

  if not os.path.isdir(data_dir):
    data_dir = DEMO_BEIR
  split = "train" if os.path.isfile(os.path.join(data_dir, "qrels", "train.tsv")) else "test"
  data = load_beir(data_dir, split)
  cfg = default_prompt_config("plain")
  cfg.max_doc_tokens = max_doc_tokens
  builder = PromptBuilder(cfg, tokenizer)
  qids = sorted(data.qrels)
  rng = np.random.default_rng(0)
  pairs, used_docs = [], set()
  for i in rng.permutation(len(qids)):
    qid = qids[i]
    doc_id = sorted(d for d, g in data.qrels[qid].items() if g > 0)[0] if data.qrels[qid] else None
    if doc_id is None or doc_id in used_docs:
      continue
    other = qids[(i + 1 + rng.integers(len(qids) - 1)) % len(qids)]
    if doc_id in data.qrels[other]:
      continue
    used_docs.add(doc_id)
    prompt = tokenizer.decode(builder.document_prompt(data.corpus[doc_id].contents))
    pairs.append({"doc_id": doc_id, "prompt": prompt, "chosen": data.queries[qid], "rejected": data.queries[other]})
    if len(pairs) == n:
      break
  return pairs, data_dir


def export_model(workdir: str) -> str:
  """SmolLM2 GGUF -> HF safetensors (f32) once; both systems load this directory."""
  from qgjax.models.registry import load_decoder, save_decoder_hf

  out = os.path.join(workdir, "smollm2_hf")
  if not os.path.isfile(os.path.join(out, "config.json")):
    model, params, tok = load_decoder("smollm2-135m-instruct", dtype="float32")
    save_decoder_hf(params, model.config, tok, out)
  return out


class QgjaxDPO:
  """The library's DPO step on one device, set up as `qgjax train` sets it up."""

  def __init__(self, model_dir: str, pairs_file: str, args):
    import jax

    from qgjax.config import build_config
    from qgjax.parallel.mesh import make_mesh
    from qgjax.parallel.sharding import put_batch, rules_for
    from qgjax.train import lm_tasks
    from qgjax.train.optim import make_optimizer
    from qgjax.train.step import create_state, make_train_step, state_shardings

    c = build_config(os.path.join(ROOT, "configs", "dpo.py") + ":lora=false", [])
    c.model.name = model_dir
    c.data.train = pairs_file
    c.data.eval_fraction = 0.0
    c.data.prompt_buckets = (64, 96, 128, 160, 192, 256, 320)
    c.data.completion_buckets = (16, 24, 32, 48)
    c.batch_size = args.batch
    c.workdir = os.path.join(args.workdir, "qgjax_run")
    c.optim.lr, c.optim.warmup_steps, c.optim.schedule, c.optim.grad_clip = args.lr, 0, "constant", 1.0
    c.mesh = [("data", 1)]
    c.num_devices = 1
    self.config = c
    t0 = time.perf_counter()
    self.setup = lm_tasks.setup_dpo(c, sft_weight=0.0)        # includes the reference pass
    self.reference_seconds = time.perf_counter() - t0
    self.mesh = make_mesh(c.mesh, jax.devices()[:1])
    self.rules = rules_for(self.mesh)
    tx, sched = make_optimizer(c.optim, 1000)
    shard = state_shardings(self.setup.abstract_trainable, self.setup.abstract_frozen, tx, self.mesh, self.rules)
    self.state = create_state(self.setup.trainable, self.setup.frozen, shard, tx, self.mesh, self.rules)
    self.put = lambda b: put_batch(b, self.mesh, self.rules)
    loader = self.setup.train
    self.step_fn = make_train_step(self.setup.loss_fn, tx, sched, mesh=self.mesh, rules=self.rules, shardings=shard,
                                   example_batch=loader.batch(0))
    self.loader, self.i = loader, 0
    self.tokens = []

  def warmup(self):
    """Compiles the step for every batch shape of the epoch (static shapes: a few buckets)."""
    import jax

    shapes = {}
    for s in range(self.loader.steps_per_epoch):
      b = self.loader.batch(s)
      shapes.setdefault((b["prompt"].shape, b["chosen"].shape), s)
    for s in shapes.values():
      self.state, m = self.step_fn(self.state, self.put(self.loader.batch(s)))
      jax.block_until_ready(m)
    return len(shapes)

  def step(self) -> tuple[float, dict]:
    import jax

    host = self.loader.batch(self.i)
    self.i += 1
    t0 = time.perf_counter()
    self.state, m = self.step_fn(self.state, self.put(host))
    m = jax.device_get(m)
    dt = time.perf_counter() - t0
    self.tokens.append(int(host["prompt_mask"].sum() + host["chosen_mask"].sum() + host["rejected_mask"].sum()))
    return dt, {k: float(v) for k, v in m.items()}

  def reference_logps(self) -> dict[str, tuple[float, float]]:
    from qgjax.train.examples import read_jsonl

    path = os.path.join(self.config.workdir, "pairs_with_ref.jsonl")
    return {r["doc_id"]: (r["ref_chosen"], r["ref_rejected"]) for _, r in read_jsonl(path)}


class TrlDPO:
  """TRL's DPOTrainer, stepped by hand exactly as `Trainer.train`'s inner loop does."""

  def __init__(self, model_dir: str, pairs: list[dict], args):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ds = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs])
    cfg = DPOConfig(output_dir=os.path.join(args.workdir, "trl_run"), per_device_train_batch_size=args.batch,
                    learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
                    beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True, precompute_ref_batch_size=args.batch,
                    max_length=1024, logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=True,
                    dataloader_num_workers=0, seed=0, bf16=False, fp16=False, disable_dropout=True,
                    weight_decay=0.0, max_steps=10**6, gradient_checkpointing=False)
    t0 = time.perf_counter()
    self.trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    self.reference_seconds = time.perf_counter() - t0
    tr = self.trainer
    tr.create_optimizer_and_scheduler(num_training_steps=10**6)
    tr.current_gradient_accumulation_steps = 1   # what Trainer.train sets per step without accumulation
    self.model = tr.model
    self.model.train()
    self.batches = iter(self._forever(tr.get_train_dataloader()))
    self.tokens = []
    self.tok = tok

  @staticmethod
  def _forever(loader):
    while True:
      yield from loader

  def step(self) -> tuple[float, dict]:
    import torch

    tr = self.trainer
    batch = next(self.batches)
    t0 = time.perf_counter()
    loss = tr.training_step(self.model, batch)
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), tr.args.max_grad_norm)
    tr.optimizer.step()
    tr.lr_scheduler.step()
    self.model.zero_grad()
    dt = time.perf_counter() - t0
    self.tokens.append(int(batch["attention_mask"].sum()))
    return dt, {"loss": float(loss)}

  def reference_logps(self, pairs) -> dict[str, tuple[float, float]]:
    ds = self.trainer.train_dataset
    c, r = ds["ref_chosen_logps"], ds["ref_rejected_logps"]
    return {p["doc_id"]: (float(c[i]), float(r[i])) for i, p in enumerate(pairs)}


def versions() -> dict:
  import importlib.metadata as md

  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "trl", "datasets", "accelerate"):
    try:
      out[name] = md.version(name)
    except md.PackageNotFoundError:
      out[name] = None
  return out


def main():
  args = parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  os.environ.setdefault("TQDM_DISABLE", "1")
  mach = dict(machine(), load_avg_start=load_avg())
  model_dir = export_model(args.workdir)
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(model_dir)
  pairs, data_dir = build_pairs(args.data, args.pairs, tok, args.max_doc_tokens)
  pairs_file = os.path.join(args.workdir, "pairs.jsonl")
  with open(pairs_file, "w") as f:
    for p in pairs:
      f.write(json.dumps(p) + "\n")
  ref_file = os.path.join(args.workdir, "qgjax_run", "pairs_with_ref.jsonl")
  if os.path.exists(ref_file):
    os.remove(ref_file)
  print(f"{len(pairs)} pairs from {data_dir}; model {model_dir}", flush=True)

  q = QgjaxDPO(model_dir, pairs_file, args)
  t0 = time.perf_counter()
  compiled = q.warmup()
  q_warm = time.perf_counter() - t0
  print(f"qgjax: reference pass {q.reference_seconds:.1f}s, compiled {compiled} shapes in {q_warm:.1f}s", flush=True)
  t = TrlDPO(model_dir, pairs, args)
  for _ in range(args.warmup):
    t.step()
  t.tokens.clear()
  print(f"trl: reference pass + setup {t.reference_seconds:.1f}s", flush=True)

  q_times, t_times, q_loss, t_loss = [], [], [], []
  for i in range(args.steps):
    if i % 2 == 0:   # alternate who goes first, so neither always follows the other's cache/thread state
      dq, mq = q.step()
      dt, mt = t.step()
    else:
      dt, mt = t.step()
      dq, mq = q.step()
    q_times.append(dq)
    t_times.append(dt)
    q_loss.append(mq["loss"])
    t_loss.append(mt["loss"])
    print(f"step {i}: qgjax {dq:.2f}s loss {mq['loss']:.4f} | trl {dt:.2f}s loss {mt['loss']:.4f}", flush=True)
  q_eps = args.batch * args.steps / sum(q_times)
  t_eps = args.batch * args.steps / sum(t_times)
  ref_q, ref_t = q.reference_logps(), t.reference_logps(pairs)
  diffs = [abs(a - b) for d in ref_q for a, b in zip(ref_q[d], ref_t[d])]
  result = {
      "ratio": q_eps / t_eps,
      "qgjax_examples_per_s": q_eps,
      "trl_examples_per_s": t_eps,
      "qgjax_step_seconds": q_times,
      "trl_step_seconds": t_times,
      "qgjax_losses": q_loss,
      "trl_losses": t_loss,
      "tokens_per_step": {"qgjax_real_tokens_in_batch": float(np.mean(q.tokens[-args.steps:])),
                          "trl_real_tokens_in_batch": float(np.mean(t.tokens[-args.steps:])),
                          "note": "qgjax counts each prompt once (shared by chosen and rejected); TRL's batch "
                                  "holds [prompt; chosen] and [prompt; rejected] rows"},
      "ref_logp_max_abs_diff": max(diffs),
      "ref_logp_mean_abs": float(np.mean([abs(v) for d in ref_q for v in ref_q[d]])),
      "reference_pass_seconds": {"qgjax": q.reference_seconds, "trl_incl_setup": t.reference_seconds},
      "qgjax_compile_seconds": q_warm,
      "qgjax_programs_compiled": int(q.step_fn.jitted._cache_size()),
      "settings": {"model": "SmolLM2-135M-Instruct (GGUF -> f32 safetensors)", "mode": "full fine-tuning",
                   "batch_pairs": args.batch, "timed_steps": args.steps, "warmup_steps_trl": args.warmup,
                   "pairs": len(pairs), "data": data_dir, "max_doc_tokens": args.max_doc_tokens, "lr": args.lr,
                   "beta": 0.1, "loss": "sigmoid", "precision": "float32", "reference": "precomputed (both)",
                   "device": "cpu"},
      "machine": dict(mach, load_avg_end=load_avg()),
      "versions": versions(),
      "command": " ".join(["python", "tools/bench_dpo.py"] + sys.argv[1:]),
  }
  try:
    result["git_commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                                          text=True).stdout.strip()
  except OSError:
    pass
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"qgjax {q_eps:.3f} examples/s, TRL {t_eps:.3f} examples/s, ratio {q_eps / t_eps:.2f}x "
        f"(reference log-probs agree to {max(diffs):.2e}); wrote {args.out}")


if __name__ == "__main__":
  main()
