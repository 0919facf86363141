"""`rosetta cache` (rosetta/data/beam_cache.py): a Beam DirectRunner cache
of a tiny Moses-file translation task, read back through seqio: the same
examples in the same order as the raw files, the same unshuffled batches,
exact resume of a shuffled cached pipeline, and no COMPLETED after a
failed run."""

import json
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf

from rosetta.data import beam_cache
from rosetta.data import parallel_corpus
from rosetta.data import pipeline
from translation import tasks

BYTES = seqio.ByteVocabulary()
LENGTHS = {'inputs': 32, 'targets': 32}
SHARDS, LINES = 3, 30


def _write_corpus(folder, shards=SHARDS, lines=LINES):
  os.makedirs(folder, exist_ok=True)
  for s in range(shards):
    for lang, word in (('en', 'line'), ('de', 'Zeile')):
      with open(os.path.join(folder, f'train-{s}.{lang}'), 'w') as f:
        for i in range(lines):
          f.write(f'{word} {s}.{i} ' + 'ab' * ((7 * i + s) % 11) + '\n')
  for lang in ('en', 'de'):
    with open(os.path.join(folder, f'valid.{lang}'), 'w') as f:
      f.write(''.join(f'{lang} valid {i}\n' for i in range(5)))


def _register(folder, suffix):
  corpus = parallel_corpus.ParallelCorpus(
      name='beamtoy', format='moses',
      splits={'train': f'{folder}/train-*.{{lang}}',
              'validation': f'{folder}/valid.{{lang}}'})
  return tasks.register_translation_tasks(BYTES, corpus, 'en-de',
                                          suffix=suffix)[0]


@pytest.fixture(scope='module')
def cached(tmp_path_factory):
  """{layout: task name} with each task cached under its own layout: one
  file per source shard, and files for one and for two hosts."""
  root = tmp_path_factory.mktemp('beam')
  folder = str(root / 'corpus')
  _write_corpus(folder)
  cache = str(root / 'cache')
  names = {None: _register(folder, '_files'), 1: _register(folder, '_h1'),
           2: _register(folder, '_h2')}
  for hosts, name in names.items():
    beam_cache.cache_tasks([name], cache, hosts=hosts)
  before = seqio.get_global_cache_dirs()
  seqio.add_global_cache_dirs([cache])
  yield names, cache
  seqio.set_global_cache_dirs(before)


def _rows(ds):
  return list(ds.as_numpy_iterator())


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      assert np.array_equal(x[k], y[k]), k


def test_layout_and_serialization():
  assert beam_cache.file_layout(3) == [[0], [1], [2]]
  assert beam_cache.file_layout(5, hosts=2) == [[0, 2, 4], [1, 3]]
  assert beam_cache.file_layout(1, hosts=4) == [[0]]
  ex = {'inputs': np.array([5, 6, 1], np.int32), 'inputs_pretokenized': b'x',
        'targets': np.array([], np.int32)}
  assert beam_cache.serialize(ex) == seqio.dict_to_tfexample(
      ex).SerializeToString()


def test_cached_files_hold_the_raw_examples_in_order(cached):
  names, cache = cached
  name = names[None]
  task = seqio.get_mixture_or_task(name)
  out = os.path.join(cache, name)
  assert task.cache_dir == out
  for split, files in (('train', SHARDS), ('validation', 1)):
    raw = _rows(task.get_dataset(None, split, shuffle=False))
    # File i, read alone, is source shard i: in file order, the raw stream.
    got = []
    for i in range(files):
      got += _rows(task.get_dataset(None, split, shuffle=False,
                                    use_cached=True,
                                    shard_info=seqio.ShardInfo(i, files)))
    _same(got, raw)
    with open(os.path.join(out, f'info.{split}.json')) as f:
      info = json.load(f)
    assert info['num_shards'] == files
    assert info['features']['inputs'] == {'shape': [None], 'dtype': 'int32'}
    stats = task.get_cached_stats(split)
    assert stats['examples'] == len(raw)
    # seqio counts tokens without EOS; raw examples end in EOS.
    assert stats['targets_tokens'] == sum(len(r['targets']) - 1 for r in raw)
    assert stats['inputs_max_tokens'] == max(len(r['inputs']) - 1
                                             for r in raw)
  assert sorted(os.listdir(out)) == [
      'COMPLETED', 'info.train.json', 'info.validation.json',
      'stats.train.json', 'stats.validation.json',
      'train.tfrecord-00000-of-00003', 'train.tfrecord-00001-of-00003',
      'train.tfrecord-00002-of-00003', 'validation.tfrecord-00000-of-00001']


