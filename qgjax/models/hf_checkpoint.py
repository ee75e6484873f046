"""Reading and writing HF-layout safetensors checkpoints, and checking them against a model.

Shared by every model family: a family module maps HF tensor names to its Flax parameter
paths (and back); this module does the file I/O and the strict fit check.

  read_safetensors_dir(dir)          -> {hf_name: np.ndarray}   (sharded index supported)
  safetensors_files(dir)             -> the checkpoint's .safetensors files (index entries kept inside dir)
  write_safetensors_dir(t, dir, cfg) -> writes model.safetensors (+ index when sharded) and config.json
  save_tokenizer(tokenizer, dir)     -> tokenizer files, without how this process loaded it
  check_fit(expected, got, source)   -> raises CheckpointMismatchError listing every problem
  flatten_tree / unflatten_tree      -> nested dict <-> {"a/b/c": leaf}
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from qgjax.errors import CheckpointMismatchError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


# tokenizer_config.json keys transformers records about the load itself (a local dir, offline
# mode), not about the tokenizer: an export must not depend on them
LOAD_CONTEXT_KEYS = ("is_local", "local_files_only")


def save_tokenizer(tokenizer: Any, out_dir: str) -> None:
  """`tokenizer.save_pretrained(out_dir)` with LOAD_CONTEXT_KEYS left out of tokenizer_config.json,
  so the same tokenizer exports the same bytes however it was loaded (HF_HUB_OFFLINE or not, from
  a checkpoint dir or a GGUF file)."""
  tokenizer.save_pretrained(out_dir)
  path = os.path.join(out_dir, "tokenizer_config.json")
  if not os.path.isfile(path):
    return
  with open(path, encoding="utf-8") as f:
    cfg = json.load(f)
  if any(k in cfg for k in LOAD_CONTEXT_KEYS):
    with open(path, "w", encoding="utf-8") as f:
      json.dump({k: v for k, v in cfg.items() if k not in LOAD_CONTEXT_KEYS}, f, indent=2, ensure_ascii=False)
      f.write("\n")


def _to_numpy(x: Any) -> np.ndarray:
  return np.asarray(x)


def safetensors_files(path: str) -> list[str]:
  """The .safetensors files of an HF checkpoint directory (index, single file or every *.safetensors),
  or [path] for a single file; index entries must stay inside the directory."""
  if os.path.isfile(path):
    return [path]
  if os.path.isfile(os.path.join(path, SAFE_INDEX)):
    with open(os.path.join(path, SAFE_INDEX)) as f:
      index = json.load(f)
    from qgjax.data.safe_files import join_inside
    index_path = os.path.join(path, SAFE_INDEX)
    return [str(join_inside(path, name, source=index_path, follow_links=False))
            for name in sorted(set(index["weight_map"].values()))]
  if os.path.isfile(os.path.join(path, SAFE_SINGLE)):
    return [os.path.join(path, SAFE_SINGLE)]
  candidates = sorted(f for f in os.listdir(path) if f.endswith(".safetensors")) if os.path.isdir(path) else []
  if not candidates:
    raise CheckpointMismatchError(
        f"no safetensors checkpoint in {path} (expected {SAFE_SINGLE} or {SAFE_INDEX})")
  return [os.path.join(path, f) for f in candidates]


def read_safetensors_dir(path: str) -> dict[str, np.ndarray]:
  """Reads every tensor of an HF checkpoint directory (or a single .safetensors file).

  bf16 tensors come back as numpy arrays of `ml_dtypes.bfloat16`.
  """
  from safetensors import safe_open

  out: dict[str, np.ndarray] = {}
  for file in safetensors_files(path):
    # framework="flax" reads bf16 too; numpy would refuse it.
    with safe_open(file, framework="flax") as f:
      for name in f.keys():
        out[name] = _to_numpy(f.get_tensor(name))
  return out


def write_safetensors_dir(tensors: Mapping[str, Any], path: str, config: Mapping[str, Any] | None = None,
                          *, max_shard_bytes: int = 2 * 1024**3, metadata: Mapping[str, str] | None = None) -> None:
  """Writes tensors as HF safetensors (sharded with an index above `max_shard_bytes`) + config.json."""
  from safetensors.numpy import save_file

  os.makedirs(path, exist_ok=True)
  arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
  meta = {"format": "pt", **(metadata or {})}
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name in sorted(arrays):
    nbytes = arrays[name].nbytes
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = arrays[name]
    size += nbytes
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, SAFE_SINGLE), metadata=meta)
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, os.path.join(path, fname), metadata=meta)
      weight_map.update({k: fname for k in shard})
    total = sum(a.nbytes for a in arrays.values())
    with open(os.path.join(path, SAFE_INDEX), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  if config is not None:
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump(dict(config), f, indent=2)


def check_fit(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, Any], source: str,
              *, ignore_extra: tuple[str, ...] = ()) -> None:
  """Raises CheckpointMismatchError unless `got` has exactly the `expected` names and shapes.

  `expected`/`got` are keyed by the same (HF) names; `ignore_extra` lists substrings of names
  that may be present and unused (e.g. "rotary_emb.inv_freq", "position_ids").
  """
  missing = sorted(set(expected) - set(got))
  extra = sorted(n for n in set(got) - set(expected) if not any(s in n for s in ignore_extra))
  wrong = sorted(
      f"{n}: checkpoint {tuple(np.shape(got[n]))} vs model {tuple(expected[n])}"
      for n in set(expected) & set(got) if tuple(np.shape(got[n])) != tuple(expected[n]))
  if missing or extra or wrong:
    parts = [f"checkpoint {source} does not match the model config:"]
    for title, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
      if items:
        shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
        parts.append(f"  {title} ({len(items)}): " + ", ".join(shown))
    raise CheckpointMismatchError("\n".join(parts))


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": x}} -> {"a/b": x}."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten_tree(v, key))
    else:
      out[key] = v
  return out


def unflatten_tree(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{"a/b": x} -> {"a": {"b": x}}."""
  out: dict[str, Any] = {}
  for key, v in flat.items():
    node = out
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out
