"""Length-bucketed training batches: bucket assignment, cutting only padding,
the seeded bucket sequence (the same on every host), exact resume, and a
dual-encoder loss that does not depend on the bucket a row was padded to."""

import os

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf

from retrieval.dense import dual_encoder as de
from retrieval.dense import dual_encoder_model as dem
from retrieval.dense import pair_tasks
from rosetta import optimizers, partitioning, trainer
from rosetta.data import corpora
from rosetta.data import pipeline
from rosetta.data import length_buckets
from rosetta.model.encoder_decoder import T5Config

DATA = corpora.data_dir()
LENGTHS = {'queries': 64, 'positives': 96}
BUCKETS = [{'query_tokens': 32, 'positive_tokens': 32},
           {'query_tokens': 64, 'positive_tokens': 48}]
CONVERTER = dem.DualEncoderFeatureConverter


def need_tatoeba():
  if not os.path.isdir(os.path.join(DATA, 'tatoeba_v2021')):
    pytest.skip(f'tatoeba_v2021 not under {DATA}')


def test_check_appends_full_lengths_and_names_bad_fields():
  full = {'query_tokens': 64, 'positive_tokens': 96, 'query_ids': 1}
  assert length_buckets.check(BUCKETS, full) == BUCKETS + [
      {'query_tokens': 64, 'positive_tokens': 96}]
  # A feature a bucket leaves out keeps its full length there.
  assert length_buckets.check(
      [{'query_tokens': 16, 'positive_tokens': 32},
       {'positive_tokens': 48}], full) == [
           {'query_tokens': 16, 'positive_tokens': 32},
           {'query_tokens': 64, 'positive_tokens': 48},
           {'query_tokens': 64, 'positive_tokens': 96}]
  bad = [
      ({'query_tokens': 32}, TypeError, 'expected a list'),
      ([], ValueError, 'empty'),
      ([{}], TypeError, r'length_buckets\[0\]'),
      ([{'query_tokns': 8}], ValueError,
       r"length_buckets\[0\]\['query_tokns'\]: not a model feature"),
      ([{'query_tokens': 0}], ValueError, r'= 0: must be in \[1, 64\]'),
      ([{'positive_tokens': 97}], ValueError, r'= 97: must be in \[1, 96\]'),
      ([{'query_tokens': True}], TypeError, 'expected an int'),
      ([{'positive_tokens': 48}, {'positive_tokens': 32}], ValueError,
       r"length_buckets\[0\]\['positive_tokens'\] = 48 is longer than "
       r'length_buckets\[1\] \(32\): list buckets shortest first'),
      ([{'query_tokens': 16}, {'positive_tokens': 48}], ValueError,
       r"length_buckets\[0\] leaves 'positive_tokens' at its full length "
       r'96, which is longer than length_buckets\[1\] \(48\)'),
  ]
  for buckets, err, msg in bad:
    with pytest.raises(err, match=msg):
      length_buckets.check(buckets, full)


def test_content_length_is_after_the_last_token():
  f = length_buckets.content_length
  assert int(f(tf.constant([5, 0, 7, 0, 0]))) == 3
  assert int(f(tf.constant([0, 0, 0]))) == 0
  assert int(f(tf.constant([[4, 0, 0, 0], [1, 2, 3, 0]]))) == 3  # max row
  ex = {'a': tf.constant([1, 1, 1, 0, 0, 0]), 'b': tf.constant([1, 0, 0])}
  buckets = [{'a': 2}, {'a': 3, 'b': 1}, {'a': 6, 'b': 3}]
  assert int(length_buckets.bucket_index(ex, buckets)) == 1
  cut = length_buckets.cut(ex, buckets[1])
  assert cut['a'].numpy().tolist() == [1, 1, 1]
  assert cut['b'].numpy().tolist() == [1]


