"""Rosetta's entry point: train / evaluate / infer, configured with gin.

    python -m rosetta.main train --gin_file=experiments/tiny_multi30k_en_de.gin \
        --gin.train.model_dir="'runs/x'" --gin.train.total_steps=200

(`rosetta train ...` is the same through the console script.) Gin files are
layered: a model size (gin/models/), a run (gin/runs/train.gin, ...), an
experiment (gin/experiments/), and gin/runs/local_tiny.gin for a CPU.
`--gin.KEY=VALUE` bindings are applied last; string values need inner
quotes, as above. A typo or a missing required value stops the run before
any work, naming the binding.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin  # noqa: E402

from rosetta import runs  # noqa: E402

COMMANDS = {'train': runs.train, 'evaluate': runs.evaluate,
            'infer': runs.infer}


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='rosetta', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  parser.add_argument('command',
                      choices=sorted(COMMANDS) + ['average', 'fuse', 'plot',
                                                  'translate'],
                      help='what to run (`rosetta translate --help` for '
                      'translation of a file or stdin, `rosetta plot --help` '
                      'for PNG figures of a run, `rosetta average --help` to '
                      'average a run\'s last checkpoints, `rosetta fuse '
                      '--help` to fuse TREC run files (hybrid retrieval))')
  parser.add_argument('--gin_file', action='append', default=[],
                      help='gin file (repeatable; later files win); paths '
                      'are relative to the cwd or to the repo gin/ folder')
  parser.add_argument('--gin_bindings', action='append', default=[],
                      help="a binding, e.g. \"train.batch_size = 16\"")
  known, rest = parser.parse_known_args(argv)
  for arg in rest:  # --gin.KEY=VALUE
    if arg.startswith('--gin.') and '=' in arg:
      key, value = arg[len('--gin.'):].split('=', 1)
      known.gin_bindings.append(f'{key} = {value}')
    else:
      parser.error(f'unrecognised argument {arg!r} (bindings are '
                   "--gin.KEY=VALUE, e.g. --gin.train.total_steps=100)")
  return known


# Bindings of one invocation, not of the experiment: the process id differs
# between the hosts of one run, the coordinator and process count between
# restarts (resuming on another topology is supported), and budgets are
# how long this invocation trains. A resume may change them freely.
_INVOCATION_BINDINGS = ('distributed.', 'train.stop_after_steps',
                        'train.time_budget_s', 'train.cpu_budget_s')


def run_config_text() -> str:
  """The resolved gin config minus the invocation's own bindings, so every
  host writes and compares the same, and a restart with another
  coordinator port or time budget is still the same run."""
  return '\n'.join(line for line in gin.config_str().splitlines()
                   if not line.startswith(_INVOCATION_BINDINGS)) + '\n'


def _plots_module():
  """tools/plots.py of this checkout, by path: `tools` is not an installed
  package, and the console script may run from any directory."""
  import importlib.util
  path = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'tools', 'plots.py')
  if not os.path.exists(path):
    raise SystemExit(f'rosetta plot: {path} is missing (plots need the '
                     'source checkout)')
  spec = importlib.util.spec_from_file_location('rosetta_tools_plots', path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


def cli(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and argv[0] == 'translate':  # the NMT application's own flags
    from translation import translate
    return translate.main(argv[1:])
  if argv and argv[0] == 'plot':  # figures from a run's logs and tables
    return _plots_module().main(argv[1:])
  if argv and argv[0] == 'fuse':  # hybrid retrieval over TREC run files
    from retrieval import fusion
    return fusion.main(argv[1:])
  if argv and argv[0] == 'average':  # mean of a run's last checkpoints
    from rosetta import checkpoint_averaging
    return checkpoint_averaging.main(argv[1:])
  args = parse_args(argv)
  from rosetta import gin_utils
  gin_utils.parse(args.gin_file, args.gin_bindings, finalize=False)
  runs.distributed()
  gin.finalize()
  command = COMMANDS[args.command]
  if args.command == 'train':
    command(config_text=run_config_text())
  else:
    command()
  return 0


if __name__ == '__main__':
  sys.exit(cli())
