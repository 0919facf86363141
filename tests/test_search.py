"""Sharded exact search vs a brute-force NumPy reference, on 1 and 8 devices.

Integer-valued vectors make every dot product exact in float32 and bfloat16
and give many tied scores, so the order (score desc, lower row first) is
compared exactly; Gaussian vectors check bfloat16 rounding.
"""

import os

import jax
import ml_dtypes
import numpy as np
import pytest

from retrieval.search import exact as search
from rosetta import partitioning


def reference(q, c, k):
  """Brute force in float64: sort by (-score, row)."""
  s = np.asarray(q, np.float64) @ np.asarray(c, np.float64).T
  idx = np.stack([np.lexsort((np.arange(c.shape[0]), -row))[:k] for row in s])
  return np.take_along_axis(s, idx, axis=1), idx


def int_vectors(rng, n, d):
  return rng.integers(-2, 3, size=(n, d)).astype(np.float32)


MESHES = {
    'one_device': lambda: search.single_device_mesh(),
    'data8': lambda: partitioning.make_mesh(data=8),
    'data4_model2': lambda: partitioning.make_mesh(data=4, model=2),
}


@pytest.mark.parametrize('mesh_name,corpus_axes', [
    ('one_device', None), ('data8', None), ('data4_model2', None),
    ('data4_model2', 'data')])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_matches_brute_force_with_ties_and_padding(num_devices, mesh_name,
                                                    corpus_axes, dtype):
  rng = np.random.default_rng(0)
  # 37 rows: not divisible by 8 (padding) and 5 rows per shard < k=10.
  c, q = int_vectors(rng, 37, 6), int_vectors(rng, 13, 6)
  mesh = MESHES[mesh_name]()
  corpus = search.shard_corpus(c, mesh, dtype=dtype, corpus_axes=corpus_axes)
  assert corpus.embeddings.dtype == np.dtype(dtype)
  assert corpus.embeddings.shape[0] % corpus.num_shards == 0
  want_s, want_i = reference(q, c, 10)
  assert (np.diff(want_s, axis=1) == 0).any(), 'the case must have ties'
  got = search.search(corpus, q, k=10, batch_size=4)   # 4 batches, last padded
  np.testing.assert_array_equal(got.indices, want_i)
  np.testing.assert_array_equal(got.scores, want_s.astype(np.float32))
  assert got.indices.dtype == np.int32 and got.scores.dtype == np.float32
  assert got.indices.max() < 37    # padded rows never come back


def test_corpus_rows_are_really_sharded(mesh_data4_model2):
  c = np.arange(40 * 4, dtype=np.float32).reshape(40, 4)
  corpus = search.shard_corpus(c, mesh_data4_model2, corpus_axes='data')
  shards = corpus.embeddings.addressable_shards
  assert {s.data.shape for s in shards} == {(10, 4)}
  assert corpus.query_axes == ('model',)
  full = search.shard_corpus(c, mesh_data4_model2)
  assert {s.data.shape for s in full.embeddings.addressable_shards} == {(5, 4)}
  np.testing.assert_array_equal(full.to_numpy(), c)


def test_identical_documents_tie_to_the_lower_row(mesh_data8):
  c = np.zeros((20, 3), np.float32)
  c[[3, 11, 17]] = [1, 1, 0]        # three copies across different shards
  c[[0, 19]] = [-1, 0, 0]
  corpus = search.shard_corpus(c, mesh_data8)
  got = search.search(corpus, np.array([[1, 1, 0], [-1, 0, 0]], np.float32),
                      k=5)
  np.testing.assert_array_equal(got.indices[0], [3, 11, 17, 1, 2])
  np.testing.assert_array_equal(got.indices[1], [0, 19, 1, 2, 4])
  np.testing.assert_array_equal(got.scores[1], [1, 1, 0, 0, 0])


