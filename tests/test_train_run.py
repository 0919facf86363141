"""End-to-end runs of `rosetta.cli train` in subprocesses: learning on real
data, exact resume after kill -9 and SIGTERM, resharded resume, fallback
from a corrupt checkpoint, and 2 processes x 4 devices vs 1 x 8."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

BASE = [
    '--gin_file=experiments/tiny_django_en_fr.gin',
    "--gin.train.task_feature_lengths={'inputs': 32, 'targets': 32}",
    '--gin.train.batch_size=8',
    '--gin.train.log_period=1',
    '--gin.train.eval_period=0',
]


def env(devices=8):
  e = dict(os.environ)
  e['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  e['JAX_PLATFORMS'] = 'cpu'
  e['PYTHONPATH'] = REPO + os.pathsep + e.get('PYTHONPATH', '')
  e['TF_CPP_MIN_LOG_LEVEL'] = '3'
  return e


def cmd(model_dir, *extra):
  return [PY, '-m', 'rosetta', 'train', *BASE,
          f"--gin.train.model_dir='{model_dir}'", *extra]


def run(model_dir, *extra, devices=8, timeout=600):
  p = subprocess.run(cmd(model_dir, *extra), env=env(devices), cwd=REPO,
                     capture_output=True, text=True, timeout=timeout)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  return p.stdout + p.stderr


def losses(model_dir):
  """Last logged loss per step (a killed run may log a step twice)."""
  out = {}
  with open(os.path.join(model_dir, 'train_metrics.jsonl')) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        out[r['step']] = r['loss']
  return out


def final_params(model_dir):
  from rosetta.checkpoint import manager as checkpoints
  ckpt = checkpoints.Checkpointer(os.path.join(model_dir, 'checkpoints'),
                                  save_interval_steps=1, read_only=True)
  step = ckpt.latest_step()
  path = os.path.join(model_dir, 'checkpoints', str(step))
  ckpt.close()
  # Raw arrays straight from the files: bit-exact comparison, no model.
  import orbax.checkpoint as ocp
  with ocp.PyTreeCheckpointer() as c:
    tree = c.restore(os.path.join(path, 'state'))
  return step, tree['params']


def assert_trees_equal(a, b):
  import jax
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def committed_steps(model_dir):
  ckpt = os.path.join(model_dir, 'checkpoints')
  if not os.path.isdir(ckpt):
    return []
  return [int(n) for n in os.listdir(ckpt) if n.isdigit()]


def wait_for_step(model_dir, proc, step, timeout=300):
  """Until `step` is logged and an (async) checkpoint has committed, so
  the kill lands mid-run with something to resume from."""
  path = os.path.join(model_dir, 'train_metrics.jsonl')
  start = time.time()
  while time.time() - start < timeout:
    if proc.poll() is not None:
      raise AssertionError('training ended before it could be killed')
    if (os.path.exists(path) and max(losses(model_dir) or {0: 0}) >= step
        and committed_steps(model_dir)):
      return
    time.sleep(0.05)
  raise AssertionError(f'step {step} not reached in {timeout}s')


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('straight'))
  run(d, '--gin.train.total_steps=40', '--gin.train.checkpoint_period=4')
  return d


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGTERM])
def test_exact_resume_after_kill(straight, tmp_path, sig):
  d = str(tmp_path)
  args = ('--gin.train.total_steps=40', '--gin.train.checkpoint_period=4',
          '--gin.train.async_checkpoint=True')
  proc = subprocess.Popen(cmd(d, *args), env=env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  kill_at = random.Random(int(time.time())).randint(6, 24)
  wait_for_step(d, proc, kill_at)
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=120)
  if sig == signal.SIGTERM:
    assert proc.returncode == 0, out[-2000:]
    assert 'preempted: saved step' in out
  else:
    assert proc.returncode == -signal.SIGKILL
  out = run(d, *args)
  assert 'resumed from step' in out
  # The input resumed from its own saved state, not by replaying batches.
  assert 'by iterator state' in out, out[-3000:]
  want, got = losses(straight), losses(d)
  assert sorted(got) == sorted(want) == list(range(1, 41))
  for step in want:  # bit-exact, steps before and after the kill
    assert got[step] == want[step], (step, got[step], want[step])
  s1, p1 = final_params(straight)
  s2, p2 = final_params(d)
  assert s1 == s2 == 40
  assert_trees_equal(p1, p2)


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_resume_onto_other_mesh_and_corrupt_fallback(tmp_path):
  d = str(tmp_path)
  run(d, '--gin.train.total_steps=8', '--gin.train.checkpoint_period=4',
      '--gin.partitioning.make_mesh.data=8')
  # Corrupt the newest checkpoint (step 8): the run must fall back to 4.
  state_dir = os.path.join(d, 'checkpoints', '8', 'state')
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  out = run(d, '--gin.train.total_steps=12', '--gin.train.checkpoint_period=4',
            '--gin.partitioning.make_mesh.data=4',
            '--gin.partitioning.make_mesh.model=2',
            '--gin.train.allow_config_change=True')
  assert 'resumed from step 4' in out
  assert 'instead of the newer unreadable step 8' in out, out[-3000:]
  got = losses(d)
  assert max(got) == 12 and all(np.isfinite(v) for v in got.values())


@pytest.mark.slow
def test_learns_real_data_with_eval_metrics(tmp_path):
  from rosetta.data import corpora
  if not os.path.exists(os.path.join(corpora.data_dir(), 'multi30k')):
    pytest.skip(f'no Multi30k under {corpora.data_dir()}')
  d = str(tmp_path)
  out = run(d, '--gin_file=experiments/tiny_multi30k_en_de.gin',
            '--gin.train.total_steps=120', '--gin.train.eval_period=60',
            '--gin.train.eval_num_examples=16', '--gin.train.log_period=20',
            "--gin.train.task_feature_lengths={'inputs': 64, 'targets': 64}")
  got = losses(d)
  first = np.mean([got[s] for s in range(1, 21)])
  last = np.mean([got[s] for s in range(101, 121)])
  assert last < 0.6 * first, (first, last)
  assert '[eval/multi30k_translate_en_de_bytes @ step 120]' in out
  assert 'chrf' in out and '[validation @ step 120]' in out
  tb = os.path.join(d, 'tb')
  assert os.listdir(os.path.join(tb, 'train'))
  assert os.path.exists(os.path.join(d, 'config.gin'))


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  """2 processes x 4 devices (resumed half way) give 1 x 8's losses."""
  one = str(tmp_path / 'one')
  args = ('--gin.train.total_steps=6', '--gin.train.checkpoint_period=3',
          '--gin.train.shuffle=False', '--gin.train.pack=False')
  run(one, *args)
  two = str(tmp_path / 'two')

  def run_two(*extra):
    port = _free_port()
    procs = [subprocess.Popen(
        cmd(two, *args, *extra,
            f"--gin.distributed.coordinator_address='127.0.0.1:{port}'",
            '--gin.distributed.num_processes=2',
            f'--gin.distributed.process_id={i}'),
        env=env(devices=4), cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, o in zip(procs, outs):
      assert p.returncode == 0, o[-3000:]
    assert '(2 process(es))' in outs[0]
    return outs

  # In two stages: the second resumes each process's own input iterator.
  run_two('--gin.train.stop_after_steps=3')
  item = os.path.join(two, 'checkpoints', '3', 'input_iterator')
  assert sorted(f for f in os.listdir(item) if f.startswith('process_')) == [
      f'process_{i}.{ext}' for i in range(2)
      for ext in ('data-00000-of-00001', 'index')]
  outs = run_two()
  assert 'resumed from step 3' in outs[0]
  assert 'by iterator state' in outs[0], outs[0][-3000:]
  a, b = losses(one), losses(two)
  assert sorted(a) == sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a],
                             rtol=1e-5)


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_evaluate_and_infer_on_saved_checkpoint(straight, tmp_path):
  common = ['--gin_file=models/tiny.gin', '--gin_file=runs/evaluate.gin',
            '--gin_file=runs/infer.gin',
            '--gin.encoder_decoder.T5Config.dropout_rate=0.0',
            '--gin.encoder_decoder_model.EncoderDecoderModel.max_decode_length=32',
            "--gin.evaluate.task_feature_lengths={'inputs': 32, "
            "'targets': 32}",
            "--gin.infer.task_feature_lengths={'inputs': 32, 'targets': 32}"]
  imports = ['--gin_bindings=import translation.example_tasks']
  p = subprocess.run(
      [PY, '-m', 'rosetta', 'evaluate', *common, *imports,
       f"--gin.evaluate.model_dir='{straight}'",
       "--gin.evaluate.tasks=['django_translate_en_fr_bytes']",
       '--gin.evaluate.num_examples=16', '--gin.evaluate.batch_size=8'],
      env=env(), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  result = json.load(open(os.path.join(straight, 'eval_validation_40.json')))
  metrics = result['metrics']['django_translate_en_fr_bytes']
  assert set(metrics) >= {'bleu', 'chrf'}
  out_path = str(tmp_path / 'predictions.jsonl')
  p = subprocess.run(
      [PY, '-m', 'rosetta', 'infer', *common, *imports,
       f"--gin.infer.model_dir='{straight}'",
       "--gin.infer.task='django_translate_en_fr_bytes'",
       f"--gin.infer.output_path='{out_path}'",
       '--gin.infer.num_examples=10', '--gin.infer.batch_size=8'],
      env=env(), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  rows = [json.loads(l) for l in open(out_path)]
  assert [r['index'] for r in rows] == list(range(10))
  assert all(set(r) == {'index', 'input', 'target', 'prediction'}
             for r in rows)
  assert not [n for n in os.listdir(tmp_path) if '.tmp' in n]


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_cli_errors_name_the_binding(tmp_path):
  p = subprocess.run(
      [PY, '-m', 'rosetta', 'train', *BASE,
       '--gin.train.totl_steps=3'], env=env(), cwd=REPO,
      capture_output=True, text=True, timeout=300)
  assert p.returncode != 0 and 'totl_steps' in p.stderr
  p = subprocess.run(
      [PY, '-m', 'rosetta', 'train', *BASE], env=env(), cwd=REPO,
      capture_output=True, text=True, timeout=300)
  assert p.returncode != 0 and 'model_dir' in p.stderr
  p = subprocess.run([PY, '-m', 'rosetta', '--help'], env=env(),
                     cwd=REPO, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0 and 'evaluate' in p.stdout and '--gin.' in p.stdout


def test_load_run_gives_the_trained_network(straight):
  """`run_dir.load_run`: the run's config rebuilds the model, and the
  network carries the newest checkpoint's parameters bit for bit."""
  import jax
  from flax import nnx
  from rosetta.model import encoder_decoder_model
  from rosetta.run import run_dir
  run = run_dir.load_run(straight)
  step, params = final_params(straight)
  assert run.step == step == 40
  assert isinstance(run.model, encoder_decoder_model.EncoderDecoderModel)
  assert run.task == 'django_translate_en_fr_bytes'
  assert run.vocabulary.encode('ab') == [100, 101]   # bytes, offset 3
  assert_trees_equal(nnx.to_pure_dict(nnx.state(run.network, nnx.Param)),
                     params)
  out = run.model.predict_batch(run.network, {
      'encoder_input_tokens': np.ones((2, 8), np.int32)})
  assert np.asarray(jax.tree.leaves(out)[0]).shape[0] == 2
  with pytest.raises(FileNotFoundError, match='no config.gin'):
    run_dir.load_run(os.path.dirname(straight))


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_cpu_budget_stops_training_with_a_restorable_checkpoint(tmp_path):
  """`train.cpu_budget_s`: process CPU seconds since the loop began
  (compile included), checked at log steps; the stop leaves a checkpoint
  that restores (here through `load_run`, the model rebuilt from config)."""
  from rosetta.run import run_dir
  d = str(tmp_path)
  out = run(d, '--gin.train.total_steps=100000',
            '--gin.train.checkpoint_period=100000',
            '--gin.train.cpu_budget_s=2.0')
  stop = [l for l in out.splitlines() if l.startswith('CPU budget of 2 ')]
  assert len(stop) == 1, out[-3000:]
  step = int(stop[0].split('reached at step ')[1].split()[0])
  cpu = float(stop[0].split('(')[1].split(' CPU s')[0])
  assert 1 <= step < 100000 and cpu > 2.0
  assert f'done: step {step} (training loop: ' in out
  assert max(losses(d)) == step
  assert committed_steps(d) == [step]
  loaded = run_dir.load_run(d)
  assert loaded.step == step
  _, params = final_params(d)
  from flax import nnx
  assert_trees_equal(nnx.to_pure_dict(nnx.state(loaded.network, nnx.Param)),
                     params)


def test_average_checkpoints_is_the_mean_as_a_new_run(straight, tmp_path,
                                                      capsys):
  """`rosetta average --last 3`: the mean of steps 32/36/40 (the kept
  ones) as a new run directory every tool reads; the newest step's
  optimizer state and input position; the source untouched; an existing
  output refused."""
  import orbax.checkpoint as ocp
  from flax import nnx
  from rosetta import cli
  from rosetta.run import run_dir

  def raw_state(d, step):
    with ocp.PyTreeCheckpointer() as c:
      return c.restore(os.path.join(d, 'checkpoints', str(step), 'state'))

  before = sorted(os.listdir(os.path.join(straight, 'checkpoints')))
  assert sorted(committed_steps(straight)) == [32, 36, 40]
  out = str(tmp_path / 'avg')
  assert cli.main(['average', '--model_dir', straight, '--last', '3',
                   '--output_dir', out]) == 0
  assert 'averaged steps [32, 36, 40]' in capsys.readouterr().out
  assert committed_steps(out) == [40]
  with open(os.path.join(out, 'averaged_from.json')) as f:
    assert json.load(f)['steps'] == [32, 36, 40]
  with open(os.path.join(out, 'config.gin')) as f, open(
      os.path.join(straight, 'config.gin')) as g:
    assert f.read() == g.read()
  sources = [raw_state(straight, s) for s in (32, 36, 40)]
  averaged = raw_state(out, 40)
  import jax
  expected = jax.tree.map(
      lambda *xs: (sum(np.asarray(x, np.float32) for x in xs) / 3).astype(
          np.asarray(xs[0]).dtype), *[s['params'] for s in sources])
  for got, want, last in zip(jax.tree.leaves(averaged['params']),
                             jax.tree.leaves(expected),
                             jax.tree.leaves(sources[-1]['params'])):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(np.asarray(got), np.asarray(last))
  assert_trees_equal(averaged['opt_state'], sources[-1]['opt_state'])
  assert int(averaged['step']) == 40
  # Every tool reads it: load_run rebuilds the model from the copied config.
  run = run_dir.load_run(out)
  assert run.step == 40
  assert_trees_equal(nnx.to_pure_dict(nnx.state(run.network, nnx.Param)),
                     averaged['params'])
  assert sorted(os.listdir(os.path.join(straight, 'checkpoints'))) == before
  # --steps picks exactly those; an occupied output and bad input refused.
  out2 = str(tmp_path / 'avg2')
  assert cli.main(['average', '--model_dir', straight, '--steps', '36,40',
                   '--output_dir', out2]) == 0
  capsys.readouterr()
  for argv, message in [
      (['--last', '2', '--output_dir', out], 'already holds config.gin'),
      (['--last', '4', '--output_dir', str(tmp_path / 'x')],
       'only steps [32, 36, 40] are there'),
      (['--steps', '36,37', '--output_dir', str(tmp_path / 'x')],
       'steps [37] are not committed checkpoints'),
      (['--steps', '3x', '--output_dir', str(tmp_path / 'x')],
       'expected comma-separated integers'),
      (['--last', '2', '--output_dir', straight], 'is the source run')]:
    assert cli.main(['average', '--model_dir', straight, *argv]) == 2
    err = capsys.readouterr().err
    assert 'rosetta average: error:' in err and message in err, err
  assert not os.path.exists(str(tmp_path / 'x'))
  assert committed_steps(out) == [40]


def test_run_config_leaves_out_the_invocations_own_bindings():
  """A restart with another coordinator port, process count or budget is
  the same run; a model change is not."""
  import gin
  from rosetta import gin_utils
  from rosetta import cli
  from rosetta.run import run_dir
  try:
    gin_utils.parse(['experiments/tiny_django_en_fr.gin'], [
        "distributed.coordinator_address = '127.0.0.1:1234'",
        'distributed.num_processes = 2', 'distributed.process_id = 1',
        'train.stop_after_steps = 3', 'train.time_budget_s = 60.0',
        'train.cpu_budget_s = 30.0', 'train.batch_size = 8'])
    text = run_dir.run_config_text()
  finally:
    gin.clear_config()
  assert 'train.batch_size = 8' in text
  assert 'T5Config.emb_dim' in text
  for name in ('distributed.', 'stop_after_steps', 'time_budget_s',
               'cpu_budget_s'):
    assert name not in text, name
