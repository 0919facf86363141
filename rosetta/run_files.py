"""Files a run writes beside its checkpoints, on local disk or in a bucket.

A multi-host run needs a run directory every host sees (`gs://...` on TPU
pods), so these helpers go through `etils.epath` (orbax's own path layer)
and never create a local folder named `gs:`. Writes are all-or-nothing:
locally a temp file then `os.replace`; in object stores a single object
write, which is atomic already.
"""

from __future__ import annotations

import json
import os
import tempfile

from etils import epath


def is_remote(path) -> bool:
  return '://' in os.fspath(path)


def makedirs(path) -> epath.Path:
  p = epath.Path(path)
  p.mkdir(parents=True, exist_ok=True)
  return p


def atomic_write_text(path, text: str) -> epath.Path:
  """Writes `text` to `path` so that a reader sees old or new, never half."""
  path = epath.Path(path)
  if is_remote(path):
    path.write_text(text)
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                             dir=os.fspath(path.parent))
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.fspath(path))
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_jsonl_atomically(path, records) -> str:
  """One JSON object per line, all-or-nothing."""
  text = ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in records)
  atomic_write_text(path, text)
  return os.fspath(path)


class JsonlAppender:
  """Appends JSON lines durably. Object stores cannot append, so there the
  whole file is rewritten (one atomic object write per call); metrics are
  appended at log steps, not every step, so that stays cheap."""

  def __init__(self, path, *, rewrite: bool | None = None):
    """rewrite: rewrite the whole file per append (default: remote paths)."""
    self.path = epath.Path(path)
    self._lines = None
    if is_remote(self.path) if rewrite is None else rewrite:
      self._lines = (self.path.read_text().splitlines(keepends=True)
                     if self.path.exists() else [])

  def append(self, record: dict) -> None:
    line = json.dumps(record) + '\n'
    if self._lines is not None:
      self._lines.append(line)
      self.path.write_text(''.join(self._lines))
      return
    with open(os.fspath(self.path), 'a', encoding='utf-8') as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())
