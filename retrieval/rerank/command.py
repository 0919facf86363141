"""rerank a first-stage TREC run with a T5 reranker (monoT5 / RankT5)

    rosetta bm25 --corpus beir:data/scifact --queries beir:data/scifact \\
        --output runs/bm25.trec --k 100
    rosetta rerank --model_dir runs/monot5 --run runs/bm25.trec \\
        --corpus beir:data/scifact --queries beir:data/scifact \\
        --depth 100 --output runs/reranked.trec
    rosetta rerank ... --interpolate 0.7
    rosetta rerank ... --tune_interpolation \\
        --dev_qrels data/scifact/qrels/dev.tsv

Each query's --depth best documents of the first-stage run (trec_eval's
order) are scored by the run's reranker, the pairs formatted and cut as it
trained them (its vocabulary, template and pair length), --batch_size
pairs a step over every device, the last batch padded; the result is
written as a TREC run, best first, atomically (`rosetta score` and
`rosetta fuse` take it as it is). A query's documents beyond --depth are
left out.

The score is the reranker's. With --interpolate W it is W * reranker +
(1 - W) * first stage, each min-max normalised per query (W = 0 keeps the
first stage's order); --tune_interpolation picks W on a grid of 0, 0.05,
..., 1 by --tune_metric over development queries training never saw
(--dev_qrels; their texts from --dev_queries and their candidates from
--dev_run, by default --queries and --run) and prints it.

A run line naming a document the corpus lacks, or a query the queries
lack, stops the command naming the file and line; so does a malformed line.
"""

from __future__ import annotations

import argparse
import os
import sys

from retrieval.commands import options

TAG = 'rerank'


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='rosetta rerank', description=__doc__.split('\n\n')[0],
      epilog=__doc__.split('\n\n', 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model_dir', required=True,
                 help='run directory of a reranker (gin/rerank/*.gin)')
  p.add_argument('--run', required=True, metavar='FIRST.trec',
                 help='the first-stage TREC run to rerank')
  p.add_argument('--corpus', required=True,
                 help=f'documents: {options.SPEC_HELP}')
  p.add_argument('--queries', required=True,
                 help=f'queries: {options.SPEC_HELP}')
  p.add_argument('--output', required=True, metavar='RERANKED.trec',
                 help='TREC run file to write')
  p.add_argument('--depth', type=int, default=100,
                 help='first-stage documents reranked per query (default '
                 '100)')
  p.add_argument('--batch_size', type=int, default=64,
                 help='pairs per step (rounded up to a multiple of the '
                 'devices; default 64)')
  p.add_argument('--step', type=int, default=None,
                 help='checkpoint step (default: the newest good one)')
  p.add_argument('--overlay', action='append', default=[], metavar='RUN',
                 help='a run whose own parameters replace the model\'s, '
                 'e.g. the target language\'s adapter under a task adapter '
                 '(repeatable)')
  p.add_argument('--length', type=int, default=None,
                 help="tokens per pair (default: the run's pairs length)")
  p.add_argument('--interpolate', type=float, default=None, metavar='W',
                 help='W * reranker + (1 - W) * first stage, normalised')
  p.add_argument('--tune_interpolation', action='store_true',
                 help='choose W on development qrels (--dev_qrels)')
  p.add_argument('--dev_qrels', default=None,
                 help='development qrels (TREC or BEIR) for the tuning')
  p.add_argument('--dev_queries', default=None,
                 help='development queries (default: --queries)')
  p.add_argument('--dev_run', default=None,
                 help='first-stage run of the development queries '
                 '(default: --run)')
  p.add_argument('--tune_metric', default='MRR@10',
                 choices=('MRR@10', 'nDCG@10'),
                 help='what the tuning maximises (default MRR@10)')
  p.add_argument('--tag', default=TAG, help=f'run tag (default {TAG})')
  p.add_argument('--on_bad_line', choices=('error', 'skip'), default='error',
                 help='a bad corpus / queries line: stop (default) or skip')
  return p


