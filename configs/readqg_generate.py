r"""ReadQG generation: r=1 and r=0 queries per document from a ReadQG export (qgjax.methods.readqg.generate).

  qgjax pipeline --config configs/readqg_recipe.py:tiny        # the recipe's generate stage
  --config.generate.set.sampling.num_beams=3                   # beam search, as the ReadQG paper

Arguments: tiny (short outputs, small buckets), decoder (a decoder-only export, e.g. SmolLM2:
buckets of document + separator tokens, stop at a newline).
"""

from __future__ import annotations

import ml_collections

from qgjax.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  from qgjax.sampling.postprocess import default_postprocess_config

  a = parse_arg(arg, tiny=False, decoder=False)
  c = ml_collections.ConfigDict()
  # name: a ReadQG export directory; dtype / attention_impl: auto (bf16 + cuDNN on a GPU) | float32 | ...
  c.model = ml_collections.ConfigDict(dict(name="", dtype="auto", attention_impl="auto"))
  c.data = ml_collections.ConfigDict(dict(corpus="", limit=0))
  c.relevances = (1.0, 0.0)      # the positive relevance first; ce_pairs joins them
  c.postprocess = default_postprocess_config()
  c.sampling = ml_collections.ConfigDict(dict(
      num_samples=1, max_new_tokens=32, temperature=1.0, top_k=50, top_p=0.95, num_beams=1,
      length_penalty=1.0, early_stopping=False, stop_at_eos=True, stop_at_newline=False, seed=0))
  c.buckets = (128, 256, 320)    # input lengths (T5: document + EOS; decoder: document + separator; + the soft prompt)
  c.batch_size = 16
  c.num_devices = 0
  c.shard_size = 10_000
  c.log_every_s = 10.0           # seconds between progress lines
  c.output_dir = "runs/readqg_generate"
  if a.tiny:
    c.sampling.max_new_tokens = 8
    c.buckets = (96,)
    c.batch_size = 8
  if a.decoder:
    c.sampling.stop_at_newline = True
    if not a.tiny:
      c.buckets = (128, 200)
  return c
