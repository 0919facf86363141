"""rosetta.allocator: the `rosetta` command re-executes itself once under a
retaining allocator by default, not with the opt-out, and trains to the
same losses either way."""

import json
import os
import subprocess
import sys

import pytest

from rosetta import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_opt_out_accelerators_and_bad_values():
  assert allocator.preload_environment({'ROSETTA_ALLOCATOR': 'system'}) is None
  assert allocator.preload_environment({'JAX_PLATFORMS': 'tpu'}) is None
  assert allocator.preload_environment({'JAX_PLATFORMS': 'cuda,cpu'}) is None
  with pytest.raises(ValueError, match='ROSETTA_ALLOCATOR'):
    allocator.preload_environment({'ROSETTA_ALLOCATOR': 'tcmalloc'})


def test_preload_keeps_an_existing_preload():
  found = allocator.find()
  if found is None:
    pytest.skip('no allocator library in this environment')
  name, path = found
  env = allocator.preload_environment({'JAX_PLATFORMS': 'cpu',
                                       'LD_PRELOAD': '/x/libother.so'})
  assert env['LD_PRELOAD'] == f'{path}:/x/libother.so'
  assert set(allocator.SETTINGS[name]) <= set(env)


def test_loaded_reads_the_maps(tmp_path):
  maps = tmp_path / 'maps'
  maps.write_text('7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n')
  assert allocator.loaded(str(maps)) == 'glibc'
  maps.write_text('7f00-7f01 r-xp 0 08:01 1 /s/cmeel.prefix/lib/'
                  'libmimalloc.so.3\n')
  assert allocator.loaded(str(maps)) == 'mimalloc'
  assert allocator.loaded(str(tmp_path / 'missing')) == 'unknown'


def _train(run_dir, choice):
  env = {k: v for k, v in os.environ.items()
         if k not in ('LD_PRELOAD', 'MIMALLOC_PURGE_DELAY', 'MALLOC_CONF',
                      allocator.MARKER_ENV, 'XLA_FLAGS')}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  if choice:
    env[allocator.CHOICE_ENV] = choice
  p = subprocess.run(
      [sys.executable, '-m', 'rosetta', 'train',
       '--gin_file=experiments/tiny_django_en_fr.gin',
       f"--gin.train.model_dir='{run_dir}'", '--gin.train.total_steps=6',
       '--gin.train.log_period=2', '--gin.train.eval_period=0',
       "--gin.train.task_feature_lengths={'inputs': 32, 'targets': 32}"],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
  line = next(l for l in p.stdout.splitlines() if l.startswith('training '))
  losses = [json.loads(l)['loss'] for l in
            open(os.path.join(run_dir, 'train_metrics.jsonl'))]
  return line.rsplit('malloc: ', 1)[1], losses


@pytest.mark.slow
def test_rosetta_runs_under_a_retaining_allocator_by_default(tmp_path):
  if allocator.find() is None or allocator.accelerator_host({}):
    pytest.skip('no allocator library, or an accelerator host')
  default, losses = _train(str(tmp_path / 'default'), None)
  system, system_losses = _train(str(tmp_path / 'system'), 'system')
  assert default in ('jemalloc', 'mimalloc')
  assert system == 'glibc'
  assert len(losses) == 6 and losses == system_losses


def test_benchmark_children_get_one_allocator_each():
  from benchmarks import allocator_columns
  assert allocator_columns.without_allocator_options(
      ['--quick', '--allocators', 'glibc', 'retaining', '--steps', '3']) == [
          '--quick', '--steps', '3']
  assert allocator_columns.without_allocator_options(
      ['--allocators=glibc', '--quick']) == ['--quick']
  parent = {'JAX_PLATFORMS': 'cpu', 'LD_PRELOAD': '/x/libjemalloc.so.2',
            'MALLOC_CONF': 'retain:true', 'PATH': '/bin'}
  glibc = allocator_columns.child_environment('glibc', parent)
  assert 'LD_PRELOAD' not in glibc and 'MALLOC_CONF' not in glibc
  assert glibc['PATH'] == '/bin' and glibc[allocator.MARKER_ENV] == '1'
  retaining = allocator_columns.child_environment('retaining', parent)
  if allocator.find() is None:
    assert 'LD_PRELOAD' not in retaining
  else:
    assert retaining['LD_PRELOAD'] == allocator.find()[1]
