"""One run that says whether qgjax works, agrees and is fast on an accelerator: writes OUT/accelerator_check.json.

  PYTHONPATH=. python tools/accelerator_check.py --out DIR            # real: SmolLM2 + MiniLM on jax.devices()[0]
  PYTHONPATH=. python tools/accelerator_check.py --out DIR --tiny     # tiny random models, CPU-sized (CI)

Run it through tools/accelerator_check.sh (wheels, time limit). Sections, each recorded with its
own "error" when it fails so one failure does not lose the rest:

  device     platform, device kind, count, jax / jaxlib / flax versions, memory
  roofline   measured bf16 / f32 matmul TFLOP/s and copy bandwidth (GB/s) of the device, and the
             data-sheet peaks when the device kind is known (H100, H200, A100)
  parity     logits of SmolLM2 (DecoderLM) and embeddings of MiniLM (BiEncoder) on the device in
             f32 (default precision and "highest") and in bf16, against the same model on the CPU
             backend in f32: max abs diff, the output's scale, top-1 agreement (decoder)
  sampling   tools/bench_sampling.py in a subprocess: qgjax's sampler against HF `generate` on
             the same device (torch cuda when there is a GPU), both from one f32 safetensors export;
             plus the fraction of the HBM roofline: one read of the weights per decode step
             (a lower bound on the bytes moved) / time / measured bandwidth
  dpo        tools/bench_dpo.py's QgjaxDPO (full fine-tuning, precomputed reference): pairs/s and
             MFU = 6 x params x real tokens per step / step time / measured f32 matmul peak
  infonce    tools/bench_infonce.py's qgjax_trainer (MiniLM, batch 32, 1 hard negative): examples/s
             and MFU with the same 6 x params x tokens count

--tiny swaps in the tiny random Llama and BERT of tests/tiny_lm.py and the shipped demo data
with small sizes (< ~60 s on 2 CPU cores); the device is then the CPU, so the f32 diffs are 0.
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
import traceback

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

# Data-sheet dense peaks: (bf16 FLOP/s, HBM bytes/s); matched by substring of device_kind.
SPEC = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12)}


def _best_time(fn, repeat: int = 5) -> float:
  fn()
  best = float("inf")
  for _ in range(repeat):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def device_info() -> dict:
  import flax
  import jax
  import jaxlib

  d = jax.devices()[0]
  out = {"platform": d.platform, "device_kind": d.device_kind, "device_count": jax.device_count(),
         "python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
         "flax": flax.__version__}
  try:
    stats = d.memory_stats() or {}
    out["memory_bytes_limit"] = stats.get("bytes_limit")
  except Exception:  # noqa: BLE001  (CPU devices have no memory stats)
    pass
  return out


def roofline(tiny: bool) -> dict:
  """Measured matmul peaks (TFLOP/s) and copy bandwidth (GB/s) of jax.devices()[0]."""
  import jax
  import jax.numpy as jnp

  on_cpu = jax.devices()[0].platform == "cpu"
  n = 512 if tiny else (2048 if on_cpu else 8192)
  out = {"matmul_n": n}
  for name, dt in (("bf16", jnp.bfloat16), ("f32", jnp.float32)):
    a = jax.random.normal(jax.random.key(0), (n, n), dt)
    f = jax.jit(jnp.matmul)
    out[f"matmul_{name}_tflop_s"] = 2 * n**3 / _best_time(lambda: f(a, a).block_until_ready()) / 1e12
  size = (4 << 20) if tiny or on_cpu else (256 << 20)  # f32 elements: 16 MiB / 1 GiB
  x = jnp.ones((size,), jnp.float32)
  g = jax.jit(lambda v: v * 2.0)
  out["copy_gb_s"] = 2 * 4 * size / _best_time(lambda: g(x).block_until_ready()) / 1e9
  kind = jax.devices()[0].device_kind
  for key, (flops, bw) in SPEC.items():
    if key in kind:
      out.update(spec_bf16_tflop_s=flops / 1e12, spec_hbm_gb_s=bw / 1e9)
  return out


def _max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _on_devices(fn, params, *args):
  """fn(params, *args) jitted on jax.devices()[0] and on the CPU backend (f32 params there)."""
  import jax

  cpu = jax.devices("cpu")[0]
  dev = jax.devices()[0]
  run = lambda d, p: np.asarray(jax.jit(fn)(jax.device_put(p, d), *jax.device_put(args, d)))  # noqa: E731
  return run(dev, params), run(cpu, params)


def _on_device(fn, params, *args):
  """fn(params, *args) jitted on jax.devices()[0] only: a bf16 model's "auto" attention resolves
  for the host's backend (cuDNN on a GPU host), which arrays placed on the CPU could not run."""
  import jax

  dev = jax.devices()[0]
  return np.asarray(jax.jit(fn)(jax.device_put(params, dev), *jax.device_put(args, dev)))


