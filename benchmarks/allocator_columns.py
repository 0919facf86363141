"""One benchmark, run once per malloc, each in a process of its own.

An allocator is fixed when a process starts (LD_PRELOAD), so a benchmark
that compares systems under glibc and under the retaining allocator
(rosetta/allocator.py) runs itself twice: the parent starts one child per
allocator with `--allocators LABEL --result-json FILE`, the child measures
every system under that one malloc (peers under the same one) and writes
its figures, and the parent prints them side by side. The children run one
after the other, so a change in machine load between them shows up in the
allocator column; the figures within one column are interleaved as before.

    ALLOCATORS: 'glibc' (ROSETTA_ALLOCATOR=system) and 'retaining' (the
    default choice: a system jemalloc if present, else the wheel's mimalloc)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from rosetta import allocator

ALLOCATORS = {'glibc': 'system', 'retaining': 'auto'}
_PRELOAD_VARIABLES = ('LD_PRELOAD', 'MALLOC_CONF', 'MIMALLOC_PURGE_DELAY',
                      allocator.MARKER_ENV)


def child_environment(label: str, environ=os.environ) -> dict[str, str]:
  """`environ` with the preload of allocator `label` and nothing else."""
  env = {k: v for k, v in environ.items() if k not in _PRELOAD_VARIABLES}
  env[allocator.CHOICE_ENV] = ALLOCATORS[label]
  env.update(allocator.preload_environment(env) or {})
  env[allocator.MARKER_ENV] = '1'   # the child must not re-execute itself
  return env


def run_each(module: str, argv: list[str], labels: list[str]) -> dict:
  """{label: the child's result JSON} after `python -m module argv` ran once
  under each allocator; the children's output goes to this stdout."""
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for label in labels:
      path = os.path.join(tmp, f'{label}.json')
      print(f'\n## under {label} malloc\n', flush=True)
      subprocess.run([sys.executable, '-m', module, *argv,
                      '--allocators', label, '--result-json', path],
                     env=child_environment(label), check=True)
      with open(path, encoding='utf-8') as f:
        results[label] = json.load(f)
  return results


def check_child(label: str) -> str:
  """The malloc this child runs under; an error when it is not the one
  asked for (a retaining allocator missing on this machine, say)."""
  name = allocator.loaded()
  if (label == 'glibc') != (name == 'glibc'):
    raise SystemExit(f'asked for {label} malloc, running under {name} '
                     f'({allocator.CHOICE_ENV}, LD_PRELOAD; '
                     'rosetta/allocator.py)')
  return name


def add_arguments(parser) -> None:
  parser.add_argument('--allocators', nargs='+', choices=list(ALLOCATORS),
                      default=list(ALLOCATORS),
                      help='run every system once per malloc, each in its '
                      'own process, and print them side by side (default: '
                      'both); one value runs in this process')
  parser.add_argument('--result-json', default=None,
                      help=argparse.SUPPRESS)


def write_result(path: str | None, result: dict) -> None:
  if path:
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(result, f)


def without_allocator_options(argv: list[str]) -> list[str]:
  """`argv` minus --allocators and its values (the parent's choice)."""
  out, skipping = [], False
  for arg in argv:
    if arg == '--allocators' or arg.startswith('--allocators='):
      skipping = arg == '--allocators'
      continue
    if skipping and not arg.startswith('-'):
      continue
    skipping = False
    out.append(arg)
  return out
