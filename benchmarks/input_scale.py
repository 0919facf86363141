"""Training input at scale: peak memory and examples/s against corpus size.

For parallel corpora of 10k, 1M and 10M lines (Tatoeba English-German
pairs of $ROSETTA_DATA_DIR repeated to the size, one Moses .gz pair per
size, built once in --work_dir), each system feeds the nmt_cpu_small
training input (`InputPipeline`: the experiment's feature lengths, batch
and first-fit packing, shuffled, seed 0) of one en->de task with a
SentencePiece vocabulary trained here (8k pieces, as the experiment's):

  streaming   ParallelCorpus (RecordFileSource): lines read as needed
  in-memory   text_pairs.parallel_text_source: the corpus read whole
  beam cache  `rosetta cache` (Beam DirectRunner) of the streaming task,
              read with use_cached=True (tokenized once, offline)

Each system runs alone in a fresh process (peak RSS = VmHWM of that
process: the system, TensorFlow and JAX), consumes batches for --seconds
after its first batch, and reports examples/s (examples = packed segments)
next to what the nmt_cpu_small train step consumes, measured in the same
run: a few steps of the experiment's model and optimizer (gin) on real
batches of this input. Targets: streaming's peak RSS grows <= 1.2x from
10k to 10M lines; input examples/s >= 3x the train step's.

    python -m benchmarks.input_scale                    # 10k, 1M, 10M
    python -m benchmarks.input_scale --quick            # 10k, 100k; minutes
    python -m benchmarks.input_scale --sizes 10k 1M --seconds 30
    python -m benchmarks.input_scale --cache_max_lines 1M  # skip big caches
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import subprocess
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

SYSTEMS = ('streaming', 'in-memory', 'beam cache')
EXPERIMENT = 'experiments/nmt_cpu_small.gin'
PAIR = 'tatoeba_v2021/deu-eng/tatoeba-test-v2021-08-07'


def parse_size(text: str) -> int:
  """'10k' -> 10_000, '1M' -> 1_000_000, '2500' -> 2500."""
  scale = {'k': 10**3, 'm': 10**6}.get(text[-1:].lower(), 1)
  return int(float(text[:-1] if scale > 1 else text) * scale)


def size_name(n: int) -> str:
  for unit, scale in (('M', 10**6), ('k', 10**3)):
    if n >= scale and n % scale == 0:
      return f'{n // scale}{unit}'
  return str(n)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--sizes', nargs='+', default=None,
                 help='corpus sizes in lines (10k, 1M, 2500, ...); default '
                 '10k 1M 10M')
  p.add_argument('--systems', nargs='+', default=list(SYSTEMS),
                 choices=SYSTEMS)
  p.add_argument('--seconds', type=float, default=None,
                 help='measured seconds of each system after its first '
                 'batch (default 20)')
  p.add_argument('--cache_max_lines', default='10M',
                 help='build the Beam cache only up to this size')
  p.add_argument('--train_steps', type=int, default=None,
                 help='timed train steps after 2 warm-up steps (default 8)')
  p.add_argument('--vocab_size', type=int, default=8000,
                 help="SentencePiece pieces (the experiment's: 8000)")
  p.add_argument('--work_dir', default=os.path.join(
      os.environ.get('TMPDIR', '/tmp'), 'rosetta_input_scale'),
      help='corpora, vocabulary and caches (kept between runs)')
  p.add_argument('--data_dir', default=os.environ.get(
      'ROSETTA_DATA_DIR', os.path.join('..', 'shared', 'data')))
  p.add_argument('--quick', action='store_true',
                 help='defaults of 10k and 100k lines, 5 s each, 3 train '
                 'steps')
  p.add_argument('--json', default=None, help='also write the rows here')
  p.add_argument('--child', default=None, help=argparse.SUPPRESS)
  p.add_argument('--lines', type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  quick = {'sizes': ['10k', '100k'], 'seconds': 5, 'train_steps': 3}
  full = {'sizes': ['10k', '1M', '10M'], 'seconds': 20, 'train_steps': 8}
  for key, value in (quick if args.quick else full).items():
    if getattr(args, key) is None:   # explicit options win over --quick
      setattr(args, key, value)
  args.sizes = sorted({parse_size(s) for s in args.sizes})
  args.cache_max_lines = parse_size(args.cache_max_lines)
  return args


# ------------------------------------------------------------- the data ---

def read_pairs(data_dir: str) -> list[tuple[str, str]]:
  base = os.path.join(data_dir, PAIR)
  with open(base + '.eng', encoding='utf-8') as f:
    en = f.read().split('\n')
  with open(base + '.deu', encoding='utf-8') as f:
    de = f.read().split('\n')
  return [(e.strip(), d.strip()) for e, d in zip(en, de)
          if e.strip() and d.strip()]


def corpus_dir(work_dir: str, lines: int) -> str:
  return os.path.join(work_dir, f'corpus_{size_name(lines)}')


def build_corpus(work_dir: str, data_dir: str, lines: int) -> str:
  """train.{en,de}.gz of `lines` lines: the pairs repeated (once)."""
  out = corpus_dir(work_dir, lines)
  done = os.path.join(out, 'DONE')
  if os.path.exists(done):
    return out
  os.makedirs(out, exist_ok=True)
  pairs = read_pairs(data_dir)
  for side, lang in ((0, 'en'), (1, 'de')):
    block = ''.join(p[side] + '\n' for p in pairs).encode()
    whole, rest = divmod(lines, len(pairs))
    tail = ''.join(p[side] + '\n' for p in pairs[:rest]).encode()
    with gzip.open(os.path.join(out, f'train.{lang}.gz'), 'wb',
                   compresslevel=1) as f:
      for _ in range(whole):
        f.write(block)
      f.write(tail)
  with open(done, 'w') as f:
    f.write(str(lines))
  return out


def vocab_path(work_dir: str) -> str:
  return os.path.join(work_dir, 'spm_de_en.model')


def build_vocab(work_dir: str, data_dir: str, size: int) -> str:
  path = vocab_path(work_dir)
  if not os.path.exists(path):
    from rosetta import vocab
    from rosetta.data.languages import LANGUAGES
    pairs = read_pairs(data_dir)
    texts = {'en': [e for e, _ in pairs], 'de': [d for _, d in pairs]}
    vocab.train_sentencepiece(
        vocab.balanced_sample(texts, per_language=20000), path,
        vocab_size=size, language_tokens=[l.code for l in LANGUAGES],
        fit_vocab_size=True)
  return path


# ------------------------------------------------- child: one system ---

def register(work_dir: str, lines: int, system: str) -> str:
  """The en->de task of `system` on the corpus of `lines` lines."""
  import seqio
  from rosetta import vocab
  from rosetta.data import parallel_corpus, text_pairs
  from translation import tasks
  voc = vocab.load_vocabulary(vocab_path(work_dir), languages=['en', 'de'])
  folder = corpus_dir(work_dir, lines)
  if system == 'in-memory':
    name = f'scale_memory_{size_name(lines)}_translate_en_de'
    source = text_pairs.parallel_text_source(
        {'train': (f'{folder}/train.en.gz', f'{folder}/train.de.gz')})
    tasks.register_task(name, source, voc, 'de')
    return name
  corpus = parallel_corpus.ParallelCorpus(
      name=f'scale_{size_name(lines)}', format='moses',
      splits={'train': f'{folder}/train.{{lang}}.gz'})
  (name,) = tasks.register_translation_tasks(voc, corpus, 'en-de')
  if system == 'beam cache':
    seqio.add_global_cache_dirs([os.path.join(work_dir, 'cache')])
  return name


def peak_rss_mib() -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmHWM:'):
        return int(line.split()[1]) / 1024
  return float('nan')


def experiment_settings(vocab_path: str):
  """(model, optimizer, schedule, train.* settings) of nmt_cpu_small."""
  import gin
  from rosetta import gin_utils
  from rosetta.run import run_dir
  gin_utils.parse([EXPERIMENT], [f"nmt.setup.vocab_path = '{vocab_path}'"],
                  finalize=False)
  model = run_dir.configured('train.model', EXPERIMENT)
  settings = {
      'task_feature_lengths': gin.query_parameter(
          'train.task_feature_lengths'),
      'batch_size': gin.query_parameter('train.batch_size'),
      'converter': getattr(model, 'FEATURE_CONVERTER_CLS', None)}
  return model, settings


def examples_in(batch) -> int:
  """Packed examples of a batch: distinct segment ids per row."""
  import numpy as np
  seg = np.asarray(batch['decoder_segment_ids'])
  return int(seg.max(axis=1).sum())


def child_input(args) -> dict:
  import jax
  from rosetta import allocator, partitioning
  from rosetta.data import pipeline
  start = time.perf_counter()
  _, settings = experiment_settings(vocab_path(args.work_dir))
  name = register(args.work_dir, args.lines, args.child)
  pipe = pipeline.InputPipeline(
      name, split='train',
      task_feature_lengths=settings['task_feature_lengths'],
      global_batch_size=settings['batch_size'],
      partitioner=partitioning.make_mesh(), seed=0, shuffle=True,
      pack=True, use_cached=args.child == 'beam cache',
      feature_converter_cls=settings['converter'])
  batch = next(pipe)
  jax.block_until_ready(batch)
  first_s = time.perf_counter() - start
  batches = examples = 0
  t0 = time.perf_counter()
  while time.perf_counter() - t0 < args.seconds:
    batch = next(pipe)
    jax.block_until_ready(batch)
    batches += 1
    examples += examples_in(batch)
  wall = time.perf_counter() - t0
  return {'system': args.child, 'lines': args.lines, 'first_batch_s': first_s,
          'batches_per_s': batches / wall, 'examples_per_s': examples / wall,
          'examples_per_batch': examples / max(batches, 1),
          'peak_rss_mib': peak_rss_mib(), 'malloc': allocator.loaded()}


def child_train(args) -> dict:
  """nmt_cpu_small's train step on batches of the streaming input."""
  import gin
  import jax
  from rosetta import allocator, partitioning, trainer
  from rosetta.data import pipeline
  from rosetta.run import run_dir
  model, settings = experiment_settings(vocab_path(args.work_dir))
  optimizer = run_dir.configured('train.optimizer', EXPERIMENT)
  schedule = run_dir.configured('train.schedule', EXPERIMENT)
  mesh = partitioning.make_mesh()
  name = register(args.work_dir, args.lines, 'streaming')
  pipe = pipeline.InputPipeline(
      name, split='train',
      task_feature_lengths=settings['task_feature_lengths'],
      global_batch_size=settings['batch_size'], partitioner=mesh, seed=0,
      shuffle=True, pack=True, feature_converter_cls=settings['converter'])
  tr = trainer.Trainer(model, partitioning.Partitioner(mesh), optimizer,
                       schedule, seed=gin.query_parameter('train.seed'))
  state = tr.init_state()
  batches = [next(pipe) for _ in range(args.train_steps + 2)]
  for b in batches[:2]:                       # compile, warm up
    state, metrics = tr.train_step(state, b)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for b in batches[2:]:
    state, metrics = tr.train_step(state, b)
  jax.block_until_ready((state, metrics))
  wall = time.perf_counter() - t0
  examples = sum(examples_in(b) for b in batches[2:])
  return {'system': 'train step', 'steps_per_s': args.train_steps / wall,
          'examples_per_s': examples / wall,
          'examples_per_batch': examples / args.train_steps,
          'malloc': allocator.loaded()}


