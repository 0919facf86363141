"""Temperature-sampled mixtures of translation directions, fixed or annealed.

Direction i with n_i training examples is drawn with probability

    p_i(T) = n_i^(1/T) / sum_j n_j^(1/T)

T=1 samples in proportion to the data; large T approaches uniform, which
up-samples low-resource directions (Arivazhagan et al. 2019 use T=5).
Worked example, n = (10000, 1000, 100):

    T=1: p = (0.901, 0.090, 0.009)
    T=5: p = (0.493, 0.311, 0.196)

`register_temperature_mixture` registers a `seqio.Mixture` (seqio's own
sampler) with rates n_i^(1/T). seqio fixes a Mixture's rates when it builds
the dataset, so a temperature that changes during training needs its own
sampler: `register_annealed_mixture` registers an `AnnealedMixture`, a seqio
Mixture whose sampler is `tf.data.Dataset.choose_from_datasets` driven by a
choice stream: the k-th mixed example comes from direction c_k, where

    T(k) = T0 + (T1 - T0) * min(k / K, 1)       (linear, then constant)
    c_k  = first i with u_k < cumsum(p(T(k)))_i,  u_k ~ U[0, 1)

and u_k is a stateless random number of (seed, k) (drawn 1,024 at a time
with seed (seed, k // 1024)). The stream is a pure function of (seed, k): the
same on every run and every host, and a rebuilt dataset skipped by n
batches continues exactly where the first left off, which is how
`rosetta.data.pipeline.InputPipeline` resumes. k counts mixed EXAMPLES on one host
(before packing); for a schedule in steps, K = steps x per-host batch size x
examples per packed row (measure the last on a few batches). Index i is the
position of the task in `mixture.tasks`, which seqio sorts by name.

Both mixtures give each sub-task its own shuffle seed (the seed folded with
the task name): seqio passes one seed to every sub-task, so two directions
of a multi-parallel corpus (same size, same order) would otherwise be
shuffled into the same order and show the same sentence at the same time.
"""

from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from rosetta.data import record_files
from rosetta.data import text_pairs

CHOICE_BLOCK = 1024   # u_k drawn in blocks; part of the stream's definition


def temperature_rates(counts: Sequence[float] | Mapping[str, float],
                      temperature: float):
  """Normalised n_i^(1/T) (a dict for a dict): ([4, 1], 2) -> [2/3, 1/3]."""
  if temperature <= 0:
    raise ValueError(f'temperature must be > 0, got {temperature}')
  keys = list(counts) if isinstance(counts, Mapping) else None
  n = np.asarray(list(counts.values()) if keys else counts, np.float64)
  if n.ndim != 1 or not len(n) or (n <= 0).any():
    raise ValueError(f'example counts must be positive, got {counts}')
  logits = np.log(n) / temperature
  p = np.exp(logits - logits.max())
  p /= p.sum()
  return dict(zip(keys, p.tolist())) if keys else p


def annealed_temperature(k, t0: float, t1: float, anneal_examples: int):
  """T(k) = t0 + (t1 - t0) * min(k / K, 1); k may be an array."""
  if anneal_examples <= 0:
    raise ValueError(f'anneal_examples must be > 0, got {anneal_examples}')
  frac = np.minimum(np.asarray(k, np.float64) / anneal_examples, 1.0)
  return t0 + (t1 - t0) * frac


def choice_probabilities(counts: Sequence[float], k, t0: float, t1: float,
                         anneal_examples: int) -> np.ndarray:
  """p(T(k)) for example index k (shape [len(counts)]; [len(k), ...] for
  an array of k): the expected frequencies of `choice_dataset`."""
  t = annealed_temperature(k, t0, t1, anneal_examples)
  logits = np.log(np.asarray(counts, np.float64)) / np.asarray(t)[..., None]
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return p / p.sum(-1, keepdims=True)


def choice_dataset(counts: Sequence[float], *, seed: int, t0: float,
                   t1: float, anneal_examples: int) -> tf.data.Dataset:
  """Infinite int64 dataset: the direction index of each mixed example.

  Element k depends only on (counts, seed, t0, t1, anneal_examples, k).
  """
  if t0 <= 0 or t1 <= 0:
    raise ValueError(f'temperatures must be > 0, got t0={t0}, t1={t1}')
  annealed_temperature(0, t0, t1, anneal_examples)   # validates K
  log_n = tf.constant(np.log(np.asarray(counts, np.float64)), tf.float64)
  n = len(counts)

  def block(b):
    k = b * CHOICE_BLOCK + tf.range(CHOICE_BLOCK, dtype=tf.int64)
    frac = tf.minimum(tf.cast(k, tf.float64) / anneal_examples, 1.0)
    t = t0 + (t1 - t0) * frac
    p = tf.nn.softmax(log_n[None, :] / t[:, None], axis=-1)
    cdf = tf.math.cumsum(p, axis=-1)
    u = tf.random.stateless_uniform(
        [CHOICE_BLOCK, 1], seed=tf.stack([tf.constant(seed, tf.int64), b]),
        dtype=tf.float64)
    # index of the first cdf entry above u; clip against cdf[-1] < 1 - eps
    i = tf.reduce_sum(tf.cast(cdf <= u, tf.int64), axis=-1)
    return tf.minimum(i, n - 1)

  return tf.data.Dataset.counter().map(block).unbatch()


