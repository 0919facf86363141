"""T5.1.1 / mT5 building blocks in Flax NNX: norm, embedding, relative position
bias, multi-head attention with a KV cache, and the (gated) MLP.

Every parameter carries `logical_axes` metadata (see `partitioning.py`), and
activations are constrained by logical name with `partitioning.constrain`.
Shapes use: b batch, q query length, k key length, h heads, d head dim,
e embedding (d_model), f MLP width, v vocabulary.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rosetta.partitioning import constrain, target_platform

NEG_INF = -1e10  # finite, so a fully masked row softmaxes to uniform, not NaN

BATCH_LENGTH_EMBED = ('activation_batch', 'activation_length',
                      'activation_embed')
BATCH_LENGTH_HEADS_KV = ('activation_batch', 'activation_length',
                         'activation_heads', 'activation_kv')
# Keys and values are kept heads-major, (b, h, k, d): the layout the score
# and context matmuls read, so neither a cached K/V nor a new chunk is
# transposed at every decoding step.
BATCH_HEADS_LENGTH_KV = ('activation_batch', 'activation_heads',
                         'activation_length', 'activation_kv')
CACHE_AXES = ('cache_batch', 'cache_heads', 'cache_length', 'cache_kv')


def dense(x, kernel, dtype):
  """x (..., n) @ kernel (n, m) as ONE 2-D matmul with float32 accumulation.

  3-D einsums such as 'ble,ef->blf' made XLA:CPU materialise large transposed
  copies for the weight gradients (a third of a T5-small training step), and
  a bfloat16 matmul without `preferred_element_type` ran at the float32 rate
  (165 vs 940 GFLOP/s here). Returns float32; callers cast.
  """
  lead = x.shape[:-1]
  x2 = x.reshape(-1, x.shape[-1])
  y = _dot(x2, kernel, jnp.dtype(dtype))
  return y.reshape(*lead, kernel.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dot(x, kernel, dtype):
  """(r, n) @ (n, m) in `dtype` with float32 accumulation, and a backward
  pass whose two matmuls also run in `dtype` on the fast kernels.

  Plain autodiff of `dot(x.astype(bf16), k.astype(bf16),
  preferred_element_type=f32)` gets a float32 cotangent, so both backward
  matmuls ran float32 x bfloat16 promoted to float32: two thirds of the
  training FLOPs at the float32 rate. Here the cotangent is rounded to
  `dtype` (as t5x/MaxText bfloat16 activations do) and the kernel gradient
  comes straight out of the float32 accumulator, never rounded to bfloat16.
  """
  return jnp.dot(x.astype(dtype), kernel.astype(dtype),
                 preferred_element_type=jnp.float32)


def _dot_fwd(x, kernel, dtype):
  xl, kl = x.astype(dtype), kernel.astype(dtype)
  y = jnp.dot(xl, kl, preferred_element_type=jnp.float32)
  # Dtypes ride along as zero-size arrays (residuals must be arrays).
  return y, (xl, kl, jnp.zeros((0,), x.dtype), jnp.zeros((0,), kernel.dtype))


def _dot_bwd(dtype, res, g):
  xl, kl, x_proto, k_proto = res
  dx, dk = dot_gradients(xl, kl, g.astype(dtype))
  return dx.astype(x_proto.dtype), dk.astype(k_proto.dtype)


def dot_gradients(xl, kl, g):
  """(dx, dkernel) of y = xl (r, n) @ kl (n, m) for the cotangent g (r, m).

  All three already in the matmul dtype; both results float32 (the
  accumulator), each one canonical matmul on XLA:CPU's fast kernels.
  """
  dx = jax.lax.dot_general(g, kl, (((1,), (1,)), ((), ())),
                           preferred_element_type=jnp.float32)
  dk = jnp.dot(materialized_transpose(xl), g,
               preferred_element_type=jnp.float32)
  return dx, dk


_dot.defvjp(_dot_fwd, _dot_bwd)


def materialized_transpose(x):
  """x.T (2-D) as a real copy, so the kernel-gradient matmul is canonical.

  XLA folds a plain 2-D transpose into the dot (`x^T g` contracting over
  rows), which XLA:CPU runs on Eigen with bfloat16 promoted to float32:
  340 GFLOP/s on the Zen 5 against 800-900 for the canonical bfloat16 dot
  (float32: 360 vs 420). Splitting the minor dimension first turns it into
  a 3-D transpose that is not folded; the copy costs ~2% of the matmul.
  GPU and TPU compilers take transposed operands natively: there the plain
  transpose is kept. Keyed on the platform traced for (the mesh's devices),
  so an ahead-of-time compile for TPU from a CPU host takes the TPU path.
  """
  rows, cols = x.shape
  if cols % 2 or target_platform() != 'cpu':
    return x.T
  return x.reshape(rows, 2, cols // 2).transpose(1, 2, 0).reshape(cols, rows)


# T5Config.remat: what each layer keeps for the backward pass. 'full' keeps
# only the layer's input (recomputing its forward, ~1.33x the step's FLOPs);
# 'dots_saveable' keeps the matmul outputs and recomputes the cheap
# elementwise work in between.
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
}


def rematerialized(fn, policy: str):
  """`fn(module, *arrays)` under the named remat policy ('none': as is)."""
  if policy == 'none':
    return fn
  return nnx.remat(fn, policy=REMAT_POLICIES[policy])


def normal_init(key, shape, stddev, dtype):
  return (stddev * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


class RMSNorm(nnx.Module):
  """T5 layer norm: scale only, no bias, no mean subtraction; float32 math."""

  def __init__(self, dim: int, eps: float, dtype, param_dtype):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype),
                           logical_axes=('embed',))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class Embed(nnx.Module):
  """Token embedding; `attend` reuses it as the tied output projection."""

  def __init__(self, vocab_size: int, dim: int, dtype, param_dtype, *,
               rngs: nnx.Rngs):
    self.embedding = nnx.Param(
        normal_init(rngs.params(), (vocab_size, dim), 1.0, param_dtype),
        logical_axes=('vocab', 'embed'))
    self.dtype = dtype

  def __call__(self, tokens):
    table = self.embedding[...].astype(self.dtype)
    return constrain(jnp.take(table, tokens, axis=0), BATCH_LENGTH_EMBED)

  def attend(self, x):
    return dense(x, self.embedding[...].T, self.dtype)


def relative_position_bucket(relative_position, bidirectional: bool,
                             num_buckets: int, max_distance: int):
  """T5's bucketing of (key - query) distances: exact when small, log-spaced
  up to `max_distance`, then clipped. Bidirectional uses half the buckets for
  each sign; causal maps every future position to bucket 0."""
  ret = 0
  n = -relative_position  # query - key
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # log of 0 is masked out by `is_small`; avoid the warning-free NaN path.
  n_float = jnp.maximum(n, 1).astype(jnp.float32)
  val_if_large = max_exact + (
      jnp.log(n_float / max_exact) / math.log(max_distance / max_exact) *
      (num_buckets - max_exact)).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nnx.Module):
  """Learned scalar bias per (bucket, head), shared by all layers of a stack."""

  def __init__(self, num_buckets: int, max_distance: int, num_heads: int,
               bidirectional: bool, param_dtype, *, rngs: nnx.Rngs):
    self.embedding = nnx.Param(
        normal_init(rngs.params(), (num_buckets, num_heads),
                    num_heads ** -0.5, param_dtype),
        logical_axes=('relpos_buckets', 'heads'))
    self.num_buckets = num_buckets
    self.max_distance = max_distance
    self.bidirectional = bidirectional

  def __call__(self, query_positions, key_positions):
    """Positions are (b, q) and (b, k) int arrays; returns (b, h, q, k) f32."""
    rel = key_positions[:, None, :] - query_positions[:, :, None]
    buckets = relative_position_bucket(rel, self.bidirectional,
                                       self.num_buckets, self.max_distance)
    bias = jnp.take(self.embedding[...].astype(jnp.float32), buckets, axis=0)
    return jnp.transpose(bias, (0, 3, 1, 2))


class MultiHeadAttention(nnx.Module):
  """T5 attention: no 1/sqrt(d) scaling (folded into the query init), additive
  relative position bias, boolean masks. Optional KV cache for decoding."""

  def __init__(self, emb_dim: int, num_heads: int, head_dim: int,
               dropout_rate: float, dtype, param_dtype, *, rngs: nnx.Rngs,
               lora=None):
    """lora: None, or `(kernel name, in_shape, in_axes, out_shape,
    out_axes) -> module with .delta(x) | None` (`peft.lora_factory`): a
    low-rank update added to each kernel it returns a module for."""
    e, h, d = emb_dim, num_heads, head_dim
    def param(shape, std, axes):
      return nnx.Param(normal_init(rngs.params(), shape, std, param_dtype),
                       logical_axes=axes)
    self.query = param((e, h, d), (e * d) ** -0.5, ('embed', 'heads', 'kv'))
    self.key = param((e, h, d), e ** -0.5, ('embed', 'heads', 'kv'))
    self.value = param((e, h, d), e ** -0.5, ('embed', 'heads', 'kv'))
    self.out = param((h, d, e), (h * d) ** -0.5, ('heads', 'kv', 'embed'))
    self.dropout = nnx.Dropout(dropout_rate)
    self.dtype = dtype
    self.num_heads, self.head_dim = h, d
    self.lora = _kernel_updates(lora, {
        'query': ((e,), ('embed',), (h, d), ('heads', 'kv')),
        'key': ((e,), ('embed',), (h, d), ('heads', 'kv')),
        'value': ((e,), ('embed',), (h, d), ('heads', 'kv')),
        'out': ((h, d), ('heads', 'kv'), (e,), ('embed',)),
    })
    # Filled by `init_cache` / `set_static_kv`; None outside decoding.
    self.cached_key: nnx.Cache | None = nnx.data(None)
    self.cached_value: nnx.Cache | None = nnx.data(None)

  def _project(self, x, name):
    """(b, l, e) @ (e, h, d) -> (b, l, h, d) for the kernel `name`."""
    kernel = getattr(self, name)
    e, h, d = kernel.shape
    y = dense(x, kernel[...].reshape(e, h * d), self.dtype)
    if name in self.lora:
      y = y + self.lora[name].delta(x)
    return y.astype(self.dtype).reshape(x.shape[0], x.shape[1], h, d)

  def _project_kv(self, x, name):
    y = jnp.transpose(self._project(x, name), (0, 2, 1, 3))
    return constrain(y, BATCH_HEADS_LENGTH_KV)

  def project_kv(self, inputs_kv):
    """(b, k, e) -> keys and values, each (b, h, k, d)."""
    return (self._project_kv(inputs_kv, 'key'),
            self._project_kv(inputs_kv, 'value'))

  def init_cache(self, batch: int, max_length: int):
    """Empty self-attention cache of `max_length` positions."""
    shape = (batch, self.num_heads, max_length, self.head_dim)
    zeros = constrain(jnp.zeros(shape, self.dtype), CACHE_AXES)
    self.cached_key = nnx.Cache(zeros, logical_axes=CACHE_AXES)
    self.cached_value = nnx.Cache(zeros, logical_axes=CACHE_AXES)

  def grow_cache(self, max_length: int):
    """Extends the self-attention cache to `max_length` positions (zeros
    after the written prefix). Decoding grows the cache in chunks so each
    step reads and writes only the capacity reached so far."""
    length = self.cached_key.shape[2]
    if max_length < length:
      raise ValueError(f'grow_cache: {max_length} < current length {length}')
    pad = [(0, 0), (0, 0), (0, max_length - length), (0, 0)]
    for var in (self.cached_key, self.cached_value):
      var.set_value(constrain(jnp.pad(var[...], pad), CACHE_AXES))

  def set_static_kv(self, inputs_kv):
    """Projects the encoder output once, for cross-attention while decoding."""
    k, v = self.project_kv(inputs_kv)
    self.cached_key = nnx.Cache(constrain(k, CACHE_AXES),
                                logical_axes=CACHE_AXES)
    self.cached_value = nnx.Cache(constrain(v, CACHE_AXES),
                                  logical_axes=CACHE_AXES)

  def __call__(self, inputs_q, inputs_kv=None, *, bias=None, mask=None,
               cache_index=None, use_static_kv: bool = False,
               deterministic: bool = True, rngs: nnx.Rngs | None = None,
               return_probs: bool = False, beam_ancestry=None,
               beam_groups: int | None = None):
    """inputs_q (b, q, e); inputs_kv (b, k, e) or None for self-attention.
    Caches hold keys and values as (b, h, length, d).

    cache_index: with a self-attention cache, write this chunk's keys and
      values at [cache_index, cache_index + q) and attend over the cache.
    use_static_kv: attend over the cross-attention K/V set by `set_static_kv`.
    bias: (b|1, h, q, k) float32; mask: (b|1, 1, q, k) bool (True = attend).
    beam_ancestry: (n, beams, length) ints, with a self-attention cache and
      one query token: rows are n groups of `beams` hypotheses, and the key
      at position t of row (g, i) is in cache row (g, beam_ancestry[g, i, t]).
      Beam search then never reorders the cache (see `_beam_attention`).
    beam_groups: with use_static_kv, the cross-attention K/V (and mask) hold
      one row per example while the queries hold `beam_groups` consecutive
      rows (beams) per example: the K/V are never tiled per beam.
    """
    q = constrain(self._project(inputs_q, 'query'), BATCH_LENGTH_HEADS_KV)
    if use_static_kv:
      k, v = self.cached_key[...], self.cached_value[...]
    else:
      k, v = self.project_kv(inputs_q if inputs_kv is None else inputs_kv)
      if cache_index is not None:
        start = (0, 0, cache_index, 0)
        k = jax.lax.dynamic_update_slice(self.cached_key[...], k, start)
        v = jax.lax.dynamic_update_slice(self.cached_value[...], v, start)
        self.cached_key[...] = constrain(k, CACHE_AXES)
        self.cached_value[...] = constrain(v, CACHE_AXES)
    if beam_groups is not None:
      if not use_static_kv:
        raise ValueError('beam_groups is for cross-attention over the static '
                         'K/V (use_static_kv)')
      ctx, probs = self._grouped_attention(q, k, v, mask, beam_groups)
      out = self._output(ctx)
      return (out, probs) if return_probs else out
    if beam_ancestry is not None:
      if cache_index is None:
        raise ValueError('beam_ancestry needs a self-attention cache '
                         '(cache_index)')
      out = self._output(self._beam_attention(q, k, v, bias, mask,
                                              beam_ancestry))
      return (out, None) if return_probs else out
    scores = jnp.einsum('bqhd,bhkd->bhqk', q, k,
                        preferred_element_type=jnp.float32)
    if bias is not None:
      scores = scores + bias
    if mask is not None:
      scores = jnp.where(mask, scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    dropped = self.dropout(probs, deterministic=deterministic, rngs=rngs)
    ctx = jnp.einsum('bhqk,bhkd->bqhd', dropped.astype(self.dtype), v)
    out = self._output(ctx)
    return (out, probs) if return_probs else out

  def _output(self, ctx):
    ctx = constrain(ctx, BATCH_LENGTH_HEADS_KV)
    b, q_len, h, d = ctx.shape
    flat = ctx.reshape(b, q_len, h * d)
    out = dense(flat, self.out[...].reshape(h * d, -1), self.dtype)
    if 'out' in self.lora:
      out = out + self.lora['out'].delta(flat)
    return constrain(out.astype(self.dtype), BATCH_LENGTH_EMBED)

  def _grouped_attention(self, q, k, v, mask, groups: int):
    """Queries (n * groups, q, h, d) over K/V (n, h, S, d) shared by each
    run of `groups` query rows, mask (n, 1, q, S). Returns the context
    (n * groups, q, h, d) and probabilities (n * groups, h, q, S).

    Beam search's cross-attention: tiling the encoder K/V once per beam
    made every step read `groups` copies of them.
    """
    rows, q_len, h, d = q.shape
    n = k.shape[0]
    if rows != n * groups:
      raise ValueError(f'beam_groups={groups}: {rows} query rows for {n} '
                       f'K/V rows')
    qg = q.reshape(n, groups * q_len, h, d)              # (n, m = (i, q), h, d)
    # Keys on the left, as in `_beam_attention` (f32 q @ k^T with few query
    # rows is a slow XLA:CPU kernel).
    scores = jnp.einsum('nhsd,nmhd->nhsm', k, qg.astype(k.dtype),
                        preferred_element_type=jnp.float32)
    if mask is not None:
      m = jnp.broadcast_to(mask, (n, 1, q_len, mask.shape[-1]))
      m = jnp.tile(jnp.swapaxes(m, 2, 3), (1, 1, 1, groups))   # (n, 1, S, m)
      scores = jnp.where(m, scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=2)
    ctx = jnp.einsum('nhsm,nhsd->nmhd', probs.astype(self.dtype), v,
                     preferred_element_type=jnp.float32)
    ctx = ctx.astype(self.dtype).reshape(rows, q_len, h, d)
    probs = jnp.transpose(probs.reshape(n, h, -1, groups, q_len),
                          (0, 3, 1, 4, 2)).reshape(rows, h, q_len, -1)
    return ctx, probs

  def _beam_attention(self, q, k, v, bias, mask, ancestry):
    """Self-attention of one new token per hypothesis over a cache whose
    rows stay where they were written.

    Reordering the cache after every beam-search step copies all of it (at
    128 steps, a third of the step time on CPU). Instead each hypothesis
    scores the keys of all `beams` rows of its group and keeps, per
    position, only the row its ancestry names: `beams` times the attention
    FLOPs, which are tiny next to the projections, and no copies.
    """
    n, beams, length = ancestry.shape
    rows, q_len, h, d = q.shape
    if q_len != 1 or rows != n * beams:
      raise ValueError(f'beam_ancestry {ancestry.shape} needs one query '
                       f'token per row and {n * beams} rows, got '
                       f'{q.shape[:2]}')
    # The dots read the cache exactly as stored, (rows, h, length, d), and
    # the tiny query side is rearranged instead: cache row r = (g, j) meets
    # the `beams` queries i of its group g. Any reshape or transpose of the
    # cache made XLA:CPU copy every layer's cache each step (a reshaped
    # read fused the cache write twice, two full copies per tensor).
    qg = jnp.transpose(q.reshape(n, 1, beams, h, d), (0, 1, 3, 2, 4))
    qg = jnp.broadcast_to(qg, (n, beams, h, beams, d)).reshape(
        rows, h, beams, d)                            # (r, h, i, d)
    # Keys on the left, (l, d) @ (d, i): as the rhs (q @ k^T) XLA:CPU's
    # float32 kernel ran ~9x slower (12 vs 1.3 ms a layer at batch 32,
    # 128 positions, beam 4), a quarter of the whole step.
    scores = jnp.einsum('rhld,rhid->rhli', k, qg.astype(k.dtype),
                        preferred_element_type=jnp.float32)
    scores = jnp.transpose(scores.reshape(n, beams, h, length, beams),
                           (0, 4, 2, 1, 3))           # (g, i, h, j, l)
    keep = ancestry[:, :, None, None, :] == jnp.arange(beams)[:, None]
    if bias is not None:
      bias = jnp.broadcast_to(bias, (rows, h, 1, length))
      scores = scores + bias.reshape(n, beams, h, 1, length)
    if mask is not None:
      mask = jnp.broadcast_to(mask, (rows, 1, 1, length))
      keep &= mask.reshape(n, beams, 1, 1, length)
    scores = jnp.where(keep, scores, NEG_INF).reshape(n, beams, h, -1)
    probs = jax.nn.softmax(scores, axis=-1).reshape(n, beams, h, beams,
                                                    length)
    probs = jnp.transpose(probs, (0, 3, 2, 1, 4)).reshape(
        rows, h, beams, length)                       # (r = (g, j), h, i, l)
    ctx = jnp.einsum('rhil,rhld->rhid', probs.astype(self.dtype), v,
                     preferred_element_type=jnp.float32)
    ctx = jnp.sum(ctx.reshape(n, beams, h, beams, d), axis=1)  # (g, h, i, d)
    ctx = jnp.transpose(ctx, (0, 2, 1, 3))            # (g, i, h, d)
    return ctx.astype(self.dtype).reshape(rows, 1, h, d)


def _activation(name: str):
  fns = {
      'relu': jax.nn.relu,
      'gelu': lambda x: jax.nn.gelu(x, approximate=True),  # HF 'gelu_new'
      'gelu_exact': lambda x: jax.nn.gelu(x, approximate=False),
      'silu': jax.nn.silu,
      'linear': lambda x: x,
  }
  if name not in fns:
    raise ValueError(f'unknown MLP activation {name!r}; one of {sorted(fns)}')
  return fns[name]


class MlpBlock(nnx.Module):
  """T5 feed-forward. ('gelu', 'linear') is T5.1.1's gated GELU
  (wi_0, wi_1, wo); ('relu',) is the original T5 (wi, wo)."""

  def __init__(self, emb_dim: int, mlp_dim: int, activations: Sequence[str],
               dropout_rate: float, dtype, param_dtype, *, rngs: nnx.Rngs,
               lora=None):
    """lora: as `MultiHeadAttention`'s, for wi / wi_0 / wi_1 / wo."""
    if len(activations) not in (1, 2):
      raise ValueError(f'mlp_activations must have 1 or 2 entries, got '
                       f'{tuple(activations)}')
    self.activations = tuple(activations)
    self.fns = tuple(_activation(a) for a in activations)
    def param(shape, std, axes):
      return nnx.Param(normal_init(rngs.params(), shape, std, param_dtype),
                       logical_axes=axes)
    if len(activations) == 1:
      self.wi = param((emb_dim, mlp_dim), emb_dim ** -0.5, ('embed', 'mlp'))
    else:
      self.wi_0 = param((emb_dim, mlp_dim), emb_dim ** -0.5, ('embed', 'mlp'))
      self.wi_1 = param((emb_dim, mlp_dim), emb_dim ** -0.5, ('embed', 'mlp'))
    self.wo = param((mlp_dim, emb_dim), mlp_dim ** -0.5, ('mlp', 'embed'))
    self.dropout = nnx.Dropout(dropout_rate)
    self.dtype = dtype
    inner = ((emb_dim,), ('embed',), (mlp_dim,), ('mlp',))
    self.lora = _kernel_updates(lora, {
        **{name: inner for name in ('wi', 'wi_0', 'wi_1')
           if hasattr(self, name)},
        'wo': ((mlp_dim,), ('mlp',), (emb_dim,), ('embed',)),
    })

  def _dense(self, x, name):
    y = dense(x, getattr(self, name)[...], self.dtype)
    if name in self.lora:
      y = y + self.lora[name].delta(x)
    return y.astype(self.dtype)

  def __call__(self, x, *, deterministic=True, rngs=None):
    def up(name):
      return constrain(self._dense(x, name),
                       ('activation_batch', 'activation_length',
                        'activation_mlp'))
    if len(self.fns) == 1:
      h = self.fns[0](up('wi'))
    else:
      h = self.fns[0](up('wi_0')) * self.fns[1](up('wi_1'))
    h = self.dropout(h, deterministic=deterministic, rngs=rngs)
    return constrain(self._dense(h, 'wo'), BATCH_LENGTH_EMBED)


def _kernel_updates(factory, kernels) -> nnx.Dict:
  """{kernel name: update module} from a LoRA factory (empty without)."""
  if factory is None:
    return nnx.Dict({})
  made = {name: factory(name, *spec) for name, spec in kernels.items()}
  return nnx.Dict({k: v for k, v in made.items() if v is not None})
