"""`qgjax mine` on the demo corpus: tuples, resume, relabelling with a bi-encoder reranker."""

import json

import numpy as np
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
  _check_ranks_against_exact_search(cfg, kept)
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


def _check_ranks_against_exact_search(cfg, kept, tol=1e-4):
  """Each tuple's pos_rank and neg_ranks are the ranks of its own documents in ITS OWN query's
  ordering, by an independent exact search: sentence-transformers embeddings, numpy argsort.
  Ties: a rank r of document d is accepted when r lies in [#docs scoring > s_d + tol,
  #docs scoring >= s_d - tol - 1] (float noise between the two encoders stays well below tol)."""
  from sentence_transformers import SentenceTransformer

  from qgjax.data import demo_dir
  from qgjax.data.beir import Corpus
  from qgjax.models.bert import resolve_model_dir

  corpus = Corpus(str(demo_dir() / "corpus.jsonl"))
  docs = list(corpus)
  col = {d.doc_id: j for j, d in enumerate(docs)}
  st = SentenceTransformer(resolve_model_dir(cfg.encoder.model), device="cpu")
  st.max_seq_length = int(cfg.encoder.max_len)
  d_emb = st.encode([d.contents for d in docs], batch_size=16, normalize_embeddings=True)
  st.max_seq_length = int(cfg.encoder.query_max_len)
  q_emb = st.encode([r["query"] for r in kept], batch_size=16, normalize_embeddings=True)
  scores = q_emb @ d_emb.T  # [queries, docs]
  top_k = int(cfg.mining.top_k)

  def rank_bounds(s, doc_id):
    v = s[col[doc_id]]
    return int(np.sum(s > v + tol)), int(np.sum(s >= v - tol)) - 1

  for r, s in zip(kept, scores):
    order = [docs[j].doc_id for j in np.argsort(-s, kind="stable")]
    lo, hi = rank_bounds(s, r["doc_id"])
    if r["pos_rank"] == -1:
      assert hi >= top_k, (r, order.index(r["doc_id"]))  # the positive really is below the top_k
    else:
      assert lo <= r["pos_rank"] <= hi, (r, order.index(r["doc_id"]), order[:top_k])
    assert len(r["neg_ids"]) == len(r["neg_ranks"])
    for n_id, n_rank in zip(r["neg_ids"], r["neg_ranks"]):
      lo, hi = rank_bounds(s, n_id)
      assert lo <= n_rank <= hi and n_rank < top_k, (r, n_id, order.index(n_id))
      assert s[col[n_id]] <= s[col[r["doc_id"]]] + tol  # a negative never outscores the positive


def test_input_keys_are_checked(tmp_path):
  from qgjax.data import demo_dir
  from qgjax.data.beir import Corpus
  from qgjax.errors import InputError

  corpus = Corpus(demo_dir() / "corpus.jsonl")
  src = tmp_path / "queries.jsonl"

  def pending(*records, done=()):
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    return [r["sample_idx"] for r in mine._pending(str(src), corpus, set(done), "query")]

  rec = {"doc_id": "demo-01", "sample_idx": 0, "query": "black holes"}
  assert pending(rec, dict(rec, sample_idx=1), done={("demo-01", 0)}) == [1]   # resume skips what is done
  with pytest.raises(InputError, match=r"queries.jsonl:2: a second record with key \('demo-01', 0\)"):
    pending(rec, dict(rec, query="event horizon"))
  with pytest.raises(InputError, match=r"queries.jsonl:1: field 'sample_idx' must be an integer or a string"):
    pending(dict(rec, sample_idx=[0]))


def test_cli_gecko_positive_relabelling_and_stored_scores(tmp_path, capsys):
  """Through the CLI: the bi-encoder reranker relabels positives (counted in the summary) and its
  cosines travel with each tuple as ce_pos / ce_neg, checked against sentence-transformers."""
  from sentence_transformers import SentenceTransformer

  from qgjax import cli
  from qgjax.data import demo_dir
  from qgjax.data.beir import Corpus
  from qgjax.models.bert import resolve_model_dir

  assert cli.main(["mine", "--config", "configs/mine.py:tiny", f"--config.workdir={tmp_path}",
                   "--config.reranker.kind=bi_encoder", "--config.reranker.max_len=128",
                   "--config.mining.relabel_positive=True", "--config.mining.positive_margin=0.01",
                   "--config.mining.store_scores=True"]) == 0
  summary = json.loads(capsys.readouterr().out)
  kept = [r for r in iter_sharded(tmp_path / "tuples") if "skip" not in r]
  relabelled = [r for r in kept if r["relabelled"]]
  assert relabelled and summary["counts"]["relabelled_positives"] == len(relabelled)
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  st = SentenceTransformer(resolve_model_dir("all-minilm-l6-v2"), device="cpu")
  st.max_seq_length = 64
  q = st.encode([r["query"] for r in kept], normalize_embeddings=True)
  st.max_seq_length = 128
  doc_ids = sorted({x for r in kept for x in [r["pos_id"], *r["neg_ids"]]})
  doc_vec = dict(zip(doc_ids, st.encode([corpus[x].contents for x in doc_ids], normalize_embeddings=True)))
  for r, qv in zip(kept, q):
    d = np.stack([doc_vec[x] for x in [r["pos_id"], *r["neg_ids"]]])
    np.testing.assert_allclose([r["ce_pos"]] + r["ce_neg"], d @ qv, atol=2e-4)
    assert r["pos_id"] not in r["neg_ids"] and r["ce_pos"] >= max(r["ce_neg"]) - 1e-6
    if r["relabelled"]:
      assert r["pos_id"] != r["doc_id"] and r["orig_pos_id"] == r["doc_id"]
  # the stored scores are what the retriever's MarginMSE loss reads (a tiny random bi-encoder, 1 step)
  from tiny_lm import make_tiny_bert

  assert cli.main(["train", "--config", "configs/retriever.py:tiny", f"--config.workdir={tmp_path / 'r'}",
                   f"--config.data.train={tmp_path / 'tuples'}", f"--config.model.name={make_tiny_bert(str(tmp_path / 'b'))}",
                   "--config.loss=margin_mse", "--config.num_negatives=2", "--config.num_steps=1",
                   "--config.export.enabled=False"]) == 0
  first = json.loads(open(tmp_path / "r" / "metrics.jsonl").readline())
  assert np.isfinite(first["loss"]) and np.isfinite(first["target_margin"])