def training_examples(task: seqio.Task | str, split: str = 'train') -> int:
  """n_i: examples in a task's split (reads an in-memory source)."""
  task = seqio.get_mixture_or_task(task) if isinstance(task, str) else task
  src = task.source
  if isinstance(src, text_pairs.TextPairSource):
    return len(src.pairs(split))
  if isinstance(src, record_files.RecordFileSource):
    return src.count_records(split)
  n = src.num_input_examples(split)
  if n is None:
    raise ValueError(f'{task.name}: its source does not know its number of '
                     f'{split!r} examples; give the mixture explicit counts')
  return int(n)


def _task_seed(seed: int, task_name: str) -> int:
  return (seed * 1_000_003 + zlib.crc32(task_name.encode())) % (2**31 - 1)


class _PerTaskSeedMixture(seqio.Mixture):
  """A Mixture that shuffles each sub-task with its own seed."""

  def get_task_dataset(self, task, output_feature_keys, sequence_length=None,
                       split='train', use_cached=False, shuffle=True,
                       seed=None, *args, **kwargs):
    if seed is not None:
      seed = _task_seed(int(seed), task.name)
    return super().get_task_dataset(task, output_feature_keys,
                                    sequence_length, split, use_cached,
                                    shuffle, seed, *args, **kwargs)


class TemperatureMixture(_PerTaskSeedMixture):
  """seqio Mixture with fixed rates n_i^(1/T) (seqio's own sampler)."""


class AnnealedMixture(_PerTaskSeedMixture):
  """seqio Mixture whose temperature follows T(k) over mixed examples.

  Its tasks' rates are their example counts n_i (seqio hands them to the
  sampler); the sampler turns them into p(T(k)) per example. The sampler
  seed is the `seed` given to `get_dataset` (0 if None: the stream is
  always deterministic).
  """

  def __init__(self, name, tasks, default_rate=None, *, t0: float,
               t1: float, anneal_examples: int, **kwargs):
    super().__init__(name, tasks, default_rate, **kwargs)
    self.t0, self.t1, self.anneal_examples = t0, t1, anneal_examples
    self._sample_fn = self._sample

  def temperature(self, k):
    return annealed_temperature(k, self.t0, self.t1, self.anneal_examples)

  def _sample(self, datasets, rates, seed):
    choices = choice_dataset(
        [float(r) for r in rates], seed=0 if seed is None else int(seed),
        t0=self.t0, t1=self.t1, anneal_examples=self.anneal_examples)
    return tf.data.Dataset.choose_from_datasets(
        datasets, choices, stop_on_empty_dataset=True)


def _task_list(tasks):
  names = [t if isinstance(t, str) else t.name for t in tasks]
  if not names:
    raise ValueError('a mixture needs at least one task')
  return names


def register_temperature_mixture(name: str, tasks: Sequence[str | seqio.Task],
                                 temperature: float = 5.0, *,
                                 counts: Mapping[str, int] | None = None,
                                 replace: bool = True) -> TemperatureMixture:
  """Registers a Mixture sampling task i with rate n_i^(1/T).

  n_i is `counts[name]` or the task's train-split size (read lazily when the
  dataset is built). `seqio.get_mixture_or_task(name)` returns it.
  """
  if temperature <= 0:
    raise ValueError(f'temperature must be > 0, got {temperature}')
  names = _task_list(tasks)

  def rate(task):
    n = counts[task.name] if counts else training_examples(task)
    return float(n) ** (1.0 / temperature)
  if replace:
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, names, default_rate=rate,
                                   mixture_cls=TemperatureMixture)


def register_annealed_mixture(name: str, tasks: Sequence[str | seqio.Task], *,
                              t0: float = 1.0, t1: float = 5.0,
                              anneal_examples: int,
                              counts: Mapping[str, int] | None = None,
                              replace: bool = True) -> AnnealedMixture:
  """Registers an `AnnealedMixture`: temperature t0 -> t1 linearly over the
  first `anneal_examples` mixed examples, then t1.

  >>> register_annealed_mixture('tatoeba_translate_annealed',
  ...     ['tatoeba_translate_en_de', 'tatoeba_translate_en_hi'],
  ...     t0=1, t1=5, anneal_examples=1_000_000)
  """
  if t0 <= 0 or t1 <= 0:
    raise ValueError(f'temperatures must be > 0, got t0={t0}, t1={t1}')
  names = _task_list(tasks)

  def rate(task):
    return float(counts[task.name] if counts else training_examples(task))
  if replace:
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(
      name, names, default_rate=rate, mixture_cls=AnnealedMixture, t0=t0,
      t1=t1, anneal_examples=anneal_examples)
