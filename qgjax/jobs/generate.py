"""`qgjax generate`: n queries per document of a BEIR corpus (AQE: n expansions per query).

  qgjax generate --config configs/demo.py                     # shipped demo corpus; logs a few queries
  qgjax generate --config configs/generate.py --config.data.corpus=data/nfcorpus --config.output_dir=out/q
  qgjax generate --config configs/generate.py:mode=contrastive --config.data.corpus=data/nfcorpus
  qgjax generate --config configs/generate.py:mode=expansion --config.data.queries=data/nfcorpus/queries.jsonl

Documents stream from `data.corpus` (a BEIR directory or a corpus.jsonl); prompts are built from
`config.prompt` (plain / few_shot / contrastive / expansion) and sampled in length-bucketed
batches of `batch_size` on this process's devices (`qgjax.sampling.engine`) by the shared
resumable loop (`qgjax.sampling.generation_loop`: process split, done log, progress). Output:
sharded JSONL (`qgjax.data.sharded_writer`) in `output_dir` (with several processes, each writes
`output_dir/process-<i>` for the items i, i + P, i + 2P, ... of the stream), one record per kept
generation:

  {doc_id, query, logprob, num_tokens, sample_idx, prompt_mode, model}            (+ negative_id: contrastive)
  {query_id, query, expansion, logprob, num_tokens, sample_idx, prompt_mode, model}   (expansion)

`logprob` is the generator's summed log-probability of the generated tokens (EOS included),
`num_tokens` their count. Resuming: the ids whose records are all written are appended to
`done_ids.txt` after their records; a rerun skips them, generates anything else again (the
same seed gives the same samples) and the writer drops records it already holds, so a job
killed at any moment ends with each record exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any, Iterator

import numpy as np

from qgjax.config import require
from qgjax.data import storage
from qgjax.errors import ConfigError, InputError
from qgjax.sampling.done_log import DONE_FILE, done_ids, done_tokens, read_done_entries
from qgjax.sampling.generation_loop import Item, PromptSource, pending_items
from qgjax.sampling.settings import sampling_from_config as _sampling_from, sampling_params
from qgjax.sampling.sources import document_entries, open_corpus as _corpus

__all__ = ["DONE_FILE", "Item", "check_config", "iter_items", "load_generator", "numerics", "prompt_source",
           "read_done", "read_done_tokens", "run", "sampling_params"]
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Model and sampling settings.

def generation_mesh(config):
  """`config.mesh` over this process's devices (the first `config.num_devices` if > 0).

  Generation splits the items over processes, so each process samples on a mesh of its own
  devices: ("data", -1) replicates the model on every device; an "fsdp" or "tensor" axis > 1
  shards it (a model bigger than one device), the rows going over the "batch" rule's axes."""
  import jax

  from qgjax.parallel.mesh import make_mesh

  n = int(config.num_devices or 0)
  devices = jax.local_devices()[:n] if n else jax.local_devices()
  return make_mesh(list(config.mesh), devices)


def model_sharding_rules(config, mesh):
  """The logical-axis rules that shard the model over `mesh`, or None when every mesh axis but
  "data" has size 1 (the model is then replicated)."""
  from qgjax.parallel.sharding import rules_for

  if all(size == 1 for name, size in mesh.shape.items() if name != "data"):
    return None
  return rules_for(mesh, list(config.sharding_rules))


def load_generator(config, mesh=None, rules=None) -> tuple[str, Any, Any, Any]:
  """-> (kind, model, params, tokenizer) for config.model (name/path, kind, dtype, attention_impl):
  parameters in f32, the model computing in the resolved dtype with the resolved attention.

  With a `mesh` and model-sharding `rules`, a decoder's parameters are read slice by slice
  straight onto the mesh (qgjax.models.sharded_load: no full host copy), layers unscanned as the
  shared-prompt sampler runs them."""
  from qgjax.models.registry import model_kind

  m = config.model
  kind = model_kind(m.name, m.kind)
  dtype, attention = numerics(config)
  if kind == "t5":
    from qgjax.models.registry import resolve
    from qgjax.models.t5 import T5Model, load_t5

    model, params, tokenizer = load_t5(resolve(m.name), dtype="float32", attention_impl=attention)
    model = T5Model(model.config.replace(dtype=dtype))
  else:
    from qgjax.models.decoder import DecoderLM
    from qgjax.models.registry import load_decoder

    if rules is not None:
      model, params, tokenizer = load_decoder(m.name, dtype="float32", scan_layers=False, mesh=mesh, rules=rules,
                                              attention_impl=attention)
    else:
      model, params, tokenizer = load_decoder(m.name, dtype="float32", scan_layers=bool(m.scan_layers),
                                              attention_impl=attention)
    model = DecoderLM(model.config.replace(dtype=dtype))
  if tokenizer is None:
    raise ConfigError(f"model {m.name!r} has no tokenizer files; generation needs one")
  return kind, model, params, tokenizer


