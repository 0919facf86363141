"""Native (C++) log noise of third-party libraries, kept off the console.

Two sources write straight to file descriptor 2, past Python's logging:

* TensorFlow's import banner (oneDNN, CUDA drivers, "All log messages
  before absl::InitializeLog()"): TensorFlow 2.21 no longer honours
  `TF_CPP_MIN_LOG_LEVEL` for these.
* tensorflow-text's copy of SentencePiece, one "precompiled_charsmap is
  empty" INFO line per tokenizer kernel: Rosetta's vocabularies use the
  identity normalisation on purpose (rosetta/vocab.py), and the line cannot
  be turned off from Python (the `sentencepiece` package's
  `set_min_log_level` reaches only its own copy).

`quiet_native_stderr()` points descriptor 2 at /dev/null for a short,
known window (importing TensorFlow, starting a tf.data iterator). Python
exceptions raised inside still propagate and are printed after it;
`ROSETTA_NATIVE_LOGS=1` keeps everything.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

KEEP_ENV = 'ROSETTA_NATIVE_LOGS'


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
  if os.environ.get(KEEP_ENV) == '1':
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow (if nothing has yet) without its banner."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  if 'tensorflow' in sys.modules:
    return
  with quiet_native_stderr():
    import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel
  import sentencepiece  # pylint: disable=import-outside-toplevel
  sentencepiece.set_min_log_level(1)   # the Python package's own copy
