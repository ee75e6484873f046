r"""ReadQG generation: queries of relevance r (1 = relevant, 0 = not) for each document, from soft prompts.

  qgjax pipeline --config configs/readqg_recipe.py:tiny      # runs this as its `generate` stage

`model.name` is a ReadQG export (qgjax.methods.readqg: soft_prompt.safetensors + readqg.json, with
an HF T5 directory; or, kind "decoder", naming its frozen decoder-only base LM). For each document
of `data.corpus` (the first data.limit; 0 = all) and each r in `relevances`, the T5 encoder input
is [P_inst ; r P_true + (1 - r) P_false ; document tokens + EOS]; the decoder-only prompt is
[P_inst ; r P_true + (1 - r) P_false ; document tokens ; separator] (qgjax.methods.readqg.decoder,
sampled with the shared-prompt KV cache of qgjax.sampling.decoder). Documents are cut to the
export's max_doc_tokens, as in training, and `sampling` decodes num_samples queries (num_beams >
1: beam search); outputs are cleaned as `qgjax generate` cleans them (strip, first line).

Output in `output_dir`, through the loop `qgjax generate` uses (qgjax.sampling.generation_loop:
resumable, each of P processes takes documents i, i + P, ... and writes `output_dir/process-<i>`
when P > 1): sharded JSONL {doc_id, query, r, sample_idx, logprob, num_tokens, model}
(sample_idx = relevance index * num_samples + j; within a batch, the records of the first
relevance come first), and, written by the main process once every process is done,
`ce_pairs.jsonl`: {doc_id, chosen, rejected} joining the i-th query of the first relevance (r=1)
with the i-th of the second (r=0), what configs/cross_encoder.py trains on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

import numpy as np

from qgjax.config import require
from qgjax.data import storage
from qgjax.errors import ConfigError, InputError

log = logging.getLogger(__name__)
PAIRS_FILE = "ce_pairs.jsonl"


def _soft_generate(kind: str, model, sampling, r: float, params, tokens, mask, keys):
  import jax.numpy as jnp

  from qgjax.models.soft_prompt import build_prefix

  prefix = build_prefix(params["soft"], jnp.full((tokens.shape[0],), r, jnp.float32))
  if kind == "decoder":
    from qgjax.sampling.decoder import generate_decoder
    return generate_decoder(model, params["model"], tokens, mask, keys, sampling, prefix=prefix)
  from qgjax.sampling.seq2seq import generate_seq2seq
  return generate_seq2seq(model, params["model"], tokens, mask, keys, sampling, prefix=prefix.astype(jnp.float32))


def load_readqg_export(path: str, dtype: str = "float32", attention_impl: str = "auto"):
  """-> (kind "t5" | "decoder", model, params, tokenizer, soft prompt arrays, readqg.json meta).

  kind t5: the export holds the T5; kind decoder: readqg.json names the frozen base LM, loaded
  with unrolled layers (the sampler's shared-prompt decode wants them). Parameters are f32; the
  model computes in `dtype` with `attention_impl` (names, as `qgjax.parallel.model_numerics` resolves).
  """
  from qgjax.methods.readqg.objective import load_soft_prompt
  from qgjax.models.registry import REMOTE_EXPORT_MARKER

  path = storage.local_copy(path, REMOTE_EXPORT_MARKER)   # a gs:// export: its local copy; a local path: itself
  if not os.path.isfile(os.path.join(path, "soft_prompt.safetensors")):
    raise InputError("not a ReadQG export (no soft_prompt.safetensors; train configs/readqg.py first)", path=path)
  soft, meta = load_soft_prompt(path)
  kind = meta.get("kind", "t5")
  if kind == "decoder":
    from qgjax.models.registry import load_decoder

    if not meta.get("generator"):
      raise InputError("readqg.json has kind 'decoder' but no 'generator'", path=path)
    from qgjax.models.decoder import DecoderLM

    model, params, tokenizer = load_decoder(meta["generator"], dtype="float32", scan_layers=False,
                                            attention_impl=attention_impl)
    model = DecoderLM(model.config.replace(dtype=dtype))
    width = model.config.hidden_size
  elif kind == "t5":
    from qgjax.models.t5 import T5Model, load_t5

    model, params, tokenizer = load_t5(path, dtype="float32", attention_impl=attention_impl)
    model = T5Model(model.config.replace(dtype=dtype))
    width = model.config.d_model
  else:
    raise InputError(f"readqg.json kind {kind!r}; expected 't5' or 'decoder'", path=path)
  if tokenizer is None:
    raise InputError("the ReadQG generator has no tokenizer files", path=path)
  if soft["instruction"].shape[-1] != width:
    raise InputError(f"soft prompt width {soft['instruction'].shape[-1]} != the generator's {width} "
                     f"({meta.get('generator', path)})", path=path)
  return kind, model, params, tokenizer, soft, meta


def _prompts(kind: str, tokenizer, meta: dict, texts: list[str]) -> list[list[int]]:
  """Document texts -> the sampler's token ids, cut as in training (the soft prefix is added inside)."""
  max_doc = int(meta.get("max_doc_tokens", 256))
  if kind == "decoder":
    from qgjax.methods.readqg.decoder import DEFAULT_SEPARATOR, prompt_ids, separator_ids

    return prompt_ids(tokenizer, texts, max_doc, separator_ids(tokenizer, meta.get("separator", DEFAULT_SEPARATOR)))
  eos = int(tokenizer.eos_token_id)
  return [list(x)[:max_doc - 1] + [eos] for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _longest_input(kind: str, tokenizer, meta: dict) -> int:
  """Tokens of the longest sampler input: max_doc_tokens (+ the separator for a decoder)."""
  max_doc = int(meta.get("max_doc_tokens", 256))
  if kind != "decoder":
    return max_doc
  from qgjax.methods.readqg.decoder import DEFAULT_SEPARATOR, separator_ids

  return max_doc + len(separator_ids(tokenizer, meta.get("separator", DEFAULT_SEPARATOR)))


def _pairs(out_dir: storage.AnyPath, relevances: list[float]) -> int:
  """Writes `out_dir`/ce_pairs.jsonl from every process's records; returns its rows."""
  from qgjax.data.records import iter_records

  by: dict[str, dict[float, list[tuple[int, str]]]] = {}
  for _, _, rec in iter_records(out_dir, require_complete=True):
    by.setdefault(rec["doc_id"], {}).setdefault(float(rec["r"]), []).append((int(rec["sample_idx"]), rec["query"]))
  rows = []
  for doc_id in sorted(by):
    pos = [q for _, q in sorted(by[doc_id].get(relevances[0], []))]
    neg = [q for _, q in sorted(by[doc_id].get(relevances[1], []))]
    rows += [{"doc_id": doc_id, "chosen": p, "rejected": n} for p, n in zip(pos, neg)]
  storage.write_bytes_atomic(out_dir / PAIRS_FILE,   # temp + rename; gs://: one upload
                             "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
  return len(rows)


def _count_lines(path: storage.AnyPath) -> int:
  return sum(1 for line in storage.read_bytes(path).split(b"\n") if line.strip())


def _records(relevances: list[float], n: int, tokenizer, config):
  """(documents, one SampleBatch per relevance) -> (records, document by document and within a
  document relevance by relevance; tokens generated per document, both relevances). Each
  document's records are contiguous, so several processes' parts read in one process's order."""
  from qgjax.sampling.postprocess import clean_text, select

  def build(items, batches) -> tuple[list[dict], list[int]]:
    records, tokens = [], [0] * len(items)
    for i, item in enumerate(items):
      for ri, (r, batch) in enumerate(zip(relevances, batches)):
        cands = []
        for j in range(batch.lengths.shape[1]):
          ids, lps = batch.sequence(i, j)
          tokens[i] += len(ids)
          cands.append({"query": clean_text(tokenizer.decode(ids, skip_special_tokens=True), config.postprocess),
                        "logprob": float(np.sum(lps)), "num_tokens": len(ids), "sample_idx": ri * n + j})
        records += [{"doc_id": item.item_id, "query": c["query"], "r": r, "sample_idx": c["sample_idx"],
                     "logprob": round(c["logprob"], 6), "num_tokens": c["num_tokens"], "model": config.model.name}
                    for c in select(cands, item.source_text, config.postprocess)]
    return records, tokens
  return build


def run(config) -> dict:
  from qgjax.parallel.backend import model_numerics
  from qgjax.parallel.distributed import barrier, is_main_process
  from qgjax.sampling.engine import Sampler, local_data_mesh
  from qgjax.sampling.generation_loop import Item, Output, PromptSource, run_generation
  from qgjax.sampling.settings import sampling_params
  from qgjax.sampling.sources import document_entries, open_corpus

  require(config, "model.name", "data.corpus", "output_dir", "batch_size", "buckets", "relevances")
  relevances = [float(r) for r in config.relevances]
  if len(relevances) != 2 or not all(0.0 <= r <= 1.0 for r in relevances):
    raise ConfigError(f"relevances must be two values in [0, 1] (positive first, e.g. (1.0, 0.0)); got {relevances}")
  t0 = time.perf_counter()
  dtype, attention = model_numerics(config.model)
  kind, model, lm, tokenizer, soft, meta = load_readqg_export(config.model.name, dtype, attention)
  sampling = sampling_params(config, kind, model, tokenizer)
  longest = _longest_input(kind, tokenizer, meta)
  if max(config.buckets) < longest:
    raise ConfigError(f"the largest bucket ({max(config.buckets)}) is below the longest input of the export "
                      f"({longest} tokens: max_doc_tokens{' + separator' if kind == 'decoder' else ''}); "
                      f"add a bucket of at least {longest}")
  limit = int(config.data.limit or 0)
  total, docs = document_entries(open_corpus(config.data.corpus), 0, limit)
  source = PromptSource(docs, total, item_id=lambda d: d.doc_id,
                        prepare=lambda d: Item(d.doc_id, d.contents, _prompts(kind, tokenizer, meta, [d.contents])[0]))
  mesh = local_data_mesh(int(config.num_devices or 0))
  params = {"model": lm, "soft": {k: np.asarray(v, np.float32) for k, v in soft.items()}}
  pad = model.config.pad_token_id
  samplers = [Sampler(functools.partial(_soft_generate, kind, model, sampling, r), params, sampling,
                      batch_size=int(config.batch_size), pad_id=0 if pad is None else pad,
                      pad_side="left" if kind == "decoder" else "right", seed=int(config.sampling.seed), mesh=mesh)
              for r in relevances]
  # the keys of relevance r fold in "<doc_id>|r=<r>", so its samples differ from the other relevance's
  sample = lambda items, bucket: [s.run([it.prompt for it in items], [f"{it.item_id}|r={r}" for it in items], bucket)
                                  for r, s in zip(relevances, samplers)]
  output = Output(config.output_dir, ("doc_id", "sample_idx"), shard_size=int(config.shard_size),
                  meta={"stage": "readqg_generate", "model": config.model.name, "relevances": relevances,
                        "sampling": config.sampling.to_dict(), "limit": int(config.data.limit)})
  result = run_generation(source, sample, _records(relevances, int(sampling.num_samples), tokenizer, config), output,
                          buckets=config.buckets, batch_size=int(config.batch_size), unit="doc",
                          desc="readqg generate", log_every_s=float(config.log_every_s),
                          logger=log)
  out_dir = storage.as_path(config.output_dir)
  barrier("readqg_generate:records")   # every process's part is complete before the pairs join them
  if is_main_process():
    log.info("%s: %d pairs", out_dir / PAIRS_FILE, _pairs(out_dir, relevances))
  barrier("readqg_generate:pairs")
  return {**result.summary, "documents": total, "ce_pairs": _count_lines(out_dir / PAIRS_FILE),
          "generated_tokens": result.generated_tokens, "tokens_this_run": result.tokens_this_run,
          "generation_s": result.generation_s, "total_s": round(time.perf_counter() - t0, 1),
          "compiled_programs": sum(s.num_compiles for s in samplers), "dtype": dtype, "attention": attention}