def _toy_examples(n=600, seed=0):
  """Rows of random lengths 1..12, padded to 12, row i holding value i+1."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, 13, size=n)
  rows = np.zeros((n, 12), np.int32)
  for i, n_tok in enumerate(lengths):
    rows[i, :n_tok] = i + 1
  return tf.data.Dataset.from_tensor_slices({'tokens': rows}), lengths


def test_batches_hold_the_same_rows_cut_to_their_bucket():
  ds, lengths = _toy_examples()
  buckets = length_buckets.check([{'tokens': 4}, {'tokens': 8}],
                                 {'tokens': 12})
  shares = length_buckets.estimate_shares(ds, buckets, num_examples=600)
  want = np.bincount(np.digitize(lengths, [4.5, 8.5]), minlength=3) / 600
  np.testing.assert_allclose(shares, want)
  batches = list(length_buckets.bucketed_batches(
      lambda: ds, buckets, 4, shares, seed=3).as_numpy_iterator())
  seen = {b: [] for b in range(3)}
  for batch in batches:
    width = batch['tokens'].shape[1]
    b = [4, 8, 12].index(width)
    for row in batch['tokens']:
      i = int(row[0]) - 1
      assert row.tolist() == [i + 1] * lengths[i] + [0] * (width - lengths[i])
      seen[b].append(i)
  for b, lo, hi in ((0, 1, 4), (1, 5, 8), (2, 9, 12)):
    # Each bucket's rows: the stream's rows of that length, in order, until
    # the first bucket runs dry (stop_on_empty_dataset).
    order = [i for i in range(600) if lo <= lengths[i] <= hi]
    assert seen[b] == order[:len(seen[b])] and seen[b], b
  # Same seed, same sequence; another seed, another one.
  again = list(length_buckets.bucketed_batches(
      lambda: ds, buckets, 4, shares, seed=3).as_numpy_iterator())
  assert all(np.array_equal(a['tokens'], b['tokens'])
             for a, b in zip(batches, again))
  other = [b['tokens'].shape[1] for b in length_buckets.bucketed_batches(
      lambda: ds, buckets, 4, shares, seed=4).as_numpy_iterator()]
  assert other != [b['tokens'].shape[1] for b in batches]


def test_grouped_batches_read_the_stream_once():
  ds, lengths = _toy_examples()
  buckets = length_buckets.check([{'tokens': 4}, {'tokens': 8}],
                                 {'tokens': 12})
  seen = {4: [], 8: [], 12: []}
  for batch in length_buckets.grouped_batches(
      ds, buckets, 4).as_numpy_iterator():
    width = batch['tokens'].shape[1]
    for row in batch['tokens']:
      i = int(row[0]) - 1
      assert row.tolist() == [i + 1] * lengths[i] + [0] * (width - lengths[i])
      seen[width].append(i)
  for width, lo in ((4, 1), (8, 5), (12, 9)):
    order = [i for i in range(600) if lo <= lengths[i] <= width]
    # Every row of the one pass, in order, but a last part-filled batch.
    assert seen[width] == order[:len(order) // 4 * 4], width


def test_bucket_draws_follow_the_shares_and_skip_empty_buckets():
  ds = tf.data.Dataset.from_tensor_slices(
      {'tokens': np.ones((8, 6), np.int32)}).repeat()
  buckets = [{'tokens': 2}, {'tokens': 4}, {'tokens': 6}]
  shares = [0.0, 0.0, 1.0]        # only full rows exist: never wait on 0, 1
  widths = [b['tokens'].shape[1] for b in length_buckets.bucketed_batches(
      lambda: ds, buckets, 2, shares, seed=0).take(50).as_numpy_iterator()]
  assert widths == [6] * 50
  # Draws alone: 4,000 steps at shares 0.2/0.3/0.5 (3 sigma ~ 0.02).
  rows = np.zeros((3, 6), np.int32)
  rows[0, :2], rows[1, :4], rows[2, :] = 1, 1, 1
  ds = tf.data.Dataset.from_tensor_slices({'tokens': rows}).repeat()
  widths = [b['tokens'].shape[1] for b in length_buckets.bucketed_batches(
      lambda: ds, buckets, 1, [0.2, 0.3, 0.5], seed=1).take(4000)
            .as_numpy_iterator()]
  freq = np.bincount([[2, 4, 6].index(w) for w in widths]) / 4000
  np.testing.assert_allclose(freq, [0.2, 0.3, 0.5], atol=0.025)
  with pytest.raises(ValueError, match='shares'):
    length_buckets.bucketed_batches(lambda: ds, buckets, 1, [0.5, 0.5],
                                    seed=0)


def _pipe(mesh, name, **kw):
  kw.setdefault('length_buckets', BUCKETS)
  return pipeline.InputPipeline(
      name, split='train', task_feature_lengths=LENGTHS, global_batch_size=16,
      partitioner=mesh, seed=0, pack=False, feature_converter_cls=CONVERTER,
      **kw)


def _tatoeba_task():
  need_tatoeba()
  return pair_tasks.register_tatoeba_pair_task(seqio.ByteVocabulary(), 'de')


def test_pipeline_batches_regroup_the_fixed_length_stream(mesh_data8):
  name = _tatoeba_task()
  pipe = _pipe(mesh_data8, name)
  assert pipe.bucket_shares is None   # one process: batches as they fill
  shares = pipeline.estimate_bucket_shares(
      name, BUCKETS, split='train', task_feature_lengths=LENGTHS, seed=0,
      shuffle=True, pack=False, num_epochs=None, process_count=2,
      use_cached=False, feature_converter_cls=CONVERTER)
  assert shares.sum() == pytest.approx(1.0) and all(shares > 0.05), shares
  # AOT lowering sees the full lengths (the worst case).
  assert pipe.element_spec['positive_tokens'].shape == (16, 96)
  fixed = pipeline.make_local_dataset(
      name, split='train', task_feature_lengths=LENGTHS, local_batch_size=1,
      seed=0, pack=False, feature_converter_cls=CONVERTER)
  def used(row):
    nonzero = np.flatnonzero(row)
    return nonzero[-1] + 1 if len(nonzero) else 0

  stream = {0: [], 1: [], 2: []}     # the fixed-length rows by bucket
  for ex in fixed.take(2000).as_numpy_iterator():
    ex = {k: v[0] for k, v in ex.items()}
    q, p = used(ex['query_tokens']), used(ex['positive_tokens'])
    stream[0 if q <= 32 and p <= 32 else 1 if p <= 48 else 2].append(ex)
  widths, by_bucket = [], {0: [], 1: [], 2: []}
  for _ in range(30):
    batch = {k: np.asarray(v) for k, v in next(pipe).items()}
    b = [32, 48, 96].index(batch['positive_tokens'].shape[1])
    assert batch['query_tokens'].shape[1] == [32, 64, 64][b]
    widths.append(b)
    by_bucket[b] += [{k: v[i] for k, v in batch.items()} for i in range(16)]
  assert len(set(widths)) == 3, widths
  for b, rows in by_bucket.items():
    # A bucket's rows are the fixed-length stream's rows of that bucket, in
    # order, cut to its lengths: only padding is cut.
    assert len(rows) <= len(stream[b])
    for got, ex in zip(rows, stream[b]):
      for k, v in got.items():
        if not v.ndim:                 # the ids (fingerprints)
          assert v == ex[k], k
          continue
        n = v.shape[-1]
        np.testing.assert_array_equal(v, ex[k][:n])
        assert not ex[k][n:].any()


def test_pipeline_resumes_exactly_and_refuses_other_buckets(mesh_data8,
                                                            tmp_path):
  name = _tatoeba_task()
  pipe = _pipe(mesh_data8, name)
  for _ in range(7):
    next(pipe)
  state = pipe.state()
  assert pipe.save_iterator(str(tmp_path / 'it'))
  want = [{k: np.asarray(v) for k, v in next(pipe).items()}
          for _ in range(5)]
  for kw in ({}, {'iterator_checkpoint': str(tmp_path / 'it')}):
    again = _pipe(mesh_data8, name, state=state, **kw)
    for w in want:
      got = next(again)
      assert set(got) == set(w)
      for k in w:
        np.testing.assert_array_equal(np.asarray(got[k]), w[k])
  with pytest.raises(ValueError, match='length_buckets'):
    _pipe(mesh_data8, name, state=state, length_buckets=BUCKETS[:1])
  with pytest.raises(ValueError, match='length_buckets'):
    _pipe(mesh_data8, name, state=state, length_buckets=None)


def _host_dataset(name, index):
  return pipeline.make_local_dataset(
      name, split='train', task_feature_lengths=LENGTHS, local_batch_size=4,
      seed=5, pack=False, process_index=index, process_count=2,
      feature_converter_cls=CONVERTER, length_buckets=BUCKETS)


def test_every_host_draws_the_same_shapes(tmp_path):
  name = _tatoeba_task()
  shapes = []
  for index in (0, 1):
    shapes.append([(b['query_tokens'].shape, b['positive_tokens'].shape)
                   for b in _host_dataset(name, index).take(40)
                   .as_numpy_iterator()])
  assert shapes[0] == shapes[1]
  assert len(set(shapes[0])) == 3
  # The drawn sequence and every bucket's reader resume from the iterator
  # state (what InputPipeline.save_iterator writes on each host).
  it = iter(_host_dataset(name, 1))
  for _ in range(9):
    next(it)
  path = tf.train.Checkpoint(it=it).save(str(tmp_path / 'it'))
  want = [next(it) for _ in range(6)]
  again = iter(_host_dataset(name, 1))
  tf.train.Checkpoint(it=again).restore(path)
  for w in want:
    got = next(again)
    for k in w:
      np.testing.assert_array_equal(got[k].numpy(), w[k].numpy())


def test_dual_encoder_loss_does_not_depend_on_the_padding(mesh_data8):
  name = _tatoeba_task()
  cfg = de.DualEncoderConfig(
      encoder=T5Config(vocab_size=384, emb_dim=32, num_heads=4, head_dim=8,
                       mlp_dim=64, num_encoder_layers=2, num_decoder_layers=1,
                       dropout_rate=0.0),
      temperature=0.1)
  model = dem.DualEncoderModel(cfg)
  part = partitioning.Partitioner(mesh_data8)
  sched = optimizers.learning_rate_schedule('constant', 1e-3, 1)
  tr = trainer.Trainer(model, part, optimizers.make_optimizer('adamw', sched),
                       sched)
  state = tr.init_state()
  pipe = _pipe(mesh_data8, name)
  checked = set()
  while len(checked) < 2:
    batch = next(pipe)
    width = batch['positive_tokens'].shape[1]
    if width == 96 or width in checked:
      continue
    checked.add(width)
    padded = {k: np.asarray(v) for k, v in batch.items()}
    for k, full in (('query_tokens', 64), ('positive_tokens', 96)):
      v = padded[k]
      padded[k] = np.pad(v, [(0, 0), (0, full - v.shape[1])])
    padded = jax.device_put(padded, tr.batch_shardings(padded))
    cut, whole = tr.eval_step(state, batch), tr.eval_step(state, padded)
    for k in ('loss_sum', 'correct', 'num_tokens'):
      np.testing.assert_allclose(float(cut[k]), float(whole[k]), rtol=2e-5,
                                 err_msg=f'{k} at width {width}')
