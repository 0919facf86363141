"""Run Rosetta on a Cloud TPU VM or pod slice with the gcloud CLI.

    python tools/tpu/tpu.py create  --tpu rosetta-v5e --zone us-west4-a \\
        --accelerator_type v5litepod-8
    python tools/tpu/tpu.py copy    --tpu rosetta-v5e --zone us-west4-a
    python tools/tpu/tpu.py install --tpu rosetta-v5e --zone us-west4-a
    python tools/tpu/tpu.py train   --tpu rosetta-v5e --zone us-west4-a \\
        --model_dir gs://my-bucket/runs/nmt -- \\
        --gin_file=experiments/nmt_tpu.gin \\
        --gin.nmt.setup.vocab_path="'runs/vocab/nmt_8k.model'"
    python tools/tpu/tpu.py logs    --tpu rosetta-v5e --zone us-west4-a
    python tools/tpu/tpu.py stop    --tpu rosetta-v5e --zone us-west4-a
    python tools/tpu/tpu.py delete  --tpu rosetta-v5e --zone us-west4-a

Every step is one or more shell commands, run from the repository root;
`--dry_run` prints them instead (the exact text that would run; see
tools/tpu/README.md). `train` starts the same `python -m rosetta
train` on every worker (`--worker=all`) with
`--gin.distributed.coordinator_address='auto'`: `rosetta.run.runs.distributed`
then calls `jax.distributed.initialize()`, which finds the coordinator,
process count and process id of a TPU slice by itself. Only the Python
standard library is used, so this runs outside the venv.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys

REMOTE_REPO = '~/rosetta'       # where the checkout lives on each worker
LOG_FILE = '~/rosetta-logs/train.log'   # written by tools/tpu/worker.sh

# TPU software ("runtime") versions for JAX, by TPU generation (Cloud TPU
# docs, "TPU software versions"): pass --version to override.
RUNTIME_VERSIONS = (
    ('v6e', 'v2-alpha-tpuv6e'),
    ('v5litepod', 'v2-alpha-tpuv5-lite'),
    ('v5e', 'v2-alpha-tpuv5-lite'),
    ('v5p', 'v2-alpha-tpuv5'),
    ('v4', 'tpu-ubuntu2204-base'),
    ('v3', 'tpu-ubuntu2204-base'),
    ('v2', 'tpu-ubuntu2204-base'),
)

NO_GCLOUD = """\
tools/tpu: `gcloud` (the Google Cloud CLI) is not on PATH, so nothing was run.
Install it (https://cloud.google.com/sdk/docs/install), then
`gcloud auth login` and `gcloud config set project PROJECT_ID`;
or add --dry_run to print the commands this step would run."""


@dataclasses.dataclass
class Step:
  """One command: an argv list run directly, or a shell pipeline."""
  argv: list[str] | None = None
  shell: str | None = None

  def text(self) -> str:
    return self.shell if self.shell is not None else join(self.argv)


def quote(word: str) -> str:
  """Like shlex.quote, but words holding single quotes (gin strings such as
  --gin.x='y') get double quotes, which read better than '"'"'."""
  if shlex.quote(word) == word or "'" not in word:
    return shlex.quote(word)
  return '"' + re.sub(r'([$`"\\])', r'\\\1', word) + '"'


def join(argv: list[str]) -> str:
  """A shell command line for argv; --flag=VALUE keeps the flag unquoted."""
  out = []
  for word in argv:
    m = re.fullmatch(r'(--[A-Za-z][\w.-]*=)(.*)', word, re.S)
    out.append(m.group(1) + quote(m.group(2)) if m and quote(word) != word
               else quote(word))
  return ' '.join(out)


def runtime_version(accelerator_type: str) -> str:
  for prefix, version in RUNTIME_VERSIONS:
    if accelerator_type.startswith(prefix + '-'):
      return version
  raise SystemExit(f'tools/tpu: no default --version for accelerator type '
                   f'{accelerator_type!r}; pass --version (see `gcloud '
                   'compute tpus tpu-vm versions list`)')


def _gcloud(args, verb: str, *rest: str) -> list[str]:
  cmd = ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, *rest,
         f'--zone={args.zone}']
  if args.project:
    cmd.append(f'--project={args.project}')
  return cmd


