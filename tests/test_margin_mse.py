"""MarginMSE (GPL): loss and gradients against a float64 numpy reference, sharded over 8 devices."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from loss_references import margin_mse_numpy
from qgjax.errors import ConfigError, InputError
from qgjax.train.margin_mse import margin_mse_loss


def _data(b=16, h=3, d=8, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.standard_normal(s).astype(np.float32)
  return f(b, d), f(b, d), f(b, h, d), 3 * f(b), 3 * f(b, h)


def test_loss_and_gradients_match_numpy_float64_on_8_devices():
  q, pos, neg, ce_pos, ce_neg = _data()
  weight = np.ones(16, np.float32)
  weight[[3, 11]] = 0.0                              # filler rows drop out of the mean
  mesh = Mesh(np.asarray(jax.devices()[:8]), ("data",))
  shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("data", *([None] * (x.ndim - 1)))))
  f = lambda a, b, c, cp, cn, w: margin_mse_loss(a, b, c, cp, cn, weight=w)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(
      *map(shard, (q, pos, neg, ce_pos, ce_neg, weight)))
  ref, g_q, g_pos, g_neg = margin_mse_numpy(q, pos, neg, ce_pos, ce_neg, weight)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  for got, want in zip(grads, (g_q, g_pos, g_neg)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)
  assert np.abs(g_q[3]).max() == 0 and np.abs(g_q).max() > 0.1    # weight 0 rows get no gradient
  s_pos, s_neg = np.einsum("bd,bd->b", q, pos), np.einsum("bd,bhd->bh", q, neg)
  keep = weight > 0
  np.testing.assert_allclose(float(metrics["accuracy"]), np.mean((s_pos > s_neg.max(1))[keep]), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["target_margin"]), np.mean((ce_pos[:, None] - ce_neg)[keep]), rtol=1e-5)


def test_zero_when_the_student_margin_equals_the_teachers():
  q, pos, neg, _, _ = _data(b=4, h=2, seed=1)
  s_pos, s_neg = np.einsum("bd,bd->b", q, pos), np.einsum("bd,bhd->bh", q, neg)
  loss, _ = margin_mse_loss(q, pos, neg, s_pos + 5.0, s_neg + 5.0)     # a shifted teacher: same margins
  assert abs(float(loss)) < 1e-10
  loss, _ = margin_mse_loss(q, pos, neg, s_pos + 1.0, s_neg)           # every margin off by 1
  np.testing.assert_allclose(float(loss), 1.0, rtol=1e-5)
  loss, m = margin_mse_loss(q, pos, neg, 20.0 * s_pos, 20.0 * s_neg, scale=20.0)   # margins on a 20x scale
  assert abs(float(loss)) < 1e-8 and float(m["pos_score"]) == pytest.approx(float(np.mean(s_pos)), rel=1e-5)
  loss, _ = margin_mse_loss(q, pos, neg, 20.0 * s_pos + 1.0, 20.0 * s_neg, scale=20.0)
  np.testing.assert_allclose(float(loss), 1.0, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# The retriever task with loss=margin_mse: teacher columns from the tuples, a CLI run.


def _scored_tuples(path):
  """The demo's hand-written queries with 2 negatives (one with 1, cycled) and made-up teacher scores."""
  import json

  from qgjax.data import demo_dir

  recs = [json.loads(line) for line in open(demo_dir() / "sample_queries.jsonl")]
  docs = sorted({r["doc_id"] for r in recs})
  rng = np.random.default_rng(3)
  out = []
  for i, r in enumerate(recs):
    negs = [docs[(docs.index(r["doc_id"]) + j) % len(docs)] for j in ((1,) if i == 0 else (1, 2))]
    out.append({"doc_id": r["doc_id"], "sample_idx": r["sample_idx"], "query": r["query"], "pos_id": r["doc_id"],
                "neg_ids": negs, "ce_pos": float(rng.normal(2, 1)), "ce_neg": [float(x) for x in rng.normal(0, 1, len(negs))]})
  with open(path, "w") as f:
    f.writelines(json.dumps(t) + "\n" for t in out)
  return str(path), out


