"""The README's first command: queries for the shipped demo corpus, on CPU, in a few minutes.

  qgjax generate --config configs/demo.py

SmolLM2-135M-Instruct (offline GGUF), prompted with three worked examples (few-shot chat
turns), writes 3 queries for each of the 52 documents of qgjax/data/demo (sampled at
temperature 0.7, top-k 20, one line each), drops empty, copied and
duplicate ones, writes them to runs/demo/queries (sharded JSONL, resumable: rerun the command
after a kill) and prints a few. The same job at corpus scale: configs/generate.py.
"""

from __future__ import annotations


def get_config(arg=None):
  import importlib.util
  import os

  spec = importlib.util.spec_from_file_location("qgjax_config_generate",
                                                os.path.join(os.path.dirname(os.path.abspath(__file__)), "generate.py"))
  generate = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(generate)
  c = generate.get_config(arg)
  c.sampling.num_samples = 3
  c.sampling.max_new_tokens = 24
  c.sampling.temperature = 0.7
  c.sampling.top_k = 20
  c.sampling.top_p = 1.0
  c.buckets = (448,)
  c.prompt.max_doc_tokens = 150
  c.batch_size = 16
  c.output_dir = "runs/demo/queries"
  c.print_examples = 8
  return c
