r"""Training / test queries of a collection as a derived BEIR directory (what a recipe learns from).

  qgjax pipeline --config configs/aqe.py:tiny      # runs this as its `split` stage

Writes <workdir>/data: corpus.jsonl (a symlink to the collection's; a copy without them when some
documents have neither title nor text, which the corpus reader refuses: Cranfield has two;
their ids go to split.json `dropped_empty_documents`, their qrels stay), queries_train.jsonl,
queries_test.jsonl, qrels/train.tsv, qrels/test.tsv (every grade of the chosen queries kept), and
<workdir>/split.json. `how`:
  auto      the collection's own `train_split` queries (qrels/<train_split>.tsv) when it has them,
            else `hash`
  splits    must have them (an error otherwise)
  hash      the judged `test_split` queries cut in two disjoint parts by a seeded hash of the
            query id: hash(seed, id) < test_fraction -> test, else train
Queries without a relevant (grade >= 1) document left in the corpus are dropped from both sides
(counted in split.json `dropped_no_relevant`): no reward can rank them and no metric counts them.
Then at most `max_train` / `max_test` queries of each side are kept (0 = all), the ones with the
smallest seeded hashes, so a smaller run is a subset of a larger one. `dev_queries` = N > 0 first sets
the N training queries with the largest hashes apart as a `dev` split (queries_dev.jsonl,
qrels/dev.tsv) that no training stage reads (AQE tunes each generator's query weight on it), so
with max_train <= (training queries - N) the training queries are the same as without it.
On P processes process 0 alone writes the directory; the others wait at the pipeline's barrier
after the stage (every later stage reads the files it wrote). The collection and the workdir may be
gs:// URLs (qgjax.data.storage): objects have no links, so there the corpus is always copied.
"""

from __future__ import annotations

import json
import os

from qgjax.config import require
from qgjax.data import storage
from qgjax.data.beir import Corpus, load_qrels, load_queries, queries_path
from qgjax.data.safe_files import write_json_atomic
from qgjax.errors import ConfigError, InputError
from qgjax.sampling.keys import id_hash


def _unit(seed: int, qid: str) -> float:
  return id_hash(f"{seed}:{qid}") / 2**32


