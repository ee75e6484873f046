"""Cross-encoder (reranker) training, ReadQG style, from all-MiniLM-L6-v2 with a new one-logit head.

  qgjax train --config configs/cross_encoder.py:tiny
  qgjax train --config configs/cross_encoder.py --config.data.train=runs/nfcorpus/pairs/pairs.jsonl \
      --config.data.corpus=../shared/data/nfcorpus --config.workdir=runs/nfcorpus/cross_encoder
  qgjax train --config configs/cross_encoder.py:qrels --config.num_steps=800 --config.workdir=runs/ce_nfcorpus
  qgjax train --config configs/cross_encoder.py:tiny,qrels

Data: records {doc_id, <pos_field>, <neg_field>} (`qgjax pairs` output: chosen / rejected; ReadQG:
the r=1 / r=0 queries). Loss: BCE(F(q+, d), 1) + BCE(F(q+, d_hard), 0) with d_hard the highest-
scoring other document among the next `loss.hard_negative_pool` of the global batch, plus
`loss.margin_weight` * max(0, margin + F(q-, d) - F(q+, d)). Export: <workdir>/export, an HF
*ForSequenceClassification directory (use it as `qgjax evaluate`'s rerank model or `qgjax mine`'s
reranker).

Qrels mode (`data.qrels_split` set; `data.train` empty): trains a reranker without generated queries
from a collection's judgements: every pair of `<data.corpus>/qrels/<qrels_split>.tsv` with grade >=
`data.min_relevance` is (q+, d), with `data.negatives_per_pair` BM25 hard negative documents (`data.bm25`
settings) drawn by `seed` from the query's `data.negative_depth` best documents not judged relevant,
each adding BCE(F(q+, d_bm25), 0) (one example per pair and negative); no q-, so no margin term.
Arguments: tiny (the demo pairs, batch 8, 4 steps), qrels (qrels mode on NFCorpus's train split, doc
length 256, in-batch negatives only: see the note there; with tiny: the demo collection's test qrels,
its only split, with a BM25 negative per pair).
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg
from qgjax.retrieval.bm25 import default_bm25_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, tiny=False, qrels=False)
  c = ml_collections.ConfigDict()
  c.task = "cross_encoder"
  c.workdir = "runs/cross_encoder"
  c.seed = 0
  # new_head: initialise the head tensors the checkpoint lacks (a plain encoder such as MiniLM);
  # false: the checkpoint must hold a classification head
  c.model = ml_collections.ConfigDict(dict(name="all-minilm-l6-v2", dtype="auto", attention_impl="auto",
                                                new_head=True))
  c.loss = ml_collections.ConfigDict(dict(hard_negative_pool=7, margin=0.0, margin_weight=1.0))
  c.data = ml_collections.ConfigDict(dict(
      train="", corpus="", pos_field="chosen", neg_field="rejected", query_max_len=64, doc_max_len=449,
      query_buckets=(16, 32, 64), doc_buckets=(128, 256), bucket_window=8,
      # qrels mode: qrels_split names <corpus>/qrels/<split>.tsv ("" = the pairs in `train`)
      qrels_split="", min_relevance=1, negatives_per_pair=1, negative_depth=30, bm25=default_bm25_config()))
  c.batch_size = 16
  c.accum_steps = 1
  c.num_steps = 0
  c.num_epochs = 1.0
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=2e-5, schedule="linear", warmup_steps=10, end_lr_ratio=0.0, weight_decay=0.01,
      b1=0.9, b2=0.999, eps=1e-6, momentum=0.0, grad_clip=1.0, freeze=[]))  # momentum: sgd only
  c.mesh = [("data", -1), ("fsdp", 1), ("tensor", 1)]
  c.sharding_rules = []   # (logical axis, mesh axes) pairs placed before qgjax.parallel.sharding.DEFAULT_RULES
  c.num_devices = 0
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=2, best_metric="", best_mode="min",
                                                async_save=True))
  c.export = ml_collections.ConfigDict(dict(enabled=True, dir=""))
  if a.tiny:
    from qgjax.data import demo_dir
    from qgjax.train.demo import demo_path
    c.workdir = "runs/tiny/cross_encoder"
    c.data.train = demo_path("pairs")
    c.data.corpus = str(demo_dir())
    c.data.query_max_len = 32
    c.data.doc_max_len = 96
    c.data.query_buckets = (16, 32)
    c.data.doc_buckets = (96,)
    c.batch_size = 8
    c.num_steps = 4
    c.log_every = 1
    c.checkpoint.every = 2
    c.optim.warmup_steps = 1
  if a.qrels:
    c.workdir = "runs/tiny/cross_encoder_qrels" if a.tiny else "runs/cross_encoder_qrels"
    c.data.train = ""
    c.data.qrels_split = "test" if a.tiny else "train"
    if not a.tiny:
      c.data.corpus = "../shared/data/nfcorpus"
      c.data.doc_max_len = 256
      c.data.doc_buckets = (128, 256)
      # Negatives: another query's document from the batch, no BM25 negative. Judged pairs of a loose
      # collection have BM25 "negatives" closer to the query than the judged documents (NFCorpus: the judged
      # one wins 26% of the time by MiniLM), which held the model at the label prior in every run; with
      # in-batch negatives it learns (docs/results.md, "Why it does not learn"). For sparse, precise
      # judgements (MS MARCO style) BM25 negatives: --config.data.negatives_per_pair=1.
      c.data.negatives_per_pair = 0
      c.loss.hard_negative_pool = 1
  return c
