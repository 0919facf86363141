"""A dual encoder judged on a `RetrievalSet`: encode, exact search, TREC
files, pytrec_eval metrics.

Any set works: the built-in ones (`retrieval.datasets`) or your own
collection (`retrieval.collection_files`). In Python::

    from retrieval import collection_files
    from retrieval.dense import evaluation
    from retrieval.dsi import embeddings
    de = embeddings.load_dual_encoder('runs/de_scifact')
    rs = collection_files.read_split('beir:data/scifact', 'test')
    m = evaluation.evaluate_set(embeddings.encoder(de, 'query'),
                                embeddings.encoder(de, 'doc'), rs,
                                mesh=de.mesh, out_dir='runs/eval/scifact')
    m['MRR@10'], m['nDCG@10'], m['Recall@100']

or from the shell (the same, printing the metrics as JSON)::

    python -m retrieval.dense.evaluation --dual_encoder runs/de_scifact \\
        --collection beir:data/scifact --split test --out runs/eval/scifact

`out_dir` receives `qrels.txt` (`ir_metrics.write_qrels`), `run.trec`
(`ir_metrics.write_run`: the top k documents per query with their inner
products, ready for `rosetta fuse` or trec_eval) and `metrics.json`.
`index_dir` keeps the document embeddings in a restartable sharded index
(`retrieval.dense.indexing`) instead of memory only.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Callable, Sequence

import numpy as np

from retrieval.dense import indexing
from retrieval.search import exact
from retrieval.search import ir_metrics
from rosetta.run import files

EncodeFn = Callable[[list[str]], np.ndarray]
QRELS, RUN, METRICS = 'qrels.txt', 'run.trec', 'metrics.json'


def evaluate_set(encode_query: EncodeFn, encode_doc: EncodeFn, rs, *,
                 k: int = 100, ks: Sequence[int] = ir_metrics.DEFAULT_KS,
                 mesh=None, index_dir: str | None = None,
                 out_dir: str | None = None, tag: str = 'dense',
                 encoder_name: str = '') -> dict[str, float]:
  """Mean metrics of `ir_metrics.evaluate` (MRR@10, nDCG@10, Recall@k,
  Hits@k for the ks up to the corpus size) of the top-k exact search of
  `rs.queries` against `rs.docs`; files as in the module docstring."""
  if index_dir:
    indexing.build_index(encode_doc, rs.docs, rs.doc_ids, index_dir,
                         encoder_name=encoder_name, progress=False)
    doc_emb, doc_ids = indexing.load_index(index_dir)
  else:
    doc_emb, doc_ids = encode_doc(list(rs.docs)), list(rs.doc_ids)
  corpus = exact.shard_corpus(doc_emb, mesh)
  k = min(k, len(doc_ids))
  result = exact.search(corpus, encode_query(list(rs.queries)), k)
  run = ir_metrics.run_from_topk(result.indices, rs.query_ids, doc_ids,
                                 scores=result.scores)
  metrics = ir_metrics.evaluate(run, rs.qrels,
                                ks=[x for x in ks if x <= len(doc_ids)])
  if out_dir:
    ir_metrics.write_qrels(os.path.join(out_dir, QRELS), rs.qrels)
    ir_metrics.write_run(os.path.join(out_dir, RUN), run, tag=tag)
    with files.atomic_open(os.path.join(out_dir, METRICS), 'w') as f:
      f.write(json.dumps(dict(metrics, set=rs.name, queries=len(rs.queries),
                              documents=len(doc_ids), k=k), indent=1) + '\n')
  return metrics


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--dual_encoder', required=True,
                 help='run directory of a dual-encoder `rosetta train`')
  p.add_argument('--collection', required=True,
                 help="'beir:<folder>' or 'msmarco:<folder>' "
                 '(retrieval.collection_files)')
  p.add_argument('--split', default='test')
  p.add_argument('--out', default=None, help='folder for qrels.txt, '
                 'run.trec and metrics.json')
  p.add_argument('--k', type=int, default=100)
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--on_bad_line', choices=('error', 'skip'), default='error')
  args = p.parse_args(argv)
  from retrieval import collection_files
  from retrieval.dsi import embeddings
  rs = collection_files.read_split(args.collection, args.split,
                                   on_bad_line=args.on_bad_line)
  de = embeddings.load_dual_encoder(args.dual_encoder)
  metrics = evaluate_set(
      embeddings.encoder(de, 'query', args.batch_size),
      embeddings.encoder(de, 'doc', args.batch_size), rs, k=args.k,
      mesh=de.mesh, out_dir=args.out, tag='dual_encoder')
  print(json.dumps({'set': rs.name, 'queries': len(rs.queries),
                    'documents': len(rs.docs), **metrics}))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
