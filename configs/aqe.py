r"""Aligned Query Expansion (arXiv 2507.11042) end to end: `qgjax pipeline` with recipe = "aqe".

  qgjax pipeline --config configs/aqe.py                                  # NFCorpus, SmolLM2, DPO
  qgjax pipeline --config configs/aqe.py:method=rsft_dpo,n=50 --config.workdir=runs/aqe/nfc-rsft-dpo
  qgjax pipeline --config configs/aqe.py:tiny --config.generator=<tiny HF decoder dir>   # demo, CPU

Stages (qgjax.recipes.aqe): split -> generate_train (n expansions per training query) ->
tune_repeats (query_repeats="tune": the query's BM25 weight against the expansion, chosen on the
training queries) -> score_train (-BM25 rank of the gold document for query + expansion) -> pairs (best vs worst,
best-of-n) -> align (`method`: rsft | dpo | rsft_dpo (one joint loss, DPO + w x NLL) |
rsft_then_dpo (align_rsft: RSFT, then align: DPO starting from the RSFT weights, which are also its
reference)) -> generate_base / generate_aligned (one
greedy expansion per test query) and generate_sampled + select (best of n_test by a qrels-free
filter) -> evaluate_* (BM25 over query + expansion: nDCG@10, Recall@100, top-1/5/20 accuracy) ->
score_base / score_aligned -> <workdir>/report. Test-time stages run in their own process and
report wall time and peak RSS. With test_samples=N (and tune_on_dev): N sampled expansions per dev and
test query from the aligned generator, each query's N joined into one expansion (MuGI / query2doc
style), its k chosen on the dev queries (generate_dev_joined -> tune_dev_joined, generate_joined ->
evaluate_joined): the report's "N samples joined" row.

Training queries: the collection's `train` split (NFCorpus: queries_train.jsonl + qrels/train.tsv);
a collection without one (the demo, Cranfield) is split by a seeded hash of the query id into
disjoint train / test halves (split.set.how=hash, test_fraction). split.set.max_train / max_test
cap the query counts. Arguments: tiny, method=rsft|dpo|rsft_dpo|rsft_then_dpo, n=<expansions per training
query> (the paper: 50), n_test=<samples per test query for best of N> (default n),
test_samples=<aligned samples joined per test query> (default 0: off), generator=.
"""

from __future__ import annotations

import os

import ml_collections

from qgjax.config import parse_arg

ConfigDict = ml_collections.ConfigDict
# method -> the align stage's config; rsft_then_dpo runs align_rsft (rsft.py) first, then DPO from its weights
ALIGN = {"rsft": "rsft.py", "dpo": "dpo.py", "rsft_dpo": "rsft_dpo.py", "rsft_then_dpo": "dpo.py"}


def _group(spec: str, **values) -> ConfigDict:
  return ConfigDict({"config": spec, "set": ConfigDict(values)})