def _reference_loss(model_dir, tuples, rows, weight):
  """MarginMSE of the rows of one batch: sentence-transformers embeddings, float64 numpy loss."""
  from sentence_transformers import SentenceTransformer

  from qgjax.data import demo_dir
  from qgjax.data.beir import Corpus

  corpus = Corpus(demo_dir() / "corpus.jsonl")
  st = SentenceTransformer(model_dir, device="cpu")
  st.max_seq_length = 64
  q = st.encode([tuples[i]["query"] for i in rows])
  st.max_seq_length = 128
  doc = lambda ids: st.encode([corpus[d].contents for d in ids])
  pos = doc([tuples[i]["pos_id"] for i in rows])
  cyc = lambda xs, h: xs[h % len(xs)]
  neg = np.stack([doc([cyc(tuples[i]["neg_ids"], h) for i in rows]) for h in range(2)], axis=1)
  ce_pos = np.array([tuples[i]["ce_pos"] for i in rows])
  ce_neg = np.array([[cyc(tuples[i]["ce_neg"], h) for h in range(2)] for i in rows])
  return margin_mse_numpy(q, pos, neg, ce_pos, ce_neg, weight)[0]


@pytest.mark.torch_ref
def test_retriever_margin_mse_task_and_cli_run_match_the_reference(tmp_path):
  import json

  from qgjax import cli
  from qgjax.config import build_config
  from qgjax.train.infonce import setup_retriever
  from tiny_lm import make_tiny_bert

  model = make_tiny_bert(str(tmp_path / "m"))
  train, tuples = _scored_tuples(tmp_path / "t.jsonl")
  over = [("workdir", str(tmp_path / "r")), ("data.train", train), ("model.name", model), ("loss", "margin_mse"),
          ("num_negatives", "2"), ("similarity", "dot"), ("batch_size", "8"), ("num_steps", "2")]
  setup = setup_retriever(build_config("configs/retriever.py:tiny", over))
  assert setup.fingerprint["loss"] == "margin_mse"
  batch = setup.train.batch(0)
  rows = setup.train.indices(0)
  np.testing.assert_allclose(batch["ce_pos"], [tuples[i]["ce_pos"] for i in rows], rtol=1e-6)
  loss, metrics = jax.jit(setup.loss_fn)(setup.trainable, setup.frozen, jax.tree.map(jax.numpy.asarray, batch))
  want = _reference_loss(model, tuples, rows, batch["weight"])
  np.testing.assert_allclose(float(loss), want, rtol=2e-4)
  # the same through the CLI: the first step's logged loss is the loss at the initial weights
  assert cli.main(["train", "--config", "configs/retriever.py:tiny"] + [f"--config.{k}={v}" for k, v in over]) == 0
  first = json.loads(open(tmp_path / "r" / "metrics.jsonl").readline())
  assert first["step"] == 1 and "target_margin" in first
  np.testing.assert_allclose(first["loss"], want, rtol=2e-4)
  # tuples without teacher scores are refused, naming the file and line
  plain = tmp_path / "plain.jsonl"
  plain.write_text("".join(json.dumps({k: v for k, v in t.items() if k != "ce_pos"}) + "\n" for t in tuples))
  with pytest.raises(InputError, match=r"plain.jsonl:1, field 'ce_pos': .*mining.store_scores"):
    setup_retriever(build_config("configs/retriever.py:tiny", over + [("data.train", str(plain))]))
  with pytest.raises(ConfigError, match="needs num_negatives >= 1"):
    setup_retriever(build_config("configs/retriever.py:tiny", over + [("num_negatives", "0")]))


