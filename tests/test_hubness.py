"""Hubness corrections vs their formulas written directly in NumPy, and a
constructed hub that CSLS (and the softmax normalisations) must demote."""

import numpy as np
import pytest
from scipy.special import logsumexp

from retrieval.search import hubness
from retrieval.search import exact as search
from rosetta import partitioning


def unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope='module')
def vectors():
  rng = np.random.default_rng(0)
  return {'corpus': unit(rng.normal(size=(45, 16))),      # 45: padded on 8
          'queries': unit(rng.normal(size=(20, 16))),
          'qbank': unit(rng.normal(size=(30, 16))),
          'gbank': unit(rng.normal(size=(25, 16)))}


def formulas(v, k, beta, beta2):
  """The three methods, straight from the papers' equations."""
  s = v['queries'].astype(np.float64) @ v['corpus'].T
  bank_q = v['qbank'].astype(np.float64) @ v['corpus'].T     # [bank, docs]
  bank_g = v['gbank'].astype(np.float64) @ v['corpus'].T
  r_s = np.sort(bank_q, axis=0)[-k:].mean(axis=0)            # r_S(y)
  r_t = np.sort(s, axis=1)[:, -k:].mean(axis=1)              # r_T(x)
  csls = 2 * s - r_t[:, None] - r_s[None, :]
  inv = beta * s - logsumexp(beta * bank_q, axis=0)[None, :]
  dual_is = (np.exp(beta * s) / np.exp(beta * bank_q).sum(0) *
             np.exp(beta2 * s) / np.exp(beta2 * bank_g).sum(0))
  return {'csls': csls, 'inverted_softmax': inv, 'dbnorm': np.log(dual_is)}


def build(method, corpus, v, k, beta, beta2):
  if method == 'csls':
    return hubness.csls(corpus, v['qbank'], k=k, batch_size=7)
  if method == 'inverted_softmax':
    return hubness.inverted_softmax(corpus, v['qbank'], beta=beta,
                                    batch_size=8)
  return hubness.dbnorm(corpus, v['qbank'], v['gbank'], beta1=beta,
                        beta2=beta2, batch_size=9)


@pytest.mark.parametrize('mesh_name', ['one_device', 'data4_model2'])
@pytest.mark.parametrize('method', ['csls', 'inverted_softmax', 'dbnorm'])
def test_sharded_correction_equals_formula(num_devices, vectors, mesh_name,
                                           method):
  k, beta, beta2 = 5, 7.0, 3.0
  mesh = (search.single_device_mesh() if mesh_name == 'one_device'
          else partitioning.make_mesh(data=4, model=2))
  corpus = search.shard_corpus(vectors['corpus'], mesh)
  corr = build(method, corpus, vectors, k, beta, beta2)
  assert corr.doc_bias.sharding.is_equivalent_to(corpus.row_sharding(), 1)
  want = formulas(vectors, k, beta, beta2)[method]
  got = search.search(corpus, vectors['queries'], k=8, correction=corr)
  want_idx = np.argsort(-want, axis=1, kind='stable')[:, :8]
  np.testing.assert_array_equal(got.indices, want_idx)
  np.testing.assert_allclose(got.scores,
                             np.take_along_axis(want, want_idx, axis=1),
                             rtol=1e-5, atol=1e-5)
  # The correction changes the ranking (the test could fail without it).
  plain = search.search(corpus, vectors['queries'], k=8)
  assert not np.array_equal(plain.indices, got.indices)


def hub_case(n=60, d=32, seed=3):
  """Queries share a component u; each target is its query's own part.
  u itself (the hub) is then closer to every query than its target. The
  gallery bank holds other documents drawn like the targets (DBNorm's bank
  must not contain the corpus: a document would match itself)."""
  rng = np.random.default_rng(seed)
  u = unit(rng.normal(size=(1, d)))[0]
  noise = lambda: 0.5 * rng.normal(size=(n, d)) / np.sqrt(d)
  own = rng.normal(size=(n, d)) / np.sqrt(d)
  queries = unit(u + own)
  targets = unit(own + noise())
  gallery_bank = unit(rng.normal(size=(n, d)) / np.sqrt(d) + noise())
  corpus = np.concatenate([targets, u[None]])     # the hub is row n
  return queries, corpus, gallery_bank


def test_csls_demotes_a_constructed_hub(mesh_data8):
  queries, docs, gallery_bank = hub_case()
  n = hub = queries.shape[0]
  corpus = search.shard_corpus(docs, mesh_data8)
  plain = search.search(corpus, queries, k=1)
  plain_hub = hubness.k_occurrence(plain.indices, docs.shape[0])[hub]
  assert plain_hub > 0.8 * n, 'the construction must make a hub'
  results = {
      'csls': hubness.csls(corpus, queries, k=10),
      'inverted_softmax': hubness.inverted_softmax(corpus, queries, beta=20),
      'dbnorm': hubness.dbnorm(corpus, queries, gallery_bank, 20, 20)}
  plain_acc = np.mean(plain.indices[:, 0] == np.arange(n))
  for name, corr in results.items():
    got = search.search(corpus, queries, k=1, correction=corr)
    counts = hubness.k_occurrence(got.indices, docs.shape[0])
    assert counts[hub] < 0.1 * n, (name, counts[hub])
    assert np.mean(got.indices[:, 0] == np.arange(n)) > plain_acc + 0.5, name
  # k-occurrence skewness, Radovanovic et al.'s hubness measure, drops too
  csls_idx = search.search(corpus, queries, k=1,
                           correction=results['csls']).indices
  assert (hubness.skewness(hubness.k_occurrence(csls_idx, docs.shape[0])) <
          0.25 * hubness.skewness(hubness.k_occurrence(plain.indices,
                                                       docs.shape[0])))


def test_diagnostics_on_literal_values():
  idx = np.array([[0, 1], [0, 2], [0, 1]])
  np.testing.assert_array_equal(hubness.k_occurrence(idx, 4), [3, 2, 1, 0])
  np.testing.assert_array_equal(hubness.k_occurrence(idx, 4, k=1),
                                [3, 0, 0, 0])
  assert hubness.skewness(np.array([1, 1, 1, 1])) == 0.0
  assert hubness.skewness(np.array([0, 0, 0, 9])) > 1.0


def test_errors_name_the_argument(mesh_data8, vectors):
  corpus = search.shard_corpus(vectors['corpus'], mesh_data8)
  with pytest.raises(ValueError, match='csls query_bank: k=31 exceeds the '
                                       'bank size 30'):
    hubness.csls(corpus, vectors['qbank'], k=31)
  with pytest.raises(ValueError, match='dbnorm gallery_bank: dimension 8'):
    hubness.dbnorm(corpus, vectors['qbank'], vectors['gbank'][:, :8])
  with pytest.raises(ValueError, match='beta must be > 0'):
    hubness.inverted_softmax(corpus, vectors['qbank'], beta=0)
  other = search.shard_corpus(vectors['corpus'][:40], mesh_data8)
  corr = hubness.csls(other, vectors['qbank'])
  with pytest.raises(ValueError, match='was it built for this corpus'):
    search.search(corpus, vectors['queries'], k=3, correction=corr)
