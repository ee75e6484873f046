"""Sharded resumable JSONL writer: crash windows, real SIGKILLs, checks on resume."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from qgjax.data import sharded_writer as sw
from qgjax.data.sharded_writer import ShardedJsonlWriter, iter_sharded
from qgjax.errors import ConfigError, InputError


def _record(i: int) -> dict:
  rng = random.Random(i)
  return {"doc_id": f"d{i // 3}", "sample_idx": i % 3, "query": "q" * rng.randint(1, 3000),
          "logprob": -rng.random()}


def _records(n):
  return [_record(i) for i in range(n)]


def _write_all(out, n, shard_size=7, meta=None):
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=shard_size,
                          meta=meta or {"n": n}) as w:
    for rec in _records(n):
      w.write(rec)
    return w.finish()


def test_clean_run_roundtrip(tmp_path):
  summary = _write_all(tmp_path / "out", 50)
  assert summary["records"] == 50 and summary["shards"] == 8  # 7 full shards + one of 1
  assert list(iter_sharded(tmp_path / "out", verify=True, require_complete=True)) == _records(50)
  manifest = sw.read_manifest(tmp_path / "out")
  assert manifest["complete"] and [s["records"] for s in manifest["shards"]] == [7] * 7 + [1]


def test_write_skips_done_keys_and_resume_reports_them(tmp_path):
  out = tmp_path / "out"
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=4) as w:
    for rec in _records(10):
      assert w.write(rec)
    assert not w.write(_record(3))  # duplicate key: skipped
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=4) as w:
    assert w.num_records == 10 and ("d1", 0) in w.done_keys and not w.complete
    for rec in _records(12):
      w.write(rec)
    assert w.num_written == 2 and w.num_skipped == 10
    w.finish()
  assert list(iter_sharded(out, require_complete=True)) == _records(12)


def test_torn_tail_of_open_shard_is_cut(tmp_path):
  out = tmp_path / "out"
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=5) as w:
    for rec in _records(8):
      w.write(rec)
  tmp = out / "shard-00001.jsonl.tmp"
  with open(tmp, "ab") as f:  # a record half-written when the process died
    f.write(b'{"doc_id": "d2", "sample_idx": 2, "que')
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=5) as w:
    assert w.num_records == 8 and ("d2", 2) not in w.done_keys
    for rec in _records(11):
      w.write(rec)
    w.finish()
  assert list(iter_sharded(out, verify=True)) == _records(11)


def test_kill_between_rename_and_manifest_adopts_shard(tmp_path, monkeypatch):
  out = tmp_path / "out"
  w = ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=4)
  for rec in _records(4):
    w.write(rec)
  boom = RuntimeError("killed")

  def die(*a, **k):
    raise boom

  monkeypatch.setattr(ShardedJsonlWriter, "_append_manifest_entry", die)
  with pytest.raises(RuntimeError):
    for rec in _records(8)[4:]:
      w.write(rec)
  w.close()
  monkeypatch.undo()
  assert (out / "shard-00001.jsonl").is_file() and len(sw.read_manifest(out)["shards"]) == 1
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=4) as w2:
    assert w2.num_records == 8
    for rec in _records(10):
      w2.write(rec)
    w2.finish()
  assert list(iter_sharded(out, verify=True)) == _records(10)


def test_kill_while_replacing_manifest_keeps_old_manifest(tmp_path, monkeypatch):
  out = tmp_path / "out"
  w = ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=3)
  for rec in _records(3):
    w.write(rec)
  real_replace = os.replace

  def replace(src, dst):
    if str(dst).endswith(sw.MANIFEST):
      raise RuntimeError("killed before the manifest rename")
    return real_replace(src, dst)

  monkeypatch.setattr(sw.os, "replace", replace)
  with pytest.raises(RuntimeError):
    for rec in _records(6)[3:]:
      w.write(rec)
  w.close()
  monkeypatch.undo()
  assert (out / (sw.MANIFEST + ".tmp")).is_file()
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=3) as w2:
    for rec in _records(7):
      w2.write(rec)
    w2.finish()
  assert list(iter_sharded(out, verify=True)) == _records(7)


def test_committed_shards_are_never_rewritten(tmp_path):
  out = tmp_path / "out"
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=3) as w:
    for rec in _records(7):
      w.write(rec)
  before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("shard-*.jsonl")}
  assert len(before) == 2
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=3) as w:
    for rec in _records(20):
      w.write(rec)
    w.finish()
  after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("shard-*.jsonl")}
  assert all(after[name] == digest for name, digest in before.items())


def test_resume_checks(tmp_path):
  out = tmp_path / "out"
  _write_all(out, 10, meta={"model": "a"})
  with pytest.raises(ConfigError, match=r"different settings \(model: 'a' -> 'b'\)"):
    ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), meta={"model": "b"})
  with pytest.raises(ConfigError, match="written with key"):
    ShardedJsonlWriter(out, key="doc_id", meta={"model": "a"})
  # an output that holds no record yet (the job stopped on its input) takes the new settings
  empty = tmp_path / "empty"
  ShardedJsonlWriter(empty, key="doc_id", meta={"model": "a"}).close()
  (empty / "shard-00000.jsonl.tmp").write_bytes(b'{"doc_id": "torn')   # a torn first line: no record
  with ShardedJsonlWriter(empty, key="doc_id", meta={"model": "b"}) as w:
    w.write({"doc_id": "d0"})
  assert sw.read_manifest(empty)["meta"] == {"model": "b"}
  with pytest.raises(ConfigError, match="different settings"):
    ShardedJsonlWriter(empty, key="doc_id", meta={"model": "a"})
  w = ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), meta={"model": "a"})
  with pytest.raises(InputError, match="in use by qgjax"):
    ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), meta={"model": "a"})
  w.close()
  shard = out / "shard-00000.jsonl"
  shard.write_bytes(shard.read_bytes().replace(b'"d0"', b'"dX"'))
  with pytest.raises(InputError, match="shard-00000.jsonl: committed shard does not match"):
    ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), meta={"model": "a"})
  with pytest.raises(InputError, match="does not match its checksum"):
    list(iter_sharded(out, verify=True))
  with pytest.raises(InputError, match="no manifest"):
    list(iter_sharded(tmp_path / "nothing"))


def test_incomplete_output_is_refused_when_required(tmp_path):
  out = tmp_path / "out"
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=2) as w:
    for rec in _records(5):
      w.write(rec)
  assert [r["doc_id"] for r in iter_sharded(out)] == ["d0", "d0", "d0", "d1"]  # committed only
  with pytest.raises(InputError, match="incomplete"):
    list(iter_sharded(out, require_complete=True))


PRODUCER = textwrap.dedent("""
    import random, sys, time
    sys.path.insert(0, {repo!r})
    from qgjax.data.sharded_writer import ShardedJsonlWriter
    out, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    def record(i):
      rng = random.Random(i)
      return {{"doc_id": f"d{{i // 3}}", "sample_idx": i % 3, "query": "q" * rng.randint(1, 3000),
              "logprob": -rng.random()}}
    with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=37, meta={{"n": n}}) as w:
      print("ready", flush=True)  # the test kills only after this: import time is not write time
      for i in range(n):
        if (f"d{{i // 3}}", i % 3) in w.done_keys:
          continue
        w.write(record(i))
        time.sleep(pause)
      w.finish()
    print("done", w.num_written)
