"""Which parameters a run trains: regular expressions over parameter paths.

`train.trainable = [r'(^|/)lora/']` trains LoRA alone; the rest of the
network is frozen. A frozen parameter is never differentiated, never held by
the optimizer and never saved in the run's checkpoints: those hold only what
the run trains, and the frozen values come from the runs named in
`train.init_from` (`rosetta.run.param_sources`). Paths are '/'-joined pure-
dict keys, e.g. `encoder/layers/0/attention/lora/query/a`.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

Path = tuple


def path_name(path: Path) -> str:
  return '/'.join(str(p) for p in path)


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  """{path: leaf} of a nested dict."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, value in flat.items():
    node = out
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return out


def select(params: Mapping[str, Any], patterns: Sequence[str],
           where: str = 'train.trainable') -> frozenset:
  """Paths of `params` that any pattern matches (re.search on the name).

  Raises ValueError naming `where` for a bad or unmatched pattern, or when
  nothing at all would train.
  """
  if isinstance(patterns, str):
    raise ValueError(f'{where}: give a list of patterns, not the string '
                     f'{patterns!r}')
  names = {path: path_name(path) for path in flatten(params)}
  chosen = set()
  for pattern in patterns:
    try:
      rx = re.compile(pattern)
    except re.error as e:
      raise ValueError(f'{where}: {pattern!r} is not a regular expression '
                       f'({e})') from e
    hits = {path for path, name in names.items() if rx.search(name)}
    if not hits:
      examples = ', '.join(sorted(names.values())[:6])
      raise ValueError(f'{where}: pattern {pattern!r} matches no parameter '
                       f'(parameters look like: {examples}, ...). LoRA '
                       'and adapter parameters exist only when T5Config '
                       'sets lora_rank / adapters')
    chosen |= hits
  return frozenset(chosen)


def split(params: Mapping[str, Any], trainable: Iterable[Path]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(trainable subtree, frozen subtree) of a nested dict."""
  trainable = frozenset(trainable)
  flat = flatten(params)
  return (unflatten({p: v for p, v in flat.items() if p in trainable}),
          unflatten({p: v for p, v in flat.items() if p not in trainable}))


def join(*trees: Mapping[str, Any]) -> dict[str, Any]:
  """One nested dict from disjoint (or later-overriding) subtrees."""
  flat: dict[Path, Any] = {}
  for tree in trees:
    flat.update(flatten(tree))
  return unflatten(flat)
