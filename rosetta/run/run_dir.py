"""The run directory: what `rosetta train` writes, and the one way to open it.

    <run>/
      config.gin            the resolved gin config (never silently replaced)
      config.gin.<UTC>      an older config, kept when a resume changed it
      checkpoints/          orbax steps (`rosetta.checkpoint.manager`)
      train_metrics.jsonl   one JSON row per training step
      tb/                   TensorBoard event files
      <files the run needs> (its vocabulary, docid mapping, ...)

Every command that reads or writes a run goes through `RunDir`: train,
evaluate, infer, translate, average, query generation, embeddings and the
benchmarks. Paths inside the run are built here and nowhere else, and files
are written through `rosetta.run.files` (atomic, local or `gs://`).

    run = RunDir('runs/main')
    run.write_config(gin_text)                  # compare-or-write, all hosts
    ckpt = run.checkpointer(save_interval_steps=1000)
    loaded = run.load()                         # config + model + params
    loaded.network, loaded.model, loaded.step, loaded.task, loaded.vocabulary
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
from typing import Any, Sequence

import gin
import jax
from etils import epath
from jax.experimental import multihost_utils

from rosetta import gin_utils, optimizers, partitioning
from rosetta import trainable_params
from rosetta import trainer as trainer_lib
from rosetta.checkpoint import manager as checkpoints
from rosetta.run import files
from rosetta.run import param_sources

logger = logging.getLogger('rosetta.run.run_dir')

CONFIG = 'config.gin'
CHECKPOINTS = 'checkpoints'
TRAIN_METRICS = 'train_metrics.jsonl'
TENSORBOARD = 'tb'
# Lines of data files skipped under on_bad_line='skip' (rosetta.data.bad_input).
SKIPPED_INPUT = 'skipped_input.json'


ASSETS = 'assets'
ASSETS_INDEX = 'assets.json'
# gin binding -> the file this process's task setup read it from.
_ASSETS: dict[str, str] = {}
_READING_A_RUN = [False]


def register_asset(binding: str, path: str) -> None:
  """Task-setup code names a file a run needs to decode, by the gin binding
  that points at it (a vocabulary: 'nmt.setup.vocab_path'). Training copies
  it into `<run>/assets/`; a loaded run binds the copy, so a run directory
  moved or copied elsewhere decodes identically without the original."""
  _ASSETS[binding] = path


def reading_a_run() -> bool:
  """True while `RunDir.parse_config` sets up a saved run's tasks: setup
  code must then read files, never create them (a missing vocabulary
  retrained from whatever data is present decodes garbage)."""
  return _READING_A_RUN[0]


@gin.configurable
def task_setup(register_fns: Sequence = ()):
  """Runs task-registration functions named in gin before a run, e.g.
  `task_setup.register_fns = [@nmt.register_nmt_tasks]` (no parentheses:
  gin passes the configured function, called here). Tasks registered at
  import time (an `import` line in the gin file) need nothing here."""
  _ASSETS.clear()  # what this setup registers, not an earlier one's
  for fn in register_fns:
    fn()


@dataclasses.dataclass
class LoadedRun:
  model_dir: str
  step: int
  model: Any          # the wrapper (EncoderDecoderModel, DualEncoderModel)
  network: Any        # the nnx network with the checkpoint's parameters
  trainer: trainer_lib.Trainer
  task: str | None    # train.task of the run's config
  vocabulary: Any     # the task's 'inputs' vocabulary, when it has one


class RunDir:
  """One run directory (local or `gs://...`); see the module docstring."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)

  def __repr__(self) -> str:
    return f'RunDir({self.path!r})'

  def file(self, *parts: str) -> str:
    """A path inside the run, e.g. `run.file('spm.model')`."""
    return os.path.join(self.path, *parts)

  @property
  def config_path(self) -> str:
    return self.file(CONFIG)

  @property
  def checkpoints_path(self) -> str:
    return self.file(CHECKPOINTS)

  @property
  def train_metrics_path(self) -> str:
    return self.file(TRAIN_METRICS)

  @property
  def tensorboard_path(self) -> str:
    return self.file(TENSORBOARD)

  def exists(self, *parts: str) -> bool:
    return epath.Path(self.file(*parts)).exists()

  def create(self) -> 'RunDir':
    files.makedirs(self.path)
    return self

  def require(self) -> 'RunDir':
    """Raises unless this is a run directory of `rosetta train`."""
    if not self.exists(CONFIG):
      raise FileNotFoundError(f'{self.config_path}: not a run directory of '
                              '`rosetta train` (no config.gin)')
    return self

  def read_config(self) -> str:
    return epath.Path(self.require().config_path).read_text()

  # -------------------------------------------------------------- config ---

  def write_config(self, text: str, *, allow_change: bool = False,
                   filename: str = CONFIG) -> epath.Path:
    """Writes the resolved gin config, atomically.

    * No file yet: writes it.
    * Same content: no-op.
    * Different content: raises `FileExistsError` naming the existing file
      and `<filename>.new`, where the new text is written for `diff`; with
      `allow_change=True` the old file is kept as `<filename>.<UTC time>`,
      the new one takes its place, and a warning is logged.

    Every process compares; only process 0 writes. Returns the path.
    """
    directory = epath.Path(self.path)
    path = directory / filename
    old = path.read_text() if path.exists() else None
    if jax.process_count() > 1:  # everybody has read before anybody writes
      multihost_utils.sync_global_devices('rosetta.run_dir.config_read')
    writer = jax.process_index() == 0
    if old == text:
      return path
    if old is not None and not allow_change:
      new_path = directory / f'{filename}.new'
      if writer:
        files.atomic_write_text(new_path, text)
      diff = ''.join(list(difflib.unified_diff(
          old.splitlines(True), text.splitlines(True), str(path),
          str(new_path)))[:40])
      raise FileExistsError(
          f'{path} already holds a different run config; the new one is in '
          f'{new_path}. Resuming a run with a changed config must be '
          'explicit: pass allow_change=True (the old file is kept with a '
          f'timestamp) or use a new directory.\n{diff}')
    if writer:
      directory.mkdir(parents=True, exist_ok=True)
      if old is not None:  # copy, not rename: `path` never goes missing
        backup = directory / f'{filename}.{files.utc_stamp()}'
        files.atomic_write_text(backup, old)
        logger.warning('run config %s changed; the old one is kept as %s',
                       path, backup)
      files.atomic_write_text(path, text)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('rosetta.run_dir.config_written')
    return path

  def parse_config(self, register_fns: Sequence = ()) -> str:
    """Parses the run's config.gin into gin (not finalised) and registers
    its tasks: the config's own `task_setup.register_fns`, then
    `register_fns` (extra callables). Returns the config's path."""
    path = self.require().config_path
    gin_utils.parse_run_config(path)
    self.bind_assets()
    _READING_A_RUN[0] = True
    try:
      task_setup()
      for fn in register_fns:
        fn()
    finally:
      _READING_A_RUN[0] = False
    return path

  def save_assets(self) -> dict[str, str]:
    """Copies the files named by `register_asset` into `<run>/assets/` and
    indexes them in `assets.json` ({binding: relative path}); process 0
    writes. Returns the index."""
    index = {}
    for binding, source in sorted(_ASSETS.items()):
      name = f'{binding}{os.path.splitext(source)[1]}'
      index[binding] = f'{ASSETS}/{name}'
      target = self.file(ASSETS, name)
      if jax.process_index() or os.path.abspath(source) == target:
        continue
      data = epath.Path(source).read_bytes()   # gs:// too
      if epath.Path(target).exists():
        if epath.Path(target).read_bytes() == data:
          continue
        raise ValueError(
            f'{binding}: {source} differs from the copy the run was trained '
            f'with ({target}); use the run\'s copy or a new run directory')
      files.makedirs(self.file(ASSETS))
      with files.atomic_open(target, 'wb') as f:
        f.write(data)
    if index and not jax.process_index():
      files.atomic_write_json(self.file(ASSETS_INDEX), index)
    return index

  def bind_assets(self) -> None:
    """Binds each asset of `assets.json` to the run's own copy (see
    `register_asset`); a missing copy is an error naming it."""
    path = epath.Path(self.file(ASSETS_INDEX))
    if not path.exists():
      return  # a run from before assets were kept, or without any
    index = json.loads(path.read_text(encoding='utf-8'))
    for binding, relative in index.items():
      copy = self.file(relative)
      if not epath.Path(copy).exists():
        raise FileNotFoundError(
            f'{copy}: the run needs this file ({binding}) to decode and it '
            'is missing; copy it back from where the run was trained')
      gin.bind_parameter(binding, copy)

  # --------------------------------------------------------- checkpoints ---

  def checkpointer(self, **kwargs) -> checkpoints.Checkpointer:
    """The run's `Checkpointer` (kwargs as `Checkpointer`'s)."""
    return checkpoints.Checkpointer(self.checkpoints_path, **kwargs)

  def restore_for_inference(self, model, mesh=None, step: int | None = None,
                            overlays: Sequence[str] = ()):
    """(trainer, state with params only, step) of a checkpoint (default: the
    newest good one) for `model` on `mesh` (default: all devices on the
    data axis). The optimizer state is not read: inference does not care
    which optimizer trained the parameters.

    A run that froze parameters (`param_sources.json`) gets them from its
    source runs; the state holds the whole network's parameters either way.
    overlays: run folders whose own checkpoints replace the parameters they
    hold, e.g. another language's adapter (MAD-X zero-shot transfer).
    """
    mesh = mesh if mesh is not None else partitioning.make_mesh()
    part = partitioning.Partitioner(mesh)
    tr = trainer_lib.Trainer(model, part,
                             optimizers.make_optimizer('sgd', 1.0))
    record = param_sources.read(self.path)
    trainable = None if record is None else record.get('trainable')
    wanted = trainable_params.flatten(tr.abstract_state['params'])
    own = (set(wanted) if not trainable else
           trainable_params.select(tr.abstract_params, trainable,
                                   f'{self.file(param_sources.SOURCES_FILE)}'
                                   ' trainable'))
    target = trainable_params.unflatten({p: wanted[p] for p in own})
    ckpt = self.checkpointer(save_interval_steps=1, read_only=True)
    try:
      restored = ckpt.restore({'params': target}, step=step, partial=True)
    finally:
      ckpt.close()
    if restored is None:
      raise FileNotFoundError(f'{self.checkpoints_path}: no checkpoint to '
                              'restore')
    step, state, _ = restored
    params = trainable_params.flatten(state['params'])
    if trainable:
      frozen = {p: w for p, w in wanted.items() if p not in own}
      found = param_sources.load(record.get('sources', []), frozen)
      param_sources.missing(frozen, found, self.file(
          param_sources.SOURCES_FILE))
      params.update(found)
    for run in overlays:
      replaced = param_sources.own_params(
          run, param_sources.newest_step(run, 'overlay'), wanted)
      if not replaced:
        raise ValueError(f'overlay {run}: its checkpoint holds none of '
                         f"this network's parameters")
      params.update(replaced)
    return tr, {'params': trainable_params.unflatten(params)}, step

  def load(self, step: int | None = None, mesh=None,
           register_fns: Sequence = (),
           overlays: Sequence[str] = ()) -> LoadedRun:
    """The run back in memory: its config.gin parsed (tasks registered, gin
    imports done), the configured `train.model` built, the checkpoint's
    parameters loaded. Leaves gin configured with the run's config."""
    path = self.parse_config(register_fns)
    model = configured('train.model', path)
    tr, state, step = self.restore_for_inference(model, mesh, step,
                                                 overlays)
    task = _query_or_none('train.task')
    vocabulary = None
    if task is not None:
      import seqio  # pylint: disable=import-outside-toplevel
      features = seqio.get_mixture_or_task(task).output_features
      feature = features.get('inputs') or next(iter(features.values()), None)
      vocabulary = None if feature is None else feature.vocabulary
    return LoadedRun(self.path, int(step), model,
                     tr.network(state['params']), tr, task, vocabulary)


