"""Resume of the input pipeline from its own iterator state (O(1), not a
replay of the stream), the fallbacks, and the checkpoint item that holds
it."""

import json
import logging
import os

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from rosetta.checkpoint import manager as checkpoints

from rosetta.data import iterator_state as iterator_checkpoint
from tests.test_data import BYTES, fr_pairs, fr_task, host, make_pipeline  # noqa: F401


def _no_replay(monkeypatch):
  """Any replay of the stream (Dataset.skip) fails the test."""
  def refuse(self, count, name=None):
    raise AssertionError(f'the pipeline replayed {count} batches')
  monkeypatch.setattr(tf.data.Dataset, 'skip', refuse)


def _equal_batches(got, want):
  for g, w in zip(got, want, strict=True):
    for k in w:
      assert g[k].tobytes() == w[k].tobytes(), k


def test_resume_from_iterator_state_without_replay(fr_task, mesh_data4_model2,
                                                   tmp_path, monkeypatch):
  a = make_pipeline(fr_task, mesh_data4_model2, seed=3)
  for _ in range(3):
    next(a)
  prefix = str(tmp_path / 'process_0')
  assert a.save_iterator(prefix)
  assert iterator_checkpoint.exists(prefix)
  saved = json.loads(json.dumps(a.state()))
  want = [host(next(a)) for _ in range(5)]     # crosses epoch boundaries

  _no_replay(monkeypatch)
  b = make_pipeline(fr_task, mesh_data4_model2, seed=3, state=saved,
               iterator_checkpoint=prefix)
  assert b.start() == 'iterator state'
  _equal_batches([host(next(b)) for _ in range(5)], want)
  assert b.state() == a.state()


def test_iterator_state_not_the_count_sets_the_position(
    fr_task, mesh_data8, tmp_path, monkeypatch):
  """With the iterator state of batch 4 and a count of 0, the stream goes
  on from batch 4: the state, not a replay, positioned it."""
  a = make_pipeline(fr_task, mesh_data8, seed=1)
  first = host(next(a))
  for _ in range(3):
    next(a)
  prefix = str(tmp_path / 'it')
  a.save_iterator(prefix)
  fifth = host(next(a))
  _no_replay(monkeypatch)
  b = make_pipeline(fr_task, mesh_data8, seed=1,
               state={**a.state(), 'batches_consumed': 0},
               iterator_checkpoint=prefix)
  got = host(next(b))
  _equal_batches([got], [fifth])
  assert (got['encoder_input_tokens'].tobytes()
          != first['encoder_input_tokens'].tobytes())


def test_unreadable_iterator_state_falls_back_to_replay(
    fr_task, mesh_data8, tmp_path, caplog):
  a = make_pipeline(fr_task, mesh_data8, seed=2)
  for _ in range(2):
    next(a)
  prefix = str(tmp_path / 'it')
  a.save_iterator(prefix)
  saved = a.state()
  want = [host(next(a)) for _ in range(3)]
  with open(prefix + '.index', 'wb') as f:     # a truncated file
    f.write(b'\0' * 7)
  with caplog.at_level(logging.WARNING):
    b = make_pipeline(fr_task, mesh_data8, seed=2, state=saved,
                 iterator_checkpoint=prefix)
    assert b.start() == 'replay'
    got = [host(next(b)) for _ in range(3)]
  _equal_batches(got, want)
  assert 'could not restore the iterator state from ' + prefix in caplog.text
  assert 'replaying 2 batches instead' in caplog.text


def test_iterator_state_of_another_process_count_is_not_used(
    fr_task, mesh_data8, tmp_path, monkeypatch):
  a = make_pipeline(fr_task, mesh_data8)
  next(a)
  prefix = str(tmp_path / 'it')
  a.save_iterator(prefix)
  b = make_pipeline(fr_task, mesh_data8)
  b.restore({**a.state(), 'process_count': 2}, strict=False,
            iterator_checkpoint=prefix)
  assert b.start() == 'replay'               # another shard: not its state


def test_iterator_checkpoint_needs_the_state(fr_task, mesh_data8):
  with pytest.raises(ValueError, match='needs the pipeline state'):
    make_pipeline(fr_task, mesh_data8, iterator_checkpoint='/nonexistent/it')


def _generator_task():
  """A task whose source is a Python generator: tf.data cannot save it."""
  name = 'test_generator_pairs'
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    def gen():
      for i in range(64):
        yield {'inputs': f'word {i}', 'targets': f'mot {i}'}
    spec = {'inputs': tf.TensorSpec([], tf.string),
            'targets': tf.TensorSpec([], tf.string)}
    return tf.data.Dataset.from_generator(gen, output_signature=spec)
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, seqio.FunctionDataSource(dataset_fn, splits=['train']),
      output_features={'inputs': seqio.Feature(BYTES),
                       'targets': seqio.Feature(BYTES)},
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos])
  return name


