r"""`qgjax pipeline`: one of three equal recipes, picked by `config.recipe`.

  qgjax pipeline --config configs/pipeline.py:tiny          # dpo_qg (the default)
  qgjax pipeline --config configs/aqe.py:tiny               # aqe
  qgjax pipeline --config configs/readqg_recipe.py:tiny     # readqg

Each recipe (qgjax.recipes.<name>.RECIPE) declares its stages, their wiring and its report; the
engine (qgjax.pipeline.runner.run_recipe) runs the stages in order under `config.workdir`, each
cached in <workdir>/<stage>/ (STAGE_DONE.json) and resumable, and writes
<workdir>/report/report.{md,json,png}.
"""

from __future__ import annotations

import importlib

from qgjax.errors import ConfigError

RECIPES = ("dpo_qg", "aqe", "readqg")


def recipe(name: str):
  """The Recipe named `name` (qgjax.recipes.<name>.RECIPE)."""
  if name not in RECIPES:
    raise ConfigError(f"unknown config.recipe {name!r}; recipes: {', '.join(RECIPES)}")
  return importlib.import_module(f"qgjax.recipes.{name}").RECIPE


def run(config) -> dict:
  """`qgjax pipeline`: runs config.recipe -> the summary the CLI prints."""
  from qgjax.pipeline.runner import run_recipe

  return run_recipe(recipe(config.recipe), config)
