"""`qgjax generate` end to end on a tiny Llama with a real tokenizer: records, prompt modes,
process slicing, and a SIGKILL in the middle of a run followed by a resume that loses and
duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from qgjax.config import build_config
from qgjax.data.sharded_writer import iter_sharded, read_manifest
from qgjax.jobs import generate
from qgjax.sampling.postprocess import clean_text, default_postprocess_config, is_copied, select
from qgjax.sampling.prompts import PromptBuilder, default_prompt_config
from tiny_lm import make_tiny_lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "generate.py")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return make_tiny_lm(str(tmp_path_factory.mktemp("tiny_lm")))


def _overrides(tiny_dir, out_dir, **extra):
  base = {"model.name": tiny_dir, "output_dir": str(out_dir), "data.limit": "10", "batch_size": "2",
          "buckets": "[64,128,160]", "sampling.num_samples": "3", "sampling.max_new_tokens": "5",
          "sampling.stop_at_newline": "false", "postprocess.drop_copied": "false", "log_every_s": "0",
          "print_examples": "0", "num_devices": "1"}
  base.update({k: str(v) for k, v in extra.items()})
  return base


def _config(tiny_dir, out_dir, arg="mode=plain", **extra):
  return build_config(f"{CONFIG}:{arg}", list(_overrides(tiny_dir, out_dir, **extra).items()))


def _records(out_dir):
  return list(iter_sharded(out_dir))


def _greedy_reference(tiny_dir, config):
  """doc_id -> (cleaned text, summed logprob, num tokens) for the first data.limit documents of
  the corpus by a plain greedy loop: each document's own prompt alone in a batch of one, full
  forward passes (no KV cache), argmax, stop at EOS. Independent of the job's bucketing,
  batching and sampler."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from qgjax.data.beir import Corpus
  from qgjax.models.registry import load_decoder

  model, params, tok = load_decoder(tiny_dir, dtype="float32", scan_layers=False)
  builder = PromptBuilder(config.prompt, tok)
  corpus = Corpus(os.path.join(str(config.data.corpus), "corpus.jsonl"))
  stops = set(model.config.eos_token_ids) | {tok.eos_token_id}
  n_new = int(config.sampling.max_new_tokens)
  length = max(config.buckets) + n_new

  @jax.jit
  def next_token(params, tokens, n):  # tokens int32[1, length]: n real tokens, then padding
    pos = jnp.arange(length, dtype=jnp.int32)[None]
    logits, _ = model.apply({"params": params}, tokens, pos, pos < n)
    row = jax.nn.log_softmax(logits[0, n - 1].astype(jnp.float32))
    t = jnp.argmax(row)
    return t, row[t]

  out = {}
  for doc in list(corpus)[:int(config.data.limit)]:
    ids = builder.document_prompt(doc.contents)
    buf = np.zeros((1, length), np.int32)
    buf[0, :len(ids)] = ids
    n, gen, lp = len(ids), [], 0.0
    for _ in range(n_new):
      t, l = next_token(params, buf, np.int32(n))
      gen.append(int(t))
      lp += float(l)
      if int(t) in stops:
        break
      buf[0, n] = int(t)
      n += 1
    out[doc.doc_id] = (clean_text(tok.decode(gen, skip_special_tokens=True), config.postprocess), lp, len(gen))
  return out


def test_generate_writes_records_for_every_document(tiny_dir, tmp_path):
  # greedy, 4 prompts per batch: each record can be checked against its own document's decoding
  config = _config(tiny_dir, tmp_path / "out", **{"sampling.temperature": "0", "batch_size": "4"})
  result = generate.run(config)
  recs = _records(tmp_path / "out")
  assert result["inputs"] == 10 and result["records"] == len(recs) > 0
  assert result["compiled_programs"] <= 3
  assert (result["dtype"], result["attention"]) == ("float32", "xla")   # "auto" on a CPU host
  # every record is its own document's greedy query (text, logprob, length), computed alone
  ref = _greedy_reference(tiny_dir, config)
  for r in recs:
    text, lp, n = ref[r["doc_id"]]
    assert (r["query"], r["num_tokens"]) == (text, n), (r, ref[r["doc_id"]])
    assert abs(r["logprob"] - lp) < 1e-4, (r, ref[r["doc_id"]])
  kept = {d for d, (text, lp, _) in ref.items()
          if select([{"query": text, "logprob": lp, "sample_idx": 0}], None, config.postprocess)}
  assert {r["doc_id"] for r in recs} == kept
  assert set(recs[0]) == {"doc_id", "query", "logprob", "num_tokens", "sample_idx", "prompt_mode", "model"}
  assert {r["prompt_mode"] for r in recs} == {"plain"} and {r["model"] for r in recs} == {tiny_dir}
  assert all(r["logprob"] < 0 and 1 <= r["num_tokens"] <= 5 and 0 <= r["sample_idx"] < 3 for r in recs)
  keys = [(r["doc_id"], r["sample_idx"]) for r in recs]
  assert len(keys) == len(set(keys))
  assert len({r["doc_id"] for r in recs}) >= 8  # (some samples may be dropped as empty/duplicates)
  assert read_manifest(tmp_path / "out")["complete"]
  # a finished job run again generates nothing
  again = generate.run(config)
  assert again["inputs_this_run"] == 0 and _records(tmp_path / "out") == recs


