"""Text-pair sources for seqio Tasks: line-aligned files or in-memory pairs,
read and checked on first use (a bad line names its file and line), shuffled
per epoch by a stateless permutation (O(1) input-iterator state).

`register_text_pair_task` turns a source into a seqio Task (see
`rosetta.data.pipeline` for the worked example of its features).
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import zlib
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import seqio
import tensorflow as tf

from rosetta.data import bad_input


@dataclasses.dataclass
class TextPairStats:
  lines: int = 0           # lines (or pairs) read
  pairs: int = 0           # pairs kept
  skipped_empty: int = 0   # pairs with an empty (whitespace-only) side


def read_lines(path: str) -> list[bytes]:
  """Lines of a file split on b'\\n' only; gzip if the name ends in .gz.

  `str.splitlines` would also split on U+2028, U+0085, form feeds...: one
  such character on one side silently misaligns the whole parallel corpus.
  """
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  if path.endswith('.gz'):
    try:
      data = gzip.GzipFile(fileobj=io.BytesIO(data)).read()
    except (EOFError, OSError, zlib.error) as e:  # truncated or not gzip
      raise ValueError(f'{path}: not a complete gzip file ({e})') from None
  return split_lines(data)


def split_lines(data: bytes) -> list[bytes]:
  """`data` split on b'\\n' only (see `read_lines`), a trailing b'\\r' of
  each line (CRLF) dropped."""
  lines = data.split(b'\n')
  if lines and lines[-1] == b'':
    lines.pop()
  return [l[:-1] if l.endswith(b'\r') else l for l in lines]


def keep_nonempty(pairs, stats: TextPairStats) -> list[tuple[str, str]]:
  out = []
  for src, tgt in pairs:
    stats.lines += 1
    src, tgt = src.strip(), tgt.strip()
    if not src or not tgt:
      stats.skipped_empty += 1
      continue
    out.append((src, tgt))
  stats.pairs = len(out)
  return out


def read_parallel_text(src_path: str, tgt_path: str, *,
                       max_lines: int | None = None,
                       stats: TextPairStats | None = None
                       ) -> list[tuple[str, str]]:
  """Line-aligned (source, target) pairs from two text files (.gz allowed).

  Both files are read whole and checked before anything is returned: a
  different number of lines raises naming both files, a line that is not
  UTF-8 raises naming the file and the 1-based line. Surrounding whitespace
  is stripped; a pair with an empty side is skipped and counted in `stats`.
  `max_lines` keeps the first N line pairs (after the whole-file checks).
  """
  stats = stats if stats is not None else TextPairStats()
  src_lines, tgt_lines = read_lines(src_path), read_lines(tgt_path)
  if len(src_lines) != len(tgt_lines):
    raise ValueError(
        f'parallel files are not line-aligned: {src_path} has '
        f'{len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}')
  n = len(src_lines) if max_lines is None else min(max_lines, len(src_lines))
  pairs = ((bad_input.decode(src_path, i + 1, src_lines[i]),
            bad_input.decode(tgt_path, i + 1, tgt_lines[i])) for i in range(n))
  # Decode errors past max_lines are still errors: the file is bad.
  for i in range(n, len(src_lines)):
    bad_input.decode(src_path, i + 1, src_lines[i])
    bad_input.decode(tgt_path, i + 1, tgt_lines[i])
  out = keep_nonempty(pairs, stats)
  if stats.skipped_empty:
    logging.info('%s / %s: skipped %d of %d pairs with an empty side',
                 src_path, tgt_path, stats.skipped_empty, stats.lines)
  return out


class TextPairSource(seqio.FunctionDataSource):
  """In-memory (source, target) string pairs per split, read on first use.

  Elements are `{'source': tf.string, 'target': tf.string}`. With
  `shuffle=True` (and a seed) the whole split is shuffled, reshuffled every
  epoch, deterministically from the seed; the Task's shuffle buffer then
  mixes further. Multi-host: every host builds the same seeded order and
  seqio's `ShardInfo` takes every num_shards-th element, so hosts read
  disjoint examples. For corpora that fit in host memory (one copy per
  host); bigger ones belong in TFDS/ArrayRecord sources.
  """

  def __init__(self, loaders: Mapping[str, Callable[[TextPairStats],
                                                     list[tuple[str, str]]]],
               description: str = ''):
    self._loaders = dict(loaders)
    self._pairs: dict[str, list[tuple[str, str]]] = {}
    self._stats: dict[str, TextPairStats] = {}
    self._description = description
    super().__init__(dataset_fn=self._dataset_fn, splits=tuple(loaders))

  def pairs(self, split: str) -> list[tuple[str, str]]:
    if split not in self._loaders:
      raise ValueError(f'{self._description or "TextPairSource"}: no split '
                       f'{split!r}; splits: {sorted(self._loaders)}')
    if split not in self._pairs:
      stats = TextPairStats()
      pairs = self._loaders[split](stats)
      if not pairs:
        raise ValueError(
            f'{self._description}: split {split!r} has no pairs ({stats.lines}'
            f' read, {stats.skipped_empty} skipped as empty)')
      self._pairs[split], self._stats[split] = pairs, stats
    return self._pairs[split]

  def stats(self, split: str) -> TextPairStats:
    self.pairs(split)
    return self._stats[split]

  def _dataset_fn(self, split: str, shuffle_files: bool,
                  seed: int | None = None) -> tf.data.Dataset:
    pairs = self.pairs(split)
    source = tf.constant([s for s, _ in pairs], tf.string)
    target = tf.constant([t for _, t in pairs], tf.string)
    if not shuffle_files:
      return tf.data.Dataset.from_tensor_slices({'source': source,
                                                 'target': target})
    return _permuted_indices(len(pairs), seed).map(
        lambda i: {'source': tf.gather(source, i),
                   'target': tf.gather(target, i)}).unbatch()

  def get_dataset(self, split: str = 'train', shuffle: bool = True,
                  seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, **unused):
    # FunctionDataSource.get_dataset, without its warning about uncached
    # sources shuffling poorly: this one shuffles the whole split.
    if shard_info and shard_info.num_shards > 1:
      raise ValueError('TextPairSource: shard with tf.data (seqio does, since '
                       'list_shards has one entry)')
    return self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed)

  def __repr__(self):
    return f'TextPairSource({self._description}, splits={self.splits})'


def _permuted_indices(n: int, seed: int | None,
                      block: int = 256) -> tf.data.Dataset:
  """0..n-1 in a random order, in int64 vectors of `block` (unbatch them
  after a vectorised lookup), a new order each time the dataset is
  iterated (each epoch under `repeat`), deterministic from `seed`.

  A stateless permutation (`index_shuffle` of the position under a per-epoch
  key) rather than `shuffle(n)`: a shuffle buffer of the whole split made
  every input-iterator checkpoint hold one entry per example (Tatoeba: 66
  MB and 2.8 s per save); this state is a counter, a key and one block.
  Per element the blocks cost ~2 us (element-wise maps: ~40 us).
  """
  keys = tf.data.Dataset.random(seed=seed,
                                rerandomize_each_iteration=True).take(1)

  def epoch(key):
    key = tf.stack([key, key // 7 + 1])
    return tf.data.Dataset.range(n).batch(block).map(
        lambda j: tf.random.experimental.index_shuffle(j, key, n - 1))
  return keys.flat_map(epoch)


def parallel_text_source(paths_by_split: Mapping[str, tuple[str, str]], *,
                         max_lines: int | None = None) -> TextPairSource:
  """A source from line-aligned files: {split: (src_path, tgt_path)}.

  Files are read (and checked, see `read_parallel_text`) the first time a
  split is used. Example, Multi30k English->German::

      root = os.path.join(data_dir(), 'multi30k/data/task1/raw')
      src = parallel_text_source({
          'train': (f'{root}/train.en.gz', f'{root}/train.de.gz'),
          'validation': (f'{root}/val.en.gz', f'{root}/val.de.gz')})
  """
  def loader(paths):
    return lambda stats: read_parallel_text(*paths, max_lines=max_lines,
                                            stats=stats)
  desc = ', '.join(f'{k}: {v[0]} | {v[1]}' for k, v in paths_by_split.items())
  return TextPairSource({k: loader(v) for k, v in paths_by_split.items()},
                        description=desc)


def pairs_source(pairs_by_split: Mapping[str, Sequence[tuple[str, str]]],
                 description: str = 'in-memory pairs') -> TextPairSource:
  """A source from in-memory pairs, e.g. `django_pairs(['fr'])['fr']`."""
  def loader(pairs):
    return lambda stats: keep_nonempty(list(pairs), stats)
  return TextPairSource({k: loader(v) for k, v in pairs_by_split.items()},
                        description=description)


def text_pair_to_inputs_targets(dataset: tf.data.Dataset,
                                source_key: str = 'source',
                                target_key: str = 'target',
                                input_prefix: str = '') -> tf.data.Dataset:
  """{source, target} strings -> {inputs: prefix + source, targets: target}."""
  def fn(ex):
    return {'inputs': tf.strings.join([input_prefix, ex[source_key]]),
            'targets': ex[target_key]}
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def register_text_pair_task(
    name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary, *,
    target_vocabulary: seqio.Vocabulary | None = None,
    input_prefix: str = '', source_key: str = 'source',
    target_key: str = 'target',
    metric_fns: Sequence[Callable[..., Mapping[str, Any]]] = (),
    postprocess_fn: Callable[..., Any] | None = None,
    shuffle_buffer_size: int = seqio.SHUFFLE_BUFFER_SIZE,
    replace: bool = False) -> seqio.Task:
  """Registers a seq2seq Task: strings -> tokens + EOS ('inputs'/'targets').

  Preprocessors: `text_pair_to_inputs_targets` (prepends `input_prefix`,
  e.g. '>>de<< ' or 'translate English to German: '),
  `seqio.preprocessors.tokenize` (keeps '*_pretokenized' copies, which the
  Evaluator uses as references) and `append_eos_after_trim` (a truncated
  example still ends in EOS).

  `metric_fns` are seqio legacy metric functions, `fn(targets, predictions)`
  or `fn(targets, scores)` returning {name: value}; predictions and targets
  are decoded strings passed through `postprocess_fn`. `replace=True`
  re-registers an existing name (notebooks, tests, changing metrics).
  """
  if replace:
    seqio.TaskRegistry.remove(name)
  target_vocabulary = target_vocabulary or vocabulary
  preprocessors = [
      functools.partial(
          text_pair_to_inputs_targets, source_key=source_key,
          target_key=target_key, input_prefix=input_prefix),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),  # what `rosetta cache` stores
      seqio.preprocessors.append_eos_after_trim,
  ]
  return seqio.TaskRegistry.add(
      name, source=source,
      output_features={
          'inputs': seqio.Feature(vocabulary, add_eos=True),
          'targets': seqio.Feature(target_vocabulary, add_eos=True)},
      preprocessors=preprocessors, postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns), shuffle_buffer_size=shuffle_buffer_size)
