r"""The ReadQG recipe end to end: `qgjax pipeline` with recipe = "readqg" (see qgjax.jobs.recipe_readqg).

  qgjax pipeline --config configs/readqg_recipe.py --config.generator=/models/flan-t5-base   # Cranfield
  qgjax pipeline --config configs/readqg_recipe.py:tiny --config.encoder=<tiny bi-encoder dir>

split (Cranfield and the demo have test queries only: a seeded hash cuts them into disjoint
train / test halves) -> pairs (per document with >= 2m judged training queries: top-m positives,
bottom-m negatives, grades min-max rescaled to [0, 1]) -> align (soft prompts on a frozen T5,
configs/readqg.py) -> generate (r=1 and r=0 queries per document) -> cross-encoders (BCE + margin,
configs/cross_encoder.py) on the generated queries and on the real training queries -> BM25
top-100 re-ranked on the test queries; report: nDCG@10, Recall@100, diversity, rel+/rel-/Δrel.

Generator: the ReadQG task trains soft prompts of a T5 (qgjax.train.readqg; the soft-prompt module
also fits the decoder-only LM, but no decoder-only ReadQG task exists). No T5 weights exist
offline here, so `generator` must be a local HF T5 / Flan-T5 directory (the paper: T5-base);
the tiny variant (and generator="") trains the prompts of a randomly initialised tiny T5 with
SmolLM2's tokenizer. configs/readqg.py stays the train config of the soft-prompt task; this file
is the recipe. Arguments: tiny, m=<positives / negatives per document>.
"""

from __future__ import annotations

import os

import ml_collections

from qgjax.config import parse_arg

ConfigDict = ml_collections.ConfigDict


def _group(spec: str, **values) -> ConfigDict:
  return ConfigDict({"config": spec, "set": ConfigDict(values)})


def get_config(arg: str | None = None) -> ConfigDict:
  a = parse_arg(arg, tiny=False, m=1)
  c = ConfigDict()
  c.recipe = "readqg"
  c.configs_dir = os.path.dirname(os.path.abspath(__file__))
  c.workdir = "runs/readqg_recipe/tiny" if a.tiny else "runs/readqg_recipe/cranfield"
  c.data_dir = "" if a.tiny else "../shared/data/cranfield"
  c.generator = ""        # a local HF T5 directory; "" = the align config's random tiny T5
  c.encoder = "all-minilm-l6-v2"  # the cross-encoders start from it (new head); also scores rel+/rel-
  c.report = ConfigDict(dict(bins=30))
  measures = ("nDCG@10", "R@100", "RR@10")
  c.split = _group("recipe_split.py", how="auto", test_fraction=0.5, seed=0)
  c.pairs = _group("readqg_pairs.py", m=a.m)
  if not a.tiny:
    c.align = _group("readqg.py", num_epochs=5.0, batch_size=8)
    c.generate = _group("readqg_generate.py", sampling=dict(num_samples=1))
    c.cross_encoder = _group("cross_encoder.py", num_epochs=1.0, batch_size=16)
    c.evaluate = _group("evaluate.py", depth=1000, measures=measures, rerank=dict(depth=100))
    return c
  c.align = _group("readqg.py:tiny", num_steps=4, eval_every=0, checkpoint=dict(every=4),
                   data=dict(eval_fraction=0.0))
  c.generate = _group("readqg_generate.py:tiny", data=dict(limit=24), sampling=dict(num_samples=2))
  c.cross_encoder = _group("cross_encoder.py:tiny", num_steps=4, checkpoint=dict(every=4))
  c.evaluate = _group("evaluate.py:tiny", max_queries=0, depth=100, measures=measures,
                      rerank=dict(depth=100, max_len=128), query_quality=dict(max_records=0))
  return c