def load_run(model_dir: str, step: int | None = None, mesh=None,
             register_fns: Sequence = (),
             overlays: Sequence[str] = ()) -> LoadedRun:
  """`RunDir(model_dir).load(...)`."""
  return RunDir(model_dir).load(step, mesh, register_fns, overlays)


def configured(name: str, path: str):
  """The object a `train.X = @fn()` binding of the parsed run config
  (`path`, for messages) makes, e.g. the model wrapper or the optimizer."""
  ref = _query_or_none(name)
  if ref is None:
    raise ValueError(f'{path}: no {name} binding; not a config written by '
                     '`rosetta train`')
  if not (isinstance(ref, gin.config.ConfigurableReference) and ref.evaluate):
    raise ValueError(f'{path}: {name} must be bound to a configurable call '
                     'such as @encoder_decoder_model.EncoderDecoderModel(), '
                     f'got {ref!r}')
  return ref.scoped_configurable_fn()


def _query_or_none(name: str):
  try:
    return gin.query_parameter(name)
  except ValueError:
    return None


# Bindings of one invocation, not of the experiment: the process id differs
# between the hosts of one run, the coordinator and process count between
# restarts (resuming on another topology is supported), and budgets are
# how long this invocation trains. A resume may change them freely.
INVOCATION_BINDINGS = ('distributed.', 'train.stop_after_steps',
                       'train.time_budget_s', 'train.cpu_budget_s')


def run_config_text() -> str:
  """The resolved gin config minus the invocation's own bindings, so every
  host writes and compares the same, and a restart with another
  coordinator port or time budget is still the same run."""
  return '\n'.join(line for line in gin.config_str().splitlines()
                   if not line.startswith(INVOCATION_BINDINGS)) + '\n'
