"""Exact top-k maximum inner-product search over a corpus sharded on a mesh.

The corpus rows are split over `corpus_axes` of the mesh (default: all its
axes, so every device holds a distinct slice); each device scores its rows
against a batch of queries, keeps its own top-k with `lax.top_k` inside
`shard_map`, and the per-shard candidates are merged into the global top-k::

    corpus = shard_corpus(doc_emb, mesh)              # [n, d] f32 or bf16
    result = search(corpus, query_emb, k=10)          # SearchResult
    result.indices[i]   # corpus rows, best first (int32 [q, k])
    result.scores[i]    # their scores (float32 [q, k], descending)

Ties: equal scores rank the lower corpus row first, on any mesh (top_k is
stable; shards are concatenated in row order). Rows added to pad the corpus
to a multiple of the shard count score -inf and are never returned.

With a bfloat16 corpus the queries are cast to bfloat16 too and the dot
products accumulate in float32 (`preferred_element_type`): the search reads
half the memory; scores equal those of the bf16-rounded vectors up to
float32 summation order.

Queries are sharded over the mesh axes the corpus does not use (replicated
when it uses all of them). A `ScoreCorrection` (built by
`retrieval.hubness`) turns the inner product s(x, y) into
``scale * s(x, y) - doc_bias[y] - mean(top-query_k s(x, .))`` inside the
same sharded pass; the per-document bias lives sharded like the rows.

`to_faiss` exports the corpus to a faiss `IndexFlatIP` (and writes it) for
users who want approximate search.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import tempfile
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from rosetta import partitioning

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
  s = jnp.dot(q.astype(rows.dtype), rows.T,
              preferred_element_type=jnp.float32)
  return jnp.where(s == 0, jnp.float32(0), s)


@functools.lru_cache(maxsize=64)
def _search_fn(mesh: Mesh, corpus_axes: tuple[str, ...],
               query_axes: tuple[str, ...], rows: int, n_docs: int, k: int,
               query_k: int):
  k_local, kq_local = min(k, rows), min(query_k, rows)
  row_spec = P(corpus_axes)
  q_spec = P(query_axes or None, None)
  cand_spec = P(query_axes or None, corpus_axes)

  def per_shard(q, c, bias, scale):
    offset = shard_index(mesh, corpus_axes) * rows
    valid = (offset + jnp.arange(rows)) < n_docs
    s = local_scores(q, c)
    adj = scale * s - bias[None, :]
    adj = jnp.where(valid[None, :], jnp.where(adj == 0, 0.0, adj), -jnp.inf)
    vals, idx = jax.lax.top_k(adj, k_local)
    outs = (vals, idx.astype(jnp.int32) + offset)
    if query_k:  # CSLS's r_T(x): needs the raw scores' top-K over the corpus
      outs += (jax.lax.top_k(jnp.where(valid[None, :], s, -jnp.inf),
                             kq_local)[0],)
    return outs

  n_out = 3 if query_k else 2
  shard_fn = jax.shard_map(
      per_shard, mesh=mesh, in_specs=(q_spec, P(corpus_axes, None), row_spec,
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
  def run(q, c, bias, scale):
    return merge_fn(*shard_fn(q, c, bias, scale))

  return run


def search(corpus: ShardedCorpus, queries, k: int, *,
           correction: ScoreCorrection | None = None,
           batch_size: int = 256, progress: bool = False) -> SearchResult:
  """Exact top-k of every query row against `corpus` (see module docstring).

  queries: [num_queries, d] (NumPy or JAX). correction: a hubness
  correction from `retrieval.hubness` built for this corpus. batch_size:
  queries per compiled call (rounded up to the query-shard count; the last
  batch is padded so that one compilation serves the whole run).
  """
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
  fn = _search_fn(corpus.mesh, corpus.corpus_axes, corpus.query_axes,
                  corpus.rows_per_shard, corpus.n_docs, k, query_k)
  q_sharding = NamedSharding(corpus.mesh, P(corpus.query_axes or None, None))
  scale = jnp.float32(scale)
  scores, indices = [], []
  starts = range(0, q.shape[0], batch)
  for start in tqdm(starts, desc='search', unit='batch', disable=not progress):
    chunk = q[start:start + batch]
    n = chunk.shape[0]
    if n < batch:
      chunk = np.concatenate([chunk, np.zeros((batch - n, q.shape[1]),
                                              np.float32)])
    s, i = fn(jax.device_put(chunk, q_sharding), corpus.embeddings, bias,
              scale)
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
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-faiss-')
    os.close(fd)
    try:
      faiss.write_index(index, tmp)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
  return index
