"""n queries per document of a BEIR corpus with SmolLM2-135M-Instruct (or expansions per query).

  qgjax generate --config configs/generate.py --config.data.corpus=../shared/data/nfcorpus --config.output_dir=runs/nfcorpus/queries
  qgjax generate --config configs/generate.py:mode=plain --config.data.corpus=../shared/data/nfcorpus
  qgjax generate --config configs/generate.py:mode=contrastive --config.data.corpus=../shared/data/nfcorpus
  qgjax generate --config configs/generate.py:mode=expansion --config.data.queries=../shared/data/nfcorpus/queries.jsonl

Arguments: mode=few_shot (default: worked examples as earlier chat turns, what a 135M model
needs to answer with a bare query)|plain|contrastive|expansion, n=<samples per input>,
tiny (a few documents of the demo corpus, short outputs: a smoke test).
Beam search (ReadQG): --config.sampling.num_beams=3 --config.sampling.num_samples=1.
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg


def get_config(arg=None):
  from qgjax.sampling.postprocess import default_postprocess_config
  from qgjax.sampling.prompts import default_prompt_config
  from qgjax.data import demo_dir

  a = parse_arg(arg, mode="few_shot", n=5, tiny=False)
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      name="smollm2-135m-instruct",   # a registry name, an HF directory or a .gguf file
      kind="auto",                    # auto | decoder | t5
      dtype="auto",                   # auto: bfloat16 on a GPU/TPU, float32 on a CPU | float32 | bfloat16
      attention_impl="auto",          # auto: cuDNN's fused kernel on a GPU in bf16, else XLA | xla | cudnn
      scan_layers=True))
  c.data = ml_collections.ConfigDict(dict(
      corpus=str(demo_dir()),         # a BEIR directory or a corpus.jsonl
      queries="",                     # expansion mode: a queries.jsonl (default: the corpus dir's)
      split="test",
      offset=0,                       # skip the first N inputs (e.g. documents kept out of training)
      limit=0))                       # then N inputs only (0 = all)
  c.prompt = default_prompt_config(a.mode)
  c.postprocess = default_postprocess_config()
  c.sampling = ml_collections.ConfigDict(dict(
      num_samples=a.n, max_new_tokens=32, temperature=1.0, top_k=50, top_p=0.95,
      num_beams=1, length_penalty=1.0, early_stopping=False,
      stop_at_eos=True, stop_at_newline=True, seed=0))
  if a.mode == "expansion":
    c.sampling.max_new_tokens = 96
    c.sampling.stop_at_newline = False
    c.postprocess.cut_at_newline = False
  # Prompt lengths are padded up to one of these sizes: one compiled program per bucket, and each
  # bucket a job uses ends with a partial batch. Few-shot prompts of NFCorpus run 336-511 tokens (90%
  # at 502-511: documents cut at prompt.max_doc_tokens), expansions 75-96: one bucket each; plain
  # ones 69-244, nearly all in 256 (docs/benchmarks.md, bench_jobs).
  c.buckets = (128, 256, 512)
  # Prompts per step (x num_samples rows); a multiple of the devices. On a 2-core CPU, few-shot
  # prompts at 512 ran as fast in batches of 16 as of 64 (docs/benchmarks.md, bench_jobs); try 64
  # on an accelerator, where more rows fill the decode matmuls.
  c.batch_size = 16
  # Prefill the tokens every prompt starts with (chat opening, system turn, few-shot examples,
  # instruction: 312 of a few-shot prompt's ~500) once per batch instead of once per prompt
  c.share_prompt_prefix = True
  c.num_devices = 0                 # 0 = every local device
  # This process's devices: ("data", -1) replicates the model; add ("tensor", 4) or ("fsdp", 4)
  # to shard a model too big for one device (read straight onto the mesh, no host copy).
  c.mesh = [("data", -1)]
  c.sharding_rules = []             # (logical axis, mesh axes) pairs before qgjax.parallel.sharding.DEFAULT_RULES
  c.output_dir = f"runs/generate/{a.mode}"
  c.shard_size = 10_000
  c.log_every_s = 10.0
  c.print_examples = 0
  if a.tiny:
    c.data.limit = 4
    c.batch_size = 4
    c.sampling.num_samples = min(a.n, 2)
    c.sampling.max_new_tokens = 8
    c.output_dir = f"runs/generate/{a.mode}_tiny"
    c.print_examples = 4
  return c
