"""Rosetta as a user installs it: the wheel (`pip install .`, not editable)
in a fresh virtual environment, used from a folder far from the source
tree: `rosetta --help` lists the applications' commands, a tiny `rosetta
train` finds its gin files inside the wheel, and `rosetta translate`
decodes with the run it wrote."""

import glob
import os
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ['encoder_decoder.T5Config.num_encoder_layers = 1',
        'encoder_decoder.T5Config.num_decoder_layers = 1',
        'train.total_steps = 4', 'train.eval_period = 0',
        'train.checkpoint_period = 4', 'train.log_period = 2',
        "train.task_feature_lengths = {'inputs': 32, 'targets': 32}"]


def _run(cmd, cwd, env, timeout=900):
  p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                     timeout=timeout)
  assert p.returncode == 0, (cmd, p.stdout[-3000:], p.stderr[-3000:])
  return p


@pytest.mark.slow
def test_the_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
  dist = tmp_path / 'dist'
  _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
        '-q', '-w', str(dist), REPO], cwd=tmp_path, env=dict(os.environ))
  wheels = glob.glob(str(dist / 'rosetta-*.whl'))
  assert len(wheels) == 1, wheels

  # A fresh venv holding only the wheel; its dependencies are this test
  # environment's, added as a plain path (a .pth line adds the folder
  # without running its .pth files, so the editable checkout stays out).
  venv = tmp_path / 'venv'
  _run([sys.executable, '-m', 'venv', str(venv)], cwd=tmp_path,
       env=dict(os.environ))
  python = str(venv / 'bin' / 'python')
  site = subprocess.run([python, '-c', 'import sysconfig; print('
                         'sysconfig.get_paths()["purelib"])'],
                        capture_output=True, text=True, check=True
                        ).stdout.strip()
  with open(os.path.join(site, 'rosetta_test_deps.pth'), 'w') as f:
    f.write(sysconfig.get_paths()['purelib'] + '\n')
  _run([python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index',
        wheels[0]], cwd=tmp_path, env=dict(os.environ))

  work = tmp_path / 'elsewhere'
  work.mkdir()
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'XLA_FLAGS')}
  env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  rosetta = str(venv / 'bin' / 'rosetta')

  located = _run([python, '-c', 'import rosetta, rosetta.gin_utils as g; '
                  'print(rosetta.__file__); print(g.GIN_DIR)'],
                 cwd=work, env=env).stdout.split()
  assert located[0].startswith(str(venv)), located    # not the checkout
  assert located[1].startswith(str(venv)), located
  assert os.path.isfile(os.path.join(located[1], 'runs', 'train.gin'))

  helptext = _run([rosetta, '--help'], cwd=work, env=env).stdout
  for command in ('train', 'evaluate', 'infer', 'average', 'plot',
                  'translate', 'fuse'):
    assert f'\n  {command} ' in helptext, helptext

  run_dir = str(work / 'run')
  _run([rosetta, 'train', '--gin_file=experiments/tiny_django_en_fr.gin',
        f"--gin.train.model_dir='{run_dir}'",
        *[f'--gin_bindings={b}' for b in TINY]], cwd=work, env=env)
  assert os.path.isfile(os.path.join(run_dir, 'config.gin'))

  source = work / 'in.txt'
  source.write_text('Save\nDelete\n', encoding='utf-8')
  out = work / 'out.txt'
  _run([rosetta, 'translate', '--checkpoint', run_dir, '--target_lang',
        'fr', '--input', str(source), '--output', str(out),
        '--beam_size', '2', '--max_length', '8', '--no_progress'],
       cwd=work, env=env)
  assert len(out.read_text(encoding='utf-8').split('\n')[:-1]) == 2
