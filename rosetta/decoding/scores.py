"""Per-step scores of the decoders: the vocabulary log-softmax and the GNMT
length and coverage penalties (Wu et al. 2016). Re-exported by
`rosetta.decoding.algorithms`."""
from __future__ import annotations

import jax
import jax.numpy as jnp

_TINY = 1e-30  # floor for log(coverage): attention that underflows to 0


def log_softmax(logits):
  """float32 log-softmax over the vocabulary, as `jax.nn.log_softmax`
  computes it (shift by the max, subtract log-sum-exp), with the max taken
  of an identity `reduce_precision` (float32's own 8 exponent and 23
  mantissa bits): XLA:CPU otherwise fuses the max reduction into the
  (rows x d) @ (d x vocab) matmul that produced the logits, and that fused
  bfloat16 kernel ran 2.2x slower (T5.1.1 small, 32 rows, cold weights:
  8.3 ms vs 3.7 ms; a `lax.top_k` max, 4.7 ms, also gathers the batch when
  the vocabulary is sharded; `optimization_barrier` is expanded before
  fusion and does nothing here)."""
  logits = logits.astype(jnp.float32)
  top = jnp.max(jax.lax.reduce_precision(logits, exponent_bits=8,
                                         mantissa_bits=23), -1, keepdims=True)
  shifted = logits - jax.lax.stop_gradient(top)
  return shifted - jnp.log(jnp.sum(jnp.exp(shifted), -1, keepdims=True))


def length_penalty(length, alpha: float, kind: str = 'gnmt'):
  """'gnmt': ((5 + len) / 6) ** alpha (Wu et al. 2016); 'hf': len ** alpha
  (HF `length_penalty`). `length` counts generated tokens, EOS included."""
  length = jnp.asarray(length, jnp.float32)
  if kind == 'gnmt':
    return ((5.0 + length) / 6.0) ** alpha
  return length ** alpha


def coverage_penalty(coverage, source_mask, beta: float):
  """GNMT: beta * sum_i log(min(sum_j p_ij, 1)) over real source positions.

  coverage: (..., S) attention summed over the target steps so far;
  source_mask: (..., S) bool, True at real (non-pad) source positions.
  """
  logs = jnp.log(jnp.clip(coverage, _TINY, 1.0))
  return beta * jnp.sum(jnp.where(source_mask, logs, 0.0), axis=-1)
