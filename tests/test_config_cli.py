import pytest

from qgjax import cli
from qgjax.config import apply_override, build_config, parse_arg
from qgjax.errors import ConfigError, QgjaxError
import ml_collections


def _write(tmp_path, body):
  p = tmp_path / "job.py"
  p.write_text(body)
  return str(p)


CONFIG = '''
from qgjax.config import parse_arg
import ml_collections
def get_config(arg=None):
  a = parse_arg(arg, tiny=False, n=5)
  c = ml_collections.ConfigDict()
  c.batch_size = 8 if a.tiny else 64
  c.n = a.n
  c.lr = 1e-4
  c.model = ml_collections.ConfigDict({"name": "smollm2-135m-instruct", "dtype": "float32"})
  c.flag = True
  c.shape = (1, 2)
  return c
'''


def test_file_arg_and_overrides(tmp_path):
  path = _write(tmp_path, CONFIG)
  c = build_config(f"{path}:tiny,n=3", [("lr", "0.5"), ("model.dtype", "bfloat16"),
                                         ("flag", "false"), ("shape", "[4,5]")])
  assert c.batch_size == 8 and c.n == 3 and c.lr == 0.5
  assert c.model.dtype == "bfloat16" and c.flag is False and c.shape == (4, 5)


def test_misspelt_key_names_nearest(tmp_path):
  path = _write(tmp_path, CONFIG)
  with pytest.raises(ConfigError, match=r"unknown config key 'batch_sise'; did you mean 'batch_size'"):
    build_config(path, [("batch_sise", "3")])
  with pytest.raises(ConfigError, match=r"'model.nmae'; did you mean 'name'"):
    build_config(path, [("model.nmae", "x")])
  with pytest.raises(ConfigError, match=r"unknown config argument 'tinny'; did you mean 'tiny'"):
    build_config(f"{path}:tinny", [])


def test_bad_value_type(tmp_path):
  path = _write(tmp_path, CONFIG)
  with pytest.raises(ConfigError, match="'n' is an int"):
    build_config(path, [("n", "five")])


def test_cli_help_lists_stages(capsys):
  with pytest.raises(SystemExit) as e:
    cli.parse_args(["--help"])
  for stage in cli.STAGES:
    assert stage in str(e.value)


def test_cli_unknown_stage_and_key(tmp_path, capsys):
  with pytest.raises(QgjaxError, match="did you mean 'generate'"):
    cli.parse_args(["generat", "--config", "x.py"])
  path = _write(tmp_path, CONFIG)
  rc = cli.main(["evaluate", "--config", path, "--config.batch_sise=3"])
  assert rc == 2
  assert "did you mean 'batch_size'" in capsys.readouterr().err


def test_every_config_file_loads_and_names_its_command():
  import pathlib
  root = pathlib.Path(__file__).resolve().parents[1] / "configs"
  files = sorted(root.glob("*.py"))
  for f in files:
    c = build_config(str(f))
    assert isinstance(c, ml_collections.ConfigDict)
    import ast
    doc = ast.get_docstring(ast.parse(f.read_text())) or ""
    assert "qgjax " in doc, f"{f.name}: docstring must hold the exact command that runs it"


def test_pipeline_stage_set_takes_any_key_of_the_stage_config():
  """`<stage>.set.<key>` is checked against the stage's own config file, not only what `set` lists."""
  import os
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = os.path.join(repo, "configs", "pipeline.py:tiny")
  c = build_config(spec, [("generate.set.sampling.temperature", "0.7"), ("generate.set.sampling.top_k", "5")])
  assert c.generate.set.sampling.temperature == 0.7 and c.generate.set.sampling.top_k == 5   # float / int, coerced
  assert c.generate.set.sampling.num_samples == build_config(spec).generate.set.sampling.num_samples   # kept
  with pytest.raises(ConfigError, match=r"generate.set.sampling.temprature: .*did you mean 'temperature'\? "
                                        r"\(in generate.py\)"):
    build_config(spec, [("generate.set.sampling.temprature", "0.7")])
  with pytest.raises(ConfigError, match=r"generate.set.sampling.top_k: config key 'sampling.top_k' is an int"):
    build_config(spec, [("generate.set.sampling.top_k", "many")])
