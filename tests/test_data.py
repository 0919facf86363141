"""seqio glue: text sources, tasks, the per-host input pipeline, resume, eval.

Real seqio, real tf.data, real text (Django's .po files everywhere; Multi30k
when the data directory is present). Byte vocabulary: id = UTF-8 byte + 3.
"""

import gzip
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from jax.sharding import NamedSharding, PartitionSpec as P

from rosetta.data import corpora
from rosetta.data import evaluation
from rosetta.data import pipeline
from rosetta.data import text_pairs
from rosetta.data.django_po import django_pairs

BYTES = seqio.ByteVocabulary()
TOY = [('hi', 'ok'), ('abc', 'd'), ('x', 'yz')]
TOY_LENGTHS = {'inputs': 8, 'targets': 6}
LENGTHS = {'inputs': 32, 'targets': 32}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI30K = os.path.join(corpora.data_dir(), 'multi30k', 'data', 'task1', 'raw')

PACKED = [  # the module docstring's worked example
    {'encoder_input_tokens': [107, 108, 1, 100, 101, 102, 1, 0],
     'encoder_segment_ids': [1, 1, 1, 2, 2, 2, 2, 0],
     'encoder_positions': [0, 1, 2, 0, 1, 2, 3, 0],
     'decoder_target_tokens': [114, 110, 1, 103, 1, 0],
     'decoder_input_tokens': [0, 114, 110, 0, 103, 0],
     'decoder_loss_weights': [1, 1, 1, 1, 1, 0],
     'decoder_segment_ids': [1, 1, 1, 2, 2, 0],
     'decoder_positions': [0, 1, 2, 0, 1, 0]},
    {'encoder_input_tokens': [123, 1, 0, 0, 0, 0, 0, 0],
     'encoder_segment_ids': [1, 1, 0, 0, 0, 0, 0, 0],
     'encoder_positions': [0, 1, 0, 0, 0, 0, 0, 0],
     'decoder_target_tokens': [124, 125, 1, 0, 0, 0],
     'decoder_input_tokens': [0, 124, 125, 0, 0, 0],
     'decoder_loss_weights': [1, 1, 1, 0, 0, 0],
     'decoder_segment_ids': [1, 1, 1, 0, 0, 0],
     'decoder_positions': [0, 1, 2, 0, 0, 0]},
]
UNPACKED = [
    {'encoder_input_tokens': [107, 108, 1, 0, 0, 0, 0, 0],
     'decoder_target_tokens': [114, 110, 1, 0, 0, 0],
     'decoder_input_tokens': [0, 114, 110, 1, 0, 0],
     'decoder_loss_weights': [1, 1, 1, 0, 0, 0]},
    {'encoder_input_tokens': [100, 101, 102, 1, 0, 0, 0, 0],
     'decoder_target_tokens': [103, 1, 0, 0, 0, 0],
     'decoder_input_tokens': [0, 103, 1, 0, 0, 0],
     'decoder_loss_weights': [1, 1, 0, 0, 0, 0]},
    {'encoder_input_tokens': [123, 1, 0, 0, 0, 0, 0, 0],
     'decoder_target_tokens': [124, 125, 1, 0, 0, 0],
     'decoder_input_tokens': [0, 124, 125, 1, 0, 0],
     'decoder_loss_weights': [1, 1, 1, 0, 0, 0]},
]