def numerics(config) -> tuple[str, str]:
  """(compute dtype, attention implementation) config.model.dtype / attention_impl resolve to on this
  host ("auto": bfloat16 and cuDNN attention on a GPU, bfloat16 and XLA on a TPU, float32 and XLA
  on a CPU)."""
  from qgjax.parallel.backend import model_numerics

  return model_numerics(config.model)


def check_config(config) -> None:
  """Fails fast, before the model loads or an output is opened, on values the job cannot run with."""
  _sampling_from(config.sampling)
  try:
    batch_size, buckets = int(config.batch_size), [int(b) for b in config.buckets]
  except (TypeError, ValueError):
    raise ConfigError(f"config.batch_size and config.buckets must be integers; got {config.batch_size!r} "
                      f"and {config.buckets!r}") from None
  if batch_size < 1:
    raise ConfigError(f"config.batch_size must be >= 1; got {config.batch_size}")
  if not buckets or min(buckets) < 1:
    raise ConfigError(f"config.buckets must list prompt lengths >= 1; got {list(config.buckets)}")
  numerics(config)


# ----------------------------------------------------------------------------------------------
# Inputs.

def _queries(config) -> dict[str, str]:
  from qgjax.data.beir import load_queries, queries_path

  path = config.data.queries or ""
  if not path:
    if not config.data.corpus:
      raise ConfigError("prompt mode 'expansion' needs data.queries (a queries.jsonl) or data.corpus (a BEIR dir)")
    path = str(queries_path(config.data.corpus, config.data.split or None))
  if not storage.as_path(path).is_file():   # a local file or a gs:// object
    raise InputError("queries file not found", path=path)
  return load_queries(path)


def _negative_picker(corpus, seed: int):
  """doc_id -> another document, chosen by (seed, doc id) alone (stable across runs and hosts)."""
  from qgjax.sampling.keys import id_hash

  ids = corpus.doc_ids
  if len(ids) < 2:
    raise InputError("contrastive prompts need a corpus of at least 2 documents", path=str(corpus.path))

  def pick(doc_id: str):
    rng = np.random.default_rng([seed, id_hash(doc_id)])
    while True:
      other = ids[int(rng.integers(len(ids)))]
      if other != doc_id:
        return corpus[other]
  return pick


def _negatives_from_file(path: str, corpus) -> dict[str, str]:
  """{doc_id, negative_id} JSONL -> {doc_id: negative_id}, every negative a document of `corpus`."""
  if not storage.as_path(path).is_file():   # a local file or a gs:// object
    raise ConfigError(f"config.prompt.negative={path!r} is neither 'random' nor a JSONL file of "
                      "{doc_id, negative_id}")
  out = {}
  with storage.as_path(path).open(encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
        out[str(rec["doc_id"])] = str(rec["negative_id"])
      except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"expected {{doc_id, negative_id}}: {e}", path=path, line=line_no) from None
      if out[str(rec["doc_id"])] not in corpus:
        raise InputError(f"document {rec['negative_id']!r} is not in the corpus", path=path, line=line_no,
                         field="negative_id")
  return out


