"""The `rosetta` command's error contract: a mistake in the invocation exits
2, a failure at run time 1, each with its message and no traceback;
`--debug` (or ROSETTA_DEBUG=1) re-raises for the traceback."""

import os
import subprocess
import sys

import gin
import pytest

from rosetta import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ['train', '--gin_file=experiments/tiny_django_en_fr.gin']


@pytest.fixture(autouse=True)
def clear_gin():
  yield
  gin.clear_config()


def test_a_binding_typo_is_a_usage_error(capsys):
  assert cli.main([*BASE, '--gin.train.totl_steps=3']) == 2
  err = capsys.readouterr().err
  assert err.startswith("rosetta train: Configurable 'train' doesn't have a "
                        "parameter named 'totl_steps'.")
  assert 'Traceback' not in err


def test_a_run_time_error_is_one_message(capsys, monkeypatch):
  monkeypatch.delenv('ROSETTA_DEBUG', raising=False)
  assert cli.main(BASE) == 1
  err = capsys.readouterr().err.splitlines()
  assert err == ["rosetta train: RuntimeError: Required bindings for `train` "
                 "not provided in config: ['model_dir']",
                 '(rosetta train --debug ... shows the traceback)']


def test_debug_re_raises(monkeypatch):
  with pytest.raises(RuntimeError, match='model_dir'):
    cli.main([*BASE, '--debug'])
  monkeypatch.setenv('ROSETTA_DEBUG', '1')
  with pytest.raises(cli.UsageError, match='totl_steps'):
    cli.main([*BASE, '--gin.train.totl_steps=3'])


def test_an_unregistered_task_stops_before_the_run_folder(tmp_path):
  # A fresh process: example_tasks registers Multi30k at import time when
  # its files are there.
  env = dict(os.environ, ROSETTA_DATA_DIR=str(tmp_path / 'empty'),
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  run = tmp_path / 'run'
  p = subprocess.run(
      [sys.executable, '-m', 'rosetta', 'train',
       '--gin_file=experiments/tiny_multi30k_en_de.gin',
       f"--gin.train.model_dir='{run}'"], env=env, cwd=REPO,
      capture_output=True, text=True, timeout=300)
  assert p.returncode == 1
  err = p.stderr.strip().splitlines()
  assert err[-2] == (
      "rosetta train: no task or mixture named 'multi30k_translate_en_de_bytes'"
      ' is registered. Tasks of a built-in corpus exist only when its files '
      f'are in the data folder ({tmp_path}/empty); your own files: see '
      'rosetta/data/parallel_corpus.py')
  assert 'Traceback' not in p.stderr and not run.exists()


def test_cpu_host_pins_jax_to_cpu_without_libtpu_warnings():
  """With libtpu installed on a CPU host, JAX's TPU plugin probes for a TPU
  VM and prints warnings; the `rosetta` command pins the CPU platform
  there (and leaves an accelerator host, or an explicit choice, alone)."""
  from rosetta import allocator   # pylint: disable=import-outside-toplevel
  if allocator.accelerator_host({}):
    pytest.skip('this host has accelerator device files')
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  probe = 'import jax; print(jax.default_backend())'
  runs = {}
  for pin in (False, True):
    code = ('from rosetta import cli; cli.cpu_only_platform(); ' if pin
            else '') + probe
    runs[pin] = subprocess.run([sys.executable, '-c', code], env=env,
                               capture_output=True, text=True, timeout=120)
  assert runs[True].stdout.strip() == 'cpu'
  assert 'TPU' not in runs[True].stderr
  assert 'TPU accelerator type' in runs[False].stderr   # libtpu's probe
  chosen = {'JAX_PLATFORMS': 'tpu'}
  cli.cpu_only_platform(chosen)
  assert chosen == {'JAX_PLATFORMS': 'tpu'}
  blank = {}
  cli.cpu_only_platform(blank)
  assert blank == {'JAX_PLATFORMS': 'cpu'}
