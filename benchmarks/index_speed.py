"""`rosetta index` documents/s vs sentence-transformers' `encode` of an
encoder of the same size, on this machine's CPU, same run.

Rosetta: a byte-level dual encoder of T5 v1.1 small's encoder shape
(`gin/models/t5_1_1_small.gin`: 8 layers, d_model 512, 6 heads of 64,
gated-GELU MLP 1024, mean pooling) is trained for one step (only so that
a run directory with a checkpoint exists) on a synthetic BEIR collection,
then `rosetta index` encodes the corpus (`--no_progress`; the wall time
of the command, model restore and compilation included, and the encode
time alone from a second, warm pass through the same API).
Peer: sentence-transformers over a `transformers` T5EncoderModel of the
same configuration (random weights; speed does not depend on them) with
the ByT5 tokenizer (the same byte tokens) and mean pooling, `encode` at
the same batch size and token length, with torch's default threads.

    python -m benchmarks.index_speed                 # 2,048 documents
    python -m benchmarks.index_speed --docs 512 --length 128

Prints a Markdown table; it measures, it does not assert (the numbers
depend on the machine and on whatever else runs on it: the load average
is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 384         # byte-level (259 ids) padded, as gin/models/tiny.gin


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--docs', type=int, default=2048)
  p.add_argument('--length', type=int, default=128,
                 help='tokens per document (bytes; texts are longer)')
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--workdir', default=None)
  return p.parse_args(argv)


def write_collection(root: str, n: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  words = [''.join(rng.choice('abcdefghijklmnopqrstuvwxyz')
                   for _ in range(rng.randint(3, 9))) for _ in range(2000)]
  os.makedirs(os.path.join(root, 'qrels'), exist_ok=True)
  texts = [' '.join(rng.choice(words) for _ in range(60)) for _ in range(n)]
  with open(os.path.join(root, 'corpus.jsonl'), 'w') as f:
    for i, t in enumerate(texts):
      f.write(json.dumps({'_id': f'd{i}', 'text': t}) + '\n')
  with open(os.path.join(root, 'queries.jsonl'), 'w') as f:
    for i in range(min(n, 64)):
      f.write(json.dumps({'_id': f'q{i}', 'text': texts[i][:40]}) + '\n')
  with open(os.path.join(root, 'qrels', 'train.tsv'), 'w') as f:
    f.write('query-id\tcorpus-id\tscore\n')
    f.writelines(f'q{i}\td{i}\t1\n' for i in range(min(n, 64)))
  return texts


def rosetta(*argv) -> float:
  t = time.perf_counter()
  p = subprocess.run([sys.executable, '-m', 'rosetta', *map(str, argv)],
                     cwd=REPO, capture_output=True, text=True,
                     env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  if p.returncode:
    raise RuntimeError((p.stdout + p.stderr)[-3000:])
  return time.perf_counter() - t


def main(argv=None):
  args = parse_args(argv)
  work = args.workdir or tempfile.mkdtemp(prefix='index_speed_')
  coll, run = os.path.join(work, 'coll'), os.path.join(work, 'de')
  texts = write_collection(coll, args.docs)
  import torch  # pylint: disable=import-outside-toplevel
  print(f'{args.docs:,} documents of {args.length} byte tokens, batch '
        f'{args.batch_size}; {os.cpu_count()} CPUs, torch '
        f'{torch.__version__} ({torch.get_num_threads()} threads); load '
        f'average {os.getloadavg()[0]:.1f}', flush=True)
  if not os.path.isdir(os.path.join(run, 'checkpoints')):
    rosetta('train', '--gin_file=retrieval/dual_encoder_beir_tiny.gin',
            '--gin_file=models/t5_1_1_small.gin',
            f"--gin.pair_tasks.setup.collections=['beir:{coll}']",
            f"--gin.train.model_dir='{run}'", '--gin.train.total_steps=1',
            '--gin.train.batch_size=8', '--gin.train.eval_period=0',
            f'--gin.encoder_decoder.T5Config.vocab_size={VOCAB}',
            f"--gin.train.task_feature_lengths={{'queries': 32, "
            f"'positives': {args.length}, 'negatives': {args.length}}}")
  index = os.path.join(work, 'index')
  wall = rosetta('index', '--model_dir', run, '--corpus', f'beir:{coll}',
                 '--output', index, '--batch_size', args.batch_size,
                 '--no_progress')

  # Warm: the same API `rosetta index` runs, a second pass timed alone.
  import jax  # pylint: disable=import-outside-toplevel
  from retrieval.collection_files import read_texts  # pylint: disable=import-outside-toplevel
  from retrieval.dense import searcher  # pylint: disable=import-outside-toplevel
  from retrieval.dsi import embeddings  # pylint: disable=import-outside-toplevel
  docs = list(read_texts(f'beir:{coll}').texts)
  model, _ = searcher.load_model(run)
  encode = embeddings.encoder(model, 'doc', args.batch_size)
  encode(docs[:args.batch_size])
  t = time.perf_counter()
  ours = encode(docs)
  warm = time.perf_counter() - t
  params = sum(x.size for x in jax.tree.leaves(model.params))

  from sentence_transformers import SentenceTransformer  # pylint: disable=import-outside-toplevel
  from sentence_transformers.sentence_transformer.modules import Pooling, Transformer  # pylint: disable=import-outside-toplevel
  from transformers import ByT5Tokenizer, T5Config, T5EncoderModel  # pylint: disable=import-outside-toplevel
  cfg = T5Config(vocab_size=VOCAB, d_model=512, d_kv=64, d_ff=1024,
                 num_layers=8, num_heads=6, feed_forward_proj='gated-gelu',
                 dropout_rate=0.0)
  peer_dir = os.path.join(work, 'peer')
  T5EncoderModel(cfg).save_pretrained(peer_dir)
  ByT5Tokenizer().save_pretrained(peer_dir)
  st = SentenceTransformer(modules=[
      Transformer(peer_dir, max_seq_length=args.length),
      Pooling(512, pooling_mode='mean')], device='cpu')
  peer_params = sum(p.numel() for p in st.parameters())
  st.encode(docs[:args.batch_size], batch_size=args.batch_size)
  t = time.perf_counter()
  theirs = st.encode(docs, batch_size=args.batch_size)
  peer = time.perf_counter() - t
  assert ours.shape[0] == theirs.shape[0] == args.docs

  print('\n| system | parameters | documents/s | seconds |')
  print('|---|---:|---:|---:|')
  print(f'| `rosetta index` (command wall time: restore, compile, encode, '
        f'write) | {params:,} | {args.docs / wall:,.1f} | {wall:.1f} |')
  print(f'| Rosetta encoder, warm (the API `rosetta index` runs) | '
        f'{params:,} | {args.docs / warm:,.1f} | {warm:.1f} |')
  print(f'| sentence-transformers `encode`, warm | {peer_params:,} | '
        f'{args.docs / peer:,.1f} | {peer:.1f} |')
  print(f'\nload average at the end: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
