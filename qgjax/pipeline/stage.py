"""The pipeline's stages: which job each runs, from which config group, wired to which inputs.

A stage's ConfigDict = the group's config file (`<group>.config`, e.g. "score.py:tiny", relative
to `configs_dir`) + each group's `set` values + the wiring below (paths between stages, the
models, the collection), which always wins: a `set` value for a wired key is a ConfigError.
Every stage writes under `<workdir>/<stage name>/`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Callable

import ml_collections

from qgjax.config import _nearest, load_config_file
from qgjax.data.sharded_writer import is_complete
from qgjax.errors import ConfigError

ConfigDict = ml_collections.ConfigDict
Wiring = dict[str, Any]  # dotted stage-config key -> value


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  job: str                                   # qgjax.jobs.<job>.run(config)
  groups: tuple[str, ...]                    # pipeline config groups; the first names the config file
  needs: tuple[str, ...]                     # stages whose outputs this one reads
  wire: Callable[[Any, Callable[[str], str]], Wiring]  # (pipeline config, stage name -> dir) -> wiring
  complete: Callable[[pathlib.Path], bool]   # is the output in this stage dir whole?


def _data(p) -> str:
  from qgjax.data import demo_dir
  return os.path.abspath(p.data_dir) if p.data_dir else str(demo_dir())


def _file(rel: str) -> Callable[[pathlib.Path], bool]:
  return lambda d: (d / rel).is_file()


def _sharded(rel: str = "") -> Callable[[pathlib.Path], bool]:
  """A finished sharded output: the directory itself, or all its process-<i> parts (multi-host)."""
  def complete(d: pathlib.Path) -> bool:
    root = d / rel if rel else d
    if is_complete(root):
      return True
    parts = list(root.glob("process-*")) if root.is_dir() else []
    return bool(parts) and all(is_complete(p) for p in parts)
  return complete


def _export(d: pathlib.Path) -> bool:
  return (d / "export").is_dir() and any((d / "export").iterdir())


def _generate(model: Callable[[Any, Callable], str]):
  def wire(p, at):
    return {"model.name": model(p, at), "data.corpus": _data(p), "output_dir": at("self")}
  return wire


def _embeddings(at) -> str:
  """<workdir>/cache/embeddings: one corpus-embedding store per (corpus, model, max_len) that every
  score, mine and evaluate stage shares, so the base encoder encodes the corpus once per run."""
  return os.path.join(os.path.dirname(at("self")), "cache", "embeddings")


def _score(source: str):
  def wire(p, at):
    return {"input": at(source), "data_dir": _data(p), "workdir": at("self"), "split": p.split,
            "dense.model": p.encoder, "dense.cache_dir": _embeddings(at)}
  return wire


def _pairs(p, at):
  return {"input": os.path.join(at("score"), "scored"), "workdir": at("self")}


def _align(p, at):
  return {"data.train": os.path.join(at("pairs"), "pairs.jsonl"), "data.corpus": _data(p),
          "model.name": p.generator, "workdir": at("self"), "export.enabled": True,
          "export.dir": os.path.join(at("self"), "export"),
          "prompt": generate_prompt(p)}  # DPO must score the prompts the queries were sampled from


def _mine(source: str):
  def wire(p, at):
    return {"input": at(source), "data_dir": _data(p), "workdir": at("self"), "encoder.model": p.encoder,
            "encoder.cache_dir": _embeddings(at)}
  return wire


def _retriever(source: str):
  def wire(p, at):
    return {"data.train": os.path.join(at(source), "tuples"), "data.corpus": _data(p), "workdir": at("self"),
            "model.name": p.encoder, "export.enabled": True, "export.dir": os.path.join(at("self"), "export")}
  return wire


def _evaluate(retriever: str, model: Callable[[Any, Callable], str] | None):
  def wire(p, at):
    out = {"data_dir": _data(p), "split": p.split, "workdir": at("self"), "retriever": retriever,
           "dense.cache_dir": _embeddings(at)}
    if model is not None:
      out["dense.model"] = model(p, at)
    return out
  return wire


_base_generator = lambda p, at: p.generator
_aligned_generator = lambda p, at: os.path.join(at("align"), "export")
_encoder = lambda p, at: p.encoder
_trained = lambda stage: (lambda p, at: os.path.join(at(stage), "export"))
_FINAL = ("generate", "generate_final")

STAGES: tuple[Stage, ...] = (
    Stage("generate", "generate", ("generate",), (), _generate(_base_generator), _sharded()),
    Stage("score", "score", ("score",), ("generate",), _score("generate"), _sharded("scored")),
    Stage("pairs", "pairs", ("pairs",), ("score",), _pairs, _file("pairs.jsonl")),
    Stage("align", "train", ("align",), ("pairs",), _align, _export),
    Stage("generate_unaligned", "generate", _FINAL, (), _generate(_base_generator), _sharded()),
    Stage("generate_aligned", "generate", _FINAL, ("align",), _generate(_aligned_generator), _sharded()),
    Stage("score_unaligned", "score", ("score",), ("generate_unaligned",), _score("generate_unaligned"),
          _sharded("scored")),
    Stage("score_aligned", "score", ("score",), ("generate_aligned",), _score("generate_aligned"),
          _sharded("scored")),
    Stage("mine_unaligned", "mine", ("mine",), ("generate_unaligned",), _mine("generate_unaligned"),
          _sharded("tuples")),
    Stage("mine_aligned", "mine", ("mine",), ("generate_aligned",), _mine("generate_aligned"), _sharded("tuples")),
    Stage("retriever_unaligned", "train", ("retriever",), ("mine_unaligned",), _retriever("mine_unaligned"),
          _export),
    Stage("retriever_aligned", "train", ("retriever",), ("mine_aligned",), _retriever("mine_aligned"), _export),
    Stage("evaluate_bm25", "evaluate", ("evaluate",), (), _evaluate("bm25", None), _file("metrics.json")),
    Stage("evaluate_base", "evaluate", ("evaluate",), (), _evaluate("dense", _encoder), _file("metrics.json")),
    Stage("evaluate_unaligned", "evaluate", ("evaluate",), ("retriever_unaligned",),
          _evaluate("dense", _trained("retriever_unaligned")), _file("metrics.json")),
    Stage("evaluate_aligned", "evaluate", ("evaluate",), ("retriever_aligned",),
          _evaluate("dense", _trained("retriever_aligned")), _file("metrics.json")),
)


# ------------------------------------------------------------------------------------------------
# Building a stage's ConfigDict.

def _group(p, name: str) -> ConfigDict:
  if name not in p or not isinstance(p[name], ConfigDict):
    raise ConfigError(f"pipeline config needs a group '{name}' (with `config` and `set`)")
  return p[name]


def _config_spec(p, group: str) -> str:
  spec = _group(p, group).get("config", "")
  if not spec:
    raise ConfigError(f"pipeline config key '{group}.config' must name a config file, e.g. '{group}.py'")
  path, sep, arg = spec.partition(".py:")
  path = path if sep else spec
  if sep:
    path += ".py"
  if not os.path.isabs(path) and not os.path.isfile(path):
    path = os.path.join(p.configs_dir, path)
  return path + (":" + arg if sep else "")


def _assign(cfg: ConfigDict, dotted: str, value: Any, where: str) -> None:
  """cfg.<dotted> = value; the key must already exist in the stage's config file."""
  parts = dotted.split(".")
  node = cfg
  for i, part in enumerate(parts):
    if not isinstance(node, ConfigDict) or part not in node:
      valid = node.keys() if isinstance(node, ConfigDict) else []
      raise ConfigError(f"{where}: the stage config has no key '{'.'.join(parts[:i + 1])}'; "
                        f"{_nearest(part, valid)}")
    if i < len(parts) - 1:
      node = node[part]
  if isinstance(value, ConfigDict):
    value = ConfigDict(value.to_dict())
  elif isinstance(node[parts[-1]], (list, tuple)) and isinstance(value, (list, tuple)):
    value = type(node[parts[-1]])(value)
  try:
    with node.ignore_type():
      node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{where}: cannot set '{dotted}' to {value!r}: {e}") from None