def prompt_source(config, tokenizer) -> PromptSource:
  """The job's items in stream order (documents or queries after data.offset, data.limit of them),
  prompts built from config.prompt when the loop asks for them."""
  from qgjax.sampling.prompts import PromptBuilder

  builder = PromptBuilder(config.prompt, tokenizer)
  limit = int(config.data.limit or 0)
  offset = int(config.data.offset or 0)
  if offset < 0 or limit < 0:
    raise ConfigError(f"data.offset and data.limit must be >= 0; got {offset} and {limit}")
  max_len = max(config.buckets)
  mode = config.prompt.mode

  def check(item_id: str, ids: list[int]) -> list[int]:
    if len(ids) > max_len:
      raise ConfigError(f"the prompt for {item_id!r} has {len(ids)} tokens, more than the largest bucket "
                        f"{max_len}; lower prompt.max_doc_tokens or add a larger bucket (in a new output_dir "
                        "if this one already holds records: they were made with these settings)")
    return ids

  if mode == "expansion":
    queries = _queries(config)
    ids = list(queries)[offset:offset + limit] if limit else list(queries)[offset:]
    return PromptSource(ids, len(ids), item_id=lambda qid: qid,
                        prepare=lambda qid: Item(qid, queries[qid], check(qid, builder.expansion_prompt(queries[qid]))))

  require(config, "data.corpus")
  corpus = _corpus(config.data.corpus)
  total, docs = document_entries(corpus, offset, limit)
  negative_of = None
  if mode == "contrastive":
    source = config.prompt.negative
    if source == "random":
      negative_of = _negative_picker(corpus, int(config.sampling.seed))
    else:
      table = _negatives_from_file(source, corpus)
      negative_of = lambda doc_id: corpus[table[doc_id]] if doc_id in table else None

  def prepare(doc) -> Item:
    extra, negative = {}, None
    if negative_of is not None:
      neg = negative_of(doc.doc_id)
      if neg is None:
        raise InputError(f"no negative document for {doc.doc_id!r}", path=config.prompt.negative)
      negative, extra = neg.contents, {"negative_id": neg.doc_id}
    return Item(doc.doc_id, doc.contents, check(doc.doc_id, builder.document_prompt(doc.contents, negative)), extra)
  return PromptSource(docs, total, item_id=lambda doc: doc.doc_id, prepare=prepare)


def iter_items(config, tokenizer, done: set[str], process_index: int, process_count: int) -> tuple[int, Iterator[Item]]:
  """(number of items of process `process_index`, iterator over those not in `done`) with prompts built."""
  return pending_items(prompt_source(config, tokenizer), done, process_index, process_count)


# ----------------------------------------------------------------------------------------------
# Resume bookkeeping (the done log of qgjax.sampling.done_log).

def read_done(out_dir: pathlib.Path) -> set[str]:
  """Ids listed in `out_dir`/done_ids.txt (complete lines only: a torn last line is not done)."""
  return done_ids(read_done_entries(out_dir))


def read_done_tokens(out_dir: pathlib.Path) -> int:
  """Tokens generated for the done ids, summed over every run that wrote to `out_dir`."""
  return done_tokens(read_done_entries(out_dir))


# ----------------------------------------------------------------------------------------------

def _records(item: Item, batch, i: int, tokenizer, config, model_name: str) -> tuple[list[dict], int]:
  """Kept records of item i of a SampleBatch, and the number of tokens generated for it."""
  from qgjax.sampling.postprocess import clean_text, select

  mode = config.prompt.mode
  text_field = "expansion" if mode == "expansion" else "query"
  cands, tokens = [], 0
  for j in range(batch.lengths.shape[1]):
    ids, lps = batch.sequence(i, j)
    tokens += len(ids)
    text = clean_text(tokenizer.decode(ids, skip_special_tokens=True), config.postprocess)
    cands.append({text_field: text, "logprob": float(np.sum(lps)), "num_tokens": len(ids), "sample_idx": j})
  out = []
  for c in select(cands, item.source_text, config.postprocess, text_field=text_field):
    if mode == "expansion":
      rec = {"query_id": item.item_id, "query": item.source_text, "expansion": c["expansion"]}
    else:
      rec = {"doc_id": item.item_id, "query": c["query"]}
    rec.update(logprob=round(c["logprob"], 6), num_tokens=c["num_tokens"], sample_idx=c["sample_idx"],
               prompt_mode=mode, model=model_name, **item.extra)
    out.append(rec)
  return out, tokens


