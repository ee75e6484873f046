"""RSFT+DPO (AQE's best objective): DPO on best-vs-worst pairs + sft_weight x NLL of the best query.

  qgjax train --config configs/rsft_dpo.py:tiny
  qgjax train --config configs/rsft_dpo.py --config.data.train=runs/nfcorpus/pairs/pairs.jsonl \
      --config.data.corpus=../shared/data/nfcorpus --config.workdir=runs/nfcorpus/rsft_dpo

Same data and options as configs/dpo.py; dpo.sft_weight weighs the RSFT term on the chosen
query. Arguments: tiny, sft_weight=<float>, lora=true|false, prompt=plain|...|expansion.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from qgjax.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("qgjax_configs_dpo", os.path.join(os.path.dirname(__file__), "dpo.py"))
  dpo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(dpo)
  a = parse_arg(arg, tiny=False, sft_weight=1.0, lora=True, prompt="")
  c = dpo.get_config(f"tiny={a.tiny},lora={a.lora},prompt={a.prompt}")
  c.task = "rsft_dpo"
  c.workdir = "runs/rsft_dpo" if not a.tiny else "runs/tiny/rsft_dpo"
  c.dpo.sft_weight = a.sft_weight
  return c
