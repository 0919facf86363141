"""Files a run writes, on local disk or in a bucket: the one atomic writer.

A multi-host run needs a run directory every host sees (`gs://...` on TPU
pods), so these helpers go through `etils.epath` (orbax's own path layer)
and never create a local folder named `gs:`. Writes are all-or-nothing:
locally a temp file then `os.replace`; in object stores a single object
write, which is atomic already.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import tempfile
from typing import IO, Iterator

from etils import epath


def is_remote(path) -> bool:
  return '://' in os.fspath(path)


def makedirs(path) -> epath.Path:
  p = epath.Path(path)
  p.mkdir(parents=True, exist_ok=True)
  return p


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def utc_stamp() -> str:
  """A UTC time for file names that sort in time order."""
  return datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y%m%dT%H%M%S.%fZ')


def is_temporary(name: str) -> bool:
  """Whether a file name is one of `atomic_path`'s temp files (left behind
  only by a process killed mid-write; safe to delete)."""
  return name.startswith('.') and '.tmp' in name


@contextlib.contextmanager
def atomic_path(path, suffix: str = '') -> Iterator[str]:
  """A temporary path beside `path` to write to; on success it is fsynced
  and renamed over `path` (mode 0666 less the umask, like `open`), on any
  failure removed, leaving `path` as it was.

      with atomic_path('index.faiss') as tmp:
        faiss.write_index(index, tmp)

  `suffix` keeps libraries that add an extension (`np.save` adds `.npy`)
  writing where the caller looks. Local paths only: object stores write
  whole objects already (see `atomic_open`)."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.',
                             suffix=f'.tmp{suffix}', dir=directory)
  os.close(fd)
  try:
    yield tmp
    with open(tmp, 'rb') as f:
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def atomic_open(path, mode: str = 'w') -> Iterator[IO]:
  """A file object whose contents replace `path` only if the block
  finishes: readers see the old file or the whole new one, never half.

      with atomic_open('table.json') as f:
        json.dump(results, f)

  Local paths: a temp file beside `path`, fsynced, renamed (see
  `atomic_path`). Remote paths (`gs://...`): buffered in memory and written
  as one object, which object stores make atomic."""
  if mode not in ('w', 'wb'):
    raise ValueError(f'atomic_open: mode must be "w" or "wb", got {mode!r}')
  if is_remote(path):
    buffer = io.StringIO() if mode == 'w' else io.BytesIO()
    yield buffer
    target = epath.Path(path)
    if mode == 'w':
      target.write_text(buffer.getvalue())
    else:
      target.write_bytes(buffer.getvalue())
    return
  with atomic_path(path) as tmp:
    kwargs = {'encoding': 'utf-8', 'newline': ''} if mode == 'w' else {}
    with open(tmp, mode, **kwargs) as f:
      yield f
      f.flush()


def atomic_write_text(path, text: str) -> epath.Path:
  """Writes `text` to `path` so that a reader sees old or new, never half."""
  with atomic_open(path, 'w') as f:
    f.write(text)
  return epath.Path(path)


def atomic_write_json(path, payload, **dump_kwargs) -> str:
  """`json.dump(payload)` to `path` through `atomic_open`."""
  with atomic_open(path, 'w') as f:
    json.dump(payload, f, **dump_kwargs)
  return os.fspath(path)


def write_jsonl_atomically(path, records) -> str:
  """One JSON object per line, all-or-nothing."""
  with atomic_open(path, 'w') as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + '\n')
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

  def keep(self, predicate) -> int:
    """Rewrites the file (atomically) with only the records for which
    `predicate(record)` holds, dropping a torn last line too; returns how
    many lines were dropped. A resumed run drops the rows of steps past
    its checkpoint, which it is about to log again."""
    if not self.path.exists():
      return 0
    lines = self.path.read_text(encoding='utf-8').splitlines(keepends=True)
    kept = []
    for line in lines:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a kill
      if predicate(record):
        kept.append(line if line.endswith('\n') else line + '\n')
    if len(kept) != len(lines):
      atomic_write_text(self.path, ''.join(kept))
      if self._lines is not None:
        self._lines = kept
    return len(lines) - len(kept)

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
