r"""The whole DPO-aligned query-generation recipe, end to end, each stage cached and resumable.

  qgjax pipeline --config configs/pipeline.py                                   # NFCorpus, SmolLM2, MiniLM
  qgjax pipeline --config configs/pipeline.py --config.workdir=runs/pipeline/nfc \
      --config.generate.set.data.limit=500 --config.align.set.num_epochs=2
  qgjax pipeline --config configs/pipeline.py:tiny                              # demo corpus, CPU-sized
  qgjax pipeline --config configs/pipeline.py:tiny --config.generator=<tiny HF decoder dir>
  qgjax pipeline --config configs/pipeline.py --config.generate.config=generate.py:mode=contrastive,n=5 \
      --config.align.config=dpo.py:prompt=contrastive --config.contrastive.negatives=bm25 --config.contrastive.sft=True

Stages (outputs in <workdir>/<stage>/, see qgjax.recipes.dpo_qg): [negatives (contrastive.negatives:
each document's mined nearest other document for the contrastive prompt); triples + sft
(contrastive.sft: SFT on (document, hard negative, training query) triples); reward_model (the score group
uses the cross_encoder reward without a model: a MiniLM cross-encoder trained from training qrels)]
generate (n queries/doc with `generator`) -> score -> pairs -> align (DPO) -> generate_unaligned /
generate_aligned (1 query/doc, base and aligned generator, same sampling) -> score_* -> mine_* ->
retriever_* (MiniLM InfoNCE; equal_budget: retriever_aligned_equal on as many aligned tuples as there are
unaligned ones) -> evaluate_bm25 / _base / _unaligned / _aligned (/ _aligned_equal) on the collection's
`split` queries + qrels -> <workdir>/report (report.md, report.json, report.png). Training sees the
corpus only (and, for reward_model, the collection's training qrels).

Each stage group X below has `config` (a file in configs/ with its `:arg`) and `set` (values put
into that file's ConfigDict, e.g. --config.score.set.rewards=bm25_rank,dense_rank); paths, models
and inputs between stages are wired by the pipeline. `generate_final.set` is applied on top of the
generate group for the 1-query/doc stages (real variant: `generate_final.set.data.offset/limit` pick
their documents, e.g. held out from alignment).
Arguments: tiny (the demo corpus, 4 samples/doc, 4 DPO and 4 retriever steps: ~10 min on 2 CPU
cores with SmolLM2 and MiniLM, ~1.5 min with tiny random models as `generator` and `encoder`,
as tests/test_pipeline.py runs it), generator=<name or path>.
"""

from __future__ import annotations

import os

import ml_collections

from qgjax.config import parse_arg

ConfigDict = ml_collections.ConfigDict


def _group(spec: str, **values) -> ConfigDict:
  return ConfigDict({"config": spec, "set": ConfigDict(values)})


