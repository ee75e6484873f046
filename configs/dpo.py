"""DPO on the query generator (SmolLM2-135M-Instruct, LoRA) from preference pairs.

  qgjax train --config configs/dpo.py:tiny
  qgjax train --config configs/dpo.py --config.data.train=runs/nfcorpus/pairs/pairs.jsonl \
      --config.data.corpus=../shared/data/nfcorpus --config.workdir=runs/nfcorpus/dpo

Pairs come from `qgjax pairs` (records: doc_id, chosen, rejected, rewards); documents are looked
up in `data.corpus` and formatted with the same prompt as `qgjax generate`. The reference
log-probs are precomputed once into <workdir>/pairs_with_ref.jsonl (dpo.reference=precomputed)
or taken from the base model with adapters off (dpo.reference=adapters_off).
The generator may be decoder-only or T5 / Flan-T5 (a local HF dir, --config.model.name=<dir>):
the same tasks, losses and step; for T5 the prompt is the encoder input and the query the decoder
target, and the export is a T5ForConditionalGeneration directory.
Arguments: tiny (demo pairs, 8 steps, CPU-sized), loss=sigmoid|ipo, lora=true|false,
prompt=few_shot|plain|contrastive|expansion (must match the generate config, whose default is
few_shot; expansion = AQE).
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg


def base_config(arg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fields shared by the alignment configs (sft, rsft, dpo, rsft_dpo), decoder-only or T5."""
  from qgjax.sampling.prompts import default_prompt_config
  from qgjax.train.demo import DEMO_BEIR

  c = ml_collections.ConfigDict()
  c.task = "dpo"
  c.workdir = "runs/dpo"
  c.seed = 0
  # kind: auto (T5 / Flan-T5 when the dir's config.json says so, else decoder-only) | decoder | t5
  c.model = ml_collections.ConfigDict(dict(
      name="smollm2-135m-instruct", kind="auto", init="pretrained", dtype="auto", attention_impl="auto",
      scan_layers=True, remat=False, overrides={}))   # dtype / attention_impl: see docs/accelerators.md
  c.train_mode = "lora" if arg.lora else "full"
  # targets: every projection of a decoder (q..down_proj) or of T5 (self/cross attention q, k, v, o; mlp wi*, wo)
  c.lora = ml_collections.ConfigDict(dict(
      rank=8, alpha=16.0, targets=r"(q|k|v|o|gate|up|down)_proj|_attn/[qkvo]/|mlp/w[io]",
      a_init="kaiming_uniform"))   # a_init: kaiming_uniform | normal (B starts at 0)
  c.data = ml_collections.ConfigDict(dict(
      train="", corpus="", prompt_buckets=(256, 384, 448, 512), completion_buckets=(32, 64), bucket_window=8,
      eval_fraction=0.05))
  # The generation prompt: keep it equal to the `qgjax generate` config that sampled the queries
  # (its default is few_shot; the tiny variant uses the shorter plain prompt).
  c.prompt = default_prompt_config(arg.get("prompt", "") or ("plain" if arg.tiny else "few_shot"))
  c.batch_size = 16
  # 4 microbatches of 4 pairs: 16 few-shot pairs (~512 + 64 tokens, chosen + rejected) in one pass
  # need ~32 GB on SmolLM2; on an accelerator with room to spare, --config.accum_steps=1.
  c.accum_steps = 4
  c.num_steps = 0
  c.num_epochs = 1.0
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=5e-4 if arg.lora else 5e-6, schedule="cosine", warmup_steps=10, end_lr_ratio=0.1,
      weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0, grad_clip=1.0, freeze=[]))  # momentum: sgd only
  c.mesh = [("data", -1), ("fsdp", 1), ("tensor", 1)]
  c.sharding_rules = []   # (logical axis, mesh axes) pairs placed before qgjax.parallel.sharding.DEFAULT_RULES
  c.num_devices = 0
  c.log_every = 10
  c.eval_every = 50
  c.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=3, best_metric="eval/loss", best_mode="min",
                                                async_save=True))
  c.export = ml_collections.ConfigDict(dict(enabled=True, dir=""))
  if arg.tiny:
    c.data.corpus = DEMO_BEIR
    c.prompt.max_doc_tokens = 64
    c.data.prompt_buckets = (128,)
    c.data.completion_buckets = (24,)
    c.data.eval_fraction = 0.2
    c.batch_size = 4
    c.accum_steps = 1
    c.num_steps = 8
    c.log_every = 1
    c.eval_every = 4
    c.checkpoint.every = 4
    c.optim.warmup_steps = 2
    c.workdir = "runs/tiny"
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  from qgjax.train.demo import demo_path

  a = parse_arg(arg, tiny=False, loss="sigmoid", lora=True, prompt="")
  c = base_config(a)
  c.task = "dpo"
  c.workdir = "runs/dpo" if not a.tiny else "runs/tiny/dpo"
  c.dpo = ml_collections.ConfigDict(dict(
      beta=0.1, label_smoothing=0.0, loss_type=a.loss, reference="precomputed", share_prompt=True,
      # the tokens every prompt starts with (a few-shot prompt's ~310) run once per batch, not per pair:
      # 1.57x per step on 1 CPU device (docs/benchmarks.md); the same losses and gradients
      share_prompt_prefix=True, sft_weight=0.0,
      # R-DPO (Park et al. 2024): + length_alpha x (chosen - rejected completion tokens) inside the sigmoid,
      # so DPO is not paid for longer chosen answers; 0 = plain DPO
      length_alpha=0.0))
  c.reference_batch_size = 0   # pairs per step of the one-off reference pass (dpo.reference=precomputed); 0 = batch_size
  if a.tiny:
    c.data.train = demo_path("pairs")
  return c
