"""The shared generation loop (qgjax.sampling.generation_loop) with a real sampler over a tiny
Llama: a run that crashes mid-way and is resumed (with a torn done log) ends with the records of
an unbroken run, each once; the process split covers every item exactly once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from qgjax.data.records import iter_records
from qgjax.data.sharded_writer import is_complete, iter_sharded, read_manifest
from qgjax.sampling.done_log import DONE_FILE, done_ids, read_done_entries
from qgjax.sampling.generation_loop import Item, Output, PromptSource, pending_items, per_item, run_generation
from tiny_lm import make_tiny_lm
from xla_flags import cpu_devices

BUCKETS = (12, 24)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(sampler: 2 samples of up to 4 tokens at temperature 1, batches of 2; prompt source over the
  first 9 demo documents: their first 6..23 tokens, so both buckets are used)."""
  from qgjax.data import demo_dir
  from qgjax.data.beir import Corpus
  from qgjax.models.registry import load_decoder
  from qgjax.sampling.engine import Sampler, local_data_mesh
  from qgjax.sampling.logits import SamplingParams

  path = make_tiny_lm(str(tmp_path_factory.mktemp("tiny_lm")))
  model, params, tok = load_decoder(path, dtype="float32", scan_layers=False)
  sampling = SamplingParams(max_new_tokens=4, num_samples=2, temperature=1.0, top_k=0, top_p=1.0,
                            eos_token_ids=(tok.eos_token_id,), pad_token_id=0)
  sampler = Sampler.for_decoder(model, params, sampling, batch_size=2, seed=7, mesh=local_data_mesh(1))
  docs = list(Corpus(demo_dir() / "corpus.jsonl"))[:9]
  prompts = {d.doc_id: tok(d.contents, add_special_tokens=False)["input_ids"][:6 + 2 * i] for i, d in enumerate(docs)}
  assert {len(p) <= BUCKETS[0] for p in prompts.values()} == {True, False}  # both buckets in use
  return sampler, docs, prompts


def _source(docs, prompts):
  return PromptSource(iter(docs), len(docs), item_id=lambda d: d.doc_id,
                      prepare=lambda d: Item(d.doc_id, d.contents, prompts[d.doc_id], {"n_prompt": len(prompts[d.doc_id])}))


def _sample(sampler):
  return lambda items, bucket: sampler.run([it.prompt for it in items], [it.item_id for it in items], bucket)


def _record(item, batch, i):
  recs, tokens = [], 0
  for j in range(batch.lengths.shape[1]):
    ids, lps = batch.sequence(i, j)
    tokens += len(ids)
    recs.append({"doc_id": item.item_id, "sample_idx": j, "tokens": ids, "logprob": round(float(np.sum(lps)), 5),
                 **item.extra})
  return recs, tokens


def _run(tiny, out, *, sample=None, process=(0, 1)):
  sampler, docs, prompts = tiny
  return run_generation(_source(docs, prompts), sample or _sample(sampler), per_item(_record),
                        Output(out, ("doc_id", "sample_idx"), {"stage": "test"}, shard_size=5),
                        buckets=BUCKETS, batch_size=2, unit="doc", log_every_s=0.0, process=process)


def _key(r):
  return r["doc_id"], r["sample_idx"]


def test_pending_items_split_every_item_once_and_skip_done():
  entries = [f"d{i}" for i in range(11)]
  built = []
  source = PromptSource(entries + ["beyond total"], 11, item_id=lambda e: e,
                        prepare=lambda e: built.append(e) or Item(e, e, [1]))
  for count in (1, 2, 3):
    slices = []
    for index in range(count):
      n, items = pending_items(source, set(), index, count)
      ids = [it.item_id for it in items]
      assert n == len(ids) and ids == entries[index::count]
      slices += ids
    assert sorted(slices) == sorted(entries)
  built.clear()
  n, items = pending_items(source, {"d0", "d4"}, 0, 2)
  assert n == 6 and [it.item_id for it in items] == ["d2", "d6", "d8", "d10"]
  assert built == ["d2", "d6", "d8", "d10"]  # prompts are built for this process's pending items only
  with pytest.raises(ValueError):
    pending_items(source, set(), 2, 2)


