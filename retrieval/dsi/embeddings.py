"""Document embeddings for semantic docids, from a trained dual encoder.

DSI's semantic ids cluster document embeddings (hierarchical k-means,
`retrieval.dsi.docids.semantic_ids`). This module embeds a DSI corpus with the
document tower of a dual-encoder checkpoint (`make_encode_fn`) and saves
the (num_docs, dim) array that `dsi_tasks.setup.embeddings` reads:

    python -m retrieval.dsi.embeddings --dual_encoder runs/de_tiny \\
        --corpus xquad --out runs/xquad_de_embeddings.npy
    rosetta train --gin_file=dsi/xquad_semantic_tiny.gin \\
        --gin.dsi_tasks.setup.embeddings="'runs/xquad_de_embeddings.npy'" ...

Rows follow `corpus.doc_keys`. A multilingual corpus (XQuAD) is embedded
in every indexed language and the L2-normalised embeddings are averaged
(then normalised again): one id per paragraph, placed by what its 12
copies share rather than by the English wording alone. Without a trained
encoder `docids.lexical_embeddings` is the fallback
(`dsi_tasks.setup.embeddings = 'lexical'`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Mapping, Sequence

import numpy as np
from rosetta.run import files


@dataclasses.dataclass
class DualEncoderRun:
  """A restored dual encoder: wrapper, params, vocabulary, the token
  lengths it was trained with (documents, queries) and its mesh."""
  model: object
  params: object
  vocabulary: object
  max_length: int
  query_length: int
  mesh: object


def load_dual_encoder(model_dir: str, *, mesh=None,
                      step: int | None = None) -> DualEncoderRun:
  """Rebuilds the model from `model_dir/config.gin` and restores its
  parameters. This REPLACES the global gin config: call it between runs,
  not inside one (e.g. not from a `task_setup` hook)."""
  import gin
  from retrieval.dense import dual_encoder_model  # noqa: F401  (configurables)
  from retrieval.dense import pair_tasks
  from rosetta import gin_utils, partitioning
  from rosetta.run.run_dir import RunDir
  run = RunDir(model_dir)
  path = run.require().config_path
  gin_utils.parse_run_config(path)
  ref = gin.query_parameter('train.model')
  if not getattr(ref, 'selector', '').endswith('DualEncoderModel'):
    raise ValueError(f'{path}: train.model is {ref!r}, not a '
                     'dual_encoder_model.DualEncoderModel')
  model = ref.scoped_configurable_fn()
  try:
    spec = gin.query_parameter('pair_tasks.setup.vocabulary')
  except ValueError:
    spec = 'bytes'
  lengths = gin.query_parameter('train.task_feature_lengths')
  mesh = mesh if mesh is not None else partitioning.make_mesh()
  trainer, state, _ = run.restore_for_inference(model, mesh, step)
  del trainer
  return DualEncoderRun(model, state['params'],
                        pair_tasks.vocabulary_from(spec),
                        int(lengths['positives']), int(lengths['queries']),
                        mesh)


def _normalise(x: np.ndarray) -> np.ndarray:
  norm = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norm, 1e-12)


def encoder(run: DualEncoderRun, tower: str = 'doc', batch_size: int = 32):
  """texts -> (n, dim) float32 with the run's `tower` ('doc' or
  'query'), at the length that tower was trained with."""
  from retrieval.dense.dual_encoder_model import make_encode_fn
  length = run.max_length if tower == 'doc' else run.query_length
  return make_encode_fn(run.model, run.params, run.vocabulary, length,
                        batch_size, run.mesh, tower)


def doc_embeddings(run: DualEncoderRun,
                   texts_by_language: Mapping[str, Sequence[str]],
                   batch_size: int = 32) -> np.ndarray:
  """(num_docs, dim): the mean of each document's normalised document-tower
  embeddings over the languages (rows aligned across languages)."""
  if not texts_by_language:
    raise ValueError('doc_embeddings: no texts')
  sizes = {lang: len(t) for lang, t in texts_by_language.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f'doc_embeddings: languages have different document '
                     f'counts {sizes}')
  encode = encoder(run, 'doc', batch_size)
  total = sum(_normalise(encode(list(texts)))
              for texts in texts_by_language.values())
  return _normalise(total).astype(np.float32)


def save_embeddings(path: str, embeddings: np.ndarray) -> str:
  """`.npy`, atomically (temp file + rename)."""
  with files.atomic_open(path, 'wb') as f:
    np.save(f, np.asarray(embeddings, np.float32))
  return path


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--dual_encoder', required=True,
                 help='run directory of a dual-encoder `rosetta train`')
  p.add_argument('--corpus', required=True,
                 help="'xquad', 'cranfield' or a collection spec "
                 "('beir:<folder>', 'msmarco:<folder>')")
  p.add_argument('--out', required=True, help='.npy path to write')
  p.add_argument('--batch_size', type=int, default=32)
  args = p.parse_args(argv)
  from retrieval.dsi import dsi_tasks
  corpus = dsi_tasks.read_corpus(args.corpus)
  run = load_dual_encoder(args.dual_encoder)
  emb = doc_embeddings(run, corpus.doc_texts, args.batch_size)
  print(f'{save_embeddings(args.out, emb)}: {emb.shape[0]} documents x '
        f'{emb.shape[1]} dims')


if __name__ == '__main__':
  main()
