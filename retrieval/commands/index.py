"""encode a corpus with a trained dual encoder into an on-disk index

    rosetta index --model_dir runs/de_scifact --corpus beir:data/scifact \\
        --output runs/scifact_index
    rosetta index ... --passage_length 96 --passage_stride 48   # windows

The index (`retrieval.dense.index_store`) holds embedding shards, the
document ids and the model's identity, so `rosetta search` encodes queries
with the same model and refuses another. Killed at any moment (even
`kill -9`), the same command resumes it from the shards already written.
Several processes (`--coordinator_address ...`, one command per process)
each encode their own shards into the same (shared) directory.
"""

from __future__ import annotations

import argparse
import sys

from retrieval.commands import options


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='rosetta index', description=__doc__.split('\n\n')[0],
      epilog=__doc__.split('\n\n', 1)[1],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model_dir', required=True,
                 help='run directory of a dual-encoder `rosetta train`')
  p.add_argument('--corpus', required=True,
                 help=f'documents: {options.SPEC_HELP}')
  p.add_argument('--output', required=True, help='index directory')
  p.add_argument('--step', type=int, default=None,
                 help='checkpoint step (default: the newest)')
  p.add_argument('--passage_length', type=options.positive, default=None,
                 help='index windows of this many SentencePiece tokens '
                 '(default: one row per document, cut at the trained '
                 'length); a document scores its best window')
  p.add_argument('--passage_stride', type=options.positive, default=None,
                 help='tokens between window starts (default: half the '
                 'length)')
  p.add_argument('--shard_size', type=options.positive, default=4096,
                 help='rows per shard file (the unit of restart)')
  p.add_argument('--batch_size', type=options.positive, default=64,
                 help="documents per encoder call on this process's devices")
  p.add_argument('--dtype', choices=('float32', 'bfloat16'),
                 default='float32')
  p.add_argument('--on_bad_line', choices=('error', 'skip'), default='error')
  p.add_argument('--no_progress', action='store_true')
  options.add_distributed(p)
  return p


def main(argv) -> int:
  args = parser().parse_args(argv)
  if args.passage_stride is not None and args.passage_length is None:
    parser().error('--passage_stride needs --passage_length')
  options.start_distributed(args)
  import jax  # pylint: disable=import-outside-toplevel
  from retrieval import collection_files  # pylint: disable=import-outside-toplevel
  from retrieval.dense import index_store, searcher  # pylint: disable=import-outside-toplevel
  from retrieval.dsi import embeddings  # pylint: disable=import-outside-toplevel
  from retrieval.search import passages  # pylint: disable=import-outside-toplevel
  docs = collection_files.read_texts(args.corpus, 'documents',
                                     on_bad_line=args.on_bad_line)
  model, identity = searcher.load_model(args.model_dir, args.step)
  texts, owner, settings = list(docs.texts), None, None
  if args.passage_length is not None:
    try:
      split = passages.split(texts, model.vocabulary, args.passage_length,
                             args.passage_stride)
    except TypeError as e:
      raise ValueError(f'{args.model_dir}: --passage_length: {e}') from None
    texts, owner = list(split.texts), split.owner
    settings = {'length': split.length, 'stride': split.stride}
  dp = jax.local_device_count()
  batch = -(-args.batch_size // dp) * dp
  manifest = index_store.write(
      embeddings.encoder(model, 'doc', batch), texts, docs.ids, args.output,
      identity=identity, owner=owner, passages=settings,
      shard_size=args.shard_size, batch_size=batch, dtype=args.dtype,
      progress=not args.no_progress and jax.process_index() == 0)
  if jax.process_index() == 0:
    print(f'{args.output}: {manifest["num_docs"]} documents, '
          f'{manifest["num_rows"]} rows x {manifest["dim"]} '
          f'{manifest["dtype"]} in {manifest["num_shards"]} shard(s); model '
          f'{identity["run_dir"]} step {identity["step"]}', file=sys.stderr)
  return 0
