"""Checkpoints: orbax CheckpointManager for the train state and the data position.

One `Checkpointer` per run directory. Every checkpoint is an orbax composite
step directory with two or three items::

    <directory>/
      1000/                       one committed step
        state/                    the train state pytree (StandardSave, OCDBT)
        data/                     {'format': ..., 'data_state': {...}} (JSON)
        input_iterator/           each process's tf.data iterator state
                                  (optional; `iterator_checkpoint.py`)
        _CHECKPOINT_METADATA
      2000/
      2000.orbax-checkpoint-tmp/  a save in progress (or one that was killed)
      1500.corrupt-20260101T120000Z/  a step that failed to restore, set aside

Usage, in a training loop::

    ckpt = Checkpointer(workdir, save_interval_steps=1000, keep_last=3,
                        keep_every=10_000)
    restored = ckpt.restore(abstract_state)          # None: nothing saved yet
    if restored is None:
      state, data_state = init_state(), {'batches_consumed': 0, 'seed': 0}
    else:
      step, state, data_state = restored
    with PreemptionGuard() as guard:
      for step in range(first_step, num_steps + 1):
        state = train_step(state, next(batches))
        stop = guard.should_stop(step)             # collective on multi-host
        ckpt.save(step, state, data_position(), force=stop)
        if stop:
          break
    ckpt.close()                                    # waits for the last save

Guarantees (and who provides them):

* **Atomic saves; nothing already written is lost.** Orbax writes each step
  into `<step>.orbax-checkpoint-tmp` and renames it to `<step>` only when
  every item and its metadata are on disk (on GCS, where rename is not atomic,
  it writes `commit_success.txt` last instead). A save killed half way leaves
  a tmp directory that orbax never lists as a step; `Checkpointer` removes
  such leftovers when it opens a directory for writing (orbax
  `cleanup_tmp_directories`). Old steps are deleted only by the keep policy,
  and only after the new step has committed: a failed save raises at the
  next `save()`, `wait()` or `close()` and deletes nothing.
* **Asynchronous saves.** `save()` blocks only while the arrays are copied to
  host memory; the write runs in a background thread. Once `save()` returns,
  the caller may donate or delete the device buffers (tested).
* **Keep policy.** The last `keep_last` checkpoints plus every checkpoint
  whose step is a multiple of `keep_every` (orbax `LatestN` OR `EveryNSteps`).
  Saving steps 1..10 with `keep_last=2, keep_every=4` keeps {4, 8, 9, 10}.
* **Resharding restore.** `restore(target)` takes a pytree of
  `jax.ShapeDtypeStruct` with `.sharding` (or concrete arrays, whose shape,
  dtype and sharding are used) and places every array directly on the
  target's shardings, so a run saved on a (data=8) mesh resumes on
  (data=4, model=2). A target leaf without a sharding is an error (orbax
  would silently reuse the *saved* sharding, i.e. the old mesh).
* **Corrupt newest checkpoint.** With `step=None`, a step that fails to
  restore (a truncated or missing file, broken metadata, a bad JSON item)
  is reported with a `logging` warning and a `CheckpointFallbackWarning`
  naming the step, the directory and the error, and the next older step is
  tried. When an older step restores, the bad newer ones are renamed to
  `<step>.corrupt-<UTC time>` (kept for inspection, never deleted): orbax
  refuses to save any step <= its latest step, so leaving them in place
  would silently skip every save until the run passed the bad step again.
  If no step restores, `CheckpointRestoreError` names the directory and
  every step tried with its error, and nothing is renamed (a wrong `target`
  fails on every step; it must not move checkpoints aside). To make any
  fallback fatal: `warnings.simplefilter('error', CheckpointFallbackWarning)`.
* **Empty directory.** `restore()` returns None when the directory holds no
  committed checkpoint (and logs it), so "restore or initialise" is one
  `if`; checkpoints that exist but cannot be read always raise.

Preemption: `PreemptionGuard` turns SIGTERM (and optionally SIGINT) into a
flag; `guard.should_stop(step)` is the same on every process, so all hosts
save the same step: on multi-host it uses JAX's preemption service
(`reached_preemption_sync_point`) when `jax.distributed` runs it, else a
`process_allgather` of the flags. The caller saves with `force=True`, and
`close()` (or `wait()`) blocks until the save has committed before the
process exits.

Multi-host: create the `Checkpointer` and call `save`/`restore`/`wait` on
every process (orbax synchronises them); `write_run_config` compares on every
process and writes on process 0 only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import warnings
from typing import Any, Callable, Iterable, Sequence

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

# The run config lives in its own module; re-exported for callers.
from rosetta.data import iterator_state as iterator_checkpoint
from rosetta.run import files

logger = logging.getLogger(__name__)

PyTree = Any

# Format tag of the 'data' item; bump it if the layout of that item changes.
_DATA_FORMAT = 'rosetta.data_state/1'
_STATE_ITEM = 'state'
_DATA_ITEM = 'data'
# Orbax's marker for an uncommitted step directory (orbax 0.12.8:
# `<step>.orbax-checkpoint-tmp`, see orbax/checkpoint/_src/path/atomicity.py).
TMP_DIR_MARKER = '.orbax-checkpoint-tmp'
CORRUPT_MARKER = '.corrupt-'


class CheckpointRestoreError(RuntimeError):
  """Checkpoints exist but none of them could be restored."""


class CheckpointFallbackWarning(UserWarning):
  """The newest checkpoint was unreadable; an older one was restored."""


def _short(e: BaseException, limit: int = 400) -> str:
  msg = f'{type(e).__name__}: {e}'
  return msg if len(msg) <= limit else msg[:limit] + ' ...'


def _all_processes_agree(ok: bool) -> bool:
  """True on every process iff `ok` on every process (no-op on one host)."""
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.asarray([int(ok)], np.int32))
  return bool(np.min(flags))


def _any_process(flag: bool) -> bool:
  """True on every process iff `flag` on some process (no-op on one host)."""
  if jax.process_count() == 1:
    return flag
  flags = multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))
  return bool(np.max(flags))


# ------------------------------------------------------------- targets ---


def abstract_target(tree: PyTree) -> PyTree:
  """A pytree of `jax.ShapeDtypeStruct` (with `.sharding`) for `restore`.

  Accepts `jax.ShapeDtypeStruct`s that carry a sharding and placed
  `jax.Array`s (their shape, dtype and sharding are taken). Anything else,
  or a struct without a sharding, raises: orbax would otherwise restore that
  array with the sharding it was *saved* with, i.e. onto the old mesh.
  """
  problems: list[str] = []

  def convert(path, x):
    name = jax.tree_util.keystr(path) or '<root>'
    if isinstance(x, jax.ShapeDtypeStruct):
      if x.sharding is None:
        problems.append(f'{name}: ShapeDtypeStruct without a sharding')
      return x
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    problems.append(f'{name}: {type(x).__name__} is not a jax.Array or '
                    'jax.ShapeDtypeStruct')
    return x

  out = jax.tree_util.tree_map_with_path(convert, tree)
  if problems:
    raise ValueError(
        'restore target: every leaf must be a placed jax.Array or a '
        'jax.ShapeDtypeStruct with .sharding (e.g. NamedSharding on the new '
        'mesh); found:\n  ' + '\n  '.join(problems[:20]) +
        (f'\n  ... and {len(problems) - 20} more' if len(problems) > 20
         else ''))
  return out


# ---------------------------------------------------------- Checkpointer ---


class _DropReadOnlyNotices(logging.Filter):
  """orbax warns that a read-only manager is read-only (twice, on every
  restore for inference); Rosetta asked for exactly that."""

  def filter(self, record):
    msg = str(record.msg)
    return not (msg.startswith('CheckpointManagerOptions.read_only=True')
                or msg.startswith('Given directory is read only'))


@contextlib.contextmanager
def _without_read_only_notices():
  quiet = _DropReadOnlyNotices()
  absl_logger = logging.getLogger('absl')
  absl_logger.addFilter(quiet)
  try:
    yield
  finally:
    absl_logger.removeFilter(quiet)


@gin.configurable(denylist=['directory'])
class Checkpointer:
  """Saves and restores `(step, train state, data position)` in `directory`.

  Args:
    directory: the run's checkpoint directory (local path or gs://...).
    save_interval_steps: `save(step, ...)` writes when `step % N == 0` (or
      `force=True`, or JAX reports a preemption sync point).
    keep_last: keep the newest K checkpoints (None: keep all).
    keep_every: also keep every checkpoint whose step is a multiple of M
      (None: none extra). Must be a multiple of `save_interval_steps`, or the
      kept steps would be the multiples of their least common multiple.
    async_save: write in a background thread (`save` returns after the
      device-to-host copy).
    read_only: for evaluators and notebooks: never write, delete or rename
      anything in `directory` (and skip the cleanup of leftover tmp dirs,
      which could belong to a trainer that is saving right now).
  """

  def __init__(self, directory: str | os.PathLike, *,
               save_interval_steps: int,
               keep_last: int | None = None,
               keep_every: int | None = None,
               async_save: bool = True,
               read_only: bool = False):
    if save_interval_steps < 1:
      raise ValueError(f'save_interval_steps must be >= 1, got '
                       f'{save_interval_steps}')
    if keep_last is not None and keep_last < 1:
      raise ValueError(f'keep_last must be None (keep all) or >= 1, got '
                       f'{keep_last}')
    if keep_every is not None:
      if keep_every < 1:
        raise ValueError(f'keep_every must be None or >= 1, got {keep_every}')
      if keep_every % save_interval_steps:
        raise ValueError(
            f'keep_every={keep_every} is not a multiple of save_interval_steps'
            f'={save_interval_steps}: only steps that are multiples of both '
            'would be kept; choose keep_every = k * save_interval_steps')
    directory = os.fspath(directory)
    if '://' not in directory:
      # orbax refuses relative paths at the first save ("Checkpoint path
      # should be absolute"), e.g. `--gin.train.model_dir="'runs/tiny'"`.
      directory = os.path.abspath(directory)
    self._directory = epath.Path(directory)
    self._read_only = read_only
    self.save_interval_steps = save_interval_steps
    self.keep_last = keep_last
    self.keep_every = keep_every

    if not read_only:
      self._report_leftover_tmp_dirs()
    cm = ocp.checkpoint_managers
    keep = [cm.LatestN(n=keep_last)]
    if keep_every is not None:
      keep.append(cm.EveryNSteps(interval_steps=keep_every))
    with _without_read_only_notices():
      options = ocp.CheckpointManagerOptions(
          save_decision_policy=cm.AnySavePolicy([
              cm.FixedIntervalPolicy(save_interval_steps),
              cm.PreemptionCheckpointingPolicy(),
          ]),
          preservation_policy=cm.AnyPreservationPolicy(keep),
          enable_async_checkpointing=async_save,
          cleanup_tmp_directories=not read_only,
          read_only=read_only,
          create=not read_only,
      )
      self._mgr = ocp.CheckpointManager(self._directory, options=options)

  # -- bookkeeping -------------------------------------------------------

  @property
  def directory(self) -> epath.Path:
    return self._directory

  def all_steps(self) -> list[int]:
    """Committed steps, ascending (plus a save in flight in this process)."""
    return sorted(self._mgr.all_steps())

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def saved_arrays(self, step: int) -> dict[str, tuple[tuple, str]]:
    """{'/'-joined path: (shape, dtype)} of the state saved at `step`,
    from orbax's metadata (no array is read)."""
    item = epath.Path(self._directory) / str(int(step)) / _STATE_ITEM
    with ocp.PyTreeCheckpointer() as reader:
      tree = reader.metadata(item).item_metadata.tree
    out = {}
    for path, meta in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k)))
                      for k in path)
      out[name] = (tuple(meta.shape), str(meta.dtype))
    return out

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` without `force` would write."""
    return self._mgr.should_save(int(step))

  def wait(self) -> None:
    """Blocks until the save in flight has committed; raises its error."""
    self._mgr.wait_until_finished()

  def close(self) -> None:
    """Waits for the save in flight, then releases orbax's threads."""
    self._mgr.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _report_leftover_tmp_dirs(self) -> None:
    if not self._directory.exists():
      return
    leftovers = sorted(p.name for p in self._directory.iterdir()
                       if TMP_DIR_MARKER in p.name)
    if leftovers:
      logger.warning(
          'checkpoint directory %s holds %d uncommitted checkpoint(s) from an '
          'interrupted save: %s; they are not restorable and are removed',
          self._directory, len(leftovers), ', '.join(leftovers))

  # -- save --------------------------------------------------------------

  def save(self, step: int, state: PyTree, data_state: dict | None = None,
           force: bool = False, *,
           iterator_saver: Callable[[str], bool] | None = None) -> bool:
    """Saves `state` and `data_state` as checkpoint `step` if it is due.

    Due means `step % save_interval_steps == 0`, or `force=True`, or a JAX
    preemption sync point. A step that is already saved is never
    overwritten (returns False). Returns whether a save was started; with
    `async_save` it commits in the background (see `wait`).

    `data_state` must be JSON-serialisable (the input pipeline's position,
    e.g. `{'batches_consumed': 12, 'seed': 0}`); it is checked here, not in
    the background thread. `iterator_saver(prefix)`, if given, writes this
    process's input iterator state (`InputPipeline.save_iterator`) into the
    same step, before `save` returns (`rosetta/data/iterator_state.py`).
    """
    step = int(step)
    if self._read_only:
      raise RuntimeError(f'Checkpointer({self._directory}) is read_only; '
                         f'refusing to save step {step}')
    try:
      json.dumps(data_state, allow_nan=False)
    except (TypeError, ValueError) as e:
      raise TypeError(
          f'data_state for step {step} is not JSON-serialisable ({e}); use '
          'plain int/float/str/bool/list/dict (convert numpy scalars with '
          'int()/float())') from e
    if not force and not self._mgr.should_save(step):
      return False
    if step in self._mgr.all_steps():
      logger.info('checkpoint step %d already exists in %s; not saving it '
                  'again', step, self._directory)
      return False
    items = {
        _STATE_ITEM: ocp.args.StandardSave(state),
        _DATA_ITEM: ocp.args.JsonSave(
            {'format': _DATA_FORMAT, 'data_state': data_state}),
    }
    if iterator_saver is not None:
      items[iterator_checkpoint.ITEM] = iterator_checkpoint.IteratorSave(
          iterator_saver)
    saved = self._mgr.save(step, args=ocp.args.Composite(**items), force=True)
    if saved:
      logger.info('checkpoint step %d: save started in %s', step,
                  self._directory)
    return saved

  # -- restore -----------------------------------------------------------

  def iterator_checkpoint(self, step: int) -> str | None:
    """This process's input iterator state in checkpoint `step` (a
    tf.train.Checkpoint prefix for `InputPipeline(iterator_checkpoint=)`),
    or None where the step holds none (saved without `iterator_saver`, or
    by a run with fewer processes). Found through orbax (the item's
    handler), which owns the step directories' naming."""
    try:
      out = self._mgr.restore(int(step), args=ocp.args.Composite(**{
          iterator_checkpoint.ITEM: iterator_checkpoint.IteratorRestore()}))
    except KeyError:  # orbax: 'Item "input_iterator" was not found ...'
      return None
    return out[iterator_checkpoint.ITEM]

  def _restore_step(self, step: int, target: PyTree,
                    partial: bool = False) -> tuple[PyTree, Any]:
    state_args = (
        ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)
        if partial else ocp.args.StandardRestore(target))
    args = ocp.args.Composite(**{
        _STATE_ITEM: state_args,
        _DATA_ITEM: ocp.args.JsonRestore(),
    })
    out = self._mgr.restore(step, args=args)
    data = out[_DATA_ITEM]
    if not isinstance(data, dict) or data.get('format') != _DATA_FORMAT:
      raise ValueError(f'item {_DATA_ITEM!r} of step {step} is not a '
                       f'{_DATA_FORMAT} record: {str(data)[:200]}')
    return out[_STATE_ITEM], data['data_state']

  def restore(self, target: PyTree, step: int | None = None, *,
              partial: bool = False) -> tuple[int, PyTree, Any] | None:
    """Restores `(step, state, data_state)` onto the shardings of `target`.

    Args:
      target: pytree like the saved state, of `jax.ShapeDtypeStruct`s with
        `.sharding` or of placed `jax.Array`s (see `abstract_target`).
      step: a specific step (its errors are raised as they are), or None for
        the newest step that restores (see the module docstring).
      partial: restore only the subtree present in `target` (e.g.
        `{'params': ...}` for evaluation, whatever optimizer trained it).

    Returns:
      `(step, state, data_state)`, or None if `step` is None and the
      directory holds no committed checkpoint.

    Raises:
      CheckpointRestoreError: checkpoints exist but none could be restored.
    """
    target = abstract_target(target)
    self._mgr.wait_until_finished()
    self._mgr.reload()
    if step is not None:
      step = int(step)
      try:
        state, data_state = self._restore_step(step, target, partial)
      except Exception as e:
        raise CheckpointRestoreError(
            f'could not restore checkpoint step {step} from '
            f'{self._directory}: {_short(e, 2000)}') from e
      latest = self._mgr.latest_step()
      if not self._read_only and latest is not None and step < latest:
        logger.warning(
            'restored step %d but %s holds steps up to %d: saves of steps '
            '<= %d will be skipped (orbax never overwrites a step); to branch '
            'from step %d, continue in a new directory', step,
            self._directory, latest, latest, step)
      return step, state, data_state

    steps = sorted(self._mgr.all_steps(), reverse=True)
    if not steps:
      logger.info('no checkpoint in %s; nothing to restore', self._directory)
      return None
    failures: list[tuple[int, BaseException]] = []
    for s in steps:
      try:
        state, data_state = self._restore_step(s, target, partial)
        ok = True
      except Exception as e:  # any failure: try the next older step
        ok, state, data_state = False, None, None
        error: BaseException = e
      if not _all_processes_agree(ok):
        if ok:
          error = RuntimeError('restored on this process but failed on '
                               'another process')
        failures.append((s, error))
        msg = (f'checkpoint step {s} in {self._directory} could not be '
               f'restored ({_short(error)}); trying an older checkpoint')
        logger.warning('%s', msg)
        warnings.warn(msg, CheckpointFallbackWarning, stacklevel=2)
        continue
      if failures:
        self._set_aside([f for f, _ in failures], restored=s)
      logger.info('restored checkpoint step %d from %s', s, self._directory)
      return s, state, data_state
    details = '\n'.join(f'  step {s}: {_short(e, 1000)}' for s, e in failures)
    raise CheckpointRestoreError(
        f'none of the checkpoints in {self._directory} could be restored '
        f'(tried steps {steps}, newest first):\n{details}')

  def _set_aside(self, bad_steps: Sequence[int], restored: int) -> None:
    """Renames unreadable steps newer than `restored` out of orbax's sight."""
    msg = (f'restored checkpoint step {restored} from {self._directory} '
           'instead of the newer unreadable '
           + ', '.join(f'step {s}' for s in bad_steps))
    if self._read_only:
      logger.warning('%s (read_only: left in place)', msg)
      warnings.warn(msg, CheckpointFallbackWarning, stacklevel=3)
      return
    moved = []
    if jax.process_index() == 0:
      stamp = files.utc_stamp()
      for s in bad_steps:
        src = self._directory / str(s)
        dst = self._directory / f'{s}{CORRUPT_MARKER}{stamp}'
        try:
          src.rename(dst)
          moved.append(dst.name)
        except Exception as e:  # pylint: disable=broad-except
          logger.warning(
              'could not rename unreadable checkpoint %s to %s (%s); orbax '
              'will skip saves until the run passes step %d', src, dst,
              _short(e), s)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('rosetta.checkpoint.manager.set_aside')
    self._mgr.reload()
    full = f'{msg}; renamed to {moved} (kept for inspection, not deleted)'
    logger.warning('%s', full)
    warnings.warn(full, CheckpointFallbackWarning, stacklevel=3)


# --------------------------------------------------------- preemption ---


def _jax_preemption_service_running() -> bool:
  """Whether `jax.distributed` runs JAX's preemption sync manager.

  That service installs its own (C++) SIGTERM notifier and agrees on a safe
  step across processes (`multihost_utils.reached_preemption_sync_point`).
  A Python SIGTERM handler would replace that notifier, so the guard leaves
  SIGTERM to it. (Private attribute; if JAX moves it we fall back to our own
  handler plus `process_allgather`, which is also correct.)
  """
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    state = distributed.global_state
    return (state.client is not None and
            getattr(state, 'preemption_sync_manager', None) is not None)
  except (ImportError, AttributeError):
    return False


class PreemptionGuard:
  """Turns SIGTERM (and optionally SIGINT) into a stop request the loop polls.

  Single process: the handler only sets `requested`; the loop calls
  `should_stop(step)` once per step and, when it is True, saves with
  `force=True`, waits and exits. The previous handlers are restored on exit.
  Must be entered in the main thread (Python delivers signals there).

  Multi-host (`jax.process_count() > 1`): `should_stop` is collective, every
  process must call it at every step, and it returns the same value on all
  of them, so all processes save the same step:

  * when `jax.distributed` runs JAX's preemption service (the default), the
    guard does not touch SIGTERM (a Python handler would silently replace
    JAX's notifier) and uses `multihost_utils.reached_preemption_sync_point`,
    which costs no collective per step;
  * otherwise (service disabled, or SIGINT) each process's flag is ORed over
    all processes with a `process_allgather` of one int every `sync_every`
    steps.

  With `sigint=True`, a first Ctrl-C asks for a save-and-stop and a second
  one raises KeyboardInterrupt as usual.
  """

  def __init__(self, signals: Iterable[int] = (signal.SIGTERM,), *,
               sigint: bool = False, sync_every: int = 1):
    if sync_every < 1:
      raise ValueError(f'sync_every must be >= 1, got {sync_every}')
    sigs = list(signals)
    if sigint and signal.SIGINT not in sigs:
      sigs.append(signal.SIGINT)
    self._signals = tuple(sigs)
    self._sync_every = sync_every
    self._previous: dict[int, Any] = {}
    self._requested = False
    self._use_jax_service = False
    self.signal_name: str | None = None
    self._reported = False

  @property
  def requested(self) -> bool:
    """A signal handled by this guard reached *this* process."""
    return self._requested

  def _handle(self, signum, frame) -> None:
    del frame
    if self._requested and signum == signal.SIGINT:
      raise KeyboardInterrupt  # second Ctrl-C: stop now
    self._requested = True
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name

  def __enter__(self) -> 'PreemptionGuard':
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError('PreemptionGuard must be entered in the main thread')
    self._use_jax_service = (jax.process_count() > 1 and
                             _jax_preemption_service_running())
    for sig in self._signals:
      if sig == signal.SIGTERM and self._use_jax_service:
        logger.info('PreemptionGuard: SIGTERM is left to JAX\'s preemption '
                    'service (reached_preemption_sync_point)')
        continue
      self._previous[sig] = signal.getsignal(sig)
      signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      # None: the previous handler was not installed from Python; the
      # default is the closest we can restore.
      signal.signal(sig, signal.SIG_DFL if previous is None else previous)
    self._previous.clear()

  def should_stop(self, step: int) -> bool:
    """True when the loop should save now and exit (same on every process)."""
    step = int(step)
    stop = self._requested
    if jax.process_count() > 1:
      stop = False
      if self._previous and step % self._sync_every == 0:
        stop = _any_process(self._requested)
      if self._use_jax_service:
        try:
          if multihost_utils.reached_preemption_sync_point(step):
            stop = True
            self.signal_name = self.signal_name or 'JAX preemption notice'
        except RuntimeError:  # service shut down
          pass
    if stop and not self._reported:
      self._reported = True
      logger.warning('preemption requested (%s); stopping at step %d',
                     self.signal_name or 'signal on another process', step)
    return stop
