"""Mined hard negatives for contrastive prompts (qgjax.jobs.negatives), and the DPO-QG recipe's
contrastive stages (negatives, triples, sft) through the CLI on tiny models."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from qgjax.config import build_config
from qgjax.data import demo_dir
from qgjax.data.beir import Corpus, load_qrels, load_queries
from qgjax.retrieval.negatives import first_unexcluded
from tiny_lm import make_tiny_bert, make_tiny_lm
from xla_flags import cpu_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_first_unexcluded_skips_excluded_ids_and_counts_misses():
  ranked = [["a", "b", "c"], ["x", "y"], ["p"]]
  assert first_unexcluded(ranked, [{"a"}, set(), {"p"}]) == [("b", 2), ("x", 1), (None, None)]
  with pytest.raises(ValueError):
    first_unexcluded(ranked, [set()])


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
  """The demo collection with a train split: every other judged query (by id) moves to train."""
  root = tmp_path_factory.mktemp("demo_split")
  shutil.copy(demo_dir() / "corpus.jsonl", root / "corpus.jsonl")
  queries = load_queries(demo_dir() / "queries.jsonl")
  qrels = load_qrels(demo_dir() / "qrels" / "test.tsv")
  qids = sorted(qrels)
  (root / "qrels").mkdir()
  for split, part in (("train", qids[::2]), ("test", qids[1::2])):
    with open(root / f"queries_{split}.jsonl" if split == "train" else root / "queries.jsonl", "w") as f:
      for q in part:
        f.write(json.dumps({"_id": q, "text": queries[q]}) + "\n")
    with open(root / "qrels" / f"{split}.tsv", "w") as f:
      f.write("query-id\tcorpus-id\tscore\n")
      for q in part:
        for d, g in qrels[q].items():
          f.write(f"{q}\t{d}\t{g}\n")
  return root


def test_bm25_negatives_are_the_best_ranked_unjudged_documents(collection, tmp_path):
  from qgjax.jobs import negatives
  from qgjax.retrieval.bm25 import open_bm25_from_config

  cfg = build_config(os.path.join(REPO, "configs", "negatives.py") + ":source=queries",
                     [("data_dir", str(collection)), ("workdir", str(tmp_path / "q"))])
  summary = negatives.run(cfg)
  rows = _jsonl(tmp_path / "q" / "negatives.jsonl")
  qrels = load_qrels(collection / "qrels" / "train.tsv")
  queries = load_queries(collection / "queries_train.jsonl")
  pairs = [(q, d) for q, judged in qrels.items() for d, g in judged.items() if g >= 1]
  assert summary["rows"] + summary["misses"] == len(pairs) and summary["rows"] == len(rows) > 0
  corpus = Corpus(collection / "corpus.jsonl")
  bm25 = open_bm25_from_config(corpus, cfg.bm25)
  for row in rows:
    assert (row["query_id"], row["doc_id"]) in pairs and row["query"] == queries[row["query_id"]]
    ranked = bm25.search([row["query"]], k=20).doc_ids[0]
    unjudged = [d for d in ranked if d not in qrels[row["query_id"]]]
    assert row["negative_id"] == unjudged[0] and row["negative_rank"] == ranked.index(unjudged[0]) + 1


def test_dense_document_negatives_equal_exact_search(tmp_path):
  """source=documents with a dense encoder: each document's nearest other document by an exact
  float64 cosine search over the same embeddings."""
  from qgjax.jobs import negatives
  from qgjax.retrieval.dense import DenseEncoder

  bert = make_tiny_bert(str(tmp_path / "bert"))
  cfg = build_config(os.path.join(REPO, "configs", "negatives.py") + ":source=documents,method=dense",
                     [("workdir", str(tmp_path / "d")), ("dense.model", bert), ("max_query_words", "16")])
  summary = negatives.run(cfg)
  rows = _jsonl(tmp_path / "d" / "negatives.jsonl")
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  assert summary == {**summary, "rows": len(corpus), "misses": 0, "method": "dense"}
  enc = DenseEncoder.load(bert)
  ids = corpus.doc_ids
  docs = np.asarray(enc.encode([corpus[d].contents for d in ids], max_len=int(cfg.dense.max_len)), np.float64)
  queries = np.asarray(enc.encode_queries([" ".join(corpus[d].contents.split()[:16]) for d in ids],
                                          max_len=int(cfg.dense.query_max_len)), np.float64)
  scores = queries @ docs.T
  np.fill_diagonal(scores, -np.inf)
  for row, i in zip(rows, range(len(ids))):
    assert row["doc_id"] == ids[i]
    best = float(scores[i].max())
    # the mined negative is a nearest other document (ties broken either way)
    assert scores[i, ids.index(row["negative_id"])] == pytest.approx(best, abs=1e-5)


def test_contrastive_dpo_qg_pipeline_through_the_cli(collection, tmp_path):
  """contrastive.negatives=bm25 and contrastive.sft: BM25-mined prompt negatives in every generate
  stage, SFT on the training queries' triples first, DPO and both generators starting from it."""
  root = tmp_path / "models"
  lm, bert = make_tiny_lm(str(root / "tiny_lm")), make_tiny_bert(str(root / "tiny_bert"))
  work = tmp_path / "pipeline"
  env = dict(os.environ, XLA_FLAGS=cpu_devices(1), JAX_PLATFORMS="cpu",
             QGJAX_PROGRESS="0")
  over = {"workdir": work, "generator": lm, "encoder": bert, "data_dir": collection,
          "generate.config": "generate.py:mode=contrastive,tiny", "align.config": "dpo.py:tiny,prompt=contrastive",
          "contrastive.negatives": "bm25", "contrastive.sft": "true",
          "generate.set.prompt.max_negative_tokens": 48}
  cmd = [sys.executable, "-m", "qgjax.cli", "pipeline", "--config", os.path.join(REPO, "configs", "pipeline.py:tiny")]
  cmd += [f"--config.{k}={v}" for k, v in over.items()]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = proc.stdout.splitlines()
  result = json.loads("\n".join(lines[max(i for i, line in enumerate(lines) if line == "{"):]))
  assert result["ran"][:4] == ["negatives", "triples", "sft", "generate"]

  mined = {r["doc_id"]: r["negative_id"] for r in _jsonl(work / "negatives" / "negatives.jsonl")}
  from qgjax.data.sharded_writer import iter_sharded
  for stage in ("generate", "generate_unaligned", "generate_aligned"):
    recs = list(iter_sharded(work / stage, require_complete=True))
    assert recs and all(r["negative_id"] == mined[r["doc_id"]] for r in recs)
  sft = json.loads((work / "sft" / "STAGE_DONE.json").read_text())
  assert sft["config"]["task"] == "sft" and sft["config"]["prompt"]["mode"] == "contrastive"
  assert sft["config"]["data"]["train"] == str(work / "triples" / "negatives.jsonl")
  sft_export = str(work / "sft" / "export")
  for stage in ("align", "generate", "generate_unaligned"):
    marker = json.loads((work / stage / "STAGE_DONE.json").read_text())
    assert marker["config"]["model"]["name"] == sft_export and "sft" in marker["needs"]
  report = json.loads(open(result["report"]["json"]).read())
  assert "contrastive SFT" in report["info"] and "prompt negatives" in report["info"]
  times = report["tables"][-1]
  assert times["title"] == "Stage times" and [r[0] for r in times["rows"]] == result["ran"] + ["total"]
  shown = [float(r[1]) for r in times["rows"][:-1]]   # each rounded to 0.1 s, the total from the raw seconds
  assert float(times["rows"][-1][1]) == pytest.approx(sum(shown), abs=0.05 * (len(shown) + 1))


