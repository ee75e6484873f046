"""Every config file builds with each argument its docstring documents, and the code that reads a
config finds every key it reads there (the code reads `config.a.b`, no hidden `.get(key, default)`).

The keys read are found statically: attribute chains `config.a.b` (and `m.x` after `m = config.model`)
in the named functions, checked against the ConfigDict the config files build.
"""

from __future__ import annotations

import ast
import os
import re

import ml_collections
import pytest

from qgjax.config import build_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
CONFIG_FILES = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".py") and not f.startswith("_"))
# ConfigDict methods: an attribute chain ends where one is called
METHODS = {"get", "to_dict", "to_json", "to_json_best_effort", "update", "items", "keys", "values", "unlocked",
           "lock", "unlock", "copy_and_resolve_references", "is_locked", "ignore_type"}


def _parse_arg_defaults(path: str) -> dict:
  """The keyword defaults of the `parse_arg(arg, k=v, ...)` call in a config file."""
  tree = ast.parse(open(path).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "parse_arg":
      return {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  return {}


def documented_args(name: str) -> list[str]:
  """"" plus each bool argument, each `k=a|b|c` alternative, each combination of bool arguments
  (`tiny,decoder`) and each `configs/<name>:<arg>` command of the docstring."""
  path = os.path.join(CONFIGS, name)
  defaults = _parse_arg_defaults(path)
  doc = ast.get_docstring(ast.parse(open(path).read())) or ""
  args = [""] + [k for k, v in defaults.items() if isinstance(v, bool)]
  for key, alternatives in re.findall(r"\b(\w+)=((?:[\w.]+\|)+[\w.]+)", doc):
    if key in defaults:
      args += [f"{key}={v.rstrip('.')}" for v in alternatives.split("|") if re.fullmatch(r"\w[\w.]*", v)]
  flags = {k for k, v in defaults.items() if isinstance(v, bool)}
  args += [c for c in re.findall(r"\b\w+(?:,\w+)+\b", doc) if set(c.split(",")) <= flags]   # tiny,decoder
  args += re.findall(rf"configs/{re.escape(name)}:(\S+)", doc)
  return list(dict.fromkeys(args))


SPECS = [(name, arg) for name in CONFIG_FILES for arg in documented_args(name)]


@pytest.mark.parametrize("name,arg", SPECS, ids=[f"{n}:{a}" if a else n for n, a in SPECS])
def test_config_builds_with_documented_arg(name, arg):
  config = build_config(os.path.join(CONFIGS, name) + (f":{arg}" if arg else ""))
  assert isinstance(config, ml_collections.ConfigDict) and len(config.keys()) > 0


def test_documented_args_are_found():
  """The scan above sees the arguments the docstrings name (else the build test would test little)."""
  assert {"", "tiny", "mode=plain", "mode=contrastive", "mode=expansion"} <= set(documented_args("generate.py"))
  assert {"loss=ipo", "lora=false", "prompt=expansion"} <= set(documented_args("dpo.py"))
  assert {"tiny", "decoder", "tiny,decoder"} <= set(documented_args("readqg.py"))


def _spec(*names: str, args: tuple[str, ...] | None = None) -> list[str]:
  return [f"{n}:{a}" if a else n for n in names for a in (args if args is not None else documented_args(n))]


TRAIN = _spec("dpo.py", "rsft.py", "rsft_dpo.py", "readqg.py", "retriever.py", "cross_encoder.py")
LM = _spec("dpo.py", "rsft.py", "rsft_dpo.py")
DPO = _spec("dpo.py", "rsft_dpo.py")
READQG = _spec("readqg.py")
READQG_T5 = _spec("readqg.py", args=("", "tiny"))
READQG_DECODER = _spec("readqg.py", args=("decoder", "tiny,decoder"))

# (module, functions (None: all), {parameter: the config path it holds}, config specs that feed it)
READERS = [
    ("qgjax/train/optim.py", None, {"optim": "optim"}, TRAIN),
    ("qgjax/parallel/mesh.py", ["mesh_from_config"], {"config": ""}, TRAIN),
    ("qgjax/train/loop.py", None, {"config": ""}, TRAIN),
    ("qgjax/train/lm_tasks.py", ["_loader", "_prompts", "_inputs", "_fingerprint", "setup_sft"], {"config": ""}, LM),
    ("qgjax/train/lm_tasks.py", ["reference_logprobs", "setup_dpo", "run_rsft_dpo"], {"config": ""}, DPO),
    ("qgjax/train/lm_tasks.py", ["dpo_loss_fn"], {"dpo": "dpo"}, DPO),
    ("qgjax/train/generator.py", ["load_generator", "_load_t5"], {"config": ""},
     LM + _spec("retriever.py", args=("family=decoder", "tiny,family=decoder"))),
    ("qgjax/train/infonce.py", ["bert_retriever_model", "setup_retriever"], {"config": ""}, _spec("retriever.py")),
    ("qgjax/train/cross_encoder.py", ["setup_cross_encoder"], {"config": ""}, _spec("cross_encoder.py")),
    ("qgjax/methods/readqg/objective.py", ["readqg_objective"], {"rq": "readqg"}, READQG),
    ("qgjax/methods/readqg/objective.py", ["generator_kind"], {"m": "model"}, READQG),
    ("qgjax/methods/readqg/objective.py", ["train_texts", "loaders", "fingerprint"], {"config": ""}, READQG),
    ("qgjax/methods/readqg/t5.py", ["_load_t5", "setup_readqg_t5"], {"config": ""}, READQG_T5),
    ("qgjax/methods/readqg/decoder.py", ["setup_readqg_decoder"], {"config": ""}, READQG_DECODER),
    ("qgjax/methods/readqg/generate.py", None, {"config": ""}, _spec("readqg_generate.py")),
    ("qgjax/jobs/generate.py", None, {"config": ""}, _spec("generate.py") + _spec("demo.py")),
    ("qgjax/jobs/evaluate.py", None, {"config": ""}, _spec("evaluate.py")),
    ("qgjax/jobs/mine.py", None, {"config": ""}, _spec("mine.py")),
]


def _chain(node: ast.AST) -> tuple[str, list[str]] | None:
  """`a.b.c` -> ("a", ["b", "c"]); None when the chain does not start at a plain name."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  return (node.id, parts[::-1]) if isinstance(node, ast.Name) else None


def keys_read(module: str, functions: list[str] | None, roots: dict[str, str]) -> set[tuple[str, ...]]:
  """Config paths read as attributes in `functions` of `module` (aliases `x = config.a` followed)."""
  tree = ast.parse(open(os.path.join(REPO, module)).read())
  fns = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and (functions is None or n.name in functions)]
  assert functions is None or {f.name for f in fns} >= set(functions), f"{module}: missing {functions}"
  out = set()
  for fn in fns:
    alias = {name: tuple(p for p in path.split(".") if p) for name, path in roots.items()}
    for node in ast.walk(fn):   # x = config.a / x, y = config.a, config.b
      if isinstance(node, ast.Assign) and len(node.targets) == 1:
        pairs = ([(node.targets[0], node.value)] if not isinstance(node.targets[0], ast.Tuple) else
                 list(zip(node.targets[0].elts, getattr(node.value, "elts", []))))
        for target, value in pairs:
          c = _chain(value) if isinstance(target, ast.Name) else None
          if c and c[0] in alias and not set(c[1]) & METHODS:
            alias[target.id] = alias[c[0]] + tuple(c[1])
    for node in ast.walk(fn):
      if isinstance(node, ast.Attribute):   # inner nodes give prefixes of the same path: harmless
        c = _chain(node)
        if c and c[0] in alias:
          path = list(alias[c[0]])
          for part in c[1]:
            if part in METHODS:
              break
            path.append(part)
          out.add(tuple(path))
  return out


def _missing(config: ml_collections.ConfigDict, path: tuple[str, ...]) -> str | None:
  node = config
  for i, part in enumerate(path):
    if not isinstance(node, ml_collections.ConfigDict):
      return None          # a value's own attribute (str.endswith, ...): the key itself exists
    if part not in node:
      return ".".join(path[: i + 1])
    node = node[part]
  return None


@pytest.mark.parametrize("module,functions,roots,specs", READERS, ids=[f"{r[0]}:{(r[1] or ['*'])[0]}" for r in READERS])
def test_code_reads_only_declared_keys(module, functions, roots, specs):
  paths = keys_read(module, functions, roots)
  assert paths, f"no config reads found in {module} {functions}"
  for spec in specs:
    config = build_config(os.path.join(CONFIGS, spec))
    missing = sorted({m for p in paths if (m := _missing(config, p))})
    assert not missing, f"{module} reads {missing}, which {spec} does not declare"


def test_key_scan_sees_a_missing_key():
  """The scan is not vacuous: a config without `seed` fails it for a module that reads config.seed."""
  paths = keys_read("qgjax/train/cross_encoder.py", ["setup_cross_encoder"], {"config": ""})
  assert ("seed",) in paths and ("model", "new_head") in paths and ("data", "bucket_window") in paths
  config = build_config(os.path.join(CONFIGS, "cross_encoder.py"))
  del config["seed"]
  assert _missing(config, ("seed",)) == "seed"
