"""Parameters taken from other runs: `train.init_from` and frozen parameters.

A run started with `train.init_from = ['/runs/base', '/runs/lang_en']`
begins from those runs' parameters: every parameter path of the new network
that a source checkpoint holds is copied (later sources win), the rest keep
their fresh values. With `train.trainable` (`rosetta.trainable_params`) the
run's own checkpoints hold only what it trains, so the sources stay part of
the run: `param_sources.json` in the run folder records them, each at the
step it was read, with the trainable patterns::

    {"format": "rosetta-param-sources/1",
     "trainable": ["(^|/)adapters/task/"],
     "sources": [{"run": "/runs/base", "step": 2000},
                 {"run": "/runs/lang_en", "step": 500}]}

Reading a run's parameters reads its sources first, recursively (a source
may itself be an adapter run), then its own checkpoint. That is how a task
adapter trained above an English language adapter loads with both, and how
`overlay` swaps in another language's adapter at inference (MAD-X).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import jax

from rosetta import trainable_params
from rosetta.checkpoint import manager as checkpoints
from rosetta.model import layer_stack
from rosetta.run import files

SOURCES_FILE = 'param_sources.json'
FORMAT = 'rosetta-param-sources/1'
CHECKPOINTS = 'checkpoints'


def _checkpointer(run: str) -> checkpoints.Checkpointer:
  return checkpoints.Checkpointer(os.path.join(run, CHECKPOINTS),
                                  save_interval_steps=1, read_only=True)


def newest_step(run: str, where: str = 'train.init_from') -> int:
  if not os.path.isdir(os.path.join(run, CHECKPOINTS)):
    raise FileNotFoundError(f'{where}: {run} is not a run folder (no '
                            f'{CHECKPOINTS}/ in it)')
  ckpt = _checkpointer(run)
  try:
    step = ckpt.latest_step()
  finally:
    ckpt.close()
  if step is None:
    raise FileNotFoundError(f'{where}: {run} holds no checkpoint')
  return int(step)


def resolve(runs: Sequence[str], where: str = 'train.init_from'
            ) -> list[dict[str, Any]]:
  """[{'run': absolute path, 'step': newest step}] for run folders."""
  if isinstance(runs, str):
    raise ValueError(f'{where}: give a list of run folders, not the string '
                     f'{runs!r}')
  return [{'run': os.path.abspath(r), 'step': newest_step(r, where)}
          for r in runs]


def read(run: str) -> dict[str, Any] | None:
  """The run's `param_sources.json`, or None for a self-contained run."""
  path = os.path.join(run, SOURCES_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'{path}: unreadable ({e})') from e
  if not isinstance(record, dict) or record.get('format') != FORMAT:
    raise ValueError(f'{path}: not a {FORMAT} record')
  for i, source in enumerate(record.get('sources', [])):
    if not (isinstance(source, dict) and isinstance(source.get('run'), str)
            and isinstance(source.get('step'), int)):
      raise ValueError(f'{path}: sources[{i}] must be {{"run": str, '
                       f'"step": int}}, got {source!r}')
  return record


def write(run: str, trainable: Sequence[str] | None,
          sources: Sequence[Mapping[str, Any]]) -> None:
  """Records the sources (process 0 writes, atomically)."""
  if jax.process_index() == 0:
    files.atomic_write_json(os.path.join(run, SOURCES_FILE), {
        'format': FORMAT,
        'trainable': None if trainable is None else list(trainable),
        'sources': [dict(s) for s in sources]})


def trainable_of(run: str) -> list[str] | None:
  record = read(run)
  return None if record is None else record.get('trainable')


def own_params(run: str, step: int, wanted: Mapping[tuple, Any]
               ) -> dict[tuple, jax.Array]:
  """The parameters of `wanted` ({path: ShapeDtypeStruct with sharding})
  that the run's checkpoint at `step` itself holds, placed as wanted."""
  ckpt = _checkpointer(run)
  try:
    saved = ckpt.saved_arrays(step)
    names = {path: 'params/' + trainable_params.path_name(path)
             for path in wanted}
    present = {}
    for path, name in names.items():
      if name not in saved:
        continue
      shape, _ = saved[name]
      if tuple(shape) != tuple(wanted[path].shape):
        raise ValueError(
            f'{run} step {step}: parameter {name[len("params/"):]} has '
            f'shape {tuple(shape)}; this network needs '
            f'{tuple(wanted[path].shape)} (another model size?)')
      present[path] = wanted[path]
    check_layer_layout(run, step, wanted, saved)
    if not present:
      return {}
    target = {'params': trainable_params.unflatten(present)}
    restored = ckpt.restore(target, step=step, partial=True)
  finally:
    ckpt.close()
  _, state, _ = restored
  return trainable_params.flatten(state['params'])


def check_layer_layout(run: str, step: int, wanted: Mapping[tuple, Any],
                        saved: Mapping[str, Any]) -> None:
  """Raises when the checkpoint stores its layers in the other layout
  (scanned vs unrolled, `layer_stack`) than this network's."""
  def scanned(names) -> bool | None:
    kinds = {layer_stack.stack_prefix(
        [int(k) if k.isdigit() else k for k in name.split('/')]) is not None
             for name in names if '/layers/' in f'/{name}/'}
    return None if len(kinds) != 1 else kinds.pop()
  theirs = scanned(name[len('params/'):] for name in saved
                   if name.startswith('params/'))
  mine = scanned(trainable_params.path_name(p) for p in wanted)
  if theirs is not None and mine is not None and theirs != mine:
    layout = lambda s: 'scanned (T5Config.scan_layers = True)' if s else \
        'unrolled (T5Config.scan_layers = False)'
    raise ValueError(
        f'{run} step {step}: its layers are {layout(theirs)}; this network '
        f'wants them {layout(mine)}. Set T5Config.scan_layers as the run '
        'was trained')


def load(sources: Sequence[Mapping[str, Any]], wanted: Mapping[tuple, Any],
         _seen: tuple = ()) -> dict[tuple, jax.Array]:
  """{path: array} for the `wanted` paths the sources provide, each source's
  own sources first (recursively), later sources overriding earlier."""
  out: dict[tuple, jax.Array] = {}
  for source in sources:
    run, step = source['run'], int(source['step'])
    if run in _seen:
      raise ValueError(f'{run}: parameter sources form a cycle through '
                       f'{" -> ".join(_seen)}')
    record = read(run)
    if record is not None:
      out.update(load(record.get('sources', []), wanted, _seen + (run,)))
    out.update(own_params(run, step, wanted))
  return out


def run_params(run: str, step: int, wanted: Mapping[tuple, Any]
               ) -> dict[tuple, jax.Array]:
  """A run's parameters at `step`: its sources' (recursively), then its
  own checkpoint's."""
  return load([{'run': os.path.abspath(run), 'step': int(step)}], wanted)


def missing(wanted: Mapping[tuple, Any], found: Mapping[tuple, Any],
            where: str) -> None:
  """Raises naming the parameters no source provided."""
  gaps = sorted(trainable_params.path_name(p) for p in wanted
                if p not in found)
  if gaps:
    raise ValueError(
        f'{where}: {len(gaps)} frozen parameters come from no source run, '
        f'e.g. {", ".join(gaps[:4])}. Name the run that holds them in '
        'train.init_from (a base model first, then adapter runs), or make '
        'them trainable')
