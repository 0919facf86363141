"""Ranking losses for rerankers (and distillation), pure JAX, float32 math.

Every function takes a batch of b lists of n candidates and returns the
PER-LIST loss (b,); the model wrapper sums and normalises::

    scores   (b, n) float   the model's score of each candidate
    labels   (b, n) float   relevance grades, > 0 relevant
    mask     (b, n) bool    False for padding candidates

A list with nothing to learn (every candidate padding, one candidate, no
relevant one for the listwise loss, no ordered pair for the pairwise one)
gives exactly 0, and a finite (zero) gradient: padded scores and labels are
replaced by constants BEFORE any arithmetic, so a NaN or inf in padding
never reaches a value or a gradient.

    pointwise   sigmoid cross-entropy of each score against labels > 0
                (monoT5's "true"/"false" classification seen as one logit)
    pairwise    RankNet (Burges et al. 2005): softplus(-(s_i - s_j)) over
                pairs with labels_i > labels_j
    listwise    RankT5's listwise softmax cross-entropy (Zhuang et al.
                2023): -sum_i p_i log softmax(s)_i, p = labels / sum(labels)
    margin_mse  Margin-MSE (Hofstaetter et al. 2020) against a teacher's
                scores, generalised from triples to lists: candidate 0 is
                the positive, every valid j >= 1 a negative
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# Finite: exp(NEG_INF - lse) is exactly 0 in float32, and an all-padding
# list softmaxes to a (harmless, zero-weighted) uniform row, never NaN.
NEG_INF = -1e10


def _prepare(scores, labels, mask):
  """float32 scores and labels with padding replaced by 0, bool mask."""
  scores = jnp.asarray(scores, jnp.float32)
  mask = jnp.asarray(mask, bool)
  if scores.ndim != 2 or mask.shape != scores.shape:
    raise ValueError(f'scores and mask must both be (lists, candidates); got '
                     f'{scores.shape} and {mask.shape}')
  if labels is not None:
    labels = jnp.asarray(labels, jnp.float32)
    if labels.shape != scores.shape:
      raise ValueError(f'labels {labels.shape} do not match scores '
                       f'{scores.shape}')
    labels = jnp.where(mask, labels, 0.0)
  return jnp.where(mask, scores, 0.0), labels, mask


def _masked_mean(values, weights):
  """sum(values * weights) / count per row; 0 for a row with no weight."""
  weights = weights.astype(jnp.float32)
  total = jnp.sum(jnp.where(weights > 0, values, 0.0) * weights, axis=-1)
  count = jnp.sum(weights, axis=-1)
  return total / jnp.maximum(count, 1.0)


def pointwise_loss(scores, labels, mask):
  """(b,) mean over valid candidates of the sigmoid binary cross-entropy of
  each score (a logit) against labels > 0."""
  s, labels, mask = _prepare(scores, labels, mask)
  target = (labels > 0).astype(jnp.float32)
  # -[y log sigmoid(s) + (1 - y) log sigmoid(-s)] = softplus(s) - y s
  bce = jax.nn.softplus(s) - target * s
  return _masked_mean(bce, mask)


def pairwise_loss(scores, labels, mask):
  """(b,) RankNet: mean over valid pairs (i, j) with labels_i > labels_j of
  softplus(-(s_i - s_j)) = -log sigmoid(s_i - s_j)."""
  s, labels, mask = _prepare(scores, labels, mask)
  ordered = ((labels[:, :, None] > labels[:, None, :])
             & mask[:, :, None] & mask[:, None, :])
  per_pair = jax.nn.softplus(-(s[:, :, None] - s[:, None, :]))
  b = s.shape[0]
  return _masked_mean(per_pair.reshape(b, -1), ordered.reshape(b, -1))


def listwise_softmax_loss(scores, labels, mask):
  """(b,) RankT5's softmax cross-entropy: -sum_i p_i log softmax(s)_i over
  the valid candidates, with p = max(labels, 0) / sum(max(labels, 0)). A
  list without a positive grade gives 0. Invariant to adding a constant to
  a list's scores."""
  s, labels, mask = _prepare(scores, labels, mask)
  grades = jnp.maximum(labels, 0.0)
  total = jnp.sum(grades, axis=-1, keepdims=True)
  p = grades / jnp.maximum(total, 1e-30)
  log_softmax = jax.nn.log_softmax(jnp.where(mask, s, NEG_INF), axis=-1)
  # p is 0 on padding, whose log_softmax is ~NEG_INF: keep 0 * finite there.
  return -jnp.sum(p * jnp.where(mask, log_softmax, 0.0), axis=-1)


def margin_mse_loss(scores, teacher_scores, mask):
  """(b,) Margin-MSE over lists: candidate 0 is the positive; the mean over
  valid j >= 1 of ((s_0 - s_j) - (t_0 - t_j))^2. A list whose candidate 0
  is padding, or without a valid negative, gives 0. Zero when the student
  equals the teacher plus a per-list constant."""
  s, t, mask = _prepare(scores, teacher_scores, mask)
  if s.shape[1] < 1:
    raise ValueError('margin_mse_loss: lists need a candidate 0 (the '
                     'positive)')
  student_margin = s[:, :1] - s[:, 1:]
  teacher_margin = t[:, :1] - t[:, 1:]
  valid = mask[:, 1:] & mask[:, :1]
  return _masked_mean(jnp.square(student_margin - teacher_margin), valid)


LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
LOSSES: dict[str, LossFn] = {
    'pointwise': pointwise_loss,
    'pairwise': pairwise_loss,
    'listwise': listwise_softmax_loss,
}


def ranking_loss(name: str, scores, labels, mask):
  """(b,) per-list loss of `LOSSES[name]`."""
  if name not in LOSSES:
    raise ValueError(f'ranking loss {name!r}: expected one of '
                     f'{sorted(LOSSES)}')
  return LOSSES[name](scores, labels, mask)
