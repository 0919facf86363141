"""Exact search speed: Rosetta (`retrieval.search.exact`) vs faiss-cpu `IndexFlatIP`.

Both search the same corpus of random normal, L2-normalised float32 vectors
(fixed seed) for the same queries, exact maximum inner product, top-k, on
this machine's CPU, in the same run: the timed runs of the systems
alternate so that load from elsewhere hits all of them. Rosetta searches on
one device (`search.shard_corpus` default), with float32 and with bfloat16
corpus storage (queries cast to bfloat16, float32 accumulation); faiss
always searches float32. Reported per system:

- queries/s, best and median of `--repeats` timed runs over all queries,
  the ratio to the fastest faiss row's (best / best, median / median), and
  the median CPU seconds per run (all threads; under load from other jobs
  wall time includes waiting, CPU time is the work). faiss runs with 1
  OpenMP thread and with its default (one per CPU): on a busy machine its
  spinning OpenMP threads can make the default several times slower than
  one thread, so the ratio is taken against whichever is faster;
- Rosetta's compile time (tracing + lowering + XLA compilation, from
  `jax.monitoring` events), apart: timed runs reuse the compiled program;
- agreement: recall@k of Rosetta's top-k against faiss's (set overlap; an
  exact search agrees up to near-ties that float32 summation order can
  flip), the share of queries with the identical ranked list, and the
  largest score difference. A bfloat16 corpus ranks the bf16-rounded
  vectors, so it is also compared with faiss over those rounded vectors;
- memory: bytes of the corpus as stored (Rosetta's device array, faiss's
  index), XLA's temporary buffers for one compiled search call, and, with
  `--memory` (default on), resident memory measured in a fresh subprocess
  per system: what holding the searchable corpus adds to the RSS once the
  NumPy source is freed (after one 1-query search: JAX copies an array
  placed from NumPy at its first use), the peak RSS added by two searches
  of `--memory-queries` queries (the first compiles) and what stays
  resident after them (compiled code, buffers kept by the allocator).

    python -m benchmarks.search --quick          # 100k docs, ~1 min
    python -m benchmarks.search                  # 1M x 256, 1,024 queries, k=100
    python -m benchmarks.search --dtype bfloat16 --repeats 5 --no-memory

`--index` (default on) adds the `rosetta search` path: the same corpus
written as a `rosetta index` directory, read back and searched through
`retrieval.dense.searcher.Searcher` (its queries/s ratio to the Python API
row of the same dtype is printed at the end).

Prints Markdown tables. It measures, it does not assert; the numbers depend
on the machine and on whatever else runs on it (the load average is printed
at the start and at the end).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np


DTYPES = ('float32', 'bfloat16')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--n-docs', type=int, default=1_000_000)
  p.add_argument('--dim', type=int, default=256)
  p.add_argument('--queries', type=int, default=1024)
  p.add_argument('--k', type=int, default=100)
  p.add_argument('--dtype', nargs='+', default=list(DTYPES), choices=DTYPES,
                 help="Rosetta's corpus storage dtype(s)")
  p.add_argument('--batch-size', type=int, default=None,
                 help="Rosetta's queries per compiled call (default: "
                      "search()'s default)")
  p.add_argument('--faiss-threads', type=int, nargs='+', default=None,
                 help='OpenMP threads for faiss, one row each (default: 1 '
                      'and its default)')
  p.add_argument('--repeats', type=int, default=3,
                 help='timed runs per system, interleaved')
  p.add_argument('--verified', action=argparse.BooleanOptionalAction,
                 default=True,
                 help='also time exact float32 search through verified '
                      'bfloat16 candidates (retrieval/search/verified.py)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--index', action=argparse.BooleanOptionalAction,
                 default=True,
                 help='also the `rosetta search` path: the corpus written '
                 'as a `rosetta index` directory (retrieval.dense.'
                 'index_store) and searched as the command does (read back '
                 'from the shards, placed by `DenseIndex.corpus`)')
  p.add_argument('--quick', action='store_true',
                 help='100k documents (other sizes unchanged)')
  p.add_argument('--memory', action=argparse.BooleanOptionalAction,
                 default=True, help='measure RSS in one subprocess per system')
  p.add_argument('--memory-queries', type=int, default=256,
                 help='queries searched in each memory subprocess (the '
                      'peak of a search comes from one batch)')
  p.add_argument('--memory-child', default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.quick:
    args.n_docs = 100_000
  return args


def unit_vectors(n: int, d: int, seed: int, chunk: int = 1 << 16):
  """[n, d] float32 rows ~ normal, L2-normalised; built in chunks so that
  the peak is the output plus one chunk."""
  rng = np.random.default_rng(seed)
  out = np.empty((n, d), np.float32)
  for start in range(0, n, chunk):
    x = rng.standard_normal((min(chunk, n - start), d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out[start:start + x.shape[0]] = x
  return out


def make_data(args):
  return (unit_vectors(args.n_docs, args.dim, args.seed),
          unit_vectors(args.queries, args.dim, args.seed + 1))


def bf16_rounded(x: np.ndarray) -> np.ndarray:
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  return x.astype(ml_dtypes.bfloat16).astype(np.float32)




# --- memory ---------------------------------------------------------------

def _status_kib(field: str) -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  raise KeyError(field)


def _reset_peak_rss() -> bool:
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')        # resets VmHWM to the current RSS (Linux >= 4.0)
    return True
  except OSError:
    return False


def memory_child(args) -> dict:
  """Runs in a fresh process: RSS added by holding the corpus searchable
  (source array freed) and peak RSS added by searching all queries."""
  system = args.memory_child
  if system == 'faiss':
    import faiss  # pylint: disable=import-outside-toplevel
  else:
    import jax  # pylint: disable=import-outside-toplevel
    from retrieval.search import exact as search  # pylint: disable=import-outside-toplevel
    jax.devices()                        # the backend starts before `base`
  corpus, queries = make_data(args)
  queries = queries[:args.memory_queries]
  gc.collect()
  base = _status_kib('VmRSS')          # imports + queries + NumPy corpus
  source_kib = corpus.nbytes / 1024
  if system == 'faiss':
    index = faiss.IndexFlatIP(args.dim)
    index.add(corpus)
    run = lambda: index.search(queries, args.k)
  else:
    sharded = search.shard_corpus(corpus, dtype=system)
    kw = {} if args.batch_size is None else {'batch_size': args.batch_size}
    run = lambda: search.search(sharded, queries, k=args.k, **kw)
  del corpus
  gc.collect()
  if system != 'faiss':
    # JAX on CPU places a NumPy array zero-copy and copies it into its own
    # buffer at the first computation that reads it (a one-off transient
    # of the corpus size): done here, apart from the measured searches.
    search.search(sharded, queries[:1], k=args.k, **kw)
    gc.collect()
  holding = _status_kib('VmRSS')
  if not _reset_peak_rss():
    return {'error': 'cannot reset the peak RSS (/proc/self/clear_refs)'}
  run()         # Rosetta: compiles, allocates its buffers
  run()
  gc.collect()
  return {'held_mib': (holding - base + source_kib) / 1024,
          'peak_extra_mib': (_status_kib('VmHWM') - holding) / 1024,
          'retained_extra_mib': (_status_kib('VmRSS') - holding) / 1024}


def measure_memory(args, system: str) -> dict:
  cmd = [sys.executable, '-m', 'benchmarks.search', '--memory-child', system,
         '--n-docs', str(args.n_docs), '--dim', str(args.dim), '--queries',
         str(args.queries), '--k', str(args.k), '--seed', str(args.seed),
         '--memory-queries', str(args.memory_queries)]
  if args.batch_size is not None:
    cmd += ['--batch-size', str(args.batch_size)]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=repo)
  out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       check=False)
  if out.returncode != 0:
    return {'error': out.stderr.strip().splitlines()[-1:] or ['failed']}
  return json.loads(out.stdout.strip().splitlines()[-1])


def xla_temp_bytes(search, corpus, k: int, batch_size: int | None,
                   n_queries: int):
  """Temporary buffers of one compiled search call (XLA's memory analysis),
  or None where this version of `retrieval.search.exact` does not expose it."""
  try:
    import jax  # pylint: disable=import-outside-toplevel
    rows = corpus.rows_per_shard
    batch = min(n_queries,
                batch_size or search.search.__kwdefaults__['batch_size'])
    blocks, block = search.scan_plan(rows, batch, min(k, rows),
                                     dim=corpus.dim)
    fn = search.compiled_search_fn(
        corpus.mesh, corpus.corpus_axes, corpus.query_axes, rows,
        corpus.n_docs, k, 0, False, blocks, block)
    spec = jax.ShapeDtypeStruct
    compiled = fn.lower(spec((corpus.dim, batch), np.float32),
                        corpus.embeddings,
                        spec((corpus.embeddings.shape[0],), np.float32),
                        spec((), np.float32)).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  except Exception:  # pylint: disable=broad-except
    return None


# --- agreement --------------------------------------------------------------

def agreement(idx, scores, ref_idx, ref_scores):
  k = ref_idx.shape[1]
  recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(idx, ref_idx)])
  same = np.mean(np.all(idx == ref_idx, axis=1))
  return recall, same, float(np.max(np.abs(scores - ref_scores)))


def _mib(n_bytes) -> str:
  return 'n/a' if n_bytes is None else f'{n_bytes / 2**20:,.0f} MiB'


def index_rows(args, corpus, queries, runs, systems, first):
  """Rows for the `rosetta search` path: the corpus written to an index
  directory (stored float32, like `rosetta index`'s default) and searched
  through `retrieval.dense.searcher.Searcher.search`, which is what the
  command runs after encoding its queries (here the random queries stand
  in for encoded ones)."""
  import shutil  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from benchmarks.compile_clock import first_call  # pylint: disable=import-outside-toplevel
  from retrieval.dense import index_store, searcher  # pylint: disable=import-outside-toplevel
  from retrieval.search import exact as search  # pylint: disable=import-outside-toplevel
  tmp = tempfile.mkdtemp(prefix='rosetta_index_bench_')
  t = time.perf_counter()
  index_store.write(       # the "texts" are row numbers: rows are the corpus
      lambda texts: corpus[int(texts[0]):int(texts[-1]) + 1],
      [str(i) for i in range(args.n_docs)],
      [f'd{i}' for i in range(args.n_docs)], tmp,
      identity={'run_dir': 'benchmark', 'step': 0, 'fingerprint': {}},
      shard_size=1 << 16, batch_size=1 << 16, progress=False)
  print(f'  index written in {time.perf_counter() - t:.1f}s ({tmp})',
        flush=True)
  index = index_store.DenseIndex.open(tmp)
  for dtype in args.dtype:
    name = f'rosetta search path {dtype}'
    t = time.perf_counter()
    s = searcher.Searcher(index, None, index.corpus(
        search.single_device_mesh(), dtype=dtype), dtype)
    jax.block_until_ready(s.corpus.embeddings)
    place_s = time.perf_counter() - t
    result, first_s, _ = first_call(lambda s=s: s.search(queries, args.k))
    first[name] = (result.scores, result.indices)
    systems[name] = {'dtype': dtype, 'bytes': s.corpus.embeddings.nbytes,
                     'compile': None, 'temp': None, 'index': True}
    runs[name] = lambda s=s: s.search(queries, args.k)
    print(f'  {name}: opened and placed in {place_s:.1f}s, first call '
          f'{first_s:.1f}s', flush=True)
  shutil.rmtree(tmp)        # the rows are on the device now


def main(argv=None):
  args = parse_args(argv)
  if args.memory_child:
    print(json.dumps(memory_child(args)))
    return
  import faiss  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from benchmarks.compile_clock import first_call  # pylint: disable=import-outside-toplevel
  from retrieval.search import exact as search  # pylint: disable=import-outside-toplevel

  print(f'jax {jax.__version__} on {jax.devices()[0].platform} '
        f'({os.cpu_count()} CPUs), faiss {faiss.__version__} with '
        f'{faiss.omp_get_max_threads()} OpenMP threads; corpus '
        f'{args.n_docs:,} x {args.dim} (normal, L2-normalised, seed '
        f'{args.seed}), {args.queries:,} queries, k={args.k}; load average '
        f'{os.getloadavg()[0]:.1f}', flush=True)
  t = time.perf_counter()
  corpus, queries = make_data(args)
  print(f'  data: {time.perf_counter() - t:.1f}s', flush=True)
  kw = {} if args.batch_size is None else {'batch_size': args.batch_size}
  batch = min(args.queries, args.batch_size or
              search.search.__kwdefaults__['batch_size'])

  t = time.perf_counter()
  index = faiss.IndexFlatIP(args.dim)
  index.add(corpus)
  print(f'  faiss add: {time.perf_counter() - t:.1f}s', flush=True)
  default_threads = faiss.omp_get_max_threads()
  runs, systems, first = {}, {}, {}
  for th in dict.fromkeys(args.faiss_threads or [1, default_threads]):
    name = f'faiss ({th} thread{"s" if th > 1 else ""})'

    def run_faiss(th=th):
      faiss.omp_set_num_threads(th)
      try:
        return index.search(queries, args.k)
      finally:
        faiss.omp_set_num_threads(default_threads)

    runs[name] = run_faiss
    systems[name] = {'dtype': 'float32', 'bytes': corpus.nbytes,
                     'compile': None, 'temp': None}
  faiss_names = list(runs)
  first[faiss_names[0]] = runs[faiss_names[0]]()    # the reference results
  for dtype in args.dtype:
    name = f'rosetta {dtype}'
    t = time.perf_counter()
    sharded = search.shard_corpus(corpus, dtype=dtype)
    jax.block_until_ready(sharded.embeddings)
    place_s = time.perf_counter() - t
    result, first_s, compile_s = first_call(
        lambda: search.search(sharded, queries, k=args.k, **kw))
    first[name] = (result.scores, result.indices)
    systems[name] = {'dtype': dtype, 'bytes': sharded.embeddings.nbytes,
                     'compile': compile_s,
                     'temp': xla_temp_bytes(search, sharded, args.k,
                                            args.batch_size, args.queries)}
    runs[name] = (lambda s=sharded: search.search(s, queries, k=args.k,
                                                  **kw))
    print(f'  {name}: placed in {place_s:.1f}s, first call {first_s:.1f}s '
          f'(compile {systems[name]["compile"]:.1f}s)', flush=True)

  if args.index:
    index_rows(args, corpus, queries, runs, systems, first)

  if args.verified:
    from retrieval.search import verified as verified_search  # pylint: disable=import-outside-toplevel
    name = 'rosetta float32, verified bf16 candidates'
    t = time.perf_counter()
    vcorpus = verified_search.VerifiedCorpus.build(
        search.shard_corpus(corpus, dtype='float32'))
    jax.block_until_ready(vcorpus.shadow.embeddings)
    place_s = time.perf_counter() - t
    result, first_s, compile_s = first_call(
        lambda: verified_search.verified_search(vcorpus, queries, args.k,
                                                **kw))
    first[name] = (result.scores, result.indices)
    systems[name] = {'dtype': 'float32', 'verified': True,
                     'bytes': vcorpus.exact.embeddings.nbytes +
                              vcorpus.shadow.embeddings.nbytes,
                     'compile': compile_s, 'temp': None}
    runs[name] = (lambda: verified_search.verified_search(
        vcorpus, queries, args.k, **kw))
    print(f'  {name}: placed in {place_s:.1f}s, first call {first_s:.1f}s '
          f'(compile {systems[name]["compile"]:.1f}s), '
          f'{result.num_fallback} of {args.queries} queries fell back to '
          f'the float32 scan', flush=True)

  times = {name: [] for name in runs}
  cpu = {name: [] for name in runs}
  for rep in range(args.repeats):
    for name, fn in runs.items():
      t, c = time.perf_counter(), time.process_time()
      fn()
      times[name].append(time.perf_counter() - t)
      cpu[name].append(time.process_time() - c)
    print(f'  repeat {rep + 1}: ' + ', '.join(
        f'{name} {times[name][-1]:.2f}s' for name in runs) +
          f' (load {os.getloadavg()[0]:.1f})', flush=True)

  f_scores, f_idx = first[faiss_names[0]]
  checks = {}
  for name in runs:
    if name in faiss_names:
      continue
    s, i = first[name]
    checks[name] = [agreement(i, s, f_idx, f_scores)]
    if systems[name]['dtype'] == 'bfloat16':
      rounded = faiss.IndexFlatIP(args.dim)
      rounded.add(bf16_rounded(corpus))
      r_scores, r_idx = rounded.search(bf16_rounded(queries), args.k)
      del rounded
      checks[name].append(agreement(i, s, r_idx, r_scores))

  memory = {}
  if args.memory:
    del index
    runs.clear()
    gc.collect()
    for name in systems:
      if systems[name].get('verified') or systems[name].get('index'):
        continue      # not measured in a subprocess (n/a in the table)
      if name in faiss_names:
        if name != faiss_names[0]:
          memory[name] = memory[faiss_names[0]]
          continue
        child = 'faiss'
      else:
        child = systems[name]['dtype']
      memory[name] = measure_memory(args, child)
      print(f'  memory {name}: {memory[name]}', flush=True)

  fq = {'best': max(args.queries / min(times[n]) for n in faiss_names),
        'median': max(args.queries / float(np.median(times[n]))
                      for n in faiss_names)}
  print(f'\n{args.n_docs:,} x {args.dim} corpus, {args.queries:,} queries, '
        f'k={args.k}, Rosetta batch {batch}, best / median of '
        f'{args.repeats} interleaved runs:\n')
  print('| system | corpus dtype | queries/s (best) | queries/s (median) | '
        'vs fastest faiss (best / median) | CPU s per run | compile s | '
        'recall@k vs faiss | same ranked list | max score diff |')
  print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  for name, info in systems.items():
    best = args.queries / min(times[name])
    median = args.queries / float(np.median(times[name]))
    comp = '' if info['compile'] is None else f'{info["compile"]:.1f}'
    if name in faiss_names:
      agree = ('(reference)' if name == faiss_names[0] else '', '', '')
    else:
      rec, same, diff = checks[name][0]
      agree = (f'{rec:.4f}', f'{same:.1%}', f'{diff:.1e}')
      if len(checks[name]) > 1:
        rec2, same2, diff2 = checks[name][1]
        agree = (f'{rec:.4f} ({rec2:.4f} vs faiss on bf16-rounded vectors)',
                 f'{same:.1%} ({same2:.1%})', f'{diff:.1e} ({diff2:.1e})')
    print(f'| {name} | {info["dtype"]} | {best:,.0f} | {median:,.0f} | '
          f'{best / fq["best"]:.2f}x / {median / fq["median"]:.2f}x | '
          f'{float(np.median(cpu[name])):.2f} | {comp} | {agree[0]} | '
          f'{agree[1]} | {agree[2]} |')

  print('\n| system | corpus as stored | XLA temp per call | RSS holding the '
        'corpus | peak extra RSS in 2 searches (compile incl.) | extra RSS '
        'kept after them |')
  print('|---|---:|---:|---:|---:|---:|')
  for name, info in systems.items():
    mem = memory.get(name, {})
    cells = ['n/a' if key not in mem else f'{mem[key]:,.0f} MiB'
             for key in ('held_mib', 'peak_extra_mib',
                         'retained_extra_mib')]
    print(f'| {name} | {_mib(info["bytes"])} | '
          f'{"-" if info["temp"] is None else _mib(info["temp"])} | '
          + ' | '.join(cells) + ' |')
  for name, info in systems.items():
    api = f'rosetta {info["dtype"]}'
    if info.get('index') and api in times:
      print(f'\n{name} vs {api} (the Python API): queries/s '
            f'{min(times[api]) / min(times[name]):.2f}x best, '
            f'{np.median(times[api]) / np.median(times[name]):.2f}x median')
  print(f'\nload average at the end: {os.getloadavg()[0]:.1f} '
        f'({os.cpu_count()} CPUs)')


if __name__ == '__main__':
  main()
