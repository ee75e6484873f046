"""Counts reads of config values with a hidden default: `<cfg>.get(...)` where <cfg> is a config
(a name `config`/`cfg`, an attribute chain rooted at one, or a local alias assigned from one).

  python tools/count_config_get_defaults.py $(git ls-files 'qgjax/*.py')    # hits on stdout, TOTAL on stderr

HF config.json / sentence-transformers dicts (models/decoder.py, bert.py, decoder_encoder.py) and
the override parser (qgjax/config.py) are not configs and are skipped. Calls on a call's result
(`_group(p, g).get(...)`) are not seen.
"""
import ast, sys, pathlib

ROOTS = {"config", "cfg", "conf", "c_cfg"}

def root_name(node):
  while isinstance(node, (ast.Attribute, ast.Subscript)):
    node = node.value
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
    return root_name(node.func.value)
  return node.id if isinstance(node, ast.Name) else None

def scan(path):
  tree = ast.parse(pathlib.Path(path).read_text())
  hits = []
  for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]:
    aliases = set(ROOTS)
    if not isinstance(fn, ast.Module):
      for a in fn.args.args + fn.args.kwonlyargs:
        if a.arg in ("optim", "ck_cfg", "rq", "sampling", "prompt_cfg", "index_cfg"):
          aliases.add(a.arg)
    changed = True
    body = list(ast.walk(fn))
    while changed:
      changed = False
      for n in body:
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Tuple) and isinstance(n.value, ast.Tuple):
          for t, v in zip(n.targets[0].elts, n.value.elts):
            if isinstance(t, ast.Name) and t.id not in aliases and root_name(v) in aliases:
              aliases.add(t.id); changed = True
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
          v = n.value
          if isinstance(v, ast.BoolOp):
            v = v.values[0]
          if root_name(v) in aliases and n.targets[0].id not in aliases and not isinstance(v, ast.Call) or (
              isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) and v.func.attr == "get" and root_name(v.func.value) in aliases and n.targets[0].id not in aliases):
            aliases.add(n.targets[0].id); changed = True
    for n in body:
      if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get" and root_name(n.func.value) in aliases:
        hits.append((n.lineno, ast.unparse(n)[:110]))
  return sorted(set(hits))

total = 0
# HF config.json / sentence-transformers JSON dicts (not ConfigDicts) and the override parser itself.
NOT_CONFIG = {"qgjax/models/decoder.py", "qgjax/models/bert.py", "qgjax/models/decoder_encoder.py", "qgjax/config.py"}
for p in sys.argv[1:]:
  if p in NOT_CONFIG:
    continue
  h = scan(p)
  for ln, s in h:
    print(f"{p}:{ln}: {s}")
  total += len(h)
print("TOTAL", total, file=sys.stderr)