def test_crash_then_resume_equals_an_unbroken_run(tiny, tmp_path):
  sampler, docs, _ = tiny
  whole = _run(tiny, tmp_path / "whole")
  want = list(iter_sharded(tmp_path / "whole"))
  assert whole.items == whole.items_this_run == 9 and len(want) == 18 == len({_key(r) for r in want})
  assert whole.summary["records"] == 18 and whole.generated_tokens == sum(len(r["tokens"]) for r in want) > 18
  # sampling is random (temperature 1): the two samples of a document differ somewhere
  assert any(a["tokens"] != b["tokens"] for a, b in zip(want[::2], want[1::2]))

  # A run that dies while sampling its 4th batch: 3 batches done, their records written.
  calls = []

  def dies_on_4th(items, bucket):
    calls.append([it.item_id for it in items])
    if len(calls) == 4:
      raise RuntimeError("killed")
    return _sample(sampler)(items, bucket)
  out = tmp_path / "crashed"
  with pytest.raises(RuntimeError, match="killed"):
    _run(tiny, out, sample=dies_on_4th)
  entries = read_done_entries(out)
  assert [e[0] for e in entries] == sum(calls[:3], [])
  assert not read_manifest(out)["complete"]
  # ... and as if killed after the 3rd batch's records but before its ids were complete in the
  # done log: its last id dropped, a torn line in its place.
  lines = (out / DONE_FILE).read_text().splitlines(keepends=True)
  (out / DONE_FILE).write_text("".join(lines[:-1]) + '["' + calls[2][-1][:3])

  resumed = _run(tiny, out)
  got = list(iter_sharded(out))
  assert resumed.items == 9 and resumed.items_this_run == 9 - (len(lines) - 1)
  assert len(got) == len({_key(r) for r in got})  # no duplicates
  assert sorted(got, key=_key) == sorted(want, key=_key)  # nothing lost; the same samples (keys fold in the id)
  assert got[:12] == want[:12]  # the 3 batches written before the crash kept in place (same batches as unbroken)
  ids = [e[0] for e in read_done_entries(out)]
  assert sorted(ids) == sorted(d.doc_id for d in docs) and len(ids) == len(set(ids))
  assert resumed.generated_tokens == whole.generated_tokens == read_manifest(out)["summary"]["generated_tokens"]
  assert read_manifest(out)["complete"] and read_manifest(out)["meta"]["process"] == [0, 1]
  again = _run(tiny, out)  # a finished output: nothing to do
  assert again.items_this_run == 0 and list(iter_sharded(out)) == got


def test_process_split_covers_every_item_once(tiny, tmp_path):
  _, docs, _ = tiny
  _run(tiny, tmp_path / "one")
  one = sorted(iter_sharded(tmp_path / "one"), key=_key)
  parts = [_run(tiny, tmp_path / "two", process=(i, 2)) for i in range(2)]
  assert [p.items for p in parts] == [5, 4]
  for i in range(2):
    part = tmp_path / "two" / f"process-{i:05d}"
    assert is_complete(part) and read_manifest(part)["meta"]["process"] == [i, 2]
    assert {r["doc_id"] for r in iter_sharded(part)} == {d.doc_id for d in docs[i::2]}
    assert done_ids(read_done_entries(part)) == {d.doc_id for d in docs[i::2]}
  two = sorted((r for _, _, r in iter_records(tmp_path / "two")), key=_key)
  assert two == one and len(two) == len({_key(r) for r in two}) == 18
  # read as one output (item_ranks.json in each part) the parts come in the one-process order, not
  # one part after the other
  in_order = list(iter_sharded(tmp_path / "one"))
  assert [r for _, _, r in iter_records(tmp_path / "two")] == in_order
  assert [r for i in range(2) for r in iter_sharded(tmp_path / "two" / f"process-{i:05d}")] != in_order
  assert json.loads(json.dumps(two[0]))["n_prompt"] >= 6  # the item's extra fields reach its records


# ------------------------------------------------------------------------------------------------
# ReadQG generation through the loop on 2 real JAX processes (localhost coordinator).

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READQG_WORKER = """
import json, sys
from qgjax.parallel.distributed import maybe_initialize
maybe_initialize()
from qgjax.config import build_config
from qgjax.methods.readqg import generate
config, export, out = sys.argv[1:4]
c = build_config(config, [("model.name", export), ("data.corpus", sys.argv[4]), ("data.limit", "7"),
                          ("output_dir", out), ("batch_size", "2"), ("sampling.num_samples", "2"),
                          ("shard_size", "3"), ("num_devices", "1"), ("buckets", "[64]")])
print("RESULT " + json.dumps(generate.run(c)))
"""


