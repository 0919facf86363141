"""Scoring candidate lists with a reranker: batched over the mesh, in
process; interpolation with the first stage and its tuning.

    scorer = RerankScorer.from_run('runs/monot5')          # newest step
    reranked = scorer.rerank(bm25_run, queries, corpus, depth=100)
    scores = scorer.score_pairs([('do cats purr?', 'Cats purr.')])

`rerank` takes a TREC-style run ({qid: {doc id: score}}), the query and
document texts ({id: text}) and returns a run of each query's `depth` best
first-stage documents (trec_eval's order: score, then doc id descending),
scored by the reranker. Pairs are tokenized as the run trained
(`rerank_tasks.PairFormat`, the run's vocabulary and pair length) and
scored `batch_size` at a time, the rows sharded over the mesh's data axes;
the last batch is padded with empty rows, so one executable serves all.

Interpolation (`interpolate`): per query, both score lists are min-max
normalised to [0, 1] (a constant list to 0), then

    score = w * reranker + (1 - w) * first stage

so w = 1 keeps the reranker's order and w = 0 the first stage's.
`tune_interpolation` picks w on a grid by a development set's metric
(qrels kept out of training, e.g. rerank_tasks' 'validation' split).
"""

from __future__ import annotations

import functools
import sys
from typing import Mapping, Sequence

import jax
import numpy as np
import seqio
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from retrieval.rerank import rerank_tasks
from retrieval.rerank.reranker import Reranker
from retrieval.rerank.reranker_model import RerankerModel
from retrieval.search import ir_metrics
from rosetta import partitioning
from rosetta.partitioning import Partitioner

Run = ir_metrics.Run
TUNE_METRICS = ('MRR@10', 'nDCG@10')
DEFAULT_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2).tolist())


def data_parallel_size(mesh) -> int:
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return sizes.get('data', 1) * sizes.get('fsdp', 1)


@functools.lru_cache(maxsize=8)
def _score_fn(graphdef, replicated: NamedSharding):
  """The jitted scorer of a network structure (one per structure, so a new
  scorer on new parameters of the same network, e.g. the trainer's
  evaluation at every eval point, reuses its executables)."""
  @functools.partial(jax.jit, out_shardings=replicated)
  def score(state, tokens):
    return nnx.merge(graphdef, state).score(tokens)
  return score




