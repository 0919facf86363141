"""Length-bucketed training batches: rows of similar length share a batch,
padded only to their bucket's lengths (fairseq's and tf.data's bucketing).

A mixture of short and long examples (Tatoeba sentences of ~15 tokens beside
96-token XQuAD passages) padded to one fixed length spends most of a step on
padding. Buckets give a few shapes instead of one; the jitted step compiles
once per shape.

A bucket is `{model feature: length}`, e.g. `{'positive_tokens': 32}`. An
example goes to the first bucket where every named feature's content (up to
its last non-zero token) fits, and those features are cut to the bucket's
lengths; the converter's full lengths are the implicit last bucket. Only
padding is cut, so a row holds the same tokens in any bucket.

One process (`grouped_batches`): the stream is read once and a bucket's
batch is emitted as soon as it holds `batch_size` rows (tf.data's
group_by_window).

Several processes (`bucketed_batches`): every host must build batches of
the same shapes at the same step (they form one global array), so the
bucket of step n is not whichever fills first: it is drawn from a seeded
sequence with each bucket's share of the data (estimated once from shard 0,
identical on every host), and each bucket's batches come from its own
filtered copy of the example stream. That reads (and preprocesses) the
stream once per bucket: on the CPU retrieval benchmark the input pipeline
went from 42 to 113 CPU ms per batch, as much as the shorter steps saved,
so it pays where preprocessing runs on host cores the step leaves idle
(accelerator hosts), not where both share the cores.

Both keep each bucket's rows in the stream's order (fresh copies of a
seeded stream replay one order), so bucketing only regroups the stream. A
finite stream (`num_epochs`) leaves examples unused at its end (part-filled
batches; with draws, everything after the first bucket runs dry): meant for
repeated training streams, not for evaluation.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

# Examples read (from shard 0) to estimate each bucket's share.
SHARE_SAMPLE = 2048


def check(buckets: Sequence[Mapping[str, int]],
          full_lengths: Mapping[str, int], field: str = 'length_buckets'
          ) -> list[dict[str, int]]:
  """Validates `buckets` against the converter's full lengths (model
  feature -> length) and returns them with the full-length bucket last.
  Errors name `field[i]['feature']`."""
  if isinstance(buckets, Mapping) or not isinstance(buckets, Sequence):
    raise TypeError(f'{field}: expected a list of {{feature: length}} dicts, '
                    f'got {buckets!r}')
  if not buckets:
    raise ValueError(f'{field}: empty; leave it None for fixed lengths')
  out = []
  for i, bucket in enumerate(buckets):
    where = f'{field}[{i}]'
    if not isinstance(bucket, Mapping) or not bucket:
      raise TypeError(f'{where}: expected a non-empty {{feature: length}} '
                      f'dict, got {bucket!r}')
    for name, length in bucket.items():
      if name not in full_lengths:
        raise ValueError(f'{where}[{name!r}]: not a model feature; features '
                         f'are {sorted(full_lengths)}')
      if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
        raise TypeError(f'{where}[{name!r}]: expected an int, got {length!r}')
      if not 0 < length <= full_lengths[name]:
        raise ValueError(f'{where}[{name!r}] = {length}: must be in [1, '
                         f'{full_lengths[name]}] (the full length)')
    out.append({k: int(v) for k, v in bucket.items()})
  # Every bucket names the same features (a feature a bucket leaves out
  # keeps its full length there), the full lengths last.
  names = sorted({k for b in out for k in b})
  out = [{k: b.get(k, int(full_lengths[k])) for k in names}
         for b in out + [{}]]
  for i, (a, b) in enumerate(zip(out, out[1:])):
    # The first bucket that fits must be the smallest that fits.
    for k in names:
      if a[k] > b[k]:
        nxt = f'{field}[{i + 1}]' if i + 1 < len(buckets) else 'full lengths'
        what = (f'{field}[{i}][{k!r}] = {a[k]}' if k in buckets[i] else
                f'{field}[{i}] leaves {k!r} at its full length {a[k]}, which')
        raise ValueError(f'{what} is longer than {nxt} ({b[k]}): list '
                         f'buckets shortest first')
  return out


def content_length(x: tf.Tensor) -> tf.Tensor:
  """Position after the last non-zero token along the last axis (max over
  any leading axes): the length a row can be cut to without losing a token."""
  positions = tf.range(1, tf.shape(x)[-1] + 1, dtype=tf.int32)
  return tf.reduce_max(tf.cast(x != 0, tf.int32) * positions)


def bucket_index(ex: Mapping[str, tf.Tensor],
                 buckets: Sequence[Mapping[str, int]]) -> tf.Tensor:
  """Index of the first bucket all of whose features fit `ex` (int64)."""
  fits = []
  for bucket in buckets[:-1]:
    ok = tf.constant(True)
    for name, length in bucket.items():
      ok = tf.logical_and(ok, content_length(ex[name]) <= length)
    fits.append(ok)
  fits.append(tf.constant(True))
  return tf.argmax(tf.cast(tf.stack(fits), tf.int32), output_type=tf.int64)


def cut(ex: Mapping[str, tf.Tensor], bucket: Mapping[str, int]) -> dict:
  return {k: (v[..., :bucket[k]] if k in bucket else v)
          for k, v in ex.items()}


def estimate_shares(ds: tf.data.Dataset,
                    buckets: Sequence[Mapping[str, int]],
                    num_examples: int = SHARE_SAMPLE) -> np.ndarray:
  """Each bucket's share of the first `num_examples` of `ds` (unbatched
  converted examples)."""
  idx = ds.take(num_examples).map(lambda ex: bucket_index(ex, buckets))
  counts = np.zeros(len(buckets))
  for batch in idx.batch(1024).as_numpy_iterator():
    counts += np.bincount(batch, minlength=len(buckets))
  if not counts.sum():
    raise ValueError('length buckets: the dataset is empty')
  return counts / counts.sum()


def bucketed_batches(examples: Callable[[], tf.data.Dataset],
                     buckets: Sequence[Mapping[str, int]], batch_size: int,
                     shares: Sequence[float], seed: int) -> tf.data.Dataset:
  """Batches of `batch_size` rows from one bucket each: bucket b's batch is
  drawn with probability `shares[b]` from a sequence fixed by `seed` (the
  same on every host), its rows the next examples of the stream in that
  bucket, cut to the bucket's lengths. A bucket of share 0 is never drawn.

  `examples()` builds the stream (unbatched converted examples) and is
  called once per bucket: iterating one seeded tf.data dataset twice
  reshuffles it, fresh copies replay the same order, so each bucket's rows
  are the stream's rows of that bucket in the stream's order."""
  shares = np.asarray(shares, np.float64)
  if len(shares) != len(buckets) or shares.min() < 0 or not shares.sum():
    raise ValueError(f'length buckets: shares {shares.tolist()} do not fit '
                     f'{len(buckets)} buckets')
  bounds = tf.constant(np.cumsum(shares / shares.sum())[:-1], tf.float64)
  per_bucket = []
  for b, bucket in enumerate(buckets):
    tagged = examples().map(lambda ex: (bucket_index(ex, buckets), ex))
    per_bucket.append(
        tagged.filter(lambda i, ex, b=b: tf.equal(i, b))
        .map(lambda i, ex, bucket=bucket: cut(ex, bucket))
        .batch(batch_size, drop_remainder=True))

  def pick(r):   # r: uniform 32-bit values (as int64) -> a bucket index
    u = tf.cast(r % (1 << 32), tf.float64) / float(1 << 32)
    return tf.reduce_sum(tf.cast(u >= bounds, tf.int64))

  choice = tf.data.Dataset.random(
      seed=seed, rerandomize_each_iteration=False).map(pick)
  return tf.data.Dataset.choose_from_datasets(per_bucket, choice,
                                              stop_on_empty_dataset=True)


def grouped_batches(ds: tf.data.Dataset,
                    buckets: Sequence[Mapping[str, int]],
                    batch_size: int) -> tf.data.Dataset:
  """One read of `ds` (unbatched converted examples): each bucket's next
  `batch_size` rows, in the stream's order, cut to its lengths, as soon as
  they are there. Batch lengths vary, so the element spec leaves them None.
  Only for one process: hosts would disagree on the shapes of a step."""
  names = sorted({k for b in buckets for k in b})
  table = {k: tf.constant([b[k] for b in buckets], tf.int32) for k in names}

  def reduce(key, window):
    def cut_batch(batch):
      return {k: (v[..., :table[k][key]] if k in table else v)
              for k, v in batch.items()}
    return window.batch(batch_size, drop_remainder=True).map(cut_batch)

  return ds.group_by_window(lambda ex: bucket_index(ex, buckets), reduce,
                            window_size=batch_size)
