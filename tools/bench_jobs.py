"""The real jobs against their bare kernels on the same documents: how much of the kernels' speed
the jobs keep (issue 25: at least 80%).

  python tools/bench_jobs.py                              # 64 NFCorpus docs, few-shot prompts, 5 samples
  python tools/bench_jobs.py --docs 16 --skip-encode      # generation only, smaller
  python tools/bench_jobs.py --mode plain --batch-size 64

generate: `qgjax generate`'s `run(config)` (prompt building, the process split, bucketing, the
sampler, post-processing, the sharded writer and done log) over the first --docs documents,
against the bare sampler (`Sampler.run`) on the same prompts, which the kernel gets sorted by
length over the whole set and cut into batches of the job's batch size (as bench_sampling does),
each padded to the smallest of the job's buckets that fits. Same model, prompt mode, samples,
sampling settings and seeds, so both generate the same tokens (both counts are printed); both
prefill the prompts' common prefix once per batch when the job does (share_prompt_prefix).
tokens/s = generated tokens / seconds. The kernel is timed after compiling every bucket it uses.
The job compiles its own programs (a new Sampler traces them again; XLA's executables come from
the persistent compilation cache that the kernel's warm-up filled): a fixed cost per bucket that
a corpus-sized run spreads thin but a 64-document run does not. So the job's tokens/s leave out
the seconds its sampler spent in calls that compiled (`compile_s` of its summary: the jitted
call returns once the program is dispatched, so that is trace + lower + compile or cache load,
not the batch's run); `job_tokens_per_s_with_compile` keeps them in. `job_host_s`: the job's
seconds outside `Sampler.run` (prompt building, post-processing, writing). Also reported: each side's
batches and padded prompt tokens (rows x bucket, filler rows included): the job groups prompts by
their own bucket over the whole stream (`bucketed`), so it runs a partial batch per bucket used
where the kernel's sorted batches run one in all. The kernel runs before and after the job; its
faster reading counts.

encode: corpus encoding as the score, mine and evaluate stages run it
(`qgjax.retrieval.dense.embed_corpus`: tokenising, bucketing, the embedding store) against the
bare jitted encoder (`qgjax.models.text_encoding.jitted_apply`) on the same corpus, tokenised and
padded beforehand, batched as `plan_batches` batches them over the whole corpus. docs/s each.

ratio = job / kernel for each. Writes tools/results/bench_jobs.json (`ratio`: the smaller of the two).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--docs", type=int, default=64)
  p.add_argument("--mode", default="few_shot", help="generate's prompt mode (the pipeline's: few_shot)")
  p.add_argument("--samples", type=int, default=5)
  p.add_argument("--new-tokens", type=int, default=32)
  p.add_argument("--batch-size", type=int, default=0, help="prompts per batch (0 = generate.py's default)")
  p.add_argument("--encode-docs", type=int, default=1024)
  p.add_argument("--encode-batch", type=int, default=64)
  p.add_argument("--skip-generate", action="store_true")
  p.add_argument("--skip-encode", action="store_true")
  p.add_argument("--data", default=default_data(), help="a BEIR dir (default: shared/data/nfcorpus in a "
                 "folder above the repo)")
  p.add_argument("--out", default=os.path.join(REPO, "tools", "results", "bench_jobs.json"))
  return p.parse_args()


def default_data() -> str:
  """shared/data/nfcorpus in the nearest folder above the repo that has one (a worktree sits a
  level deeper than the main checkout)."""
  here = os.path.dirname(REPO)
  while True:
    path = os.path.join(here, "shared", "data", "nfcorpus")
    if os.path.isdir(path) or os.path.dirname(here) == here:
      return path
    here = os.path.dirname(here)


def padded_tokens(batches: list[tuple[int, int]], batch_size: int) -> int:
  """Prompt tokens the sampler runs over for [(bucket, prompts)] batches: batch_size rows each."""
  return sum(batch_size * bucket for bucket, _ in batches)


def corpus_dir(path: str) -> str:
  from qgjax.data import demo_dir
  if os.path.isfile(os.path.join(path, "corpus.jsonl")):
    return path
  print(f"{path} not found; using the demo corpus", file=sys.stderr)
  return str(demo_dir())


def generate_config(args, data: str, out_dir: str):
  from qgjax.config import build_config
  overrides = [("data.corpus", data), ("data.limit", str(args.docs)), ("output_dir", out_dir),
               ("sampling.max_new_tokens", str(args.new_tokens)), ("log_every_s", "1e9"), ("print_examples", "0")]
  if args.batch_size:
    overrides.append(("batch_size", str(args.batch_size)))
  return build_config(os.path.join(REPO, "configs", f"generate.py:mode={args.mode},n={args.samples}"), overrides)


def bench_generate(args, data: str) -> dict:
  from qgjax.jobs import generate
  from qgjax.sampling.batching import bucket_for, bucketed
  from qgjax.sampling.engine import Sampler

  work = tempfile.mkdtemp(prefix="bench_jobs_")
  config = generate_config(args, data, os.path.join(work, "job"))
  mesh = generate.generation_mesh(config)
  kind, model, params, tok = generate.load_generator(config)
  sampling = generate.sampling_params(config, kind, model, tok)
  _, items = generate.iter_items(config, tok, set(), 0, 1)
  items = list(items)
  prompts = sorted(([it.item_id, it.prompt] for it in items), key=lambda x: len(x[1]))
  batch_size, buckets = int(config.batch_size), [int(b) for b in config.buckets]
  batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
  kernel_plan = [(bucket_for(max(len(p) for _, p in b), buckets), len(b)) for b in batches]
  job_plan = [(bucket, len(g)) for bucket, g in bucketed(items, lambda it: len(it.prompt), buckets, batch_size)]
  lens = [len(p) for _, p in prompts]
  prefix = generate.shared_prefix(config, tok)   # the kernel prefills the job's shared prefix once per batch too
  sampler = Sampler.for_decoder(model, params, sampling, batch_size=batch_size, seed=int(config.sampling.seed),
                                mesh=mesh, prefix_tokens=prefix)
  used = sorted({bucket_for(max(len(p) for _, p in b), buckets) for b in batches})
  t = time.perf_counter()
  for length in used:
    sampler.run([batches[0][0][1]], [batches[0][0][0]], length)
  warm_s = time.perf_counter() - t

  def kernel() -> tuple[int, float]:
    tokens, t = 0, time.perf_counter()
    for b in batches:
      out = sampler.run([p for _, p in b], [i for i, _ in b], bucket_for(max(len(p) for _, p in b), buckets))
      tokens += int(out.lengths[:len(b)].sum())
    return tokens, time.perf_counter() - t

  k1 = kernel()
  t = time.perf_counter()
  job = generate.run(config)
  job_wall = time.perf_counter() - t
  k2 = kernel()
  k_tokens, k_s = min((k1, k2), key=lambda x: x[1])
  kernel_tps = k_tokens / k_s
  job_s = job["generation_s"] - job["compile_s"]
  job_tps = job["tokens_this_run"] / job_s
  print(f"generate: kernel {k_tokens} tokens in {k_s:.1f} s ({kernel_tps:.1f} tok/s; other reading "
        f"{max(k1[1], k2[1]):.1f} s; {len(kernel_plan)} batches); job {job['tokens_this_run']} tokens in "
        f"{job_s:.1f} s ({job_tps:.1f} tok/s; {job['generation_s']:.1f} s with {job['compile_s']:.1f} s of "
        f"compiling, {job_wall:.1f} s with loading; {len(job_plan)} batches)", file=sys.stderr)
  return {"ratio": round(job_tps / kernel_tps, 3), "job_tokens_per_s": round(job_tps, 1),
          "job_tokens_per_s_with_compile": round(job["tokens_this_run"] / job["generation_s"], 1),
          "kernel_tokens_per_s": round(kernel_tps, 1), "job_tokens": int(job["tokens_this_run"]),
          "kernel_tokens": int(k_tokens), "job_generation_s": job["generation_s"], "job_compile_s": job["compile_s"],
          "job_sampler_s": job["sampler_s"], "job_host_s": round(job["generation_s"] - job["sampler_s"], 1),
          "job_wall_s": round(job_wall, 1),
          "kernel_s": [round(k1[1], 2), round(k2[1], 2)], "kernel_compile_s": round(warm_s, 1),
          "kernel_compile_only_s": round(sampler.compile_s, 1),
          "job_batches": len(job_plan), "kernel_batches": len(kernel_plan),
          "job_padded_prompt_tokens": padded_tokens(job_plan, batch_size),
          "kernel_padded_prompt_tokens": padded_tokens(kernel_plan, batch_size),
          "docs": len(prompts), "batch_size": batch_size, "buckets": buckets, "buckets_used": used,
          "prompt_tokens": {"min": min(lens), "median": float(np.median(lens)), "max": max(lens)},
          "mode": args.mode, "samples": args.samples, "max_new_tokens": args.new_tokens,
          "shared_prefix_tokens": len(prefix), "job_inputs_with_shared_prefix": job["inputs_this_run_with_shared_prefix"],
          "compiled_programs_job": job["compiled_programs"]}


def bench_encode(args, data: str) -> dict:
  from qgjax.data.beir import Corpus
  from qgjax.models.text_encoding import bucket_lengths, DEFAULT_BUCKETS, jitted_apply, plan_batches
  from qgjax.parallel.data_parallel import replicate
  from qgjax.retrieval.dense import DenseEncoder, embed_corpus

  work = tempfile.mkdtemp(prefix="bench_jobs_enc_")
  docs = [d for _, d in zip(range(args.encode_docs), Corpus(os.path.join(data, "corpus.jsonl")))]
  corpus_path = os.path.join(work, "corpus.jsonl")
  with open(corpus_path, "w") as f:
    for d in docs:
      f.write(json.dumps({"_id": d.doc_id, "title": "", "text": d.contents}) + "\n")
  encoder = DenseEncoder.load("all-minilm-l6-v2")
  max_len = encoder.max_len_for(None)
  fn = jitted_apply(encoder.module)
  params = replicate(encoder.params, fn.mesh)
  encoder.params = params
  ids = encoder.tokenizer([d.contents for d in docs], truncation=True, max_length=max_len, padding=False,
                          return_token_type_ids=False)["input_ids"]
  plan = plan_batches([len(x) for x in ids], args.encode_batch, bucket_lengths(max_len, DEFAULT_BUCKETS))
  pad = encoder.tokenizer.pad_token_id
  padded = []
  for length, rows in plan:
    tokens = np.full((args.encode_batch, length), pad, np.int32)
    mask = np.zeros((args.encode_batch, length), bool)
    for j, r in enumerate(rows):
      tokens[j, :len(ids[r][:length])] = ids[r][:length]
      mask[j, :len(ids[r][:length])] = True
    padded.append((tokens, mask))
  for length in sorted({t.shape[1] for t, _ in padded}):   # compile every bucket once
    t0 = next(t for t, _ in padded if t.shape[1] == length)
    np.asarray(fn.fetch(fn.submit(params, t0, t0 != pad, None)))

  def kernel() -> float:
    t = time.perf_counter()
    pending = [fn.submit(params, tokens, mask, None) for tokens, mask in padded]
    for p in pending:
      np.asarray(fn.fetch(p))
    return time.perf_counter() - t

  k1 = kernel()
  t = time.perf_counter()
  embed_corpus(corpus_path, os.path.join(work, "store"), encoder, batch_size=args.encode_batch,
                     max_len=max_len)
  job_s = time.perf_counter() - t
  k2 = kernel()
  k_s = min(k1, k2)
  n = len(docs)
  print(f"encode: kernel {n} docs in {k_s:.1f} s ({n / k_s:.1f} docs/s; other reading {max(k1, k2):.1f} s); "
        f"job {job_s:.1f} s ({n / job_s:.1f} docs/s)", file=sys.stderr)
  return {"ratio": round(k_s / job_s, 3), "job_docs_per_s": round(n / job_s, 1), "kernel_docs_per_s": round(n / k_s, 1),
          "job_s": round(job_s, 2), "kernel_s": [round(k1, 2), round(k2, 2)], "docs": n,
          "batch_size": args.encode_batch, "max_len": max_len, "batches": len(padded)}


def start(data_arg: str) -> dict:
  """Logging, the persistent compilation cache and the corpus dir; returns the result's common fields
  (command, data, compilation_cache, machine, versions)."""
  os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
  import jax

  from qgjax.log import setup_logging
  from qgjax.parallel.compile_cache import enable_compilation_cache

  setup_logging()
  cache = enable_compilation_cache()
  return {"command": " ".join([sys.executable] + sys.argv), "data": corpus_dir(data_arg), "compilation_cache": cache,
          "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                      "devices": [str(d) for d in jax.devices()]},
          "versions": {"jax": jax.__version__}}


def main():
  args = parse_args()
  result = start(args.data)
  data = result["data"]
  if not args.skip_generate:
    result["generate"] = bench_generate(args, data)
  if not args.skip_encode:
    result["encode"] = bench_encode(args, data)
  parts = [result[k]["ratio"] for k in ("generate", "encode") if k in result]
  result["ratio"] = min(parts) if parts else None
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps({k: result[k] for k in ("ratio",)} | {k: result[k]["ratio"] for k in ("generate", "encode")
                                                        if k in result}))


if __name__ == "__main__":
  main()
