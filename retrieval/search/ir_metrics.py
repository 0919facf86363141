"""IR metrics: pytrec_eval on the host, a JAX twin on device; TREC files.

Host (the reference; trec_eval's definitions through pytrec_eval)::

    run = run_from_topk(result.indices, query_ids, doc_ids)
    evaluate(run, qrels)   # {'MRR@10': .., 'nDCG@10': .., 'Recall@1': ..,
                           #  'Hits@1': .., ... for every k in ks}

  MRR@10   trec_eval `recip_rank` on the run cut to its 10 best documents
  Recall@k `recall_k`; Hits@k `success_k` (1 if any relevant in the top k)
  nDCG@10  `ndcg_cut_10`: gain = the qrels grade (linear), 1/log2(rank+1)

Relevant means grade >= 1. Averages are over the queries of `qrels` that
have at least one relevant document; such a query missing from the run
scores 0 (trec_eval -c), never silently drops out.

Ties: trec_eval orders a query's documents by score, then by document id
DESCENDING, whatever order the run lists them in. `run_from_topk` therefore
scores by rank (k, k-1, ..., 1) unless given `scores`, so that exactly the
order search returned is evaluated.

Device (for training-time evaluation inside jit, no host round trip)::

    device_metrics(topk_indices, relevant_ids=ids, relevant_grades=grades)
    device_metrics(topk_indices, relevance=matrix)      # [q, n_docs] grades

return the same names, averaged the same way, given top-k corpus rows per
query and either sparse labels ([q, R] row ids, -1 = padding, with optional
grades) or a dense grade matrix (grades below 0 count as 0).
tests/test_ir_metrics.py checks them against pytrec_eval per query.
"""

from __future__ import annotations

import collections
import math
import os
from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import pytrec_eval

from rosetta.run import files

Run = dict[str, dict[str, float]]
Qrels = Mapping[str, Mapping[str, int]]
DEFAULT_KS = (1, 5, 10, 100)
CUTOFF = 10    # MRR@10 and nDCG@10


