"""Decoding speed: Rosetta (`rosetta.decoding.algorithms`) vs HF transformers `generate`.

Both decode with the same weights (a random HF T5.1.1 checkpoint, imported
into Rosetta), on CPU, from the same random source batch, in float32 and in
bfloat16 (HF: the model cast with `.to(torch.bfloat16)`; Rosetta: bfloat16
activations, matmul weights cast once before the decode loop). Every
output is forced to exactly N new tokens (EOS banned before N: HF
`min_new_tokens`, Rosetta `MinLength`), so tokens/s compare equal work:
tokens/s = batch * N / seconds (beams are not counted). Rosetta's compile
time (tracing + lowering + XLA compilation, from `jax.monitoring` events)
is reported apart; the timed calls reuse the compiled program.

    python -m benchmarks.decoding --quick        # batch 8, 32 tokens
    python -m benchmarks.decoding                # batch {8, 32} x {32, 128}
    python -m benchmarks.decoding --batch 8 --new-tokens 128 --strategy beam4
    python -m benchmarks.decoding --dtype bfloat16

By default both systems run under glibc malloc and again under the
retaining allocator (rosetta/allocator.py), a child process each
(benchmarks/allocator_columns.py); `--allocators glibc` runs one.
Prints a Markdown table. It measures, it does not assert; the numbers depend
on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


from benchmarks import allocator_columns  # noqa: E402
from benchmarks.compile_clock import first_call  # noqa: E402
from rosetta.checkpoint import hf as checkpoint_import  # noqa: E402
from rosetta.decoding import algorithms as decoding  # noqa: E402
from rosetta.decoding import processors as lp  # noqa: E402

# T5.1.1 'small' as in t5x (HF google/t5-v1_1-small has 6 heads x 64 too).
SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, num_heads=6, d_ff=1024,
             num_layers=8, num_decoder_layers=8, feed_forward_proj='gated-gelu',
             tie_word_embeddings=False)
STRATEGIES = {'greedy': 1, 'beam4': 4}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--quick', action='store_true',
                 help='only batch 8 and 32 new tokens')
  p.add_argument('--batch', type=int, nargs='+', default=[8, 32])
  p.add_argument('--new-tokens', type=int, nargs='+', default=[32, 128])
  p.add_argument('--strategy', nargs='+', default=list(STRATEGIES),
                 choices=list(STRATEGIES))
  p.add_argument('--dtype', nargs='+', default=['float32', 'bfloat16'],
                 choices=['float32', 'bfloat16'])
  p.add_argument('--source-len', type=int, default=64)
  p.add_argument('--repeats', type=int, default=1,
                 help='timed runs per system and setting; the best is kept')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--threads', type=int, default=None,
                 help='torch threads (default: torch decides); for a '
                 'one-core comparison on a loaded machine use 1 and run '
                 'with XLA_FLAGS=--xla_cpu_multi_thread_eigen=false')
  allocator_columns.add_arguments(p)
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.new_tokens = [8], [32]
  return args


def make_models(seed: int, directory: str, dtypes=('float32',)):
  """The HF model and, per dtype, (HF model in that dtype, Rosetta model)."""
  import torch
  import transformers
  torch.manual_seed(seed)
  cfg = transformers.T5Config(**SMALL, dropout_rate=0.0, pad_token_id=0,
                              eos_token_id=1, decoder_start_token_id=0)
  hf = transformers.T5ForConditionalGeneration(cfg).eval()
  hf.save_pretrained(directory)
  out = {}
  for dtype in dtypes:
    hf_d = hf
    if dtype != 'float32':
      hf_d = transformers.T5ForConditionalGeneration.from_pretrained(
          directory).to(getattr(torch, dtype)).eval()
    out[dtype] = (hf_d, checkpoint_import.import_hf_checkpoint(directory,
                                                               dtype=dtype))
  return out


def source_batch(batch: int, length: int, seed: int):
  rng = np.random.default_rng(seed)
  x = rng.integers(3, SMALL['vocab_size'], size=(batch, length))
  x[:, -1] = 1
  return x.astype(np.int32)


def run_rosetta(model, x, beams: int, n: int):
  procs = (lp.MinLength(n),)
  if beams == 1:
    tokens, _ = decoding.greedy(model, x, max_decode_length=n,
                                processors=procs)
  else:
    tokens, _ = decoding.beam_search(model, x, num_beams=beams,
                                     max_decode_length=n, alpha=1.0,
                                     length_penalty='hf', processors=procs)
    tokens = tokens[:, 0]
  return np.asarray(jax.block_until_ready(tokens))


def run_hf(hf, x, beams: int, n: int):
  import torch
  with torch.inference_mode():
    out = hf.generate(input_ids=torch.tensor(x, dtype=torch.long),
                      attention_mask=torch.ones(x.shape, dtype=torch.long),
                      max_new_tokens=n, min_new_tokens=n, num_beams=beams,
                      do_sample=False, length_penalty=1.0,
                      early_stopping='never' if beams > 1 else False)
  return out.numpy()[:, 1:]




def timed_pair(fns, repeats: int):
  """Best-of-`repeats` wall seconds, best process CPU seconds and last
  output of each function; the runs alternate so that a burst of load from
  elsewhere hits both systems."""
  best = [float('inf')] * len(fns)
  cpu = [float('inf')] * len(fns)
  outs = [None] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      start, c = time.perf_counter(), time.process_time()
      outs[i] = fn()
      best[i] = min(best[i], time.perf_counter() - start)
      cpu[i] = min(cpu[i], time.process_time() - c)
  return best, cpu, outs


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if len(args.allocators) > 1:
    return compare_allocators(args, argv)
  malloc = allocator_columns.check_child(args.allocators[0])
  import torch
  if args.threads:
    torch.set_num_threads(args.threads)
  print(f'jax {jax.__version__} on {jax.devices()[0].platform} '
        f'({os.cpu_count()} CPUs), torch {torch.__version__} with '
        f'{torch.get_num_threads()} threads; T5.1.1 small '
        f'(8+8 layers, d_model 512, vocab 32128); source length '
        f'{args.source_len}; load average {os.getloadavg()[0]:.1f}; '
        f'malloc (both systems, one process): {malloc}',
        flush=True)
  with tempfile.TemporaryDirectory() as d:
    models = make_models(args.seed, d, args.dtype)

  rows = []
  for dtype, name in itertools.product(args.dtype, args.strategy):
    hf, model = models[dtype]
    run_hf(hf, source_batch(1, 8, 0), 1, 2)  # torch warm-up (lazy init)
    beams = STRATEGIES[name]
    for b in args.batch:
      for n in args.new_tokens:
        x = source_batch(b, args.source_len, args.seed)
        compile_s = first_call(                   # compiles, then runs
            lambda: run_rosetta(model, x, beams, n))[2]
        (t_ours, t_hf), (c_ours, c_hf), (ours, theirs) = timed_pair(
            [lambda: run_rosetta(model, x, beams, n),
             lambda: run_hf(hf, x, beams, n)], args.repeats)
        same = np.mean([np.array_equal(a, c) for a, c in zip(ours, theirs)])
        row = (dtype, name, b, n, b * n / t_ours, b * n / t_hf,
               t_hf / t_ours, c_hf / c_ours, compile_s, same)
        rows.append(row)
        print(f'  {dtype} {name} batch {b} new {n}: rosetta {t_ours:.2f}s, '
              f'hf {t_hf:.2f}s, compile {compile_s:.1f}s', flush=True)

  print('\n| dtype | strategy | batch | new tokens | Rosetta tok/s | HF tok/s '
        '| Rosetta / HF | CPU-time ratio | Rosetta compile s | same outputs |')
  print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  for dtype, name, b, n, ours, theirs, ratio, cpu, comp, same in rows:
    print(f'| {dtype} | {name} | {b} | {n} | {ours:.0f} | {theirs:.0f} | '
          f'{ratio:.2f}x | {cpu:.2f}x | {comp:.1f} | {same:.0%} |')
  print(f'\nload average at the end: {os.getloadavg()[0]:.1f} '
        f'({os.cpu_count()} CPUs)')
  allocator_columns.write_result(args.result_json,
                                 {'malloc': malloc, 'rows': rows})


def compare_allocators(args, argv):
  """Both systems under each malloc (a child process each), side by side:
  tokens/s, the ratio against HF under the same malloc, and what the
  retaining allocator gains over glibc for each system."""
  results = allocator_columns.run_each(
      'benchmarks.decoding',
      allocator_columns.without_allocator_options(argv), args.allocators)
  first, last = results[args.allocators[0]], results[args.allocators[-1]]
  a, b = first['malloc'], last['malloc']
  print(f'\n## side by side (each malloc one process; HF under the same '
        f'malloc)\n\n| dtype | strategy | batch | new tokens | Rosetta / HF '
        f'({a}) | Rosetta / HF ({b}) | Rosetta {b} / {a} | HF {b} / {a} |')
  print('|---|---|---:|---:|---:|---:|---:|---:|')
  for r0, r1 in zip(first['rows'], last['rows']):
    dtype, name, batch, n = r0[:4]
    print(f'| {dtype} | {name} | {batch} | {n} | {r0[6]:.2f}x | {r1[6]:.2f}x '
          f'| {r1[4] / r0[4]:.2f}x | {r1[5] / r0[5]:.2f}x |')
  print('Rosetta / HF, geometric mean over the rows: ' + ', '.join(
      f'{r["malloc"]} {statistics.geometric_mean(row[6] for row in r["rows"]):.2f}x'
      for r in (first, last)))


if __name__ == '__main__':
  main()
