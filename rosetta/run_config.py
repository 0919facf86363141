"""The resolved gin config beside a run's checkpoints, never silently
overwritten (see `write_run_config`)."""

from __future__ import annotations

import datetime
import difflib
import logging
import os

import jax
from etils import epath
from jax.experimental import multihost_utils

from rosetta import run_files

logger = logging.getLogger('rosetta.checkpoints')


def _utc_stamp() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y%m%dT%H%M%S.%fZ')


_atomic_write_text = run_files.atomic_write_text


def write_run_config(directory: str | os.PathLike, text: str,
                     filename: str = 'config.gin', *,
                     allow_change: bool = False) -> epath.Path:
  """Writes the resolved gin config beside the checkpoints, atomically.

  * No file yet: writes it (temp file + `os.replace`).
  * Same content: no-op.
  * Different content: raises `FileExistsError` naming the existing file and
    `<filename>.new`, where the new text is written for `diff`; with
    `allow_change=True` the old file is kept as `<filename>.<UTC time>`, the
    new one takes its place, and a warning is logged.

  Every process compares; only process 0 writes. Returns the config's path.
  """
  directory = epath.Path(directory)
  path = directory / filename
  old = path.read_text() if path.exists() else None
  if jax.process_count() > 1:  # everybody has read before anybody writes
    multihost_utils.sync_global_devices('rosetta.checkpoints.config_read')
  writer = jax.process_index() == 0
  if old == text:
    return path
  if old is not None and not allow_change:
    new_path = directory / f'{filename}.new'
    if writer:
      _atomic_write_text(new_path, text)
    diff = ''.join(list(difflib.unified_diff(
        old.splitlines(True), text.splitlines(True), str(path),
        str(new_path)))[:40])
    raise FileExistsError(
        f'{path} already holds a different run config; the new one is in '
        f'{new_path}. Resuming a run with a changed config must be explicit: '
        f'pass allow_change=True (the old file is kept with a timestamp) or '
        f'use a new directory.\n{diff}')
  if writer:
    directory.mkdir(parents=True, exist_ok=True)
    if old is not None:  # copy, not rename: `path` never goes missing
      backup = directory / f'{filename}.{_utc_stamp()}'
      _atomic_write_text(backup, old)
      logger.warning('run config %s changed; the old one is kept as %s',
                     path, backup)
    _atomic_write_text(path, text)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('rosetta.checkpoints.config_written')
  return path