def test_fitted_scale_is_least_squares_through_zero_and_refuses_a_reversed_student():
  from qgjax.train.margin_mse import fitted_scale

  s = np.array([[0.1, 0.3], [0.2, -0.1], [0.5, 0.4]])
  t = np.array([[0.5, 1.0], [0.4, -0.2], [9.0, 9.0]])
  w = np.array([1.0, 1.0, 0.0])                           # the third row (a wrap-around repeat) drops out
  c, r = fitted_scale(s, t, w)
  # by hand: <s, t> = 0.05 + 0.3 + 0.08 + 0.02 = 0.45, <s, s> = 0.01 + 0.09 + 0.04 + 0.01 = 0.15
  assert c == pytest.approx(3.0) and r == pytest.approx(np.corrcoef(s[:2].ravel(), t[:2].ravel())[0, 1])
  with pytest.raises(ConfigError, match=r"margin_scale_fit: .* -3 .*not > 0.*margin_scale_fit=0"):
    fitted_scale(s, -t, w)


def _st_student_margins(model, tuples, num_negatives=2):
  """sentence-transformers' margins s(q, pos) - s(q, neg_h) of the tuples, float64 [N, H] (negatives cycled),
  at the retriever's tiny lengths (query 64, documents 128 tokens)."""
  from sentence_transformers import SentenceTransformer

  from qgjax.data import demo_dir
  from qgjax.data.beir import Corpus

  corpus = Corpus(demo_dir() / "corpus.jsonl")
  st = SentenceTransformer(model, device="cpu")
  st.max_seq_length = 64
  q = st.encode([t["query"] for t in tuples]).astype(np.float64)
  st.max_seq_length = 128
  doc = lambda ids: st.encode([corpus[d].contents for d in ids]).astype(np.float64)
  pos = doc([t["pos_id"] for t in tuples])
  neg = np.stack([doc([t["neg_ids"][h % len(t["neg_ids"])] for t in tuples]) for h in range(num_negatives)], axis=1)
  return np.einsum("bd,bd->b", q, pos)[:, None] - np.einsum("bd,bhd->bh", q, neg)


def _teacher_margins(tuples, num_negatives=2):
  return np.array([[t["ce_pos"] - t["ce_neg"][h % len(t["ce_neg"])] for h in range(num_negatives)] for t in tuples])


def _margin_mse_setup(tmp_path, model, tuples, **overrides):
  import json

  from qgjax.config import build_config
  from qgjax.train.infonce import setup_retriever

  train = tmp_path / "t.jsonl"
  train.write_text("".join(json.dumps(t) + "\n" for t in tuples))
  over = [("workdir", str(tmp_path / "r")), ("data.train", str(train)), ("model.name", model), ("loss", "margin_mse"),
          ("num_negatives", "2"), ("similarity", "dot"), ("batch_size", "8"), ("num_steps", "2")]
  over += [(k, str(v)) for k, v in overrides.items()]
  return setup_retriever(build_config("configs/retriever.py:tiny", over))


@pytest.mark.torch_ref
def test_retriever_fits_margin_scale_on_the_start_students_margins(tmp_path):
  """The fitted scale equals float64 least squares on sentence-transformers' margins of the same tuples, and the
  loss at the initial weights is MarginMSE at that scale."""
  from tiny_lm import make_tiny_bert

  model = make_tiny_bert(str(tmp_path / "m"))
  _, tuples = _scored_tuples(tmp_path / "t0.jsonl")
  student = _st_student_margins(model, tuples)                                                 # [N, 2]
  rng = np.random.default_rng(0)
  for i, t in enumerate(tuples):   # a teacher about 7x the student, with noise, its negatives' scores per neg id
    t["ce_pos"] = 1.0
    t["ce_neg"] = [1.0 - 7.0 * student[i, h] + 0.02 * rng.standard_normal() for h in range(len(t["neg_ids"]))]
  teacher = _teacher_margins(tuples)
  want = float(np.sum(student * teacher) / np.sum(student * student))
  setup = _margin_mse_setup(tmp_path, model, tuples, margin_scale_fit=1000)
  assert setup.info["margin_scale_fit"]["tuples"] == len(tuples) and setup.fingerprint["margin_scale_fit"] == 1000
  assert "margin_scale" not in setup.fingerprint
  np.testing.assert_allclose(setup.info["margin_scale"], want, rtol=2e-3)
  assert 6.5 < want < 7.5 and setup.info["margin_scale_fit"]["pearson"] > 0.9
  batch, rows = setup.train.batch(0), setup.train.indices(0)
  loss, _ = jax.jit(setup.loss_fn)(setup.trainable, setup.frozen, jax.tree.map(jax.numpy.asarray, batch))
  c = setup.info["margin_scale"]
  ref = np.mean([np.mean((c * student[i] - teacher[i]) ** 2) for i in rows])
  np.testing.assert_allclose(float(loss), ref, rtol=5e-3, atol=1e-6)