@pytest.mark.parametrize('hosts', [1, 2])
def test_unshuffled_batches_equal_the_raw_ones(cached, hosts):
  """With files laid out for the hosts, each host's unshuffled cached
  batches are the ones it makes from the raw files."""
  names, _ = cached
  for index in range(hosts):
    def batches(use_cached):
      return _rows(pipeline.make_local_dataset(
          names[hosts], split='train', task_feature_lengths=LENGTHS,
          local_batch_size=4, seed=0, shuffle=False, num_epochs=1,
          process_index=index, process_count=hosts, use_cached=use_cached))
    raw = batches(False)
    assert len(raw) >= 3
    _same(batches(True), raw)


def test_shuffled_cached_pipeline_resumes_exactly(cached, mesh_data8,
                                                   tmp_path):
  names, _ = cached

  def make(**kw):
    return pipeline.InputPipeline(
        names[None], split='train', task_feature_lengths=LENGTHS,
        global_batch_size=8, partitioner=mesh_data8, seed=5, shuffle=True,
        use_cached=True, **kw)

  def host(batch):
    return {k: np.asarray(v) for k, v in batch.items()}
  a = make()
  for _ in range(3):
    next(a)
  prefix = str(tmp_path / 'it')
  assert a.save_iterator(prefix)
  state = json.loads(json.dumps(a.state()))
  want = [host(next(a)) for _ in range(6)]       # crosses an epoch
  b = make(state=state, iterator_checkpoint=prefix)
  assert b.start() == 'iterator state'
  _same([host(next(b)) for _ in range(6)], want)
  unshuffled = host(next(iter(pipeline.InputPipeline(
      names[None], split='train', task_feature_lengths=LENGTHS,
      global_batch_size=8, partitioner=mesh_data8, shuffle=False,
      use_cached=True))))
  first = host(next(make()))
  assert not np.array_equal(first['encoder_input_tokens'],
                            unshuffled['encoder_input_tokens'])


def test_a_failed_run_leaves_no_completed(tmp_path):
  folder = str(tmp_path / 'corpus')
  _write_corpus(folder)
  with open(os.path.join(folder, 'train-1.de'), 'a') as f:
    f.write('one line too many\n')       # shard 1 is not line-aligned
  name = _register(folder, '_broken')
  cache = str(tmp_path / 'cache')
  with pytest.raises(Exception, match='not line-aligned'):
    beam_cache.cache_tasks([name], cache, splits=['train'])
  out = os.path.join(cache, name)
  left = os.listdir(out)
  assert 'COMPLETED' not in left and 'info.train.json' not in left
  assert not [f for f in left if f.startswith('.')], left  # no temp files
  task = seqio.get_mixture_or_task(name)
  before = seqio.get_global_cache_dirs()
  seqio.add_global_cache_dirs([cache])
  try:
    assert task.cache_dir is None
    # Fixed input: the next run starts the folder afresh and completes.
    _write_corpus(folder)
    beam_cache.cache_tasks([name], cache, splits=['train'])
    assert task.cache_dir == out
    assert task.get_cached_stats('train')['examples'] == SHARDS * LINES
  finally:
    seqio.set_global_cache_dirs(before)


def test_command_line_with_gin(tmp_path, capsys):
  """`rosetta cache`: gin registers a mixture; its tasks are cached; a
  second run skips them."""
  folder = str(tmp_path / 'corpus')
  _write_corpus(folder, shards=1, lines=6)
  gin_file = tmp_path / 'setup.gin'
  gin_file.write_text(f"""
import translation.nmt
import rosetta.data.parallel_corpus
task_setup.register_fns = [@nmt.setup]
nmt.setup.corpus = @parallel_corpus.ParallelCorpus()
nmt.setup.languages = ['de']
nmt.setup.vocab_path = 'bytes'
nmt.setup.zero_shot = False
nmt.setup.mixture_name = 'beamgin_mixture'
parallel_corpus.ParallelCorpus.name = 'beamgin'
parallel_corpus.ParallelCorpus.format = 'moses'
parallel_corpus.ParallelCorpus.splits = {{
    'train': '{folder}/train-*.{{lang}}'}}
""")
  cache = str(tmp_path / 'cache')
  argv = ['--gin_file', str(gin_file), '--tasks', 'beamgin_mixture',
          '--output_cache_dir', cache, '--', '--runner', 'DirectRunner']
  assert beam_cache.main(argv) == 0
  printed = capsys.readouterr().out
  for name in ('beamgin_translate_en_de', 'beamgin_translate_de_en'):
    assert f'{name} train: 6 examples in 1 file(s)' in printed
    assert os.path.exists(os.path.join(cache, name, 'COMPLETED'))
  assert beam_cache.main(argv) == 0
  assert 'cached already' in capsys.readouterr().out