def _model_settings(config, kind: str) -> dict:
  """The model settings that change the samples besides its name: kind, compute dtype (resolved:
  "auto" differs between a CPU and a GPU host), layer scan. The attention implementation is left
  out: it changes the kernel, not the function (the run's summary reports it)."""
  return {"kind": kind, "dtype": numerics(config)[0], "scan_layers": bool(config.model.scan_layers)}


def _meta(config, model_name: str, sampling, kind: str = "decoder") -> dict:
  """The settings an output was made with (the loop adds "process": [index, count])."""
  return {"stage": "generate", "model": model_name, "model_settings": _model_settings(config, kind),
          "prompt": config.prompt.to_dict(),
          "postprocess": config.postprocess.to_dict(), "sampling": dataclasses.asdict(sampling),
          "seed": int(config.sampling.seed), "buckets": list(config.buckets),
          "data": {"corpus": str(config.data.corpus), "queries": str(config.data.queries),
                   "limit": int(config.data.limit or 0), "offset": int(config.data.offset or 0)}}


def shared_prefix(config, tokenizer) -> list[int]:
  """The tokens every prompt of the job starts with, which a decoder sampler prefills once per batch
  (config.share_prompt_prefix; PromptBuilder.common_prefix); [] when off."""
  from qgjax.sampling.prompts import PromptBuilder

  return PromptBuilder(config.prompt, tokenizer).common_prefix() if config.get("share_prompt_prefix", True) else []


def run(config) -> dict:
  from qgjax.sampling.engine import Sampler
  from qgjax.sampling.generation_loop import Output, per_item, run_generation

  require(config, "model.name", "output_dir", "batch_size", "buckets")
  check_config(config)
  t_start = time.perf_counter()
  mesh = generation_mesh(config)
  rules = model_sharding_rules(config, mesh)
  kind, model, params, tokenizer = load_generator(config, mesh, rules)
  if kind == "t5" and rules is not None:
    raise ConfigError(f"config.mesh {dict(mesh.shape)} shards the model, which the T5 sampler does not do; "
                      "use [('data', -1)]")
  sampling = sampling_params(config, kind, model, tokenizer)
  model_name = config.model.name
  expansion = config.prompt.mode == "expansion"
  source = prompt_source(config, tokenizer)
  make = Sampler.for_seq2seq if kind == "t5" else Sampler.for_decoder
  extra = {} if rules is None else {"rules": rules}
  if kind != "t5":
    extra["prefix_tokens"] = shared_prefix(config, tokenizer)
  sampler = make(model, params, sampling, batch_size=int(config.batch_size), seed=int(config.sampling.seed),
                 mesh=mesh, **extra)
  sample = lambda items, bucket: sampler.run([it.prompt for it in items], [it.item_id for it in items], bucket)
  records = per_item(lambda item, batch, i: _records(item, batch, i, tokenizer, config, model_name))
  key = ("query_id", "sample_idx") if expansion else ("doc_id", "sample_idx")
  output = Output(config.output_dir, key, _meta(config, model_name, sampling, kind),
                  shard_size=int(config.shard_size))
  result = run_generation(source, sample, records, output, buckets=config.buckets, batch_size=sampler.batch_size,
                          unit="query" if expansion else "doc", desc="generate",
                          log_every_s=float(config.log_every_s), logger=log,
                          keep_examples=int(config.print_examples or 0))
  for rec in result.examples:
    log.info("%s\t%s", rec["query_id"] if expansion else rec["doc_id"], rec["expansion"] if expansion else rec["query"])
  return {**result.summary, "prompt_mode": config.prompt.mode, "model": model_name, "inputs": result.items,
          "inputs_this_run": result.items_this_run, "inputs_per_s": result.items_per_s,
          "tokens_this_run": result.tokens_this_run, "tokens_per_s": result.tokens_per_s,
          "generation_s": result.generation_s,
          "total_s": round(time.perf_counter() - t_start, 1), "compiled_programs": sampler.num_compiles,
          "compile_s": round(sampler.compile_s, 1), "sampler_s": round(sampler.run_s, 1),
          "shared_prefix_tokens": len(sampler.prefix), "inputs_this_run_with_shared_prefix": sampler.prefixed_prompts,
          "devices": int(mesh.devices.size), "mesh": {k: int(v) for k, v in mesh.shape.items()},
          **dict(zip(("dtype", "attention"), numerics(config)))}