def metric_names(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
  return (['MRR@10', 'nDCG@10'] + [f'Recall@{k}' for k in ks] +
          [f'Hits@{k}' for k in ks])


def run_from_topk(indices, query_ids: Sequence[str], doc_ids: Sequence[str],
                  scores=None) -> Run:
  """{query id: {doc id: score}} from [q, k] corpus rows, best first.

  Without `scores` the score is k - rank (strictly decreasing), so trec_eval
  keeps this exact order; rows < 0 (no result) are skipped.
  """
  indices = np.asarray(indices)
  if indices.ndim != 2 or indices.shape[0] != len(query_ids):
    raise ValueError(f'indices has shape {indices.shape}, expected '
                     f'({len(query_ids)}, k)')
  if scores is not None:
    scores = np.asarray(scores, np.float64)
    if scores.shape != indices.shape:
      raise ValueError(f'scores shape {scores.shape} != indices shape '
                       f'{indices.shape}')
  if indices.size and indices.max() >= len(doc_ids):
    raise ValueError(f'row {indices.max()} is out of range for '
                     f'{len(doc_ids)} doc ids')
  k = indices.shape[1]
  run: Run = {}
  for i, qid in enumerate(query_ids):
    ranked = run.setdefault(str(qid), {})
    for r, row in enumerate(indices[i]):
      if row >= 0:
        ranked[doc_ids[row]] = (float(k - r) if scores is None
                                else float(scores[i, r]))
  return run


def trec_order(docs: Mapping[str, float]) -> list[tuple[str, float]]:
  """trec_eval's ranking: score descending, then doc id descending."""
  return sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def evaluate(run: Run, qrels: Qrels, ks: Sequence[int] = DEFAULT_KS,
             per_query: bool = False):
  """Mean metrics (module docstring); with per_query, also {qid: {...}}."""
  qrels = {str(q): {str(d): int(g) for d, g in docs.items()}
           for q, docs in qrels.items()}
  judged = [q for q, docs in qrels.items()
            if any(g >= 1 for g in docs.values())]
  if not judged:
    raise ValueError('qrels has no query with a relevant (grade >= 1) '
                     'document')
  ks = tuple(int(k) for k in ks)
  cut_list = ','.join(str(k) for k in ks)
  full = pytrec_eval.RelevanceEvaluator(
      qrels, {f'recall.{cut_list}', f'success.{cut_list}',
              f'ndcg_cut.{CUTOFF}'}).evaluate(run)
  top10 = {q: dict(trec_order(docs)[:CUTOFF]) for q, docs in run.items()}
  rr = pytrec_eval.RelevanceEvaluator(qrels, {'recip_rank'}).evaluate(top10)
  names = metric_names(ks)
  table = {}
  for q in judged:
    f, r = full.get(q), rr.get(q)
    if f is None:                    # not in the run: counts as 0
      table[q] = dict.fromkeys(names, 0.0)
      continue
    row = {'MRR@10': r['recip_rank'], 'nDCG@10': f[f'ndcg_cut_{CUTOFF}']}
    for k in ks:
      row[f'Recall@{k}'] = f[f'recall_{k}']
      row[f'Hits@{k}'] = f[f'success_{k}']
    table[q] = row
  means = {n: float(np.mean([table[q][n] for q in judged])) for n in names}
  return (means, table) if per_query else means


def average_precision(run: Run, qrels: Qrels) -> dict[str, float]:
  """trec_eval `map` (over the whole run, no cutoff) of every query of
  `qrels` with a relevant document; one missing from the run scores 0."""
  qrels = {str(q): {str(d): int(g) for d, g in docs.items()}
           for q, docs in qrels.items()}
  judged = [q for q, docs in qrels.items()
            if any(g >= 1 for g in docs.values())]
  got = pytrec_eval.RelevanceEvaluator(qrels, {'map'}).evaluate(run)
  return {q: got[q]['map'] if q in got else 0.0 for q in judged}

# ------------------------------------------------------------ on device ---

def device_metrics(topk_indices, *, relevant_ids=None, relevant_grades=None,
                   relevance=None, ks: Sequence[int] = DEFAULT_KS,
                   per_query: bool = False):
  """The metrics of `evaluate` from [q, k] top rows, in JAX (jit-able).

  Labels: `relevant_ids` [q, R] int rows (-1 = padding) with optional
  `relevant_grades` [q, R] (default 1), or `relevance` [q, n_docs] grades.
  Returns means over queries with a relevant document (and the [q] arrays
  plus that mask when per_query=True). Recall@k and Hits@k with k above the
  number of columns of `topk_indices` use what was retrieved.
  """
  top = jnp.asarray(topk_indices)
  if (relevance is None) == (relevant_ids is None):
    raise ValueError('give exactly one of relevant_ids or relevance')
  if relevance is not None:
    relevance = jnp.maximum(jnp.asarray(relevance, jnp.float32), 0.0)
    gains = jnp.take_along_axis(relevance, jnp.maximum(top, 0), axis=1)
    gains = jnp.where(top >= 0, gains, 0.0)
    ideal = -jnp.sort(-relevance, axis=1)[:, :CUTOFF]
    num_rel = jnp.sum(relevance >= 1, axis=1)
  else:
    ids = jnp.asarray(relevant_ids)
    grades = (jnp.ones(ids.shape, jnp.float32) if relevant_grades is None
              else jnp.asarray(relevant_grades, jnp.float32))
    grades = jnp.where(ids >= 0, jnp.maximum(grades, 0.0), 0.0)
    match = (top[:, :, None] == ids[:, None, :]) & (top[:, :, None] >= 0)
    gains = jnp.sum(jnp.where(match, grades[:, None, :], 0.0), axis=2)
    ideal = -jnp.sort(-grades, axis=1)[:, :CUTOFF]
    num_rel = jnp.sum(grades >= 1, axis=1)
  rel = gains >= 1
  width = top.shape[1]
  out = {}
  m = min(CUTOFF, width)
  first = jnp.argmax(rel[:, :m], axis=1)
  out['MRR@10'] = jnp.where(rel[:, :m].any(axis=1),
                            1.0 / (first + 1).astype(jnp.float32), 0.0)
  disc = 1.0 / jnp.log2(jnp.arange(2, CUTOFF + 2, dtype=jnp.float32))
  dcg = jnp.sum(gains[:, :m] * disc[:m], axis=1)
  idcg = jnp.sum(ideal * disc[:ideal.shape[1]], axis=1)
  out['nDCG@10'] = jnp.where(idcg > 0, dcg / jnp.where(idcg > 0, idcg, 1.0),
                             0.0)
  for k in ks:
    hits = jnp.sum(rel[:, :min(k, width)], axis=1)
    out[f'Recall@{k}'] = hits / jnp.maximum(num_rel, 1)
    out[f'Hits@{k}'] = (hits > 0).astype(jnp.float32)
  mask = num_rel > 0
  denom = jnp.maximum(jnp.sum(mask), 1)
  means = {n: jnp.sum(jnp.where(mask, v, 0.0)) / denom for n, v in out.items()}
  return (means, out, mask) if per_query else means


# ------------------------------------------------------------ TREC files ---

def write_run(path: str, run: Run, tag: str = 'rosetta') -> None:
  """TREC run file `qid Q0 docid rank score tag`, atomically; ranks follow
  trec_eval's ordering of the scores, so the file means what it says."""
  if not tag or any(c.isspace() for c in tag):
    raise ValueError(f'run tag must be one word, got {tag!r}')
  lines = []
  for qid in run:
    for rank, (doc, score) in enumerate(trec_order(run[qid]), start=1):
      for name, value in (('query id', qid), ('doc id', doc)):
        if not value or any(c.isspace() for c in value):
          raise ValueError(f'{path}: {name} {value!r} is empty or has '
                           'whitespace')
      if not math.isfinite(score):
        raise ValueError(f'{path}: score of {qid}/{doc} is {score}')
      # float(): a numpy score's repr is 'np.float64(...)', not a number
      lines.append(f'{qid} Q0 {doc} {rank} {float(score)!r} {tag}\n')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with files.atomic_open(path, 'w') as f:
    f.write(''.join(lines))


def _read_table(path: str, fields: int, what: str):
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != fields:
        raise ValueError(f'{path}:{n}: expected {fields} fields ({what}), '
                         f'got {len(parts)}: {line.strip()!r}')
      yield n, parts


def read_run(path: str) -> Run:
  run: Run = collections.defaultdict(dict)
  for n, (qid, _, doc, _, score, _) in _read_table(
      path, 6, 'qid Q0 docid rank score tag'):
    try:
      value = float(score)
    except ValueError:
      raise ValueError(f'{path}:{n}: score {score!r} is not a number') from None
    if doc in run[qid]:
      raise ValueError(f'{path}:{n}: document {doc} listed twice for {qid}')
    run[qid][doc] = value
  return dict(run)


def write_qrels(path: str, qrels: Qrels) -> None:
  """TREC qrels `qid 0 docid grade`, atomically."""
  lines = [f'{q} 0 {d} {int(g)}\n' for q, docs in qrels.items()
           for d, g in docs.items()]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with files.atomic_open(path, 'w') as f:
    f.write(''.join(lines))


def read_qrels(path: str) -> dict[str, dict[str, int]]:
  qrels: dict[str, dict[str, int]] = collections.defaultdict(dict)
  for n, (qid, _, doc, grade) in _read_table(path, 4, 'qid 0 docid grade'):
    try:
      qrels[qid][doc] = int(grade)
    except ValueError:
      raise ValueError(f'{path}:{n}: grade {grade!r} is not an integer'
                       ) from None
  return dict(qrels)
