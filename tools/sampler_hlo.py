"""The sampler's compiled programs on a tiny random decoder, normalised, for A/B checks of a refactor.

  PYTHONPATH=/tmp/qg_before python tools/sampler_hlo.py /tmp/hlo_old.txt   # a worktree at the old commit
  python tools/sampler_hlo.py /tmp/hlo_new.txt
  cmp /tmp/hlo_old.txt /tmp/hlo_new.txt && echo same programs

Two programs of `Sampler.for_decoder` (shared prompt): top-k sampling with a chunked prefill,
and beam search. Each is lowered and compiled for the local backend; the optimized HLO is
reduced to its instructions with names, metadata and called-computation names blanked, then
sorted, so two builds compare equal exactly when XLA emits the same operations on the same
shapes (the same work, whatever the Python that traced it).
"""

from __future__ import annotations

import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def normalised(hlo: str) -> list[str]:
  out = []
  for line in hlo.splitlines():
    if not re.match(r"\s*(ROOT |ENTRY )?%[\w.\-]+ (= |\()", line):
      continue
    line = re.sub(r", metadata=\{[^}]*\}", "", line)
    line = re.sub(r"%[\w.\-]+", "%x", line)
    line = re.sub(r"(calls|to_apply|body|condition|branch_computations)=\{?[^,}]*\}?", r"\1=?", line)
    out.append(line.strip())
  return sorted(out)


def main(out_path: str):
  import qgjax
  from qgjax.models.decoder import DecoderConfig, DecoderLM
  from qgjax.sampling.engine import Sampler, local_data_mesh
  from qgjax.sampling.logits import SamplingParams

  print("qgjax from", qgjax.__file__, file=sys.stderr)
  cfg = DecoderConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4,
                      num_kv_heads=2, head_dim=16, attention_bias=True, max_position_embeddings=128, pad_token_id=0)
  model = DecoderLM(cfg)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.zeros((1, 4), jnp.int32))["params"])
  runs = [(SamplingParams(max_new_tokens=12, num_samples=3, temperature=1.0, top_k=20, eos_token_ids=(), pad_token_id=0), 32),
          (SamplingParams(max_new_tokens=8, num_samples=2, num_beams=3, temperature=0.0, eos_token_ids=(7,),
                          pad_token_id=0), 0)]
  lines = []
  for sampling, chunk_tokens in runs:
    s = Sampler.for_decoder(model, params, sampling, batch_size=8, seed=1, mesh=local_data_mesh(1),
                            prefill_chunk_tokens=chunk_tokens)
    lowered = s._jitted.lower(s.params, np.zeros((8, 32), np.int32), np.ones((8, 32), bool),
                              np.zeros((8,), np.uint32), np.uint32(1))
    lines += normalised(lowered.compile().as_text()) + ["----"]
  with open(out_path, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"{len(lines)} instructions -> {out_path}", file=sys.stderr)


if __name__ == "__main__":
  main(sys.argv[1])
