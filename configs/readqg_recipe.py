r"""The ReadQG recipe end to end: `qgjax pipeline` with recipe = "readqg" (see qgjax.recipes.readqg).

  qgjax pipeline --config configs/readqg_recipe.py --config.generator=/models/flan-t5-base   # Cranfield, T5
  qgjax pipeline --config configs/readqg_recipe.py:decoder                                  # Cranfield, SmolLM2
  qgjax pipeline --config configs/readqg_recipe.py:tiny --config.encoder=<tiny bi-encoder dir>
  qgjax pipeline --config configs/readqg_recipe.py:tiny,decoder --config.generator=<tiny HF decoder dir>

split (Cranfield and the demo have test queries only: a seeded hash cuts them into disjoint
train / test halves) -> pairs (per document with >= 2m judged training queries: top-m positives,
bottom-m negatives, grades min-max rescaled to [0, 1]) -> align (soft prompts on a frozen
generator, configs/readqg.py) -> generate (r=1 and r=0 queries per document) -> cross-encoders
(BCE + margin, configs/cross_encoder.py) on the generated queries and on the real training queries
-> BM25 top-100 re-ranked on the test queries; report: nDCG@10, Recall@100, diversity, rel+/rel-/Δrel.

Generator: the paper's is a T5 (qgjax.methods.readqg.t5). No T5 weights exist offline here, so for the
T5 variant `generator` must be a local HF T5 / Flan-T5 directory (the paper: T5-base); the tiny
variant (and generator="") trains the prompts of a randomly initialised tiny T5 with SmolLM2's
tokenizer. `decoder` trains the same soft prompts (P_inst + r P_true + (1 - r) P_false) on the
frozen decoder-only SmolLM2-135M-Instruct instead (qgjax.methods.readqg.decoder: [prefix ; document
; "\nQuery:"] -> " query"; `generator` may name another decoder-only LM), CPU-sized: at most
192 document tokens, `align_epochs` epochs, the first `gen_docs` documents generated for (0 =
all), cross-encoders on 256-token inputs, the first `eval_queries` (40) of the seeded-order
test queries re-ranked (0 = all 115; re-ranking 2 x 100 documents per query dominates the CPU
time). configs/readqg.py stays the train config of the soft-prompt task; this file is the
recipe. Arguments: tiny, decoder, m=<positives / negatives per document>, align_epochs=<float>,
gen_docs=<int>, eval_queries=<int> (the last three: decoder only).
"""

from __future__ import annotations

import os

import ml_collections

from qgjax.config import parse_arg

ConfigDict = ml_collections.ConfigDict


def _group(spec: str, **values) -> ConfigDict:
  return ConfigDict({"config": spec, "set": ConfigDict(values)})


def get_config(arg: str | None = None) -> ConfigDict:
  a = parse_arg(arg, tiny=False, decoder=False, m=1, align_epochs=1.0, gen_docs=200, eval_queries=40)
  c = ConfigDict()
  c.recipe = "readqg"
  c.configs_dir = os.path.dirname(os.path.abspath(__file__))
  c.workdir = ("runs/readqg_recipe/tiny" if a.tiny else "runs/readqg_recipe/cranfield") + ("_decoder" if a.decoder else "")
  c.data_dir = "" if a.tiny else "../shared/data/cranfield"
  # T5: a local HF T5 directory, "" = the align config's random tiny T5; decoder: a decoder-only LM
  c.generator = "smollm2-135m-instruct" if a.decoder else ""
  c.encoder = "all-minilm-l6-v2"  # the cross-encoders start from it (new head); also scores rel+/rel-
  c.report = ConfigDict(dict(bins=30))
  c.until = ""   # a stage name: stop after it (no report), e.g. "generate" for the pool alone
  measures = ("nDCG@10", "R@100", "RR@10")
  c.split = _group("split.py", how="auto", test_fraction=0.5, seed=0)
  c.pairs = _group("readqg_pairs.py", m=a.m)
  if a.decoder and not a.tiny:
    # num_steps / max_queries = 0: every epoch / every test query (smoke checks set them)
    c.align = _group("readqg.py:decoder", num_epochs=a.align_epochs, num_steps=0, batch_size=8, eval_every=0,
                     checkpoint=dict(every=50), data=dict(eval_fraction=0.0, max_doc_tokens=192))
    c.generate = _group("readqg_generate.py:decoder", data=dict(limit=a.gen_docs), sampling=dict(num_samples=1))
    c.cross_encoder = _group("cross_encoder.py", num_epochs=1.0, num_steps=0, batch_size=16,
                             data=dict(doc_max_len=256))
    c.evaluate = _group("evaluate.py", depth=1000, max_queries=a.eval_queries, measures=measures,
                        rerank=dict(depth=100, max_len=256))
    return c
  if not a.tiny:
    c.align = _group("readqg.py", num_epochs=5.0, batch_size=8)
    c.generate = _group("readqg_generate.py", sampling=dict(num_samples=1))
    c.cross_encoder = _group("cross_encoder.py", num_epochs=1.0, batch_size=16)
    c.evaluate = _group("evaluate.py", depth=1000, measures=measures, rerank=dict(depth=100))
    return c
  variant = ",decoder" if a.decoder else ""
  c.align = _group("readqg.py:tiny" + variant, num_steps=4, eval_every=0, checkpoint=dict(every=4),
                   data=dict(eval_fraction=0.0))
  c.generate = _group("readqg_generate.py:tiny" + variant, data=dict(limit=24), sampling=dict(num_samples=2))
  c.cross_encoder = _group("cross_encoder.py:tiny", num_steps=4, checkpoint=dict(every=4))
  c.evaluate = _group("evaluate.py:tiny", max_queries=0, depth=100, measures=measures,
                      rerank=dict(depth=100, max_len=128), query_quality=dict(max_records=0))
  return c