def test_mixed_teacher_by_hand():
  from qgjax.train.margin_mse import mixed_teacher

  ce_pos, ce_neg = np.array([2.0, 1.0, 0.0]), np.array([[0.0], [2.0], [9.0]])
  s_pos, s_neg = np.array([0.5, 0.4, 0.3]), np.array([[0.3], [0.3], [0.9]])
  # training rows 0 and 1: teacher margins 2, -1 (std 1.5), student margins 0.2, 0.1 (std 0.05): k = 30
  mp, mn, k = mixed_teacher(ce_pos, ce_neg, s_pos, s_neg, 0.5, np.array([0, 1]))
  assert k == pytest.approx(30.0)
  # every row mixes, row 2 too (an eval row): 0.5 x (0 - 9) + 0.5 x 30 x (0.3 - 0.9) = -4.5 - 9 = -13.5
  np.testing.assert_allclose((mp[:, None] - mn)[:, 0], [0.5 * 2 + 0.5 * 30 * 0.2, 0.5 * -1 + 0.5 * 30 * 0.1, -13.5])
  same = mixed_teacher(ce_pos, ce_neg, s_pos, s_neg, 1.0, np.array([0, 1]))
  np.testing.assert_array_equal(same[0], ce_pos)
  np.testing.assert_array_equal(same[1], ce_neg)
  for bad in (0.0, 1.5, -0.1):
    with pytest.raises(ConfigError, match=r"teacher_weight must be in \(0, 1\]"):
      mixed_teacher(ce_pos, ce_neg, s_pos, s_neg, bad, np.array([0, 1]))


@pytest.mark.torch_ref
def test_retriever_mixes_the_teacher_with_sentence_transformers_start_margins(tmp_path):
  """teacher_weight=0.3: every training batch's target margins are 0.3 t + 0.7 k m0, m0 sentence-transformers'
  margins of the start model and k = std(t) / std(m0) in float64; the summary and fingerprint say so; the
  scale fitted afterwards is least squares on the mixed margins; InfoNCE refuses the knob."""
  from tiny_lm import make_tiny_bert

  model = make_tiny_bert(str(tmp_path / "m"))
  _, tuples = _scored_tuples(tmp_path / "t0.jsonl")
  student, teacher = _st_student_margins(model, tuples), _teacher_margins(tuples)
  k = teacher.std() / student.std()
  want = 0.3 * teacher + 0.7 * k * student                                                      # [N, 2]
  setup = _margin_mse_setup(tmp_path, model, tuples, teacher_weight=0.3, margin_scale_fit=1000)
  assert setup.fingerprint["teacher_weight"] == 0.3
  np.testing.assert_allclose(setup.info["teacher_mix"]["student_to_teacher"], k, rtol=2e-3)
  for step in range(setup.train.steps_per_epoch):
    batch, rows = setup.train.batch(step), setup.train.indices(step)
    got = batch["ce_pos"][:, None] - np.stack([batch["ce_neg0"], batch["ce_neg1"]], axis=1)
    np.testing.assert_allclose(got, want[rows], rtol=2e-3, atol=2e-3 * np.abs(want).max())
  c = float(np.sum(student * want) / np.sum(student * student))
  np.testing.assert_allclose(setup.info["margin_scale"], c, rtol=2e-3)
  with pytest.raises(ConfigError, match="teacher_weight=0.5 .* needs loss=margin_mse"):
    _margin_mse_setup(tmp_path, model, tuples, teacher_weight=0.5, loss="infonce")
  with pytest.raises(ConfigError, match=r"teacher_weight must be in \(0, 1\].*got 1.5"):
    _margin_mse_setup(tmp_path, model, tuples, teacher_weight=1.5)
