"""fuse TREC runs of several systems (BM25 + a dual encoder, say) into one
(hybrid retrieval).

    rrf([bm25_run, dense_run])                       # parameter-free
    combsum([bm25_run, dense_run], weights=(0.7, 0.3), norm='minmax')
    weights, table = tune_weights([bm25_train, dense_train], train_qrels)

Runs are `ir_metrics.Run` ({query id: {doc id: score}}; TREC files through
`ir_metrics.read_run`). A run's ranks are trec_eval's ordering of its
scores (score descending, then doc id descending), so a fused run means
the same whether it came from a search result or a file.

  rrf      reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR
           2009): sum over runs of w_i / (k + rank_i(d)), rank from 1;
           a run that does not list d adds nothing. Needs no score scale.
  combsum  weighted sum of per-query normalised scores (Fox & Shaw 1994;
           the convex combination of Pyserini's hybrid search):
           'minmax' maps a query's scores to [0, 1], 'zscore' to mean 0 /
           std 1, 'none' keeps them. A document a run does not list gets
           that run's lowest normalised score for the query (as Pyserini
           does): it ranked no better than the last listed one.

Both read each run to `depth` documents per query (None: all listed) and
keep the best `k` fused documents (None: all). `tune_weights` picks the
weights on queries with known answers, by grid search over the simplex,
scored by pytrec_eval (`ir_metrics.evaluate`); the first best in grid
order wins ties, so a tie is broken the same way every time. Tune on
queries that no fused system trained on: a dense model scores its own
training questions far better than new ones (MRR@10 0.76 vs 0.54 in the
retrieval benchmark), which pulls the weights towards it. `rosetta fuse --help`: the same from
the command line, on TREC files.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from typing import Sequence

import numpy as np

from retrieval.search import ir_metrics
from retrieval.search.ir_metrics import Qrels, Run

METHODS = ('rrf', 'combsum')
NORMS = ('minmax', 'zscore', 'none')
RRF_K = 60   # the constant of Cormack et al., used by most toolkits


def _check(runs: Sequence[Run], weights, depth, k) -> np.ndarray:
  if not runs:
    raise ValueError('fusion needs at least one run')
  for i, run in enumerate(runs):
    if not isinstance(run, dict):
      raise ValueError(f'runs[{i}] must be a {{query id: {{doc id: score}}}} '
                       f'dict, got {type(run).__name__}')
    for qid, docs in run.items():
      for doc, score in docs.items():
        if not math.isfinite(score):
          raise ValueError(f'runs[{i}]: score of {qid}/{doc} is {score}')
  w = np.ones(len(runs)) if weights is None else np.asarray(weights, float)
  if w.shape != (len(runs),):
    raise ValueError(f'weights has {w.size} value(s) for {len(runs)} runs')
  if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
    raise ValueError(f'weights must be finite, >= 0 and not all 0, got '
                     f'{w.tolist()}')
  for name, value in (('depth', depth), ('k', k)):
    if value is not None and (not isinstance(value, int) or value < 1):
      raise ValueError(f'{name} must be a positive integer or None, got '
                       f'{value!r}')
  return w


def _ranked(docs, depth):
  return ir_metrics.trec_order(docs)[:depth]


def _top(fused: dict[str, float], k) -> dict[str, float]:
  return dict(ir_metrics.trec_order(fused)[:k])


def _query_ids(runs: Sequence[Run]) -> list[str]:
  return list(dict.fromkeys(q for run in runs for q in run))


def rrf(runs: Sequence[Run], weights=None, rrf_k: float = RRF_K,
        depth: int | None = None, k: int | None = None) -> Run:
  """Reciprocal rank fusion (module docstring)."""
  w = _check(runs, weights, depth, k)
  if not rrf_k >= 0:
    raise ValueError(f'rrf_k must be >= 0, got {rrf_k}')
  out: Run = {}
  for qid in _query_ids(runs):
    fused: dict[str, float] = {}
    for wi, run in zip(w.tolist(), runs):
      for rank, (doc, _) in enumerate(_ranked(run.get(qid, {}), depth), 1):
        fused[doc] = fused.get(doc, 0.0) + wi / (rrf_k + rank)
    out[qid] = _top(fused, k)
  return out


def _normalise(scores: np.ndarray, norm: str) -> np.ndarray:
  if norm == 'none' or scores.size == 0:
    return scores
  if norm == 'minmax':
    span = scores.max() - scores.min()
    return (scores - scores.min()) / span if span > 0 else np.zeros_like(
        scores)
  std = scores.std()
  return (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)


def combsum(runs: Sequence[Run], weights=None, norm: str = 'minmax',
            depth: int | None = None, k: int | None = None) -> Run:
  """Weighted sum of normalised scores (module docstring)."""
  w = _check(runs, weights, depth, k)
  if norm not in NORMS:
    raise ValueError(f'norm must be one of {NORMS}, got {norm!r}')
  out: Run = {}
  for qid in _query_ids(runs):
    lists = []
    for run in runs:
      ranked = _ranked(run.get(qid, {}), depth)
      s = _normalise(np.array([v for _, v in ranked], np.float64), norm)
      lists.append((dict(zip((d for d, _ in ranked), s)),
                    float(s.min()) if s.size else 0.0))
    docs = list(dict.fromkeys(d for scores, _ in lists for d in scores))
    out[qid] = _top({d: float(sum(wi * scores.get(d, floor)
                                  for wi, (scores, floor) in zip(w.tolist(),
                                                                 lists)))
                     for d in docs}, k)
  return out


def fuse(runs: Sequence[Run], method: str = 'rrf', weights=None,
         **kwargs) -> Run:
  if method == 'rrf':
    return rrf(runs, weights, **kwargs)
  if method == 'combsum':
    return combsum(runs, weights, **kwargs)
  raise ValueError(f'method must be one of {METHODS}, got {method!r}')


def weight_grid(num_runs: int, step: float) -> list[tuple[float, ...]]:
  """Every weight vector on the simplex with entries in multiples of
  `step` (1/step must be a whole number), in lexicographic order."""
  n = round(1 / step) if step > 0 else 0
  if n < 1 or not math.isclose(n * step, 1.0, abs_tol=1e-9):
    raise ValueError(f'step must divide 1 (0.1, 0.05, ...), got {step}')
  return [tuple(c / n for c in combo)
          for combo in itertools.product(range(n + 1), repeat=num_runs)
          if sum(combo) == n]


def tune_weights(runs: Sequence[Run], qrels: Qrels, method: str = 'combsum',
                 metric: str = 'MRR@10', step: float = 0.1, **kwargs):
  """(best weights, [(weights, metric value), ...] for the whole grid) on
  the queries of `qrels`; kwargs go to `fuse` (norm, rrf_k, depth, k)."""
  table = []
  for w in weight_grid(len(runs), step):
    value = ir_metrics.evaluate(fuse(runs, method, w, **kwargs), qrels)
    if metric not in value:
      raise ValueError(f'metric {metric!r} is not one of {sorted(value)}')
    table.append((w, value[metric]))
  best = max(range(len(table)), key=lambda i: (table[i][1], -i))
  return table[best][0], table


# ------------------------------------------------------------- the CLI ---


def _floats(text: str, flag: str) -> list[float]:
  try:
    return [float(x) for x in text.split(',')]
  except ValueError:
    raise SystemExit(f'rosetta fuse: {flag} must be comma-separated numbers, '
                     f'got {text!r}') from None


def checked_inputs(paths, runs) -> None:
  """Refuses inputs whose fusion would silently be something else: an
  empty run (the fusion is the other run alone) or runs sharing no query
  (nothing is fused). Queries in some runs only are counted on stderr."""
  for path, run in zip(paths, runs):
    if not run:
      raise ValueError(f'{path}: the run is empty (no query); fusing it '
                       'would return the other runs unchanged')
  if len(runs) > 1:
    shared = set.intersection(*(set(r) for r in runs))
    if not shared:
      raise ValueError(f'{", ".join(paths)}: the runs have no query in '
                       'common (different query sets or id formats?)')
    every = set.union(*(set(r) for r in runs))
    if len(every) > len(shared):
      print(f'rosetta fuse: {len(every) - len(shared)} of {len(every)} '
            'queries are missing from some runs (fused from the others)',
            file=sys.stderr)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
      prog='rosetta fuse',
      description='Fuse TREC run files (hybrid retrieval: BM25 + a dense '
      'retriever, ...) into one; see retrieval/search/fusion.py.')
  p.add_argument('runs', nargs='+', help='TREC run files to fuse')
  p.add_argument('--out', required=True, help='fused TREC run file '
                 '(written atomically)')
  p.add_argument('--method', choices=METHODS, default='rrf')
  p.add_argument('--weights', help='one weight per run, e.g. 0.7,0.3 '
                 '(default: equal, or tuned with --tune_runs)')
  p.add_argument('--norm', choices=NORMS, default='minmax',
                 help='combsum score normalisation')
  p.add_argument('--rrf_k', type=float, default=RRF_K)
  p.add_argument('--depth', type=int, help='read each run to this rank')
  p.add_argument('--k', type=int, help='documents kept per query')
  p.add_argument('--tune_runs', nargs='+', help='the same systems\' runs on '
                 'training queries, in the same order, to pick --weights')
  p.add_argument('--tune_qrels', help='qrels of the --tune_runs queries')
  p.add_argument('--metric', default='MRR@10')
  p.add_argument('--step', type=float, default=0.1, help='weight grid step')
  p.add_argument('--qrels', help='also print the fused run\'s metrics')
  p.add_argument('--tag', default='fused')
  a = p.parse_args(argv)
  kwargs = {'depth': a.depth, 'k': a.k}
  kwargs.update({'rrf_k': a.rrf_k} if a.method == 'rrf' else {'norm': a.norm})
  if bool(a.tune_runs) != bool(a.tune_qrels):
    p.error('--tune_runs and --tune_qrels go together')
  if a.tune_runs and a.weights:
    p.error('give --weights or tune them with --tune_runs, not both')
  if a.tune_runs and len(a.tune_runs) != len(a.runs):
    p.error(f'--tune_runs has {len(a.tune_runs)} files for {len(a.runs)} '
            'runs (one per run, same order)')
  try:
    weights = _floats(a.weights, '--weights') if a.weights else None
    if a.tune_runs:
      weights, table = tune_weights(
          [ir_metrics.read_run(f) for f in a.tune_runs],
          ir_metrics.read_qrels(a.tune_qrels), a.method, a.metric, a.step,
          **kwargs)
      for w, v in table:
        print(f'tune  weights {",".join(f"{x:g}" for x in w):24s} '
              f'{a.metric} {v:.4f}')
      print(f'tuned weights: {",".join(f"{x:g}" for x in weights)}')
    runs = [ir_metrics.read_run(f) for f in a.runs]
    checked_inputs(a.runs, runs)
    qrels = ir_metrics.read_qrels(a.qrels) if a.qrels else None  # before
    fused = fuse(runs, a.method, weights, **kwargs)                # writing
    ir_metrics.write_run(a.out, fused, tag=a.tag)
    print(f'wrote {a.out} ({len(fused)} queries)')
    if qrels is not None:
      for name, value in ir_metrics.evaluate(fused, qrels).items():
        print(f'{name:12s} {value:.4f}')
  except (ValueError, OSError) as e:
    print(f'rosetta fuse: {e}', file=sys.stderr)
    return 2
  return 0
