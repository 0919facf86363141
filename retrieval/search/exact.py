"""Exact top-k maximum inner-product search over a corpus sharded on a mesh.

The corpus rows are split over `corpus_axes` of the mesh (default: all its
axes, so every device holds a distinct slice); inside `shard_map` each
device scans its rows in blocks (`scan_plan`: about 2**24 scores per block,
e.g. 65k rows for 256 queries), keeping a running top-k, so the [queries,
rows] score matrix never materialises; the per-shard candidates are then
merged into the global top-k::

    corpus = shard_corpus(doc_emb, mesh)              # [n, d] f32 or bf16
    result = search(corpus, query_emb, k=10)          # SearchResult
    result.indices[i]   # corpus rows, best first (int32 [q, k])
    result.scores[i]    # their scores (float32 [q, k], descending)

Ties: equal scores rank the lower corpus row first, on any mesh (top_k is
stable; blocks are folded and shards concatenated in row order). Rows added
to pad the corpus to a multiple of the shard count score -inf and are never
returned.

A block's top-k is exact and two-stage (`_fold_block`): the maxima of
contiguous groups of 8-64 rows are ranked behind the running top-k, only
rows of the (at most k) groups that make that cut are gathered, and one
`top_k` merges them. XLA:CPU's TopK is a single-threaded partial sort
whose cost grows with heap replacements, so ranking ~1/32 of the scores
with the running top-k in front is ~10x cheaper than `top_k` over the
block (65k rows x 256 queries: ~12 ms vs ~125 ms; `approx_max_k` with
recall_target=1.0 measured no faster than `top_k`).

With a bfloat16 corpus the queries are cast to bfloat16 too and the dot
products accumulate in float32 (`preferred_element_type`): the search reads
half the memory; scores equal those of the bf16-rounded vectors up to
float32 summation order.

Queries are sharded over the mesh axes the corpus does not use (replicated
when it uses all of them). A `ScoreCorrection` (built by
`retrieval.search.hubness`) turns the inner product s(x, y) into
``scale * s(x, y) - doc_bias[y] - mean(top-query_k s(x, .))`` inside the
same sharded pass; the per-document bias lives sharded like the rows.

`to_faiss` exports the corpus to a faiss `IndexFlatIP` (and writes it) for
users who want approximate search.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from rosetta import partitioning
from rosetta.run import files

_DTYPES = {'float32': np.dtype(np.float32),
           'bfloat16': np.dtype(ml_dtypes.bfloat16)}


@dataclasses.dataclass(frozen=True, eq=False)
class SearchResult:
  scores: np.ndarray    # float32 [num_queries, k], best first
  indices: np.ndarray   # int32 [num_queries, k], rows of the corpus


@dataclasses.dataclass(frozen=True, eq=False)   # holds arrays: identity eq
class ShardedCorpus:
  """Corpus embeddings on a mesh: rows over `corpus_axes`, zero-padded."""
  embeddings: jax.Array         # [n_padded, d]
  n_docs: int
  mesh: Mesh
  corpus_axes: tuple[str, ...]

  @property
  def dim(self) -> int:
    return self.embeddings.shape[1]

  @property
  def dtype(self) -> np.dtype:
    return self.embeddings.dtype

  @property
  def num_shards(self) -> int:
    return math.prod(self.mesh.shape[a] for a in self.corpus_axes)

  @property
  def rows_per_shard(self) -> int:
    return self.embeddings.shape[0] // self.num_shards

  @property
  def query_axes(self) -> tuple[str, ...]:
    return tuple(a for a in self.mesh.axis_names
                 if a not in self.corpus_axes and self.mesh.shape[a] > 1)

  def row_sharding(self, extra_dims: int = 0) -> NamedSharding:
    """Sharding of an array with one entry per (padded) corpus row."""
    return NamedSharding(self.mesh, P(self.corpus_axes, *[None] * extra_dims))

  def to_numpy(self) -> np.ndarray:
    """The unpadded [n_docs, d] matrix on the host (gathers every shard)."""
    return np.asarray(jax.device_get(self.embeddings))[:self.n_docs]


@dataclasses.dataclass(frozen=True, eq=False)
class ScoreCorrection:
  """score(x, y) = scale * <x, y> - doc_bias[y] - mean top-query_k <x, .>.

  `doc_bias` has one float32 per padded corpus row, sharded like the rows
  (`ShardedCorpus.row_sharding()`); query_k = 0 drops the query term.
  """
  name: str
  scale: float
  doc_bias: jax.Array
  query_k: int = 0


def _storage_dtype(dtype) -> np.dtype:
  key = np.dtype(dtype).name if dtype is not None else None
  if key not in _DTYPES:
    raise ValueError(f'corpus dtype must be float32 or bfloat16, got {dtype}')
  return _DTYPES[key]


def check_matrix(x, name: str, dim: int | None = None) -> np.ndarray:
  """A finite 2-D float array on the host, else a ValueError naming `name`."""
  x = np.asarray(jax.device_get(x))
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f'{name}: expected a non-empty [n, d] matrix, got shape '
                     f'{x.shape}')
  if dim is not None and x.shape[1] != dim:
    raise ValueError(f'{name}: dimension {x.shape[1]} != corpus dimension '
                     f'{dim}')
  if not np.all(np.isfinite(x.astype(np.float32))):
    bad = np.argwhere(~np.isfinite(x.astype(np.float32)))[0]
    raise ValueError(f'{name}: non-finite value at row {bad[0]}, column '
                     f'{bad[1]}')
  return x


def single_device_mesh() -> Mesh:
  return partitioning.make_mesh(data=1, devices=jax.devices()[:1])


def shard_corpus(embeddings, mesh: Mesh | None = None, *, dtype=None,
                 corpus_axes: str | Sequence[str] | None = None
                 ) -> ShardedCorpus:
  """Places [n, d] embeddings on `mesh`, rows split over `corpus_axes`.

  dtype: float32 or bfloat16 storage (default: that of `embeddings`, float32
  for any other float type). corpus_axes: mesh axes to split rows over
  (default all); rows are zero-padded to a multiple of the shard count.
  """
  emb = check_matrix(embeddings, 'corpus embeddings')
  if dtype is None:
    dtype = emb.dtype if emb.dtype.name in _DTYPES else np.float32
  emb = emb.astype(_storage_dtype(dtype))
  mesh = single_device_mesh() if mesh is None else mesh
  if corpus_axes is None:
    corpus_axes = tuple(mesh.axis_names)
  elif isinstance(corpus_axes, str):
    corpus_axes = (corpus_axes,)
  corpus_axes = tuple(corpus_axes)
  for a in corpus_axes:
    if a not in mesh.axis_names:
      raise ValueError(f'corpus axis {a!r} is not a mesh axis '
                       f'{mesh.axis_names}')
  shards = math.prod(mesh.shape[a] for a in corpus_axes)
  n = emb.shape[0]
  padded = -(-n // shards) * shards
  if padded != n:
    emb = np.concatenate([emb, np.zeros((padded - n, emb.shape[1]),
                                        emb.dtype)])
  sharding = NamedSharding(mesh, P(corpus_axes, None))
  return ShardedCorpus(jax.device_put(emb, sharding), n, mesh, corpus_axes)


def shard_index(mesh: Mesh, axes: tuple[str, ...]) -> jax.Array:
  """Inside shard_map: this device's position along `axes` (row-major), the
  order in which shard_map concatenates blocks split over those axes."""
  idx = jnp.int32(0)
  for a in axes:
    idx = idx * mesh.shape[a] + jax.lax.axis_index(a)
  return idx


def local_scores(q: jax.Array, rows: jax.Array) -> jax.Array:
  """[b, d] x [r, d] -> [b, r] float32 inner products, -0.0 made +0.0 (top_k
  orders by the total order, where -0.0 < +0.0)."""
  s = jnp.dot(q.astype(rows.dtype), rows.T, precision=exact_precision(rows),
              preferred_element_type=jnp.float32)
  return jnp.where(s == 0, jnp.float32(0), s)


def exact_precision(rows: jax.Array):
  """HIGHEST for float32 scores: TPU (and GPU TF32) matmuls at default
  precision round float32 inputs to bfloat16 passes, so a float32 search
  would not be float32-exact there. bfloat16 inputs are exact in one pass."""
  return jax.lax.Precision.HIGHEST if rows.dtype == jnp.float32 else None


# Elements one device holds per block: block rows x local queries scores
# (64 MiB of float32), so the [queries, rows] score matrix never
# materialises, and block rows x dim for the block's copy of the corpus.
_BLOCK_SCORES = 1 << 24
# Rows per group in the two-stage top-k of a block (powers of two).
_GROUPS = (8, 16, 32, 64)


def _group_size(block: int, k: int, divides: bool = True) -> int:
  """Rows per group for the two-stage top-k of a `block`-row block, or 0 for
  one `top_k` over the block. Groups pay off when the k * group candidates
  and the block / group group maxima are both much fewer than the rows;
  group ~ sqrt(block / k) balances the two. `divides`: only groups that
  divide the block."""
  if k < 1:
    return 0
  fits = [m for m in _GROUPS
          if 4 * k * m <= block and (block % m == 0 or not divides)]
  return min(fits, key=lambda m: abs(math.log(m * m * k / block)), default=0)


def scan_plan(rows: int, batch: int, k: int, block_rows: int | None = None,
              dim: int = 1) -> tuple[int, int]:
  """(blocks, rows per block) in which a shard of `rows` rows is scanned for
  a local query batch of `batch` rows and a top-k. Blocks hold about
  `block_rows` rows (default: 2**24 / max(batch, dim), i.e. 64 MiB of
  float32 scores, and no bigger a copy of the corpus rows), rounded up to a
  multiple of the group size when a two-stage top-k pays off. The last block
  may start before the end of the previous one; the overlap is masked
  out."""
  cap = max(1, block_rows or _BLOCK_SCORES // max(1, batch, dim))
  blocks = -(-rows // cap)
  while True:
    block = -(-rows // blocks)
    group = _group_size(block, k, divides=False)
    if group:
      block = -(-block // group) * group
    if block <= rows:
      return -(-rows // block), block
    blocks += 1     # one block of all rows, not a multiple of the group


def _canonical(x: jax.Array) -> jax.Array:
  """-0.0 made +0.0: top_k orders by the total order, where -0.0 < +0.0."""
  return jnp.where(x == 0, jnp.float32(0), x)


def _fold_block(s: jax.Array, row0: jax.Array, vals: jax.Array,
                idx: jax.Array | None, group: int):
  """Merges a block's scores `s` [B, b] (rows row0..row0+B-1, invalid rows
  -inf) into the running top-k `vals` [b, k] (rows `idx`, all below row0).
  Only what reaches a top_k is canonicalised (group maxima, candidates), so
  no extra pass runs over `s`.

  Order is (score desc, row asc): the running entries come first in every
  top_k (they are lower rows), candidates follow in ascending row order and
  top_k is stable. Two-stage (group > 0): rows are cut into contiguous
  groups of `group`; a group whose max is not among the k best of
  [running values, group maxima] (ties: earlier first) has k entries that
  beat its best row, so none of its rows can enter the top-k; the rows of
  the (at most k) selected groups are gathered and merged with one top_k.
  """
  block, b = s.shape
  k = vals.shape[1]
  if not group:
    # (canonicalised before the transpose: XLA:CPU folds a transpose of a
    # bf16 x bf16 -> f32 dot's output into the dot, which its fallback dot
    # emitter then rejects as unsupported)
    top, pos = jax.lax.top_k(jnp.concatenate([vals, _canonical(s).T],
                                             axis=1), k)
    if idx is None:
      return top, None
    old = jnp.take_along_axis(idx, jnp.minimum(pos, k - 1), axis=1)
    return top, jnp.where(pos < k, old, row0 + pos - k)
  n_groups = block // group
  gmax = _canonical(jnp.max(s.reshape(n_groups, group, b), axis=1)).T
  _, sel = jax.lax.top_k(jnp.concatenate([vals, gmax], axis=1), k)
  # Selected groups in ascending order; slots that kept a running entry get
  # n_groups (sorted last) and are masked out.
  g = jnp.sort(jnp.where(sel >= k, sel - k, n_groups), axis=1)
  live = g < n_groups
  rows = jnp.minimum(g, n_groups - 1)[:, :, None] * group + jnp.arange(group)
  flat = rows * b + jnp.arange(b)[:, None, None]                 # [b, k, m]
  cand = _canonical(s.reshape(-1).at[flat].get(mode='promise_in_bounds'))
  cand = jnp.where(live[:, :, None], cand, -jnp.inf).reshape(b, k * group)
  top, pos = jax.lax.top_k(jnp.concatenate([vals, cand], axis=1), k)
  if idx is None:
    return top, None
  all_rows = jnp.concatenate([idx, row0 + rows.reshape(b, k * group)], axis=1)
  return top, jnp.take_along_axis(all_rows, pos, axis=1)


@functools.lru_cache(maxsize=64)
def compiled_search_fn(mesh: Mesh, corpus_axes: tuple[str, ...],
               query_axes: tuple[str, ...], rows: int, n_docs: int, k: int,
               query_k: int, corrected: bool, blocks: int, block: int):
  k_local, kq_local = min(k, rows), min(query_k, rows)
  group, group_q = _group_size(block, k_local), _group_size(block, kq_local)
  # Masks cost a pass over a block's scores, so they run only where needed:
  # the last block (it may overlap the previous one) and padding rows (a
  # suffix of each shard, normally inside its last block).
  padding = rows * math.prod(mesh.shape[a] for a in corpus_axes) - n_docs
  mask_last = padding > 0 or blocks * block > rows
  mask_others = padding > rows - (blocks - 1) * block
  row_spec = P(corpus_axes)
  q_spec = P(query_axes or None, None)
  qt_spec = P(None, query_axes or None)
  cand_spec = P(query_axes or None, corpus_axes)

  def per_shard(qt, c, bias, scale):
    offset = shard_index(mesh, corpus_axes) * rows
    b = qt.shape[1]
    qt = qt.astype(c.dtype)

    def body(i, carry, masked):
      start = jnp.minimum(i * block, rows - block)
      # XLA:CPU runs a bf16 dynamic-slice as convert-to-f32 + slice, and the
      # loop-invariant convert of the whole corpus would be hoisted out of
      # the loop (a float32 copy of the corpus per call); tying the corpus
      # to the loop index keeps the convert per block.
      c_i, _ = jax.lax.optimization_barrier((c, i))
      blk = jax.lax.dynamic_slice_in_dim(c_i, start, block)
      # [block, b]: the corpus block as the matmul's row-major left operand
      # and the queries pre-transposed keep XLA:CPU on its fast bf16 path
      # (with the corpus as the transposed right operand it converts both
      # to float32 first).
      s = jnp.dot(blk, qt, precision=exact_precision(blk),
                  preferred_element_type=jnp.float32)
      adj = s
      if corrected:
        adj = scale * s - jax.lax.dynamic_slice_in_dim(bias, start,
                                                      block)[:, None]
      if masked:  # rows seen in the previous block, padding
        r = start + jnp.arange(block)
        ok = ((r >= i * block) & (offset + r < n_docs))[:, None]
        adj = jnp.where(ok, adj, -jnp.inf)
        if query_k:
          s = jnp.where(ok, s, -jnp.inf)
      row0 = offset + start
      out = _fold_block(adj, row0, carry[0], carry[1], group)
      if query_k:  # CSLS's r_T(x): the raw scores' top-K over the corpus
        out += (_fold_block(s, row0, carry[2], None, group_q)[0],)
      return out

    init = (jnp.full((b, k_local), -jnp.inf, jnp.float32),
            jnp.zeros((b, k_local), jnp.int32))
    if query_k:
      init += (jnp.full((b, kq_local), -jnp.inf, jnp.float32),)
    if blocks == 1:
      return body(0, init, mask_last)
    # The carry varies across devices like the blocks' results do.
    varying = tuple(corpus_axes) + tuple(query_axes)
    init = jax.lax.pcast(init, varying, to='varying')
    if mask_others == mask_last:
      return jax.lax.fori_loop(
          0, blocks, lambda i, c: body(i, c, mask_last), init)
    carry = jax.lax.fori_loop(0, blocks - 1,
                              lambda i, c: body(i, c, mask_others), init)
    return body(blocks - 1, carry, mask_last)

  n_out = 3 if query_k else 2
  shard_fn = jax.shard_map(
      per_shard, mesh=mesh, in_specs=(qt_spec, P(corpus_axes, None), row_spec,
                                      P()),
      out_specs=(cand_spec,) * n_out)

  def merge(vals, idx, *raw):
    # Candidates sit in (shard, rank) order, i.e. ascending row among equal
    # scores, so the stable top_k keeps "lower row wins".
    top, pos = jax.lax.top_k(vals, k)
    out_idx = jnp.take_along_axis(idx, pos, axis=1)
    if raw:
      top = top - jnp.mean(jax.lax.top_k(raw[0], query_k)[0], axis=1,
                           keepdims=True)
    return top, out_idx

  merge_fn = jax.shard_map(merge, mesh=mesh, in_specs=(q_spec,) * n_out,
                           out_specs=(q_spec, q_spec))

  @jax.jit
  def run(qt, c, bias, scale):
    return merge_fn(*shard_fn(qt, c, bias, scale))

  return run


def search(corpus: ShardedCorpus, queries, k: int, *,
           correction: ScoreCorrection | None = None,
           batch_size: int = 256, block_rows: int | None = None,
           progress: bool = False) -> SearchResult:
  """Exact top-k of every query row against `corpus` (see module docstring).

  corpus: a `ShardedCorpus`, or any corpus with a `search` method of this
  signature, e.g. `retrieval.search.verified.VerifiedCorpus` (float32
  results at bfloat16 scan speed; see that module).
  queries: [num_queries, d] (NumPy or JAX). correction: a hubness
  correction from `retrieval.search.hubness` built for this corpus. batch_size:
  queries per compiled call (rounded up to the query-shard count; the last
  batch is padded so that one compilation serves the whole run).
  block_rows: corpus rows scored at once on each device (default: 2**24 /
  max(local queries, dim), i.e. 64 MiB of float32 scores; see `scan_plan`).
  """
  if not isinstance(corpus, ShardedCorpus):
    return corpus.search(queries, k, correction=correction,
                         batch_size=batch_size, block_rows=block_rows,
                         progress=progress)
  q = check_matrix(queries, 'queries', corpus.dim).astype(np.float32)
  if not 1 <= k <= corpus.n_docs:
    raise ValueError(f'k={k} must be in 1..{corpus.n_docs} (corpus size)')
  n_q_shards = math.prod(corpus.mesh.shape[a] for a in corpus.query_axes)
  batch = -(-max(1, min(batch_size, q.shape[0])) // n_q_shards) * n_q_shards
  if correction is None:
    bias = jax.device_put(np.zeros(corpus.embeddings.shape[0], np.float32),
                          corpus.row_sharding())
    scale, query_k = 1.0, 0
  else:
    if correction.doc_bias.shape != (corpus.embeddings.shape[0],):
      raise ValueError(
          f'{correction.name}: doc_bias has shape {correction.doc_bias.shape}'
          f', corpus has {corpus.embeddings.shape[0]} (padded) rows: was it '
          'built for this corpus?')
    if correction.query_k > corpus.n_docs:
      raise ValueError(f'{correction.name}: k={correction.query_k} exceeds '
                       f'the corpus size {corpus.n_docs}')
    bias, scale, query_k = (correction.doc_bias, correction.scale,
                            correction.query_k)
  rows = corpus.rows_per_shard
  blocks, block = scan_plan(rows, batch // n_q_shards, min(k, rows),
                            block_rows, corpus.dim)
  fn = compiled_search_fn(corpus.mesh, corpus.corpus_axes, corpus.query_axes, rows,
                  corpus.n_docs, k, query_k, correction is not None, blocks,
                  block)
  # Queries go in transposed ([d, batch]): see `compiled_search_fn`.
  q_sharding = NamedSharding(corpus.mesh, P(None, corpus.query_axes or None))
  scale = jnp.float32(scale)
  scores, indices = [], []
  starts = range(0, q.shape[0], batch)
  for start in tqdm(starts, desc='search', unit='batch', disable=not progress):
    chunk = q[start:start + batch]
    n = chunk.shape[0]
    if n < batch:
      chunk = np.concatenate([chunk, np.zeros((batch - n, q.shape[1]),
                                              np.float32)])
    s, i = fn(jax.device_put(np.ascontiguousarray(chunk.T), q_sharding),
              corpus.embeddings, bias, scale)
    scores.append(np.asarray(s)[:n])
    indices.append(np.asarray(i)[:n])
  return SearchResult(np.concatenate(scores), np.concatenate(indices))


def to_faiss(corpus: ShardedCorpus | np.ndarray, path: str | None = None):
  """A faiss `IndexFlatIP` over the corpus (float32), written to `path`
  atomically when given (`faiss.read_index(path)` loads it back)."""
  import faiss  # pylint: disable=import-outside-toplevel
  emb = (corpus.to_numpy() if isinstance(corpus, ShardedCorpus)
         else check_matrix(corpus, 'corpus embeddings'))
  emb = np.ascontiguousarray(emb.astype(np.float32))
  index = faiss.IndexFlatIP(emb.shape[1])
  index.add(emb)
  if path is not None:
    with files.atomic_path(path) as tmp:
      faiss.write_index(index, tmp)
  return index
