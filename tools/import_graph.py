"""qgjax's internal import graph: cycles, upward imports across layers, and imports of `_private` names.

  python tools/import_graph.py                    # summary + every offending edge; exit 1 if any
  python tools/import_graph.py --json             # the same as JSON
  python tools/import_graph.py --root /tmp/old    # another checkout (e.g. a `git worktree` of an old commit)

Reads the source with `ast` (nothing is imported), counting every `import` / `from ... import`
of a qgjax module, at module level or inside a function. Layers, lowest first (a module may
import its own layer or lower ones):

  0 base        qgjax.errors, qgjax.config, qgjax.log, qgjax.host_allocator, qgjax.paths
  1 data        qgjax.data, qgjax.parallel (readers and writers; mesh, sharding rules, multi-host)
  2 models      qgjax.models (Flax modules and loaders that place parameters onto the mesh)
  3 retrieval   qgjax.retrieval
  4 kernels     qgjax.sampling, qgjax.rewards, qgjax.evaluation, qgjax.preference
  5 train       qgjax.train
  6 methods     qgjax.methods (method-specific models, losses and jobs)
  7 jobs        qgjax.jobs (one stage each: run(config))
  8 pipeline    qgjax.pipeline (the engine)
  9 recipes     qgjax.recipes
  10 cli        qgjax.cli, qgjax.__main__
"""

from __future__ import annotations

import ast
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAYERS = [
    ("base", ("qgjax.errors", "qgjax.config", "qgjax.log", "qgjax.host_allocator", "qgjax.paths", "qgjax")),
    ("data", ("qgjax.data", "qgjax.parallel")),
    ("models", ("qgjax.models",)),
    ("retrieval", ("qgjax.retrieval",)),
    ("kernels", ("qgjax.sampling", "qgjax.rewards", "qgjax.evaluation", "qgjax.preference")),
    ("train", ("qgjax.train",)),
    ("methods", ("qgjax.methods",)),
    ("jobs", ("qgjax.jobs",)),
    ("pipeline", ("qgjax.pipeline",)),
    ("recipes", ("qgjax.recipes",)),
    ("cli", ("qgjax.cli", "qgjax.__main__")),
]


def layer_of(module: str) -> int:
  best, best_len = 0, -1
  for i, (_, prefixes) in enumerate(LAYERS):
    for p in prefixes:
      if (module == p or module.startswith(p + ".")) and len(p) > best_len:
        best, best_len = i, len(p)
  return best


def modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted((root / "qgjax").rglob("*.py")):
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def edges(mods: dict[str, pathlib.Path]):
  """-> [(importer, imported module, [names], top_level: bool, line)]."""
  out = []
  for name, path in mods.items():
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        for a in node.names:
          if a.name.startswith("qgjax"):
            out.append((name, a.name, [], id(node) in top, node.lineno))
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
          base = ".".join(anchor + ([base] if base else []))
        if not base.startswith("qgjax"):
          continue
        for a in node.names:
          sub = f"{base}.{a.name}"
          if sub in mods:   # `from qgjax.jobs import pipeline`: the module itself
            out.append((name, sub, [], id(node) in top, node.lineno))
          else:
            out.append((name, base, [a.name], id(node) in top, node.lineno))
  return out


def cycles(mods, es) -> list[list[str]]:
  """Strongly connected components (size > 1) of the module graph, all imports counted."""
  graph = {m: set() for m in mods}
  for a, b, _, _, _ in es:
    if b in graph and a != b:
      graph[a].add(b)
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  sys.setrecursionlimit(10000)
  for v in graph:
    if v not in index:
      visit(v)
  return out


def main(argv: list[str]) -> int:
  root = pathlib.Path(argv[argv.index("--root") + 1]).resolve() if "--root" in argv else ROOT
  mods = modules(root)
  es = edges(mods)
  upward = sorted({(a, b, n) for a, b, _, _, n in
                   ((a, b, names, top, line) for a, b, names, top, line in es)
                   if layer_of(b) > layer_of(a)})
  private = sorted({(a, b, name) for a, b, names, _, _ in es for name in names
                    if name.startswith("_") and not name.startswith("__") and b != a
                    and not a.startswith(b + ".") and b.rpartition(".")[0] != a.rpartition(".")[0]})
  private_any = sorted({(a, b, name) for a, b, names, _, _ in es for name in names
                        if name.startswith("_") and not name.startswith("__") and b != a})
  cyc = cycles(mods, es)
  result = {"modules": len(mods), "imports": len(es), "cycles": cyc,
            "upward": [{"importer": a, "imported": b, "line": n,
                        "from": LAYERS[layer_of(a)][0], "to": LAYERS[layer_of(b)][0]} for a, b, n in upward],
            "private_imports": [{"importer": a, "module": b, "name": n} for a, b, n in private_any]}
  if "--json" in argv:
    print(json.dumps(result, indent=1))
  else:
    print(f"{len(mods)} modules, {len(es)} qgjax imports")
    print(f"cycles: {len(cyc)}")
    for c in cyc:
      print("  " + " <-> ".join(c))
    print(f"upward imports: {len(upward)}")
    for a, b, n in upward:
      print(f"  {a}:{n} -> {b}  ({LAYERS[layer_of(a)][0]} -> {LAYERS[layer_of(b)][0]})")
    print(f"imports of another module's _private names: {len(private_any)}")
    for a, b, n in private_any:
      print(f"  {a} <- {b}.{n}")
  return 1 if (cyc or upward or private_any) else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
