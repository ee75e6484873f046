"""AQE's query weight chosen on training queries (qgjax.methods.aqe.repeats): its measure per repeat
count against BM25 + ir_measures computed here, the choice, and how score / evaluate read it."""

import json
import pathlib

import ml_collections
import pytest

from qgjax import cli
from qgjax.data import demo_dir
from qgjax.data.beir import Corpus, load_qrels
from qgjax.data.sharded_writer import iter_sharded
from qgjax.errors import ConfigError, InputError
from qgjax.methods.aqe import repeats
from qgjax.retrieval.bm25 import build_bm25, default_bm25_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
QUERY = {"q10": "what causes earthquakes along faults", "q24": "how do cells produce energy from glucose"}
ROWS = [  # out of sample order on purpose; q24 has no query text (read from queries.jsonl)
    {"query_id": "q10", "sample_idx": 1, "query": QUERY["q10"], "expansion": "volcano lava glacier iceland ash"},
    {"query_id": "q10", "sample_idx": 0, "query": QUERY["q10"],
     "expansion": "tectonic plates slip and release seismic waves"},
    {"query_id": "q10", "sample_idx": 2, "query": QUERY["q10"], "expansion": "never read: samples_per_query=2"},
    {"query_id": "q24", "sample_idx": 0, "expansion": "mitochondria whale songs coral reef bleaching migration "
                                                      "birds honeybees pollinate crops volcano"},
    {"query_id": "q24", "sample_idx": 1, "expansion": "glycolysis atp mitochondria respiration"}]


def _config(tmp_path, src, **over):
  c = ml_collections.ConfigDict(dict(input=str(src), data_dir=str(demo_dir()), split="test",
                                     workdir=str(tmp_path / "tune"), candidates=(4, 1, 2), samples_per_query=2,
                                     measure="nDCG@10", depth=100, bm25=default_bm25_config()))
  c.update(over)
  return c


@pytest.fixture
def expansions(tmp_path):
  src = tmp_path / "expansions.jsonl"
  src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
  return src


def test_measure_per_repeat_count_matches_bm25_and_ir_measures(tmp_path, expansions):
  ir_measures = pytest.importorskip("ir_measures")
  result = repeats.run(_config(tmp_path, expansions))
  assert json.loads((tmp_path / "tune" / "repeats.json").read_text())["query_repeats"] == result["query_repeats"]

  bm25 = build_bm25(Corpus(demo_dir() / "corpus.jsonl"))
  qrels = load_qrels(demo_dir() / "qrels" / "test.tsv")
  first_two = {"q10": [r["expansion"] for r in ROWS[1::-1]], "q24": [r["expansion"] for r in ROWS[3:5]]}

  def ndcg(texts: dict) -> float:   # texts: query id -> its search texts; mean over a query's texts, then queries
    keys = [(q, i) for q in texts for i in range(len(texts[q]))]
    run = bm25.search([texts[q][i] for q, i in keys], k=100).as_run([f"{q}#{i}" for q, i in keys])
    per = {m.query_id: m.value for m in ir_measures.iter_calc(
        [ir_measures.nDCG @ 10], {f"{q}#{i}": qrels[q] for q, i in keys}, run)}
    return sum(sum(per[f"{q}#{i}"] for i in range(len(texts[q]))) / len(texts[q]) for q in texts) / len(texts)

  want = {k: ndcg({q: [" ".join([QUERY[q]] * k + [e]) for e in first_two[q]] for q in QUERY}) for k in (1, 2, 4)}
  assert result["by_repeats"] == {str(k): pytest.approx(want[k], abs=1e-6) for k in (1, 2, 4)}
  assert result["query_only"] == pytest.approx(ndcg({q: [QUERY[q]] for q in QUERY}), abs=1e-6)
  best = max((1, 2, 4), key=lambda k: (round(want[k], 6), -k))   # ties: the fewer repeats
  assert result["query_repeats"] == best
  assert result["candidates"] == [1, 2, 4] and result["queries"] == 2 and result["samples_per_query"] == 2
  # the off-topic q24 expansion drags one repeat down: more weight on the query helps here
  assert want[1] < want[4]


