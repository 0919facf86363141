"""Contrastive losses for dual encoders, over the GLOBAL batch.

Every query i is scored against every candidate document of the batch: all
B positives and, with hard negatives, all B*K of them (each row's hard
negatives serve every query, as in GTR / Sentence-T5)::

    scores = scale * queries @ candidates.T          # (B, B + B*K)

Under `jax.jit` with NamedSharding the arrays here are the global batch
(every device's rows), not a shard: the similarity matrix is constrained to
rows over the batch axes with the candidates replicated, so XLA all-gathers
the (small) candidate embeddings once and each device scores its own
queries against the whole batch. No `shard_map`, no per-device negatives.

Positives and false negatives. Candidate c is *relevant* to query i when it
is i's own positive, a positive identical to it (same doc id), the positive
of an identical query (same query id), or a hard negative identical to i's
positive. Relevant candidates never act as negatives. With `mode='mask'`
only the own positive is scored:

    loss_i = -log( e^{s_ii} / (e^{s_ii} + sum_{n in N_i} e^{s_in}) )

(N_i: valid candidates not relevant to i). With `mode='dexml'` (DEXML's
decoupled softmax, Gupta et al. 2024) every relevant candidate p in P_i is a
positive whose denominator leaves the other positives out:

    loss_i = mean_{p in P_i} -log( e^{s_ip} / (e^{s_ip} + sum_{N_i} e^{s_in}) )

Both are softplus(logsumexp_{N_i} s_i - s_ip). `bidirectional` adds the
document->query direction over the B x B block (each positive document
against all queries, same rules) and averages the two.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rosetta.partitioning import constrain

MODES = ('mask', 'dexml')
NEG_INF = -1e10  # finite: an all-masked row gives loss 0, never NaN

ROWS = ('activation_batch', 'activation_embed')    # queries: batch-sharded
GATHERED = (None, 'activation_embed')             # candidates: replicated
SCORES = ('activation_batch', None)                # (queries, all candidates)


class LogitScale(nnx.Module):
  """The softmax scale 1/temperature: fixed, or learnt (CLIP / ALIGN) as
  a log-scale parameter initialised to log(1/temperature) and clipped to
  [0, log(max_scale)], i.e. temperature in [1/max_scale, 1]. The clip in
  the forward pass also stops the gradient outside that range."""

  def __init__(self, temperature: float, learn: bool = False,
               max_scale: float = 100.0):
    if not temperature > 0:
      raise ValueError(f'temperature must be > 0, got {temperature!r}')
    if learn and not 1.0 <= 1.0 / temperature <= max_scale:
      raise ValueError(f'a learnt temperature starts inside [1/max_scale, 1]'
                       f' = [{1 / max_scale:g}, 1]; got {temperature}')
    self.temperature, self.learn, self.max_scale = temperature, learn, max_scale
    if learn:
      self.log_scale = nnx.Param(
          jnp.asarray(math.log(1.0 / temperature), jnp.float32),
          logical_axes=())

  def __call__(self):
    if not self.learn:
      return jnp.asarray(1.0 / self.temperature, jnp.float32)
    return jnp.exp(jnp.clip(self.log_scale[...], 0.0,
                            math.log(self.max_scale)))


class ContrastiveOutput(NamedTuple):
  loss: jax.Array        # (B,) per-query loss, 0 for invalid rows
  correct: jax.Array     # (B,) 1.0 where the own positive outscores N_i
  query_to_doc: jax.Array   # (B,) loss of that direction alone
  doc_to_query: jax.Array   # (B,) (zeros when not bidirectional)
  scores: jax.Array      # (B, B + B*K) scaled similarities


def _same(a, b):
  return a[:, None] == b[None, :]


def relevance(query_ids, positive_ids, negative_ids=None):
  """(B, B + B*K) bool: candidate c is relevant to query i (see module doc).

  ids are int arrays: query_ids (B,), positive_ids (B,), negative_ids
  (B, K) or None. Equal ids mean identical texts (or the same document).
  """
  b = positive_ids.shape[0]
  block = (jnp.eye(b, dtype=bool) | _same(positive_ids, positive_ids)
           | _same(query_ids, query_ids))
  if negative_ids is None:
    return block
  hard = _same(positive_ids, negative_ids.reshape(-1))
  return jnp.concatenate([block, hard], axis=1)


def _direction(scores, relevant, own, valid_cols, mode):
  """Per-anchor loss and top-1 hit for one direction.

  scores (A, C) float32; relevant, own (A, C) bool; valid_cols (C,) bool.
  """
  negatives = valid_cols[None, :] & ~relevant
  lse_neg = jax.nn.logsumexp(jnp.where(negatives, scores, NEG_INF), axis=1)
  # softplus(lse_neg - s): -log of s against {s} + negatives, for every cell.
  per_cell = jax.nn.softplus(lse_neg[:, None] - scores)
  if mode == 'mask':
    terms = own
  else:
    terms = relevant & valid_cols[None, :]
  weights = terms.astype(jnp.float32)
  loss = (jnp.sum(jnp.where(terms, per_cell, 0.0), axis=1)
          / jnp.maximum(jnp.sum(weights, axis=1), 1.0))
  own_score = jnp.sum(jnp.where(own, scores, 0.0), axis=1)
  best_neg = jnp.max(jnp.where(negatives, scores, NEG_INF), axis=1)
  return loss, (own_score > best_neg).astype(jnp.float32)


def in_batch_softmax(queries, positives, negatives=None, *, scale,
                     query_ids=None, positive_ids=None, negative_ids=None,
                     row_valid=None, negative_valid=None,
                     bidirectional: bool = True,
                     mode: str = 'mask') -> ContrastiveOutput:
  """In-batch softmax over the global batch, hard negatives, false-negative
  masking or DEXML multi-positives, one or both directions.

  queries (B, E) and positives (B, E): embeddings (usually L2-normalised);
  negatives (B, K, E) or None; scale: scalar 1/temperature (may be traced,
  e.g. a learnt logit scale). ids: int (B,), (B,), (B, K); None means "all
  distinct" (no duplicates masked). row_valid (B,) bool drops padding rows
  (as queries and as candidates); negative_valid (B, K) bool drops padding
  negatives. Returns a ContrastiveOutput of per-row values.
  """
  if mode not in MODES:
    raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
  b = queries.shape[0]
  if positives.shape[0] != b:
    raise ValueError(f'positives has {positives.shape[0]} rows for {b} '
                     'queries')
  if negatives is not None and (negatives.ndim != 3 or
                                negatives.shape[0] != b):
    raise ValueError(f'negatives must be (B={b}, K, E), got '
                     f'{negatives.shape}')
  arange = jnp.arange(b, dtype=jnp.int32)
  query_ids = arange if query_ids is None else query_ids
  positive_ids = arange if positive_ids is None else positive_ids
  row_valid = (jnp.ones((b,), bool) if row_valid is None
               else row_valid.astype(bool))

  candidates = positives
  valid_cols = row_valid
  if negatives is not None:
    k = negatives.shape[1]
    if negative_ids is None:  # distinct from every positive and each other
      negative_ids = -1 - jnp.arange(b * k, dtype=jnp.int32).reshape(b, k)
    if negative_valid is None:
      negative_valid = jnp.ones((b, k), bool)
    negative_valid = negative_valid.astype(bool) & row_valid[:, None]
    candidates = jnp.concatenate(
        [positives, negatives.reshape(b * k, negatives.shape[-1])], axis=0)
    valid_cols = jnp.concatenate([row_valid, negative_valid.reshape(-1)])
  else:
    negative_ids = None

  q = constrain(queries.astype(jnp.float32), ROWS)
  c = constrain(candidates.astype(jnp.float32), GATHERED)
  scores = jnp.dot(q, c.T, preferred_element_type=jnp.float32) * scale
  scores = constrain(scores, SCORES)

  relevant = relevance(query_ids, positive_ids, negative_ids)
  own = jnp.eye(b, scores.shape[1], dtype=bool)
  q2d, correct = _direction(scores, relevant, own, valid_cols, mode)
  if bidirectional:
    # Documents as anchors over the B queries: the B x B block, transposed.
    block = scores[:, :b].T
    d2q, _ = _direction(block, relevant[:, :b].T, own[:, :b], row_valid,
                        mode)
    loss = 0.5 * (q2d + d2q)
  else:
    d2q = jnp.zeros_like(q2d)
    loss = q2d
  w = row_valid.astype(jnp.float32)
  return ContrastiveOutput(loss * w, correct * w, q2d * w, d2q * w, scores)
