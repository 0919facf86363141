"""Retrieval metrics of a dual encoder while it trains: MRR@10, nDCG@10,
Recall@k on development sets, at the trainer's evaluation points.

The trainer's `train.eval_fns` hook (`rosetta.run.runs.train`) calls a
`RetrievalEval` with the current parameters; it encodes each set's
queries and documents (`dual_encoder_model.make_encode_fn`), searches
exactly (`retrieval.search.exact`) and scores with pytrec_eval
(`retrieval.dense.evaluation.evaluate_set`, the same numbers
`python -m retrieval.dense.evaluation` gives for the saved checkpoint).
Each set is reported as `eval/retrieval_<set>` in TensorBoard and as
`eval/retrieval_<set>/MRR@10` ... keys of the step's row of
`train_metrics.jsonl`. gin::

    train.eval_fns = [@training_eval.RetrievalEval()]
    training_eval.RetrievalEval.split = 'dev'   # collections: qrels/dev.tsv
    training_eval.RetrievalEval.tasks = ['tatoeba_pairs_en_de']

Sets:
  collections  'beir:<folder>' / 'msmarco:<folder>' specs: the split's
               queries and qrels against the WHOLE corpus (`read_split`).
               Default (None): every collection of `pair_tasks.setup`
               that has the split (one without it is passed over).
  tasks        pair tasks (`retrieval.dense.pair_tasks`) whose
               `task_split` examples become a set: each query's positive
               is its one relevant document, the corpus the distinct
               positives (Tatoeba: sentence -> translation among all the
               held-out translations).

Sets are read once and kept; `max_queries` keeps the first n queries of
each (the corpus stays whole), to bound the time of an evaluation.
"""

from __future__ import annotations

import functools
from typing import Sequence

import gin
import seqio

from retrieval import collection_files
from retrieval import datasets
from retrieval.dense import dual_encoder_model
from retrieval.dense import evaluation
from retrieval.search import ir_metrics


def task_set(task: str, split: str) -> datasets.RetrievalSet:
  """A pair task's split as a retrieval set (module doc)."""
  ds = seqio.get_mixture_or_task(task).get_dataset(
      sequence_length=None, split=split, shuffle=False, num_epochs=1)
  query_ids, queries, doc_of, qrels = [], [], {}, {}
  for i, ex in enumerate(ds.as_numpy_iterator()):
    positive = ex['positives_pretokenized'].decode('utf-8')
    doc = doc_of.setdefault(positive, f'd{len(doc_of)}')
    query_ids.append(f'q{i}')
    queries.append(ex['queries_pretokenized'].decode('utf-8'))
    qrels[f'q{i}'] = {doc: 1}
  if not queries:
    raise ValueError(f'RetrievalEval: task {task!r} has no {split!r} '
                     'examples')
  return datasets.RetrievalSet(f'{task}:{split}', tuple(query_ids),
                               tuple(queries), tuple(doc_of.values()),
                               tuple(doc_of), qrels)


def first_queries(rs: datasets.RetrievalSet, n: int | None
                  ) -> datasets.RetrievalSet:
  if n is None or n >= len(rs.queries):
    return rs
  ids = rs.query_ids[:n]
  return datasets.RetrievalSet(rs.name, ids, rs.queries[:n], rs.doc_ids,
                               rs.docs, {q: rs.qrels[q] for q in ids})


def _pair_collections() -> list[str]:
  try:
    return list(gin.query_parameter('pair_tasks.setup.collections'))
  except ValueError:   # not bound: pair_tasks.setup's default, none
    return []


@gin.configurable
class RetrievalEval:
  """A `train.eval_fns` entry (module doc). `vocabulary_task`: the task or
  mixture whose 'queries' vocabulary tokenizes the texts (the pair tasks'
  mixture); `query_length` / `doc_length`: tokens per text (default: the
  'queries' / 'positives' of `train.task_feature_lengths`, as
  `retrieval.dsi.embeddings.load_dual_encoder` encodes a saved run); `ks`: the Recall@k / Hits@k cut-offs (up to the corpus size)."""

  def __init__(self, *, collections: Sequence[str] | None = None,
               split: str = 'dev', tasks: Sequence[str] = (),
               task_split: str = 'validation',
               vocabulary_task: str = 'retrieval_pairs',
               query_length: int | None = None,
               doc_length: int | None = None,
               batch_size: int = 32,
               ks: Sequence[int] = ir_metrics.DEFAULT_KS,
               max_queries: int | None = None, on_bad_line: str = 'error'):
    if min(query_length or 2, doc_length or 2) < 2:
      raise ValueError('RetrievalEval: query_length and doc_length must be '
                       f'>= 2, got {query_length}, {doc_length}')
    self.collections, self.split = collections, split
    self.tasks, self.task_split = list(tasks), task_split
    self.vocabulary_task = vocabulary_task
    self.query_length, self.doc_length = query_length, doc_length
    self.batch_size, self.ks = batch_size, tuple(ks)
    self.max_queries = max_queries
    self.on_bad_line = on_bad_line

  @functools.cached_property
  def sets(self) -> dict[str, datasets.RetrievalSet]:
    """{name: set}, read on first use (after the tasks are registered)."""
    specs = (self.collections if self.collections is not None
             else [c for c in _pair_collections()
                   if collection_files.parse_spec(c).kind in
                   collection_files.COLLECTION_KINDS
                   and self.split in collection_files.splits(c)])
    out = {}
    for spec in specs:
      rs = collection_files.read_split(spec, self.split,
                                       on_bad_line=self.on_bad_line)
      name = f'{collection_files.parse_spec(spec).name}_{self.split}'
      out[name] = first_queries(rs, self.max_queries)
    for task in self.tasks:
      out[f'{task}_{self.task_split}'] = first_queries(
          task_set(task, self.task_split), self.max_queries)
    if not out:
      raise ValueError(
          'RetrievalEval: no development set (no collection of '
          f'pair_tasks.setup has a {self.split!r} split and no tasks are '
          'named); set RetrievalEval.collections or .tasks, or leave '
          'train.eval_fns empty')
    return out

  def __call__(self, *, model, network, partitioner, step=None
               ) -> dict[str, dict[str, float]]:
    del step
    vocab = seqio.get_mixture_or_task(
        self.vocabulary_task).output_features['queries'].vocabulary
    mesh = partitioner.mesh
    lengths = {}
    if self.query_length is None or self.doc_length is None:
      lengths = gin.query_parameter('train.task_feature_lengths')
    encode = {tower: dual_encoder_model.make_encode_fn(
        model, network, vocab, length, self.batch_size, mesh, tower=tower)
        for tower, length in (
            ('query', self.query_length or lengths['queries']),
            ('doc', self.doc_length or lengths['positives']))}
    results = {}
    for name, rs in self.sets.items():
      metrics = evaluation.evaluate_set(encode['query'], encode['doc'], rs,
                                        k=max(self.ks), ks=self.ks,
                                        mesh=mesh)
      results[f'retrieval_{name}'] = dict(metrics, queries=len(rs.queries))
    return results
