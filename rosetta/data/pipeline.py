"""seqio glue: text-pair Tasks, the per-host training input pipeline, eval.

Data flows one way::

    seqio Task/Mixture -> EncDecFeatureConverter -> per-host numpy batch
      -> jax.make_array_from_process_local_data -> jitted step

Worked example (byte vocabulary: id = UTF-8 byte + 3; 0=PAD, 1=EOS)::

    register_text_pair_task(
        'toy', pairs_source({'train': [('hi', 'ok'), ('abc', 'd'),
                                       ('x', 'yz')]}),
        seqio.ByteVocabulary())

gives task examples (EOS appended after trimming)::

    {'inputs': [107, 108, 1],      'targets': [114, 110, 1]}      # hi -> ok
    {'inputs': [100, 101, 102, 1], 'targets': [103, 1]}           # abc -> d
    {'inputs': [123, 1],           'targets': [124, 125, 1]}      # x -> yz

and with task_feature_lengths={'inputs': 8, 'targets': 6}, unshuffled,
`EncDecFeatureConverter(pack=True)` packs the first two into one row::

    encoder_input_tokens  = [107, 108, 1, 100, 101, 102, 1, 0]
    encoder_segment_ids   = [  1,   1, 1,   2,   2,   2, 2, 0]
    encoder_positions     = [  0,   1, 2,   0,   1,   2, 3, 0]
    decoder_target_tokens = [114, 110, 1, 103,   1,   0]
    decoder_input_tokens  = [  0, 114, 110,  0, 103,  0]
    decoder_loss_weights  = [  1,   1, 1,   1,   1,   0]
    decoder_segment_ids   = [  1,   1, 1,   2,   2,   0]
    decoder_positions     = [  0,   1, 2,   0,   1,   0]

(the third example does not fit and starts the next row). With pack=False
each example is its own row and only the first four features exist::

    encoder_input_tokens  = [107, 108, 1, 0, 0, 0, 0, 0]
    decoder_target_tokens = [114, 110, 1, 0, 0, 0]
    decoder_input_tokens  = [  0, 114, 110, 1, 0, 0]
    decoder_loss_weights  = [  1,   1, 1, 0, 0, 0]

Training::

    pipe = InputPipeline('toy', split='train',
                         task_feature_lengths={'inputs': 8, 'targets': 6},
                         global_batch_size=8, partitioner=Partitioner(mesh),
                         seed=0, shuffle=True, pack=True)
    batch = next(pipe)           # {feature: jax.Array (8, L)}, batch over
                                 # ('data', 'fsdp'), replicated over 'model'
    ckpt['data'] = pipe.state()  # JSON: {'batches_consumed': 1, 'seed': 0, ...}
    ...
    pipe = InputPipeline(..., state=ckpt['data'])  # continues at batch 2

Evaluation: `make_evaluator` returns a `seqio.Evaluator`; `make_predict_fn`
and `make_score_fn` turn a jitted per-batch model function into the
`predict_fn` / `score_fn` that `Evaluator.evaluate` calls.
"""

from __future__ import annotations

import contextlib
import functools
import json
import numbers
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import jax
import numpy as np
import seqio
import tensorflow as tf

from rosetta.data import bad_input
from rosetta.data import iterator_state as iterator_checkpoint_lib
from rosetta.data import length_buckets as length_buckets_lib
from rosetta import native_logs, partitioning

try:  # tf.data only; keep TensorFlow off the accelerators JAX uses.
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TF devices already initialised by someone else.
  pass

BATCH_AXES = partitioning.BATCH_AXES
# A feature converter class, called with `pack=` (t5x's FEATURE_CONVERTER_CLS).
ConverterCls = Callable[..., seqio.FeatureConverter]


# ----------------------------------------------------- training input ---


def deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Parallel maps keep their order (tf.data may otherwise reorder)."""
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def _converted_examples(mixture_or_task_name: str, *, split: str,
                        task_feature_lengths: Mapping[str, int], seed: int,
                        shuffle: bool, pack: bool, num_epochs: int | None,
                        shard_index: int, process_count: int,
                        use_cached: bool,
                        feature_converter_cls: ConverterCls | None,
                        batch_size: int | None) -> tf.data.Dataset:
  converter_cls = feature_converter_cls or seqio.EncDecFeatureConverter
  return seqio.get_dataset(
      mixture_or_task_name, task_feature_lengths=dict(task_feature_lengths),
      feature_converter=converter_cls(pack=pack),
      dataset_split=split, use_cached=use_cached, shuffle=shuffle,
      num_epochs=num_epochs,
      shard_info=seqio.ShardInfo(index=shard_index, num_shards=process_count),
      verbose=False, seed=seed, batch_size=batch_size)


def _checked_buckets(ds: tf.data.Dataset,
                     length_buckets: Sequence[Mapping[str, int]]):
  full = {k: int(v.shape[-1]) for k, v in ds.element_spec.items()
          if v.shape.rank}
  return length_buckets_lib.check(length_buckets, full)


def estimate_bucket_shares(mixture_or_task_name: str,
                           length_buckets: Sequence[Mapping[str, int]],
                           **kwargs) -> np.ndarray:
  """Each length bucket's share (the full lengths last) among the first
  examples of shard 0 of `process_count`: the same on every host. kwargs:
  split, task_feature_lengths, seed, shuffle, pack, num_epochs,
  process_count, use_cached, feature_converter_cls."""
  ds = _converted_examples(mixture_or_task_name, shard_index=0,
                           batch_size=None, **kwargs)
  return length_buckets_lib.estimate_shares(
      ds, _checked_buckets(ds, length_buckets))


def make_local_dataset(mixture_or_task_name: str, *, split: str,
                       task_feature_lengths: Mapping[str, int],
                       local_batch_size: int, seed: int, shuffle: bool = True,
                       pack: bool = True, num_epochs: int | None = None,
                       process_index: int = 0, process_count: int = 1,
                       use_cached: bool = False,
                       feature_converter_cls: ConverterCls | None = None,
                       length_buckets: Sequence[Mapping[str, int]] | None
                       = None,
                       bucket_shares: Sequence[float] | None = None
                       ) -> tf.data.Dataset:
  """This host's batches: its shard of the task, converted, batched.

  Elements are {feature: int32 (local_batch_size, length)}; the last
  partial batch of a finite dataset is dropped. `feature_converter_cls`
  (called with `pack=`) defaults to seqio's EncDecFeatureConverter; model
  wrappers with other features name theirs (`model.FEATURE_CONVERTER_CLS`).
  `length_buckets` (see `rosetta.data.length_buckets`): batches of a few
  shapes; with one process each bucket's batch comes when it is full, with
  several the bucket of each step is drawn with probability
  `bucket_shares[b]` (`estimate_bucket_shares` when not given).
  """
  common = dict(split=split, task_feature_lengths=task_feature_lengths,
                seed=seed, shuffle=shuffle, pack=pack, num_epochs=num_epochs,
                process_count=process_count, use_cached=use_cached,
                feature_converter_cls=feature_converter_cls)
  if length_buckets is None:
    ds = _converted_examples(mixture_or_task_name, shard_index=process_index,
                             batch_size=local_batch_size, **common)
  else:
    examples = functools.partial(
        _converted_examples, mixture_or_task_name, shard_index=process_index,
        batch_size=None, **common)
    ds = examples()
    buckets = _checked_buckets(ds, length_buckets)
    if process_count == 1:
      ds = length_buckets_lib.grouped_batches(ds, buckets, local_batch_size)
    else:
      if bucket_shares is None:
        bucket_shares = estimate_bucket_shares(mixture_or_task_name,
                                               length_buckets, **common)
      ds = length_buckets_lib.bucketed_batches(
          examples, buckets, local_batch_size, bucket_shares, seed)
  return deterministic(ds.prefetch(tf.data.AUTOTUNE))


# Fields of state() that must match on restore, with what a mismatch means.
_STATE_FIELDS = ('task', 'split', 'seed', 'shuffle', 'pack',
                 'task_feature_lengths', 'global_batch_size', 'process_count')


def converter_name(cls: ConverterCls | None) -> str:
  """Stable name of a feature converter class (or partial) for the
  pipeline state: another converter packs another stream."""
  if cls is None:
    cls = seqio.EncDecFeatureConverter
  if isinstance(cls, functools.partial):
    kw = ', '.join(f'{k}={v!r}' for k, v in sorted(cls.keywords.items()))
    return f'{converter_name(cls.func)}({kw})'
  return f'{cls.__module__}.{cls.__qualname__}'


class InputPipeline:
  """Global training batches as jax.Arrays, with a checkpointable position.

  Each host reads only its shard (`seqio.ShardInfo(jax.process_index(),
  jax.process_count())`), batches `global_batch_size // process_count`
  examples and contributes them to the global batch through
  `jax.make_array_from_process_local_data` with the sharding of
  `batch_logical_axes` (by default batch over ('data', 'fsdp'), length
  replicated). The stream is a deterministic function of (task, split,
  seed, shuffle, pack, lengths, length buckets, global batch, process
  count).

  Resume: `state()` is `{'batches_consumed': n, 'seed': ..., ...}` (JSON,
  identical on every host). `InputPipeline(..., state=s)` or `restore(s)`
  rebuilds the same dataset and continues after batch n, byte-identical to
  what the uninterrupted run would have produced: in O(1) from the
  iterator's own state where one is given (`iterator_checkpoint=`, written
  by `save_iterator` into every checkpoint), else by skipping n local
  batches, which re-runs preprocessing for the skipped examples (time
  linear in n). Changing the number of processes changes every host's
  shard, so it is refused unless `strict=False` (then only the position,
  not the examples, carries over).
  """

  def __init__(self, mixture_or_task_name: str, *, split: str,
               task_feature_lengths: Mapping[str, int],
               global_batch_size: int,
               partitioner: partitioning.Partitioner | jax.sharding.Mesh,
               seed: int = 0, shuffle: bool = True, pack: bool = True,
               num_epochs: int | None = None, use_cached: bool = False,
               batch_logical_axes: partitioning.LogicalAxes = BATCH_AXES,
               state: Mapping[str, Any] | None = None,
               feature_converter_cls: ConverterCls | None = None,
               iterator_checkpoint: str | None = None,
               length_buckets: Sequence[Mapping[str, int]] | None = None):
    self.partitioner = partitioning.as_partitioner(partitioner)
    self.feature_converter_cls = feature_converter_cls
    self.process_index = jax.process_index()
    self.process_count = jax.process_count()
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
      raise TypeError(f'seed: expected an int (the stream is a function of '
                      f'it), got {seed!r}')
    seed = int(seed)
    if global_batch_size <= 0 or global_batch_size % self.process_count:
      raise ValueError(
          f'global_batch_size={global_batch_size} must be a positive multiple '
          f'of the process count ({self.process_count})')
    mesh = self.partitioner.mesh
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    dp_axes = partitioning.logical_to_mesh_axes(
        batch_logical_axes[:1], self.partitioner.rules, mesh)[0] or ()
    dp_axes = (dp_axes,) if isinstance(dp_axes, str) else tuple(dp_axes)
    dp = int(np.prod([sizes[a] for a in dp_axes]))
    if global_batch_size % dp:
      raise ValueError(
          f'global_batch_size={global_batch_size} must be divisible by the '
          f'data-parallel size {dp} (mesh axes {dp_axes} of {sizes})')
    self.mixture_or_task_name = mixture_or_task_name
    self.split = split
    self.task_feature_lengths = dict(task_feature_lengths)
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // self.process_count
    self.seed, self.shuffle, self.pack = seed, shuffle, pack
    self.num_epochs, self.use_cached = num_epochs, use_cached
    self.length_buckets = (None if length_buckets is None else
                           [dict(b) for b in length_buckets])
    self.bucket_shares = None
    # Full-length shapes (a bucketed dataset's lengths vary): shardings and
    # the AOT-lowered step's worst case.
    self._local_spec = self._dataset(None).element_spec
    if self.length_buckets is not None and self.process_count > 1:
      self.bucket_shares = estimate_bucket_shares(
          mixture_or_task_name, self.length_buckets, **self._data_kwargs())
    self.shardings = {
        k: self.partitioner.sharding(
            batch_logical_axes[:len(spec.shape)],
            (global_batch_size,) + tuple(spec.shape[1:]))
        for k, spec in self._local_spec.items()}
    self._batches_consumed = 0
    self._iterator = None
    self._built_at = -1              # batches consumed when it was built
    self._iterator_prefix = None     # iterator state to resume from
    self._positioned_by = 'start'
    self._save_failure_logged = False
    if state is not None:
      self.restore(state, iterator_checkpoint=iterator_checkpoint)
    elif iterator_checkpoint is not None:
      raise ValueError('iterator_checkpoint needs the pipeline state it was '
                       'saved with (state=)')

  def local_dataset(self) -> tf.data.Dataset:
    """A fresh dataset of this host's batches, from the start.

    Fresh on purpose: iterating the same tf.data.Dataset object twice gives a
    different order the second time (a seeded shuffle with
    reshuffle_each_iteration draws a new seed per iterator), so replaying
    the stream means rebuilding it.
    """
    return self._dataset(self.length_buckets)

  def _data_kwargs(self) -> dict[str, Any]:
    return dict(split=self.split,
                task_feature_lengths=self.task_feature_lengths,
                seed=self.seed, shuffle=self.shuffle, pack=self.pack,
                num_epochs=self.num_epochs, process_count=self.process_count,
                use_cached=self.use_cached,
                feature_converter_cls=self.feature_converter_cls)

  def _dataset(self, length_buckets) -> tf.data.Dataset:
    return make_local_dataset(
        self.mixture_or_task_name, local_batch_size=self.local_batch_size,
        process_index=self.process_index, length_buckets=length_buckets,
        bucket_shares=self.bucket_shares, **self._data_kwargs())

  @property
  def element_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Global shapes, dtypes and shardings (for AOT lowering of the step)."""
    return {k: jax.ShapeDtypeStruct(
        (self.global_batch_size,) + tuple(spec.shape[1:]),
        spec.dtype.as_numpy_dtype, sharding=self.shardings[k])
            for k, spec in self._local_spec.items()}

  def state(self) -> dict[str, Any]:
    return {'batches_consumed': self._batches_consumed,
            'task': self.mixture_or_task_name, 'split': self.split,
            'seed': self.seed, 'shuffle': self.shuffle, 'pack': self.pack,
            'task_feature_lengths': dict(sorted(
                self.task_feature_lengths.items())),
            'global_batch_size': self.global_batch_size,
            'process_count': self.process_count,
            'converter': converter_name(self.feature_converter_cls),
            'length_buckets': self.length_buckets}

  def restore(self, state: Mapping[str, Any], strict: bool = True,
              iterator_checkpoint: str | None = None) -> None:
    """Continues after `state['batches_consumed']` batches of this stream,
    from the iterator state at `iterator_checkpoint` (a prefix written by
    `save_iterator` with this state) when it is given and readable."""
    state = json.loads(json.dumps(state))  # same types as after a JSON trip
    mine = json.loads(json.dumps(self.state()))
    for field in _STATE_FIELDS:
      if field not in state:
        raise ValueError(f'input pipeline state has no {field!r}: {state}')
      if state[field] != mine[field]:
        if field == 'process_count' and not strict:
          logging.warning(
              'input pipeline: process count changed %s -> %s; resuming at '
              'batch %d with different per-host shards', state[field],
              mine[field], state['batches_consumed'])
          continue
        raise ValueError(
            f'input pipeline state was saved with {field}={state[field]!r} '
            f'but this pipeline has {field}={mine[field]!r}; resuming would '
            f'not continue the same stream')
    # States saved before the field existed used seqio's converter.
    saved = state.get('converter', converter_name(None))
    if saved != mine['converter']:
      raise ValueError(
          f'input pipeline state was saved with feature converter {saved} '
          f'but this pipeline uses {mine["converter"]} (packing differs); '
          f'resuming would not continue the same stream')
    # States saved before the field existed had fixed lengths.
    if state.get('length_buckets') != mine['length_buckets']:
      raise ValueError(
          f'input pipeline state was saved with length_buckets='
          f'{state.get("length_buckets")} but this pipeline has '
          f'{mine["length_buckets"]}; resuming would not continue the same '
          f'stream')
    n = int(state['batches_consumed'])
    if n < 0:
      raise ValueError(f'batches_consumed={n} must be >= 0')
    self._batches_consumed = n
    self._iterator = None
    self._iterator_prefix = iterator_checkpoint
    if (iterator_checkpoint is not None
        and state['process_count'] != mine['process_count']):
      self._iterator_prefix = None   # another process's shard: replay

  def save_iterator(self, prefix: str) -> bool:
    """Writes this process's iterator state at `prefix` (tf.train.Checkpoint
    files; `Checkpointer.save(iterator_saver=...)` calls it). Returns False,
    with a warning the first time, if tf.data cannot checkpoint this
    dataset (a resume then replays the stream instead), and without
    writing anything if no batch was read yet: building the iterator inside
    a save could replay a whole stream there; a resume from such a step
    replays its batch count (the same batches, only slower)."""
    if self._iterator is None:
      return False
    try:
      iterator_checkpoint_lib.save(self._tf_iterator(), prefix)
      return True
    except Exception as e:  # any dataset tf.data cannot serialise
      if not self._save_failure_logged:
        self._save_failure_logged = True
        logging.warning(
            'input pipeline %r: tf.data cannot checkpoint this iterator '
            '(%s: %s); checkpoints keep only the batch count, and a resume '
            'replays the stream', self.mixture_or_task_name,
            type(e).__name__, str(e)[:300])
      return False

  def start(self) -> str:
    """Builds and positions the iterator now (else the first `next` does)
    and says how: 'iterator state', 'replay' or 'start'."""
    self._tf_iterator()
    return self._positioned_by

  def _tf_iterator(self):
    """The live tf.data iterator, built (and positioned) on first use."""
    if self._iterator is None:
      self._built_at = self._batches_consumed
      # local_dataset, not one dataset object: see its docstring.
      with native_logs.quiet_native_stderr():   # a replay runs the kernels
        self._iterator, self._positioned_by = iterator_checkpoint_lib.position(
            self.local_dataset, self._batches_consumed, self._iterator_prefix)
      self._iterator_prefix = None
    return self._iterator

  def __iter__(self) -> Iterator[dict[str, jax.Array]]:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    # The first batch of an iterator creates its tokenizer kernels, which
    # log natively (rosetta/native_logs.py).
    first = (self._iterator is None
             or self._batches_consumed == self._built_at)
    with (native_logs.quiet_native_stderr() if first
          else contextlib.nullcontext()):
      try:
        batch = next(self._tf_iterator())
      except tf.errors.OpError as e:  # a bad line of a data file?
        bad_input.reraise(e)
        raise
    local = {k: v.numpy() for k, v in batch.items()}
    self._batches_consumed += 1
    return {k: jax.make_array_from_process_local_data(
        self.shardings[k], v, (self.global_batch_size,) + v.shape[1:])
            for k, v in local.items()}