def check_usage(p: argparse.ArgumentParser, args) -> None:
  """Mistakes in the invocation: exit status 2 before any work."""
  if args.depth < 1:
    p.error(f'--depth must be >= 1, got {args.depth}')
  if args.batch_size < 1:
    p.error(f'--batch_size must be >= 1, got {args.batch_size}')
  if args.length is not None and args.length < 4:
    p.error(f'--length must be >= 4, got {args.length}')
  if args.interpolate is not None and not 0.0 <= args.interpolate <= 1.0:
    p.error(f'--interpolate must be in [0, 1], got {args.interpolate}')
  if args.interpolate is not None and args.tune_interpolation:
    p.error('--interpolate and --tune_interpolation exclude each other')
  if args.tune_interpolation and not args.dev_qrels:
    p.error('--tune_interpolation needs --dev_qrels (development queries '
            'kept out of training)')
  dev = [f for f in ('dev_qrels', 'dev_queries', 'dev_run')
         if getattr(args, f)]
  if dev and not args.tune_interpolation:
    p.error(f'--{dev[0]} is only read with --tune_interpolation')
  if not args.tag or any(c.isspace() for c in args.tag):
    p.error(f'--tag must be one word, got {args.tag!r}')
  out_dir = os.path.dirname(os.path.abspath(args.output))
  if not os.path.isdir(out_dir):
    p.error(f'--output {args.output}: folder {out_dir} does not exist')
  if os.path.isdir(args.output):
    p.error(f'--output {args.output} is a folder; name the run file')
  if not os.path.isdir(args.model_dir):
    p.error(f'--model_dir {args.model_dir}: no such folder')


def main(argv) -> int:
  p = parser()
  args = p.parse_args(argv)
  check_usage(p, args)
  import jax  # pylint: disable=import-outside-toplevel
  from retrieval import collection_files  # pylint: disable=import-outside-toplevel
  from retrieval.rerank import rerank_tasks, scoring  # pylint: disable=import-outside-toplevel
  from retrieval.search import ir_metrics  # pylint: disable=import-outside-toplevel

  def texts(spec, what):
    got = collection_files.read_texts(spec, what,
                                      on_bad_line=args.on_bad_line)
    return got.path, dict(zip(got.ids, got.texts))

  queries_path, queries = texts(args.queries, 'queries')
  corpus_path, corpus = texts(args.corpus, 'documents')

  def read_run(path, query_texts=None, where=''):
    return rerank_tasks.read_first_stage_run(
        path, corpus, query_texts, corpus=f'the corpus {corpus_path}',
        queries=f'the queries {where}')
  first = rerank_tasks.top(read_run(args.run, queries, queries_path),
                           args.depth)
  dev_first = dev_queries = dev_qrels = None
  if args.tune_interpolation:
    dev_qrels = collection_files.read_qrels_file(args.dev_qrels)
    where, dev_queries = ((queries_path, queries) if not args.dev_queries
                          else texts(args.dev_queries, 'queries'))
    judged = {q for q, docs in dev_qrels.items()
              if any(g >= 1 for g in docs.values())}
    dev_path = args.dev_run or args.run
    dev_run = first if dev_path == args.run else read_run(dev_path)
    dev_first = rerank_tasks.top(
        {q: d for q, d in dev_run.items() if q in judged}, args.depth)
    if not dev_first:
      raise ValueError(f'{dev_path}: no query with a relevant document in '
                       f'{args.dev_qrels} is in the run')
    lacking = sorted(q for q in dev_first if q not in dev_queries)
    if lacking:
      raise ValueError(f'{args.dev_qrels}: query {lacking[0]!r} (in '
                       f'{dev_path}) has no text in the queries {where}')

  scorer = scoring.RerankScorer.from_run(
      args.model_dir, step=args.step, batch_size=args.batch_size,
      length=args.length, progress=True, overlays=args.overlay)
  reranked = scorer.rerank(first, queries, corpus, args.depth)
  weight = args.interpolate
  if args.tune_interpolation:
    if dev_path != args.run or args.dev_queries:
      dev_reranked = scorer.rerank(dev_first, dev_queries, corpus,
                                   args.depth)
    else:   # the development queries are in the run: scored already
      dev_reranked = {q: reranked[q] for q in dev_first}
    weight, table = scoring.tune_interpolation(dev_first, dev_reranked,
                                               dev_qrels, args.tune_metric)
    print(f'interpolation weight {weight:g}: development {args.tune_metric} '
          f'{table[weight]:.4f} (reranker alone {table[1.0]:.4f}, first '
          f'stage alone {table[0.0]:.4f}; {len(dev_reranked)} queries of '
          f'{args.dev_qrels})')
  final = (reranked if weight is None
           else scoring.interpolated(first, reranked, weight))
  if jax.process_index() == 0:
    ir_metrics.write_run(args.output, final, tag=args.tag)
  how = ('reranker scores' if weight is None
         else f'interpolated with the first stage, weight {weight:g}')
  print(f'{args.output}: {len(final)} queries x top {args.depth} of '
        f'{args.run} reranked by {args.model_dir} (step {scorer.step}; '
        f'{how})', file=sys.stderr)
  return 0
