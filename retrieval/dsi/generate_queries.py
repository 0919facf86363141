"""sample synthetic queries per document with a query-generation run (DSI-QG)

    rosetta train --gin_file=dsi/qgen_xquad_tiny.gin --gin.train.model_dir="'runs/qgen'"
    rosetta generate-queries --model_dir runs/qgen --output runs/xquad_queries.jsonl \\
        --n 5 --seed 0
    rosetta train --gin_file=dsi/xquad_atomic_tiny.gin --gin.train.model_dir="'runs/dsi'" \\
        --gin.dsi_tasks.setup.synthetic_queries="'runs/xquad_queries.jsonl'"

A trained document -> query generator (`synthetic_queries.qgen_setup`,
gin/dsi/qgen_*.gin) samples n queries for every document of a corpus
(top-k / nucleus sampling, `QueryGenerator.sample`); the output is the
JSONL queries file that `dsi_tasks.setup.synthetic_queries` reads as it
is (`retrieval.dsi.query_files`: doc, language, sample, query, log_prob).

The corpus defaults to the one the generator was trained on (its
`qgen_setup.corpus`); `--corpus` names another ('xquad', 'cranfield',
'beir:<folder>', 'msmarco:<folder>': the DSI run's `dsi_tasks.setup.corpus`,
whose document ids the file must use). The same seed gives the same file
(batch b samples with fold_in(key(seed), b), whatever the progress). The
file is written atomically, after every query is checked.
"""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from retrieval import datasets
from retrieval.dsi import dsi_tasks
from retrieval.dsi import query_files
from retrieval.dsi import synthetic_queries
from rosetta.run.run_dir import RunDir


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog='rosetta generate-queries', description=__doc__.split('\n\n')[0],
      epilog=__doc__.split('\n\n', 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model_dir', required=True,
                 help='run directory of a query-generation `rosetta train`')
  p.add_argument('--output', required=True, help='queries JSONL to write')
  p.add_argument('--corpus', default=None,
                 help="documents to write queries for (default: the "
                 "generator's own qgen_setup.corpus)")
  p.add_argument('--languages', default=None,
                 help='comma-separated document languages (default: those '
                 'the generator was trained on that the corpus has)')
  p.add_argument('--n', type=int, default=5, help='queries per document')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--top_k', type=int, default=10)
  p.add_argument('--top_p', type=float, default=0.95)
  p.add_argument('--temperature', type=float, default=1.0)
  p.add_argument('--max_length', type=int, default=64,
                 help='query tokens at most')
  p.add_argument('--batch_size', type=int, default=64,
                 help='rows per sampling call (documents x n)')
  p.add_argument('--min_grade', type=int, default=1,
                 help="collections: qrels grade of a relevant document "
                 "(as dsi_tasks.setup's)")
  p.add_argument('--step', type=int, default=None,
                 help='checkpoint step (default: the newest good one)')
  return p, p.parse_args(argv)


def check_usage(parser, args) -> None:
  if args.n < 1:
    parser.error(f'--n must be >= 1, got {args.n}')
  if args.batch_size < args.n:
    parser.error(f'--batch_size ({args.batch_size}) must be >= --n '
                 f'({args.n}): a batch holds every sample of a document')
  if args.top_k < 0 or not 0 < args.top_p <= 1 or args.temperature <= 0:
    parser.error('need --top_k >= 0, 0 < --top_p <= 1 and --temperature > 0')
  if args.max_length < 1:
    parser.error(f'--max_length must be >= 1, got {args.max_length}')
  out_dir = os.path.dirname(os.path.abspath(args.output))
  if not os.path.isdir(out_dir):
    parser.error(f'--output {args.output}: folder {out_dir} does not exist')


def _trained_on() -> tuple[str, list[str]]:
  """(corpus, languages) of the generator run's parsed config."""
  import gin  # pylint: disable=import-outside-toplevel
  try:
    corpus = gin.query_parameter('synthetic_queries.qgen_setup.corpus')
  except ValueError:
    corpus = 'xquad'           # qgen_setup's default
  try:
    languages = list(gin.query_parameter(
        'synthetic_queries.qgen_setup.languages'))
  except ValueError:
    languages = list(datasets.XQUAD_LANGUAGES)
  return corpus, languages


def main(argv) -> int:
  parser, args = parse_args(argv)
  check_usage(parser, args)
  if 'synthetic_queries.qgen_setup' not in RunDir(args.model_dir).read_config():
    raise ValueError(f'{args.model_dir}: not a query-generation run (its '
                     'config.gin has no synthetic_queries.qgen_setup; see '
                     'gin/dsi/qgen_*.gin)')
  generator = synthetic_queries.QueryGenerator.from_run(args.model_dir,
                                                        step=args.step)
  trained_corpus, trained_languages = _trained_on()
  corpus_spec = args.corpus or trained_corpus
  wanted = (args.languages.split(',') if args.languages else
            trained_languages)
  corpus = dsi_tasks.read_corpus(corpus_spec, index_languages=wanted,
                                 query_languages=wanted,
                                 min_grade=args.min_grade, field='--corpus')
  languages = [l for l in corpus.doc_texts if l in wanted] if (
      not args.languages) else wanted
  if not languages:   # a collection's texts are 'und'
    languages = list(corpus.doc_texts)
  total = len(corpus.doc_keys) * len(languages)
  with tqdm(total=total, unit='doc', desc='generate-queries',
            disable=None, file=sys.stderr) as bar:
    records = synthetic_queries.generate(
        generator, corpus, args.n, languages=languages, seed=args.seed,
        top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
        max_length=args.max_length, batch_size=args.batch_size,
        progress=bar.update)
  if not records:
    raise ValueError(f'{args.model_dir}: every sampled query was empty; '
                     'nothing written to ' + args.output)
  query_files.write_queries(args.output, records)
  print(f'{args.output}: {len(records)} queries for {len(corpus.doc_keys)} '
        f'{corpus.name} documents in {", ".join(languages)} (n={args.n}, '
        f'seed {args.seed})', file=sys.stderr)
  return 0