def test_uncheckpointable_dataset_saves_nothing_and_warns(
    mesh_data8, tmp_path, caplog):
  pipe = make_pipeline(_generator_task(), mesh_data8, shuffle=False)
  next(pipe)
  prefix = str(tmp_path / 'it')
  with caplog.at_level(logging.WARNING):
    assert not pipe.save_iterator(prefix)
    assert not pipe.save_iterator(prefix)
  assert caplog.text.count('tf.data cannot checkpoint this iterator') == 1
  assert not iterator_checkpoint.exists(prefix)
  next(pipe)                                  # the stream goes on


def test_save_before_the_first_batch_writes_nothing(fr_task, mesh_data8,
                                                   tmp_path, monkeypatch):
  """A save before any batch does not build (or replay) the iterator."""
  a = make_pipeline(fr_task, mesh_data8, seed=2)
  for _ in range(2):
    next(a)
  _no_replay(monkeypatch)
  b = make_pipeline(fr_task, mesh_data8, seed=2, state=a.state())
  prefix = str(tmp_path / 'it')
  assert not b.save_iterator(prefix)        # would replay 2 batches to write
  assert not iterator_checkpoint.exists(prefix)


def test_checkpointer_commits_the_iterator_item_with_the_step(tmp_path):
  state = {'w': jax.numpy.arange(4.0)}
  calls = []

  def saver(prefix):
    calls.append(prefix)
    it = iter(tf.data.Dataset.range(10))
    next(it)
    iterator_checkpoint.save(it, prefix)
    return True

  with checkpoints.Checkpointer(tmp_path, save_interval_steps=2,
                                async_save=True) as ckpt:
    assert ckpt.save(2, state, {'batches_consumed': 2}, iterator_saver=saver)
    assert ckpt.save(4, state, {'batches_consumed': 4})   # without one
    assert not ckpt.save(5, state, {}, iterator_saver=saver)   # not due
    ckpt.wait()
    assert len(calls) == 1                  # called once, while saving 2
    prefix = ckpt.iterator_checkpoint(2)
    assert prefix == os.path.join(str(tmp_path), '2', 'input_iterator',
                                  'process_0')
    assert ckpt.iterator_checkpoint(4) is None
    step, restored, data_state = ckpt.restore(state, step=2)
  assert step == 2 and data_state == {'batches_consumed': 2}
  np.testing.assert_array_equal(restored['w'], state['w'])
  it = iter(tf.data.Dataset.range(10))
  iterator_checkpoint.restore(it, prefix)
  assert int(next(it)) == 1


def _order(n, seed, block=256):
  from rosetta.data import text_pairs
  return iter(text_pairs._permuted_indices(n, seed, block).unbatch().repeat())


def test_text_pair_shuffle_is_a_fresh_permutation_per_epoch(tmp_path):
  n = 50                               # blocks of 8: the last one partial
  it = _order(n, 4, block=8)
  epochs = [[int(next(it)) for _ in range(n)] for _ in range(3)]
  for e in epochs:
    assert sorted(e) == list(range(n))
  assert epochs[0] != epochs[1] != epochs[2] != list(range(n))
  again = _order(n, 4, block=8)
  assert [int(next(again)) for _ in range(n)] == epochs[0]
  other = _order(n, 5, block=8)
  assert [int(next(other)) for _ in range(n)] != epochs[0]

  # Its iterator state is small (it grows by ~2 bytes per element read in
  # the epoch in TF 2.21, whose plain range does the same; a whole-split
  # shuffle buffer costs ~200 bytes per element), and it restores across an
  # epoch boundary.
  big = 200_000
  it = _order(big, 4)
  for _ in range(big - 3):
    next(it)
  prefix = str(tmp_path / 'perm')
  iterator_checkpoint.save(it, prefix)
  want = [int(next(it)) for _ in range(6)]
  size = sum(os.path.getsize(os.path.join(tmp_path, f))
             for f in os.listdir(tmp_path))
  assert size < 1024 * 1024, size      # a whole-split shuffle buffer: 40 MB
  fresh = _order(big, 4)
  iterator_checkpoint.restore(fresh, prefix)
  assert [int(next(fresh)) for _ in range(6)] == want


def test_input_resume_benchmark_runs(capsys):
  import gin
  bench_dir = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'benchmarks')
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'input_resume_bench', os.path.join(bench_dir, 'input_resume.py'))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  try:
    bench.main(['--gin_file', 'experiments/tiny_django_en_fr.gin',
                '--gin', 'train.batch_size = 8', '--batches', '3'])
  finally:
    gin.clear_config()
  out = capsys.readouterr().out
  row = [l for l in out.splitlines() if l.startswith('| 3 |')]
  assert len(row) == 1 and row[0].endswith('| yes |'), out