def test_score_and_evaluate_read_the_chosen_count(tmp_path, expansions):
  chosen = tmp_path / "repeats.json"
  chosen.write_text(json.dumps({"query_repeats": 3}))
  greedy = tmp_path / "one.jsonl"   # one expansion per query, as evaluate takes them
  greedy.write_text("".join(json.dumps(r) + "\n" for r in ROWS if r["sample_idx"] == 0))
  ways = {"file": f"--config.aqe.query_repeats_file={chosen}", "int": "--config.aqe.query_repeats=3",
          "one": "--config.aqe.query_repeats=1"}
  for name, how in ways.items():
    assert cli.main(["score", "--config", f"{CONFIGS / 'score.py'}:tiny", f"--config.workdir={tmp_path / name}",
                     "--config.rewards=bm25_rank", f"--config.input={expansions}", how]) == 0
    assert cli.main(["evaluate", "--config", f"{CONFIGS / 'evaluate.py'}:tiny", "--config.retriever=aqe", "--config.max_queries=0",
                     f"--config.workdir={tmp_path / ('ev-' + name)}", f"--config.aqe.input={greedy}", how]) == 0
  ranks = {n: [r["ranks"] for r in iter_sharded(tmp_path / n / "scored")] for n in ways}
  runs = {n: (tmp_path / f"ev-{n}" / "run.aqe.trec").read_text() for n in ways}
  assert ranks["file"] == ranks["int"]   # (the demo's gold documents rank first either way)
  settings = {n: json.loads((tmp_path / n / "scored" / "manifest.json").read_text())["meta"]["settings"]["aqe"]
              for n in ways}
  assert settings == {"file": {"query_repeats": 3}, "int": {"query_repeats": 3}, "one": {"query_repeats": 1}}
  assert runs["file"] == runs["int"] != runs["one"]


def test_resolve_query_repeats_errors(tmp_path):
  assert repeats.resolve_query_repeats({"query_repeats": 2, "query_repeats_file": ""}) == 2
  missing = tmp_path / "nope.json"
  with pytest.raises(InputError, match="nope.json.*tune_repeats"):
    repeats.resolve_query_repeats({"query_repeats": 1, "query_repeats_file": str(missing)})
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"query_repeats": 0}))
  with pytest.raises(ConfigError, match="bad.json gives 0"):
    repeats.resolve_query_repeats({"query_repeats": 1, "query_repeats_file": str(bad)})
  bad.write_text("[1]")
  with pytest.raises(InputError, match="bad.json"):
    repeats.resolve_query_repeats({"query_repeats": 1, "query_repeats_file": str(bad)})


def test_bad_inputs_name_what_and_where(tmp_path, expansions):
  with pytest.raises(ConfigError, match="candidates"):
    repeats.run(_config(tmp_path, expansions, candidates=(0, 2)))
  with pytest.raises(InputError, match="not judged in qrels/test.tsv"):
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"query_id": "nope", "sample_idx": 0, "query": "x", "expansion": "y"}) + "\n")
    repeats.run(_config(tmp_path, other))
  broken = tmp_path / "broken.jsonl"
  broken.write_text(json.dumps({"query_id": "q10", "expansion": "y"}) + "\n")
  with pytest.raises(InputError, match="sample_idx"):
    repeats.run(_config(tmp_path, broken))


def test_joined_samples_search_a_querys_first_samples_as_one_expansion(tmp_path, expansions):
  """join_samples (repeats.joined_expansions; tools/aqe_by_k.py --join; evaluate's aqe.join_samples): a
  query's first n samples (sample order) joined by one space, then searched like one sample: equal to
  tuning on a file of those joined texts written here by hand."""
  import sys
  sys.path.insert(0, str(CONFIGS.parent / "tools"))
  import aqe_by_k
  from qgjax.methods.aqe.expansion import load_expansions

  q10 = ROWS[1]["expansion"] + " " + ROWS[0]["expansion"]
  q24 = ROWS[3]["expansion"] + " " + ROWS[4]["expansion"]
  assert repeats.joined_expansions(str(expansions), 2) == {"q10": [(0, q10, QUERY["q10"])], "q24": [(0, q24, None)]}
  assert load_expansions(str(expansions), join_samples=2) == {"q10": q10, "q24": q24}
  with pytest.raises(InputError, match="a second expansion for query 'q10'"):
    load_expansions(str(expansions))
  with pytest.raises(ConfigError, match="join_samples must be >= 0"):
    load_expansions(str(expansions), join_samples=-1)
  by_hand = tmp_path / "joined.jsonl"
  by_hand.write_text(json.dumps({"query_id": "q10", "sample_idx": 0, "query": QUERY["q10"], "expansion": q10}) + "\n"
                     + json.dumps({"query_id": "q24", "sample_idx": 0, "expansion": q24}) + "\n")
  direct = repeats.run(_config(tmp_path, by_hand, candidates=(1, 2), samples_per_query=1))
  joined = repeats.run(_config(tmp_path, expansions, candidates=(1, 2), join_samples=2))
  assert joined["by_repeats"] == direct["by_repeats"] and joined["join_samples"] == 2
  assert joined["samples_per_query"] == 1 and "join_samples" not in direct
  out = tmp_path / "by_k.json"
  assert aqe_by_k.main(["--data", str(demo_dir()), "--run", f"x={expansions}", "--samples", "2", "--join",
                        "--candidates", "1,2", "--out", str(out)]) == 0
  assert json.loads(out.read_text())["runs"]["x"]["by_repeats"] == direct["by_repeats"]
  assert json.loads(out.read_text())["join"] is True
  with pytest.raises(ConfigError, match="join_samples must be >= 0"):
    repeats.run(_config(tmp_path, expansions, join_samples=-1))
