"""Loop mechanics shared by the decoding cores (`rosetta.decoding.algorithms`):
batch-sharded top-k and beam gathers, per-example length limits, token
writes, and the chunked `while_loop` that grows the self-attention cache.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rosetta.partitioning import constrain, current_rules, logical_to_mesh_axes


def constrain_batch_rows(x):
  """Rows of `x` stay sharded like the batch (a no-op without a mesh)."""
  return constrain(x, ('activation_batch',) + (None,) * (x.ndim - 1))


def sharded_top_k(x, k: int):
  """`lax.top_k` over the last axis, run where each example's rows live.

  XLA's SPMD partitioner replicates a TopK across the batch (an all-gather
  of every row to every device), so on a mesh it runs under `shard_map`
  over the batch's mesh axes; the other axes (e.g. vocab over 'model') are
  gathered as the op needs the whole row anyway.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return jax.lax.top_k(x, k)
  spec = logical_to_mesh_axes(('activation_batch',) + (None,) * (x.ndim - 1),
                              current_rules(), mesh, x.shape, 'top_k input')
  return jax.shard_map(lambda y: tuple(jax.lax.top_k(y, k)), in_specs=spec,
                       out_specs=(spec, spec))(x)


def _map_batched(fn, cache):
  """Applies `fn` to cache leaves with a batch axis; scalar leaves (the
  shared cache index) are the same for every row and are left alone."""
  return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else fn(x), cache)


def tile_beams(cache, num_beams: int):
  """(b, ...) cache leaves -> (b * k, ...), each example's rows adjacent."""
  return _map_batched(lambda x: jnp.repeat(x, num_beams, axis=0), cache)


def gather_beams(x, idx):
  """x (b, m, ...), idx (b, j) -> (b, j, ...): per-example beam gather."""
  return jax.vmap(lambda xb, ib: xb[ib])(x, idx)


def gather_flat_beams(x, idx):
  """Like `gather_beams` for flattened (b * k, ...) rows; idx (b, k)."""
  b, k = idx.shape
  y = gather_beams(x.reshape((b, k) + x.shape[1:]), idx)
  return y.reshape(x.shape)


def per_example_max_lengths(max_lengths, batch_size: int, max_decode_length: int):
  """Per-example maximum decode lengths as (b,) int32 in [1, L]."""
  if max_lengths is None:
    return jnp.full((batch_size,), max_decode_length, jnp.int32)
  if not isinstance(max_lengths, jax.core.Tracer):
    m = np.asarray(max_lengths)
    if m.shape != (batch_size,):
      raise ValueError(f'max_lengths must have shape ({batch_size},), got '
                       f'{m.shape}')
    if m.min() < 1 or m.max() > max_decode_length:
      raise ValueError(f'max_lengths must be in [1, max_decode_length='
                       f'{max_decode_length}], got {m.tolist()}')
  return jnp.asarray(max_lengths, jnp.int32)


def write_position(seqs, step, tokens):
  """seqs (..., L) with position `step` set to tokens (...)."""
  pos = jnp.arange(seqs.shape[-1])
  return jnp.where(pos == step, tokens[..., None], seqs)


def cache_chunk_ends(max_decode_length: int, first: int = 32):
  """Where the decode loop stops to grow the self-attention cache.

  A step reads the whole cache (attention) and rewrites it (bfloat16 has no
  in-place update on XLA:CPU), so a cache sized for `max_decode_length`
  from step 0 makes the early steps pay for positions not yet written.
  The loop instead runs one `while_loop` per chunk, the cache starting at
  `first` positions and doubling; a chunk is only split off when it saves
  at least a third of the length. Example: 128 -> (32, 64, 128); 48 ->
  (48,). Each chunk compiles its own loop body (compile time grows with
  the number of chunks), so very long decodes still get only log2 chunks.
  """
  ends, n = [], first
  while n * 3 // 2 < max_decode_length:
    ends.append(n)
    n *= 2
  return tuple(ends) + (max_decode_length,)


def chunked_while_loop(cond, body, state, ends, grow_cache):
  """`while_loop(cond & step < end, body)` for each end in turn, growing
  `state.cache` to the next end in between (one loop per cache size)."""
  for j, end in enumerate(ends):
    if j:
      state = state._replace(cache=grow_cache(state.cache, end))
    state = jax.lax.while_loop(
        lambda s, end=end: (s.step < end) & cond(s), body, state)
  return state


def check_cache_ends(cache_ends, grow_cache, max_decode_length):
  if cache_ends is None:
    return (max_decode_length,)
  ends = tuple(int(e) for e in cache_ends)
  if (not ends or ends[-1] != max_decode_length or
      any(a >= b for a, b in zip(ends, ends[1:])) or ends[0] < 1):
    raise ValueError(f'cache_ends must increase and end at max_decode_length'
                     f'={max_decode_length}, got {cache_ends!r}')
  if len(ends) > 1 and grow_cache is None:
    raise ValueError('cache_ends with more than one chunk needs grow_cache')
  return ends