def _ssh(args, remote: str, worker: str = 'all') -> Step:
  return Step(_gcloud(args, 'ssh', args.tpu) + [f'--worker={worker}',
                                                f'--command={remote}'])


# -------------------------------------------------------------- steps ---


def create_steps(args) -> list[Step]:
  cmd = _gcloud(args, 'create', args.tpu)
  cmd += [f'--accelerator-type={args.accelerator_type}',
          f'--version={args.version or runtime_version(args.accelerator_type)}']
  if args.spot:
    cmd.append('--spot')
  return [Step(cmd)]


def copy_steps(args) -> list[Step]:
  if args.git_url:  # every worker clones (or updates) the repository
    url, ref = shlex.quote(args.git_url), shlex.quote(args.git_ref)
    return [_ssh(args, f'if [ -d {REMOTE_REPO}/.git ]; then git -C '
                       f'{REMOTE_REPO} fetch --quiet origin; else git clone '
                       f'--quiet {url} {REMOTE_REPO}; fi && git -C '
                       f'{REMOTE_REPO} checkout --quiet {ref}')]
  # The working tree as git sees it (tracked + untracked, minus ignored:
  # no .venv, no runs/), packed here, unpacked on every worker.
  tarball = f'/tmp/rosetta-{args.tpu}.tgz'
  return [
      Step(shell='git ls-files -z --cached --others --exclude-standard | '
                 f'tar --null --ignore-failed-read -T - -czf {tarball}'),
      Step(_gcloud(args, 'scp', tarball, f'{args.tpu}:rosetta-src.tgz')
           + ['--worker=all']),
      _ssh(args, f'mkdir -p {REMOTE_REPO} && tar -xzf rosetta-src.tgz -C '
                 f'{REMOTE_REPO}'),
  ]


def install_steps(args) -> list[Step]:
  return [_ssh(args, f'cd {REMOTE_REPO} && bash tools/tpu/worker.sh setup')]


def train_steps(args) -> list[Step]:
  """rosetta.cli train on every worker, in the background (worker.sh adds
  train.model_dir and distributed.coordinator_address='auto')."""
  if not any(a.startswith('--gin_file') for a in args.rosetta_args):
    raise SystemExit('tools/tpu train: give the rosetta arguments after '
                     '`--`, at least one --gin_file=..., e.g. '
                     '`-- --gin_file=experiments/nmt_tpu.gin`')
  bad = [a for a in args.rosetta_args
         if a.startswith(('--gin.train.model_dir',
                          '--gin.distributed.coordinator_address'))]
  if bad:
    raise SystemExit(f'tools/tpu train: {bad[0]!r} is set by the script '
                     '(use --model_dir)')
  env = f'ROSETTA_DATA_DIR={quote(args.data_dir)} ' if args.data_dir else ''
  worker = join(['bash', 'tools/tpu/worker.sh', 'train', args.model_dir,
                 *args.rosetta_args])
  return [_ssh(args, f'cd {REMOTE_REPO} && {env}{worker}')]


def logs_steps(args) -> list[Step]:
  # Process 0 prints the progress; other workers log their own errors.
  return [_ssh(args, f'tail -n {args.lines} -F {LOG_FILE}',
               worker=args.worker)]


def stop_steps(args) -> list[Step]:
  # SIGTERM: the trainer saves a checkpoint and exits; the same `train`
  # command resumes from it.
  return [_ssh(args, f'cd {REMOTE_REPO} && bash tools/tpu/worker.sh stop')]


def delete_steps(args) -> list[Step]:
  cmd = _gcloud(args, 'delete', args.tpu)
  if args.yes:
    cmd.append('--quiet')
  return [Step(cmd)]


