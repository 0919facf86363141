"""Optimizers and learning-rate schedules, gin-configurable, built on optax.

Defaults follow T5: Adafactor with factored second moments, update clipping
at 1.0, parameter-scale-relative updates, and an inverse-square-root schedule
with a constant warmup:

    lr(step) = base / sqrt(max(step, warmup_steps))          ('rsqrt')

`make_optimizer` chains optional global-norm gradient clipping in front.
Adafactor keeps statistics per tensor (factored moments, update clipping
by the update's RMS, the parameter's RMS as scale); for scanned layers
(`rosetta.model.layer_stack`) `per_layer` gives each layer of a stacked
tensor its own, as the unrolled layers have (t5x treats the scan axis the
same way).
"""

from __future__ import annotations

import math

import gin
import jax
import jax.numpy as jnp
import optax

from rosetta.model import layer_stack

SCHEDULES = ('constant', 'rsqrt', 'linear', 'cosine')


@gin.configurable
def learning_rate_schedule(kind: str = 'rsqrt', base: float = 1.0,
                           warmup_steps: int = 10_000,
                           total_steps: int | None = None,
                           end_factor: float = 0.0) -> optax.Schedule:
  """Schedules by name.

  rsqrt:    base / sqrt(max(step, warmup)), T5's default (base 1.0 with
            warmup 10k gives 0.01 for the first 10k steps).
  constant: base (after a linear warmup when warmup_steps > 0).
  linear:   linear warmup to base, then linear decay to base * end_factor at
            total_steps.
  cosine:   linear warmup to base, cosine decay to base * end_factor.
  """
  if kind not in SCHEDULES:
    raise ValueError(f'learning_rate_schedule.kind: {kind!r} is not one of '
                     f'{SCHEDULES}')
  if warmup_steps < 0:
    raise ValueError('learning_rate_schedule.warmup_steps must be >= 0')
  if kind == 'rsqrt':
    w = max(warmup_steps, 1)
    return lambda step: base * jnp.reciprocal(jnp.sqrt(
        jnp.maximum(jnp.asarray(step, jnp.float32), w)))
  warm = (optax.linear_schedule(0.0, base, warmup_steps) if warmup_steps
          else optax.constant_schedule(base))
  if kind == 'constant':
    return optax.join_schedules([warm, optax.constant_schedule(base)],
                                [warmup_steps])
  if total_steps is None or total_steps <= warmup_steps:
    raise ValueError(f'learning_rate_schedule.total_steps must be set and '
                     f'greater than warmup_steps ({warmup_steps}) for '
                     f'{kind!r} decay, got {total_steps}')
  decay_steps = total_steps - warmup_steps
  if kind == 'linear':
    decay = optax.linear_schedule(base, base * end_factor, decay_steps)
  else:
    decay = optax.cosine_decay_schedule(base, decay_steps,
                                        alpha=end_factor)
  return optax.join_schedules([warm, decay], [warmup_steps])


def per_layer(tx: optax.GradientTransformation
              ) -> optax.GradientTransformation:
  """`tx` with every stacked-layer leaf (`layer_stack.stack_prefix`)
  updated layer by layer (`jax.vmap` over its leading axis), so per-tensor
  statistics stay per layer. Trees without stacked leaves get `tx` itself,
  state included."""
  vmapped = optax.GradientTransformation(jax.vmap(tx.init),
                                         jax.vmap(tx.update))

  def labels(tree):
    # One group per stack ('encoder/layers', ...): its leaves share L.
    return jax.tree_util.tree_map_with_path(
        lambda path, _: layer_stack.stack_prefix(path) or '', tree)

  def split(tree):
    groups = set(jax.tree.leaves(labels(tree)))
    if groups == {''}:
      return tx
    return optax.multi_transform(
        {g: vmapped if g else tx for g in groups}, labels)

  def init(params):
    return split(params).init(params)

  def update(updates, state, params=None):
    return split(updates).update(updates, state, params)
  return optax.GradientTransformation(init, update)


@gin.configurable
def make_optimizer(name: str = 'adafactor',
                   schedule: optax.Schedule | None = None,
                   grad_clip_norm: float | None = None,
                   weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999,
                   adafactor_decay_rate: float = 0.8,
                   adafactor_clipping_threshold: float | None = 1.0,
                   adafactor_momentum: float | None = None
                   ) -> optax.GradientTransformation:
  """An optax optimizer by name: 'adafactor' (T5's default), 'adamw', 'sgd'."""
  lr = schedule if schedule is not None else learning_rate_schedule()
  if name == 'adafactor':
    tx = per_layer(optax.adafactor(
        learning_rate=lr, decay_rate=adafactor_decay_rate,
        clipping_threshold=adafactor_clipping_threshold,
        momentum=adafactor_momentum, multiply_by_parameter_scale=True,
        weight_decay_rate=weight_decay or None))
  elif name == 'adamw':
    tx = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
  elif name == 'sgd':
    tx = optax.sgd(lr)
  else:
    raise ValueError(f"make_optimizer.name: {name!r} is not one of "
                     "'adafactor', 'adamw', 'sgd'")
  if grad_clip_norm is not None:
    if not (grad_clip_norm > 0 and math.isfinite(grad_clip_norm)):
      raise ValueError('make_optimizer.grad_clip_norm must be positive')
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx
