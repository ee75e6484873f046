"""Batched encoding runs data-parallel over every device (qgjax.parallel.data_parallel.RowParallel):
bi-encoder corpus and query embeddings (a BERT and a decoder-LM bi-encoder), the dense rank and
cosine rewards, cross-encoder scores and LLM-judge rewards computed with 8 simulated devices, and
with 2 processes x 2 devices (jax.distributed on localhost), equal one device's to 1e-5 (ranks
exactly). Batch sizes (12) and row counts (31 documents, 13 records) are not multiples of the
device count, so the padding rows are exercised.

Worker: `python tests/test_data_parallel_encoding.py MODELS_DIR OUT.npz` (one run; device count
from XLA_FLAGS, processes from the QGJAX_* variables).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from xla_flags import cpu_devices

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TEXTS = ["black hole event horizon", "mrna vaccine", "sourdough bread yeast", "how do vaccines work",
         "what causes earthquakes along faults", "plants", "stars and planets", "the tallest mountain",
         "why is the sky blue", "photosynthesis in leaves", "volcano eruption", "ocean tides and the moon",
         "how do bees make honey"]
TARGETS = [["demo-01"], ["demo-08", "demo-09"], ["demo-27"], ["demo-08"], ["demo-16", "demo-17", "demo-01"],
           ["demo-07"], ["demo-02"], ["demo-03"], ["demo-04", "demo-05"], ["demo-06"], ["demo-10"], ["demo-11"],
           ["demo-12", "demo-13"]]


# ------------------------------------------------------------------------------------------------
# Worker side (one per process).

def worker(models: str, out: str) -> None:
  import jax

  from qgjax.config import build_config
  from qgjax.data import demo_dir
  from qgjax.data.beir import Corpus
  from qgjax.models.text_encoding import jitted_apply
  from qgjax.parallel.distributed import maybe_initialize
  from qgjax.retrieval.dense import DenseEncoder
  from qgjax.rewards import build_scorers
  from qgjax.rewards.base import RewardBatch, RewardContext

  maybe_initialize()
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  docs = [d.contents for d in corpus][:31]
  result = {}
  for name in ("bert", "lm"):
    enc = DenseEncoder.load(os.path.join(models, name))
    result[f"{name}_docs"] = enc.encode(docs, batch_size=12, max_len=64)
    result[f"{name}_queries"] = enc.encode_queries(TEXTS, batch_size=12, max_len=32)
    assert jitted_apply(enc.module).num_devices == jax.device_count()   # every device of every process
  overrides = [("dense.model", os.path.join(models, "bert")), ("dense.batch_size", "12"), ("batch_size", "12"),
               ("cross_encoder.model", os.path.join(models, "ce")), ("cross_encoder.batch_size", "12"),
               ("cross_encoder.max_len", "96"), ("llm_judge.model", os.path.join(models, "lm")),
               ("llm_judge.yes", "answers"), ("llm_judge.no", "no"), ("llm_judge.batch_size", "12"),
               ("llm_judge.max_len", "256"), ("llm_judge.max_doc_tokens", "150")]
  config = build_config(os.path.join(REPO, "configs", "score.py:tiny"), overrides)
  scorers = build_scorers(["dense_rank", "dense_cosine", "cross_encoder", "llm_judge"],
                          RewardContext(config, corpus))
  batch = RewardBatch(TEXTS, TARGETS, [{}] * len(TEXTS))
  for scorer in scorers:
    o = scorer(batch)
    result.update({f"reward_{k}": v for k, v in o.rewards.items()})
    result.update({f"rank_{k}": v for k, v in o.ranks.items()})
  result["devices"] = np.array([jax.device_count(), jax.process_count()])
  np.savez(out.replace(".npz", f"-{jax.process_index()}.npz"), **result)


# ------------------------------------------------------------------------------------------------
# Test side.

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(models: str, out: str, processes: int, devices_each: int) -> list[subprocess.Popen]:
  port, procs = _free_port(), []
  for i in range(processes):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QGJAX_")}
    env.update(XLA_FLAGS=cpu_devices(devices_each),
               JAX_PLATFORMS="cpu", QGJAX_PROGRESS="0", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=REPO + os.pathsep + HERE)
    if processes > 1:
      env.update(QGJAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", QGJAX_NUM_PROCESSES=str(processes),
                 QGJAX_PROCESS_ID=str(i))
    log = open(f"{out}.{i}.log", "w")
    procs.append(subprocess.Popen([sys.executable, __file__, models, out], env=env, cwd=REPO, stdout=log,
                                  stderr=subprocess.STDOUT))
  return procs


def _wait(procs: list[subprocess.Popen], out: str, timeout_s: float = 900) -> None:
  deadline = time.time() + timeout_s
  try:
    while any(p.poll() is None for p in procs) and time.time() < deadline:
      if any(p.poll() not in (None, 0) for p in procs):
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  for i, p in enumerate(procs):
    if p.returncode != 0:
      with open(f"{out}.{i}.log") as f:
        pytest.fail(f"worker {i} of {out} exited {p.returncode}:\n{f.read()[-4000:]}")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  from qgjax.models import bert
  from tiny_lm import make_tiny_bert, make_tiny_lm

  root = tmp_path_factory.mktemp("dp_models")
  make_tiny_bert(str(root / "bert"))
  make_tiny_lm(str(root / "lm"))
  _, _, tok, _ = bert.load_bi_encoder(str(root / "bert"))
  cfg = bert.EncoderConfig(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                           max_position_embeddings=160, num_labels=1)
  module = bert.CrossEncoder(cfg)
  params = bert.init_params(module, seed=3)
  params["classifier"]["kernel"] = params["classifier"]["kernel"] * 300.0  # logits that differ by more than 1e-5
  bert.save_cross_encoder_hf(params, module, tok, str(root / "ce"))
  return str(root)


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory):
  """The worker's outputs for 1 device, 8 devices, and 2 processes x 2 devices (started together)."""
  out = tmp_path_factory.mktemp("dp_runs")
  layouts = {"one": (1, 1), "eight": (1, 8), "two_hosts": (2, 2)}
  procs = {k: _start(models, str(out / f"{k}.npz"), p, d) for k, (p, d) in layouts.items()}
  for k, ps in procs.items():
    _wait(ps, str(out / f"{k}.npz"))
  return {k: [dict(np.load(out / f"{k}-{i}.npz")) for i in range(p)] for k, (p, _) in layouts.items()}


def _assert_same(got: dict, want: dict) -> None:
  assert sorted(got) == sorted(want)
  for key in want:
    if key == "devices":
      continue
    if key.startswith("rank_"):
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    else:
      np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-5, err_msg=key)


def test_eight_devices_equal_one(runs):
  (one,), (eight,) = runs["one"], runs["eight"]
  assert one["devices"].tolist() == [1, 1] and eight["devices"].tolist() == [8, 1]
  assert one["bert_docs"].shape == (31, 32) and one["lm_queries"].shape[0] == len(TEXTS)
  assert np.ptp(one["reward_cross_encoder"]) > 1e-3 and np.ptp(one["reward_llm_judge"]) > 1e-3  # not constant
  assert np.ptp(one["rank_dense"]) > 0
  _assert_same(eight, one)


def test_two_processes_equal_one_device(runs):
  (one,), hosts = runs["one"], runs["two_hosts"]
  for host in hosts:   # every process gets every row
    assert host["devices"].tolist() == [4, 2]
    _assert_same(host, one)


if __name__ == "__main__":
  worker(sys.argv[1], sys.argv[2])
