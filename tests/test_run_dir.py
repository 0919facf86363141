"""rosetta.run.run_dir (the run-directory contract) and rosetta.run.files
(the one atomic writer), on real files and real orbax checkpoints."""

import glob
import json
import logging
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rosetta.checkpoint import manager as checkpoints
from rosetta.run import files
from rosetta.run.run_dir import RunDir


# -------------------------------------------------------------- layout ---


def test_layout_names_every_file_of_a_run(tmp_path):
  run = RunDir(tmp_path / 'r')
  assert run.config_path == str(tmp_path / 'r' / 'config.gin')
  assert run.checkpoints_path == str(tmp_path / 'r' / 'checkpoints')
  assert run.train_metrics_path == str(tmp_path / 'r' / 'train_metrics.jsonl')
  assert run.tensorboard_path == str(tmp_path / 'r' / 'tb')
  assert run.file('spm.model') == str(tmp_path / 'r' / 'spm.model')
  with pytest.raises(FileNotFoundError, match='no config.gin'):
    run.require()
  run.create()
  assert os.path.isdir(run.path) and not run.exists('config.gin')


# -------------------------------------------------------------- config ---


def test_write_config(tmp_path, caplog):
  run = RunDir(tmp_path)
  path = run.write_config('a = 1\n')
  assert path.read_text() == 'a = 1\n'
  mtime = os.stat(path).st_mtime_ns
  run.write_config('a = 1\n')                   # same content: no-op
  assert os.stat(path).st_mtime_ns == mtime

  with pytest.raises(FileExistsError) as err:
    run.write_config('a = 2\n')
  assert str(path) in str(err.value)
  assert str(tmp_path / 'config.gin.new') in str(err.value)
  assert '-a = 1' in str(err.value) and '+a = 2' in str(err.value)
  assert path.read_text() == 'a = 1\n'          # untouched
  assert (tmp_path / 'config.gin.new').read_text() == 'a = 2\n'

  with caplog.at_level(logging.WARNING, logger='rosetta.run.run_dir'):
    run.write_config('a = 2\n', allow_change=True)
  assert path.read_text() == 'a = 2\n'
  backups = glob.glob(str(tmp_path / 'config.gin.2*'))
  assert len(backups) == 1 and open(backups[0]).read() == 'a = 1\n'
  assert any(backups[0] in r.getMessage() for r in caplog.records)
  # Atomic writes leave no temp files behind.
  assert sorted(os.listdir(tmp_path)) == sorted(
      ['config.gin', 'config.gin.new', os.path.basename(backups[0])])
  assert run.read_config() == 'a = 2\n'


def test_config_beside_checkpoints(tmp_path, mesh_data8):
  run = RunDir(tmp_path)
  run.write_config('a = 1\n')
  params = jax.device_put(jnp.arange(16.0).reshape(8, 2),
                          NamedSharding(mesh_data8, P('data', None)))
  state = {'params': {'w': params}, 'step': jnp.asarray(3, jnp.int32)}
  with run.checkpointer(save_interval_steps=1) as ckpt:
    assert ckpt.save(1, state, {'batches_consumed': 1, 'seed': 0})
  ckpt = run.checkpointer(save_interval_steps=1, read_only=True)
  assert ckpt.all_steps() == [1]
  step, restored, data = ckpt.restore(checkpoints.abstract_target(state))
  ckpt.close()
  assert step == 1 and data['batches_consumed'] == 1
  np.testing.assert_array_equal(np.asarray(restored['params']['w']),
                                np.asarray(params))
  assert os.path.isdir(run.checkpoints_path)


# --------------------------------------------------------------- files ---


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_open_writes_whole_files_with_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    path = tmp_path / 'sub' / 'table.json'      # the folder is created
    files.atomic_write_json(path, {'a': 1})
    assert json.loads(path.read_text()) == {'a': 1}
    assert _mode(path) == 0o644                 # not mkstemp's 0600
    with files.atomic_open(path, 'wb') as f:
      np.save(f, np.arange(3))
    assert np.load(path).tolist() == [0, 1, 2]
  finally:
    os.umask(old)
  assert os.listdir(tmp_path / 'sub') == ['table.json']


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
  path = tmp_path / 'out.txt'
  files.atomic_write_text(path, 'old\n')
  with pytest.raises(RuntimeError, match='boom'):
    with files.atomic_open(path) as f:
      f.write('half a file')
      raise RuntimeError('boom')
  assert path.read_text() == 'old\n'
  assert os.listdir(tmp_path) == ['out.txt']
  with pytest.raises(KeyboardInterrupt):        # SIGINT mid-write as well
    with files.atomic_path(path) as tmp:
      open(tmp, 'w').write('x')
      raise KeyboardInterrupt
  assert os.listdir(tmp_path) == ['out.txt']


def test_temporary_names_are_recognised(tmp_path):
  seen = []
  with files.atomic_path(tmp_path / 'shard-0.npy') as tmp:
    seen.append(os.path.basename(tmp))
    open(tmp, 'w').close()
  assert files.is_temporary(seen[0])
  assert not files.is_temporary('shard-0.npy')
  with pytest.raises(ValueError, match='mode'):
    with files.atomic_open(tmp_path / 'x', 'a'):
      pass


def test_jsonl_appender_and_writer(tmp_path):
  path = tmp_path / 'm.jsonl'
  log = files.JsonlAppender(path)
  log.append({'step': 1})
  log.append({'step': 2})
  assert [json.loads(l) for l in path.read_text().splitlines()] == [
      {'step': 1}, {'step': 2}]
  out = files.write_jsonl_atomically(tmp_path / 'p.jsonl',
                                     [{'x': 'ü'}, {'x': 2}])
  assert open(out, encoding='utf-8').read() == '{"x": "ü"}\n{"x": 2}\n'
