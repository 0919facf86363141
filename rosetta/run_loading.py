"""Loading what `rosetta train` wrote: parameters for inference, or a whole
run (its gin config, task, model and network) for notebooks and tools.

    run = run_loading.load_run('runs/main')         # newest good checkpoint
    run.network, run.model, run.step, run.task, run.vocabulary
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import gin

from rosetta import checkpoints, gin_utils, optimizers, partitioning
from rosetta import trainer as trainer_lib


def restore_for_inference(model_dir: str, model, mesh=None,
                          step: int | None = None):
  """(trainer, state with params only, step) of a run's checkpoint (default:
  the newest good one) for `model` on `mesh` (default: all devices on the
  data axis). The optimizer state is not read: evaluation does not care
  which optimizer trained the parameters."""
  mesh = mesh if mesh is not None else partitioning.make_mesh()
  part = partitioning.Partitioner(mesh)
  tr = trainer_lib.Trainer(model, part, optimizers.make_optimizer('sgd',
                                                                  1.0))
  ckpt = checkpoints.Checkpointer(os.path.join(model_dir, 'checkpoints'),
                                  save_interval_steps=1, read_only=True)
  restored = ckpt.restore({'params': tr.abstract_state['params']}, step=step,
                          partial=True)
  if restored is None:
    raise FileNotFoundError(f'{model_dir}/checkpoints: no checkpoint to '
                            'restore')
  step, state, _ = restored
  ckpt.close()
  return tr, state, step


@dataclasses.dataclass
class LoadedRun:
  model_dir: str
  step: int
  model: Any          # the wrapper (EncoderDecoderModel, DualEncoderModel)
  network: Any        # the nnx network with the checkpoint's parameters
  trainer: trainer_lib.Trainer
  task: str | None    # train.task of the run's config
  vocabulary: Any     # the task's 'inputs' vocabulary, when it has one


def load_run(model_dir: str, step: int | None = None, mesh=None,
             register_fns=()) -> LoadedRun:
  """A run directory of `rosetta train` back in memory: its saved
  `config.gin` is parsed (tasks registered, gin imports done), the
  configured `train.model` built, and the checkpoint's parameters loaded.
  register_fns: extra task-registering callables (see `runs.task_setup`).
  Leaves gin configured with the run's config."""
  from rosetta import runs  # pylint: disable=import-outside-toplevel
  path = os.path.join(model_dir, 'config.gin')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: not a run directory of `rosetta '
                            'train` (no config.gin)')
  gin_utils.parse([path], finalize=False)
  runs.task_setup(register_fns)
  model = configured('train.model', path)
  tr, state, step = restore_for_inference(model_dir, model, mesh, step)
  task = _query_or_none('train.task')
  vocabulary = None
  if task is not None:
    import seqio  # pylint: disable=import-outside-toplevel
    features = seqio.get_mixture_or_task(task).output_features
    feature = features.get('inputs') or next(iter(features.values()), None)
    vocabulary = None if feature is None else feature.vocabulary
  return LoadedRun(model_dir, int(step), model, tr.network(state['params']),
                   tr, task, vocabulary)


def configured(name: str, path: str):
  """The object a `train.X = @fn()` binding of the parsed run config
  (`path`, for messages) makes, e.g. the model wrapper or the optimizer."""
  ref = _query_or_none(name)
  if ref is None:
    raise ValueError(f'{path}: no {name} binding; not a config written by '
                     '`rosetta train`')
  if not (isinstance(ref, gin.config.ConfigurableReference) and ref.evaluate):
    raise ValueError(f'{path}: {name} must be bound to a configurable call '
                     f'such as @models.EncoderDecoderModel(), got {ref!r}')
  return ref.scoped_configurable_fn()


def _query_or_none(name: str):
  try:
    return gin.query_parameter(name)
  except ValueError:
    return None
