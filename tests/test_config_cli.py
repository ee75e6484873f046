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
  assert cli.main(["--help"]) == 0
  out, err = capsys.readouterr()
  assert err == "" and all(stage in out for stage in cli.STAGES)
  assert cli.parse_args(["-h"]).help == out.rstrip("\n")


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


# ---------------------------------------------------------------------------------------------
# Command-line conventions and logging (qgjax.cli, qgjax.log).

import logging
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code_or_args, env=None, timeout=300):
  """Runs `python -c code` (str) or `python -m qgjax.cli args` (list) in a clean environment."""
  clean = {k: v for k, v in os.environ.items()
           if k not in ("QGJAX_LOG_LEVEL", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "TRANSFORMERS_VERBOSITY")}
  argv = ["-c", code_or_args] if isinstance(code_or_args, str) else ["-m", "qgjax.cli", *code_or_args]
  return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO,
                        env={**clean, "JAX_PLATFORMS": "cpu", **(env or {})}, timeout=timeout)


def test_help_goes_to_stdout_and_exits_0_no_arguments_exit_2():
  top = _python(["--help"])
  assert top.returncode == 0 and top.stderr == "", top.stderr
  assert top.stdout.startswith("usage: qgjax") and all(stage in top.stdout for stage in cli.STAGES)
  bare = _python([])
  assert bare.returncode == 2 and bare.stdout == "" and bare.stderr.startswith("usage: qgjax")
  bad = _python(["evaluate", "--config", "configs/evaluate.py", "--config.bm25.bakend=x"])
  assert bad.returncode == 2 and bad.stdout == ""
  assert bad.stderr == "qgjax: error: unknown config key 'bm25.bakend'; did you mean 'backend'?\n"


def test_every_stage_help_exits_0(capsys):
  for stage, (module, desc) in cli.STAGES.items():
    assert cli.main([stage, "--help"]) == 0, stage
    out, err = capsys.readouterr()
    assert out.startswith(f"qgjax {stage}: {desc}\n\n") and len(out) > len(desc) + 100 and err == "", stage
  assert cli.main(["-v", "help"]) == 0 and "usage: qgjax" in capsys.readouterr().out
  assert cli.main(["-v"]) == 2 and capsys.readouterr().err.startswith("usage: qgjax")


def test_print_config_prints_and_runs_nothing(tmp_path, capsys):
  out_dir = tmp_path / "never"
  rc = cli.main(["generate", "--config", os.path.join(REPO, "configs", "demo.py"), "--print-config",
                 f"--config.output_dir={out_dir}", "--config.sampling.num_samples=7"])
  out, err = capsys.readouterr()
  assert rc == 0 and err == ""
  assert f"output_dir: {out_dir}" in out and "num_samples: 7" in out
  assert '"records"' not in out and '"out_dir"' not in out  # no job result
  assert not out_dir.exists() and not list(tmp_path.iterdir())


def test_log_level_from_verbose_and_environment(tmp_path, monkeypatch, capsys):
  path = _write(tmp_path, CONFIG)
  qgjax_log = logging.getLogger("qgjax")
  monkeypatch.delenv("QGJAX_LOG_LEVEL", raising=False)
  assert cli.main(["evaluate", "--config", path, "--print-config"]) == 0 and qgjax_log.level == logging.INFO
  assert cli.main(["-v", "evaluate", "--config", path, "--print-config"]) == 0
  assert qgjax_log.level == logging.DEBUG
  assert cli.main(["evaluate", "--config", path, "--print-config", "--verbose"]) == 0
  assert qgjax_log.level == logging.DEBUG
  for value, level in (("warning", logging.WARNING), ("ERROR", logging.ERROR), ("15", 15), ("debug", logging.DEBUG)):
    monkeypatch.setenv("QGJAX_LOG_LEVEL", value)
    assert cli.main(["evaluate", "--config", path, "--print-config"]) == 0 and qgjax_log.level == level, value
  monkeypatch.setenv("QGJAX_LOG_LEVEL", "warning")
  assert cli.main(["-v", "evaluate", "--config", path, "--print-config"]) == 0 and qgjax_log.level == logging.DEBUG
  capsys.readouterr()
  monkeypatch.setenv("QGJAX_LOG_LEVEL", "loud")
  assert cli.main(["evaluate", "--config", path, "--print-config"]) == 2
  assert "qgjax: error: QGJAX_LOG_LEVEL='loud' is not a log level" in capsys.readouterr().err
  assert sum(isinstance(h, logging.StreamHandler) for h in qgjax_log.handlers) == 1  # one handler however often


def test_a_module_record_reaches_stderr_in_the_compact_format():
  code = """if 1:
    import logging, ml_collections, sys
    from qgjax.log import resolve_level, setup_logging
    setup_logging(resolve_level("-v" in sys.argv))
    from qgjax.train.optim import make_schedule
    make_schedule(ml_collections.ConfigDict({"lr": 1e-3, "warmup_steps": 10, "schedule": "constant",
                                            "end_lr_ratio": 0.0}), 1)
    logging.getLogger("qgjax.jobs.mine").info("index: exact search")
    logging.getLogger("qgjax.jobs.mine").debug("details")
    logging.getLogger("qgjax.cli").error("bad")
    logging.getLogger("absl").warning("noise from absl")
  """
  r = _python(code)
  assert r.returncode == 0 and r.stdout == "", r.stderr
  assert r.stderr.splitlines() == [
      "qgjax train: warning: optim.warmup_steps=10 >= the run's 1 steps; using 0 warmup steps so the "
      "learning rate reaches optim.lr=0.001",
      "qgjax mine: index: exact search",
      "qgjax: error: bad"]
  quiet = _python(code, env={"QGJAX_LOG_LEVEL": "error"})
  assert quiet.stderr.splitlines() == ["qgjax: error: bad"]
  verbose = _python(code.replace('"-v" in sys.argv', "True"))
  assert verbose.stderr.splitlines()[1:3] == ["qgjax mine: index: exact search", "qgjax mine: details"]
  assert "noise from absl" in verbose.stderr


def test_transformers_without_torch_gives_no_advice_under_qgjax():
  """transformers logs "PyTorch was not found..." at import when torch is missing (simulated here
  by a None in sys.modules, which its find_spec check reads as not installed)."""
  code = """if 1:
    import sys
    sys.modules["torch"] = None
    if sys.argv[1:] == ["qgjax"]:
      from qgjax.log import setup_logging
      setup_logging()
    import transformers
    assert not transformers.utils.is_torch_available()
  """
  plain = _python(code + "\n", timeout=300)
  assert plain.returncode == 0 and "PyTorch was not found" in plain.stderr, plain.stderr[-2000:]  # the control
  quiet = subprocess.run([sys.executable, "-c", code, "qgjax"], capture_output=True, text=True, cwd=REPO,
                         env={k: v for k, v in os.environ.items() if not k.startswith("TRANSFORMERS_")},
                         timeout=300)
  assert quiet.returncode == 0 and "PyTorch" not in quiet.stderr, quiet.stderr[-2000:]


def test_area_names():
  from qgjax.log import area_of

  assert [area_of(n) for n in ("qgjax", "qgjax.cli", "qgjax.jobs.mine", "qgjax.pipeline.runner",
                               "qgjax.methods.aqe.expansion", "qgjax.train.optim", "qgjax.retrieval")] == \
      ["", "", "mine", "pipeline", "aqe", "train", "retrieval"]
