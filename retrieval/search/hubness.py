"""Hubness corrections for `search.search`, and hubness diagnostics.

A hub is a document that is the nearest neighbour of many queries. Each
method below rewrites the inner product s(x, y) of query x and document y
as ``scale * s(x, y) - b(y) [- r(x)]`` where b(y) is a per-document
statistic over a *bank* of vectors. b is computed once, on the corpus's own
mesh: every device streams the bank past its rows of the corpus, so no row
leaves its device. The result is a `search.ScoreCorrection`::

    corpus = search.shard_corpus(doc_emb, mesh)
    corr = hubness.csls(corpus, query_bank=query_emb, k=10)
    result = search.search(corpus, query_emb, k=10, correction=corr)

Methods (embeddings are assumed L2-normalised, so s is the cosine):

  csls  Conneau et al. 2018 ("Word translation without parallel data",
        ICLR, section 2.3):
          CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y),
        r_S(y): mean cosine of y to its k nearest vectors of the source
        bank; r_T(x): that of x to its k nearest corpus documents (computed
        in the search itself). For bitext mining the bank is the source
        sentences.
  inverted_softmax  Smith et al. 2017 ("Offline bilingual word vectors,
        orthogonal transformations and the inverted softmax", ICLR): the
        probability is normalised over the SOURCE side,
          P(y -> x) = exp(beta s(x, y)) / sum_{x' in bank} exp(beta s(x', y)).
        Returned as log P: beta s(x, y) - logsumexp_x' beta s(x', y).
  dbnorm  Wang, Jian and Xue 2023 ("Balance Act: Mitigating Hubness in
        Cross-Modal Retrieval with Query and Gallery Banks", EMNLP; arXiv
        2310.11612), Dual Bank Normalisation with its dual inverted softmax:
        with a query bank Q and a gallery (document) bank G,
          DualIS(x, y) = exp(b1 s(x, y)) / sum_{q in Q} exp(b1 s(q, y))
                       * exp(b2 s(x, y)) / sum_{g in G} exp(b2 s(g, y)),
        i.e. s(x, y) normalised by its softmax over each bank: hubs are
        similar to many bank queries AND many bank documents, so both
        denominators demote them. Returned as log DualIS. Source: the
        paper's abstract (only it was readable here) and the authors' code
        (github.com/yimuwangcs/Better_Cross_Modal_Retrieval, DBNorm/
        dbnorm.py: `db_norm(dynamic_normalized=False)` multiplies `IS` over
        the query bank (beta1) by `IS` over the gallery bank (beta2)). That
        snippet passes the gallery-gallery matrix as both numerators and
        never uses its test query-gallery argument, which cannot be meant:
        we put s(x, y) in both numerators. G should hold documents other
        than the corpus (e.g. a training split): a corpus document in G
        matches itself. The paper's dynamic variant (normalising only
        queries whose top-1 is a bank-activated hub) is not implemented.

Diagnostics: `k_occurrence` (how often each document is in a top-k list)
and `skewness` of that distribution (Radovanovic et al. 2010).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from retrieval.search import exact as search_lib


@functools.lru_cache(maxsize=32)
def _bank_step(mesh, corpus_axes, stat: str, width: int, beta: float):
  """One jitted step: fold a bank batch into a per-row statistic.

  stat 'topk': state [rows, width] holds each row's `width` best scores so
  far; 'lse': state [rows, 1] holds logsumexp(beta * s) so far.
  """
  def per_shard(state, rows, bank, valid):
    s = search_lib.local_scores(bank, rows).T            # [rows, batch]
    s = jnp.where(valid[None, :], s, -jnp.inf)
    if stat == 'topk':
      return jax.lax.top_k(jnp.concatenate([state, s], axis=1), width)[0]
    return jnp.logaddexp(state, jax.nn.logsumexp(beta * s, axis=1,
                                                 keepdims=True))

  return jax.jit(jax.shard_map(
      per_shard, mesh=mesh,
      in_specs=(P(corpus_axes, None), P(corpus_axes, None), P(), P()),
      out_specs=P(corpus_axes, None)))


def _bank_statistic(corpus: search_lib.ShardedCorpus, bank, name: str,
                    stat: str, width: int = 1, beta: float = 1.0,
                    batch_size: int = 1024) -> jax.Array:
  """Streams `bank` past every corpus shard; [n_padded, width] statistic."""
  bank = search_lib.check_matrix(bank, name, corpus.dim).astype(np.float32)
  if stat == 'topk' and width > bank.shape[0]:
    raise ValueError(f'{name}: k={width} exceeds the bank size '
                     f'{bank.shape[0]}')
  step = _bank_step(corpus.mesh, corpus.corpus_axes, stat, width,
                    float(beta))
  state = jax.device_put(
      np.full((corpus.embeddings.shape[0], width), -np.inf, np.float32),
      corpus.row_sharding(1))
  batch = min(batch_size, bank.shape[0])
  replicated = NamedSharding(corpus.mesh, P())
  for start in range(0, bank.shape[0], batch):
    chunk = bank[start:start + batch]
    valid = np.arange(batch) < chunk.shape[0]
    if chunk.shape[0] < batch:   # pad so one compilation serves all batches
      chunk = np.concatenate([chunk, np.zeros((batch - chunk.shape[0],
                                               bank.shape[1]), np.float32)])
    state = step(state, corpus.embeddings, jax.device_put(chunk, replicated),
                 jax.device_put(valid, replicated))
  return state


def csls(corpus: search_lib.ShardedCorpus, query_bank, k: int = 10,
         batch_size: int = 1024) -> search_lib.ScoreCorrection:
  """CSLS with r_S over `query_bank` (the source side), k neighbours."""
  if k < 1:
    raise ValueError(f'csls: k must be >= 1, got {k}')
  top = _bank_statistic(corpus, query_bank, 'csls query_bank', 'topk',
                        width=k, batch_size=batch_size)
  r_s = jax.jit(lambda t: jnp.mean(t, axis=1),
                out_shardings=corpus.row_sharding())(top)
  return search_lib.ScoreCorrection('csls', 2.0, r_s, query_k=k)


def _lse(corpus, bank, name, beta, batch_size):
  if not beta > 0:
    raise ValueError(f'{name}: beta must be > 0, got {beta}')
  lse = _bank_statistic(corpus, bank, name, 'lse', beta=beta,
                        batch_size=batch_size)
  return jax.jit(lambda t: t[:, 0], out_shardings=corpus.row_sharding())(lse)


def inverted_softmax(corpus: search_lib.ShardedCorpus, query_bank,
                     beta: float = 20.0,
                     batch_size: int = 1024) -> search_lib.ScoreCorrection:
  """Inverted softmax normalised over `query_bank`; scores are log P."""
  bias = _lse(corpus, query_bank, 'inverted_softmax query_bank', beta,
              batch_size)
  return search_lib.ScoreCorrection('inverted_softmax', float(beta), bias)


def dbnorm(corpus: search_lib.ShardedCorpus, query_bank, gallery_bank,
           beta1: float = 20.0, beta2: float = 20.0,
           batch_size: int = 1024) -> search_lib.ScoreCorrection:
  """DBNorm's dual inverted softmax (module docstring); scores are log."""
  lse_q = _lse(corpus, query_bank, 'dbnorm query_bank', beta1, batch_size)
  lse_g = _lse(corpus, gallery_bank, 'dbnorm gallery_bank', beta2,
               batch_size)
  bias = jax.jit(jnp.add, out_shardings=corpus.row_sharding())(lse_q, lse_g)
  return search_lib.ScoreCorrection('dbnorm', float(beta1 + beta2), bias)


def k_occurrence(indices: np.ndarray, n_docs: int,
                 k: int | None = None) -> np.ndarray:
  """N_k(y): in how many queries' top-k lists document y appears."""
  indices = np.asarray(indices)[:, :k]
  return np.bincount(indices.reshape(-1), minlength=n_docs)


def skewness(counts: np.ndarray) -> float:
  """Sample skewness of the k-occurrence distribution (0 = no hubs)."""
  c = np.asarray(counts, np.float64)
  sd = c.std()
  return 0.0 if sd == 0 else float(np.mean((c - c.mean()) ** 3) / sd ** 3)
