"""tools/tpu: the documented commands are what --dry_run prints, the gcloud
flags exist, a missing gcloud is reported, and worker.sh really starts and
stops (with a checkpoint) a training run.

No TPU is reachable here: the gcloud side is checked through the dry-run
text and gcloud's own --help (where gcloud is installed); the worker side
runs for real on CPU.
"""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_PY = os.path.join(REPO, 'tools', 'tpu', 'tpu.py')
README = os.path.join(REPO, 'tools', 'tpu', 'README.md')

sys.path.insert(0, os.path.join(REPO, 'tools', 'tpu'))
import tpu  # noqa: E402  (tools/tpu/tpu.py)


def documented_examples():
  """[(command line, expected stdout lines)] from the README's console
  blocks: a `$ ...` line, then its output up to the next `$` or the end."""
  text = open(README, encoding='utf-8').read()
  out = []
  for block in re.findall(r'```console\n(.*?)```', text, re.S):
    for chunk in re.split(r'^\$ ', block, flags=re.M)[1:]:
      lines = chunk.rstrip('\n').split('\n')
      out.append((lines[0], lines[1:]))
  return out


EXAMPLES = documented_examples()


def run_tpu(argv, env=None):
  return subprocess.run([sys.executable, TPU_PY, *argv], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=60)


def test_readme_documents_every_step():
  assert len(EXAMPLES) >= 9
  steps = {shlex.split(cmd)[2] for cmd, _ in EXAMPLES}
  assert steps == set(tpu.STEPS), steps
  for cmd, expected in EXAMPLES:
    assert shlex.split(cmd)[:2] == ['python', 'tools/tpu/tpu.py'], cmd
    assert '--dry_run' in shlex.split(cmd), cmd
    assert expected, f'no documented output for: {cmd}'


@pytest.mark.parametrize('cmd,expected', EXAMPLES,
                         ids=[shlex.split(c)[2] + str(i)
                              for i, (c, _) in enumerate(EXAMPLES)])
def test_dry_run_prints_the_documented_commands(cmd, expected):
  p = run_tpu(shlex.split(cmd)[2:])
  assert p.returncode == 0, p.stderr
  assert p.stdout.rstrip('\n').split('\n') == expected


def test_shell_quoting_round_trips_through_bash():
  words = ['a b', "x'y", 'q"$`\\z', "--gin.x='1 2'", '', '~/x', 'a!b',
           '--command=it\'s $HOME "q" \\ `x`', "--gin.v=\"'s p'\""]
  line = tpu.join(words)
  p = subprocess.run(['bash', '-c', 'printf "%s\\0" ' + line],
                     capture_output=True, text=True, check=True)
  assert p.stdout.split('\0')[:-1] == words


def main_readme_commands():
  """The `python tools/tpu/tpu.py ...` lines of the top-level README."""
  text = open(os.path.join(REPO, 'README.md'), encoding='utf-8').read()
  text = text.replace('\\\n', ' ')
  return [shlex.split(l)[2:] for l in text.splitlines()
          if l.startswith('python tools/tpu/tpu.py ')]


def test_main_readme_commands_run_dry():
  cmds = main_readme_commands()
  assert {c[0] for c in cmds} == set(tpu.STEPS)
  for argv in cmds:
    i = argv.index('--') if '--' in argv else len(argv)
    p = run_tpu(argv[:i] + ['--dry_run'] + argv[i:])
    assert p.returncode == 0, (argv, p.stderr)
    assert p.stdout.startswith(('gcloud ', 'git ')), p.stdout