def as_lists(ds):
  return [{k: v.tolist() for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


def host(batch):
  return {k: np.asarray(v) for k, v in batch.items()}


@pytest.fixture(scope='module')
def toy_task():
  text_pairs.register_text_pair_task('test_toy', text_pairs.pairs_source({'train': TOY}),
                               BYTES, replace=True)
  return 'test_toy'


@pytest.fixture(scope='module')
def fr_pairs():
  return django_pairs(['fr'])['fr']


@pytest.fixture(scope='module')
def fr_task(fr_pairs):
  # 40 pairs: a few packed batches cross epoch boundaries (reshuffles).
  text_pairs.register_text_pair_task(
      'test_django_en_fr', text_pairs.pairs_source({'train': fr_pairs[:40]}),
      BYTES, input_prefix='>>fr<< ', replace=True)
  return 'test_django_en_fr'


def make_pipeline(task, mesh, **kw):
  args = dict(split='train', task_feature_lengths=LENGTHS,
              global_batch_size=8, partitioner=mesh, seed=0, shuffle=True,
              pack=True)
  args.update(kw)
  return pipeline.InputPipeline(task, **args)


# ---------------------------------------------------------- converters ---


@pytest.mark.parametrize('pack, expected', [(True, PACKED),
                                            (False, UNPACKED)])
def test_feature_converter_literal_tokens(toy_task, pack, expected):
  ds = seqio.get_dataset(toy_task, TOY_LENGTHS,
                         seqio.EncDecFeatureConverter(pack=pack),
                         dataset_split='train', shuffle=False)
  assert as_lists(ds) == expected


def test_task_keeps_pretokenized_text_and_prefix(fr_task, fr_pairs):
  ex = next(seqio.get_mixture_or_task(fr_task).get_dataset(
      LENGTHS, split='train', shuffle=False).as_numpy_iterator())
  src, tgt = fr_pairs[0]
  assert ex['inputs_pretokenized'].decode() == '>>fr<< ' + src
  assert ex['targets_pretokenized'].decode() == tgt
  assert BYTES.decode(ex['targets'].tolist()) == tgt
  assert ex['targets'][-1] == 1  # EOS


# -------------------------------------------------------- global batch ---


def test_global_batch_sharding_and_content(toy_task, mesh_data4_model2):
  pipe = make_pipeline(toy_task, mesh_data4_model2, shuffle=False,
                  task_feature_lengths=TOY_LENGTHS)
  batch = next(pipe)
  local = next(make_pipeline(toy_task, mesh_data4_model2, shuffle=False,
                        task_feature_lengths=TOY_LENGTHS
                        ).local_dataset().as_numpy_iterator())
  expected = NamedSharding(mesh_data4_model2, P(('data', 'fsdp'), None))
  assert set(batch) == set(PACKED[0])
  for k, v in batch.items():
    assert isinstance(v, jax.Array)
    assert v.shape == (8, len(PACKED[0][k])) and v.dtype == jnp.int32
    assert v.sharding.is_equivalent_to(expected, 2), (k, v.sharding)
    # 8 devices, batch split 4 ways, each row block replicated over 'model'.
    assert sorted(s.data.shape[0] for s in v.addressable_shards) == [2] * 8
    np.testing.assert_array_equal(np.asarray(v), local[k])
    # Unshuffled, the first row is the literal packed row (later rows pack
    # across the epoch boundary of the repeated 3-example stream).
    assert np.asarray(v)[0].tolist() == PACKED[0][k]
  spec = pipe.element_spec['encoder_input_tokens']
  assert spec.shape == (8, 8) and spec.sharding.is_equivalent_to(expected, 2)


def test_batch_size_validation_names_the_field(toy_task, mesh_data4_model2,
                                               mesh_data2_fsdp2_model2):
  with pytest.raises(ValueError, match=r'global_batch_size=6 .*data-parallel '
                     r'size 4'):
    make_pipeline(toy_task, mesh_data4_model2, global_batch_size=6)
  with pytest.raises(ValueError, match=r"global_batch_size=2 .*\('data', "
                     r"'fsdp'\)"):
    make_pipeline(toy_task, mesh_data2_fsdp2_model2, global_batch_size=2)


# ------------------------------------------------- determinism, resume ---


def test_same_seed_same_batches_other_seed_differs(fr_task, mesh_data8):
  a, b, c = (make_pipeline(fr_task, mesh_data8, seed=s) for s in (7, 7, 8))
  batches_a = [host(next(a)) for _ in range(3)]
  batches_b = [host(next(b)) for _ in range(3)]
  batches_c = [host(next(c)) for _ in range(3)]
  for x, y in zip(batches_a, batches_b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x[k], y[k])
             for x, y in zip(batches_a, batches_c) for k in x)


def test_resume_is_byte_identical(fr_task, mesh_data4_model2):
  a = make_pipeline(fr_task, mesh_data4_model2, seed=3)
  stream = [host(next(a)) for _ in range(2)]
  saved = json.loads(json.dumps(a.state()))   # as a checkpoint would
  stream += [host(next(a)) for _ in range(5)]  # crosses epoch boundaries
  assert saved['batches_consumed'] == 2 and saved['seed'] == 3
  assert saved['task'] == fr_task

  b = make_pipeline(fr_task, mesh_data4_model2, seed=3, state=saved)
  for expected in stream[2:]:
    got = host(next(b))
    for k in expected:
      assert got[k].tobytes() == expected[k].tobytes(), k
  assert b.state() == a.state()
  a.restore(saved)  # rewinding an existing pipeline works too
  np.testing.assert_array_equal(host(next(a))['encoder_input_tokens'],
                                stream[2]['encoder_input_tokens'])


def test_restore_refuses_another_stream(fr_task, mesh_data8):
  pipe = make_pipeline(fr_task, mesh_data8, seed=0)
  state = pipe.state()
  with pytest.raises(ValueError, match=r'seed=1 .* seed=0'):
    pipe.restore({**state, 'seed': 1})
  with pytest.raises(ValueError, match=r'process_count=2'):
    pipe.restore({**state, 'process_count': 2})
  pipe.restore({**state, 'process_count': 2, 'batches_consumed': 1},
               strict=False)
  assert pipe.state()['batches_consumed'] == 1


def test_hosts_read_disjoint_shards(fr_task, fr_pairs):
  # What two processes would read: same seeded order, every 2nd example.
  seen = []
  for index in range(2):
    ds = pipeline.make_local_dataset(
        fr_task, split='train',
        task_feature_lengths={'inputs': 256, 'targets': 256},
        local_batch_size=1, seed=5, shuffle=True, pack=False, num_epochs=1,
        process_index=index, process_count=2)
    seen.append([BYTES.decode(ex['decoder_target_tokens'][0].tolist())
                 for ex in ds.as_numpy_iterator()])
  assert len(seen[0]) == len(seen[1]) == 20
  expected = sorted(t.strip() for _, t in fr_pairs[:40])
  assert sorted(seen[0] + seen[1]) == expected


# ------------------------------------------------------- text sources ---


def write(path, text_or_bytes):
  raw = (text_or_bytes if isinstance(text_or_bytes, bytes)
         else text_or_bytes.encode())
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(raw)
  return str(path)


def test_parallel_text_source_reads_gz_skips_empty(tmp_path):
  src = write(tmp_path / 's.en.gz', 'one\r\n\ntwo\u2028half\n  three \n')
  tgt = write(tmp_path / 't.de', 'eins\r\nleer\nzwei\u2028halb\ndrei')
  source = text_pairs.parallel_text_source({'train': (src, tgt)})
  assert source.pairs('train') == [('one', 'eins'),
                                   ('two\u2028half', 'zwei\u2028halb'),
                                   ('three', 'drei')]
  stats = source.stats('train')
  assert (stats.lines, stats.pairs, stats.skipped_empty) == (4, 3, 1)
  assert text_pairs.read_parallel_text(src, tgt, max_lines=1) == [('one', 'eins')]


def test_parallel_text_source_mismatched_lines_names_both_files(tmp_path):
  src = write(tmp_path / 'a.en', 'one\ntwo\nthree\n')
  tgt = write(tmp_path / 'a.de', 'eins\nzwei\n')
  source = text_pairs.parallel_text_source({'train': (src, tgt)})
  with pytest.raises(ValueError) as e:
    source.pairs('train')
  assert f'{src} has 3 lines' in str(e.value)
  assert f'{tgt} has 2' in str(e.value)


def test_parallel_text_source_bad_utf8_names_file_and_line(tmp_path):
  src = write(tmp_path / 'b.en', 'one\ntwo\nthree\n')
  tgt = write(tmp_path / 'b.de.gz', b'eins\nzwei\ndr\xffei\n')
  with pytest.raises(ValueError, match=rf'{tgt}:3: not valid UTF-8'):
    text_pairs.read_parallel_text(src, tgt)
  with pytest.raises(ValueError, match=rf'{tgt}:3:'):  # also past max_lines
    text_pairs.read_parallel_text(src, tgt, max_lines=1)


def test_a_truncated_gzip_file_is_named(tmp_path):
  whole = write(tmp_path / 'w.en.gz', 'one\ntwo\n' * 200)
  cut = tmp_path / 'cut.en.gz'
  with open(whole, 'rb') as f:
    cut.write_bytes(f.read()[:40])
  with pytest.raises(ValueError, match=rf'{cut}: not a complete gzip file'):
    text_pairs.read_lines(str(cut))


def test_empty_split_is_an_error():
  source = text_pairs.pairs_source({'train': [(' ', 'x'), ('y', '')]})
  with pytest.raises(ValueError, match=r"'train' has no pairs \(2 read, 2 "):
    source.pairs('train')


@pytest.mark.skipif(not os.path.isdir(MULTI30K), reason=(
    f'Multi30k not found at {MULTI30K}; set ROSETTA_DATA_DIR to the '
    'directory holding multi30k/'))
def test_multi30k_en_de_batches(mesh_data4_model2):
  src_path = os.path.join(MULTI30K, 'train.en.gz')
  tgt_path = os.path.join(MULTI30K, 'train.de.gz')
  source = text_pairs.parallel_text_source({'train': (src_path, tgt_path)},
                                     max_lines=300)
  text_pairs.register_text_pair_task('test_multi30k_en_de', source, BYTES,
                               input_prefix='>>de<< ', replace=True)
  assert source.stats('train').pairs == 300
  with gzip.open(tgt_path, 'rt', encoding='utf-8') as f:
    first_de = f.readline().strip()
  assert source.pairs('train')[0][1] == first_de
  lengths = {'inputs': 128, 'targets': 128}
  pipe = make_pipeline('test_multi30k_en_de', mesh_data4_model2,
                  task_feature_lengths=lengths)
  for _ in range(2):
    batch = host(next(pipe))
    assert batch['decoder_target_tokens'].shape == (8, 128)
    assert batch['decoder_loss_weights'].sum(axis=1).min() > 0
    assert batch['decoder_segment_ids'].max() >= 2  # captions got packed
    text = BYTES.decode(batch['decoder_target_tokens'][0].tolist())
    assert text in {t for _, t in source.pairs('train')}  # whole 1st segment


# ----------------------------------------------------------- evaluator ---


def exact_match(targets, predictions):
  return {'exact_match': 100.0 * np.mean([t == p for t, p in
                                          zip(targets, predictions)])}


def mean_score(targets, scores):
  return {'mean_score': float(np.mean(scores)),
          'mean_target_bytes_plus_eos': float(np.mean(
              [len(t.encode()) + 1 for t in targets]))}


def test_evaluator_glue_copying_targets_scores_100(fr_pairs, mesh_data4_model2):
  # 21 examples, global batch 8: the last batch carries 3 padding rows.
  task = 'test_django_en_fr_eval'
  text_pairs.register_text_pair_task(
      task, text_pairs.pairs_source({'validation': fr_pairs[40:61]}), BYTES,
      metric_fns=[exact_match, mean_score], replace=True)
  evaluator = evaluation.make_evaluator(task, 'validation')
  calls = []

  @jax.jit
  def copy_targets(features):
    calls.append(features['decoder_target_tokens'].shape)
    return features['decoder_target_tokens']

  @jax.jit
  def target_length(features):
    return jnp.sum(features['decoder_loss_weights'], axis=1).astype(float)

  kw = dict(global_batch_size=8, partitioner=mesh_data4_model2)
  metrics, outputs = evaluator.evaluate(
      compute_metrics=True, step=0,
      predict_fn=evaluation.make_predict_fn(copy_targets, **kw),
      score_fn=evaluation.make_score_fn(target_length, **kw))
  result = metrics.result()[task]
  assert result['exact_match'] == 100.0
  assert result['mean_score'] == result['mean_target_bytes_plus_eos']
  assert len(calls) == 1  # one compiled shape for all 3 batches
  predictions = outputs[task][seqio.metrics.ModelOutputType.PREDICTION]
  assert len(predictions) == 21

  # The metric is not vacuous: all-padding predictions score 0.
  metrics, _ = evaluator.evaluate(
      compute_metrics=True, step=1,
      predict_fn=evaluation.make_predict_fn(
          lambda f: jnp.zeros_like(f['decoder_target_tokens']), **kw),
      score_fn=evaluation.make_score_fn(target_length, **kw))
  assert metrics.result()[task]['exact_match'] == 0.0

  batches = list(evaluation.eval_batches(evaluator.cached_model_datasets[task], 8,
                                   mesh_data4_model2))
  assert [int(b.mask.sum()) for b in batches] == [8, 8, 5]
  assert batches[-1].indices.tolist() == [16, 17, 18, 19, 20, -1, -1, -1]
  assert batches[-1].features['encoder_input_tokens'].sharding.is_equivalent_to(
      NamedSharding(mesh_data4_model2, P(('data', 'fsdp'), None)), 2)
  evaluator.close()


def test_make_evaluator_refuses_packing(fr_task):
  with pytest.raises(ValueError, match='pack=False'):
    evaluation.make_evaluator(fr_task, 'train',
                        feature_converter=seqio.EncDecFeatureConverter(
                            pack=True))


# ------------------------------------------------------------ two hosts ---

_HOST = textwrap.dedent('''
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, seqio
    out, process_id, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}',
                               num_processes=2, process_id=process_id)
    from rosetta import partitioning
    from rosetta.data import pipeline, text_pairs
    from rosetta.data.django_po import django_pairs
    pairs = django_pairs(['fr'])['fr'][:40]
    text_pairs.register_text_pair_task('fr', text_pairs.pairs_source({'train': pairs}),
                                 seqio.ByteVocabulary())
    mesh = partitioning.make_mesh(data=4, model=2)
    kw = dict(split='train', task_feature_lengths={'inputs': 32,
              'targets': 32}, global_batch_size=8, partitioner=mesh, seed=3)
    pipe = pipeline.InputPipeline('fr', **kw)
    total = jax.jit(lambda b: jnp.sum(b['decoder_target_tokens']))
    report = {'batches': [], 'state': None}
    for step in range(3):
      batch = next(pipe)
      if step == 0:
        report['state'] = pipe.state()
      rows = {}
      for s in batch['decoder_target_tokens'].addressable_shards:
        rows[s.index[0].start] = np.asarray(s.data).tolist()
      report['batches'].append({'rows': rows,
                                'global_sum': int(total(batch))})
    resumed = pipeline.InputPipeline('fr', state=report['state'], **kw)
    again = next(resumed)['decoder_target_tokens']
    report['resumed_rows'] = {s.index[0].start: np.asarray(s.data).tolist()
                              for s in again.addressable_shards}
    with open(f'{out}.{process_id}.json', 'w') as f:
      json.dump(report, f)
''')


@pytest.mark.slow
def test_two_processes_read_disjoint_shards_into_one_batch(tmp_path):
  script = tmp_path / 'host.py'
  script.write_text(_HOST)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO,
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  out = str(tmp_path / 'report')
  procs = [subprocess.Popen([sys.executable, str(script), out, str(i),
                             str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-3000:]
  reports = []
  for i in range(2):
    with open(f'{out}.{i}.json') as f:
      reports.append(json.load(f))
  a, b = reports
  assert a['state'] == b['state'] and a['state']['process_count'] == 2
  for step, (ba, bb) in enumerate(zip(a['batches'], b['batches'])):
    # Host 0 holds global rows 0-3, host 1 rows 4-7 (data axis split 4|4).
    assert sorted(map(int, ba['rows'])) == [0, 2]
    assert sorted(map(int, bb['rows'])) == [4, 6]
    assert not set(map(str, ba['rows'].values())) & set(
        map(str, bb['rows'].values()))   # different examples on each host
    assert ba['global_sum'] == bb['global_sum'] == sum(
        np.sum(r) for rep in (ba, bb) for r in rep['rows'].values())
    if step == 1:  # resumed after batch 0: batch 1 again, on both hosts
      assert a['resumed_rows'] == ba['rows'] and b['resumed_rows'] == bb['rows']
