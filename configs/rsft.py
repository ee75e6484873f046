"""RSFT (rejection-sampling fine-tuning) of the query generator on best-of-n queries.

  qgjax train --config configs/rsft.py:tiny
  qgjax train --config configs/rsft.py --config.data.train=runs/nfcorpus/pairs/best_of_n.jsonl \
      --config.data.corpus=../shared/data/nfcorpus --config.workdir=runs/nfcorpus/rsft

Records: {"doc_id", "query"} (the `pairs` stage's best-of-n output) or {"prompt", "completion"};
the loss is the masked token NLL of the query given the generation prompt. task=sft trains the
same objective on any (document, query) records. Arguments: tiny, lora=true|false,
prompt=few_shot|plain|contrastive|expansion (as in the generate config).
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from qgjax.config import parse_arg


def _dpo_base():
  spec = importlib.util.spec_from_file_location("qgjax_configs_dpo", os.path.join(os.path.dirname(__file__), "dpo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  from qgjax.train.demo import demo_path

  a = parse_arg(arg, tiny=False, lora=True, prompt="")
  c = _dpo_base()(a)
  c.task = "rsft"
  c.workdir = "runs/rsft" if not a.tiny else "runs/tiny/rsft"
  c.checkpoint.best_metric = "eval/nll"
  if a.tiny:
    c.data.train = demo_path("sft")
  return c