def test_mesh_with_a_tensor_axis_loads_sharded_and_samples_the_same(tiny_dir, tmp_path):
  # 8 simulated devices as (data=2, tensor=4): the job reads the checkpoint straight onto the mesh
  # and shards the sampler; the samples (random keys come from seed and document id) equal one device's
  one = generate.run(_config(tiny_dir, tmp_path / "one", **{"data.limit": "4"}))
  config = _config(tiny_dir, tmp_path / "tp", **{"data.limit": "4", "num_devices": "8",
                                                 "mesh": "[('data', 2), ('tensor', 4)]"})
  sharded = generate.run(config)
  assert one["mesh"] == {"data": 1} and sharded["mesh"] == {"data": 2, "tensor": 4}
  assert generate.model_sharding_rules(config, generate.generation_mesh(config)) is not None
  ref = {(r["doc_id"], r["sample_idx"]): r for r in _records(tmp_path / "one")}
  got = {(r["doc_id"], r["sample_idx"]): r for r in _records(tmp_path / "tp")}
  assert got.keys() == ref.keys() and len(ref) > 0
  for k, r in got.items():
    assert (r["query"], r["num_tokens"]) == (ref[k]["query"], ref[k]["num_tokens"])
    assert abs(r["logprob"] - ref[k]["logprob"]) < 1e-4


def test_contrastive_and_expansion_modes(tiny_dir, tmp_path):
  generate.run(_config(tiny_dir, tmp_path / "c", arg="mode=contrastive", **{"data.limit": "4", "buckets": "[256]"}))
  recs = _records(tmp_path / "c")
  assert recs and all(r["negative_id"] != r["doc_id"] and r["prompt_mode"] == "contrastive" for r in recs)
  from qgjax.data import demo_dir
  from qgjax.data.beir import Corpus, load_queries
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  negative = {}
  for r in recs:   # one negative per document, shared by its samples, a real other document
    assert r["negative_id"] in corpus and negative.setdefault(r["doc_id"], r["negative_id"]) == r["negative_id"]
  generate.run(_config(tiny_dir, tmp_path / "e", arg="mode=expansion", **{"data.limit": "4"}))
  recs = _records(tmp_path / "e")
  assert recs and set(recs[0]) == {"query_id", "query", "expansion", "logprob", "num_tokens", "sample_idx",
                                   "prompt_mode", "model"}
  assert len({r["query_id"] for r in recs}) >= 3
  queries = load_queries(demo_dir() / "queries.jsonl")
  assert all(r["query"] == queries[r["query_id"]] for r in recs)   # each expansion carries its own query


def test_processes_take_interleaved_slices(tiny_dir, tmp_path):
  from qgjax.models.registry import load_tokenizer

  config = _config(tiny_dir, tmp_path)
  tok = load_tokenizer(tiny_dir)
  slices = [[it.item_id for it in generate.iter_items(config, tok, set(), i, 3)[1]] for i in range(3)]
  everyone = [it.item_id for it in generate.iter_items(config, tok, set(), 0, 1)[1]]
  assert sorted(sum(slices, [])) == sorted(everyone) and len(everyone) == 10
  assert slices[1] == everyone[1::3]
  skipped = [it.item_id for it in generate.iter_items(config, tok, set(everyone[:4]), 0, 1)[1]]
  assert skipped == everyone[4:]
  held_out = _config(tiny_dir, tmp_path, **{"data.offset": "3", "data.limit": "4"})
  n, items = generate.iter_items(held_out, tok, set(), 1, 2)
  assert n == 2 and [it.item_id for it in items] == everyone[3:7][1::2]
  past_end = _config(tiny_dir, tmp_path, **{"data.offset": "60", "data.limit": "4"})
  assert generate.iter_items(past_end, tok, set(), 0, 1)[0] == 0


