"""Gin plumbing: where config files live and how they are parsed.

Files are layered (t5x style): `gin/architectures/*` (what the network is),
`gin/models/*` (sizes, including an architecture), then runs and experiments.
Includes are resolved against the gin folder (`GIN_DIR`) and the current
directory, so `include 'models/t5_1_1_small.gin'` works from anywhere.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
from typing import Sequence

import gin
from etils import epath
from gin import config as gin_config
from gin import resource_reader

# An installed wheel carries the gin files as rosetta/configs (setup.py); a
# source checkout has them in gin/ beside the package. The wheel's folder
# is looked for first: beside an installed `rosetta` sits the `gin`
# package of gin-config, not ours.
_PACKAGED_GIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                 'configs')
_CHECKOUT_GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'gin')
GIN_DIR = (_PACKAGED_GIN_DIR if os.path.isdir(_PACKAGED_GIN_DIR)
           else _CHECKOUT_GIN_DIR)


def _system_path_file_exists(path: str) -> bool:
  """gin's check for an include inside a Python package, minus a crash:
  for `include 'runs/train.gin'` gin asks importlib for a package `runs`,
  and a plain `runs/` folder (run directories) in the working directory is
  a namespace package with no origin, so gin's own check raised TypeError
  and every parse from the repository root failed."""
  try:
    return resource_reader.system_path_file_exists(path)
  except TypeError:
    return False


gin_config._FILE_READERS[:] = [  # pylint: disable=protected-access
    (reader, _system_path_file_exists
     if check is resource_reader.system_path_file_exists else check)
    for reader, check in gin_config._FILE_READERS]  # pylint: disable=protected-access


def resolve(path: str) -> str:
  """A gin file by path, or relative to the repository's gin/ folder."""
  for candidate in (path, os.path.join(GIN_DIR, path)):
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f'gin file {path!r} not found (looked in the '
                          f'current directory and {GIN_DIR})')


def parse(files: Sequence[str] = (), bindings: Sequence[str] = (),
          finalize: bool = True) -> None:
  """Clears gin, then parses `files` and `bindings` (KEY=VALUE strings).

  Gin itself names the offending binding for a typo ("No configurable
  matching 'T5Config.emb_dimm'"); a missing file names the file.
  """
  # Register every core configurable, so a typo in any of them is caught.
  import rosetta.model.encoder_decoder  # noqa: F401
  import rosetta.model.encoder_decoder_model  # noqa: F401
  import rosetta.optimizers  # noqa: F401
  import rosetta.partitioning  # noqa: F401
  import rosetta.run.progress  # noqa: F401
  gin.clear_config()
  gin.add_config_file_search_path(GIN_DIR)
  with _quiet_include_probing():
    gin.parse_config_files_and_bindings([resolve(f) for f in files],
                                        list(bindings),
                                        finalize_config=finalize)


_BINDING = re.compile(r'^((?:[\w.]+/)*)([\w.]+)(\.\w+\s*=)', re.M)
_REFERENCE = re.compile(r'@((?:[\w.]+/)*)([\w.]+)')


def qualify_selectors(text: str) -> str:
  """`text` (a gin config) with each selector that is ambiguous in this
  process made whole, using the config's own `import` lines.

  gin writes a config with the shortest selector unique among the
  configurables registered when it was written (`setup.collections` when
  only `pair_tasks.setup` existed); a process that also imported
  `translation.nmt` finds `setup` ambiguous. The config's imports say which
  module was meant."""
  imported = set(re.findall(r'^import ([\w.]+)', text, re.M))
  registry = gin_config._REGISTRY  # pylint: disable=protected-access

  def whole(selector: str) -> str:
    matches = registry.matching_selectors(selector)
    if len(matches) < 2:
      return selector
    own = [m for m in matches if any(m.startswith(module + '.')
                                     for module in imported)]
    return own[0] if len(own) == 1 else selector

  text = _BINDING.sub(lambda m: m.group(1) + whole(m.group(2)) + m.group(3),
                      text)
  return _REFERENCE.sub(lambda m: '@' + m.group(1) + whole(m.group(2)), text)


def parse_run_config(path: str) -> None:
  """Clears gin and parses a config written by `rosetta train`
  (`<run>/config.gin`, no includes), its selectors qualified
  (`qualify_selectors`), not finalised."""
  import rosetta.model.encoder_decoder  # noqa: F401  pylint: disable=import-outside-toplevel
  import rosetta.model.encoder_decoder_model  # noqa: F401  pylint: disable=import-outside-toplevel
  import rosetta.optimizers  # noqa: F401  pylint: disable=import-outside-toplevel
  import rosetta.partitioning  # noqa: F401  pylint: disable=import-outside-toplevel
  import rosetta.run.progress  # noqa: F401  pylint: disable=import-outside-toplevel
  text = epath.Path(path).read_text()
  gin.clear_config()
  # Register the config's own modules first, so its selectors resolve.
  for module in re.findall(r'^import ([\w.]+)', text, re.M):
    importlib.import_module(module)
  gin.parse_config(qualify_selectors(text))


class _DropPathNotFound(logging.Filter):
  def filter(self, record):
    return not str(record.msg).startswith('Path not found')


@contextlib.contextmanager
def _quiet_include_probing():
  """Gin logs an ERROR for every search path it tries before the one that
  holds an include; only a file missing everywhere is an error, and gin
  raises for that."""
  f = _DropPathNotFound()
  logging.getLogger().addFilter(f)
  try:
    yield
  finally:
    logging.getLogger().removeFilter(f)


def all_gin_files(subdir: str = '') -> list[str]:
  """Every .gin file under gin/<subdir>, relative to gin/."""
  root = os.path.join(GIN_DIR, subdir)
  out = []
  for dirpath, _, names in os.walk(root):
    for name in names:
      if name.endswith('.gin'):
        out.append(os.path.relpath(os.path.join(dirpath, name), GIN_DIR))
  return sorted(out)