""")


def test_sigkill_at_random_moments_then_resume_equals_clean_run(tmp_path):
  import pathlib
  repo = str(pathlib.Path(__file__).resolve().parents[1])
  script = tmp_path / "producer.py"
  script.write_text(PRODUCER.format(repo=repo))
  n = 1500
  out = tmp_path / "killed"
  rng = random.Random(0)
  kills = 0
  for _ in range(8):
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(n), "0.002"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()  # "ready" (or "" if it ended): the writer is open and writing now
    time.sleep(rng.uniform(0.05, 0.4))
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      kills += 1
    proc.wait()
    if sw.is_complete(out):
      break
  assert kills >= 3, "the producer finished before it could be killed; make it slower"
  assert not sw.is_complete(out)
  final = subprocess.run([sys.executable, str(script), str(out), str(n), "0"], capture_output=True,
                         text=True, timeout=120)
  assert final.returncode == 0, final.stderr
  clean = tmp_path / "clean"
  subprocess.run([sys.executable, str(script), str(clean), str(n), "0"], check=True, timeout=120,
                 capture_output=True)
  got = list(iter_sharded(out, verify=True, require_complete=True))
  want = list(iter_sharded(clean, verify=True, require_complete=True))
  assert len(got) == n and got == want == _records(n)
  assert "done" in final.stdout and int(final.stdout.split()[-1]) < n  # it resumed, not restarted
  assert not list(out.glob("*.tmp"))


def test_iter_records_over_process_parts_and_files(tmp_path):
  from qgjax.data.records import fingerprint, iter_records
  root = tmp_path / "gen"
  for p, span in ((1, range(5, 8)), (0, range(0, 5))):
    with ShardedJsonlWriter(root / f"process-{p}", key=("doc_id", "sample_idx"), shard_size=2) as w:
      for i in span:
        w.write(_record(i))
      w.finish()
  got = [(path.rsplit("/", 2)[-2], line, rec) for path, line, rec in iter_records(root)]
  assert [r for _, _, r in got] == _records(8)  # process-0 first, then process-1
  assert got[0][:2] == ("process-0", 1) and got[2][:2] == ("process-0", 1)  # second shard, line 1
  fp = fingerprint(root)
  with ShardedJsonlWriter(root / "process-1", key=("doc_id", "sample_idx"), shard_size=2) as w:
    w.write(_record(99))  # reopened and extended: now incomplete, and different
  with pytest.raises(InputError, match="process-1: output is incomplete"):
    list(iter_records(root))
  assert len(list(iter_records(root, require_complete=False))) == 8  # the new record is not committed
  with ShardedJsonlWriter(root / "process-1", key=("doc_id", "sample_idx"), shard_size=2) as w:
    w.finish()
  assert fingerprint(root) != fp
  plain = tmp_path / "plain.jsonl"
  plain.write_text('{"a": 1}\n\n{"a": 2}\n')
  assert [(line, r) for _, line, r in iter_records(plain)] == [(1, {"a": 1}), (3, {"a": 2})]
  plain.write_text('{"a": 1}\n[2]\n')
  with pytest.raises(InputError, match=r"plain.jsonl:2: expected a JSON object"):
    list(iter_records(plain))
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="no manifest.json"):
    list(iter_records(tmp_path / "empty"))


def test_process_blocks_and_item_ranked_parts(tmp_path):
  """Contiguous blocks cover [0, n) once, in process order; parts with item_ranks.json read in
  rank order (an item's records in write order), and a record of an unranked item is an error."""
  from qgjax.data.records import ITEM_RANKS, count_input, iter_records, process_block
  for n in (0, 1, 5, 8, 11):
    for count in (1, 2, 3, 4):
      blocks = [process_block(n, i, count) for i in range(count)]
      assert [x for b in blocks for x in b] == list(range(n))
      assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
  with pytest.raises(ValueError, match="not in"):
    process_block(3, 2, 2)
  root = tmp_path / "gen"
  ranks = {0: {"d3": 0, "d1": 2}, 1: {"d0": 1, "d2": 3}}   # d3 was written first by one process
  for p, docs in ((0, ("d1", "d3")), (1, ("d0", "d2"))):
    with ShardedJsonlWriter(root / f"process-{p:05d}", key=("doc_id", "sample_idx"), shard_size=3) as w:
      for d in docs:
        for j in (1, 0):
          w.write({"doc_id": d, "sample_idx": j})
      w.finish()
    (root / f"process-{p:05d}" / ITEM_RANKS).write_text(json.dumps({"field": "doc_id", "ranks": ranks[p]}))
  got = [(r["doc_id"], r["sample_idx"]) for _, _, r in iter_records(root)]
  assert got == [("d3", 1), ("d3", 0), ("d0", 1), ("d0", 0), ("d1", 1), ("d1", 0), ("d2", 1), ("d2", 0)]
  assert count_input(root) == 8
  (root / "process-00001" / ITEM_RANKS).write_text(json.dumps({"field": "doc_id", "ranks": {"d0": 1}}))
  with pytest.raises(InputError, match=r"item 'd2' has no rank"):
    list(iter_records(root))


def test_batches_cut_a_stream_in_order_without_empty_lists():
  from qgjax.data.records import batches

  assert list(batches(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
  assert list(batches(iter(range(6)), 3)) == [[0, 1, 2], [3, 4, 5]]
  assert list(batches(iter([]), 3)) == []