def child_cache(args) -> dict:
  from rosetta import allocator
  from rosetta.data import beam_cache
  import seqio
  import tensorflow as tf
  name = register(args.work_dir, args.lines, 'streaming')
  cache = os.path.join(args.work_dir, 'cache')
  t0 = time.perf_counter()
  plans = beam_cache.cache_tasks([name], cache, splits=['train'])
  build_s = time.perf_counter() - t0
  out = beam_cache.task_dir(cache, name)
  with tf.io.gfile.GFile(seqio.get_cached_stats_path(out, 'train')) as f:
    examples = json.load(f)['examples']
  size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
  return {'system': 'cache build', 'lines': args.lines,
          'built': bool(plans), 'build_s': build_s,
          'examples_per_s': examples / build_s if plans else None,
          'cache_mib': size / 2**20, 'peak_rss_mib': peak_rss_mib(),
          'malloc': allocator.loaded()}


CHILDREN = {'streaming': child_input, 'in-memory': child_input,
            'beam cache': child_input, 'train': child_train,
            'cache': child_cache}


# ------------------------------------------------------------ parent ---

def run_child(args, kind: str, lines: int) -> dict:
  from rosetta import allocator
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.update(allocator.preload_environment(env) or {})
  cmd = [sys.executable, '-m', 'benchmarks.input_scale', '--child', kind,
         '--lines', str(lines), '--work_dir', args.work_dir,
         '--seconds', str(args.seconds), '--train_steps',
         str(args.train_steps), '--data_dir', args.data_dir]
  start = time.perf_counter()
  done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        check=False)
  for line in reversed(done.stdout.splitlines()):
    if line.startswith('RESULT '):
      result = json.loads(line[len('RESULT '):])
      result['process_s'] = time.perf_counter() - start
      return result
  raise RuntimeError(f'{kind} {lines}: child failed ({done.returncode}):\n'
                     f'{done.stderr[-3000:]}')


