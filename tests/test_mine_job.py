"""`qgjax mine` on the demo corpus: tuples, resume, relabelling with a bi-encoder reranker."""

import json

import pytest

from qgjax.config import build_config
from qgjax.data.sharded_writer import iter_sharded
from qgjax.jobs import mine

pytestmark = [pytest.mark.real_weights, pytest.mark.slow]


def test_mine_tiny_resume_and_relabel(tmp_path):
  cfg = build_config("configs/mine.py:tiny", [("workdir", str(tmp_path / "m"))])
  out = mine.run(cfg)
  assert "exact search" in out["index"] and out["records"] == 40
  recs = list(iter_sharded(out["tuples"]))
  kept = [r for r in recs if "skip" not in r]
  assert kept and all(len(r["neg_ids"]) >= 1 for r in kept)
  for r in kept:
    assert r["pos_id"] == r["doc_id"] and r["pos_id"] not in r["neg_ids"]
    assert r["pos_rank"] == -1 or all(n > r["pos_rank"] for n in r["neg_ranks"])
  # the run again: everything is done, nothing is re-written, embeddings are reused
  again = mine.run(cfg)
  assert again["written_now"] == 0 and again["records"] == 40
  manifest = json.loads((tmp_path / "m" / "embeddings" / "manifest.json").read_text())
  assert manifest["complete"] and manifest["rows"] == 52
  # relabelling with the bi-encoder as reranker: whenever the positive changes, it is a doc the
  # reranker scored above the source document, and it is never also a negative
  cfg2 = build_config("configs/mine.py:tiny", [("workdir", str(tmp_path / "m2")), ("mining.relabel", "relabel"),
                                               ("reranker.kind", "bi_encoder"), ("mining.relabel_depth", "5")])
  out2 = mine.run(cfg2)
  recs2 = [r for r in iter_sharded(out2["tuples"]) if "skip" not in r]
  relabelled = [r for r in recs2 if r["relabelled"]]
  assert relabelled, "some hand-written demo queries match another document better"
  for r in recs2:
    assert r["pos_id"] not in r["neg_ids"] and not set(r["false_negatives"]) & set(r["neg_ids"])
    if r["relabelled"]:
      assert r["pos_id"] in r["false_negatives"] and r["orig_pos_id"] == r["doc_id"]
