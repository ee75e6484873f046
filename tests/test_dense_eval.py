"""Dense and re-ranked runs of `qgjax evaluate`, and the query-quality metrics."""

import numpy as np
import pytest

from qgjax.config import build_config
from qgjax.evaluation.query_quality import angular_distances, diversity, relevance


def test_diversity_by_hand():
  e = np.asarray([[1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 0], [1, 1, 0.0]], np.float32)
  np.testing.assert_allclose(angular_distances(e[:3]), [0.5, 0.5, 0.5])
  out = diversity({"a": [0, 1, 2], "b": [3, 4], "c": [0]}, e)   # c has one query: not counted
  np.testing.assert_allclose(out["diversity"], (0.5 + 0.0) / 2, atol=1e-6)
  assert out["docs"] == 2
  np.testing.assert_allclose(angular_distances(e[[0, 3]]), [0.25], atol=1e-7)   # 45 degrees


def test_relevance_labels_and_mismatched_baseline():
  recs = [{"doc_id": "d1", "query": "q1", "r": 1.0}, {"doc_id": "d1", "query": "q2", "r": 0.0},
          {"doc_id": "d2", "query": "q3", "r": 0.8}]
  table = {("q1", "D1"): 3.0, ("q2", "D1"): 1.0, ("q3", "D2"): 2.0, ("q1", "D2"): 0.5, ("q2", "D2"): 0.0,
           ("q3", "D1"): -1.0}
  scorer = lambda qs, ds: np.asarray([table[(q, d)] for q, d in zip(qs, ds)])
  text = lambda d: d.upper()
  out = relevance(recs, text, scorer, doc_ids=["d1", "d2"], label_field="r")
  assert out["rel+"] == 2.5 and out["rel-"] == 1.0 and out["delta_rel"] == 1.5
  assert out["n_pos"] == 2 and out["n_neg"] == 1
  out = relevance(recs, text, scorer, doc_ids=["d1", "d2"])     # the other doc is the only choice
  assert out["rel+"] == pytest.approx(2.0) and out["rel-"] == pytest.approx((0.5 + 0.0 - 1.0) / 3)


@pytest.mark.slow
@pytest.mark.real_weights
def test_dense_run_matches_sentence_transformers_and_rerank(tmp_path):
  from sentence_transformers import SentenceTransformer

  from qgjax.data import demo_dir
  from qgjax.data.beir import load_beir
  from qgjax.models.bert import (CrossEncoder, EncoderConfig, init_params, load_bi_encoder,
                                 save_cross_encoder_hf, score_pairs)
  from qgjax.retrieval.dense import evaluation_run, rerank_run

  cfg = build_config("configs/evaluate.py:tiny", [("workdir", str(tmp_path)), ("depth", "10")])
  data = load_beir(str(demo_dir()), "test")
  queries = dict(list(data.queries.items())[:8])
  run = evaluation_run(cfg, data, queries)
  # independent reference: sentence-transformers embeddings, numpy ranking
  path = load_bi_encoder("all-minilm-l6-v2")[3]["path"]
  st = SentenceTransformer(path, device="cpu")
  st.max_seq_length = 256
  docs = list(data.corpus)
  d_emb = st.encode([d.contents for d in docs], batch_size=16)
  q_emb = st.encode(list(queries.values()))
  for qi, qid in enumerate(queries):
    s = d_emb @ q_emb[qi]
    ref = [docs[j].doc_id for j in np.argsort(-s)[:10]]
    got = sorted(run[qid], key=lambda d: -run[qid][d])
    assert got[:5] == ref[:5]
    np.testing.assert_allclose([run[qid][d] for d in ref[:5]], np.sort(s)[::-1][:5], atol=1e-4)
  # rerank: a (random, tiny) cross-encoder re-scores the top `depth` of the previous run
  tok = load_bi_encoder("all-minilm-l6-v2")[2]
  ce_cfg = EncoderConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                         intermediate_size=64, max_position_embeddings=512, num_labels=1)
  module = CrossEncoder(ce_cfg)
  params = init_params(module, 0)
  save_cross_encoder_hf(params, module, tok, str(tmp_path / "ce"))
  cfg.rerank.model, cfg.rerank.depth = str(tmp_path / "ce"), 3
  reranked = rerank_run(cfg, data, queries, run)
  qid = next(iter(queries))
  top3 = sorted(run[qid], key=lambda d: (-run[qid][d], d))[:3]
  assert sorted(reranked[qid]) == sorted(top3)
  direct = score_pairs(module, params, tok, [queries[qid]] * 3, [data.corpus[d].contents for d in top3],
                       max_len=512)[:, 0]
  np.testing.assert_allclose([reranked[qid][d] for d in top3], direct, atol=1e-5)
