"""rank documents with a DSI run: trie-constrained beam search -> TREC run

    rosetta dsi-retrieve --model_dir runs/dsi --queries beir:data/scifact \\
        --output runs/dsi/test.trec --k 10
    rosetta score --qrels data/scifact/qrels/test.tsv runs/dsi/test.trec

A generative-retrieval run decodes document ids: beam search with
`num_beams = k`, constrained by the trie of the run's docids so every beam
is one (`retrieval.dsi.evaluation.rank_docids`, the Python API's ranking).
Rank = beam order, score = the beam's log-probability (no length penalty
unless `--alpha`); a beam that found no id is dropped, so a query may have
fewer than k documents when the run knows fewer than k.

Everything comes from the run directory: its config (model, docid kind,
text vocabulary, input length) and its docids, which `rosetta train` keeps
in `<run>/assets/` (`dsi_tasks.setup`). Queries: any spec
`retrieval.collection_files.read_texts` reads (a BEIR folder's
queries.jsonl, 'jsonl:<file>', 'tsv:<file>' of id<TAB>text, or a plain
*.jsonl / *.tsv path); a duplicate query id is an error naming the file.
The run file is written atomically; `rosetta fuse` and `rosetta score`
take it as it is.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from tqdm import tqdm

from retrieval import collection_files
from retrieval.dsi import dsi_tasks
from retrieval.dsi import evaluation
from retrieval.search import ir_metrics
from rosetta.run.run_dir import RunDir


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog='rosetta dsi-retrieve',
      description=__doc__.split('\n\n')[0],
      epilog=__doc__.split('\n\n', 1)[1] + '\n' + textwrap.fill(
          'Named dsi-retrieve, not retrieve: `rosetta search` ranks with a '
          'dual-encoder index; this ranks by decoding a DSI run. Queries: '
          + collection_files.TEXT_SPEC_HELP, 78),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model_dir', required=True,
                 help='run directory of a DSI `rosetta train` '
                 '(gin/dsi/*.gin)')
  p.add_argument('--queries', required=True, help='queries to rank for')
  p.add_argument('--output', required=True, help='TREC run file to write')
  p.add_argument('--k', type=int, default=10,
                 help='documents per query = beams (default 10)')
  p.add_argument('--batch_size', type=int, default=32,
                 help='queries per beam search (rounded up to a multiple of '
                 'the devices)')
  p.add_argument('--input_length', type=int, default=None,
                 help="query tokens kept (default: the run's inputs length)")
  p.add_argument('--alpha', type=float, default=0.0,
                 help='GNMT length penalty (default 0: docids are scored '
                 'by their log-probability)')
  p.add_argument('--step', type=int, default=None,
                 help='checkpoint step (default: the newest good one)')
  p.add_argument('--tag', default='dsi', help='run tag (one word)')
  p.add_argument('--on_bad_line', choices=('error', 'skip'), default='error',
                 help='a bad queries line: stop (default) or skip and count')
  return p, p.parse_args(argv)


def check_usage(parser, args) -> None:
  """Mistakes in the invocation: exit status 2 before any work."""
  if args.k < 1:
    parser.error(f'--k must be >= 1, got {args.k}')
  if args.batch_size < 1:
    parser.error(f'--batch_size must be >= 1, got {args.batch_size}')
  if args.input_length is not None and args.input_length < 2:
    parser.error(f'--input_length must be >= 2, got {args.input_length}')
  if not args.tag or any(c.isspace() for c in args.tag):
    parser.error(f'--tag must be one word, got {args.tag!r}')
  out_dir = os.path.dirname(os.path.abspath(args.output))
  if not os.path.isdir(out_dir):
    parser.error(f'--output {args.output}: folder {out_dir} does not exist')
  if os.path.isdir(args.output):
    parser.error(f'--output {args.output} is a folder; name the run file')


def dsi_setup(run, model_dir: str) -> dsi_tasks.DsiSetup:
  """The DSI setup the run's config registered (its train.task mixture)."""
  try:
    return dsi_tasks.last_setup(run.task)
  except KeyError:
    raise ValueError(f'{model_dir}: not a DSI run (its train.task '
                     f'{run.task!r} was not registered by dsi_tasks.setup; '
                     'see gin/dsi/)') from None


def rank(network, setup, texts, *, k: int, input_length: int,
         batch_size: int, alpha: float, partitioner, progress: bool = True
         ) -> list[list[tuple[str, float]]]:
  """`evaluation.rank_docids` batch by batch, with a progress bar."""
  out = []
  with tqdm(total=len(texts), unit='query', desc='dsi-retrieve',
            disable=not progress or None, file=sys.stderr) as bar:
    for start in range(0, len(texts), batch_size):
      chunk = texts[start:start + batch_size]
      out += evaluation.rank_docids(
          network, setup, chunk, input_length=input_length, num_beams=k,
          alpha=alpha, batch_size=batch_size, partitioner=partitioner)
      bar.update(len(chunk))
  return out


def to_run(query_ids, ranked) -> dict[str, dict[str, float]]:
  """{qid: {doc id: beam log-prob}}."""
  return {qid: dict(docs) for qid, docs in zip(query_ids, ranked)}


def main(argv) -> int:
  parser, args = parse_args(argv)
  check_usage(parser, args)
  queries = collection_files.read_texts(args.queries, 'queries',
                                        on_bad_line=args.on_bad_line)
  run = RunDir(args.model_dir).load(step=args.step)
  setup = dsi_setup(run, args.model_dir)
  if not RunDir(args.model_dir).exists('assets'):
    print(f'rosetta dsi-retrieve: {args.model_dir} keeps no docids in '
          'assets/ (trained before runs kept them); using the ids its '
          'config makes again', file=sys.stderr)
  import gin  # pylint: disable=import-outside-toplevel
  input_length = args.input_length or gin.query_parameter(
      'train.task_feature_lengths')['inputs']
  part = run.trainer.partitioner
  dp = evaluation.data_parallel_size(part)
  batch_size = -(-args.batch_size // dp) * dp
  ranked = rank(run.network, setup, list(queries.texts), k=args.k,
                input_length=input_length, batch_size=batch_size,
                alpha=args.alpha, partitioner=part)
  trec = to_run(queries.ids, ranked)
  ir_metrics.write_run(args.output, trec, tag=args.tag)
  found = sum(len(d) for d in trec.values())
  print(f'{args.output}: {len(trec)} queries, {found} documents '
        f'(k={args.k}, step {run.step}, {setup.mapping.kind} docids)',
        file=sys.stderr)
  return 0