def test_contrastive_options_need_the_contrastive_prompt(collection, tmp_path):
  from qgjax import recipes
  from qgjax.errors import ConfigError

  cfg = build_config(os.path.join(REPO, "configs", "pipeline.py:tiny"),
                     [("workdir", str(tmp_path / "w")), ("data_dir", str(collection)), ("contrastive.sft", "true")])
  with pytest.raises(ConfigError, match="prompt mode 'contrastive'"):
    recipes.run(cfg)
  cfg.contrastive.negatives = "bm52"
  with pytest.raises(ConfigError, match="contrastive.negatives must be random, bm25 or dense"):
    recipes.run(cfg)


def test_pairs_keep_the_contrastive_negative(tmp_path):
  """Preference pairs and RSFT records of contrastive samples carry the document's negative_id (DPO
  and RSFT rebuild the prompt the samples were drawn from); two negatives for one document are an error."""
  from qgjax.errors import InputError
  from qgjax.jobs.pairs import load_groups, pair_record, rsft_record

  recs = [{"doc_id": "d1", "sample_idx": i, "query": f"q{i}", "reward": float(i), "negative_id": "d9"}
          for i in range(3)] + [{"doc_id": "d2", "sample_idx": 0, "query": "x", "reward": 0.0}]
  src = tmp_path / "scored.jsonl"
  src.write_text("".join(json.dumps(r) + "\n" for r in recs))
  mode, groups, sources = load_groups(str(src), "reward")
  best, worst = groups["d1"][2], groups["d1"][0]
  assert pair_record(mode, "d1", sources, best, worst, "reward")["negative_id"] == "d9"
  assert rsft_record(mode, "d1", sources, best, "reward")["negative_id"] == "d9"
  assert "negative_id" not in rsft_record(mode, "d2", sources, groups["d2"][0], "reward")
  src.write_text(src.read_text() + json.dumps({**recs[0], "sample_idx": 5, "negative_id": "d8"}) + "\n")
  with pytest.raises(InputError, match="different negative_id"):
    load_groups(str(src), "reward")
