"""Lowers and compiles a run's real steps for a target's devices, from its
gin configuration alone: no weights, no data, no accelerator.

The model is built abstractly (the trainer's `nnx.eval_shape`), the train
state is `ShapeDtypeStruct`s carrying the run's shardings over a mesh of
the target's devices, and the batch shapes come from the model's own
feature converter run on a one-example dataset, so packing features, hard
negatives and the like are the ones training would feed. Tracing happens
under that mesh, so every backend-keyed path takes the target's branch
(`partitioning.target_platform`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rosetta import partitioning
from rosetta import trainer as trainer_lib


@dataclasses.dataclass
class RunSpec:
  """What `rosetta train` would build, read from its gin bindings."""
  model: Any
  optimizer: Any
  schedule: Any
  batch_size: int
  task_feature_lengths: dict
  num_microbatches: int = 1
  pack: bool = True
  seed: int = 0


def run_spec_from_gin() -> RunSpec:
  """The `train` bindings of the parsed gin config (references evaluated:
  the model and optimizer are built, which allocates nothing)."""
  import gin  # pylint: disable=import-outside-toplevel
  from rosetta.run import runs  # pylint: disable=import-outside-toplevel
  bindings = gin.get_bindings(runs.train)
  missing = [k for k in ('model', 'optimizer', 'batch_size',
                         'task_feature_lengths') if k not in bindings]
  if missing:
    raise ValueError(
        'the gin files bind no ' + ', '.join(f'train.{k}' for k in missing)
        + ' (include runs/train.gin and an experiment, or bind them)')
  return RunSpec(
      model=bindings['model'], optimizer=bindings['optimizer'],
      schedule=bindings.get('schedule'), batch_size=bindings['batch_size'],
      task_feature_lengths=dict(bindings['task_feature_lengths']),
      num_microbatches=bindings.get('num_microbatches', 1),
      pack=bindings.get('pack', True), seed=bindings.get('seed', 0))


def batch_shapes(model, task_feature_lengths: dict, batch_size: int,
                 pack: bool) -> dict[str, Any]:
  """{feature: (batch, ...)} as the model's feature converter emits them
  (a `jax.ShapeDtypeStruct` for a feature that is not integer)."""
  import seqio  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  converter_cls = getattr(model, 'FEATURE_CONVERTER_CLS',
                          seqio.EncDecFeatureConverter)
  converter = converter_cls(pack=pack)
  example = {}
  for name, spec in converter.TASK_FEATURES.items():
    if name not in task_feature_lengths:
      raise ValueError(f'train.task_feature_lengths has no {name!r} (the '
                       f"model's features: {sorted(converter.TASK_FEATURES)})")
    length = task_feature_lengths[name]
    shape = {0: [], 1: [length]}.get(spec.rank, [1] * (spec.rank - 1) +
                                     [length])
    example[name] = tf.fill(shape, tf.constant(3, spec.dtype))
  # Features the converter reads that are no task features (a reranker's
  # labels, a distilling dual encoder's teacher scores).
  extra = getattr(converter, 'extra_example_features', dict)()
  for name, spec in extra.items():
    example[name] = tf.zeros(spec.shape, spec.dtype)
  ds = converter(tf.data.Dataset.from_tensors(example).repeat(2),
                 task_feature_lengths)
  lengths = converter.get_model_feature_lengths(task_feature_lengths)
  shapes = {}
  for name, spec in ds.element_spec.items():
    dims = [d if d is not None else lengths[name] for d in spec.shape.as_list()]
    shape = (batch_size, *dims)
    # Integer features stay shapes (int32 in the step); others keep their
    # dtype (a reranker's float labels).
    shapes[name] = (shape if spec.dtype.is_integer else
                    jax.ShapeDtypeStruct(shape, spec.dtype.as_numpy_dtype))
  return shapes


def tokens_per_step(shapes: dict[str, tuple[int, ...]]) -> float:
  """The tokens of 6·N·tokens. Encoder-decoder: (input + target
  positions) / 2, since each input token passes through the encoder's half
  of N and each target token through the decoder's (with equal lengths
  this is the target count, the training MFU's convention; T5's 512 / 128
  pretraining shape would be undercounted 2.5x by targets alone).
  Encoder-only (a dual encoder's towers): every token position."""
  size = lambda s: np.prod(getattr(s, 'shape', s))
  if 'decoder_target_tokens' in shapes:
    return (size(shapes['encoder_input_tokens']) +
            size(shapes['decoder_target_tokens'])) / 2
  return float(sum(size(s) for k, s in shapes.items()
                   if k.endswith('_tokens')))


def build_trainer(spec: RunSpec, devices) -> trainer_lib.Trainer:
  """The run's Trainer over a mesh of `devices` (the gin `make_mesh`
  bindings choose its shape)."""
  mesh = partitioning.make_mesh(devices=devices)
  part = partitioning.Partitioner(mesh)
  return trainer_lib.Trainer(spec.model, part, spec.optimizer, spec.schedule,
                             num_microbatches=spec.num_microbatches,
                             seed=spec.seed)


def compile_train_step(trainer: trainer_lib.Trainer,
                       shapes: dict[str, tuple[int, ...]]):
  """The compiled train step (`jax.stages.Compiled`) for the target."""
  return trainer.lower_train_step(shapes).compile()


def compile_decode(trainer: trainer_lib.Trainer, batch_size: int,
                   input_length: int):
  """The model's default decoding (`predict_batch`: the whole loop, KV
  cache included) compiled for `batch_size` inputs of `input_length`, or
  None for a model that does not decode (a dual encoder)."""
  model = trainer.model
  if not hasattr(model, 'decode_options'):
    return None
  part = trainer.partitioner

  def decode(params, tokens):
    return model.predict_batch(trainer.network(params),
                               {'encoder_input_tokens': tokens})
  tokens = jax.ShapeDtypeStruct(
      (batch_size, input_length), jnp.int32,
      sharding=part.sharding(partitioning.BATCH_AXES))
  params = trainer.abstract_state['params']
  with part.activate():
    return jax.jit(decode).lower(params, tokens).compile()


def _matmul_flops(jaxpr) -> float:
  """2 x output elements x contracted size of every dot_general, scan
  bodies times their length, cond branches at their costliest."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape, dtype=np.float64) * \
          np.prod([lhs[i] for i in lhs_contract], dtype=np.float64)
    times = eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else 1
    inner = []
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(item, 'jaxpr', item)
        if hasattr(sub, 'eqns'):
          inner.append(_matmul_flops(sub))
    if inner:
      total += times * (max(inner) if eqn.primitive.name == 'cond'
                        else sum(inner))
  return total


def traced_matmul_flops(trainer: trainer_lib.Trainer,
                        shapes: dict[str, tuple[int, ...]]) -> float:
  """The matmul FLOPs of the whole train step as JAX traced it (all
  devices; rematerialised forward passes included, scanned layers times
  their depth). Independent of XLA's cost analysis, which counts a loop
  body once, including the loops it makes itself (windowed einsums over
  an FSDP axis)."""
  return _matmul_flops(trainer.trace_train_step(shapes).jaxpr.jaxpr)


def state_bytes_per_device(trainer: trainer_lib.Trainer) -> dict[str, int]:
  """{'params': B, 'opt_state': B}: the bytes of one device's shards."""
  out = {}
  for key in ('params', 'opt_state'):
    total = 0
    for leaf in jax.tree.leaves(trainer.abstract_state[key]):
      shard = leaf.sharding.shard_shape(leaf.shape)
      total += int(np.prod(shard)) * jnp.dtype(leaf.dtype).itemsize
    out[key] = total
  return out


def num_params(trainer: trainer_lib.Trainer) -> int:
  return int(sum(np.prod(x.shape) for x in
                 jax.tree.leaves(trainer.abstract_params)))