def machine() -> str:
  from benchmarks.cpu_budget import cpu_model
  with open('/proc/meminfo') as f:
    total = int(f.readline().split()[1]) / 2**20
  return (f'{cpu_model()}, {os.cpu_count()} cores, {total:.0f} GiB, load '
          f'average {os.getloadavg()[0]:.1f}')


def table(rows: list[dict], train: dict) -> list[str]:
  """The markdown table and the two target ratios."""
  base = {r['system']: r['peak_rss_mib'] for r in rows
          if r['lines'] == min(x['lines'] for x in rows)}
  out = ['| lines | system | first batch (s) | examples/s | batches/s | '
         'peak RSS (MiB) | RSS vs smallest | input / train step |',
         '|---:|---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    if r.get('skipped'):
      out.append(f'| {r["lines"]:,} | {r["system"]} | {r["skipped"]} '
                 '| | | | | |')
      continue
    growth = r['peak_rss_mib'] / base[r['system']] if r['system'] in base \
        else float('nan')
    out.append(
        f'| {r["lines"]:,} | {r["system"]} | {r["first_batch_s"]:.1f} | '
        f'{r["examples_per_s"]:,.0f} | {r["batches_per_s"]:.1f} | '
        f'{r["peak_rss_mib"]:,.0f} | {growth:.2f}x | '
        f'{r["examples_per_s"] / train["examples_per_s"]:.1f}x |')
  out.append('')
  stream = sorted((r for r in rows if r['system'] == 'streaming'
                   and not r.get('skipped')), key=lambda r: r['lines'])
  if len(stream) > 1:
    g = stream[-1]['peak_rss_mib'] / stream[0]['peak_rss_mib']
    out.append(f'- streaming peak RSS {size_name(stream[0]["lines"])} -> '
               f'{size_name(stream[-1]["lines"])} lines: **{g:.2f}x** '
               '(target <= 1.2x)')
  measured = [r for r in rows if not r.get('skipped')]
  worst = min(measured, key=lambda r: r['examples_per_s'])
  out.append(
      f'- train step (nmt_cpu_small): {train["steps_per_s"]:.2f} steps/s = '
      f'{train["examples_per_s"]:,.0f} examples/s '
      f'({train["examples_per_batch"]:.0f} packed examples a batch); slowest '
      f'input ({worst["system"]}, {worst["lines"]:,} lines) '
      f'**{worst["examples_per_s"] / train["examples_per_s"]:.1f}x** that '
      '(target >= 3x)')
  return out


def main(argv=None):
  args = parse_args(argv)
  if args.child:
    result = CHILDREN[args.child](args)
    print('RESULT ' + json.dumps(result), flush=True)
    return
  os.makedirs(args.work_dir, exist_ok=True)
  print(f'# input_scale, {datetime.date.today()}, {machine()}', flush=True)
  t = time.perf_counter()
  build_vocab(args.work_dir, args.data_dir, args.vocab_size)
  for n in args.sizes:
    build_corpus(args.work_dir, args.data_dir, n)
  print(f'corpora {[size_name(n) for n in args.sizes]} and vocabulary ready '
        f'in {args.work_dir} ({time.perf_counter() - t:.0f} s)', flush=True)
  caches, rows = [], []
  for n in args.sizes:
    if 'beam cache' in args.systems and n <= args.cache_max_lines:
      c = run_child(args, 'cache', n)
      caches.append(c)
      print(f'  cache {size_name(n)}: '
            + (f'{c["build_s"]:.0f} s, {c["examples_per_s"]:,.0f} '
               'examples/s' if c['built'] else 'built before (reused)')
            + f' (process {c["process_s"]:.0f} s)',
            flush=True)
    for system in args.systems:
      if system == 'beam cache' and n > args.cache_max_lines:
        rows.append({'system': system, 'lines': n,
                     'skipped': f'not cached (> --cache_max_lines)'})
        continue
      r = run_child(args, system, n)
      rows.append(r)
      print(f'  {size_name(n)} {system}: {r["examples_per_s"]:,.0f} '
            f'examples/s, peak RSS {r["peak_rss_mib"]:,.0f} MiB (process '
            f'{r["process_s"]:.0f} s)', flush=True)
  train = run_child(args, 'train', min(args.sizes))
  print(f'\nmalloc: {train["malloc"]} (every process, as `rosetta train`); '
        f'load average at the end {os.getloadavg()[0]:.1f}\n')
  print('\n'.join(table(rows, train)))
  if caches:
    print('\n| lines | cache build (s) | examples/s | cache size (MiB) | '
          'peak RSS (MiB) |\n|---:|---:|---:|---:|---:|')
    for c in caches:
      if c['built']:
        print(f'| {c["lines"]:,} | {c["build_s"]:.0f} | '
              f'{c["examples_per_s"]:,.0f} | {c["cache_mib"]:,.0f} | '
              f'{c["peak_rss_mib"]:,.0f} |')
      else:
        print(f'| {c["lines"]:,} | (built before) | | {c["cache_mib"]:,.0f}'
              ' | |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'rows': rows, 'train': train, 'caches': caches}, f,
                indent=1)


if __name__ == '__main__':
  main()
