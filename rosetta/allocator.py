"""A retaining memory allocator for Rosetta's CPU processes, by default.

XLA:CPU takes its temporary buffer (about 2 GB for a T5.1.1-small train
step) from malloc at every execution; glibc hands it back to the kernel,
so every step page-faults it in again (a quarter of a step). An allocator
that keeps freed memory mapped removes that cost: jemalloc with
`retain:true` and no decay, or mimalloc with purging off (the
`cmeel-mimalloc` wheel, a dependency, so `pip install` alone brings it).

`reexec()` is called first thing by the `rosetta` command, the main job
and the benchmarks: if no retaining allocator is loaded, it sets
`LD_PRELOAD` and re-executes the same command line once (a marker in the
environment stops a second time). It does nothing

* with `ROSETTA_ALLOCATOR=system` (the opt-out),
* on TPU / GPU hosts (device files present, or `JAX_PLATFORMS` names an
  accelerator), where host-side malloc is not on the step's critical path,
* off Linux, or when no allocator library is found.

`ROSETTA_ALLOCATOR=jemalloc|mimalloc` picks one; the default prefers a
system jemalloc (measured fastest) and falls back to the wheel's mimalloc.
`python -m rosetta.allocator --shell` prints the `export` lines for shell
scripts (the test runner). `loaded()` names the allocator this process
runs under, read from /proc/self/maps.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig

CHOICE_ENV = 'ROSETTA_ALLOCATOR'      # auto (default) | system | jemalloc | mimalloc
MARKER_ENV = 'ROSETTA_ALLOCATOR_REEXEC'

# Settings that make each allocator keep freed memory mapped.
SETTINGS = {
    'jemalloc': {'MALLOC_CONF':
                 'retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1'},
    'mimalloc': {'MIMALLOC_PURGE_DELAY': '-1'},
}
_SYSTEM_JEMALLOC = ('/usr/lib/x86_64-linux-gnu/libjemalloc.so.2',
                    '/usr/lib/aarch64-linux-gnu/libjemalloc.so.2',
                    '/usr/lib64/libjemalloc.so.2')
_ACCELERATOR_DEVICES = ('/dev/accel0', '/dev/nvidia0', '/dev/vfio/0')


def _mimalloc_library() -> str | None:
  """libmimalloc from the cmeel-mimalloc wheel of this environment."""
  for root in {sysconfig.get_paths()['purelib'],
               sysconfig.get_paths()['platlib']}:
    found = sorted(glob.glob(os.path.join(root, 'cmeel.prefix', 'lib',
                                          'libmimalloc.so.*')))
    if found:
      return min(found, key=len)   # libmimalloc.so.3, not .so.3.4
  return None


def find(choice: str = 'auto') -> tuple[str, str] | None:
  """(name, library path) of the allocator to preload, or None."""
  jemalloc = next((p for p in _SYSTEM_JEMALLOC if os.path.exists(p)), None)
  mimalloc = _mimalloc_library()
  if choice in ('auto', 'jemalloc') and jemalloc:
    return 'jemalloc', jemalloc
  if choice in ('auto', 'mimalloc') and mimalloc:
    return 'mimalloc', mimalloc
  return None


def accelerator_host(environ=os.environ) -> bool:
  platforms = environ.get('JAX_PLATFORMS', '').lower()
  if platforms:
    return any(p in platforms for p in ('tpu', 'cuda', 'gpu', 'rocm'))
  return any(os.path.exists(p) for p in _ACCELERATOR_DEVICES)


def loaded(maps_path: str = '/proc/self/maps') -> str:
  """'jemalloc', 'mimalloc', 'tcmalloc' or 'glibc': what this process's
  malloc is."""
  try:
    with open(maps_path, encoding='utf-8', errors='replace') as f:
      maps = f.read()
  except OSError:
    return 'unknown'
  for name in ('jemalloc', 'mimalloc', 'tcmalloc'):
    if f'lib{name}' in maps:
      return name
  return 'glibc'


def preload_environment(environ=os.environ) -> dict[str, str] | None:
  """The variables to add to `environ` for a retaining allocator, or None
  when none applies (opt-out, accelerator host, nothing found)."""
  choice = environ.get(CHOICE_ENV, 'auto').lower()
  if choice not in ('auto', 'system', 'jemalloc', 'mimalloc'):
    raise ValueError(f'{CHOICE_ENV}={choice!r}: one of auto, system, '
                     'jemalloc, mimalloc')
  if (choice == 'system' or not sys.platform.startswith('linux')
      or (choice == 'auto' and accelerator_host(environ))):
    return None
  found = find(choice)
  if found is None:
    return None
  name, path = found
  preload = environ.get('LD_PRELOAD', '')
  if path not in preload.split(':'):
    preload = f'{path}:{preload}' if preload else path
  return {'LD_PRELOAD': preload, **SETTINGS[name]}


def reexec() -> None:
  """Re-executes this command line once under a retaining allocator (see
  the module docstring); returns when nothing is to be done."""
  if os.environ.get(MARKER_ENV) or loaded() not in ('glibc', 'unknown'):
    return
  extra = preload_environment()
  if extra is None:
    return
  env = dict(os.environ, **extra)
  env[MARKER_ENV] = '1'
  sys.stdout.flush()
  sys.stderr.flush()
  argv = list(getattr(sys, 'orig_argv', None) or [sys.executable, *sys.argv])
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv == ['--shell']:
    extra = preload_environment() or {}
    for key, value in extra.items():
      print(f"export {key}='{value}'")
    return 0
  print(loaded())
  return 0


if __name__ == '__main__':
  sys.exit(main())
