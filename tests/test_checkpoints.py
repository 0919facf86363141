"""rosetta.checkpoint.manager on 8 simulated CPU devices, with real orbax on disk."""

import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rosetta.checkpoint import manager as checkpoints
from rosetta.checkpoint.manager import (Checkpointer, CheckpointFallbackWarning,
                                 CheckpointRestoreError, PreemptionGuard)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = {'batches_consumed': 12, 'seed': 0}


def _place(tree, mesh, matrix_spec=P('data', None), vector_spec=P()):
  """Matrices get `matrix_spec`, vectors `vector_spec`, scalars P()."""
  def sharding(x):
    return NamedSharding(mesh, {2: matrix_spec, 1: vector_spec}.get(x.ndim,
                                                                    P()))
  return jax.device_put(tree, jax.tree.map(sharding, tree))


def _train_state(mesh, seed=0, nnx_params=False):
  """{'params', 'opt_state' (adam, after one update), 'step'}, all sharded."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  params = {'encoder': {'kernel': jax.random.normal(k1, (8, 4))},
            'bias': jax.random.normal(k2, (4,))}
  if nnx_params:
    params = nnx.State({'encoder': {'kernel': nnx.Param(
        params['encoder']['kernel'])}, 'bias': nnx.Param(params['bias'])})
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  grads = jax.tree.map(lambda p: jax.random.normal(k3, p.shape), params)
  _, opt_state = tx.update(grads, opt_state, params)
  state = {'params': params, 'opt_state': opt_state,
           'step': jnp.asarray(7, jnp.int32)}
  return _place(state, mesh)


def _assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def _assert_shardings(actual, target):
  for a, t in zip(jax.tree.leaves(actual), jax.tree.leaves(target)):
    assert a.sharding == t.sharding, (a.sharding, t.sharding)


def _save_steps(directory, state, steps, **kwargs):
  kwargs.setdefault('save_interval_steps', 1)
  with Checkpointer(directory, **kwargs) as ckpt:
    for s in steps:
      assert ckpt.save(s, state, dict(DATA, batches_consumed=s))


# ------------------------------------------------------------ round trip ---


def test_round_trip_sharded_state_adam_and_data(tmp_path, mesh_data8):
  state = _train_state(mesh_data8, nnx_params=True)
  target = checkpoints.abstract_target(state)
  expected = jax.device_get(state)
  ckpt = Checkpointer(tmp_path, save_interval_steps=2, async_save=True)
  assert not ckpt.save(3, state, DATA)          # not due
  assert ckpt.save(4, state, DATA)
  # Async save has copied to host when save() returns: the caller may
  # donate (here: delete) the device buffers straight away.
  for leaf in jax.tree.leaves(state):
    leaf.delete()
  ckpt.wait()
  assert not ckpt.save(4, _train_state(mesh_data8, nnx_params=True), DATA,
                       force=True)              # never overwritten
  ckpt.close()
  assert sorted(os.listdir(tmp_path)) == ['4']

  step, restored, data_state = Checkpointer(
      tmp_path, save_interval_steps=2).restore(target)
  assert step == 4 and data_state == DATA
  assert isinstance(restored['params'], nnx.State)
  assert isinstance(restored['opt_state'][0], optax.ScaleByAdamState)
  _assert_trees_equal(restored, expected)
  _assert_shardings(restored, target)


def test_restore_reshards_onto_another_mesh(tmp_path, mesh_data8,
                                            mesh_data4_model2,
                                            mesh_data2_model4):
  state = _train_state(mesh_data8)
  expected = jax.device_get(state)
  _save_steps(tmp_path, state, [5], async_save=False)
  ckpt = Checkpointer(tmp_path, save_interval_steps=1)

  # Abstract target on (data=4, model=2).
  new = _place(jax.tree.map(jnp.zeros_like, expected), mesh_data4_model2,
               P('data', 'model'), P('model'))
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      new)
  step, restored, data_state = ckpt.restore(target)
  assert (step, data_state) == (5, dict(DATA, batches_consumed=5))
  _assert_trees_equal(restored, expected)
  _assert_shardings(restored, target)
  kernel = restored['params']['encoder']['kernel']
  assert kernel.sharding.spec == P('data', 'model')
  assert kernel.sharding.mesh.shape == {'data': 4, 'fsdp': 1, 'model': 2}

  # Concrete target on (data=2, model=4): its shardings are used.
  concrete = _place(jax.tree.map(jnp.zeros_like, expected), mesh_data2_model4,
                    P(None, 'model'), P('model'))
  _, restored, _ = ckpt.restore(concrete, step=5)
  _assert_trees_equal(restored, expected)
  _assert_shardings(restored, concrete)


def test_target_must_carry_shardings():
  bad = {'w': jax.ShapeDtypeStruct((8, 4), jnp.float32),
         'h': np.zeros(3)}
  with pytest.raises(ValueError, match=r"\['w'\].*without a sharding"):
    checkpoints.abstract_target(bad)
  with pytest.raises(ValueError, match=r"\['h'\].*ndarray"):
    checkpoints.abstract_target(bad)


def test_data_state_is_json_or_none(tmp_path, mesh_data8):
  state = _train_state(mesh_data8)
  ckpt = Checkpointer(tmp_path, save_interval_steps=1, async_save=False)
  with pytest.raises(TypeError, match='not JSON-serialisable'):
    ckpt.save(1, state, {'batches_consumed': np.int64(3)})
  assert ckpt.all_steps() == []
  assert ckpt.save(1, state, None)
  assert ckpt.restore(checkpoints.abstract_target(state))[2] is None
  ckpt.close()


def test_relative_directory_saves_and_restores(tmp_path, mesh_data8,
                                               monkeypatch):
  # `--gin.train.model_dir="'runs/tiny'"` (README): orbax itself refuses
  # relative paths at the first save.
  monkeypatch.chdir(tmp_path)
  state = _train_state(mesh_data8)
  ckpt = Checkpointer(os.path.join('runs', 'rel'), save_interval_steps=1,
                      async_save=False)
  assert ckpt.save(1, state, {'batches_consumed': 1})
  ckpt.close()
  assert os.path.isdir(tmp_path / 'runs' / 'rel' / '1')
  again = Checkpointer('runs/rel', save_interval_steps=1, read_only=True)
  restored = again.restore(checkpoints.abstract_target(state))
  _assert_trees_equal(restored[1], state)


def test_no_checkpoint_restores_none(tmp_path, mesh_data8):
  target = checkpoints.abstract_target(_train_state(mesh_data8))
  assert Checkpointer(tmp_path, save_interval_steps=1).restore(target) is None
  missing = tmp_path / 'never_written'
  ckpt = Checkpointer(missing, save_interval_steps=1, read_only=True)
  assert ckpt.restore(target) is None
  assert not missing.exists()                   # read_only creates nothing


# ------------------------------------------------------------ keep policy ---


def test_keep_last_plus_keep_every(tmp_path, mesh_data8):
  state = _train_state(mesh_data8)
  _save_steps(tmp_path, state, range(1, 11), keep_last=2, keep_every=4)
  assert sorted(int(n) for n in os.listdir(tmp_path)) == [4, 8, 9, 10]
  assert Checkpointer(tmp_path, save_interval_steps=1).all_steps() == [
      4, 8, 9, 10]


def test_keep_policy_arguments_are_checked(tmp_path):
  with pytest.raises(ValueError, match='not a multiple of save_interval'):
    Checkpointer(tmp_path, save_interval_steps=300, keep_every=1000)
  with pytest.raises(ValueError, match='keep_last'):
    Checkpointer(tmp_path, save_interval_steps=1, keep_last=0)


# -------------------------------------------- corrupt and partial steps ---


def _truncate_array_files(step_dir):
  files = glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'),
                    recursive=True)
  assert files
  for f in files:
    os.truncate(f, os.path.getsize(f) // 2)


def _delete_state_metadata(step_dir):
  os.remove(os.path.join(step_dir, 'state', '_METADATA'))


def _break_data_json(step_dir):
  with open(os.path.join(step_dir, 'data', 'metadata'), 'w') as f:
    f.write('{"format": "rosetta.data_st')


@pytest.mark.parametrize('corrupt', [_truncate_array_files,
                                     _delete_state_metadata,
                                     _break_data_json])
def test_corrupt_newest_falls_back_to_previous(tmp_path, mesh_data8, caplog,
                                               corrupt):
  state = _train_state(mesh_data8)
  target = checkpoints.abstract_target(state)
  _save_steps(tmp_path, state, [1, 2, 3])
  corrupt(str(tmp_path / '3'))

  ckpt = Checkpointer(tmp_path, save_interval_steps=1)
  with caplog.at_level(logging.WARNING, logger='rosetta.checkpoint.manager'), \
      pytest.warns(CheckpointFallbackWarning, match='step 3'):
    step, restored, data_state = ckpt.restore(target)
  assert step == 2 and data_state['batches_consumed'] == 2
  _assert_trees_equal(restored, jax.device_get(state))
  warned = [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == 'rosetta.checkpoint.manager']
  assert any('checkpoint step 3' in m and str(tmp_path) in m and
             'Error' in m for m in warned), warned

  # The bad step is set aside (not deleted), so saving step 3 works again.
  aside = [n for n in os.listdir(tmp_path) if n.startswith('3.corrupt-')]
  assert len(aside) == 1 and not (tmp_path / '3').exists()
  assert ckpt.latest_step() == 2
  assert ckpt.save(3, state, DATA)
  ckpt.wait()
  assert ckpt.restore(target)[0] == 3
  ckpt.close()


def test_nothing_restorable_raises_and_moves_nothing(tmp_path, mesh_data8):
  state = _train_state(mesh_data8)
  target = checkpoints.abstract_target(state)
  _save_steps(tmp_path, state, [1, 2])
  for s in ('1', '2'):
    _delete_state_metadata(str(tmp_path / s))
  ckpt = Checkpointer(tmp_path, save_interval_steps=1)
  with pytest.warns(CheckpointFallbackWarning), \
      pytest.raises(CheckpointRestoreError) as err:
    ckpt.restore(target)
  assert str(tmp_path) in str(err.value)
  assert 'tried steps [2, 1]' in str(err.value)
  assert sorted(os.listdir(tmp_path)) == ['1', '2']
  # An explicit step never falls back.
  with pytest.raises(CheckpointRestoreError, match='step 2'):
    ckpt.restore(target, step=2)


def test_uncommitted_tmp_dir_is_ignored_then_removed(tmp_path, mesh_data8,
                                                     caplog):
  # The name orbax 0.12.8 gives a step directory until it commits.
  from orbax.checkpoint._src.path import atomicity_types
  assert atomicity_types.TMP_DIR_SUFFIX == checkpoints.TMP_DIR_MARKER
  state = _train_state(mesh_data8)
  target = checkpoints.abstract_target(state)
  _save_steps(tmp_path, state, [1, 2])
  # A save of step 3 killed before its rename: complete-looking files.
  leftover = tmp_path / ('3' + checkpoints.TMP_DIR_MARKER)
  shutil.copytree(tmp_path / '2', leftover)

  reader = Checkpointer(tmp_path, save_interval_steps=1, read_only=True)
  assert reader.all_steps() == [1, 2]
  assert reader.restore(target)[0] == 2
  assert leftover.exists()                      # read_only touches nothing

  with caplog.at_level(logging.WARNING, logger='rosetta.checkpoint.manager'):
    ckpt = Checkpointer(tmp_path, save_interval_steps=1)
  assert any('uncommitted' in r.getMessage() and leftover.name in
             r.getMessage() for r in caplog.records)
  assert ckpt.restore(target)[0] == 2
  assert ckpt.save(3, state, DATA)
  ckpt.close()
  assert sorted(os.listdir(tmp_path)) == ['1', '2', '3']


# ------------------------------------------------------------ preemption ---


_TRAINER = textwrap.dedent('''
    import sys, time
    import jax, jax.numpy as jnp, numpy as np
    workdir, process_id, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if process_id >= 0:  # two processes x 4 devices, over gloo
      jax.config.update('jax_enable_preemption_service', sys.argv[4] == '1')
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
      jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}',
                                 num_processes=2, process_id=process_id)
    from jax.sharding import NamedSharding, PartitionSpec as P
    from rosetta import partitioning
    from rosetta.checkpoint import manager as checkpoints

    mesh = partitioning.make_mesh(data=8)
    w = jax.make_array_from_callback(
        (8, 2), NamedSharding(mesh, P('data', None)),
        lambda idx: np.zeros((8, 2), np.float32)[idx])
    state = {'w': w, 'step': jax.device_put(jnp.asarray(0, jnp.int32),
                                            NamedSharding(mesh, P()))}
    update = jax.jit(lambda s: {'w': s['w'] + 1, 'step': s['step'] + 1})
    ckpt = checkpoints.Checkpointer(workdir, save_interval_steps=10_000)
    with checkpoints.PreemptionGuard() as guard:
      print('READY', flush=True)
      step = 0
      while True:
        step += 1
        state = update(state)
        if guard.should_stop(step):
          ckpt.save(step, state, {'batches_consumed': step}, force=True)
          ckpt.close()
          print('SAVED', step, str(guard.signal_name).replace(' ', '_'),
                flush=True)
          sys.exit(0)
        time.sleep(0.005)
''')


def _start_trainers(tmp_path, num_processes, jax_service=True):
  script = tmp_path / 'trainer.py'
  script.write_text(_TRAINER)
  workdir = tmp_path / 'ckpt'
  devices = 8 // num_processes
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  ids = [-1] if num_processes == 1 else range(num_processes)
  procs = [subprocess.Popen(
      [sys.executable, str(script), str(workdir), str(i), str(port),
       str(int(jax_service))],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
      cwd=REPO) for i in ids]
  for p in procs:  # a hung child is killed, so readline() cannot block
    p.watchdog = threading.Timer(120, p.kill)
    p.watchdog.daemon = True
    p.watchdog.start()
  for p in procs:
    line = p.stdout.readline()
    while line and not line.startswith('READY'):  # gloo prints here too
      line = p.stdout.readline()
    assert line.startswith('READY'), p.communicate()[1][-3000:]
  return workdir, procs


def _finish(procs):
  saved = []
  for p in procs:
    out, err = p.communicate(timeout=120)
    p.watchdog.cancel()
    assert p.returncode == 0, err[-3000:]
    saved.append(next(l.split()[1:] for l in out.splitlines()
                      if l.startswith('SAVED')))
  return saved


def _restore_trainer_checkpoint(workdir, mesh):
  target = {'w': jax.ShapeDtypeStruct((8, 2), jnp.float32,
                                      sharding=NamedSharding(mesh, P('data'))),
            'step': jax.ShapeDtypeStruct((), jnp.int32,
                                         sharding=NamedSharding(mesh, P()))}
  return Checkpointer(workdir, save_interval_steps=1,
                      read_only=True).restore(target)


def test_sigterm_saves_then_exits(tmp_path, mesh_data8):
  workdir, procs = _start_trainers(tmp_path, 1)
  time.sleep(0.3)
  os.kill(procs[0].pid, signal.SIGTERM)
  [(saved_step, signame)] = _finish(procs)
  assert signame == 'SIGTERM' and int(saved_step) > 0
  step, state, data_state = _restore_trainer_checkpoint(workdir, mesh_data8)
  assert step == int(saved_step) == int(state['step'])
  assert data_state == {'batches_consumed': step}
  np.testing.assert_array_equal(np.asarray(state['w']),
                                np.full((8, 2), step, np.float32))


@pytest.mark.parametrize('jax_service', [True, False],
                         ids=['jax_preemption_service', 'process_allgather'])
def test_multihost_sigterm_on_one_process_stops_all(tmp_path,
                                                    mesh_data4_model2,
                                                    jax_service):
  """2 processes x 4 devices (jax.distributed + gloo); SIGTERM to one."""
  workdir, procs = _start_trainers(tmp_path, 2, jax_service)
  time.sleep(0.3)
  os.kill(procs[1].pid, signal.SIGTERM)          # only process 1 is told
  (step0, sig0), (step1, sig1) = _finish(procs)
  if jax_service:  # the guard left SIGTERM to JAX's notifier
    assert sig0 == sig1 == 'JAX_preemption_notice'
  else:
    assert (sig0, sig1) == ('None', 'SIGTERM')
  assert step0 == step1                          # both saved the same step
  step, state, data_state = _restore_trainer_checkpoint(workdir,
                                                        mesh_data4_model2)
  assert step == int(step0) == int(state['step'])
  assert data_state == {'batches_consumed': step}
  np.testing.assert_array_equal(np.asarray(state['w']),
                                np.full((8, 2), step, np.float32))


def test_guard_sets_flag_and_restores_handlers():
  calls = []
  previous = signal.signal(signal.SIGTERM, lambda *a: calls.append(a))
  try:
    with PreemptionGuard() as guard:
      assert not guard.requested and not guard.should_stop(1)
      signal.raise_signal(signal.SIGTERM)
      assert guard.requested and guard.should_stop(2)
      assert guard.signal_name == 'SIGTERM'
    assert not calls                            # the guard handled it
    signal.raise_signal(signal.SIGTERM)
    assert len(calls) == 1                      # old handler is back
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_second_sigint_interrupts():
  before = signal.getsignal(signal.SIGINT)
  with PreemptionGuard(sigint=True) as guard:
    signal.raise_signal(signal.SIGINT)
    assert guard.requested
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before


