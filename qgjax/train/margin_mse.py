"""MarginMSE: the bi-encoder's score margin regresses on a cross-encoder's (GPL, arXiv 2112.07577).

GPL pseudo-labels each (query, positive, mined negative) with a cross-encoder and trains the
dense retriever so that its margin matches the teacher's (Hofstaetter et al. 2020):

  m_ih = c (s(q_i, p_i) - s(q_i, n_ih))             s = <q, d> of the encoder outputs, c = `scale`
  t_ih = ce_pos_i - ce_neg_ih                       the teacher's scores, from `qgjax mine`
                                                    with mining.store_scores (ce_pos, ce_neg)
  loss = sum_i w_i sum_h (m_ih - t_ih)^2 / (H * sum_i w_i)

In the retriever task (qgjax.train.infonce, `config.loss = "margin_mse"`) the teacher's scores
are the scalar columns ce_pos and ce_neg{h} of each batch (`teacher_columns`), mined negatives
cycled as the token columns are. With similarity="cos" the outputs are L2-normalised, so |m| <= 2: GPL pairs MarginMSE with dot
product (similarity="dot") when the teacher's margins are cross-encoder logits; an encoder that
normalises its outputs anyway (all-MiniLM-L6-v2) reaches the teacher's logit scale only through
`scale` (the retriever's margin_scale, e.g. 20 = 1 / InfoNCE's temperature). Each row needs
only its own documents (no in-batch negatives), so a batch sharded over devices needs no
communication besides the mean.

A teacher weaker than its student pulls the student towards the teacher's errors. `mixed_teacher`
(the retriever's teacher_weight w < 1) regresses instead on w t + (1 - w) k m0, the teacher mixed with
the start student's own margins m0 at the teacher's spread k: an ensemble of the two, which the
student starts close to.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from qgjax.errors import ConfigError, InputError

LOSSES = ("infonce", "margin_mse")


def student_scores(q: jax.Array, pos: jax.Array, neg: jax.Array) -> tuple[jax.Array, jax.Array]:
  """q f32[B, D], pos f32[B, D], neg f32[B, H, D] -> (s(q, pos) f32[B], s(q, neg) f32[B, H]), inner products."""
  s_pos = jnp.einsum("bd,bd->b", q, pos, preferred_element_type=jnp.float32)
  s_neg = jnp.einsum("bd,bhd->bh", q, neg, preferred_element_type=jnp.float32)
  return s_pos, s_neg


def margin_mse_loss(q: jax.Array, pos: jax.Array, neg: jax.Array, ce_pos: jax.Array, ce_neg: jax.Array, *,
                    weight: jax.Array | None = None, scale: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """q f32[B, D], pos f32[B, D], neg f32[B, H, D]; ce_pos f32[B], ce_neg f32[B, H] (teacher scores);
  weight f32[B] (0 drops a row); scale multiplies the student's margins. Returns (loss scalar,
  metrics: accuracy (pos above every negative), pos_score, hardest_neg_score (unscaled), margin
  (scaled), target_margin)."""
  f32 = jnp.float32
  s_pos, s_neg = student_scores(q, pos, neg)
  margin = scale * (s_pos[:, None] - s_neg)
  target = ce_pos.astype(f32)[:, None] - ce_neg.astype(f32)
  per_row = jnp.mean(jnp.square(margin - target), axis=-1)
  w = jnp.ones(per_row.shape, f32) if weight is None else weight.astype(f32)
  wsum = jnp.maximum(jnp.sum(w), 1e-9)
  mean = lambda x: jnp.sum(x * w) / wsum
  hardest = jnp.max(s_neg, axis=-1)
  metrics = {"accuracy": mean((s_pos > hardest).astype(f32)), "pos_score": mean(s_pos),
             "hardest_neg_score": mean(hardest), "margin": mean(jnp.mean(margin, -1)),
             "target_margin": mean(jnp.mean(target, -1))}
  return mean(per_row), metrics


def fitted_scale(student: np.ndarray, teacher: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
  """student, teacher f[N, H] margins, weight f[N] (0 drops a row) -> (c, pearson): c minimises
  sum_i w_i sum_h (c student_ih - teacher_ih)^2, i.e. c = <s, t>_w / <s, s>_w (least squares through 0),
  and the weighted Pearson correlation of the margins. Raises ConfigError when c is not > 0."""
  s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
  w = np.broadcast_to(np.asarray(weight, np.float64)[:, None], s.shape)
  ss = float(np.sum(w * s * s))
  c = float(np.sum(w * s * t)) / ss if ss > 0 else float("nan")
  mean = lambda x: float(np.sum(w * x)) / max(float(np.sum(w)), 1e-12)
  ds, dt = s - mean(s), t - mean(t)
  pearson = mean(ds * dt) / max(np.sqrt(mean(ds * ds) * mean(dt * dt)), 1e-12)
  if not np.isfinite(c) or c <= 0:
    raise ConfigError(f"margin_scale_fit: the least-squares scale of the teacher's margins on the start student's "
                      f"is {c:.4g} (Pearson {pearson:.3f}), not > 0: the student ranks the tuples' documents against "
                      "the teacher; set margin_scale by hand (margin_scale_fit=0)")
  return c, float(pearson)


def check_teacher_weight(weight: float) -> float:
  """The retriever's teacher_weight, checked to lie in (0, 1]."""
  if not 0.0 < weight <= 1.0:
    raise ConfigError(f"teacher_weight must be in (0, 1] (1 = the teacher alone); got {weight}")
  return weight