def _judged(root: storage.AnyPath, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
  qrels_file = root / "qrels" / f"{split}.tsv"
  if not qrels_file.is_file():
    raise InputError(f"no qrels for split '{split}'", path=str(qrels_file))
  queries = load_queries(queries_path(root, split))
  qrels = load_qrels(qrels_file)
  return {q: t for q, t in queries.items() if q in qrels}, qrels


def _keep(qids: list[str], seed: int, limit: int) -> list[str]:
  qids = sorted(qids, key=lambda q: (_unit(seed + 1, q), q))
  return qids[:limit] if limit else qids


def _write(out: storage.AnyPath, name: str, qids: list[str], queries: dict[str, str],
           qrels: dict[str, dict[str, int]]) -> int:
  """queries_<name>.jsonl and qrels/<name>.tsv of `qids` (each written atomically) -> qrels rows."""
  storage.write_bytes_atomic(out / f"queries_{name}.jsonl", "".join(
      json.dumps({"_id": q, "text": queries[q]}, ensure_ascii=False) + "\n" for q in qids).encode("utf-8"))
  rows = ["query-id\tcorpus-id\tscore\n"] + [f"{q}\t{d}\t{g}\n" for q in qids for d, g in qrels[q].items()]
  storage.write_bytes_atomic(out / "qrels" / f"{name}.tsv", "".join(rows).encode("utf-8"))
  return len(rows) - 1


def _link_corpus(src: storage.AnyPath, dst: storage.AnyPath) -> list[str]:
  """dst -> src as a symlink, or a copy of src without its empty documents -> their ids.

  On gs:// (either side) always a copy: an object cannot link to another, a local link to a bucket."""
  empty, empty_lines = [], set()
  with src.open(encoding="utf-8") as f:
    for i, line in enumerate(f):
      try:
        obj = json.loads(line) if line.strip() else {}
      except json.JSONDecodeError:
        continue   # the corpus reader names the bad line when a stage reads it
      if isinstance(obj, dict) and obj and not str(obj.get("text", "")).strip() and not str(obj.get("title", "")).strip():
        empty.append(str(obj.get("_id", "")))
        empty_lines.add(i)
  remote = storage.is_remote(src) or storage.is_remote(dst)
  if not remote and (dst.is_symlink() or dst.exists()):
    dst.unlink()
  if not empty and not remote:
    os.symlink(src, dst)
    return []
  if remote:   # one upload of the kept lines (the whole corpus when none is empty)
    with src.open(encoding="utf-8") as f:
      kept = "".join(line for i, line in enumerate(f) if i not in empty_lines)
    storage.write_bytes_atomic(dst, kept.encode("utf-8"))
    return empty
  tmp = dst.with_suffix(".jsonl.tmp")
  with open(src, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as out:
    out.writelines(line for i, line in enumerate(f) if i not in empty_lines)   # other lines as they are
  os.replace(tmp, dst)
  return empty


def run(config) -> dict:
  from qgjax.data import demo_dir
  from qgjax.parallel.distributed import is_main_process

  require(config, "workdir", "how", "train_split", "test_split")
  if not is_main_process():
    return {"data_dir": str(storage.as_path(config.workdir) / "data"), "written_by": "process 0"}
  root = storage.as_path(storage.resolved(config.data_dir or demo_dir()))
  if not (root / "corpus.jsonl").is_file():
    raise InputError("corpus.jsonl not found (a BEIR directory)", path=str(root))
  seed, how = int(config.seed), config.how
  if how not in ("auto", "splits", "hash"):
    raise ConfigError(f"split.how must be auto, splits or hash; got {how!r}")
  has_train = (root / "qrels" / f"{config.train_split}.tsv").is_file()
  if how == "splits" and not has_train:
    raise InputError(f"split.how=splits but the collection has no '{config.train_split}' qrels",
                     path=str(root / "qrels"))
  test_q, test_rels = _judged(root, config.test_split)
  if how == "hash" or (how == "auto" and not has_train):
    frac = float(config.test_fraction)
    if not 0.0 < frac < 1.0:
      raise ConfigError(f"split.test_fraction must be in (0, 1); got {frac}")
    used = "hash"
    test_ids = [q for q in test_q if _unit(seed, q) < frac]
    train_ids = [q for q in test_q if _unit(seed, q) >= frac]
    train_q, train_rels = test_q, test_rels
  else:
    used = "splits"
    train_q, train_rels = _judged(root, config.train_split)
    train_ids, test_ids = list(train_q), list(test_q)
    clash = set(train_ids) & set(test_ids)
    if clash:
      raise InputError(f"{len(clash)} query ids are in both the '{config.train_split}' and "
                       f"'{config.test_split}' qrels (e.g. {sorted(clash)[:3]})", path=str(root / "qrels"))
  out = storage.as_path(config.workdir) / "data"
  if not storage.is_remote(out):   # gs:// has no directories to create
    (out / "qrels").mkdir(parents=True, exist_ok=True)
  empty = _link_corpus(root / "corpus.jsonl", out / "corpus.jsonl")
  corpus = Corpus(out / "corpus.jsonl")

  def answerable(ids: list[str], rels: dict[str, dict[str, int]]) -> list[str]:
    return [q for q in ids if any(g >= 1 and d in corpus for d, g in rels[q].items())]

  n_train, n_test = len(train_ids), len(test_ids)
  train_ids, test_ids = answerable(train_ids, train_rels), answerable(test_ids, test_rels)
  no_relevant = {"train": n_train - len(train_ids), "test": n_test - len(test_ids)}
  n_dev = int(config.dev_queries)
  if n_dev < 0:
    raise ConfigError(f"split.dev_queries must be >= 0; got {n_dev}")
  ordered = _keep(train_ids, seed, 0)
  dev_ids = ordered[max(len(ordered) - n_dev, 0):] if n_dev else []
  train_ids = _keep(ordered[:len(ordered) - len(dev_ids)], seed, int(config.max_train))
  test_ids = _keep(test_ids, seed, int(config.max_test))
  if not train_ids or not test_ids or len(dev_ids) < n_dev:
    raise InputError(f"the split leaves {len(train_ids)} training, {len(test_ids)} test and {len(dev_ids)} dev "
                     f"queries with a relevant document (dev_queries={n_dev}); training and test need at least one",
                     path=str(root))
  summary = {"data_dir": str(out), "source": str(root), "how": used, "seed": seed, "dropped_empty_documents": empty,
             "dropped_no_relevant": no_relevant, "train_queries": len(train_ids), "test_queries": len(test_ids),
             "train_qrels": _write(out, "train", train_ids, train_q, train_rels),
             "test_qrels": _write(out, "test", test_ids, test_q, test_rels)}
  if dev_ids:
    summary.update(dev_queries=len(dev_ids), dev_qrels=_write(out, "dev", dev_ids, train_q, train_rels))
  write_json_atomic(storage.as_path(config.workdir) / "split.json", summary, sort_keys=False)
  return summary