# The real CLI with each record write slowed by 50 ms, so that a tiny model's run lasts long
# enough to be killed in the middle of a batch (records written, the batch not yet marked done).
SLOW_WRITES_CLI = """
import sys, time
from qgjax.data.sharded_writer import ShardedJsonlWriter
_write = ShardedJsonlWriter.write
def slow_write(self, record):
  time.sleep(0.05)
  return _write(self, record)
ShardedJsonlWriter.write = slow_write
from qgjax.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tiny_dir, tmp_path):
  env = dict(os.environ, QGJAX_PROGRESS="0", PYTHONUNBUFFERED="1")
  out = tmp_path / "killed"
  stage = ["generate", "--config", f"{CONFIG}:mode=plain"]
  stage += [f"--config.{k}={v}" for k, v in _overrides(tiny_dir, out, **{"data.limit": "16"}).items()]
  args = [sys.executable, "-m", "qgjax.cli"] + stage
  proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITES_CLI] + stage, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=REPO)
  done_file = out / generate.DONE_FILE
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if done_file.is_file() and len(done_file.read_text().splitlines()) >= 4:
      time.sleep(0.12)  # into the next batch's record writes
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  partial = _records(out) if (out / "manifest.json").is_file() else []
  done_before = len(generate.read_done(out))
  assert 4 <= done_before < 16
  resumed = subprocess.run(args, env=env, capture_output=True, text=True, cwd=REPO)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  summary = json.loads(resumed.stdout[resumed.stdout.index("{"):])
  assert summary["inputs_this_run"] == 16 - done_before
  # Reference: the same job, uninterrupted, in-process.
  generate.run(_config(tiny_dir, tmp_path / "whole", **{"data.limit": "16"}))
  key = lambda r: (r["doc_id"], r["sample_idx"])
  got, want = _records(out), _records(tmp_path / "whole")
  assert len(got) == len({key(r) for r in got})  # no duplicates
  assert sorted(got, key=key) == sorted(want, key=key)  # nothing lost, same queries
  assert all(r in got for r in partial)  # what was written before the kill is kept
  assert read_manifest(out)["complete"]


def test_clean_text_copy_filter_and_dedup():
  pc = default_postprocess_config()
  assert clean_text('  Query: "statins and breast cancer"\nmore text', pc) == "statins and breast cancer"
  assert clean_text("\n\nSearch query: what is a black hole", pc) == "what is a black hole"
  doc = "A black hole forms when so much mass is packed into a small region of space."
  assert is_copied("a black hole forms when so much mass is packed", doc, 6)
  assert not is_copied("black hole forms", doc, 6)  # short spans are legitimate queries
  assert not is_copied("how does a black hole form when mass is packed", doc, 6)
  cands = [{"query": "how do black holes form", "logprob": -5.0, "sample_idx": 0},
           {"query": "", "logprob": -1.0, "sample_idx": 1},
           {"query": "How do black holes form?", "logprob": -3.0, "sample_idx": 2},
           {"query": "A black hole forms when so much mass is packed", "logprob": -2.0, "sample_idx": 3},
           {"query": "event horizon", "logprob": -4.0, "sample_idx": 4}]
  kept = select(cands, doc, pc)
  assert [c["sample_idx"] for c in kept] == [2, 4]  # dedup keeps the likelier copy; empty and copied dropped
  pc.drop_copied, pc.dedup = False, False
  assert [c["sample_idx"] for c in select(cands, doc, pc)] == [0, 2, 3, 4]


def test_prompt_builder_modes_use_the_chat_template(tiny_dir):
  from qgjax.models.registry import load_tokenizer

  tok = load_tokenizer(tiny_dir)
  few = PromptBuilder(default_prompt_config("few_shot"), tok)
  ids = few.document_prompt("black holes and light")
  text = tok.decode(ids)
  assert text.count("<|im_start|>") == 2 * 3 + 2 + 1  # system, 3 example turns x 2, user, assistant
  msg = [{"role": "user", "content": "x"}]
  with_opening = tok.apply_chat_template(msg, tokenize=True, add_generation_prompt=True)["input_ids"]
  without = tok.apply_chat_template(msg, tokenize=True, add_generation_prompt=False)["input_ids"]
  opening = list(with_opening[len(without):])
  assert opening and ids[-len(opening):] == opening  # ends by opening the assistant turn
  con = PromptBuilder(default_prompt_config("contrastive"), tok)
  text = tok.decode(con.document_prompt("black holes", negative="coffee espresso"))
  assert "black holes" in text and "espresso" in text
  pc = default_prompt_config("plain")
  pc.max_doc_tokens = 3
  text = tok.decode(PromptBuilder(pc, tok).document_prompt("one two three four five six"))
  assert "three" in text and "four" not in text
  exp = PromptBuilder(default_prompt_config("expansion"), tok)
  assert "black" in tok.decode(exp.expansion_prompt("black holes"))
  with pytest.raises(Exception, match="document"):
    pc.template = "no placeholder"
    PromptBuilder(pc, tok)
