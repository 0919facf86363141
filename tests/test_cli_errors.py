"""The `rosetta` command's error contract: a mistake in the invocation exits
2, a failure at run time 1, each with its message and no traceback;
`--debug` (or ROSETTA_DEBUG=1) re-raises for the traceback."""

import gin
import pytest

from rosetta import cli

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
