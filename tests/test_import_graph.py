"""The package's layering holds: no import cycle, no import from a higher layer, no import of
another module's `_private` names (tools/import_graph.py reads the source with `ast`)."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
  spec = importlib.util.spec_from_file_location("import_graph", os.path.join(REPO, "tools", "import_graph.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_no_cycles_upward_or_private_imports(capsys):
  assert _tool().main([]) == 0, capsys.readouterr().out


def test_the_checker_finds_a_cycle_an_upward_and_a_private_import(tmp_path):
  g = _tool()
  pkg = tmp_path / "qgjax"
  for sub in ("data", "jobs"):
    (pkg / sub).mkdir(parents=True)
    (pkg / sub / "__init__.py").write_text("")
  (pkg / "__init__.py").write_text("")
  (pkg / "data" / "a.py").write_text("from qgjax.jobs.b import run\n_x = 1\n")
  (pkg / "jobs" / "b.py").write_text("from qgjax.data.a import _x\ndef run():\n  from qgjax.data import a\n")
  mods = g.modules(tmp_path)
  edges = g.edges(mods)
  assert g.cycles(mods, edges) == [["qgjax.data.a", "qgjax.jobs.b"]]
  assert g.main(["--root", str(tmp_path)]) == 1
  assert g.layer_of("qgjax.data.a") < g.layer_of("qgjax.jobs.b")
