r"""Rewards for generated queries (or AQE expansions): BM25 / dense rank, cosine, cross-encoder, LLM judge,
LM likelihood.

  qgjax score --config configs/score.py:tiny
  qgjax score --config configs/score.py --config.input=runs/nfcorpus/generate \
      --config.data_dir=../shared/data/nfcorpus --config.workdir=runs/nfcorpus/score \
      --config.rewards=bm25_rank,dense_rank,dense_cosine --config.dense.cache_dir=runs/cache

`input` is the generate stage's output (sharded directory) or a JSONL file of records
{doc_id, sample_idx, query, ...} (AQE: {query_id, sample_idx, query, expansion, ...}, gold
documents from qrels/<split>.tsv). Writes <workdir>/scored (sharded, resumable): each record
plus `rewards` {name: value}, `ranks` {retriever: rank} and `reward` (= rewards[reward]).
Rewards are higher-is-better; rank rewards are -rank (rank_reward=neg_rank) or 1/rank.
llm_judge: P(yes) / (P(yes) + P(no)) of an instruct LM asked whether the document answers the
query (`llm_judge`: model, prompt template, answer tokens; see qgjax.rewards.llm_judge):

  qgjax score --config configs/score.py:tiny --config.rewards=bm25_rank,llm_judge \
      --config.reward=llm_judge --config.llm_judge.model=smollm2-135m-instruct
Arguments: tiny (the demo's hand-written sample queries; BM25 + MiniLM dense rewards).
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg
from qgjax.retrieval.bm25 import default_bm25_config
from qgjax.rewards.llm_judge import DEFAULT_TEMPLATE as JUDGE_TEMPLATE


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, tiny=False)
  c = ml_collections.ConfigDict()
  c.input = ""
  c.data_dir = ""  # BEIR directory of the corpus; "" = the shipped demo corpus
  c.split = "test"  # AQE: qrels/<split>.tsv names the gold documents
  c.workdir = "runs/score"
  c.rewards = ("bm25_rank",)  # any of bm25_rank, bm25_ndcg, dense_rank, dense_cosine, cross_encoder, llm_judge,
  # lm_likelihood
  c.reward = "bm25_rank"  # the primary reward, copied to record["reward"]
  c.rank_reward = "neg_rank"  # or "reciprocal"
  c.depth = 1000  # ranks deeper than this are depth + 1
  c.ndcg_cutoff = 10  # bm25_ndcg: nDCG@ndcg_cutoff, every target document (AQE: each judged one) gain 1
  c.batch_size = 64
  c.shard_size = 10000
  c.retention_ks = (1, 10, 100)
  c.aqe = ml_collections.ConfigDict(dict(query_repeats=1, query_repeats_file=""))  # retrieval text: query x repeats
  # + expansion; query_repeats_file: a tune_repeats repeats.json whose choice replaces query_repeats
  c.bm25 = default_bm25_config()
  c.dense = ml_collections.ConfigDict(dict(
      model="all-minilm-l6-v2", max_len=256, query_max_len=64, batch_size=64, chunk=4096,
      cache_dir=""))  # when set: the corpus-embedding store, shared with mine / evaluate given the same dir
  c.cross_encoder = ml_collections.ConfigDict(dict(model="", max_len=512, batch_size=32,
                                                   dtype="auto", attention_impl="auto"))  # as llm_judge's
  c.llm_judge = ml_collections.ConfigDict(dict(
      model="smollm2-135m-instruct",  # registry name, GGUF file or HF dir of an instruct decoder
      dtype="auto", attention_impl="auto",  # auto: bfloat16 + cuDNN attention on a GPU, float32 + XLA on a CPU
      batch_size=16, max_len=512,  # prompts pad to length buckets up to max_len
      template=JUDGE_TEMPLATE, system="",  # {query}, {document}; system "" = the chat template's default
      max_query_tokens=128, max_doc_tokens=320,
      yes="Yes", no="No",  # one token each; without a chat template use " Yes" / " No"
      use_chat_template=True, answer_prefix="Answer:"))  # answer_prefix: without a chat template
  if a.tiny:
    from qgjax.data import demo_dir
    c.input = str(demo_dir() / "sample_queries.jsonl")
    c.workdir = "runs/tiny/score"
    c.rewards = ("bm25_rank", "dense_rank", "dense_cosine")
    c.depth = 100
    c.batch_size = 16
    c.shard_size = 16
    c.dense.batch_size = 16
  return c
