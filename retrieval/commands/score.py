"""score TREC runs against qrels: MRR@10, nDCG@10, Recall@100, MAP

    rosetta score --qrels data/scifact/qrels/test.tsv dense.trec bm25.trec
    rosetta score --qrels qrels.txt run.trec --per_query --json scores.json

pytrec_eval (trec_eval's definitions) through `retrieval.search.ir_metrics`:
relevant means grade >= 1; means are over the qrels' queries with a
relevant document, and such a query missing from a run scores 0. Qrels may
be TREC (`qid 0 docid grade`) or BEIR (`query-id<TAB>corpus-id<TAB>score`,
header optional). A table goes to stdout; `--json` writes
{run path: {"mean": {...}, "per_query": {...}}} (per query with
--per_query, which also prints each query's row).
"""

from __future__ import annotations

import argparse
import json
import os

MEASURES = ('MRR@10', 'nDCG@10', 'Recall@100', 'MAP')


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='rosetta score', description=__doc__.split('\n\n')[0],
      epilog=__doc__.split('\n\n', 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--qrels', required=True, help='TREC or BEIR qrels file')
  p.add_argument('runs', nargs='+', metavar='RUN.trec')
  p.add_argument('--per_query', action='store_true',
                 help='also each query\'s measures')
  p.add_argument('--json', default=None, metavar='OUT',
                 help='write the scores as JSON')
  return p


def score_run(run, qrels) -> tuple[dict, dict]:
  """(means, {qid: measures}) of `MEASURES` for one run."""
  from retrieval.search import ir_metrics  # pylint: disable=import-outside-toplevel
  _, table = ir_metrics.evaluate(run, qrels, ks=(100,), per_query=True)
  ap = ir_metrics.average_precision(run, qrels)
  per_query = {q: {m: (ap[q] if m == 'MAP' else row[m]) for m in MEASURES}
               for q, row in table.items()}
  means = {m: sum(r[m] for r in per_query.values()) / len(per_query)
           for m in MEASURES}
  return means, per_query


def main(argv) -> int:
  args = parser().parse_args(argv)
  from retrieval import collection_files  # pylint: disable=import-outside-toplevel
  from retrieval.search import ir_metrics  # pylint: disable=import-outside-toplevel
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  qrels = collection_files.read_qrels_file(args.qrels)
  if len(set(args.runs)) != len(args.runs):
    raise ValueError('a run is named twice')
  results = {}
  for path in args.runs:
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path}: no such run file')
    run = ir_metrics.read_run(path)
    if not run:
      raise ValueError(f'{path}: an empty run')
    if not set(run) & set(qrels):
      raise ValueError(f'{path}: no query of the run is in {args.qrels} '
                       '(the wrong qrels?)')
    means, per_query = score_run(run, qrels)
    results[path] = {'mean': means, 'queries': len(per_query)}
    if args.per_query:
      results[path]['per_query'] = per_query
  width = max(len('run'), *(len(p) for p in args.runs))
  print(f'{"run":<{width}}  ' + '  '.join(f'{m:>10}' for m in MEASURES) +
        '  queries')
  for path, r in results.items():
    print(f'{path:<{width}}  ' + '  '.join(
        f'{r["mean"][m]:>10.4f}' for m in MEASURES) + f'  {r["queries"]:>7}')
    if args.per_query:
      for q, row in r['per_query'].items():
        print(f'  {q:<{width - 2}}  ' + '  '.join(
            f'{row[m]:>10.4f}' for m in MEASURES))
  if args.json:
    files.atomic_write_json(args.json, {'qrels': args.qrels, 'runs': results},
                            indent=1)
  return 0