def _leaves(node: ConfigDict, prefix: str = "") -> list[tuple[str, Any]]:
  out = []
  for key, value in node.items():
    dotted = f"{prefix}{key}"
    if isinstance(value, ConfigDict) and len(value):
      out += _leaves(value, dotted + ".")
    else:
      out.append((dotted, value))
  return out


def stage_config(p, stage: Stage, stage_dir: Callable[[str], str]) -> ConfigDict:
  """The ConfigDict that `qgjax.jobs.<stage.job>.run` gets for `stage`."""
  at = lambda name: stage_dir(stage.name if name == "self" else name)
  cfg = load_config_file(_config_spec(p, stage.groups[0]))
  wiring = stage.wire(p, at)
  for group in stage.groups:
    for dotted, value in _leaves(_group(p, group).get("set", ConfigDict())):
      where = f"pipeline key '{group}.set.{dotted}' (stage {stage.name})"
      if any(dotted == w or dotted.startswith(w + ".") or w.startswith(dotted + ".") for w in wiring):
        raise ConfigError(f"{where}: '{dotted}' is wired by the pipeline (paths, models, data); "
                          "set the pipeline's own key (workdir, data_dir, generator, encoder, split) instead")
      _assign(cfg, dotted, value, where)
  for dotted, value in wiring.items():
    _assign(cfg, dotted, value, f"stage {stage.name} ({stage.groups[0]}.config)")
  return cfg


def generate_prompt(p) -> ConfigDict:
  """The prompt group of the generate stage (its config file + `generate.set`)."""
  cfg = load_config_file(_config_spec(p, "generate"))
  for dotted, value in _leaves(_group(p, "generate").get("set", ConfigDict())):
    if dotted.startswith("prompt."):
      _assign(cfg, dotted, value, f"pipeline key 'generate.set.{dotted}'")
  return cfg.prompt
