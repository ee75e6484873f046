"""tools/seed_generation.py: a generation run over more inputs, seeded with a finished smaller run's
records, samples only the new inputs and ends with the records a fresh run over all of them makes."""

from __future__ import annotations

import json
import os
import sys

import pytest

from qgjax.config import build_config
from qgjax.data import demo_dir
from qgjax.data.beir import load_queries
from qgjax.data.sharded_writer import iter_sharded
from qgjax.errors import ConfigError, InputError
from qgjax.jobs import generate
from tiny_lm import make_tiny_lm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
from seed_generation import seed  # noqa: E402


def _write_queries(path, queries):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for qid, text in queries.items():
      f.write(json.dumps({"_id": qid, "text": text}) + "\n")
  return str(path)


def _generate(lm, queries, out_dir, mode="expansion", **data):
  overrides = {"model.name": lm, "output_dir": str(out_dir), "batch_size": "2",
               "buckets": "[128]", "sampling.num_samples": "3", "sampling.max_new_tokens": "5",
               "sampling.stop_at_newline": "false", "log_every_s": "0", "print_examples": "0",
               "num_devices": "1", **({"data.queries": queries} if mode == "expansion" else {}),
               **{f"data.{k}": str(v) for k, v in data.items()}}
  config = build_config(os.path.join(REPO, "configs", "generate.py") + f":mode={mode}", list(overrides.items()))
  return generate.run(config)


def _samples(out_dir, key="query_id", text="expansion"):
  return {(r[key], r["sample_idx"]): r[text] for r in iter_sharded(out_dir, require_complete=True)}


def test_seeded_run_samples_only_new_inputs_and_equals_a_fresh_run(tmp_path):
  lm = make_tiny_lm(str(tmp_path / "tiny_lm"))
  queries = dict(list(load_queries(demo_dir() / "queries.jsonl").items())[:7])
  ids = list(queries)
  small = _write_queries(tmp_path / "small" / "queries.jsonl", {q: queries[q] for q in ids[1:4]})
  # the larger run holds the small run's queries at other positions, so in other batches
  large = _write_queries(tmp_path / "large" / "queries.jsonl", {q: queries[q] for q in ids[::-1]})
  _generate(lm, small, tmp_path / "small" / "gen")
  out = seed(str(tmp_path / "small" / "gen"), str(tmp_path / "large" / "gen"), large)
  assert out["seeded_inputs"] == 3 and out["meta_moved"] == [str(tmp_path / "small"), str(tmp_path / "large")]
  summary = _generate(lm, large, tmp_path / "large" / "gen")
  assert summary["inputs_this_run"] == 4
  _generate(lm, large, tmp_path / "fresh" / "gen")
  seeded = _samples(tmp_path / "large" / "gen")
  assert len({qid for qid, _ in seeded}) == 7 and seeded == _samples(tmp_path / "fresh" / "gen")

  with pytest.raises(ConfigError, match="already exists"):
    seed(str(tmp_path / "small" / "gen"), str(tmp_path / "large" / "gen"), large)
  fewer = _write_queries(tmp_path / "fewer" / "queries.jsonl", {q: queries[q] for q in ids[2:]})
  with pytest.raises(InputError, match="1 of the smaller run's inputs are not in the new inputs"):
    seed(str(tmp_path / "small" / "gen"), str(tmp_path / "fewer" / "gen"), fewer)
  edited = _write_queries(tmp_path / "edited" / "queries.jsonl", dict(queries, **{ids[2]: "another text"}))
  with pytest.raises(InputError, match="1 inputs have other text"):
    seed(str(tmp_path / "small" / "gen"), str(tmp_path / "edited" / "gen"), edited)
  assert not (tmp_path / "fewer" / "gen").exists() and not (tmp_path / "edited" / "gen").exists()


def test_document_queries_seeded_into_a_run_over_more_documents(tmp_path):
  """Document mode: a run over the first 3 documents seeds one over the first 6 (data.limit)."""
  lm = make_tiny_lm(str(tmp_path / "tiny_lm"))
  corpus = str(demo_dir())
  _generate(lm, None, tmp_path / "small" / "gen", mode="plain", corpus=corpus, limit=3)
  out = seed(str(tmp_path / "small" / "gen"), str(tmp_path / "large" / "gen"), corpus, limit=6)
  assert out["seeded_inputs"] == 3
  assert _generate(lm, None, tmp_path / "large" / "gen", mode="plain", corpus=corpus, limit=6)["inputs_this_run"] == 3
  _generate(lm, None, tmp_path / "fresh" / "gen", mode="plain", corpus=corpus, limit=6)
  seeded = _samples(tmp_path / "large" / "gen", "doc_id", "query")
  assert len({d for d, _ in seeded}) == 6 and seeded == _samples(tmp_path / "fresh" / "gen", "doc_id", "query")
  with pytest.raises(InputError, match="3 of the smaller run's inputs are not in the new inputs"):
    seed(str(tmp_path / "small" / "gen"), str(tmp_path / "later" / "gen"), corpus, limit=3, offset=3)
