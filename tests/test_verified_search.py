"""bfloat16 candidates + float32 rescoring (`retrieval.search.verified`)
equal a brute-force float32 top-k on 1 and 8 devices; the error bound holds;
queries the bound cannot verify fall back to the float32 search."""

import numpy as np
import pytest

from retrieval.search import exact as search
from retrieval.search import verified as vs


def brute(corpus, queries, k):
  s = queries.astype(np.float64) @ corpus.astype(np.float64).T
  order = np.lexsort((np.broadcast_to(np.arange(len(corpus)), s.shape), -s),
                     axis=1)[:, :k]
  return np.take_along_axis(s, order, axis=1), order


def data(n=3000, d=32, nq=40, seed=0):
  rng = np.random.default_rng(seed)
  c = rng.normal(size=(n, d)).astype(np.float32)
  q = rng.normal(size=(nq, d)).astype(np.float32)
  return c, q


def test_error_constant_bounds_bfloat16_scores():
  import ml_dtypes
  c, q = data(n=2000, d=64)
  bf = lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float32)
  s16 = bf(q) @ bf(c).T
  s32 = q.astype(np.float64) @ c.astype(np.float64).T
  ratio = np.abs(s16 - s32) / np.outer(np.linalg.norm(q, axis=1),
                                       np.linalg.norm(c, axis=1))
  assert ratio.max() <= vs.error_constant(64)
  assert ratio.max() > 0.05 * vs.error_constant(64)   # not vacuous


@pytest.mark.parametrize('mesh_name', [None, 'mesh_data8',
                                       'mesh_data4_model2'])
def test_matches_brute_force(mesh_name, request):
  mesh = request.getfixturevalue(mesh_name) if mesh_name else None
  c, q = data()
  corpus = vs.VerifiedCorpus.build(search.shard_corpus(c, mesh))
  got = vs.verified_search(corpus, q, 10, batch_size=16)
  want_s, want_i = brute(c, q, 10)
  np.testing.assert_array_equal(got.indices, want_i)
  np.testing.assert_allclose(got.scores, want_s, rtol=1e-5, atol=1e-5)
  assert got.num_fallback < len(q) // 4   # the fast path did the work


def test_unverifiable_queries_fall_back_and_stay_exact():
  """Rows closer together than bfloat16 can resolve: the bf16 ranking is
  arbitrary among them, the bound cannot rule outsiders out, so those
  queries are searched again in float32."""
  rng = np.random.default_rng(3)
  base = rng.normal(size=(1, 16)).astype(np.float32)
  near = base + rng.normal(scale=1e-2, size=(200, 16)).astype(np.float32)
  far = rng.normal(size=(800, 16)).astype(np.float32)
  c = np.concatenate([far[:400], near, far[400:]])
  q = np.concatenate([base + 0.01 * rng.normal(size=(6, 16)),
                      rng.normal(size=(6, 16))]).astype(np.float32)
  corpus = vs.VerifiedCorpus.build(search.shard_corpus(c))
  got = vs.verified_search(corpus, q, 5, candidates=8)
  want_s, want_i = brute(c, q, 5)
  assert got.num_fallback >= 6
  np.testing.assert_array_equal(got.indices, want_i)
  np.testing.assert_allclose(got.scores, want_s, rtol=1e-5, atol=1e-5)


def test_errors_name_the_argument():
  c, q = data(n=50)
  with pytest.raises(ValueError, match='float32 corpus'):
    vs.VerifiedCorpus.build(search.shard_corpus(c, dtype='bfloat16'))
  corpus = vs.VerifiedCorpus.build(search.shard_corpus(c))
  with pytest.raises(ValueError, match='k=51'):
    vs.verified_search(corpus, q, 51)
  with pytest.raises(ValueError, match='candidates=3 must be >= k=5'):
    vs.verified_search(corpus, q, 5, candidates=3)


def test_search_dispatches_a_verified_corpus():
  from retrieval.search import hubness
  c, q = data(n=500)
  corpus = vs.VerifiedCorpus.build(search.shard_corpus(c))
  got = search.search(corpus, q, 7)
  assert isinstance(got, vs.VerifiedResult)
  np.testing.assert_array_equal(got.indices, brute(c, q, 7)[1])
  # A hubness correction runs on the float32 rows, as for a plain corpus.
  corr = hubness.csls(corpus.exact, q, k=5)
  want = search.search(corpus.exact, q, 7, correction=corr)
  again = search.search(corpus, q, 7, correction=corr)
  np.testing.assert_array_equal(again.indices, want.indices)
