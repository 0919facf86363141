"""First-fit-decreasing packing (rosetta/data/packing.py) against seqio's."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from rosetta.data import pipeline
from rosetta.data import text_pairs
from rosetta.data import packing
from rosetta.data.django_po import django_pairs

BYTES = seqio.ByteVocabulary()


def test_first_fit_beats_next_fit_by_hand():
  # Next fit (seqio): [5] [4 3] [4] = 3 rows. First-fit decreasing: 5 then
  # 4, 4 share a row, 3 joins the 5: 2 rows, each listed in arrival order.
  lengths = np.array([[5, 1], [4, 1], [3, 1], [4, 1]])
  assert packing.first_fit_rows(lengths, [8, 8]) == [[0, 2], [1, 3]]


def test_every_feature_must_fit():
  # 0 and 1 would share a row by inputs (4 + 4) but not by targets (6 + 6).
  lengths = np.array([[4, 6], [4, 6], [2, 1]])
  assert packing.first_fit_rows(lengths, [8, 8]) == [[0, 2], [1]]


def test_empty_examples_are_dropped_and_bad_lengths_named():
  assert packing.first_fit_rows(np.array([[0, 0], [3, 2]]), [4, 4]) == [[1]]
  with pytest.raises(ValueError, match='longer than its row'):
    packing.first_fit_rows(np.array([[5, 1]]), [4, 4])
  with pytest.raises(ValueError, match=r'must be \(n, 2\)'):
    packing.first_fit_rows(np.array([1, 2]), [4, 4])


@pytest.mark.parametrize('seed', range(5))
def test_random_windows_keep_every_example_once(seed):
  rng = np.random.default_rng(seed)
  caps = [16, 12]
  lengths = np.stack([rng.integers(0, 17, 300), rng.integers(0, 13, 300)], 1)
  rows = packing.first_fit_rows(lengths, caps)
  flat = sorted(i for row in rows for i in row)
  assert flat == [i for i in range(300) if lengths[i].sum() > 0]
  for row in rows:
    assert row == sorted(row)
    assert (lengths[row].sum(0) <= caps).all()
  assert [r[0] for r in rows] == sorted(r[0] for r in rows)
  # No row could have taken a later row's first-placed example whole:
  # far fewer rows than one example each.
  assert len(rows) < 0.75 * len(flat)


def _examples(pairs):
  return [{'inputs': np.array(list(BYTES.encode(s)) + [1], np.int32),
           'targets': np.array(list(BYTES.encode(t)) + [1], np.int32)}
          for s, t in pairs]


def _dataset(examples):
  return tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature={
          'inputs': tf.TensorSpec([None], tf.int32),
          'targets': tf.TensorSpec([None], tf.int32)})


def _unpack(packed):
  """(inputs, targets) of every segment of every packed row."""
  out = []
  for row in packed:
    for s in range(1, row['inputs_segment_ids'].max() + 1):
      seg = {k: row[k][row[k + '_segment_ids'] == s]
             for k in ('inputs', 'targets')}
      for k in ('inputs', 'targets'):
        pos = row[k + '_positions'][row[k + '_segment_ids'] == s]
        np.testing.assert_array_equal(pos, np.arange(len(pos)))
      out.append((tuple(seg['inputs']), tuple(seg['targets'])))
  return out


def test_pack_dataset_on_real_strings_is_lossless_and_denser():
  """Django's French strings (bytes): every example comes back whole, once,
  in the packed format seqio uses; rows are fuller than seqio's."""
  lengths = {'inputs': 64, 'targets': 64}
  pairs = [(s, t) for s, t in django_pairs(['fr'])['fr'][:600]
           if len(s.encode()) < 64 and len(t.encode()) < 64]
  examples = _examples(pairs)
  ours = list(packing.pack_dataset(_dataset(examples), lengths,
                                   window=256).as_numpy_iterator())
  theirs = list(seqio.utils.trim_and_pack_dataset(
      _dataset(examples), lengths).as_numpy_iterator())
  assert set(ours[0]) == set(theirs[0])
  want = sorted((tuple(e['inputs']), tuple(e['targets'])) for e in examples)
  assert sorted(_unpack(ours)) == want
  assert sorted(_unpack(theirs)) == want
  fill = lambda rows: np.mean([(r['targets'] != 0).mean() for r in rows])
  assert len(ours) < 0.9 * len(theirs), (len(ours), len(theirs))
  assert fill(ours) > fill(theirs) + 0.05
  again = list(packing.pack_dataset(_dataset(examples), lengths,
                                    window=256).as_numpy_iterator())
  for a, b in zip(ours, again, strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_converter_builds_seqio_model_features():
  """Where next fit and first fit agree (examples arrive largest first and
  fill rows in order), both converters give identical model features:
  decoder inputs shifted within each segment, loss weights, positions."""
  examples = _examples([('abcdef', 'uvwxyz'), ('ab', 'cd'),
                        ('abcde', 'vwxyz'), ('abc', 'xy')])
  lengths = {'inputs': 10, 'targets': 10}

  def convert(converter):
    ds = converter._convert_features(_dataset(examples), lengths)
    return list(ds.as_numpy_iterator())
  ours = convert(packing.FirstFitEncDecFeatureConverter(pack=True))
  theirs = convert(seqio.EncDecFeatureConverter(pack=True))
  assert len(ours) == len(theirs) == 2
  for a, b in zip(ours, theirs):
    assert set(a) == set(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert ours[0]['decoder_input_tokens'][:8].tolist() == [
      0, *examples[0]['targets'][:6], 0]
  unpacked = convert(packing.FirstFitEncDecFeatureConverter(pack=False))
  assert len(unpacked) == 4 and 'decoder_segment_ids' not in unpacked[0]


def test_input_pipeline_with_first_fit_packing(mesh_data8):
  text_pairs.register_text_pair_task(
      'test_packing_django_fr',
      text_pairs.pairs_source({'train': django_pairs(['fr'])['fr'][:400]}), BYTES,
      replace=True)
  lengths = {'inputs': 64, 'targets': 64}
  fills = {}
  for name, cls in (('seqio', None),
                    ('first_fit', packing.FirstFitEncDecFeatureConverter)):
    pipe = pipeline.InputPipeline(
        'test_packing_django_fr', split='train', task_feature_lengths=lengths,
        global_batch_size=8, partitioner=mesh_data8, seed=0,
        feature_converter_cls=cls)
    batches = [np.asarray(next(pipe)['decoder_loss_weights'])
               for _ in range(6)]
    fills[name] = np.mean(batches)
  assert fills['first_fit'] > fills['seqio'] + 0.05, fills


def test_bad_arguments_are_named():
  ds = _dataset(_examples([('a', 'b')]))
  with pytest.raises(ValueError, match='window'):
    packing.pack_dataset(ds, {'inputs': 4, 'targets': 4}, window=0)
  with pytest.raises(ValueError, match="'labels'"):
    packing.pack_dataset(ds, {'inputs': 4, 'labels': 4})


def test_pipeline_state_names_the_converter(mesh_data8):
  """A position saved under one packing cannot resume another's stream."""
  text_pairs.register_text_pair_task(
      'test_packing_state', text_pairs.pairs_source(
          {'train': django_pairs(['fr'])['fr'][:100]}), BYTES, replace=True)
  kw = dict(split='train', task_feature_lengths={'inputs': 32,
                                                 'targets': 32},
            global_batch_size=8, partitioner=mesh_data8, seed=0)
  seqio_pipe = pipeline.InputPipeline('test_packing_state', **kw)
  ff = pipeline.InputPipeline('test_packing_state', **kw,
                          feature_converter_cls=(
                              packing.FirstFitEncDecFeatureConverter))
  assert ff.state()['converter'] == (
      'rosetta.data.packing.FirstFitEncDecFeatureConverter')
  with pytest.raises(ValueError, match='feature converter'):
    ff.restore(seqio_pipe.state())
  old = {k: v for k, v in seqio_pipe.state().items() if k != 'converter'}
  seqio_pipe.restore(old)   # saved before the field existed: seqio's
  with pytest.raises(ValueError, match='feature converter'):
    ff.restore(old)
  next(ff)
  resumed = pipeline.InputPipeline('test_packing_state', **kw, state=ff.state(),
                               feature_converter_cls=(
                                   packing.FirstFitEncDecFeatureConverter))
  np.testing.assert_array_equal(np.asarray(next(resumed)['encoder_input_tokens']),
                                np.asarray(next(ff)['encoder_input_tokens']))


def test_encoder_decoder_model_packing_option():
  from rosetta.model import encoder_decoder_model
  assert encoder_decoder_model.EncoderDecoderModel(packing='first_fit').FEATURE_CONVERTER_CLS \
      is packing.FirstFitEncDecFeatureConverter
  # Explicit 'seqio' (gin bindings left by other tests may set a default).
  assert not hasattr(encoder_decoder_model.EncoderDecoderModel(packing='seqio'),
                     'FEATURE_CONVERTER_CLS')
  with pytest.raises(ValueError, match='packing'):
    encoder_decoder_model.EncoderDecoderModel(packing='best')