def test_bfloat16_gaussian_equals_reference_of_rounded_vectors(mesh_data8):
  rng = np.random.default_rng(1)
  c = rng.normal(size=(203, 32)).astype(np.float32)
  q = rng.normal(size=(50, 32)).astype(np.float32)
  corpus = search.shard_corpus(c, mesh_data8, dtype='bfloat16')
  got = search.search(corpus, q, k=7, batch_size=16)
  rounded = lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float64)
  want_s, want_i = reference(rounded(q), rounded(c), 7)
  np.testing.assert_allclose(got.scores, want_s, rtol=0, atol=1e-4)
  # Rows may swap only where the reference scores are within rounding.
  ref_full = rounded(q) @ rounded(c).T
  got_ref_scores = np.take_along_axis(ref_full, got.indices.astype(int), 1)
  np.testing.assert_allclose(got_ref_scores, want_s, atol=1e-4)
  assert (got.indices == want_i).mean() > 0.99
  # and bf16 storage differs from float32 search (the test can fail)
  f32 = search.search(search.shard_corpus(c, mesh_data8), q, k=7)
  assert not np.array_equal(f32.scores, got.scores)


def test_input_errors(mesh_data8):
  c = np.ones((10, 4), np.float32)
  corpus = search.shard_corpus(c, mesh_data8)
  with pytest.raises(ValueError, match=r'k=11 must be in 1..10'):
    search.search(corpus, np.ones((2, 4)), k=11)
  with pytest.raises(ValueError, match='queries: dimension 5 != corpus '
                                       'dimension 4'):
    search.search(corpus, np.ones((2, 5)), k=1)
  bad = np.ones((3, 4))
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match='non-finite value at row 2, column 1'):
    search.search(corpus, bad, k=1)
  with pytest.raises(ValueError, match='float32 or bfloat16'):
    search.shard_corpus(c, mesh_data8, dtype='float16')
  with pytest.raises(ValueError, match="corpus axis 'rows' is not a mesh"):
    search.shard_corpus(c, mesh_data8, corpus_axes='rows')


def test_faiss_export_agrees_and_round_trips(tmp_path, mesh_data8):
  import faiss
  rng = np.random.default_rng(2)
  c = rng.normal(size=(101, 16)).astype(np.float32)
  q = rng.normal(size=(9, 16)).astype(np.float32)
  corpus = search.shard_corpus(c, mesh_data8)
  path = str(tmp_path / 'sub' / 'flat.faiss')
  index = search.to_faiss(corpus, path)
  assert index.ntotal == 101          # padding rows are not exported
  f_scores, f_idx = index.search(q, 5)
  ours = search.search(corpus, q, k=5)
  np.testing.assert_array_equal(f_idx, ours.indices)
  np.testing.assert_allclose(f_scores, ours.scores, rtol=1e-5)
  again = faiss.read_index(path)
  np.testing.assert_array_equal(again.search(q, 5)[1], f_idx)
  assert [p for p in os.listdir(tmp_path / 'sub')] == ['flat.faiss']


def test_search_result_is_on_host():
  corpus = search.shard_corpus(np.eye(4, dtype=np.float32))
  got = search.search(corpus, jax.numpy.eye(4), k=1)
  assert isinstance(got.indices, np.ndarray)
  np.testing.assert_array_equal(got.indices[:, 0], [0, 1, 2, 3])


# --- Blocked scan: corpora larger than one block ---------------------------


@pytest.mark.parametrize('mesh_name,corpus_axes', [('one_device', None),
                                                   ('data4_model2', 'data')])
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('k,block_rows', [(3, 200), (7, 300), (40, 128)])
def test_blocked_scan_matches_brute_force(num_devices, mesh_name, corpus_axes,
                                          dtype, k, block_rows):
  """Many blocks per shard, ties everywhere (4-dim integer vectors), padding,
  a last block overlapping the previous one (on 4 shards of 2001 rows
  always, on one device with k < 40); k = 3 and 7 take the two-stage top-k,
  k = 40 one top_k per block."""
  rng = np.random.default_rng(k)
  c, q = int_vectors(rng, 8001, 4), int_vectors(rng, 11, 4)
  corpus = search.shard_corpus(c, MESHES[mesh_name](), dtype=dtype,
                               corpus_axes=corpus_axes)
  rows = corpus.rows_per_shard
  blocks, block = search.scan_plan(rows, 8, k, block_rows)
  assert blocks > 5 and (blocks * block > rows or k == 40)
  assert (search._group_size(block, k) > 0) == (k < 40)
  want_s, want_i = reference(q, c, k)
  assert (np.diff(want_s, axis=1) == 0).mean() > 0.5, 'mostly ties'
  got = search.search(corpus, q, k=k, batch_size=8, block_rows=block_rows)
  np.testing.assert_array_equal(got.indices, want_i)
  np.testing.assert_array_equal(got.scores, want_s.astype(np.float32))


