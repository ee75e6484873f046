"""A sentence-transformers directory's module layout (modules.json), for every encoder family.

  layout = read_st_layout(path, supported=("mean", "cls"), default_pooling="mean")
  # {"transformer_dir", "pooling", "normalize", "max_seq_length", "do_lower_case", "prompts"}

A plain HF directory (no modules.json) is its own transformer with `default_pooling` and no
normalisation. Module types other than Transformer, Pooling and Normalize are refused.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from qgjax.errors import ConfigError

# 1_Pooling/config.json's legacy booleans -> mode names (the newer files say `pooling_mode`)
LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                       "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def pooling_from_st(cfg: Mapping[str, Any], path: str, supported: Sequence[str]) -> str:
  """1_Pooling/config.json (legacy `pooling_mode_*` booleans or the newer `pooling_mode`) -> the
  one mode it sets; a ConfigError naming `path` when it is not one of `supported`."""
  if "pooling_mode" in cfg:
    modes = cfg["pooling_mode"]
    modes = [modes] if isinstance(modes, str) else list(modes)
  else:
    modes = [m for k, m in LEGACY_POOLING_KEYS.items() if cfg.get(k)] or ["mean"]
  if len(modes) != 1 or modes[0] not in supported:
    raise ConfigError(f"{path}: pooling {modes} is not supported; supported: one of {', '.join(supported)}")
  return modes[0]


def read_st_layout(path: str, supported: Sequence[str], default_pooling: str | None) -> dict[str, Any]:
  """The layout of the sentence-transformers (or plain HF) directory `path`; see the module docstring.
  `pooling` is `default_pooling` when the directory has no Pooling module."""
  layout = {"transformer_dir": path, "pooling": default_pooling, "normalize": False, "max_seq_length": None,
            "do_lower_case": False, "prompts": {}}
  modules_file = os.path.join(path, "modules.json")
  if not os.path.isfile(modules_file):
    return layout
  for mod in _read_json(modules_file):
    kind = mod.get("type", "").rsplit(".", 1)[-1]
    mod_dir = os.path.join(path, mod.get("path", ""))
    if kind == "Transformer":
      layout["transformer_dir"] = mod_dir
      st_cfg = os.path.join(mod_dir, "sentence_bert_config.json")
      if os.path.isfile(st_cfg):
        c = _read_json(st_cfg)
        layout["max_seq_length"] = c.get("max_seq_length")
        layout["do_lower_case"] = bool(c.get("do_lower_case", False))
    elif kind == "Pooling":
      layout["pooling"] = pooling_from_st(_read_json(os.path.join(mod_dir, "config.json")), mod_dir, supported)
    elif kind == "Normalize":
      layout["normalize"] = True
    else:
      raise ConfigError(f"{modules_file}: sentence-transformers module {mod.get('type')!r} is not supported "
                        "(supported: Transformer, Pooling, Normalize)")
  st_file = os.path.join(path, "config_sentence_transformers.json")
  if os.path.isfile(st_file):
    layout["prompts"] = dict(_read_json(st_file).get("prompts") or {})
  return layout


def pooling_config(dim: int, mode: str, modes: Sequence[str]) -> dict[str, Any]:
  """1_Pooling/config.json in the legacy boolean form (every sentence-transformers release reads
  it; 2.x reads only it): one `pooling_mode_*` key per name in `modes`, `mode`'s set."""
  keys = {m: k for k, m in LEGACY_POOLING_KEYS.items()}
  return {"word_embedding_dimension": dim, **{keys[m]: m == mode for m in modes}}


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)


def write_st_modules(out_dir: str, pooling: dict[str, Any], normalize: bool, max_seq_length: int) -> None:
  """modules.json (Transformer at the top level, Pooling, Normalize if `normalize`),
  1_Pooling/config.json (`pooling`, see pooling_config) and sentence_bert_config.json in `out_dir`,
  beside the transformer's own files."""
  modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
  if normalize:
    modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    os.makedirs(os.path.join(out_dir, "2_Normalize"), exist_ok=True)
  os.makedirs(os.path.join(out_dir, "1_Pooling"), exist_ok=True)
  _write_json(os.path.join(out_dir, "modules.json"), modules)
  _write_json(os.path.join(out_dir, "1_Pooling", "config.json"), pooling)
  _write_json(os.path.join(out_dir, "sentence_bert_config.json"),
              {"max_seq_length": int(max_seq_length), "do_lower_case": False})
