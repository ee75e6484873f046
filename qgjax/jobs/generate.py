"""`qgjax generate`: n queries per document of a BEIR corpus (AQE: n expansions per query).

  qgjax generate --config configs/demo.py                     # shipped demo corpus; prints a few queries
  qgjax generate --config configs/generate.py --config.data.corpus=data/nfcorpus --config.output_dir=out/q
  qgjax generate --config configs/generate.py:mode=contrastive --config.data.corpus=data/nfcorpus
  qgjax generate --config configs/generate.py:mode=expansion --config.data.queries=data/nfcorpus/queries.jsonl

Documents stream from `data.corpus` (a BEIR directory or a corpus.jsonl); prompts are built from
`config.prompt` (plain / few_shot / contrastive / expansion), bucketed by length and sampled in
batches of `batch_size` on this process's devices (`qgjax.sampling.engine`). Output: sharded
JSONL (`qgjax.data.sharded_writer`) in `output_dir` (with several processes, each writes
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
import os
import pathlib
import time
from typing import Any, Iterator

import numpy as np

from qgjax.config import require
from qgjax.errors import ConfigError, InputError

DONE_FILE = "done_ids.txt"
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Item:
  """One prompt: the id it is keyed by, the text post-processing compares against, its tokens."""
  item_id: str
  source_text: str
  prompt: list[int]
  extra: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Model and sampling settings.

def load_generator(config) -> tuple[str, Any, Any, Any]:
  """-> (kind, model, params, tokenizer) for config.model (name/path, kind, dtype)."""
  from qgjax.models.registry import model_kind

  m = config.model
  kind = model_kind(m.name, m.get("kind", "auto"))
  if kind == "t5":
    from qgjax.models.registry import resolve
    from qgjax.models.t5 import load_t5

    model, params, tokenizer = load_t5(resolve(m.name), dtype=m.dtype)
  else:
    from qgjax.models.registry import load_decoder

    model, params, tokenizer = load_decoder(m.name, dtype=m.dtype, scan_layers=bool(m.get("scan_layers", True)))
  if tokenizer is None:
    raise ConfigError(f"model {m.name!r} has no tokenizer files; generation needs one")
  return kind, model, params, tokenizer


def sampling_params(config, kind: str, model: Any, tokenizer: Any):
  """config.sampling -> SamplingParams (EOS from the model and tokenizer, newline stops)."""
  from qgjax.sampling.prompts import newline_token_ids

  s = config.sampling
  stops: set[int] = set()
  if s.stop_at_eos:
    if kind == "t5":
      stops.add(int(model.config.eos_token_id))
    else:
      stops.update(int(t) for t in model.config.eos_token_ids)
    if getattr(tokenizer, "eos_token_id", None) is not None:
      stops.add(int(tokenizer.eos_token_id))
  if s.stop_at_newline:
    stops.update(newline_token_ids(tokenizer))
  pad = model.config.pad_token_id
  if pad is None:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  return _sampling_from(s, eos_token_ids=tuple(sorted(stops)), pad_token_id=int(pad))


def _sampling_from(s, **extra):
  """config.sampling + EOS / pad ids -> SamplingParams; a bad value is a ConfigError naming its key."""
  from qgjax.sampling.logits import SamplingParams

  try:
    return SamplingParams(max_new_tokens=s.max_new_tokens, num_samples=s.num_samples, temperature=s.temperature,
                          top_k=s.top_k, top_p=s.top_p, num_beams=s.num_beams, length_penalty=s.length_penalty,
                          early_stopping=s.early_stopping, **extra)
  except ValueError as e:
    raise ConfigError(f"config.sampling: {e}") from None


def check_config(config) -> None:
  """Fails fast, before the model loads or an output is opened, on values the job cannot run with."""
  from qgjax.parallel.backend import compute_dtype

  _sampling_from(config.sampling)
  if int(config.batch_size) < 1:
    raise ConfigError(f"config.batch_size must be >= 1; got {config.batch_size}")
  if not config.buckets or min(int(b) for b in config.buckets) < 1:
    raise ConfigError(f"config.buckets must list prompt lengths >= 1; got {list(config.buckets)}")
  try:
    compute_dtype(None, config.model.get("dtype", "auto"))
  except ConfigError as e:
    raise ConfigError(f"config.model.dtype: {e}") from None


# ----------------------------------------------------------------------------------------------
# Inputs.

def _corpus(path: str):
  from qgjax.data.beir import Corpus

  if str(path).startswith("tfds:"):  # tfds:<builder_dir>[:split]: a prepared TFDS dataset
    from qgjax.data.tfds_source import TfdsCorpus
    return TfdsCorpus.from_spec(str(path))
  p = pathlib.Path(path)
  if p.is_dir():
    p = p / "corpus.jsonl"
  if not p.is_file():
    raise InputError("corpus not found (a BEIR directory or a corpus.jsonl)", path=str(p))
  return Corpus(p)


def _queries(config) -> dict[str, str]:
  from qgjax.data.beir import load_queries, queries_path

  path = config.data.get("queries", "") or ""
  if not path:
    if not config.data.get("corpus"):
      raise ConfigError("prompt mode 'expansion' needs data.queries (a queries.jsonl) or data.corpus (a BEIR dir)")
    path = str(queries_path(config.data.corpus, config.data.get("split") or None))
  if not os.path.isfile(path):
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
  if not os.path.isfile(path):
    raise ConfigError(f"config.prompt.negative={path!r} is neither 'random' nor a JSONL file of "
                      "{doc_id, negative_id}")
  out = {}
  with open(path, encoding="utf-8") as f:
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


def iter_items(config, tokenizer, done: set[str], process_index: int, process_count: int) -> tuple[int, Iterator[Item]]:
  """(number of items of this process, iterator over those not in `done`) with prompts built."""
  from qgjax.sampling.prompts import PromptBuilder

  builder = PromptBuilder(config.prompt, tokenizer)
  limit = int(config.data.get("limit", 0) or 0)
  offset = int(config.data.get("offset", 0) or 0)
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
    mine = ids[process_index::process_count]

    def gen_queries():
      for qid in mine:
        if qid not in done:
          text = queries[qid]
          yield Item(qid, text, check(qid, builder.expansion_prompt(text)), {})
    return len(mine), gen_queries()

  require(config, "data.corpus")
  corpus = _corpus(config.data.corpus)
  available = max(len(corpus) - offset, 0)
  total = min(available, limit) if limit else available
  mine_count = len(range(process_index, total, process_count))
  negative_of = None
  if mode == "contrastive":
    source = config.prompt.get("negative", "random")
    if source == "random":
      negative_of = _negative_picker(corpus, int(config.sampling.seed))
    else:
      table = _negatives_from_file(source, corpus)
      negative_of = lambda doc_id: corpus[table[doc_id]] if doc_id in table else None

  def gen_docs():
    for i, doc in enumerate(corpus):
      i -= offset  # position among the selected documents
      if i < 0:
        continue
      if i >= total:
        break
      if i % process_count != process_index or doc.doc_id in done:
        continue
      extra, negative = {}, None
      if negative_of is not None:
        neg = negative_of(doc.doc_id)
        if neg is None:
          raise InputError(f"no negative document for {doc.doc_id!r}", path=config.prompt.negative)
        negative, extra = neg.contents, {"negative_id": neg.doc_id}
      yield Item(doc.doc_id, doc.contents, check(doc.doc_id, builder.document_prompt(doc.contents, negative)), extra)
  return mine_count, gen_docs()


# ----------------------------------------------------------------------------------------------
# Resume bookkeeping and progress.

def read_done(out_dir: pathlib.Path) -> set[str]:
  """Ids listed in done_ids.txt (complete lines only: a torn last line is not done)."""
  path = out_dir / DONE_FILE
  if not path.is_file():
    return set()
  data = path.read_text(encoding="utf-8")
  lines = data.split("\n")
  return {json.loads(line) for line in lines[:-1] if line}  # last element: "" or a torn line


class _DoneLog:
  def __init__(self, out_dir: pathlib.Path):
    path = out_dir / DONE_FILE
    if path.is_file():  # drop a torn last line before appending
      data = path.read_bytes()
      cut = data.rfind(b"\n") + 1
      if cut < len(data):
        with open(path, "r+b") as f:
          f.truncate(cut)
    self._f = open(path, "a", encoding="utf-8")

  def add(self, ids: list[str]) -> None:
    self._f.write("".join(json.dumps(i) + "\n" for i in ids))
    self._f.flush()

  def close(self) -> None:
    self._f.close()


class _Progress:
  """Items/s, tokens/s and ETA: a tqdm bar on a terminal, else a log line every `every_s`."""

  def __init__(self, total: int, initial: int, unit: str, every_s: float):
    from qgjax.data.progress import progress, progress_enabled

    self.total, self.done, self.unit, self.every_s = total, initial, unit, every_s
    self.bar = progress(total=total, desc="generate", unit=unit, initial=initial) if progress_enabled() else None
    self.start = self.last = time.perf_counter()
    self.items = 0
    self.tokens = 0

  def update(self, items: int, tokens: int) -> None:
    self.items += items
    self.tokens += tokens
    self.done += items
    now = time.perf_counter()
    if self.bar is not None:
      self.bar.set_postfix(tok_s=f"{self.tokens / max(now - self.start, 1e-9):.0f}", refresh=False)
      self.bar.update(items)
    elif now - self.last >= self.every_s or self.done >= self.total:
      self.last = now
      log.info("%s", self.line())

  def rates(self) -> tuple[float, float]:
    dt = max(time.perf_counter() - self.start, 1e-9)
    return self.items / dt, self.tokens / dt

  def line(self) -> str:
    ips, tps = self.rates()
    left = self.total - self.done
    eta = left / ips if ips > 0 else float("inf")
    eta_s = "?" if eta == float("inf") else time.strftime("%H:%M:%S", time.gmtime(eta))
    return (f"{self.done}/{self.total} {self.unit}s, {ips:.2f} {self.unit}s/s, {tps:.0f} tokens/s, "
            f"ETA {eta_s}")

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


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


def _meta(config, model_name: str, sampling, process_index: int, process_count: int) -> dict:
  return {"stage": "generate", "model": model_name, "prompt": config.prompt.to_dict(),
          "postprocess": config.postprocess.to_dict(), "sampling": dataclasses.asdict(sampling),
          "seed": int(config.sampling.seed), "buckets": list(config.buckets),
          "data": {"corpus": str(config.data.get("corpus", "")), "queries": str(config.data.get("queries", "")),
                   "limit": int(config.data.get("limit", 0) or 0),
                   "offset": int(config.data.get("offset", 0) or 0)},
          "process": [process_index, process_count]}


def run(config) -> dict:
  import jax

  from qgjax.data.sharded_writer import ShardedJsonlWriter
  from qgjax.sampling.batching import bucketed
  from qgjax.sampling.engine import Sampler, local_data_mesh

  require(config, "model.name", "output_dir", "batch_size", "buckets")
  check_config(config)
  t_start = time.perf_counter()
  process_index, process_count = jax.process_index(), jax.process_count()
  out_dir = pathlib.Path(config.output_dir)
  if process_count > 1:
    out_dir = out_dir / f"process-{process_index:05d}"
  kind, model, params, tokenizer = load_generator(config)
  sampling = sampling_params(config, kind, model, tokenizer)
  model_name = config.model.name
  expansion = config.prompt.mode == "expansion"
  key = ("query_id", "sample_idx") if expansion else ("doc_id", "sample_idx")
  writer = ShardedJsonlWriter(out_dir, key=key, shard_size=int(config.get("shard_size", 10_000)),
                              meta=_meta(config, model_name, sampling, process_index, process_count))
  examples: list[dict] = []
  try:
    done = read_done(out_dir)
    total, items = iter_items(config, tokenizer, done, process_index, process_count)
    mesh = local_data_mesh(int(config.get("num_devices", 0) or 0))
    make = Sampler.for_seq2seq if kind == "t5" else Sampler.for_decoder
    sampler = make(model, params, sampling, batch_size=int(config.batch_size), seed=int(config.sampling.seed),
                   mesh=mesh)
    done_log = _DoneLog(out_dir)
    unit = "query" if expansion else "doc"
    bar = _Progress(total, len(done), unit, float(config.get("log_every_s", 10.0)))
    t_gen = time.perf_counter()
    try:
      for bucket, group in bucketed(items, lambda it: len(it.prompt), config.buckets, sampler.batch_size):
        batch = sampler.run([it.prompt for it in group], [it.item_id for it in group], bucket)
        n_tokens = 0
        for i, item in enumerate(group):
          records, tokens = _records(item, batch, i, tokenizer, config, model_name)
          n_tokens += tokens
          for rec in records:
            writer.write(rec)
            if len(examples) < int(config.get("print_examples", 0) or 0):
              examples.append(rec)
        writer.flush()
        done_log.add([it.item_id for it in group])
        bar.update(len(group), n_tokens)
    finally:
      bar.close()
      done_log.close()
    items_s, tokens_s = bar.rates()
    summary = writer.finish(items=total, generated_tokens=bar.tokens)
  finally:
    writer.close()
  for rec in examples:
    text = rec["expansion"] if expansion else rec["query"]
    src = rec["query_id"] if expansion else rec["doc_id"]
    print(f"{src}\t{text}")
  return {**summary, "prompt_mode": config.prompt.mode, "model": model_name, "inputs": total,
          "inputs_this_run": bar.items, "inputs_per_s": round(items_s, 3), "tokens_per_s": round(tokens_s, 1),
          "generation_s": round(time.perf_counter() - t_gen, 1), "total_s": round(time.perf_counter() - t_start, 1),
          "compiled_programs": sampler.num_compiles, "devices": int(mesh.devices.size)}