def test_ties_across_block_and_group_boundaries_go_to_the_lower_row():
  c = np.zeros((1000, 3), np.float32)
  copies = [5, 63, 64, 127, 128, 191, 500, 998]  # group / block edges
  c[copies] = [1, 1, 0]
  c[[700, 0]] = [2, 1, 0]                         # better, in far blocks
  c[999] = [0, 0, 1]                              # in the overlapping block
  corpus = search.shard_corpus(c)
  blocks, block = search.scan_plan(1000, 2, 3, block_rows=128)
  assert blocks == 8 and blocks * block > 1000
  assert search._group_size(block, 3) > 0
  got = search.search(corpus, np.array([[1, 1, 0], [0, 0, 1]], np.float32),
                      k=9, block_rows=128)
  np.testing.assert_array_equal(got.indices[0], [0, 700] + copies[:7])
  np.testing.assert_array_equal(got.scores[0], [3, 3] + [2] * 7)
  # All other rows score 0: the lowest rows win.
  np.testing.assert_array_equal(got.indices[1], [999, 0, 1, 2, 3, 4, 5, 6, 7])


@pytest.mark.parametrize('mesh_name,method', [
    ('one_device', 'inverted_softmax'), ('data4_model2', 'csls')])
def test_blocked_scan_keeps_hubness_corrections(num_devices, mesh_name,
                                                method):
  """CSLS (a running top-k of raw scores beside the corrected one) and
  inverted softmax give the same ranking in one block and in many."""
  from retrieval.search import hubness
  rng = np.random.default_rng(5)
  unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)
                    ).astype(np.float32)
  c, q = unit(rng.normal(size=(6001, 16))), unit(rng.normal(size=(9, 16)))
  corpus = search.shard_corpus(c, MESHES[mesh_name]())
  corr = (hubness.csls(corpus, q, k=5) if method == 'csls' else
          hubness.inverted_softmax(corpus, q, beta=10.0))
  rows = corpus.rows_per_shard
  blocks, block = search.scan_plan(rows, 9, 10, 400)
  assert blocks > 1 and search._group_size(block, 10) > 0
  one = search.search(corpus, q, k=10, correction=corr, block_rows=rows)
  many = search.search(corpus, q, k=10, correction=corr, block_rows=400)
  np.testing.assert_array_equal(many.indices, one.indices)
  np.testing.assert_allclose(many.scores, one.scores, rtol=1e-6, atol=1e-6)


def test_scan_plan_covers_every_row():
  for rows in [1, 7, 100, 3200, 6399, 65536, 125_000, 1_000_000]:
    for batch, k, cap in [(256, 100, None), (1024, 10, None), (8, 3, 97),
                          (1, 1, None)]:
      blocks, block = search.scan_plan(rows, batch, min(k, rows), cap)
      assert 1 <= block <= rows and blocks * block >= rows
      assert (blocks - 1) * block < rows       # no block wholly redundant
      # blocks big enough for groups are cut to a multiple of one
      if search._group_size(block, min(k, rows), divides=False):
        assert search._group_size(block, min(k, rows)) > 0


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_search_never_materialises_the_score_matrix(dtype):
  """XLA's temporary buffers for one call stay far below both the [batch,
  rows] float32 score matrix and a float32 copy of the corpus (XLA:CPU would
  otherwise upcast a bf16 corpus inside the loop)."""
  rows, d, batch, k = 1 << 20, 256, 256, 100
  spec = jax.ShapeDtypeStruct
  mesh = search.single_device_mesh()
  blocks, block = search.scan_plan(rows, batch, k, dim=d)
  fn = search.compiled_search_fn(mesh, tuple(mesh.axis_names), (), rows, rows, k, 0,
                         False, blocks, block)
  compiled = fn.lower(spec((d, batch), np.float32), spec((rows, d), dtype),
                      spec((rows,), np.float32),
                      spec((), np.float32)).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < batch * rows * 4 / 4
  assert temp < rows * d * 4 / 2