def _attention(config) -> str:
  """The attention implementation a model config's attention_impl resolves to on this host."""
  import jax

  from qgjax.parallel.backend import resolve_attention

  return resolve_attention(config.attention_impl, jax.default_backend(), config.dtype)


def decoder_parity(model_path: str, tok_texts: list[str]) -> dict:
  import jax
  import jax.numpy as jnp

  from qgjax.models.decoder import DecoderLM
  from qgjax.models.registry import load_decoder

  model, params, tok = load_decoder(model_path, dtype="float32")
  ids = [tok(t)["input_ids"] for t in tok_texts]
  length = min(64, min(len(i) for i in ids)) // 2 * 2   # even: cuDNN's fused attention takes masked calls then
  tokens = np.asarray([i[:length] for i in ids], np.int32)
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape)

  def logits(m):
    return lambda p, t, pos: m.apply({"params": p}, t, pos)[0].astype(jnp.float32)

  f32, ref = _on_devices(logits(model), params, tokens, positions)
  with jax.default_matmul_precision("highest"):
    f32_hi, _ = _on_devices(logits(model), params, tokens, positions)
  bf = DecoderLM(model.config.replace(dtype="bfloat16", param_dtype="bfloat16"))
  bf_params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), params)
  bf16 = _on_device(logits(bf), bf_params, tokens, positions)
  return {"model": model_path, "tokens": list(tokens.shape), "logits_abs_max": float(np.abs(ref).max()),
          "max_abs_diff_f32": _max_abs(f32, ref), "max_abs_diff_f32_highest": _max_abs(f32_hi, ref),
          "max_abs_diff_bf16": _max_abs(bf16, ref), "attention_bf16": _attention(bf.config),
          "top1_agree_f32": float(np.mean(f32.argmax(-1) == ref.argmax(-1))),
          "top1_agree_bf16": float(np.mean(bf16.argmax(-1) == ref.argmax(-1)))}


def encoder_parity(model_path: str, texts: list[str], max_len: int = 128) -> dict:
  import jax
  import jax.numpy as jnp

  from qgjax.models.bert import BiEncoder, load_bi_encoder

  module, params, tok, info = load_bi_encoder(model_path, dtype="float32")
  enc = tok(texts, padding=True, truncation=True, max_length=max_len, pad_to_multiple_of=8,   # even length: cuDNN
            return_tensors="np")
  tokens, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(bool)

  def embed(m):
    return lambda p, t, k: m.apply({"params": p}, t, k).astype(jnp.float32)

  f32, ref = _on_devices(embed(module), params, tokens, mask)
  with jax.default_matmul_precision("highest"):
    f32_hi, _ = _on_devices(embed(module), params, tokens, mask)
  import dataclasses
  cfg = dataclasses.replace(module.config, dtype="bfloat16", param_dtype="bfloat16")
  bf = BiEncoder(cfg, pooling=module.pooling, normalize=module.normalize)
  bf_params = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), params)
  bf16 = _on_device(embed(bf), bf_params, tokens, mask)
  return {"model": model_path, "tokens": list(tokens.shape), "embedding_abs_max": float(np.abs(ref).max()),
          "max_abs_diff_f32": _max_abs(f32, ref), "max_abs_diff_f32_highest": _max_abs(f32_hi, ref),
          "max_abs_diff_bf16": _max_abs(bf16, ref), "attention_bf16": _attention(bf.config)}


