"""The `rosetta` command: a dispatcher that knows no application.

    rosetta train --gin_file=experiments/tiny_multi30k_en_de.gin \\
        --gin.train.model_dir="'runs/x'" --gin.train.total_steps=200
    rosetta translate --help          # an application's command
    rosetta --help                    # every command, the applications' too

The core's commands are `train`, `evaluate` and `infer` (gin-configured
runs), `average` (a run's last checkpoints) and `plot` (figures of a run).
Applications add theirs through the `rosetta.commands` entry-point group
of their package metadata (setup.py):

    entry_points={'rosetta.commands': [
        'translate = translation.translate:main']}

A command is a callable `main(argv: list[str]) -> int` whose module
docstring's first line is its one-line help. `python -m rosetta ...` is the
same command.

Gin runs: files are layered (a model size from gin/models/, a run from
gin/runs/, an experiment from gin/experiments/, and gin/runs/local_tiny.gin
for a CPU); `--gin.KEY=VALUE` bindings are applied last; string values need
inner quotes, as above. A typo or a missing required value stops the run
before any work, naming the binding.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from typing import Callable

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from rosetta import native_logs  # noqa: E402  (imports nothing heavy)

ENTRY_POINT_GROUP = 'rosetta.commands'
GIN_RUNS = {
    'train': 'train a model on a seqio task or mixture (resumes a run)',
    'evaluate': "run each task's metrics on a saved checkpoint",
    'infer': 'decode a task split with a saved checkpoint to JSONL',
}
# The core's own non-gin commands: name -> 'module:function'.
CORE_COMMANDS = {
    'average': 'rosetta.checkpoint.averaging:main',
    'cache': 'rosetta.data.beam_cache:main',
    'compile': 'rosetta.aot.command:main',
    'export': 'rosetta.checkpoint.hf_command:export_main',
    'import': 'rosetta.checkpoint.hf_command:import_main',
    'merge-lora': 'rosetta.checkpoint.merge_command:main',
    'plot': 'rosetta.run.plots:main',
    'serve': 'rosetta.serving.serve_command:main',
    'vocab': 'rosetta.vocab_command:main',
}


def _load(target: str) -> Callable[[list[str]], int]:
  module, _, attr = target.partition(':')
  return getattr(importlib.import_module(module), attr)


def application_commands() -> dict[str, str]:
  """{name: 'module:function'} registered by installed applications."""
  found = {}
  for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
    if ep.name in GIN_RUNS or ep.name in CORE_COMMANDS:
      raise RuntimeError(f'{ep.value}: the command name {ep.name!r} is the '
                         "core's own; register it under another name")
    found[ep.name] = ep.value
  return found


def _summary(target: str) -> str:
  """A command's one-line help, read from its source without importing it
  (imports would load TensorFlow and JAX for `--help`): the docstring of
  its function unless that is `main`, else its module's; the first
  sentence of the first paragraph, without a leading "`rosetta x`: "."""
  module, _, function = target.partition(':')
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.origin or not spec.origin.endswith('.py'):
    return ''
  with open(spec.origin, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  doc = next((ast.get_docstring(node) for node in tree.body
              if isinstance(node, ast.FunctionDef) and node.name == function
              and function != 'main'), None) or ast.get_docstring(tree) or ''
  text = ' '.join(doc.strip().split('\n\n')[0].split())
  text = re.sub(r'^`rosetta [\w-]+`: ', '', text)
  return re.split(r'(?<=[a-z)])\. ', text)[0].rstrip('.')


def _top_level_help(commands: dict[str, str]) -> str:
  lines = ['usage: rosetta COMMAND [options]   (rosetta COMMAND --help)', '',
           'commands:']
  for name, text in GIN_RUNS.items():
    lines.append(f'  {name:<18} {text}')
  for name, target in sorted(commands.items()):
    lines.append(f'  {name:<18} {_summary(target)}')
  lines += ['', __doc__.split('\n\n')[-1].strip()]
  return '\n'.join(lines)


def parse_args(argv, command: str | None = None):
  """The options of a gin run (`train`, `evaluate`, `infer`); the command
  may also lead `argv` (`['train', '--gin_file=...']`)."""
  argv = list(argv)
  if command is None:
    command = argv.pop(0) if argv and argv[0] in GIN_RUNS else 'train'
  parser = argparse.ArgumentParser(
      prog=f'rosetta {command}', description=GIN_RUNS.get(command),
      epilog='Bindings: --gin.KEY=VALUE, e.g. --gin.train.total_steps=100 '
      "or --gin.train.model_dir=\"'runs/x'\" (strings keep inner quotes).")
  parser.add_argument('--gin_file', action='append', default=[],
                      help='gin file (repeatable; later files win); paths '
                      'are relative to the cwd or to the gin/ folder')
  parser.add_argument('--gin_bindings', action='append', default=[],
                      help='a binding, e.g. "train.batch_size = 16"')
  known, rest = parser.parse_known_args(argv)
  for arg in rest:  # --gin.KEY=VALUE
    if arg.startswith('--gin.') and '=' in arg:
      key, value = arg[len('--gin.'):].split('=', 1)
      known.gin_bindings.append(f'{key} = {value}')
    else:
      parser.error(f'unrecognised argument {arg!r} (bindings are '
                   '--gin.KEY=VALUE, e.g. --gin.train.total_steps=100)')
  return known


def run_gin_command(command: str, argv) -> int:
  """Parses gin files and bindings, starts the multi-controller runtime
  when configured, and runs `command` (train / evaluate / infer)."""
  args = parse_args(argv, command)
  import gin  # pylint: disable=import-outside-toplevel
  from rosetta import gin_utils  # pylint: disable=import-outside-toplevel
  from rosetta.run import run_dir, runs  # pylint: disable=import-outside-toplevel
  try:
    gin_utils.parse(args.gin_file, args.gin_bindings, finalize=False)
  except Exception as e:  # a typo, a missing file: the invocation's fault
    raise UsageError(str(e)) from e
  runs.distributed()
  gin.finalize()
  if command == 'train':
    runs.train(config_text=run_dir.run_config_text())
  else:
    getattr(runs, command)()
  return 0


class UsageError(Exception):
  """A mistake in the invocation (gin files and bindings): exit status 2."""


def main(argv=None) -> int:
  """Runs a command. Errors end it with one message and no traceback
  (exit 2: the invocation, 1: at run time); `--debug` or ROSETTA_DEBUG=1
  re-raises them for the traceback."""
  argv = sys.argv[1:] if argv is None else list(argv)
  debug = '--debug' in argv or os.environ.get('ROSETTA_DEBUG') == '1'
  argv = [a for a in argv if a != '--debug']
  commands = {**CORE_COMMANDS, **application_commands()}
  if not argv or argv[0] in ('-h', '--help', 'help'):
    print(_top_level_help(commands))
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  native_logs.import_tensorflow_quietly()
  from rosetta.data import bad_input  # pylint: disable=import-outside-toplevel
  try:
    if command in GIN_RUNS:
      return run_gin_command(command, rest)
    if command in commands:
      return _load(commands[command])(rest)
  except bad_input.BadInputError as e:  # a data file's line: one line out
    if debug:
      raise
    # Its first line: gin appends "In call to configurable ..." below it.
    print(f'rosetta {command}: {str(e).splitlines()[0]}', file=sys.stderr)
    return 1
  except UsageError as e:
    if debug:
      raise
    print(f'rosetta {command}: {e}', file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except
    if debug:
      raise
    kind = '' if isinstance(e, (ValueError, OSError)) else (
        f'{type(e).__name__}: ')
    # gin appends where the configurable was called: not the user's news.
    message = '\n'.join(l for l in str(e).splitlines()
                        if not l.startswith('  In call to configurable'))
    print(f'rosetta {command}: {kind}{message}\n(rosetta {command} --debug ... '
          'shows the traceback)', file=sys.stderr)
    return 1
  print(f'rosetta: unknown command {command!r}; one of '
        f'{", ".join([*GIN_RUNS, *sorted(commands)])} (rosetta --help)',
        file=sys.stderr)
  return 2


def cpu_only_platform(environ=os.environ) -> None:
  """On a host with no accelerator (no device files, no JAX_PLATFORMS),
  pins JAX to the CPU. JAX would pick it anyway, but with libtpu installed
  (`rosetta compile` needs it) the TPU plugin first probes for a TPU VM
  and prints a screen of warnings; compiling for TPU topologies does not
  need the TPU backend."""
  from rosetta import allocator  # pylint: disable=import-outside-toplevel
  if not environ.get('JAX_PLATFORMS') and not allocator.accelerator_host(
      environ):
    environ['JAX_PLATFORMS'] = 'cpu'


def console_main() -> int:
  """The `rosetta` console script: first a retaining allocator (a re-exec,
  once; rosetta/allocator.py) and the CPU platform on a CPU host, then
  `main`."""
  from rosetta import allocator  # pylint: disable=import-outside-toplevel
  allocator.reexec()
  cpu_only_platform()
  return main()
