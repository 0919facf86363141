"""search a `rosetta index` for queries into a TREC run

    rosetta search --index runs/scifact_index --queries beir:data/scifact \\
        --output runs/scifact.dense.trec --k 100
    rosetta search ... --mode verified --hubness csls

Queries are encoded with the model that built the index (its manifest
names it); `--model_dir` may name a copy of that run, and another model is
refused. Modes: exact (the stored dtype), bfloat16 (a bfloat16 copy: half
the memory traffic), verified (float32 results at bfloat16 speed; a
float32 index). Hubness corrections (`retrieval.search.hubness`) use the
queries themselves as the query bank unless `--query_bank` names others;
dbnorm also needs `--gallery_bank` (documents other than the corpus).
With an index sharded over hosts, run one command per process with the
same options (`--coordinator_address ...`); process 0 writes the run.
"""

from __future__ import annotations

import argparse
import sys

from retrieval.commands import options
from retrieval.dense.searcher import HUBNESS, MODES


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='rosetta search', description=__doc__.split('\n\n')[0],
      epilog=__doc__.split('\n\n', 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--index', required=True,
                 help='directory written by `rosetta index`')
  p.add_argument('--queries', required=True,
                 help=f'queries: {options.SPEC_HELP}')
  p.add_argument('--output', required=True, help='TREC run file to write')
  p.add_argument('--k', type=options.positive, default=100,
                 help='documents per query (at most the corpus size)')
  p.add_argument('--mode', choices=MODES, default='exact')
  p.add_argument('--hubness', choices=HUBNESS, default=None)
  p.add_argument('--hubness_k', type=options.positive, default=10,
                 help='csls: neighbours in its means')
  p.add_argument('--beta', type=float, default=20.0,
                 help='inverted_softmax / dbnorm: the inverse temperature')
  p.add_argument('--query_bank', default=None,
                 help='queries for the hubness statistics (default: --queries)')
  p.add_argument('--gallery_bank', default=None,
                 help='dbnorm: documents for its gallery bank')
  p.add_argument('--model_dir', default=None,
                 help="the query encoder's run (default: the index's own); "
                 'it must be the same model')
  p.add_argument('--batch_size', type=options.positive, default=32,
                 help='queries per encoder call')
  p.add_argument('--tag', default='dense', help='the run tag (one word)')
  p.add_argument('--on_bad_line', choices=('error', 'skip'), default='error')
  p.add_argument('--no_progress', action='store_true')
  options.add_distributed(p)
  return p


def main(argv) -> int:
  p = parser()
  args = p.parse_args(argv)
  if args.gallery_bank and args.hubness != 'dbnorm':
    p.error('--gallery_bank is for --hubness dbnorm')
  if args.hubness == 'dbnorm' and not args.gallery_bank:
    p.error('--hubness dbnorm needs --gallery_bank (documents other than '
            'the corpus)')
  options.start_distributed(args)
  import jax  # pylint: disable=import-outside-toplevel
  from retrieval import collection_files  # pylint: disable=import-outside-toplevel
  from retrieval.dense import searcher  # pylint: disable=import-outside-toplevel
  from retrieval.search import ir_metrics  # pylint: disable=import-outside-toplevel
  queries = collection_files.read_texts(args.queries, 'queries',
                                        on_bad_line=args.on_bad_line)
  s = searcher.Searcher.open(args.index, args.model_dir, mode=args.mode,
                             batch_size=args.batch_size)
  emb = s.encode_queries(queries.texts)
  correction = None
  if args.hubness:
    bank = emb if args.query_bank is None else s.encode_queries(
        collection_files.read_texts(args.query_bank, 'queries',
                                    on_bad_line=args.on_bad_line).texts)
    gallery = None if args.gallery_bank is None else s.encode_documents(
        collection_files.read_texts(args.gallery_bank, 'documents',
                                    on_bad_line=args.on_bad_line).texts)
    correction = s.correction(args.hubness, bank, gallery, k=args.hubness_k,
                              beta=args.beta)
  main_process = jax.process_index() == 0
  result = s.search(emb, args.k, correction=correction,
                    progress=main_process and not args.no_progress)
  if main_process:
    ir_metrics.write_run(args.output, s.run(queries.ids, result),
                         tag=args.tag)
    print(f'{args.output}: {len(queries.ids)} queries x top '
          f'{result.indices.shape[1]} of {len(s.index.doc_ids)} documents '
          f'({args.mode}{", " + args.hubness if args.hubness else ""})',
          file=sys.stderr)
  return 0