def mixed_teacher(ce_pos: np.ndarray, ce_neg: np.ndarray, s_pos: np.ndarray, s_neg: np.ndarray, weight: float,
                  fit_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
  """The teacher mixed with the start student: ce_pos f[N], ce_neg f[N, H] the teacher's scores, s_pos f[N],
  s_neg f[N, H] the start student's (unscaled), weight w in (0, 1], fit_rows int[M] (the training rows).
  With k = std of the teacher's margins / std of the student's over fit_rows (the student in the teacher's
  units), returns (w ce_pos + (1 - w) k s_pos, w ce_neg + (1 - w) k s_neg, k): every margin becomes
  w t + (1 - w) k m0, an equal-spread mix at w = 0.5; w = 1 is the teacher alone."""
  check_teacher_weight(weight)
  rows = np.asarray(fit_rows)
  t = np.asarray(ce_pos, np.float64)[rows, None] - np.asarray(ce_neg, np.float64)[rows]
  m = np.asarray(s_pos, np.float64)[rows, None] - np.asarray(s_neg, np.float64)[rows]
  if m.std() <= 0:
    raise ConfigError("teacher_weight < 1: the start student gives every training tuple the same margin")
  k = float(t.std() / m.std())
  mix = lambda ce, s: (weight * np.asarray(ce, np.float64) + (1 - weight) * k * np.asarray(s, np.float64))
  return mix(ce_pos, s_pos), mix(ce_neg, s_neg), k


def retriever_loss_name(config: Any, num_negatives: int) -> str:
  """config.loss, checked: "infonce" or "margin_mse" (which needs mined negatives)."""
  loss = config.loss
  if loss not in LOSSES:
    raise ConfigError(f"config.loss must be one of {', '.join(LOSSES)}, got {loss!r}")
  if loss == "margin_mse" and num_negatives < 1:
    raise ConfigError("loss=margin_mse needs num_negatives >= 1: its targets are the reranker's scores of "
                      "the mined negatives")
  return loss


def teacher_columns(tuples: Sequence[Mapping], num_negatives: int, where: Sequence[tuple[str, int]]
                    ) -> dict[str, list[float]]:
  """Tuples with the reranker's ce_pos / ce_neg (qgjax mine, mining.store_scores) -> scalar columns
  ce_pos and ce_neg{h} (h < num_negatives; an example's negatives cycle as in build_columns)."""
  for t, (path, line) in zip(tuples, where):
    if "ce_pos" not in t or "ce_neg" not in t:
      raise InputError("loss=margin_mse needs the reranker's scores of each tuple: mine with "
                       "mining.store_scores=True and a reranker", path=path, line=line,
                       field="ce_pos" if "ce_pos" not in t else "ce_neg")
    if len(t["ce_neg"]) != len(t.get("neg_ids", [])):
      raise InputError(f"{len(t['ce_neg'])} scores for {len(t.get('neg_ids', []))} negatives", path=path,
                       line=line, field="ce_neg")
  cols = {"ce_pos": [float(t["ce_pos"]) for t in tuples]}
  for h in range(num_negatives):
    cols[f"ce_neg{h}"] = [float(t["ce_neg"][h % len(t["ce_neg"])]) for t in tuples]
  return cols


def teacher_scores(batch: Mapping[str, jax.Array], num_negatives: int) -> tuple[jax.Array, jax.Array]:
  """A batch's teacher columns -> (ce_pos f32[B], ce_neg f32[B, H])."""
  return batch["ce_pos"], jnp.stack([batch[f"ce_neg{h}"] for h in range(num_negatives)], axis=1)
