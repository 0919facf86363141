"""Resuming the input pipeline: from the saved iterator state vs replaying.

A resumed run must continue the exact stream. Replaying (rebuild the seeded
dataset, skip the consumed batches) re-reads, re-tokenizes and re-packs
every skipped example, so its cost grows with the step; the iterator state
saved in every checkpoint (`rosetta/data/iterator_state.py`) restores in
time independent of the step. For each depth this script consumes n
batches of a gin experiment's training input, saves the iterator state,
and times, in fresh pipelines, both ways to the first batch after n
(checking that both give that same batch):

    python -m benchmarks.input_resume --gin_file experiments/nmt_cpu_small.gin \\
        --gin "nmt.setup.vocab_path='runs/vocab/spm.model'" \\
        --batches 250 1000 4000

(nmt.setup trains the SentencePiece model there if it does not exist.)
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--gin_file', default='experiments/nmt_cpu_small.gin')
  p.add_argument('--gin', action='append', default=[],
                 help='extra gin bindings (KEY=VALUE)')
  p.add_argument('--batches', type=int, nargs='+', default=[250, 1000, 4000],
                 help='resume depths (batches consumed before the save)')
  return p.parse_args(argv)


def _pipeline_factory(args):
  import gin
  from rosetta import gin_utils, partitioning
  from rosetta.data import pipeline
  from rosetta.run import run_dir
  gin_utils.parse([args.gin_file], args.gin)
  run_dir.task_setup()
  model = run_dir.configured('train.model', args.gin_file)

  def query(name, default):
    try:
      return gin.query_parameter(name)
    except ValueError:
      return default

  kwargs = dict(
      split=query('train.split', 'train'),
      task_feature_lengths=gin.query_parameter('train.task_feature_lengths'),
      global_batch_size=gin.query_parameter('train.batch_size'),
      partitioner=partitioning.make_mesh(), seed=query('train.seed', 0),
      pack=query('train.pack', True),
      feature_converter_cls=getattr(model, 'FEATURE_CONVERTER_CLS', None))
  task = gin.query_parameter('train.task')
  return task, lambda **kw: pipeline.InputPipeline(task, **kwargs, **kw)


def _first_batch(make, **kw):
  start = time.perf_counter()
  pipe = make(**kw)
  how = pipe.start()
  batch = {k: v.__array__() for k, v in next(pipe).items()}
  return time.perf_counter() - start, how, batch


def _size_mb(prefix: str) -> float:
  d, base = os.path.split(prefix)
  return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
             if f.startswith(base)) / 2**20


def main(argv=None):
  args = parse_args(argv)
  import numpy as np
  task, make = _pipeline_factory(args)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for n in args.batches:
      pipe = make()
      start = time.perf_counter()
      for _ in range(n):
        next(pipe)
      read_s = time.perf_counter() - start
      prefix = os.path.join(tmp, f'it_{n}')
      start = time.perf_counter()
      if not pipe.save_iterator(prefix):
        raise SystemExit(f'{task}: tf.data cannot checkpoint this input')
      save_s = time.perf_counter() - start
      state = pipe.state()
      replay_s, how_r, batch_r = _first_batch(make, state=state)
      state_s, how_s, batch_s = _first_batch(make, state=state,
                                             iterator_checkpoint=prefix)
      assert (how_r, how_s) == ('replay', 'iterator state'), (how_r, how_s)
      same = all(np.array_equal(batch_r[k], batch_s[k]) for k in batch_r)
      rows.append((n, read_s, replay_s, state_s, save_s, _size_mb(prefix),
                   same))
      print(f'  {n} batches: replay {replay_s:.2f} s, iterator state '
            f'{state_s:.2f} s', flush=True)
  import gin
  print(f'\n{task}, global batch {gin.query_parameter("train.batch_size")}, '
        f'lengths {gin.query_parameter("train.task_feature_lengths")} '
        f'({args.gin_file}); seconds to the first batch after the resume '
        'point, from a fresh pipeline\n')
  print('| batches consumed | first read of them (s) | replay (s) | '
        'iterator state (s) | replay / state | save (s) | state size (MB) | '
        'same next batch |')
  print('|---:|---:|---:|---:|---:|---:|---:|---:|')
  for n, read_s, replay_s, state_s, save_s, mb, same in rows:
    print(f'| {n:,} | {read_s:.1f} | {replay_s:.2f} | {state_s:.2f} | '
          f'{replay_s / state_s:.1f}x | {save_s:.2f} | {mb:.2f} | '
          f'{"yes" if same else "NO"} |')


if __name__ == '__main__':
  main()
