"""Train state, its sharded creation, and the jitted `train_step(state, batch) -> (state, metrics)`.

  state = create_state(trainable, frozen, abstract_trainable, abstract_frozen, tx, mesh, rules)
  train_step = make_train_step(loss_fn, tx, schedule, mesh=..., rules=..., state_shardings=...,
                               example_batch=batch, accum_steps=4)
  state, metrics = train_step(state, batch)

`loss_fn(params, frozen, batch) -> (loss, metrics)` is a pure function of the trainable
params, the frozen ones (a LoRA base model, a T5 under soft prompts; `{}` when training in
full) and a batch dict whose arrays lead with the batch dimension.

Gradient accumulation: the global batch [B, ...] is split into `accum_steps` microbatches of
B / accum_steps rows (row i goes to microbatch i % accum_steps, so each device's rows stay on
that device); a `lax.scan` sums their gradients in f32 and the mean takes one optimizer step.
The loss is then the mean of microbatch losses.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from qgjax.parallel.sharding import activate, batch_spec, put_on_mesh, tree_shardings


@flax.struct.dataclass
class TrainState:
  step: jax.Array      # int32 scalar: optimizer steps taken
  params: Any          # trainable parameters
  opt_state: Any       # optimizer state of `params`
  frozen: Any          # parameters the loss reads but never updates (not checkpointed)


def state_shardings(abstract_trainable: Any, abstract_frozen: Any, tx: optax.GradientTransformation,
                    mesh: Mesh, rules) -> TrainState:
  """NamedShardings of every TrainState leaf from the (boxed) abstract parameter trees.

  The optimizer state inherits the logical names of the parameters it mirrors (optax builds
  it with tree maps, which carry flax's LogicallyPartitioned boxes along).
  """
  abstract_opt = jax.eval_shape(tx.init, abstract_trainable)
  return TrainState(step=NamedSharding(mesh, P()),
                    params=tree_shardings(abstract_trainable, mesh, rules),
                    opt_state=tree_shardings(abstract_opt, mesh, rules),
                    frozen=tree_shardings(abstract_frozen, mesh, rules))


def create_state(trainable: Any, frozen: Any, shardings: TrainState, tx: optax.GradientTransformation,
                 mesh: Mesh, rules) -> TrainState:
  """Places host parameters on the mesh and creates the optimizer state already sharded."""
  params = put_on_mesh(trainable, shardings.params)
  frozen = put_on_mesh(frozen, shardings.frozen)
  with activate(mesh, rules):
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
  return TrainState(step=step, params=params, opt_state=opt_state, frozen=frozen)


def _split_micro(x: jax.Array, accum: int, mesh: Mesh, rules) -> jax.Array:
  """[B, ...] -> [accum, B / accum, ...] with row i in microbatch i % accum (no cross-device moves)."""
  b = x.shape[0]
  if b % accum:
    raise ValueError(f"batch of {b} rows does not split into {accum} microbatches")
  y = x.reshape((b // accum, accum) + x.shape[1:]).swapaxes(0, 1)
  spec = P(None, *batch_spec(x.ndim, rules))
  return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: optax.Schedule | None, *,
                    mesh: Mesh, rules, shardings: TrainState, example_batch: dict,
                    accum_steps: int = 1, donate: bool = True) -> Callable:
  """jit(train_step) with in/out shardings and the state donated (updated in place)."""
  accum = max(1, int(accum_steps))
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_fn(state: TrainState, batch: dict):
    if accum == 1:
      (loss, metrics), grads = grad_fn(state.params, state.frozen, batch)
    else:
      micro = jax.tree.map(lambda x: _split_micro(x, accum, mesh, rules), batch)

      def body(carry, mb):
        g_sum, l_sum, m_sum = carry
        (l, m), g = grad_fn(state.params, state.frozen, mb)
        g_sum = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_sum, g)
        m_sum = jax.tree.map(jnp.add, m_sum, m)
        return (g_sum, l_sum + l, m_sum), None

      zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
      first = jax.tree.map(lambda x: x[0], micro)
      m_shape = jax.eval_shape(lambda mb: grad_fn(state.params, state.frozen, mb)[0][1], first)
      zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
      (g_sum, l_sum, m_sum), _ = jax.lax.scan(body, (zeros_g, jnp.zeros((), jnp.float32), zeros_m), micro)
      grads = jax.tree.map(lambda g, p: (g / accum).astype(p.dtype), g_sum, state.params)
      loss = l_sum / accum
      metrics = jax.tree.map(lambda m: m / accum, m_sum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    if schedule is not None:
      metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  batch_shardings = jax.tree.map(lambda x: NamedSharding(mesh, batch_spec(jnp.ndim(x), rules)), example_batch)
  jitted = jax.jit(step_fn, in_shardings=(shardings, batch_shardings),
                   out_shardings=(shardings, NamedSharding(mesh, P())),
                   donate_argnums=(0,) if donate else ())

  def train_step(state: TrainState, batch: dict):
    with activate(mesh, rules):
      return jitted(state, batch)

  train_step.jitted = jitted
  return train_step


def make_eval_step(loss_fn: Callable, *, mesh: Mesh, rules, shardings: TrainState, example_batch: dict) -> Callable:
  """jit(loss_fn) on a batch without a gradient: -> metrics (with "loss")."""
  def eval_fn(state: TrainState, batch: dict):
    loss, metrics = loss_fn(state.params, state.frozen, batch)
    return dict(metrics, loss=loss)

  batch_shardings = jax.tree.map(lambda x: NamedSharding(mesh, batch_spec(jnp.ndim(x), rules)), example_batch)
  jitted = jax.jit(eval_fn, in_shardings=(shardings, batch_shardings), out_shardings=NamedSharding(mesh, P()))

  def eval_step(state, batch):
    with activate(mesh, rules):
      return jitted(state, batch)

  return eval_step
