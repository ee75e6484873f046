"""`qgjax train --config configs/<task>.py[:tiny] [--config.key=value ...]`

Trains what `config.task` names; each task is a function `run(config) -> summary dict` in
`qgjax.train` (see TASKS). A run lives in `config.workdir`: orbax checkpoints (last k + best),
metrics.jsonl, summary.json and, for generators, an HF safetensors export. Running the same
command again resumes from the latest checkpoint with identical batches.

  qgjax train --config configs/dpo.py:tiny
  qgjax train --config configs/rsft.py --config.data.train=runs/pairs/rsft.jsonl
  qgjax train --config configs/readqg.py:tiny --config.num_steps=20

Tasks: sft, rsft, dpo, rsft_dpo (decoder-only generator, full or LoRA), readqg (a frozen T5 or
decoder-only LM with soft prompts only trainable), and whatever other modules register below.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from qgjax.config import require
from qgjax.errors import ConfigError

# task -> "module:function". Add a line to add a task; modules are imported only when used.
TASKS: dict[str, str] = {
    "sft": "qgjax.train.lm_tasks:run_sft",
    "rsft": "qgjax.train.lm_tasks:run_rsft",
    "dpo": "qgjax.train.lm_tasks:run_dpo",
    "rsft_dpo": "qgjax.train.lm_tasks:run_rsft_dpo",
    "readqg": "qgjax.methods.readqg.task:run_readqg",
    "retriever": "qgjax.train.infonce:run_retriever",
    "cross_encoder": "qgjax.train.cross_encoder:run_cross_encoder",
}


def task_fn(name: str) -> Callable[[Any], dict]:
  if name not in TASKS:
    raise ConfigError(f"unknown config.task {name!r}; tasks: {', '.join(sorted(TASKS))}")
  module, _, fn = TASKS[name].partition(":")
  try:
    return getattr(importlib.import_module(module), fn)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"task {name!r} is not available in this install ({TASKS[name]}: {e})") from None


def run(config: Any) -> dict:
  require(config, "task", "workdir")
  return task_fn(config.task)(config)
