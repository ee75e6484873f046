"""ReadQG: soft instruction + relevance prompts on a frozen generator, MLE + self-contrastive + calibration.

  qgjax train --config configs/readqg.py:tiny
  qgjax train --config configs/readqg.py --config.model.name=/models/flan-t5-base \
      --config.data.train=runs/cranfield/readqg/pairs.jsonl --config.workdir=runs/cranfield/readqg
  qgjax train --config configs/readqg.py:decoder --config.data.train=<pairs.jsonl> --config.data.corpus=<BEIR dir>

No T5 weights exist offline on these machines: the tiny variant trains the prompts of a small
RANDOMLY initialised T5 (SmolLM2's tokenizer) to exercise the whole path; a real T5 run needs a
local HF T5 / Flan-T5 directory in model.name. `decoder` trains the same soft prompts on the
frozen decoder-only SmolLM2-135M-Instruct (qgjax.methods.readqg.decoder: [P_inst ; rel prompt ;
document ; readqg.separator] -> " query"); model.kind (auto | t5 | decoder) picks the variant,
auto from model.name. Records: see qgjax/methods/readqg/objective.py. Arguments: tiny, decoder (combinable:
tiny,decoder = the tiny sizes on the decoder path; set model.name to a small decoder dir).
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  from qgjax.train.demo import demo_path

  a = parse_arg(arg, tiny=False, decoder=False)
  c = ml_collections.ConfigDict()
  c.task = "readqg"
  c.workdir = "runs/readqg"
  c.seed = 0
  # kind: auto | t5 | decoder; tokenizer: init=random only; t5: T5Config fields of a random T5;
  # scan_layers / remat / overrides: the decoder-only variant's LM (as in configs/dpo.py)
  c.model = ml_collections.ConfigDict(dict(name="", kind="auto", init="pretrained", dtype="auto", tokenizer="", t5={},
                                           attention_impl="auto", scan_layers=True, remat=False, overrides={}))
  c.train_mode = "full"   # the generator stays frozen (only the soft prompts train); nothing else is accepted
  # separator: decoder-only variant only, the text between the document and the query
  # calibration: rank (hinge margin eps = calibration_margin) | margin (the authors' SLiC-style variant:
  # margin gamma * sim, gamma = calibration_margin, sim = greedy-matching F1 of the forward and swapped
  # decoder states summed over calibration_ngrams); see qgjax/methods/readqg/objective.py
  c.readqg = ml_collections.ConfigDict(dict(
      instruction="Generate a question for the passage with relevance label:", inst_len=20, rel_len=5,
      tau=0.25, calibration="rank", calibration_margin=1.0, calibration_ngrams=(1, 2), contrastive_weight=1.0,
      calibration_weight=1.0, separator="\nQuery:"))
  c.data = ml_collections.ConfigDict(dict(train="", corpus="", max_doc_tokens=256, source_buckets=(128, 256),
                                          query_buckets=(16, 32), bucket_window=8, eval_fraction=0.05))
  c.batch_size = 8
  c.accum_steps = 1
  c.num_steps = 0
  c.num_epochs = 1.0
  # soft prompts take large learning rates (the ReadQG recipe uses 1e-2, constant)
  c.optim = ml_collections.ConfigDict(dict(name="adamw", lr=1e-2, schedule="constant", warmup_steps=0,
                                           end_lr_ratio=1.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
                                           momentum=0.0, grad_clip=1.0, freeze=[]))  # momentum: sgd only
  c.mesh = [("data", -1), ("fsdp", 1), ("tensor", 1)]
  c.sharding_rules = []   # (logical axis, mesh axes) pairs placed before qgjax.parallel.sharding.DEFAULT_RULES
  c.num_devices = 0
  c.log_every = 10
  c.eval_every = 100
  c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=3, best_metric="eval/loss", best_mode="min",
                                                async_save=True))
  c.export = ml_collections.ConfigDict(dict(enabled=True, dir=""))
  if a.tiny:
    c.workdir = "runs/tiny/readqg"
    c.model.init = "random"
    c.model.tokenizer = "smollm2-135m-instruct"
    c.model.t5 = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                      relative_attention_num_buckets=16, relative_attention_max_distance=64,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, scale_decoder_outputs=False)
    c.readqg.inst_len, c.readqg.rel_len = 8, 3
    c.data.train = demo_path("readqg")
    c.data.max_doc_tokens = 96
    c.data.source_buckets = (96,)
    c.data.query_buckets = (24,)
    c.data.eval_fraction = 0.2
    c.batch_size = 4
    c.num_steps = 10
    c.log_every = 1
    c.eval_every = 5
    c.checkpoint.every = 5
  if a.decoder:
    # source buckets hold document + separator tokens (the soft prefix comes on top)
    c.model.update(name="smollm2-135m-instruct", kind="decoder", init="pretrained", t5={})
    c.workdir = "runs/tiny/readqg_decoder" if a.tiny else "runs/readqg_decoder"
    if not a.tiny:
      c.data.update(max_doc_tokens=192, source_buckets=(128, 200), query_buckets=(32, 64))
    else:
      c.data.update(max_doc_tokens=92, source_buckets=(96,))
  return c
