"""Output projection + cross entropy over chunks of positions: the
(batch, length, vocab) logits are never held whole (MaxText's "vocab
tiling").

At mT5's 250k vocabulary a 16 x 128 batch has 2 GB of float32 logits plus
a 1 GB gradient; here the forward keeps only the per-token log Z, and the
backward recomputes each chunk's logits (one more vocabulary matmul, ~+1/3
of the projection's FLOPs) and writes its gradient into dx and the kernel
gradient at once. Chunks run over the length axis, so every chunk keeps the
batch's data-parallel sharding. The math is `losses.cross_entropy_with_logits`
of `layers.dense(x, kernel, dtype)`, in the same float32 precision.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rosetta.model import layers
from rosetta.model import losses


def projected_cross_entropy(x, kernel, targets, weights, *, dtype,
                            chunk_length: int, label_smoothing: float = 0.0,
                            z_loss: float = 0.0):
  """Per-token (loss, z-loss part, correct) of logits = x @ kernel.

  x (b, l, e) decoder states; kernel (e, v); targets, weights (b, l).
  `dtype` is the matmul dtype (`layers.dense`); `chunk_length` positions
  of every row are projected at a time (l need not be a multiple).
  loss and z as `losses.cross_entropy_with_logits` (already weighted);
  correct = weights where the target's logit is the row maximum.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f'label_smoothing must be in [0, 1), got '
                     f'{label_smoothing}')
  if chunk_length <= 0:
    raise ValueError(f'chunk_length must be positive, got {chunk_length}')
  return _projected_ce(x, kernel, targets.astype(jnp.int32),
                       weights.astype(jnp.float32), jnp.dtype(dtype),
                       int(chunk_length), float(label_smoothing),
                       float(z_loss))


def _chunks(a, chunk: int):
  """(b, l, ...) -> (n, b, chunk, ...), padded at the end of l."""
  b, l = a.shape[:2]
  n = -(-l // chunk)
  pad = [(0, 0), (0, n * chunk - l)] + [(0, 0)] * (a.ndim - 2)
  a = jnp.pad(a, pad)
  return jnp.moveaxis(a.reshape(b, n, chunk, *a.shape[2:]), 1, 0)


def _unchunk(a, length: int):
  """(n, b, chunk, ...) -> (b, length, ...)."""
  n, b, chunk = a.shape[:3]
  a = jnp.moveaxis(a, 0, 1).reshape(b, n * chunk, *a.shape[3:])
  return a[:, :length]


def _logits(x_chunk, kernel, dtype):
  return layers.dense(x_chunk, kernel, dtype)        # (b, c, v) float32


def _forward(x, kernel, targets, dtype, chunk, label_smoothing, z_loss):
  v = kernel.shape[-1]

  def one(args):
    xc, tc = args
    logits = _logits(xc, kernel, dtype)
    log_z, target_logit, logits_sum = losses.logit_statistics(
        logits, tc, label_smoothing)
    loss, z = losses.token_losses(log_z, target_logit, logits_sum, v,
                                   label_smoothing, z_loss)
    correct = target_logit >= jnp.max(logits, -1)
    return loss, z, correct, log_z

  loss, z, correct, log_z = jax.lax.map(
      one, (_chunks(x, chunk), _chunks(targets, chunk)))
  l = x.shape[1]
  loss, z, correct, log_z = (_unchunk(a, l) for a in (loss, z, correct, log_z))
  return loss, z, correct.astype(jnp.float32), log_z


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _projected_ce(x, kernel, targets, weights, dtype, chunk, label_smoothing,
                  z_loss):
  loss, z, correct, _ = _forward(x, kernel, targets, dtype, chunk,
                                 label_smoothing, z_loss)
  return loss * weights, z * weights, correct * weights


def _projected_ce_fwd(x, kernel, targets, weights, dtype, chunk,
                      label_smoothing, z_loss):
  loss, z, correct, log_z = _forward(x, kernel, targets, dtype, chunk,
                                     label_smoothing, z_loss)
  out = (loss * weights, z * weights, correct * weights)
  return out, (x, kernel, targets, weights, loss, z, log_z)


def _projected_ce_bwd(dtype, chunk, label_smoothing, z_loss, res,
                      cotangents):
  x, kernel, targets, weights, loss, z, log_z = res
  g_loss, g_z, _ = cotangents
  v = kernel.shape[-1]
  confidence, low, _ = losses.smoothing_constants(v, label_smoothing)
  zl = 2.0 * z_loss * log_z
  # As losses._cross_entropy_bwd: the softmax coefficient per token and the
  # smoothed target mass to subtract.
  coeff = (g_loss * (1.0 + zl) + g_z * zl) * weights
  g_lw = g_loss * weights
  kl = kernel.astype(dtype)

  def one(dk, args):
    xc, tc, lzc, cc, gc = args
    x2 = xc.astype(dtype).reshape(-1, xc.shape[-1])
    logits = jnp.dot(x2, kl, preferred_element_type=jnp.float32).reshape(
        *xc.shape[:-1], v)                   # = _logits(xc, kernel, dtype)
    is_target = tc[..., None] == jnp.arange(v, dtype=tc.dtype)
    d_logits = (jnp.exp(logits - lzc[..., None]) * cc[..., None]
                - gc[..., None] * jnp.where(is_target, confidence, low))
    dx, dk_chunk = layers.dot_gradients(
        x2, kl, d_logits.astype(dtype).reshape(-1, v))
    return dk + dk_chunk, dx.reshape(xc.shape)

  dk, dx = jax.lax.scan(
      one, jnp.zeros(kernel.shape, jnp.float32),
      tuple(_chunks(a, chunk) for a in (x, targets, log_z, coeff, g_lw)))
  dx = _unchunk(dx, x.shape[1])
  d_weights = g_loss * loss + g_z * z
  return (dx.astype(x.dtype), dk.astype(kernel.dtype), None, d_weights)


_projected_ce.defvjp(_projected_ce_fwd, _projected_ce_bwd)