STEPS = {'create': create_steps, 'copy': copy_steps,
         'install': install_steps, 'train': train_steps, 'logs': logs_steps,
         'stop': stop_steps, 'delete': delete_steps}


# ---------------------------------------------------------------- CLI ---


def parse_args(argv):
  rosetta_args = []
  if '--' in argv:  # everything after `--` goes to rosetta.cli train
    i = argv.index('--')
    argv, rosetta_args = argv[:i], argv[i + 1:]
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--tpu', required=True, help='TPU VM / slice name')
  common.add_argument('--zone', required=True, help='e.g. us-west4-a')
  common.add_argument('--project', default=None,
                      help='Google Cloud project (default: gcloud config)')
  common.add_argument('--dry_run', action='store_true',
                      help='print the commands instead of running them')
  p = argparse.ArgumentParser(
      prog='python tools/tpu/tpu.py', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  sub = p.add_subparsers(dest='step', required=True)
  c = sub.add_parser('create', parents=[common],
                     help='create a TPU VM or pod slice')
  c.add_argument('--accelerator_type', default='v5litepod-8',
                 help='e.g. v5litepod-8 (one host), v5litepod-16 (two), '
                 'v4-32, v6e-8')
  c.add_argument('--version', default=None, help='TPU software version '
                 '(default: by generation, e.g. v2-alpha-tpuv5-lite)')
  c.add_argument('--spot', action='store_true', help='a Spot TPU (cheaper, '
                 'preemptible; `train` resumes after preemption)')
  cp = sub.add_parser('copy', parents=[common], help='copy this checkout '
                      '(or clone a repository) onto every worker')
  cp.add_argument('--git_url', default=None,
                  help='clone this URL on every worker instead of copying')
  cp.add_argument('--git_ref', default='main')
  sub.add_parser('install', parents=[common], help='`tools/tpu/worker.sh '
                 'setup` on every worker (.venv + jax[tpu])')
  t = sub.add_parser('train', parents=[common], help='start rosetta.cli '
                     'train on every worker; rosetta arguments after `--`')
  t.add_argument('--model_dir', required=True, help='run directory; on a '
                 'multi-host slice one that every worker shares '
                 '(gs://bucket/...)')
  t.add_argument('--data_dir', default=None,
                 help='ROSETTA_DATA_DIR on the workers')
  lg = sub.add_parser('logs', parents=[common],
                      help="stream a worker's train.log")
  lg.add_argument('--worker', default='0', help="worker index, or 'all'")
  lg.add_argument('--lines', type=int, default=100)
  sub.add_parser('stop', parents=[common], help='stop training (SIGTERM: '
                 'checkpoint, then exit) on every worker')
  d = sub.add_parser('delete', parents=[common], help='delete the TPU')
  d.add_argument('--yes', action='store_true', help='no confirmation prompt')
  args = p.parse_args(argv)
  args.rosetta_args = rosetta_args
  if rosetta_args and args.step != 'train':
    p.error(f'arguments after `--` are for `train`, not `{args.step}`')
  return args


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else list(argv))
  steps = STEPS[args.step](args)
  if args.dry_run:
    for step in steps:
      print(step.text())
    return 0
  if shutil.which('gcloud') is None:
    print(NO_GCLOUD, file=sys.stderr)
    return 127
  if args.step == 'train' and not args.model_dir.startswith('gs://'):
    print(f'tools/tpu: note: --model_dir {args.model_dir} is local to each '
          'worker; fine for a one-host slice (e.g. v5litepod-8), but a pod '
          'slice needs a directory all workers share (gs://...)',
          file=sys.stderr)
  repo = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  for step in steps:
    print(f'+ {step.text()}', file=sys.stderr, flush=True)
    argv = step.argv if step.argv is not None else ['bash', '-o', 'pipefail',
                                                    '-c', step.shell]
    rc = subprocess.run(argv, cwd=repo).returncode
    if rc != 0:
      print(f'tools/tpu: step failed with exit code {rc}: {step.text()}',
            file=sys.stderr)
      return rc
  return 0


if __name__ == '__main__':
  sys.exit(main())
