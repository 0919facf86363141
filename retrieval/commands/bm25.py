"""rank a corpus for queries with BM25 (bm25s) into a TREC run

    rosetta bm25 --corpus beir:data/scifact --queries beir:data/scifact \\
        --output runs/scifact.bm25.trec --k 100

Tokenisation is `retrieval.search.bm25`'s: case folding, word runs, and
character bigrams for scripts written without spaces (Chinese, Japanese,
Thai, ...); `--lang` picks a stopword list. Ties rank the earlier document
first. The run is ready for `rosetta score` and `rosetta fuse`.
"""

from __future__ import annotations

import argparse
import sys

from retrieval.commands import options


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='rosetta bm25', description=__doc__.split('\n\n')[0],
      epilog=__doc__.split('\n\n', 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--corpus', required=True,
                 help=f'documents: {options.SPEC_HELP}')
  p.add_argument('--queries', required=True,
                 help=f'queries: {options.SPEC_HELP}')
  p.add_argument('--output', required=True, help='TREC run file to write')
  p.add_argument('--k', type=options.positive, default=100,
                 help='documents per query (at most the corpus size)')
  p.add_argument('--lang', default=None,
                 help='stopword list of bm25s (en, de, fr, zh, ...); default '
                 'none')
  p.add_argument('--k1', type=float, default=1.5)
  p.add_argument('--b', type=float, default=0.75)
  p.add_argument('--tag', default='bm25', help='the run tag (one word)')
  p.add_argument('--on_bad_line', choices=('error', 'skip'), default='error')
  return p


def main(argv) -> int:
  args = parser().parse_args(argv)
  from retrieval import collection_files  # pylint: disable=import-outside-toplevel
  from retrieval.search import bm25, ir_metrics  # pylint: disable=import-outside-toplevel
  docs = collection_files.read_texts(args.corpus, 'documents',
                                     on_bad_line=args.on_bad_line)
  queries = collection_files.read_texts(args.queries, 'queries',
                                        on_bad_line=args.on_bad_line)
  index = bm25.BM25Index(docs.texts, lang=args.lang, k1=args.k1, b=args.b)
  result = index.search(queries.texts, min(args.k, len(docs.ids)))
  run = ir_metrics.run_from_topk(result.indices, queries.ids, docs.ids,
                                 scores=result.scores)
  ir_metrics.write_run(args.output, run, tag=args.tag)
  print(f'{args.output}: {len(queries.ids)} queries x top '
        f'{min(args.k, len(docs.ids))} of {len(docs.ids)} documents',
        file=sys.stderr)
  return 0