def get_config(arg: str | None = None) -> ConfigDict:
  a = parse_arg(arg, tiny=False, generator="")
  c = ConfigDict()
  c.recipe = "dpo_qg"                   # qgjax.recipes: dpo_qg | aqe | readqg
  c.configs_dir = os.path.dirname(os.path.abspath(__file__))  # where the stage config files live
  c.workdir = "runs/pipeline/tiny" if a.tiny else "runs/pipeline/nfcorpus"
  c.data_dir = "" if a.tiny else "../shared/data/nfcorpus"   # BEIR dir; "" = the shipped demo corpus
  c.split = "test"                      # evaluation queries + qrels/<split>.tsv (never used in training)
  c.generator = a.generator or "smollm2-135m-instruct"
  c.encoder = "all-minilm-l6-v2"
  # the retriever trained on each generator's queries: "" = `encoder`; a decoder LM (e.g.
  # smollm2-135m-instruct with --config.retriever.config=retriever.py:family=decoder) trains the
  # decoder-only bi-encoder of qgjax.models.decoder_encoder while `encoder` still scores and mines
  c.retriever_model = ""
  # a third retriever on the aligned queries cut to as many tuples as the unaligned ones (a seeded subset):
  # aligned vs unaligned at the same training budget (retriever_aligned_equal, evaluate_aligned_equal)
  c.equal_budget = not a.tiny
  c.report = ConfigDict(dict(bins=30))
  c.until = ""   # a stage name: stop after it (no report), e.g. "generate" for the pool alone
  # the paper's contrastive prompt (needs generate's prompt mode "contrastive"): negatives = random |
  # bm25 | dense (each document's mined nearest other document); sft = first fine-tune the generator on
  # (document, mined hard negative, training query) triples of the collection's train split
  c.contrastive = ConfigDict(dict(negatives="random", sft=False))
  c.negatives = _group("negatives.py:source=documents")
  c.triples = _group("negatives.py:source=queries", split="train")
  # the cross_encoder reward's model when score.set.cross_encoder.model is empty: trained first from the
  # collection's qrels/<data.qrels_split>.tsv (the `reward_model` stage; the demo has no train split)
  c.reward_model = _group("cross_encoder.py:tiny,qrels" if a.tiny else "cross_encoder.py:qrels",
                          data=dict(qrels_split="train"))
  if not a.tiny:
    c.generate = _group("generate.py:mode=few_shot,n=5", batch_size=16, data=dict(limit=0),
                        sampling=dict(num_samples=5, seed=0))
    # Which documents get the final 1 query/doc (retriever training, aligned-vs-unaligned rewards):
    # all by default; data.offset = the alignment's data.limit keeps the alignment documents out.
    c.generate_final = ConfigDict({"set": ConfigDict(dict(sampling=dict(num_samples=1),
                                                          data=dict(offset=0, limit=0)))})
    c.score = _group("score.py", rewards=("bm25_rank", "dense_rank"), reward="bm25_rank")
    c.pairs = _group("pairs.py", margin=0.0, max_pairs_per_doc=4)
    c.align = _group("dpo.py:prompt=few_shot", num_epochs=1.0, batch_size=16)
    c.sft = _group("rsft.py:prompt=contrastive", num_epochs=1.0, batch_size=16)
    c.mine = _group("mine.py")
    c.retriever = _group("retriever.py", num_epochs=1.0, batch_size=64)
    c.evaluate = _group("evaluate.py", measures=("nDCG@10", "RR@100", "R@100", "R@1000"))
    return c

  # tiny: every stage on the 52-document demo corpus, CPU-sized.
  c.generate = _group("generate.py:mode=plain,tiny", batch_size=8, buckets=(192,), log_every_s=0.0,
                      print_examples=0, data=dict(limit=0), prompt=dict(max_doc_tokens=64),
                      postprocess=dict(drop_copied=False),
                      sampling=dict(num_samples=4, max_new_tokens=8, seed=0, stop_at_newline=False))
  c.generate_final = ConfigDict({"set": ConfigDict(dict(sampling=dict(num_samples=1)))})
  c.score = _group("score.py", rewards=("bm25_rank",), reward="bm25_rank", depth=100, batch_size=64)
  c.pairs = _group("pairs.py", margin=0.0, max_pairs_per_doc=2)
  c.align = _group("dpo.py:tiny,prompt=plain", batch_size=8, num_steps=4, eval_every=4, log_every=1,
                   checkpoint=dict(every=4), data=dict(prompt_buckets=(192,), completion_buckets=(16,)))
  c.sft = _group("rsft.py:tiny,prompt=contrastive", batch_size=8, num_steps=4, eval_every=4, log_every=1,
                 checkpoint=dict(every=4), data=dict(prompt_buckets=(192,), completion_buckets=(16,)))
  c.mine = _group("mine.py:tiny")
  c.retriever = _group("retriever.py:tiny", batch_size=8, num_steps=4, checkpoint=dict(every=4))
  c.evaluate = _group("evaluate.py:tiny", max_queries=0, depth=100, measures=("nDCG@10", "RR@100", "R@100"))
  return c
