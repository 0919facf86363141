"""Malformed lines in data files: one policy, one error type, one count.

Every reader of user files (TSV, Moses pairs, JSONL, BEIR, MS MARCO) checks
each line and, on a bad one, calls `handle(policy, path, line, reason)`:

  'error' (the default)  raises `BadInputError('train.tsv:17: expected 2
                         tab-separated columns, found 3')`;
  'skip'                 drops the line and counts it in `SKIPPED`, which
                         logs the first few per file; training writes its
                         `report()` into the run directory
                         (`skipped_input.json`), so nothing is dropped
                         silently.

Readers that run inside tf.data (through `tf.numpy_function`) cannot raise
a Python exception through TensorFlow: TF turns it into an `OpError` whose
message is a traceback. `handle` therefore also remembers the error, and
`reraise(op_error)` replaces the TF error by the original one where the
pipeline meets it.
"""
from __future__ import annotations

import collections
import re
import threading
from typing import Any

from absl import logging

POLICIES = ('error', 'skip')
# Lines logged one by one per file before only the totals are kept.
_LOGGED_PER_FILE = 5
# (file, line) pairs remembered so that a skipped line read again in a later
# epoch is not counted twice; past this many, new lines count without check.
_REMEMBERED_LINES = 1_000_000


class BadInputError(ValueError):
  """A malformed line: `str()` is 'path:line: reason' (line 0: the file)."""

  def __init__(self, path: str, line: int, reason: str):
    self.path, self.line, self.reason = path, line, reason
    where = f'{path}:{line}' if line else path
    super().__init__(f'{where}: {reason}')


def decode(path: str, line: int, raw: bytes) -> str:
  """UTF-8 text of a line; a `BadInputError` naming file and line if not."""
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise BadInputError(
        path, line, f'not valid UTF-8 ({e.reason} at byte {e.start}: '
        f'{raw[max(0, e.start - 10):e.start + 10]!r})') from None


def check_policy(policy: str, field: str = 'on_bad_line') -> str:
  if policy not in POLICIES:
    raise ValueError(f'{field}={policy!r}: expected one of {POLICIES}')
  return policy


class SkipLog:
  """Thread-safe counts of skipped lines by file and reason."""

  def __init__(self):
    self._lock = threading.Lock()
    self._counts: dict[str, collections.Counter] = {}
    self._seen: set[tuple[str, int]] = set()
    self._examples: list[str] = []

  def record(self, path: str, line: int, reason: str) -> None:
    with self._lock:
      key = (path, line)
      if key in self._seen:
        return
      if len(self._seen) < _REMEMBERED_LINES:
        self._seen.add(key)
      counts = self._counts.setdefault(path, collections.Counter())
      counts[reason] += 1
      n = sum(counts.values())
      if len(self._examples) < 20:
        self._examples.append(f'{path}:{line}: {reason}')
    if n <= _LOGGED_PER_FILE:
      logging.warning('skipped %s:%d: %s (on_bad_line=skip)', path, line,
                      reason)
    elif n == _LOGGED_PER_FILE + 1:
      logging.warning('skipping more bad lines of %s; totals are written to '
                      'the run directory', path)

  def total(self) -> int:
    with self._lock:
      return sum(sum(c.values()) for c in self._counts.values())

  def report(self) -> dict[str, Any]:
    """{'skipped': n, 'files': {path: {reason: n}}, 'examples': [...]}."""
    with self._lock:
      return {'skipped': sum(sum(c.values()) for c in self._counts.values()),
              'files': {p: dict(c) for p, c in sorted(self._counts.items())},
              'examples': list(self._examples)}

  def clear(self) -> None:
    with self._lock:
      self._counts.clear()
      self._seen.clear()
      self._examples.clear()


SKIPPED = SkipLog()
# The latest error raised inside tf.data (numpy_function runs on TF's threads).
_LAST: list[BadInputError | None] = [None]


def handle(policy: str, path: str, line: int, reason: str) -> None:
  """Raises `BadInputError` under 'error'; records the skip under 'skip'."""
  if policy == 'skip':
    SKIPPED.record(path, line, reason)
    return
  error = BadInputError(path, line, reason)
  _LAST[0] = error
  raise error


def reraise(op_error: Exception) -> None:
  """Raises the `BadInputError` behind a TensorFlow error (an assertion
  carrying its text); returns if there is none (the caller re-raises)."""
  error, _LAST[0] = _LAST[0], None
  found = re.search(r'assertion failed: \[(.+?)\]\n', str(op_error) + '\n',
                    re.S)
  if not found:
    return
  # TensorFlow prints the message with quotes and backslashes escaped.
  text = found.group(1).replace("\\'", "'").replace('\\\\', '\\')
  if error is not None and str(error) == text:
    raise error from None
  raise ValueError(text) from None
