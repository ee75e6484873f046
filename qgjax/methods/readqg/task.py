"""`qgjax train` task `readqg`: soft prompts on a frozen T5 or decoder-only LM (`model.kind`).

  qgjax train --config configs/readqg.py:tiny
"""

from __future__ import annotations

from typing import Any

from qgjax.methods.readqg.objective import generator_kind
from qgjax.train.loop import TaskSetup, fit


def setup_readqg(config: Any) -> TaskSetup:
  if generator_kind(config.model) == "decoder":
    from qgjax.methods.readqg.decoder import setup_readqg_decoder
    return setup_readqg_decoder(config)
  from qgjax.methods.readqg.t5 import setup_readqg_t5
  return setup_readqg_t5(config)


def run_readqg(config: Any) -> dict:
  return fit(setup_readqg(config), config)