class RerankScorer:
  """Scores (query, document) pairs and reranks runs (module docstring)."""

  def __init__(self, model: RerankerModel, network_or_params,
               vocabulary: seqio.Vocabulary,
               pair_format: rerank_tasks.PairFormat, length: int, *,
               mesh=None, batch_size: int = 64, progress: bool = False):
    """batch_size: pairs per step, rounded up to a multiple of the mesh's
    data-parallel size. progress: a progress bar on stderr."""
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    pair_format.room(vocabulary, length)   # long enough for the template
    self.model, self.vocabulary = model, vocabulary
    self.pair_format, self.length = pair_format, length
    self.partitioner = Partitioner(
        mesh if mesh is not None else partitioning.make_mesh())
    dp = data_parallel_size(self.partitioner.mesh)
    self.batch_size = -(-batch_size // dp) * dp
    self.progress = progress
    self.step: int | None = None    # the checkpoint's, from `from_run`
    network = partitioning.placed_network(model, network_or_params,
                                           self.partitioner)
    self._graphdef, self._state = nnx.split(network)
    self._rows = self.partitioner.sharding(partitioning.BATCH_AXES,
                                           (self.batch_size, length))
    self._fn = _score_fn(self._graphdef, NamedSharding(
        self.partitioner.mesh, PartitionSpec()))

  @classmethod
  def from_run(cls, model_dir: str, *, step: int | None = None, mesh=None,
               batch_size: int = 64, length: int | None = None,
               progress: bool = False,
               overlays: Sequence[str] = ()) -> 'RerankScorer':
    """The reranker of a run directory (its config, vocabulary, pair format
    and pair length: `train.task_feature_lengths['pairs']`, unless
    `length`), at `step` (default: the newest good checkpoint). `overlays`:
    runs whose own parameters replace the run's, e.g. another language's
    adapter under a task adapter (MAD-X zero-shot transfer). Leaves gin
    configured with the run's config."""
    import gin  # pylint: disable=import-outside-toplevel
    from rosetta.run import run_dir  # pylint: disable=import-outside-toplevel
    loaded = run_dir.load_run(model_dir, step, mesh, overlays=overlays)
    if not isinstance(loaded.model, RerankerModel):
      raise ValueError(
          f'{run_dir.RunDir(model_dir).config_path}: train.model is a '
          f'{type(loaded.model).__name__}, not a RerankerModel; rerank with '
          'a run of gin/rerank/*.gin')
    try:
      setup = rerank_tasks.last_setup(loaded.task)
    except KeyError:
      raise ValueError(f'{model_dir}: its train.task {loaded.task!r} was not '
                       'registered by rerank_tasks.setup') from None
    if length is None:
      length = gin.query_parameter('train.task_feature_lengths')['pairs']
    scorer = cls(loaded.model, loaded.network, setup.vocabulary,
                 setup.pair_format, length,
                 mesh=loaded.trainer.partitioner.mesh, batch_size=batch_size,
                 progress=progress)
    scorer.step = loaded.step
    return scorer

  def tokens(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """(n, length) int32 pair tokens, as the run's training made them."""
    return self.pair_format.batch(self.vocabulary, pairs, self.length)

  def score_tokens(self, tokens: np.ndarray) -> np.ndarray:
    """(n,) float32 scores of (n, length) pair tokens."""
    n, bs = len(tokens), self.batch_size
    out = np.zeros((n,), np.float32)
    with tqdm(total=n, unit='pair', desc='rerank', file=sys.stderr,
              disable=not self.progress or None) as bar:
      for start in range(0, n, bs):
        chunk = np.asarray(tokens[start:start + bs], np.int32)
        m = len(chunk)
        if m < bs:
          chunk = np.concatenate(
              [chunk, np.zeros((bs - m, chunk.shape[1]), np.int32)])
        rows = jax.make_array_from_callback(chunk.shape, self._rows,
                                            lambda i, c=chunk: c[i])
        with self.partitioner.activate():
          out[start:start + m] = np.asarray(self._fn(self._state, rows))[:m]
        bar.update(m)
    return out

  def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """(n,) float32 scores of (query, document) texts."""
    if not pairs:
      return np.zeros((0,), np.float32)
    return self.score_tokens(self.tokens(pairs))

  def rerank(self, run: Run, queries: Mapping[str, str],
             corpus: Mapping[str, str], depth: int = 100, *,
             interpolate: float | None = None) -> Run:
    """Each query's `depth` best documents of `run`, scored by the reranker
    ({qid: {doc id: score}}); with `interpolate` = w, the interpolated
    score instead (module docstring)."""
    if depth < 1:
      raise ValueError(f'depth must be >= 1, got {depth}')
    first = rerank_tasks.top(run, depth)
    pairs, where = [], []
    for qid, docs in first.items():
      if qid not in queries:
        raise ValueError(f'query {qid!r} of the run has no text in the '
                         'queries')
      for doc in docs:
        if doc not in corpus:
          raise ValueError(f'document {doc!r} (query {qid!r}) of the run '
                           'is not in the corpus')
        pairs.append((queries[qid], corpus[doc]))
        where.append((qid, doc))
    scores = self.score_pairs(pairs)
    out: Run = {qid: {} for qid in first}
    for (qid, doc), s in zip(where, scores):
      out[qid][doc] = float(s)
    if interpolate is not None:
      out = interpolated(first, out, interpolate)
    return out


# -------------------------------------------------------- interpolation ---


def normalised(scores: Mapping[str, float]) -> dict[str, float]:
  """Min-max to [0, 1]; a constant (or one-document) list gives 0."""
  if not scores:
    return {}
  values = np.asarray(list(scores.values()), np.float64)
  low, span = values.min(), values.max() - values.min()
  if not span > 0:
    return dict.fromkeys(scores, 0.0)
  return {d: float((s - low) / span) for d, s in scores.items()}


def interpolated(first_stage: Run, reranked: Run, weight: float) -> Run:
  """w * normalised reranker + (1 - w) * normalised first stage, for the
  documents `reranked` holds (module docstring)."""
  if not 0.0 <= weight <= 1.0:
    raise ValueError(f'interpolation weight must be in [0, 1], got {weight}')
  out = {}
  for qid, docs in reranked.items():
    r = normalised(docs)
    f = normalised({d: first_stage[qid][d] for d in docs})
    out[qid] = {d: weight * r[d] + (1.0 - weight) * f[d] for d in docs}
  return out


def tune_interpolation(first_stage: Run, reranked: Run, qrels,
                       metric: str = 'MRR@10',
                       grid: Sequence[float] = DEFAULT_GRID
                       ) -> tuple[float, dict[float, float]]:
  """(best weight, {weight: metric}) on a development set: the weight of
  `grid` whose interpolated run scores best by `metric` (pytrec_eval, over
  the qrels' queries the run holds); ties go to the larger weight."""
  if metric not in TUNE_METRICS:
    raise ValueError(f'metric must be one of {TUNE_METRICS}, got {metric!r}')
  qrels = {q: qrels[q] for q in reranked if q in qrels}
  if not any(g >= 1 for docs in qrels.values() for g in docs.values()):
    raise ValueError('tune_interpolation: no query of the run has a '
                     'relevant document in the development qrels')
  table = {float(w): ir_metrics.evaluate(
      interpolated(first_stage, reranked, float(w)), qrels)[metric]
           for w in grid}
  best = max(table, key=lambda w: (table[w], w))
  return best, table