def _param_count(tree) -> int:
  import jax

  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def sampling(model_dir: str, out_dir: str, tiny: bool, roof: dict) -> dict:
  """tools/bench_sampling.py on `model_dir` (qgjax and HF generate on the same device)."""
  import jax

  out_json = os.path.join(out_dir, "bench_sampling.json")
  gpu = jax.devices()[0].platform == "gpu"
  cmd = [sys.executable, os.path.join(ROOT, "tools", "bench_sampling.py"), "--model", model_dir, "--out", out_json,
         "--hf-device", "cuda" if gpu else "cpu"]
  if tiny:
    cmd += ["--docs", "4", "--samples", "2", "--new-tokens", "8", "--batch-docs", "4", "--max-doc-tokens", "32",
            "--buckets", "64,128", "--threads", "1"]
  try:
    import torch  # noqa: F401
  except ImportError:
    cmd.append("--skip-hf")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"bench_sampling failed ({proc.returncode}): {proc.stderr[-3000:]}")
  with open(out_json) as f:
    r = json.load(f)
  s = r["settings"]
  batches = -(-s["docs"] // s["batch_docs"])
  from qgjax.models.registry import load_decoder_config
  cfg = load_decoder_config(model_dir)
  param_bytes = 4 * (cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
                     + cfg.num_layers * (2 * cfg.hidden_size * (cfg.num_heads + cfg.num_kv_heads) * cfg.head_dim
                                         + 3 * cfg.hidden_size * cfg.intermediate_size))
  seconds = s["generated_tokens"] / r["qgjax_tok_s"]  # unrounded (qgjax_s has 2 decimals)
  weight_bytes_s = batches * s["new_tokens"] * param_bytes / seconds
  useful = r["qgjax_useful_gflop_s"] * 1e9
  return {"qgjax_tok_s": r["qgjax_tok_s"], "hf_generate_tok_s": r.get("peer_tok_s"), "ratio_hf_s_over_qgjax_s": r.get("ratio"),
          "hf_device": s.get("hf_device"), "generated_tokens": s["generated_tokens"], "qgjax_s": seconds,
          "useful_tflop_s": useful / 1e12, "mfu_f32": useful / (roof["matmul_f32_tflop_s"] * 1e12),
          "weight_read_gb_s": weight_bytes_s / 1e9, "hbm_roofline_fraction": weight_bytes_s / (roof["copy_gb_s"] * 1e9),
          "report": out_json}


def dpo(model_dir: str, data_dir: str, tiny: bool, roof: dict) -> dict:
  from transformers import AutoTokenizer

  import bench_dpo

  work = tempfile.mkdtemp(prefix="qgjax_acc_dpo_")
  args = argparse.Namespace(batch=2 if tiny else 8, workdir=work, lr=5e-6)
  tok = AutoTokenizer.from_pretrained(model_dir)
  pairs, _ = bench_dpo.build_pairs(data_dir, 8 if tiny else 64, tok, 32 if tiny else 96)
  pairs_file = os.path.join(work, "pairs.jsonl")
  with open(pairs_file, "w") as f:
    for p in pairs:
      f.write(json.dumps(p) + "\n")
  q = bench_dpo.QgjaxDPO(model_dir, pairs_file, args)
  t0 = time.perf_counter()
  shapes = q.warmup()
  compile_s = time.perf_counter() - t0
  q.tokens.clear()
  times = [q.step()[0] for _ in range(3 if tiny else 8)]
  n_params = _param_count(q.state.params)
  flops = 6 * n_params * np.asarray(q.tokens, np.float64)
  return {"pairs_per_step": args.batch, "pairs_per_s": args.batch * len(times) / sum(times),
          "step_s_median": float(np.median(times)), "compiled_shapes": shapes, "compile_s": compile_s,
          "params": n_params, "tokens_per_step": float(np.mean(q.tokens)),
          "mfu_f32": float(flops.sum() / sum(times) / (roof["matmul_f32_tflop_s"] * 1e12))}


def infonce(model: str, data_dir: str, tiny: bool, roof: dict) -> dict:
  import bench_infonce

  batch, max_len, steps = (8, 32, 3) if tiny else (32, 128, 12)
  examples, data_dir = bench_infonce.build_examples(data_dir, batch * (steps + 2), 0)
  work = tempfile.mkdtemp(prefix="qgjax_acc_infonce_")
  path = os.path.join(work, "tuples.jsonl")
  with open(path, "w") as f:
    for e in examples:
      f.write(json.dumps(e) + "\n")
  overrides = [("model.name", model), ("workdir", work)]
  run, compile_shapes, loader = bench_infonce.qgjax_trainer(path, data_dir, batch, max_len, steps + 2, overrides)
  plan = list(range(1, steps + 1))
  shapes, compile_s = compile_shapes(plan)
  seconds, loss = run(plan)
  from qgjax.models.bert import load_bi_encoder
  _, params, _, _ = load_bi_encoder(model)
  n_params = _param_count(params)
  tokens = 0
  for s in plan:
    b = loader.batch(s)
    tokens += sum(int(np.asarray(v).sum()) for k, v in b.items() if k.endswith("mask"))
  return {"batch": batch, "examples_per_s": batch * steps / seconds, "step_s": seconds / steps, "loss": loss,
          "compiled_shapes": shapes, "compile_s": compile_s, "params": n_params, "tokens_per_step": tokens / steps,
          "mfu_f32": 6 * n_params * tokens / seconds / (roof["matmul_f32_tflop_s"] * 1e12)}


def _texts(data_dir: str, n: int) -> list[str]:
  from qgjax.data.beir import Corpus

  texts = []
  for doc in Corpus(os.path.join(data_dir, "corpus.jsonl")):
    texts.append(doc.contents)
    if len(texts) == n:
      break
  return texts


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True, help="folder for accelerator_check.json (and bench_sampling.json)")
  ap.add_argument("--tiny", action="store_true", help="tiny random models, demo data, CPU-sized")
  ap.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "nfcorpus"),
                  help="a BEIR folder (falls back to the shipped demo collection)")
  ap.add_argument("--sections", default="device,roofline,parity,sampling,dpo,infonce")
  args = ap.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  os.environ.setdefault("TQDM_DISABLE", "1")
  from qgjax.data import demo_dir

  data_dir = args.data if os.path.isfile(os.path.join(args.data, "corpus.jsonl")) else str(demo_dir())
  work = tempfile.mkdtemp(prefix="qgjax_acc_")
  t_start = time.perf_counter()
  result: dict = {"mode": "tiny" if args.tiny else "real", "data": data_dir, "command": " ".join(sys.argv)}
  out_path = os.path.join(args.out, "accelerator_check.json")

  def save():
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    with open(out_path, "w") as f:
      json.dump(result, f, indent=1)

  state: dict = {}

  def models():
    if "decoder" not in state:
      if args.tiny:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from tiny_lm import make_tiny_bert, make_tiny_lm
        state["decoder"] = make_tiny_lm(os.path.join(work, "tiny_lm"))
        state["encoder"] = make_tiny_bert(os.path.join(work, "tiny_bert"))
      else:  # one f32 safetensors export that qgjax and HF both load
        from qgjax.models.registry import load_decoder, save_decoder_hf
        export = os.path.join(work, "smollm2_f32_hf")
        model, params, tok = load_decoder("smollm2-135m-instruct", dtype="float32")
        save_decoder_hf(params, model.config, tok, export)
        state["decoder"], state["encoder"] = export, "all-minilm-l6-v2"
    return state["decoder"], state["encoder"]

  sections = {
      "device": lambda: device_info(),
      "roofline": lambda: roofline(args.tiny),
      "parity": lambda: {"decoder": decoder_parity(models()[0], _texts(data_dir, 4)),
                         "encoder": encoder_parity(models()[1], _texts(data_dir, 8), 32 if args.tiny else 128)},
      "sampling": lambda: sampling(models()[0], args.out, args.tiny, result["roofline"]),
      "dpo": lambda: dpo(models()[0], data_dir, args.tiny, result["roofline"]),
      "infonce": lambda: infonce(models()[1], data_dir, args.tiny, result["roofline"]),
  }
  for name in args.sections.split(","):
    t = time.perf_counter()
    try:
      result[name] = sections[name]()
    except Exception as e:  # noqa: BLE001  (recorded; the other sections still run)
      result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    result[name]["section_s"] = round(time.perf_counter() - t, 1)
    print(f"{name}: {json.dumps({k: v for k, v in result[name].items() if k != 'traceback'})}", flush=True)
    save()
  print(f"wrote {out_path}")
  return 1 if any("error" in result[n] for n in args.sections.split(",")) else 0


if __name__ == "__main__":
  sys.exit(main())