def _readqg_export(path: str, tiny_lm: str) -> str:
  """A ReadQG decoder export: random soft prompts (3 instruction, 2 true, 2 false vectors) on the tiny LM."""
  from qgjax.methods.readqg.objective import save_soft_prompt

  rng = np.random.default_rng(5)
  soft = {k: rng.normal(0, 0.5, (n, 32)).astype(np.float32) for k, n in (("instruction", 3), ("true", 2), ("false", 2))}
  save_soft_prompt(soft, path, {"kind": "decoder", "generator": tiny_lm, "max_doc_tokens": 40, "separator": "query :"})
  return path


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_readqg_generation_two_processes_equal_one(tmp_path):
  from qgjax.data import demo_dir
  from qgjax.pipeline.stage import has_sharded

  export = _readqg_export(str(tmp_path / "export"), make_tiny_lm(str(tmp_path / "tiny_lm")))
  config = os.path.join(REPO, "configs", "readqg_generate.py") + ":tiny,decoder"
  port = _free_port()
  procs = []
  for run, index, count in (("one", 0, 1), ("two", 0, 2), ("two", 1, 2)):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGJAX_")}
    env.update(XLA_FLAGS=cpu_devices(1), JAX_PLATFORMS="cpu", QGJAX_PROGRESS="0",
               PYTHONPATH=REPO)
    if count > 1:
      env.update(QGJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", QGJAX_NUM_PROCESSES=str(count),
                 QGJAX_PROCESS_ID=str(index))
    procs.append(subprocess.Popen([sys.executable, "-c", READQG_WORKER, config, export, str(tmp_path / run),
                                   str(demo_dir())], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  try:
    logs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
  results = [json.loads(log[log.index("RESULT ") + 7:].splitlines()[0]) for log in logs]
  key = lambda r: (r["doc_id"], r["sample_idx"])
  one = sorted((r for _, _, r in iter_records(tmp_path / "one")), key=key)
  two = sorted((r for _, _, r in iter_records(tmp_path / "two")), key=key)
  assert sorted(os.listdir(tmp_path / "two")) == ["ce_pairs.jsonl", "process-00000", "process-00001"]
  assert two == one and len(one) == len({key(r) for r in one}) and {r["r"] for r in one} == {0.0, 1.0}
  from qgjax.data.beir import Corpus

  first = [d.doc_id for d in list(Corpus(demo_dir() / "corpus.jsonl"))[:7]]
  for i in range(2):  # process i took documents i, i + 2, ...
    part = tmp_path / "two" / f"process-0000{i}"
    assert {r["doc_id"] for r in iter_sharded(part)} == set(first[i::2]) == done_ids(read_done_entries(part))
    assert read_manifest(part)["meta"]["process"] == [i, 2]
  pairs = (tmp_path / "one" / "ce_pairs.jsonl").read_text()
  assert (tmp_path / "two" / "ce_pairs.jsonl").read_text() == pairs and pairs.count("\n") > 0
  assert [r["ce_pairs"] for r in results] == [pairs.count("\n")] * 3   # both processes report the joined file
  assert [r["documents"] for r in results] == [7, 7, 7] and [r["records"] for r in results[1:]] != [0, 0]
  assert has_sharded()(tmp_path / "two") and has_sharded()(tmp_path / "one")


def test_item_ranks_follow_the_one_process_batches():
  """Ranks are positions in one process's write order: full bucket groups as they fill, then the
  partial groups by bucket; each process gets the ranks of its round-robin items only."""
  from qgjax.sampling.generation_loop import item_ranks

  lengths = {"a": 5, "b": 20, "c": 6, "d": 21, "e": 22, "f": 7}   # buckets 12 / 24, batches of 2
  source = PromptSource(list(lengths), len(lengths), item_id=lambda x: x,
                        prepare=lambda x: Item(x, x, [1] * lengths[x]))
  # one process: [a, c] (12 full), [b, d] (24 full), then the partial groups [f] (12), [e] (24)
  order = {"a": 0, "c": 1, "b": 2, "d": 3, "f": 4, "e": 5}
  assert item_ranks(source, BUCKETS, 2, 0, 1) == order
  parts = [item_ranks(source, BUCKETS, 2, i, 2) for i in range(2)]
  assert parts == [{k: order[k] for k in "ace"}, {k: order[k] for k in "bdf"}]
