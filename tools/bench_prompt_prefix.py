"""`qgjax generate` with the prompts' common prefix prefilled once per batch against the same job
prefilling every prompt whole (config.share_prompt_prefix True vs False), on the same documents.

  python tools/bench_prompt_prefix.py                         # 64 NFCorpus docs, few-shot, 1 query each
  python tools/bench_prompt_prefix.py --samples 5 --docs 32   # the alignment pool's setting

Few-shot prompts (the DPO-QG pipeline's generate and generate_final stages) are ~500 tokens of which
the chat opening, system turn, three worked examples and the instruction (~310) are the same for
every document. With one sample per document generation is prefill-bound, so this is where most
of the time goes. Both runs use the real job (`qgjax.jobs.generate.run`: SmolLM2-135M-Instruct,
the same buckets, batch size, sampling settings and seeds); they run alternately, twice each, and
each side's faster run counts. tokens/s = generated tokens / (generation seconds - the seconds its
sampler spent in calls that compiled). The queries of both are compared: the same keys give the
same samples up to float rounding in the prefill (`same_queries`).

ratio = shared-prefix tokens/s / whole-prompt tokens/s. Writes tools/results/bench_prompt_prefix.json.

--task dpo: the DPO step (`qgjax train`'s task setup and jitted train step, configs/dpo.py with its
few-shot prompt, LoRA, batch 16) with dpo.share_prompt_prefix False vs True, on pairs made from the
first --docs documents (chosen: the document's title, rejected: the next document's title: real
prompt and completion lengths; what is learnt does not matter here). Each side: the reference pass
(timed), the step compiled, then --steps steps timed. ratio = whole-prompt s/step / shared-prefix
s/step. Writes tools/results/bench_prompt_prefix_dpo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))

from bench_jobs import default_data, start  # noqa: E402


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--docs", type=int, default=64)
  p.add_argument("--mode", default="few_shot")
  p.add_argument("--samples", type=int, default=1)
  p.add_argument("--new-tokens", type=int, default=32)
  p.add_argument("--repeats", type=int, default=2, help="runs of each side (alternating); the faster counts")
  p.add_argument("--data", default=default_data())
  p.add_argument("--task", choices=("generate", "dpo"), default="generate")
  p.add_argument("--steps", type=int, default=3, help="dpo: timed train steps per side")
  p.add_argument("--accum", type=int, default=0, help="dpo: microbatches per step (0 = configs/dpo.py's)")
  p.add_argument("--out", default="")
  args = p.parse_args()
  name = "bench_prompt_prefix" + ("_dpo" if args.task == "dpo" else "")
  args.out = args.out or os.path.join(REPO, "tools", "results", f"{name}.json")
  return args


def dpo_pairs(data: str, docs: int, path: str) -> None:
  """{doc_id, chosen, rejected} for the first `docs` documents: the title, and the next one's."""
  from qgjax.data.beir import Corpus

  rows = [d for _, d in zip(range(docs + 1), Corpus(os.path.join(data, "corpus.jsonl")))]
  with open(path, "w") as f:
    for d, nxt in zip(rows, rows[1:]):
      title = lambda x: (x.title or x.contents[:80]).strip()
      f.write(json.dumps({"doc_id": d.doc_id, "chosen": title(d), "rejected": title(nxt)}) + "\n")


def bench_dpo(args, data: str, work: str) -> dict:
  import time

  import jax

  from qgjax.config import build_config
  from qgjax.parallel.mesh import mesh_from_config
  from qgjax.parallel.sharding import activate, put_batch, rules_for
  from qgjax.train import lm_tasks
  from qgjax.train.optim import make_optimizer
  from qgjax.train.step import create_state, make_train_step, state_shardings

  pairs = os.path.join(work, "pairs.jsonl")
  dpo_pairs(data, args.docs, pairs)
  out = {}
  for share in (False, True):
    over = [("data.train", pairs), ("data.corpus", data), ("data.eval_fraction", "0.0"),
            ("workdir", os.path.join(work, f"dpo_{share}")), ("dpo.share_prompt_prefix", str(share)),
            ("data.prompt_buckets", "(224, 256, 384, 448, 512)")]   # 224: the rests after the prefix
    if args.accum:
      over.append(("accum_steps", str(args.accum)))
    c = build_config(os.path.join(REPO, "configs", "dpo.py"), over)
    t = time.perf_counter()
    setup = lm_tasks.setup_dpo(c, sft_weight=0.0)
    reference_s = time.perf_counter() - t
    mesh = mesh_from_config(c)
    rules = rules_for(mesh, c.sharding_rules)
    tx, sched = make_optimizer(c.optim, 1000)
    shard = state_shardings(setup.abstract_trainable, setup.abstract_frozen, tx, mesh, rules)
    state = create_state(setup.trainable, setup.frozen, shard, tx, mesh, rules)
    loader = setup.train
    step = make_train_step(setup.loss_fn, tx, sched, mesh=mesh, rules=rules, shardings=shard,
                           example_batch=loader.batch(0), accum_steps=int(c.accum_steps))
    times, losses = [], []
    for i in range(args.steps + 1):          # the first call compiles
      host = loader.batch(i % loader.steps_per_epoch)
      t = time.perf_counter()
      with activate(mesh, rules):
        state, m = step(state, put_batch(host, mesh, rules))
      m = jax.device_get(m)
      times.append(time.perf_counter() - t)
      losses.append(float(m["loss"]))
    side = "shared_prefix" if share else "whole_prompt"
    out[side] = {"reference_s": round(reference_s, 1), "compile_step_s": round(times[0], 1),
                 "step_s": [round(x, 2) for x in times[1:]], "best_step_s": round(min(times[1:]), 2),
                 "losses": [round(x, 5) for x in losses], "prompt_bucket": int(loader.batch(0)["prompt"].shape[1]),
                 "shared_prefix_tokens": int(setup.info.get("shared_prefix_tokens", 0))}
    print(f"dpo {side}: reference {reference_s:.1f} s, steps {out[side]['step_s']} s, losses "
          f"{out[side]['losses']}", file=sys.stderr)
  out["ratio"] = round(out["whole_prompt"]["best_step_s"] / out["shared_prefix"]["best_step_s"], 3)
  out["reference_ratio"] = round(out["whole_prompt"]["reference_s"] / out["shared_prefix"]["reference_s"], 3)
  out["settings"] = {"pairs": args.docs, "steps": args.steps, "batch_size": int(c.batch_size),
                     "accum_steps": int(c.accum_steps), "train_mode": c.train_mode, "prompt": c.prompt.mode}
  return out


