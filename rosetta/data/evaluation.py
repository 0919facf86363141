"""Evaluation input: a seqio `Evaluator` over a whole split, fixed-size
padded global batches, and the `predict_fn` / `score_fn` seqio calls.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf

from rosetta import partitioning
from rosetta.data import pipeline

BATCH_AXES = partitioning.BATCH_AXES


def make_evaluator(mixture_or_task_name: str, split: str, *,
                   feature_converter: seqio.FeatureConverter | None = None,
                   task_feature_lengths: Mapping[str, int] | None = None,
                   num_examples: int | None = None, use_cached: bool = False,
                   logger_cls: Sequence[type] = (), log_dir: str | None = None,
                   async_compute_metrics: bool = True) -> seqio.Evaluator:
  """A `seqio.Evaluator` over the whole split: unshuffled, unpacked, finite.

  `task_feature_lengths=None` lets seqio measure the longest example (no
  truncation, so references are complete). The trainer then calls::

      metrics, outputs = evaluator.evaluate(
          compute_metrics=True, step=step,
          predict_fn=make_predict_fn(predict_batch, global_batch_size=B,
                                     partitioner=p),
          score_fn=make_score_fn(score_batch, global_batch_size=B,
                                 partitioner=p))
      metrics.result()   # {task_name: {metric: value}}

  seqio calls `predict_fn(dataset)` and `score_fn(dataset)` with ONE
  argument (the `model_feature_shapes` in seqio's Protocol is never passed),
  `dataset` being a finite tf.data.Dataset of `(index, features)` with
  features padded to fixed lengths. `predict_fn` returns
  `[(index, token_ids), ...]` (token_ids: equal-length int sequences; seqio
  stacks them with np.array and decodes up to EOS), `score_fn` returns
  `[(index, float), ...]`. Order does not matter; indices do.
  """
  converter = feature_converter or seqio.EncDecFeatureConverter(pack=False)
  if converter.pack:
    raise ValueError('make_evaluator: feature_converter packs; evaluation '
                     'needs one example per row (pack=False)')
  return seqio.Evaluator(
      mixture_or_task_name, feature_converter=converter, eval_split=split,
      use_cached=use_cached, sequence_length=task_feature_lengths,
      num_examples=num_examples, shuffle=False, logger_cls=logger_cls,
      log_dir=log_dir, async_compute_metrics=async_compute_metrics)


@dataclasses.dataclass
class EvalBatch:
  indices: np.ndarray              # (B,) example index; -1 for padding rows
  mask: np.ndarray                 # (B,) bool, False for padding rows
  features: dict[str, jax.Array]   # global, sharded like training batches


def eval_batches(dataset: tf.data.Dataset, global_batch_size: int,
                 partitioner: partitioning.Partitioner | jax.sharding.Mesh,
                 batch_logical_axes: partitioning.LogicalAxes = BATCH_AXES
                 ) -> Iterator[EvalBatch]:
  """Fixed-size global batches over an enumerated, finite eval dataset.

  The final batch is padded with all-zero rows (mask False, index -1), so
  one compiled step serves every batch. Every host reads the whole (small)
  eval set and places only the rows its devices hold.
  """
  partitioner = partitioning.as_partitioner(partitioner)
  for idx, feats in pipeline.deterministic(dataset.batch(global_batch_size)
                                  ).as_numpy_iterator():
    n = len(idx)
    pad = global_batch_size - n
    indices = np.concatenate([idx, np.full(pad, -1, idx.dtype)])
    out = {}
    for k, v in feats.items():
      v = np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
      sharding = partitioner.sharding(batch_logical_axes[:v.ndim], v.shape)
      out[k] = jax.make_array_from_callback(v.shape, sharding,
                                            lambda i, v=v: v[i])
    yield EvalBatch(indices, np.arange(global_batch_size) < n, out)


def _to_host(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def _map_eval_batches(fn, to_value, dataset, global_batch_size, partitioner):
  """[(index, to_value(row))] for the real rows of `fn(features)` per batch."""
  out = []
  for b in eval_batches(dataset, global_batch_size, partitioner):
    values = _to_host(fn(b.features))
    out += [(int(i), to_value(v))
            for i, m, v in zip(b.indices, b.mask, values) if m]
  return out


def make_predict_fn(predict_batch: Callable[[dict[str, jax.Array]], Any], *,
                    global_batch_size: int,
                    partitioner: partitioning.Partitioner | jax.sharding.Mesh
                    ) -> Callable[[tf.data.Dataset], list]:
  """seqio `predict_fn` from `predict_batch(features) -> (B, L) int tokens`."""
  def predict_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    return _map_eval_batches(predict_batch, lambda t: t.tolist(), dataset,
                             global_batch_size, partitioner)
  return predict_fn


def predict_with_scores(predict_batch: Callable[[dict[str, jax.Array]], Any],
                        dataset: tf.data.Dataset, *, global_batch_size: int,
                        partitioner: partitioning.Partitioner
                        | jax.sharding.Mesh
                        ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """{index: (tokens, scores)} over an enumerated eval dataset, from
  `predict_batch(features) -> (tokens, scores)` with a leading batch axis
  each, e.g. n-best: (B, n, L) and (B, n)."""
  out = {}
  for b in eval_batches(dataset, global_batch_size, partitioner):
    tokens, scores = (_to_host(x) for x in predict_batch(b.features))
    for i, real, t, s in zip(b.indices, b.mask, tokens, scores):
      if real:
        out[int(i)] = (t, s)
  return out


def make_score_fn(score_batch: Callable[[dict[str, jax.Array]], Any], *,
                  global_batch_size: int,
                  partitioner: partitioning.Partitioner | jax.sharding.Mesh
                  ) -> Callable[[tf.data.Dataset], list]:
  """seqio `score_fn` from `score_batch(features) -> (B,) float scores`."""
  def score_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    return _map_eval_batches(score_batch, float, dataset, global_batch_size,
                             partitioner)
  return score_fn
