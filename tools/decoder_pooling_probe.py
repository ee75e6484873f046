"""Zero-shot retrieval quality of a decoder LM's pooled states: mean vs last-token pooling, before
any training (where a decoder-only retriever starts from).

One forward pass per text gives both poolings (`BothPools`); documents are `title text` cut at
--doc-max-len tokens, queries at 64, each query optionally behind an instruction. Exact cosine
search over the whole corpus (`qgjax.retrieval.dense`'s exact index), measures from
`qgjax.evaluation.ir_metrics` on the split's qrels, beside the same measures of a uniformly random
top 100 (mean and std over --random-seeds rankings): the floor.

  .venv/bin/python tools/decoder_pooling_probe.py --data ../shared/data/nfcorpus \
      --out docs/runs/decoder_pooling_probe/probe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import jax
import numpy as np

from qgjax.data.beir import load_beir
from qgjax.evaluation.ir_metrics import evaluate
from qgjax.models.decoder_encoder import DecoderEncoder, l2_normalize, last_token_pool, load_decoder_encoder, mean_pool
from qgjax.models.decoder import positions_from_mask
from qgjax.models.text_encoding import encode_texts
from qgjax.retrieval.dense import build_index, default_index_config, search_run

MEASURES = ("nDCG@10", "RR@100", "R@100")
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant passages: "


@dataclasses.dataclass(frozen=True)
class BothPools:
  """The decoder's final-norm states pooled both ways, each L2-normalised: f32[B, 2 D] =
  [mean | last token]. Hashable, `apply` as DecoderEncoder's (no LoRA)."""
  encoder: DecoderEncoder

  def apply(self, variables, tokens, mask, token_type_ids=None, **_):
    mask = mask.astype(bool)
    _, _, hidden = self.encoder.lm.apply(variables, tokens, positions_from_mask(mask), mask, return_hidden=True)
    return jax.numpy.concatenate([l2_normalize(mean_pool(hidden, mask)), l2_normalize(last_token_pool(hidden, mask))],
                                 axis=-1)


def random_floor(data, depth: int, seeds: int) -> dict[str, dict[str, float]]:
  """The measures of `seeds` uniformly random top-`depth` rankings per query -> {"mean": {...}, "std": {...}}."""
  doc_ids = [d.doc_id for d in data.corpus]
  rng = np.random.default_rng(0)
  rows = []
  for _ in range(seeds):
    run = {q: {doc_ids[j]: float(depth - r) for r, j in enumerate(rng.choice(len(doc_ids), depth, replace=False))}
           for q in data.queries}
    rows.append(evaluate(run, data.qrels, MEASURES))
  return {"mean": {m: float(np.mean([r[m] for r in rows])) for m in MEASURES},
          "std": {m: float(np.std([r[m] for r in rows])) for m in MEASURES}}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data", required=True, help="a BEIR directory")
  ap.add_argument("--split", default="test")
  ap.add_argument("--model", default="smollm2-135m-instruct")
  ap.add_argument("--doc-max-len", type=int, default=128)
  ap.add_argument("--query-max-len", type=int, default=64)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--instruction", default=DEFAULT_INSTRUCTION, help="the second query variant's prefix")
  ap.add_argument("--random-seeds", type=int, default=20)
  ap.add_argument("--random-only", action="store_true", help="add the random floor to an existing --out file")
  ap.add_argument("--out", required=True)
  args = ap.parse_args(argv)

  data = load_beir(args.data, args.split)
  floor = random_floor(data, 100, args.random_seeds)
  print("random top 100 " + " ".join(f"{m} {v:.4f}" for m, v in floor["mean"].items()), flush=True)
  if args.random_only:
    with open(args.out) as f:
      result = json.load(f)
    result.update(random_top100=floor, random_seeds=args.random_seeds)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
    return 0
  module, params, tokenizer, info = load_decoder_encoder(args.model)
  both = BothPools(module)
  docs = list(data.corpus)
  doc_ids = [d.doc_id for d in docs]
  qids = sorted(data.queries)
  t0 = time.perf_counter()
  doc_emb = encode_texts(both, params, tokenizer, [d.contents for d in docs], batch_size=args.batch_size,
                         max_len=args.doc_max_len, progress=True)
  doc_seconds = time.perf_counter() - t0
  d = module.config.hidden_size
  rows = {}
  for label, prefix in (("plain query", ""), ("instruction + query", args.instruction)):
    q_emb = encode_texts(both, params, tokenizer, [prefix + data.queries[q] for q in qids],
                         batch_size=args.batch_size, max_len=args.query_max_len)
    for p, (name, cols) in enumerate((("mean", slice(0, d)), ("lasttoken", slice(d, 2 * d)))):
      index = build_index(np.ascontiguousarray(doc_emb[:, cols]), {**default_index_config().to_dict(), "kind": "exact"})
      run = search_run(index, doc_ids, np.ascontiguousarray(q_emb[:, cols]), 100, qids)
      rows[f"{name} pooling, {label}"] = evaluate(run, data.qrels, MEASURES)
      print(f"{name:9s} {label:20s} " + " ".join(f"{m} {v:.4f}" for m, v in rows[f'{name} pooling, {label}'].items()),
            flush=True)
  result = {"model": info["path"], "data": args.data, "split": args.split, "queries": len(qids), "docs": len(docs),
            "doc_max_len": args.doc_max_len, "query_max_len": args.query_max_len, "instruction": args.instruction,
            "measures": rows, "random_top100": floor, "random_seeds": args.random_seeds, "doc_encode_seconds": round(doc_seconds, 1), "machine": platform.processor() or
            platform.machine(), "devices": jax.device_count(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
            "command": " ".join([sys.executable.split("/")[-1]] + sys.argv)}
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