def get_config(arg: str | None = None) -> ConfigDict:
  a = parse_arg(arg, tiny=False, method="dpo", n=0, n_test=0, test_samples=0, generator="")
  if a.method not in ALIGN:
    raise ValueError(f"method must be one of {', '.join(ALIGN)}; got {a.method!r}")
  n = a.n or (4 if a.tiny else 50)
  n_test = a.n_test or n
  c = ConfigDict()
  c.recipe = "aqe"
  c.configs_dir = os.path.dirname(os.path.abspath(__file__))
  c.workdir = f"runs/aqe/tiny-{a.method}" if a.tiny else f"runs/aqe/nfcorpus-{a.method}"
  c.data_dir = "" if a.tiny else "../shared/data/nfcorpus"  # "" = the shipped demo corpus
  c.generator = a.generator or "smollm2-135m-instruct"
  c.method = a.method
  # BM25 over query x k + expansion (reward and test-time search alike): "tune" = k chosen on the training
  # queries by the tune_repeats stage among tune_repeats.set.candidates; or a fixed integer (1 = no repeat)
  c.query_repeats = "tune"
  # the alignment reward's k (score_train): "same" as above, or an integer (e.g. 1: the expansion weighs
  # as much as the query, so its content moves the gold document's rank; the test-time search keeps k)
  c.reward_query_repeats = "same"
  # tune each greedy generator's own k on dev queries (needs split.set.dev_queries > 0: training queries
  # set apart), for evaluate_base / evaluate_aligned; best of N keeps the k above
  c.tune_on_dev = False
  # > 0: also the aligned generator's test_samples sampled expansions per query joined into one (its k tuned
  # on dev: needs tune_on_dev); set it with the config argument (test_samples=8), which sizes generate_joined
  c.test_samples = a.test_samples
  c.report = ConfigDict(dict(bins=30))
  c.until = ""   # a stage name: stop after it (no report), e.g. "generate" for the pool alone
  greedy = dict(sampling=dict(temperature=0.0, num_samples=1, num_beams=1))
  c.generate_greedy = ConfigDict({"set": ConfigDict(greedy)})
  c.generate_sampled = ConfigDict({"set": ConfigDict(dict(sampling=dict(num_samples=n_test)))})
  c.generate_joined = ConfigDict({"set": ConfigDict(dict(sampling=dict(num_samples=max(a.test_samples, 1))))})
  c.select = _group("select.py", criterion="consensus")
  measures = ("nDCG@10", "R@100", "Success@1", "Success@5", "Success@20")
  if not a.tiny:
    c.split = _group("split.py", how="auto", max_train=0, max_test=0)
    c.generate = _group("generate.py:mode=expansion", batch_size=8, buckets=(128, 192, 256),
                        sampling=dict(num_samples=n, max_new_tokens=64, seed=0))
    c.tune_repeats = _group("repeats.py")
    c.tune_dev = _group("repeats.py")   # tune_on_dev: each greedy generator's k on the dev queries
    # test_samples: the joined expansion is ~test_samples times longer, so its k runs ~that much higher
    c.tune_joined = _group("repeats.py", candidates=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128))
    c.score = _group("score.py", rewards=("bm25_rank",), reward="bm25_rank", depth=1000)
    # RSFT keeps a query only when its best expansion brings the gold document within the depth
    # (the -rank reward of a miss is -(depth + 1) for every expansion: nothing to learn from)
    c.pairs = _group("pairs.py", strategy="best_worst", margin=0.0, max_pairs_per_doc=1,
                     rsft=dict(n_best=1, min_reward=-1000.0))
    align = dict(num_epochs=1.0, batch_size=8, data=dict(prompt_buckets=(128, 192, 256), completion_buckets=(64, 80)))
    c.align = _group(f"{ALIGN[a.method]}:prompt=expansion", **align)
    c.align_rsft = _group("rsft.py:prompt=expansion", **align)   # only method=rsft_then_dpo runs it
    c.evaluate = _group("evaluate.py", depth=1000, measures=measures)
    return c

  # tiny: the 28-query demo collection cut in two by a seeded hash, tiny models, a few steps.
  c.split = _group("split.py", how="hash", test_fraction=0.5)
  c.generate = _group("generate.py:mode=expansion", batch_size=8, buckets=(64,), log_every_s=0.0,
                      print_examples=0, postprocess=dict(drop_copied=False),
                      sampling=dict(num_samples=n, max_new_tokens=24, seed=0))
  c.tune_repeats = _group("repeats.py", candidates=(1, 2, 3), samples_per_query=2)
  c.tune_dev = _group("repeats.py", candidates=(1, 2, 3))
  c.tune_joined = _group("repeats.py", candidates=(1, 2, 4))
  c.score = _group("score.py", rewards=("bm25_rank",), reward="bm25_rank", depth=100, batch_size=64)
  c.pairs = _group("pairs.py", strategy="best_worst", margin=0.0, max_pairs_per_doc=1,
                   rsft=dict(n_best=1, min_reward=-100.0))
  align = dict(batch_size=4, num_steps=4, eval_every=4, log_every=1, checkpoint=dict(every=4),
               data=dict(prompt_buckets=(64,), completion_buckets=(16,)))
  c.align = _group(f"{ALIGN[a.method]}:tiny,prompt=expansion", **align)
  c.align_rsft = _group("rsft.py:tiny,prompt=expansion", **align)
  c.evaluate = _group("evaluate.py:tiny", max_queries=0, depth=100, measures=measures)
  return c
