"""T5's span corruption on monolingual text, as seqio tasks.

The objective language adapters are trained with (MAD-X trains its
language adapters with masked language modelling; for an encoder-decoder
the T5 objective is the natural one): 15% of the tokens, in spans of mean
length 3, are cut out of the input and replaced by one sentinel each; the
target lists the sentinels, each followed by the tokens it replaced::

    text     The cat sat on the mat today
    inputs   The <X> on the <Y> today
    targets  <X> cat sat <Y> mat

The mask follows T5's `random_spans_noise_mask` (the number of noise tokens
and spans is fixed by the length; where they fall is random), drawn from a
stateless seed per example, so an epoch over a task is reproducible.
Sentinel i is token id `sentinel_start - i`, by default the vocabulary's
last id, where seqio vocabularies keep their extra ids.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

import gin
import seqio
import tensorflow as tf

from rosetta import vocab as vocab_lib
from rosetta.data import bad_input
from rosetta.data import text_pairs


def _random_segmentation(num_items, num_segments, seed):
  """Lengths of `num_segments` non-empty segments summing to `num_items`."""
  first_in_segment = tf.pad(
      tf.random.experimental.stateless_shuffle(
          tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32),
          seed=seed), [[1, 0]])
  segment_id = tf.cumsum(first_in_segment)
  return tf.math.unsorted_segment_sum(tf.ones_like(segment_id), segment_id,
                                      num_segments)


def noise_mask(length, noise_density: float, mean_span_length: float,
               seed) -> tf.Tensor:
  """(length,) bool: True at the tokens to cut (T5's layout: the text
  starts with a kept span, kept and noise spans alternate)."""
  length = tf.cast(length, tf.int32)
  safe = tf.maximum(length, 2)
  num_noise = tf.cast(tf.round(tf.cast(safe, tf.float32) * noise_density),
                      tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, safe - 1)
  num_spans = tf.maximum(tf.cast(tf.round(
      tf.cast(num_noise, tf.float32) / mean_span_length), tf.int32), 1)
  num_kept = safe - num_noise
  seeds = tf.random.experimental.stateless_split(seed, 2)
  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
  kept_lengths = _random_segmentation(num_kept, num_spans, seeds[1])
  interleaved = tf.reshape(tf.stack([kept_lengths, noise_lengths], axis=1),
                           [-1])
  starts = tf.cumsum(interleaved)[:-1]
  start_mask = tf.math.unsorted_segment_sum(tf.ones_like(starts), starts,
                                            safe)
  span = tf.cumsum(start_mask)
  mask = tf.equal(span % 2, 1)
  return mask[:length]


def corrupt(tokens, mask, sentinel_start: int):
  """(inputs, targets): noise spans of `tokens` replaced by sentinels in
  the inputs; the targets hold each sentinel then the tokens it hides."""
  def fold(keep_where):
    # Every token where `keep_where` is False becomes the sentinel of its
    # span; later tokens of the same span are dropped.
    span_start = tf.logical_and(
        ~keep_where, tf.pad(keep_where, [[1, 0]], constant_values=True)[:-1])
    span_index = tf.cumsum(tf.cast(span_start, tf.int32))
    sentinels = sentinel_start + 1 - span_index
    out = tf.where(span_start, sentinels, tokens)
    keep = tf.logical_or(keep_where, span_start)
    return tf.boolean_mask(out, keep)
  return fold(~mask), fold(mask)


def corrupted_lengths(num_tokens: int, noise_density: float,
                      mean_span_length: float) -> tuple[int, int]:
  """(inputs, targets) lengths, EOS included, of `num_tokens` corrupted
  (the counts `noise_mask` draws: kept tokens + one sentinel per span;
  noise tokens + one sentinel per span)."""
  safe = max(num_tokens, 2)
  num_noise = min(max(int(round(safe * noise_density)), 1), safe - 1)
  num_spans = max(int(round(num_noise / mean_span_length)), 1)
  return safe - num_noise + num_spans + 1, num_noise + num_spans + 1


def tokens_per_example(inputs_length: int, targets_length: int | None,
                       noise_density: float, mean_span_length: float) -> int:
  """The most raw tokens whose corrupted inputs (and targets) fit the
  feature lengths: the chunk size long texts are split to before they are
  corrupted (T5's `random_spans_helper`), so nothing is cut from a
  target."""
  fits = lambda n: all(
      length is None or got <= length for got, length in zip(
          corrupted_lengths(n, noise_density, mean_span_length),
          (inputs_length, targets_length)))
  if not fits(2):
    raise ValueError(f'span corruption: inputs length {inputs_length} / '
                     f'targets length {targets_length} cannot hold a '
                     'corrupted pair of tokens')
  n = 2
  while fits(n + 1):
    n += 1
  return n


def split_to_fit(dataset, sequence_length, *, noise_density: float = 0.15,
                 mean_span_length: float = 3.0):
  """seqio preprocessor: tokenized 'targets' split into consecutive
  chunks of `tokens_per_example` tokens for the task's feature lengths
  (no split when the lengths are not given)."""
  if not sequence_length or sequence_length.get('inputs') is None:
    return dataset
  size = tokens_per_example(sequence_length['inputs'],
                            sequence_length.get('targets'), noise_density,
                            mean_span_length)

  def chunks(ex):
    tokens = ex['targets']
    pieces = tf.RaggedTensor.from_tensor(
        tf.reshape(tf.pad(tokens, [[0, -tf.size(tokens) % size]]),
                   [-1, size]),
        lengths=_chunk_lengths(tf.size(tokens), size))
    return tf.data.Dataset.from_tensor_slices(
        {**{k: tf.repeat(v[None], pieces.nrows(), axis=0)
            for k, v in ex.items() if k != 'targets'},
         'targets': pieces})
  return dataset.flat_map(chunks)


def _chunk_lengths(n, size):
  full = n // size
  rest = n % size
  return tf.concat([tf.fill([full], size),
                    tf.reshape(rest, [1])[:tf.cast(rest > 0, tf.int32)]], 0)


def span_corruption(dataset, output_features, *, noise_density: float = 0.15,
                    mean_span_length: float = 3.0,
                    sentinel_start: int | None = None, seed: int = 0):
  """seqio preprocessor: tokenized 'targets' -> corrupted 'inputs' and
  'targets' (run after tokenization, before EOS is appended)."""
  vocabulary = output_features['targets'].vocabulary
  start = (vocabulary.vocab_size - 1 if sentinel_start is None
           else sentinel_start)
  if sentinel_start is None and not getattr(vocabulary, 'extra_ids', 0):
    raise ValueError(
        f'span corruption: the vocabulary ({type(vocabulary).__name__}) has '
        'no extra ids for sentinels; load it with extra_ids=100 or pass '
        'sentinel_start (an id whose 100 predecessors are unused)')

  def one(index, ex):
    tokens = ex['targets']
    mask = noise_mask(tf.size(tokens), noise_density, mean_span_length,
                      tf.stack([tf.cast(seed, tf.int64), index]))
    inputs, targets = corrupt(tokens, mask, start)
    return {**ex, 'inputs': inputs, 'targets': targets}
  return dataset.enumerate().map(one, num_parallel_calls=tf.data.AUTOTUNE)


def register_task(name: str, texts: Callable[[str], Iterable[str]],
                  vocabulary: seqio.Vocabulary, *,
                  splits: Iterable[str] = ('train',),
                  noise_density: float = 0.15, mean_span_length: float = 3.0,
                  sentinel_start: int | None = None) -> seqio.Task:
  """A span-corruption task over `texts(split)` (one text per item), with
  'inputs' and 'targets' features in `vocabulary` (EOS appended)."""
  features = {k: seqio.Feature(vocabulary, add_eos=True)
              for k in ('inputs', 'targets')}

  def source(split, shuffle_files=False, seed=None):
    del shuffle_files, seed
    lines = list(texts(split))
    return tf.data.Dataset.from_tensor_slices({'targets': tf.constant(
        lines if lines else [''], tf.string)}).take(len(lines))

  def split_fn(dataset, sequence_length):
    return split_to_fit(dataset, sequence_length,
                        noise_density=noise_density,
                        mean_span_length=mean_span_length)

  def corrupt_fn(dataset, output_features):
    return span_corruption(dataset, output_features,
                           noise_density=noise_density,
                           mean_span_length=mean_span_length,
                           sentinel_start=sentinel_start)

  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name,
      seqio.FunctionDataSource(source, splits=tuple(splits)),
      preprocessors=[
          seqio.preprocessors.tokenize,
          # Long texts become several examples, so no target is trimmed.
          split_fn,
          # Texts shorter than 2 tokens have nothing to corrupt.
          lambda ds: ds.filter(lambda ex: tf.size(ex['targets']) >= 2),
          corrupt_fn,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=features)


def text_lines(path: str) -> list[str]:
  """Non-empty lines of a UTF-8 text file (one paragraph or sentence per
  line), with the line of any undecodable byte named."""
  texts = (bad_input.decode(path, i, raw)
           for i, raw in enumerate(text_pairs.read_lines(path), 1))
  return [text for text in texts if text.strip()]


@gin.configurable
def setup(texts: dict[str, str] = gin.REQUIRED, vocab_path: str = 'bytes',
          extra_ids: int = 0, sentinel_start: int | None = None,
          noise_density: float = 0.15, mean_span_length: float = 3.0
          ) -> None:
  """Registers `span_corruption_<name>` for each {name: text file} (one
  text per line; a 'train' split), e.g. the monolingual text a language
  adapter learns from. vocab_path: 'bytes' or a SentencePiece model, the
  base model's; extra_ids: the vocabulary's sentinel ids (100 for T5 /
  mT5); a vocabulary without them needs `sentinel_start`, the id of the
  first sentinel, e.g. 383 for the tiny byte-level models (bytes use ids
  below 259 and the model's vocabulary is 384)."""
  if vocab_path == 'bytes':
    vocabulary = seqio.ByteVocabulary(extra_ids=extra_ids)
  else:
    vocabulary = vocab_lib.load_vocabulary(vocab_path, extra_ids=extra_ids)
  for name, path in texts.items():
    if not os.path.exists(path):
      raise FileNotFoundError(f'span_corruption.setup.texts[{name!r}]: no '
                              f'file {path}')
    register_task(f'span_corruption_{name}',
                  lambda split, path=path: text_lines(path), vocabulary,
                  noise_density=noise_density,
                  mean_span_length=mean_span_length,
                  sentinel_start=sentinel_start)
