"""Bi-encoder (retriever) training with InfoNCE on mined tuples, from all-MiniLM-L6-v2 (offline)
or, with family=decoder, from a decoder-only LM (SmolLM2-135M-Instruct; LoRA, last-token pooling).

  qgjax mine --config configs/mine.py:tiny && qgjax train --config configs/retriever.py:tiny
  qgjax train --config configs/retriever.py:tiny,family=decoder --config.model.name=<decoder dir>
  qgjax train --config configs/retriever.py --config.data.train=runs/nfcorpus/mine/tuples \
      --config.data.corpus=../shared/data/nfcorpus --config.workdir=runs/nfcorpus/retriever

Loss: InfoNCE with `temperature`; negatives are every other document of the GLOBAL batch (all
devices) plus `num_negatives` mined negatives per query (0 = in-batch only). `towers`: shared
or separate (query and document encoders initialised from the same checkpoint). Gradient
accumulation is refused: it would shrink the in-batch negative pool to one microbatch.
loss=margin_mse (GPL, qgjax.train.margin_mse): the bi-encoder's margin s(q, pos) - s(q, neg) over
the mined negatives regresses on the reranker's ce_pos - ce_neg, which `qgjax mine` stores with
mining.store_scores (GPL pairs it with similarity=dot and a cross-encoder reranker):

  qgjax mine --config configs/mine.py:tiny --config.reranker.kind=bi_encoder --config.mining.store_scores=True
  qgjax train --config configs/retriever.py:tiny --config.loss=margin_mse
Export: <workdir>/export, a sentence-transformers directory (separate: export/query, export/doc).
Decoder family (qgjax.train.decoder_retriever): model.name is a registry name, GGUF or HF dir;
model.pooling lasttoken | mean; model.query_prefix an instruction prepended to every query (saved
as the export's "query" prompt); train_mode lora (adapters on `lora.targets`, merged in the
export) | full. The export is a sentence-transformers directory over the HF decoder.
Arguments: tiny (the tuples of `qgjax mine --config configs/mine.py:tiny`, batch 8, 4 steps),
family=bert|decoder.
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, tiny=False, towers="shared", family="bert")
  decoder = a.family == "decoder"
  c = ml_collections.ConfigDict()
  c.task = "retriever"
  c.workdir = "runs/retriever"
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(
      name="smollm2-135m-instruct" if decoder else "all-minilm-l6-v2", family=a.family, dtype="auto", dropout=False,
      attention_impl="auto", remat=False, pooling="lasttoken" if decoder else "", query_prefix="",
      init="pretrained", scan_layers=True, overrides={}))   # init / scan_layers / overrides: decoder family (as dpo.py)
  c.train_mode = "lora" if decoder else "full"     # lora: decoder family only
  c.lora = ml_collections.ConfigDict(dict(rank=8, alpha=16.0, targets=r"(q|k|v|o|gate|up|down)_proj",
                                          a_init="kaiming_uniform"))   # a_init: kaiming_uniform | normal (B starts at 0)
  c.towers = a.towers
  c.temperature = 0.05            # sentence-transformers' MultipleNegativesRankingLoss scale 20
  c.similarity = "cos"            # cos (MNRL's cos_sim: the exported model normalises) or dot (as the model is)
  c.num_negatives = 1
  c.loss = "infonce"              # or "margin_mse": needs tuples mined with mining.store_scores=True
  # margin_mse: the student's margins times this before they regress on the teacher's (cross-encoder logits);
  # 1 = GPL's raw dot product; an encoder that normalises (all-MiniLM-L6-v2: |margin| <= 2) needs ~1/temperature
  c.margin_scale = 1.0
  # > 0: margin_scale is instead fitted before training, by least squares of the teacher's margins on the
  # start student's over the first this many training tuples (the scale that asks the student neither to
  # widen nor to shrink its margins on average; docs/results.md, MarginMSE). 0: margin_scale as given.
  c.margin_scale_fit = 0
  # margin_mse: < 1 mixes the teacher with the start student before training: every target margin becomes
  # w x teacher + (1 - w) x k x the start student's margin, k the ratio of their spreads over the training
  # tuples (0.5 = equal weight); a teacher weaker than the student then only nudges it. 1 = the teacher alone.
  c.teacher_weight = 1.0
  c.data = ml_collections.ConfigDict(dict(
      train="", corpus="", query_max_len=64, doc_max_len=256, query_buckets=(16, 32, 64),
      doc_buckets=(64, 128, 256), bucket_window=8, eval_fraction=0.0,
      # train on a seeded random subset of at most max_examples tuples (0 = all), or of as many as the
      # tuples at max_examples_like hold (another mine output: equal training budgets for two query sets)
      max_examples=0, max_examples_like=""))
  c.batch_size = 64
  # rows encoded at a time inside the step, each chunk recomputed in the backward (Towers chunk): the
  # same gradients in a fraction of the memory (MiniLM, batch 32: peak RSS 9.7 -> 2.8 GB at 8; batch 64
  # at 16: 4.0 GB, ~18 GB without); 0 = the whole batch at once; -1 = on CPU chunks of at most 4,096
  # tokens (rows x length: 16 x 256, a batch of 32 x 128 whole), on accelerators the whole batch
  c.encode_chunk = -1
  c.accum_steps = 1
  c.num_steps = 0
  c.num_epochs = 1.0
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-4 if decoder else 2e-5, schedule="linear", warmup_steps=10, end_lr_ratio=0.0,
      weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, momentum=0.0, grad_clip=1.0, freeze=[]))  # momentum: sgd only
  c.mesh = [("data", -1), ("fsdp", 1), ("tensor", 1)]
  c.sharding_rules = []   # (logical axis, mesh axes) pairs placed before qgjax.parallel.sharding.DEFAULT_RULES
  c.num_devices = 0
  c.log_every = 10
  c.eval_every = 0
  c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=2, best_metric="eval/loss", best_mode="min",
                                                async_save=True))
  c.export = ml_collections.ConfigDict(dict(enabled=True, dir=""))
  if a.tiny:
    from qgjax.data import demo_dir
    c.workdir = "runs/tiny/retriever"
    c.data.train = "runs/tiny/mine/tuples"
    c.data.corpus = str(demo_dir())
    c.data.doc_max_len = 128
    c.data.query_buckets = (16, 32)
    c.data.doc_buckets = (64, 128)
    c.batch_size = 8
    c.num_steps = 4
    c.log_every = 1
    c.checkpoint.every = 2
    c.optim.warmup_steps = 1
  return c
