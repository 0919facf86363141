"""Train state and the jitted train / eval steps, with explicit shardings.

The train state is a plain pytree, so orbax saves it as is::

    {'params': {...nested dict of arrays...},   # sharded by logical axes
     'opt_state': optax state,                  # moments sharded like params
     'step': int32 scalar}

`train_step(state, batch) -> (state, metrics)` is ONE jitted function with
explicit in/out shardings; the state is donated (updated in place). The
dropout key of step s is `fold_in(key(seed), s)` (and the microbatch index),
so a resumed run draws exactly the same dropout masks as an uninterrupted
one. Gradient accumulation runs microbatches under `lax.scan`, each loss
divided by the token count of the *whole* batch, so the accumulated gradient
equals the big-batch gradient.

With `trainable` patterns (`rosetta.trainable_params`; LoRA, adapters) the
state's 'params' hold only the trained parameters; the frozen rest is the
trainer's `frozen` tree, an argument of the step that is read, never
differentiated, updated or saved.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rosetta import partitioning
from rosetta import trainable_params
from rosetta.partitioning import Partitioner

BATCH_AXES = partitioning.BATCH_AXES
METRIC_KEYS = ('loss_sum', 'z_loss_sum', 'correct', 'num_tokens')


def _dict_path(path) -> tuple:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def split_microbatches(batch, m: int):
  """(b, ...) leaves -> (m, b / m, ...), strided: microbatch i takes rows
  i, i + m, ... so that every data-parallel device contributes rows to
  every microbatch. `merge_microbatches` inverts it."""
  sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
  if len(sizes) != 1:
    raise ValueError(f'batch features disagree on the batch size: '
                     f'{sorted(sizes)}')
  b = sizes.pop()
  if b % m:
    raise ValueError(f'batch size {b} is not divisible by '
                     f'num_microbatches={m}')
  return jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape((b // m, m) + x.shape[1:]), 0, 1),
      batch)


def merge_microbatches(micro):
  """(m, b / m, ...) -> (b, ...), the inverse of `split_microbatches`."""
  def merge(x):
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
  return jax.tree.map(merge, micro)


class Trainer:
  """Owns the network structure, optimizer and shardings of one run."""

  def __init__(self, model, partitioner: Partitioner,
               optimizer: optax.GradientTransformation,
               schedule: optax.Schedule | None = None, *,
               num_microbatches: int = 1, seed: int = 0,
               trainable: Sequence[str] | None = None):
    """trainable: regular expressions over parameter paths (None: all
    train); see the module docstring."""
    if num_microbatches < 1:
      raise ValueError('num_microbatches must be >= 1')
    self.model = model
    self.partitioner = partitioner
    self.tx = optimizer
    self.schedule = schedule
    self.num_microbatches = num_microbatches
    self.seed = seed
    with partitioner.activate():
      abstract = nnx.eval_shape(lambda: model.make_network(nnx.Rngs(0)))
    self.graphdef, abstract_params, self.rest = nnx.split(
        abstract, nnx.Param, ...)
    self._param_template = abstract_params
    full_shardings = nnx.to_pure_dict(
        partitioner.state_shardings(abstract_params))
    full_abstract = nnx.to_pure_dict(abstract_params)
    self.trainable_paths = (
        None if trainable is None
        else trainable_params.select(full_abstract, trainable))
    self.param_shardings, self.frozen_shardings = self.split(full_shardings)
    abstract_pure, abstract_frozen = self.split(full_abstract)
    self.abstract_params = abstract_pure
    self.abstract_frozen = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_frozen, self.frozen_shardings)
    self.abstract_full_params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        full_abstract, full_shardings)
    # The frozen parameters' values: set by init_state / state_from_network
    # / set_frozen ({} when everything trains).
    self.frozen: dict | None = None if self.trainable_paths else {}
    abstract_opt = jax.eval_shape(self.tx.init, abstract_pure)
    self.state_shardings = {
        'params': self.param_shardings,
        'opt_state': self._opt_shardings(abstract_opt, abstract_pure),
        'step': self.replicated,
    }
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        {'params': abstract_pure, 'opt_state': abstract_opt,
         'step': jax.ShapeDtypeStruct((), jnp.int32)},
        self.state_shardings)
    self._train_step = None
    self._eval_step = None

  def split(self, params) -> tuple[dict, dict]:
    """(trained, frozen) parts of a full parameter tree."""
    if self.trainable_paths is None:
      return params, {}
    return trainable_params.split(params, self.trainable_paths)

  def set_frozen(self, params) -> None:
    """Takes the frozen parameters from `params` (a full tree, or the
    frozen part alone), placed with their shardings."""
    _, frozen = self.split(params) if self.trainable_paths else ({}, {})
    self.frozen = jax.device_put(frozen, self.frozen_shardings)

  def full_params(self, params) -> dict:
    """The state's trained parameters joined with the frozen ones."""
    if not self.trainable_paths:
      return params
    return trainable_params.join(params, self._require_frozen())

  def _require_frozen(self) -> dict:
    if self.frozen is None:
      raise ValueError('the trainer freezes parameters (trainable=...) but '
                       'their values are not loaded: call set_frozen (the '
                       'run loads them from train.init_from)')
    return self.frozen

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.partitioner.mesh, PartitionSpec())

  def batch_sharding(self) -> NamedSharding:
    return self.partitioner.sharding(BATCH_AXES)

  def _opt_shardings(self, abstract_opt, abstract_params):
    """Optimizer leaves shaped like their parameter are sharded like it;
    others (counts, Adafactor's factored row/column statistics) are small
    and replicated."""
    by_path = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
      by_path[_dict_path(path)] = leaf
    flat_shardings = {
        _dict_path(p): s for p, s in
        jax.tree_util.tree_flatten_with_path(self.param_shardings)[0]}

    def pick(path, leaf):
      key = _dict_path(path)
      for start in range(len(key)):
        suffix = key[start:]
        if suffix in by_path:
          if tuple(by_path[suffix].shape) == tuple(leaf.shape):
            return flat_shardings[suffix]
          break
      return self.replicated
    return jax.tree_util.tree_map_with_path(pick, abstract_opt)

  # --------------------------------------------------------------- state ---
  def network(self, params, frozen=None) -> nnx.Module:
    """The nnx network for a params pytree (traced or concrete), joined
    with `frozen` (default: the trainer's frozen parameters)."""
    if self.trainable_paths:
      params = trainable_params.join(
          params, self._require_frozen() if frozen is None else frozen)
    state = jax.tree.map(lambda v: v, self._param_template)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state, self.rest)

  def init_state(self) -> dict[str, Any]:
    """Fresh state, every array created directly with its sharding (and
    fresh frozen parameters, for `train.init_from` to overwrite)."""
    def init():
      network = self.model.make_network(nnx.Rngs(params=self.seed))
      params, frozen = self.split(
          nnx.to_pure_dict(nnx.state(network, nnx.Param)))
      return ({'params': params, 'opt_state': self.tx.init(params),
               'step': jnp.zeros((), jnp.int32)}, frozen)
    with self.partitioner.activate():
      state, frozen = jax.jit(
          init, out_shardings=(self.state_shardings,
                               self.frozen_shardings))()
    self.frozen = frozen
    return state

  def state_from_network(self, network: nnx.Module) -> dict[str, Any]:
    """State for imported weights (e.g. an HF checkpoint), optimizer fresh."""
    params, frozen = self.split(
        nnx.to_pure_dict(nnx.state(network, nnx.Param)))
    self.frozen = jax.device_put(frozen, self.frozen_shardings)
    params = jax.device_put(params, self.param_shardings)
    with self.partitioner.activate():
      opt = jax.jit(self.tx.init,
                    out_shardings=self.state_shardings['opt_state'])(params)
    return {'params': params, 'opt_state': opt,
            'step': jax.device_put(jnp.zeros((), jnp.int32),
                                   self.replicated)}

  # --------------------------------------------------------------- steps ---
  def _loss(self, params, frozen, batch, rng, normalizer):
    return self.model.loss_fn(self.network(params, frozen), batch, rng,
                              normalizer)

  def _grads(self, params, frozen, batch, rng):
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)
    weights = self.model.loss_weights(batch)
    normalizer = jnp.maximum(weights.sum(), 1.0)
    m = self.num_microbatches
    if m == 1:
      (_, metrics), grads = grad_fn(params, frozen, batch, rng, normalizer)
      return grads, metrics
    micro = split_microbatches(batch, m)
    if hasattr(self.model, 'accumulated_grads'):
      # Losses that couple the rows of a batch (in-batch negatives) cannot
      # be summed over microbatches; the model accumulates its own way.
      return self.model.accumulated_grads(
          lambda p: self.network(p, frozen), params, micro, rng, normalizer,
          self._constrain_rows)

    def body(carry, xs):
      grads_acc, metrics_acc = carry
      i, mb = xs
      mb = self._constrain_rows(mb)
      (_, metrics), grads = grad_fn(params, frozen, mb,
                                    jax.random.fold_in(rng, i), normalizer)
      return (jax.tree.map(jnp.add, grads_acc, grads),
              jax.tree.map(jnp.add, metrics_acc, metrics)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    zero_metrics = {k: jnp.zeros((), jnp.float32) for k in METRIC_KEYS}
    (grads, metrics), _ = jax.lax.scan(
        body, (zeros, zero_metrics), (jnp.arange(m), micro))
    return grads, metrics

  def _constrain_rows(self, tree):
    """Rows (axis 0) over the mesh's batch axes: a microbatch sliced out of
    a scan keeps the data-parallel layout of the whole batch."""
    return jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(
            x, self.partitioner.sharding(BATCH_AXES[:x.ndim])), tree)

  def _train_step_impl(self, state, frozen, batch):
    step = state['step']
    rng = jax.random.fold_in(jax.random.key(self.seed + 1), step)
    grads, metrics = self._grads(state['params'], frozen, batch, rng)
    updates, opt_state = self.tx.update(grads, state['opt_state'],
                                        state['params'])
    params = optax.apply_updates(state['params'], updates)
    tokens = jnp.maximum(metrics['num_tokens'], 1.0)
    out = {
        'loss': metrics['loss_sum'] / tokens,
        'z_loss': metrics['z_loss_sum'] / tokens,
        'accuracy': metrics['correct'] / tokens,
        'num_tokens': metrics['num_tokens'],
        'grad_norm': optax.global_norm(grads),
        'param_norm': optax.global_norm(params),
    }
    if self.schedule is not None:
      out['learning_rate'] = jnp.asarray(self.schedule(step), jnp.float32)
    return {'params': params, 'opt_state': opt_state, 'step': step + 1}, out

  def batch_shardings(self, batch) -> dict:
    return {k: self.partitioner.sharding(BATCH_AXES[:np.ndim(v)])
            for k, v in batch.items()}

  def train_step(self, state, batch):
    """One optimizer step; `state` is donated (do not reuse it)."""
    if self._train_step is None:
      self._train_step = jax.jit(
          self._train_step_impl,
          in_shardings=(self.state_shardings, self.frozen_shardings,
                        self.batch_shardings(batch)),
          out_shardings=(self.state_shardings, self.replicated),
          donate_argnums=(0,))
    with self.partitioner.activate():
      return self._train_step(state, self._require_frozen(), batch)

  def _eval_step_impl(self, params, frozen, batch):
    _, metrics = self.model.loss_fn(self.network(params, frozen), batch,
                                    None, None)
    return metrics

  def eval_step(self, state, batch):
    """Summed loss metrics of a batch, no dropout (for averaging)."""
    if self._eval_step is None:
      self._eval_step = jax.jit(
          self._eval_step_impl,
          in_shardings=(self.param_shardings, self.frozen_shardings,
                        self.batch_shardings(batch)),
          out_shardings=self.replicated)
    with self.partitioner.activate():
      return self._eval_step(state['params'], self._require_frozen(), batch)

  def lower_train_step(self, batch_shapes):
    """AOT-lowers the train step for abstract batch shapes (no data needed):
    `trainer.lower_train_step(...).compile()` checks a config fits before a
    long run, as MaxText's train_compile does."""
    return self.trace_train_step(batch_shapes).lower()

  def trace_train_step(self, batch_shapes):
    """The train step traced for abstract batch shapes (`jax.stages.
    Traced`: its `.jaxpr`, or `.lower()` for the compiler). batch_shapes:
    {feature: shape (int32) or jax.ShapeDtypeStruct}."""
    # A shape is an int32 feature; a ShapeDtypeStruct says its dtype (a
    # reranker's labels, a teacher's scores are float).
    batch = {k: s if isinstance(s, jax.ShapeDtypeStruct)
             else jax.ShapeDtypeStruct(s, jnp.int32)
             for k, s in batch_shapes.items()}
    fn = jax.jit(self._train_step_impl,
                 in_shardings=(self.state_shardings, self.frozen_shardings,
                               self.batch_shardings(batch)),
                 out_shardings=(self.state_shardings, self.replicated),
                 donate_argnums=(0,))
    with self.partitioner.activate():
      return fn.trace(self.abstract_state, self.abstract_frozen, batch)


@dataclasses.dataclass
class FlopsCounter:
  """Model FLOPs per target token for MFU: the usual 6 * N, N = ALL
  parameters (the embedding lookup does no matmul, and attention's
  length-dependent FLOPs are left out: for T5-small the matmul FLOPs are
  ~0.78x this count). Stated so MFU numbers compare run to run."""
  num_params: int

  @classmethod
  def for_params(cls, params) -> 'FlopsCounter':
    return cls(int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))))

  def flops(self, tokens: float) -> float:
    return 6.0 * self.num_params * tokens
