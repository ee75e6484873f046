"""`qgjax generate` refuses bad settings and inputs with errors that name them, before any output
it would have to discard, and runs once they are mended."""

from __future__ import annotations

import json
import os

import pytest

from qgjax.config import build_config
from qgjax.errors import ConfigError, InputError
from qgjax.jobs import generate
from tiny_lm import make_tiny_lm

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "generate.py")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return make_tiny_lm(str(tmp_path_factory.mktemp("tiny_lm")))


def _config(tiny_dir, out_dir, arg="mode=plain", **extra):
  over = {"model.name": tiny_dir, "output_dir": str(out_dir), "data.limit": "3", "batch_size": "2",
          "buckets": "[64,128,256,384]", "sampling.num_samples": "2", "sampling.max_new_tokens": "3",
          "log_every_s": "0", "print_examples": "0", "num_devices": "1", **{k: str(v) for k, v in extra.items()}}
  return build_config(f"{CONFIG}:{arg}", list(over.items()))


@pytest.mark.parametrize("bad, message", [
    ({"sampling.num_beams": 3, "sampling.num_samples": 5}, r"config.sampling: beam search returns at most num_beams=3"),
    ({"sampling.top_p": 0.0}, r"config.sampling: top_p must be in \(0, 1\]"),
    ({"batch_size": 0}, r"config.batch_size must be >= 1"),
    ({"model.dtype": "bfloat"}, r"config.model.dtype: unknown dtype 'bfloat'"),
    ({"model.attention_impl": "flash"}, r"config.model.attention_impl: unknown attention_impl 'flash'"),
])
def test_bad_values_are_config_errors_before_any_output(tiny_dir, tmp_path, bad, message):
  with pytest.raises(ConfigError, match=message):
    generate.run(_config(tiny_dir, tmp_path / "out", **bad))
  assert not (tmp_path / "out").exists()


def test_contrastive_negatives_file_errors(tiny_dir, tmp_path):
  with pytest.raises(ConfigError, match="prompt.negative='randon' is neither 'random' nor a JSONL file"):
    generate.run(_config(tiny_dir, tmp_path / "a", "mode=contrastive", **{"prompt.negative": "randon"}))
  table = tmp_path / "neg.jsonl"
  table.write_text(json.dumps({"doc_id": "demo-01", "negative_id": "demo-02"}) + "\n"
                   + json.dumps({"doc_id": "demo-02", "negative_id": "demo-99"}) + "\n")
  with pytest.raises(InputError, match=r"neg.jsonl:2, field 'negative_id': document 'demo-99' is not in the corpus"):
    generate.run(_config(tiny_dir, tmp_path / "b", "mode=contrastive", **{"prompt.negative": str(table)}))
  # mended, the same command runs in the same output directory
  table.write_text("".join(json.dumps({"doc_id": f"demo-0{i}", "negative_id": f"demo-0{i + 1}"}) + "\n"
                           for i in (1, 2, 3)))
  result = generate.run(_config(tiny_dir, tmp_path / "b", "mode=contrastive", **{"prompt.negative": str(table)}))
  assert result["inputs"] == 3
