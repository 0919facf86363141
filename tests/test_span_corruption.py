"""T5 span corruption (`rosetta.data.span_corruption`): the mask's noise
share and span count, exact inputs / targets for a fixed mask, and a
registered task producing features the tiny T5 trains on."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from rosetta.data import span_corruption


def test_noise_mask_has_t5_counts_and_alternates():
  for length, seed in [(20, 0), (37, 5), (100, 9)]:
    mask = span_corruption.noise_mask(length, 0.15, 3.0,
                                      tf.constant([seed, 1], tf.int64))
    mask = mask.numpy()
    assert mask.shape == (length,)
    assert not mask[0]        # T5's layout: a kept span comes first
    num_noise = int(np.clip(round(length * 0.15), 1, length - 1))
    assert mask.sum() == num_noise
    starts = np.flatnonzero(mask & ~np.r_[False, mask[:-1]])
    assert len(starts) == max(round(num_noise / 3.0), 1)


def test_noise_mask_is_reproducible_and_seeded():
  a = span_corruption.noise_mask(50, 0.3, 2.0, tf.constant([1, 2], tf.int64))
  b = span_corruption.noise_mask(50, 0.3, 2.0, tf.constant([1, 2], tf.int64))
  c = span_corruption.noise_mask(50, 0.3, 2.0, tf.constant([1, 3], tf.int64))
  assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_corrupt_gives_t5_inputs_and_targets():
  tokens = tf.constant([10, 11, 12, 13, 14, 15, 16, 17])
  mask = tf.constant([False, True, True, False, False, True, False, False])
  inputs, targets = span_corruption.corrupt(tokens, mask, 99)
  assert inputs.numpy().tolist() == [10, 99, 13, 14, 98, 16, 17]
  # As T5: the targets end with the sentinel of the last kept span.
  assert targets.numpy().tolist() == [99, 11, 12, 98, 15, 97]


def test_registered_task_and_missing_sentinels(tmp_path):
  path = tmp_path / 'lines.txt'
  path.write_text('the cat sat on the mat\n\nsome more words here\nx\n',
                  encoding='utf-8')
  lines = span_corruption.text_lines(str(path))
  assert lines == ['the cat sat on the mat', 'some more words here', 'x']
  vocab = seqio.ByteVocabulary(extra_ids=10)
  span_corruption.register_task('test_span_corruption_bytes',
                                lambda split: lines, vocab)
  task = seqio.get_mixture_or_task('test_span_corruption_bytes')
  examples = list(task.get_dataset(None, split='train', shuffle=False)
                  .as_numpy_iterator())
  assert len(examples) == 2          # 'x' is one byte: nothing to corrupt
  for ex, text in zip(examples, lines):
    sentinels = [t for t in ex['inputs'] if t >= vocab.vocab_size - 10]
    assert sentinels and sentinels[0] == vocab.vocab_size - 1
    assert ex['inputs'][-1] == 1 and ex['targets'][-1] == 1  # EOS
    # Putting the spans back restores the text.
    spans, current = {}, None
    for t in ex['targets'][:-1]:
      if t >= vocab.vocab_size - 10:
        current = t
        spans[t] = []
      else:
        spans[current].append(t)
    restored = []
    for t in ex['inputs'][:-1]:
      restored.extend(spans[t] if t in spans else [t])
    assert vocab.decode(restored) == text
  span_corruption.register_task('test_span_corruption_no_extra',
                                lambda split: lines, seqio.ByteVocabulary())
  with pytest.raises(ValueError, match='no extra ids for sentinels'):
    list(seqio.get_mixture_or_task('test_span_corruption_no_extra')
         .get_dataset(None, split='train', shuffle=False).take(1))


def _restore(inputs, targets, first_sentinel):
  spans, current = {}, None
  for t in targets[:-1]:
    if t > first_sentinel - 100 and t <= first_sentinel:
      current = t
      spans[t] = []
    else:
      spans[current].append(t)
  restored = []
  for t in inputs[:-1]:
    restored.extend(spans[t] if t in spans else [t])
  return restored


def test_t5_chunk_size_for_its_pretraining_lengths():
  # T5's random_spans_helper: 568 raw tokens give 512 inputs, 114 targets.
  assert span_corruption.tokens_per_example(512, None, 0.15, 3.0) == 568
  assert span_corruption.corrupted_lengths(568, 0.15, 3.0) == (512, 114)
  assert span_corruption.tokens_per_example(512, 100, 0.15, 3.0) < 568
  with pytest.raises(ValueError, match='inputs length 2 / targets length '
                     'None cannot hold'):
    span_corruption.tokens_per_example(2, None, 0.15, 3.0)


def test_long_texts_are_split_before_corrupting_so_nothing_is_cut():
  vocab = seqio.ByteVocabulary(extra_ids=10)
  text = ''.join(chr(ord('a') + (i * 7) % 26) for i in range(300))
  span_corruption.register_task('test_span_corruption_long',
                                lambda split: [text, 'short one'], vocab)
  task = seqio.get_mixture_or_task('test_span_corruption_long')
  lengths = {'inputs': 64, 'targets': 24}
  examples = list(task.get_dataset(lengths, split='train', shuffle=False)
                  .as_numpy_iterator())
  chunk = span_corruption.tokens_per_example(64, 24, 0.15, 3.0)
  assert len(examples) == -(-300 // chunk) + 1
  restored = []
  for ex in examples:
    assert len(ex['inputs']) <= 64 and len(ex['targets']) <= 24
    assert ex['inputs'][-1] == 1 and ex['targets'][-1] == 1   # EOS kept
    restored.extend(_restore(list(ex['inputs']), list(ex['targets']),
                             vocab.vocab_size - 1))
  assert vocab.decode(restored) == text + 'short one'