def job_config(args, data: str, out_dir: str, share: bool):
  from qgjax.config import build_config
  overrides = [("data.corpus", data), ("data.limit", str(args.docs)), ("output_dir", out_dir),
               ("sampling.max_new_tokens", str(args.new_tokens)), ("log_every_s", "1e9"), ("print_examples", "0"),
               ("share_prompt_prefix", str(share))]
  return build_config(os.path.join(REPO, "configs", f"generate.py:mode={args.mode},n={args.samples}"), overrides)


def queries(out_dir: str) -> dict:
  from qgjax.data.records import iter_records
  return {(r["doc_id"], r["sample_idx"]): r["query"] for _, _, r in iter_records(out_dir)}


def main():
  args = parse_args()
  env = start(args.data)
  data = env["data"]
  from qgjax.jobs import generate

  work = tempfile.mkdtemp(prefix="bench_prompt_prefix_")
  if args.task == "dpo":
    result = {**bench_dpo(args, data, work), **env}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("ratio", "reference_ratio")}))
    return
  runs = {True: [], False: []}
  for i in range(args.repeats):
    for share in (False, True):
      out = os.path.join(work, f"{'shared' if share else 'whole'}_{i}")
      r = generate.run(job_config(args, data, out, share))
      r["tokens_per_s_net"] = r["tokens_this_run"] / (r["generation_s"] - r["compile_s"])
      r["out"] = out
      runs[share].append(r)
      print(f"{'shared prefix' if share else 'whole prompts'} run {i}: {r['tokens_this_run']} tokens, "
            f"{r['generation_s']:.1f} s ({r['compile_s']:.1f} s compiling): {r['tokens_per_s_net']:.1f} tok/s",
            file=sys.stderr)
  best = {share: max(rs, key=lambda r: r["tokens_per_s_net"]) for share, rs in runs.items()}
  shared, whole = best[True], best[False]
  q_shared, q_whole = queries(shared["out"]), queries(whole["out"])
  same = sum(q_shared.get(k) == v for k, v in q_whole.items())
  result = {
      "ratio": round(shared["tokens_per_s_net"] / whole["tokens_per_s_net"], 3),
      "shared_prefix_tokens_per_s": round(shared["tokens_per_s_net"], 1),
      "whole_prompt_tokens_per_s": round(whole["tokens_per_s_net"], 1),
      "shared_prefix_docs_per_s": round(shared["inputs"] / (shared["generation_s"] - shared["compile_s"]), 3),
      "whole_prompt_docs_per_s": round(whole["inputs"] / (whole["generation_s"] - whole["compile_s"]), 3),
      "runs_s": {"shared_prefix": [r["generation_s"] for r in runs[True]],
                 "whole_prompt": [r["generation_s"] for r in runs[False]]},
      "compile_s": {"shared_prefix": shared["compile_s"], "whole_prompt": whole["compile_s"]},
      "tokens": {"shared_prefix": shared["tokens_this_run"], "whole_prompt": whole["tokens_this_run"]},
      "shared_prefix_tokens": shared["shared_prefix_tokens"],
      "inputs_with_shared_prefix": shared["inputs_this_run_with_shared_prefix"],
      "same_queries": same, "queries": len(q_whole),
      "settings": {"docs": args.docs, "mode": args.mode, "samples": args.samples,
                   "max_new_tokens": args.new_tokens, "repeats": args.repeats, "model": shared["model"],
                   "dtype": shared["dtype"], "attention": shared["attention"]},
      **env,
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps({k: result[k] for k in ("ratio", "shared_prefix_tokens_per_s", "whole_prompt_tokens_per_s",
                                           "shared_prefix_tokens", "same_queries", "queries")}))


if __name__ == "__main__":
  main()
