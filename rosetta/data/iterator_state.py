"""The input iterator's own state in every checkpoint: resume in O(1).

`InputPipeline.state()` records how many batches were consumed; replaying
that many batches (re-reading and re-packing every skipped example) is
linear in the step, minutes to hours deep into a long run. So, as t5x's
`checkpoint_dataset`, each process also writes its tf.data iterator (the
read positions, shuffle and packing buffers, sampling RNG states) with
`tf.train.Checkpoint` into the checkpoint's step directory::

    <step>/input_iterator/process_<i>.index, process_<i>.data-00000-of-00001

The files are written by `IteratorHandler`, an orbax item of the same
composite save, so they commit (or not) atomically with the train state.
Restoring reads them back into a freshly built iterator of the same
stream; where they are missing or unreadable (an older checkpoint, a
dataset tf.data cannot checkpoint, another process count) the pipeline
falls back to replaying, which yields the same batches, only slower.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from etils import epath

logger = logging.getLogger(__name__)

ITEM = 'input_iterator'


def process_prefix(item_directory: epath.Path | str,
                   process_index: int | None = None) -> str:
  """This process's file prefix inside an `input_iterator` item."""
  index = jax.process_index() if process_index is None else process_index
  return str(epath.Path(item_directory) / f'process_{index}')


def exists(prefix: str) -> bool:
  return epath.Path(prefix + '.index').exists()


def save(iterator, prefix: str) -> None:
  """Writes a tf.data iterator's state (tf.train.Checkpoint) at `prefix`."""
  import tensorflow as tf
  tf.train.Checkpoint(iterator=iterator).write(prefix)


def restore(iterator, prefix: str) -> None:
  """Sets a fresh iterator of the same dataset to the state at `prefix`;
  raises if the files are missing, unreadable or of another dataset."""
  import tensorflow as tf
  tf.train.Checkpoint(iterator=iterator).read(prefix).assert_consumed()


def position(make_dataset: Callable[[], Any], batches_consumed: int,
             prefix: str | None) -> tuple[Any, str]:
  """A tf.data iterator positioned after `batches_consumed` elements, and
  how: 'iterator state' (read from `prefix`), 'replay' (skipping them:
  the fallback where `prefix` is None, missing or unreadable) or 'start'.

  `make_dataset()` must build a fresh dataset each call: iterating one
  dataset object twice reshuffles it, so a replay after a failed read
  needs its own.
  """
  if prefix is not None:
    iterator = iter(make_dataset())
    try:
      restore(iterator, prefix)
      logger.info('input pipeline: restored the iterator state at batch %d '
                  'from %s', batches_consumed, prefix)
      return iterator, 'iterator state'
    except Exception as e:  # missing or unreadable: replay instead
      logger.warning(
          'input pipeline: could not restore the iterator state from %s '
          '(%s: %s); replaying %d batches instead', prefix, type(e).__name__,
          str(e)[:300], batches_consumed)
  ds = make_dataset()
  if not batches_consumed:
    return iter(ds), 'start'
  logger.info('input pipeline: replaying %d batches', batches_consumed)
  return iter(ds.skip(batches_consumed)), 'replay'


@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
  """Save args of the `input_iterator` item: `saver(prefix)` writes this
  process's iterator state at `prefix` and returns whether it did."""
  saver: Callable[[str], bool]


@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
  """Restore args: the handler returns this process's prefix (or None;
  `Checkpointer.iterator_checkpoint`). The pipeline itself reads the files
  (`InputPipeline(iterator_checkpoint=)`), as only it can build the
  iterator they belong to."""


class IteratorHandler(ocp.CheckpointHandler):
  """Every process writes its own files (no cross-process data): a blocking
  save, run by orbax inside the composite save, so the state written is the
  iterator's position at `Checkpointer.save` time."""

  def save(self, directory: epath.Path, args: IteratorSave) -> None:
    args.saver(process_prefix(directory))

  def restore(self, directory: epath.Path,
              args: IteratorRestore | None = None) -> str | None:
    prefix = process_prefix(directory)
    return prefix if exists(prefix) else None


ocp.args.register_with_handler(IteratorHandler, for_save=True)(IteratorSave)
ocp.args.register_with_handler(IteratorHandler, for_restore=True)(
    IteratorRestore)
