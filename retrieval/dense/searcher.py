"""Search a `rosetta index` in-process: open the index, load the model that
built it (refusing another), encode queries, search, rank documents.

    s = Searcher.open('runs/index')                 # the manifest's run
    emb = s.encode_queries(['do cats purr?'])
    result = s.search(emb, k=10)                     # documents, best first
    run = s.run(['q1'], result)                      # {qid: {doc id: score}}

Modes: 'exact' scans the stored dtype, 'bfloat16' a bfloat16 copy (half
the memory traffic, scores of the rounded vectors), 'verified' float32
results at bfloat16 speed (`retrieval.search.verified`; a float32 index).
With passages the index rows are windows and a document scores its best
window (`retrieval.search.passages.doc_topk`).

Multi-process: the corpus is placed on the global mesh, each process
reading only the rows of its devices; queries are encoded by every process
on its own devices (the model is replicated per process), so all of them
search the same query matrix.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from retrieval.dense import index_store
from retrieval.search import exact
from retrieval.search import hubness
from retrieval.search import ir_metrics
from retrieval.search import passages as passages_lib
from retrieval.search import verified

MODES = ('exact', 'bfloat16', 'verified')
HUBNESS = ('csls', 'inverted_softmax', 'dbnorm')


def local_mesh():
  """This process's devices on the data axis: every process encodes on
  its own devices, independently of the others."""
  from rosetta import partitioning  # pylint: disable=import-outside-toplevel
  return partitioning.make_mesh(devices=jax.local_devices())


def checkpoint_steps(model_dir: str) -> list[int]:
  from rosetta.run.run_dir import RunDir  # pylint: disable=import-outside-toplevel
  ckpt = RunDir(model_dir).require().checkpointer(save_interval_steps=1,
                                                  read_only=True)
  try:
    return ckpt.all_steps()
  finally:
    ckpt.close()


def load_model(model_dir: str, step: int | None = None, mesh=None):
  """(DualEncoderRun, its identity: the manifest's `model` entry) of a
  dual-encoder run, at `step` (default its newest checkpoint), on `mesh`
  (default `local_mesh()`)."""
  from retrieval.dsi import embeddings  # pylint: disable=import-outside-toplevel
  from rosetta.run.run_dir import RunDir  # pylint: disable=import-outside-toplevel
  run_dir = RunDir(model_dir).require()
  if step is None:
    step = max(checkpoint_steps(model_dir), default=None)
    if step is None:
      raise FileNotFoundError(f'{run_dir.checkpoints_path}: no checkpoint')
  run = embeddings.load_dual_encoder(model_dir, mesh=mesh or local_mesh(),
                                     step=step)
  identity = {'run_dir': os.path.abspath(model_dir), 'step': int(step),
              'fingerprint': index_store.model_fingerprint(
                  run.params, run_dir.read_config(), run.vocabulary)}
  return run, identity


def check_same_model(index_dir: str, built_by: dict, asked: dict) -> None:
  if not index_store.same_model(built_by, asked):
    raise ValueError(
        f'{os.path.join(index_dir, index_store.MANIFEST)}: the index was '
        f'built by {built_by["run_dir"]} (step {built_by["step"]}), but the '
        f'queries would be encoded by {asked["run_dir"]} (step '
        f'{asked["step"]}): another model (fingerprints differ); '
        'leave --model_dir out to use the index\'s own')


@dataclasses.dataclass(eq=False)
class Searcher:
  index: index_store.DenseIndex
  model: object                     # retrieval.dsi.embeddings.DualEncoderRun
  corpus: object                    # exact.ShardedCorpus or VerifiedCorpus
  mode: str
  batch_size: int = 32

  @classmethod
  def open(cls, index_dir: str, model_dir: str | None = None, *,
           mode: str = 'exact', mesh=None, batch_size: int = 32,
           verify: bool = True) -> 'Searcher':
    """The index on `mesh` (default: every device on the data axis) and
    its model; an explicit `model_dir` must be the same model."""
    if mode not in MODES:
      raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    index = index_store.DenseIndex.open(index_dir, verify=verify)
    built_by = index.model
    if model_dir is None:
      model_dir = built_by['run_dir']
      if not os.path.isdir(model_dir):
        raise FileNotFoundError(
            f'{os.path.join(index_dir, index_store.MANIFEST)}: its model '
            f'{model_dir} is gone; name a copy with --model_dir')
    # The index's step when the run holds it (a copy may hold more).
    step = built_by['step'] if built_by['step'] in checkpoint_steps(
        model_dir) else None
    model, identity = load_model(model_dir, step)
    check_same_model(index_dir, built_by, identity)
    if mode == 'verified' and index.manifest['dtype'] != 'float32':
      raise ValueError(f'{index_dir}: --mode verified needs a float32 index '
                       f'(this one is {index.manifest["dtype"]})')
    if mesh is None:
      from rosetta import partitioning  # pylint: disable=import-outside-toplevel
      mesh = partitioning.make_mesh()
    corpus = index.corpus(mesh, dtype='bfloat16' if mode == 'bfloat16'
                          else None)
    if mode == 'verified':
      corpus = verified.VerifiedCorpus.build(corpus)
    return cls(index, model, corpus, mode, batch_size)

  @property
  def _rows(self) -> exact.ShardedCorpus:
    return getattr(self.corpus, 'exact', self.corpus)

  def encode_queries(self, texts) -> np.ndarray:
    from retrieval.dsi import embeddings  # pylint: disable=import-outside-toplevel
    dp = jax.local_device_count()
    batch = -(-self.batch_size // dp) * dp
    return embeddings.encoder(self.model, 'query', batch)(list(texts))

  def encode_documents(self, texts) -> np.ndarray:
    """The document tower (e.g. for a dbnorm gallery bank)."""
    from retrieval.dsi import embeddings  # pylint: disable=import-outside-toplevel
    dp = jax.local_device_count()
    batch = -(-self.batch_size // dp) * dp
    return embeddings.encoder(self.model, 'doc', batch)(list(texts))

  def correction(self, method: str, query_bank: np.ndarray,
                 gallery_bank: np.ndarray | None = None, *, k: int = 10,
                 beta: float = 20.0) -> exact.ScoreCorrection:
    """A hubness correction (`retrieval.search.hubness`) for this index."""
    if method == 'csls':
      return hubness.csls(self._rows, query_bank, k=k)
    if method == 'inverted_softmax':
      return hubness.inverted_softmax(self._rows, query_bank, beta=beta)
    if method == 'dbnorm':
      if gallery_bank is None:
        raise ValueError('dbnorm needs a gallery bank (documents other '
                         'than the corpus)')
      return hubness.dbnorm(self._rows, query_bank, gallery_bank,
                            beta1=beta, beta2=beta)
    raise ValueError(f'hubness must be one of {HUBNESS}, got {method!r}')

  def search(self, query_emb, k: int, *, correction=None,
             progress: bool = False) -> exact.SearchResult:
    """The k best documents per query (rows of `index.doc_ids`)."""
    k = min(k, len(self.index.doc_ids))
    owner = self.index.owner
    if owner is None:
      return exact.search(self.corpus, query_emb, k, correction=correction,
                          progress=progress)
    most = int(np.bincount(owner).max())
    hits = exact.search(self.corpus, query_emb,
                        min(self.index.num_rows, k * most),
                        correction=correction, progress=progress)
    s, i = passages_lib.doc_topk(np.asarray(hits.scores),
                                 np.asarray(hits.indices), owner, k)
    return exact.SearchResult(s, i)

  def run(self, query_ids, result: exact.SearchResult) -> ir_metrics.Run:
    return ir_metrics.run_from_topk(result.indices, list(query_ids),
                                    self.index.doc_ids,
                                    scores=result.scores)
