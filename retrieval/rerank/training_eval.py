"""Reranking metrics while a reranker trains: MRR@10 and nDCG@10 of the
first stage's top `depth` reranked, on each rerank task's development
split, at the trainer's evaluation points.

The trainer's `train.eval_fns` hook (`rosetta.run.runs.train`) calls a
`RerankEval` with the current parameters; it scores each task's
'validation' queries (`rerank_tasks`: carved from the training side, kept
out of training) with `scoring.RerankScorer` and scores the runs with
pytrec_eval. Each task is reported as `eval/<task>_<split>` in
TensorBoard (e.g. `eval/rerank_xquad_en_en_validation`) and as
`eval/<task>_<split>/MRR@10` ... keys of the
step's row of `train_metrics.jsonl`, beside the first stage's own
(`first_stage_MRR@10`, ...) for comparison. gin::

    train.eval_fns = [@training_eval.RerankEval()]
    training_eval.RerankEval.depth = 20
"""

from __future__ import annotations

from typing import Sequence

import gin

from retrieval.rerank import rerank_tasks
from retrieval.rerank import scoring
from retrieval.search import ir_metrics

METRICS = ('MRR@10', 'nDCG@10')


@gin.configurable
class RerankEval:
  """A `train.eval_fns` entry (module docstring). tasks: rerank task names
  (default: every task of the setup that registered `train.task`); depth:
  first-stage documents reranked per query; max_queries: the first n
  queries of each split (None: all); length: tokens per pair (default
  `train.task_feature_lengths['pairs']`)."""

  def __init__(self, *, tasks: Sequence[str] | None = None,
               split: str = 'validation', depth: int = 20,
               batch_size: int = 64, max_queries: int | None = None,
               length: int | None = None):
    if split not in rerank_tasks.SPLITS:
      raise ValueError(f'RerankEval.split must be one of '
                       f'{rerank_tasks.SPLITS}, got {split!r}')
    if depth < 1:
      raise ValueError(f'RerankEval.depth must be >= 1, got {depth}')
    self.tasks = None if tasks is None else list(tasks)
    self.split, self.depth = split, depth
    self.batch_size, self.max_queries = batch_size, max_queries
    self.length = length

  def __call__(self, *, model, network, partitioner, step=None
               ) -> dict[str, dict[str, float]]:
    del step
    lengths = gin.query_parameter('train.task_feature_lengths')
    setup = rerank_tasks.last_setup(gin.query_parameter('train.task'))
    scorer = scoring.RerankScorer(
        model, network, setup.vocabulary, setup.pair_format,
        self.length or lengths['pairs'], mesh=partitioner.mesh,
        batch_size=self.batch_size)
    results = {}
    for name in self.tasks if self.tasks is not None else setup.tasks:
      if name not in setup.tasks:
        raise ValueError(f'RerankEval.tasks: {name!r} is not a rerank task '
                         f'of this run (tasks: {sorted(setup.tasks)})')
      data = setup.tasks[name]
      rs = data.retrieval_set(self.split)
      ids = rs.query_ids[:self.max_queries]
      if not ids:
        continue
      first = {q: data.ranking(self.split, self.depth)[q] for q in ids}
      qrels = {q: rs.qrels[q] for q in ids}
      reranked = scorer.rerank(first, dict(zip(rs.query_ids, rs.queries)),
                               data.texts, self.depth)
      ours = ir_metrics.evaluate(reranked, qrels)
      theirs = ir_metrics.evaluate(first, qrels)
      results[f'{name}_{self.split}'] = {
          **{m: ours[m] for m in METRICS},
          **{f'first_stage_{m}': theirs[m] for m in METRICS},
          'queries': len(ids)}
    return results
