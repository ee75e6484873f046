"""A pipeline stage: the job it runs, its config group, what it reads, and when its output is whole.

  Stage("score", "qgjax.jobs.score", groups=("score",), needs=("generate",),
        wire=lambda p, at: {"input": at("generate"), "workdir": at("self")},
        complete=has_sharded("scored"))

`job` is a module with `run(config) -> dict`; `wire(pipeline_config, at)` returns the stage
config keys the recipe sets (`at(name)` is stage `name`'s directory, `at("self")` this stage's);
`complete(stage_dir)` says whether the output there is whole; `when(pipeline_config)` whether the
recipe runs the stage at all with these settings (e.g. a first RSFT stage only for
method=rsft_then_dpo). Every stage writes under `<workdir>/<stage name>/`. Recipes build their
stage lists from these pieces only.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

from qgjax.data import storage
from qgjax.data.sharded_writer import is_complete
from qgjax.train.export import is_complete_export

Wiring = dict[str, Any]  # dotted stage-config key -> value
At = Callable[[str], str]  # stage name ("self": this stage) -> its directory


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  job: str                                   # module path of the job: <job>.run(config) -> dict
  groups: tuple[str, ...]                    # pipeline config groups; the first names the config file
  needs: tuple[str, ...]                     # stages whose outputs this one reads (when they run)
  wire: Callable[[Any, At], Wiring]          # (pipeline config, at) -> wiring
  complete: Callable[[pathlib.Path], bool]   # is the output in this stage dir whole?
  when: Callable[[Any], bool] = lambda p: True   # does the recipe run this stage with config p?

  @property
  def intermediate(self) -> bool:
    """Whether the output is a trained model (`has_export`): once every stage that reads it has finished,
    its files may be deleted (a workdir carried to another machine without its checkpoints) and the
    runner trains it again only for a stage still to run that reads it (qgjax.pipeline.runner)."""
    return bool(getattr(self.complete, "model_export", False))


def data_dir(p) -> str:
  """The pipeline's collection: `data_dir` made absolute, or the embedded demo corpus."""
  from qgjax.data import demo_dir
  return storage.absolute(p.data_dir) if p.data_dir else str(demo_dir())


def has_file(rel: str) -> Callable[[pathlib.Path], bool]:
  """Complete when `<stage dir>/<rel>` is a file (jobs write such files atomically, last)."""
  return lambda d: (d / rel).is_file()


def has_sharded(rel: str = "") -> Callable[[pathlib.Path], bool]:
  """A finished sharded output: the directory itself, or all its process-<i> parts (multi-host)."""
  def complete(d: pathlib.Path) -> bool:
    root = d / rel if rel else d
    if is_complete(root):
      return True
    parts = list(root.glob("process-*")) if root.is_dir() else []
    return bool(parts) and all(is_complete(p) for p in parts)
  return complete


def has_export(rel: str = "export") -> Callable[[pathlib.Path], bool]:
  """A finished model export in `<stage dir>/<rel>`: its marker, written last, is there
  (`qgjax.train.export`); a directory left by a kill in the middle of the export is not done."""
  def complete(d: pathlib.Path) -> bool:
    return is_complete_export(d / rel)
  complete.model_export = True   # Stage.intermediate
  return complete


def depends_on(stage: Stage, name: str, stages: dict[str, Stage]) -> bool:
  """Whether `stage` reads, directly or through other stages, what stage `name` wrote."""
  todo, seen = list(stage.needs), set()
  while todo:
    n = todo.pop()
    if n == name:
      return True
    if n not in seen and n in stages:
      seen.add(n)
      todo += list(stages[n].needs)
  return False