def test_train_arguments_are_valid_rosetta_gin():
  """The rosetta arguments of every documented train command (tools/tpu
  README, as the worker receives them, and the top-level README), plus
  what worker.sh adds, parse as Rosetta gin: every binding names a real
  configurable."""
  runs = []
  for cmd, expected in EXAMPLES:
    argv = shlex.split(cmd)
    if argv[2] != 'train':
      continue
    remote = shlex.split(expected[0])[-1]  # --command=... (one word)
    assert remote.startswith('--command=cd ~/rosetta && ')
    worker = shlex.split(remote[len('--command='):])
    i = worker.index('tools/tpu/worker.sh')
    assert worker[i + 1] == 'train'
    model_dir, rosetta_args = worker[i + 2], worker[i + 3:]
    assert rosetta_args == argv[argv.index('--') + 1:]
    runs.append((model_dir, rosetta_args))
  for argv in main_readme_commands():
    if argv[0] == 'train':
      runs.append((argv[argv.index('--model_dir') + 1],
                   argv[argv.index('--') + 1:]))
  assert len(runs) >= 3
  code = ('import json, sys; from rosetta import cli, gin_utils\n'
          'for argv in json.loads(sys.argv[1]):\n'
          '  a = cli.parse_args(argv)\n'
          '  gin_utils.parse(a.gin_file, a.gin_bindings, finalize=False)\n'
          # Not the CPU overlay (runs/local_tiny.gin): it turns these off.
          '  import gin\n'
          '  assert gin.get_bindings("train", resolve_references=False).get(\n'
          '      "async_checkpoint") is not False, a.gin_file\n'
          '  print("parsed", a.gin_file)')
  argvs = [['train', *args, f"--gin.train.model_dir='{model_dir}'",
            "--gin.distributed.coordinator_address='auto'"]
           for model_dir, args in runs]
  p = subprocess.run([sys.executable, '-c', code, json.dumps(argvs)],
                     cwd=REPO, capture_output=True, text=True, timeout=300,
                     env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert p.returncode == 0, p.stderr[-3000:]
  assert p.stdout.count('parsed') == len(runs)


def test_without_gcloud_nothing_runs(tmp_path):
  env = {**os.environ, 'PATH': str(tmp_path)}  # no gcloud, no git, no tar
  p = run_tpu(['copy', '--tpu', 'nogcloud-test', '--zone', 'z'], env=env)
  assert p.returncode == 127
  assert '`gcloud` (the Google Cloud CLI) is not on PATH' in p.stderr
  assert '--dry_run' in p.stderr
  assert not os.path.exists('/tmp/rosetta-nogcloud-test.tgz')
  # --dry_run needs no gcloud.
  p = run_tpu(['delete', '--tpu', 't', '--zone', 'z', '--dry_run'], env=env)
  assert p.returncode == 0
  assert p.stdout == 'gcloud compute tpus tpu-vm delete t --zone=z\n'


def test_usage_errors_are_clear():
  p = run_tpu(['create', '--tpu', 't', '--zone', 'z',
               '--accelerator_type', 'v9-8', '--dry_run'])
  assert p.returncode != 0 and "pass --version" in p.stderr
  p = run_tpu(['train', '--tpu', 't', '--zone', 'z', '--model_dir', 'd',
               '--dry_run'])
  assert p.returncode != 0 and '--gin_file' in p.stderr
  p = run_tpu(['train', '--tpu', 't', '--zone', 'z', '--model_dir', 'd',
               '--dry_run', '--', '--gin_file=x.gin',
               "--gin.train.model_dir='e'"])
  assert p.returncode != 0 and 'use --model_dir' in p.stderr
  p = run_tpu(['logs', '--tpu', 't', '--zone', 'z', '--', '--gin_file=x'])
  assert p.returncode != 0 and 'not `logs`' in p.stderr


@pytest.mark.skipif(shutil.which('gcloud') is None,
                    reason='gcloud is not installed here')
def test_gcloud_accepts_the_flags(tmp_path):
  """Every --flag of every printed gcloud command is in that gcloud verb's
  own --help (offline; an empty config dir, no metadata probing)."""
  env = {**os.environ, 'CLOUDSDK_CONFIG': str(tmp_path / 'gcloud'),
         'CLOUDSDK_CORE_CHECK_GCE_METADATA': 'false',
         'CLOUDSDK_CORE_DISABLE_PROMPTS': '1'}
  helps = {}
  checked = 0
  for _, expected in EXAMPLES:
    for line in expected:
      words = shlex.split(line)
      if words[0] != 'gcloud':
        continue
      assert words[1:4] == ['compute', 'tpus', 'tpu-vm'], line
      verb = words[4]
      if verb not in helps:
        p = subprocess.run(['gcloud', 'compute', 'tpus', 'tpu-vm', verb,
                            '--help'], env=env, capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        helps[verb] = re.sub(r'\x1b\[[0-9;]*m', '', p.stdout)
      for word in words[5:]:
        if word.startswith('--'):
          flag = word.split('=', 1)[0]
          assert re.search(re.escape(flag) + r'\b', helps[verb]), (verb, flag)
          checked += 1
  assert set(helps) == {'create', 'scp', 'ssh', 'delete'}
  assert checked > 20


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_worker_script_trains_and_stops_with_a_checkpoint(tmp_path):
  logs, run = tmp_path / 'logs', tmp_path / 'run'
  env = {**os.environ, 'ROSETTA_LOG_DIR': str(logs), 'JAX_PLATFORMS': 'cpu',
         'COORDINATOR_ADDRESS': f'127.0.0.1:{_free_port()}',
         'PYTHONPATH': REPO}
  env.pop('XLA_FLAGS', None)
  args = ['--gin_file=experiments/tiny_django_en_fr.gin',
          '--gin.distributed.num_processes=1',
          '--gin.distributed.process_id=0',
          "--gin.train.task_feature_lengths={'inputs': 32, 'targets': 32}",
          '--gin.train.batch_size=8', '--gin.train.total_steps=100000',
          '--gin.train.eval_period=0', '--gin.train.log_period=1',
          '--gin.train.checkpoint_period=100000']
  worker = ['bash', 'tools/tpu/worker.sh']
  p = subprocess.run(worker + ['train', str(run), *args], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=60)
  assert p.returncode == 0, p.stderr
  assert 'training started' in p.stdout
  pid = int((logs / 'train.pid').read_text())
  log = logs / 'train.log'
  try:
    start = time.time()
    while 'step 3/' not in (log.read_text() if log.exists() else ''):
      assert time.time() - start < 240, log.read_text()[-3000:]
      os.kill(pid, 0)  # raises if training died
      time.sleep(0.5)
    again = subprocess.run(worker + ['train', str(run), *args], cwd=REPO,
                           env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 1 and 'already running' in again.stderr
    stop = subprocess.run(worker + ['stop'], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert stop.returncode == 0, stop.stderr
    assert 'training stopped' in stop.stdout
  finally:
    try:
      os.kill(pid, signal.SIGKILL)  # only if a check above failed
    except ProcessLookupError:
      pass
  text = log.read_text()
  saved = re.search(r'preempted: saved step (\d+)', text)
  assert saved, text[-3000:]
  assert "training django_translate_en_fr_bytes" in text
  assert (run / 'checkpoints' / saved.group(1)).is_dir()
  assert not (logs / 'train.pid').exists()
  # The worker passed its COORDINATOR_ADDRESS on (the topology is logged,
  # not part of config.gin: a restart may change it).
  assert 'jax.distributed: coordinator 127.0.0.1:' in text
  assert 'coordinator' not in (run / 'config.gin').read_text()
