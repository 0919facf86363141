"""Docid-constrained beam search (retrieval.dsi.trie) vs unconstrained.

Random docids (distinct token sequences of 4-8 tokens over ids [2, V)) for
10k and 1M documents; beam search over them with the `TrieConstraint`
logits processor, against the same beam search without it, on the same
inputs. Two decoders:

  t5_small   a random T5.1.1 'small' (8+8 layers, d_model 512) with a
             V-token output layer; source length 32 (what DSI runs).
  synthetic  a `tokens_to_logits` that gathers a row of a random (V, V)
             table: nearly free, so the ratio is the processor's cost
             against beam search's own bookkeeping (the worst case).

Both decode max_decode_length = longest id + EOS; `steps` is the number of
loop iterations (counted in a separate, untimed run): equal steps, equal
decoder work.
Compile time (trace + lower + XLA, from `jax.monitoring`) is apart; timed
runs reuse the compiled program, best of --repeats (x20 for synthetic),
alternating the two systems so a burst of load from elsewhere hits both.

    python -m benchmarks.constrained_decoding --quick   # beam 10, both sizes
    python -m benchmarks.constrained_decoding --beams 4 10 --driver synthetic

Prints a Markdown table. It measures, it does not assert.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


from flax import nnx  # noqa: E402

from benchmarks.compile_clock import first_call  # noqa: E402
from retrieval.dsi.trie import Trie  # noqa: E402
from rosetta.decoding import algorithms as decoding  # noqa: E402
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config  # noqa: E402



def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--quick', action='store_true',
                 help='beam 10, batch 8, 3 repeats')
  p.add_argument('--ids', type=int, nargs='+', default=[10_000, 1_000_000])
  p.add_argument('--vocab', type=int, default=1024)
  p.add_argument('--min-len', type=int, default=4)
  p.add_argument('--max-len', type=int, default=8)
  p.add_argument('--beams', type=int, nargs='+', default=[4, 10])
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--driver', nargs='+', default=['t5_small', 'synthetic'],
                 choices=['t5_small', 'synthetic'])
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  if args.quick:
    args.beams, args.repeats = [10], 3
  return args


def random_ids(n: int, vocab: int, min_len: int, max_len: int,
               seed: int) -> np.ndarray:
  """(n, max_len) distinct ids, 0-padded, lengths uniform in range."""
  rng = np.random.default_rng(seed)
  out = np.zeros((0, max_len), np.int64)
  while len(out) < n:
    m = int((n - len(out)) * 1.1) + 16
    x = rng.integers(2, vocab, size=(m, max_len))
    lengths = rng.integers(min_len, max_len + 1, size=m)
    x[np.arange(max_len)[None] >= lengths[:, None]] = 0
    out = np.unique(np.concatenate([out, x]), axis=0)
  return out[rng.permutation(len(out))[:n]]


def synthetic_fn(vocab: int, seed: int):
  """tokens_to_logits: a row of a random (V, V) table per last token,
  shifted by the step (kept in the cache) so steps differ."""
  table = jax.random.normal(jax.random.key(seed), (vocab, vocab)) * 3.0

  def fn(tokens, cache):
    row = (tokens[:, 0] + 7919 * cache['step']) % vocab
    return table[row], None, dict(cache, step=cache['step'] + 1)
  return fn


def make_runner(driver: str, vocab: int, batch: int, beams: int,
                length: int, seed: int):
  """run(processors) -> (tokens, scores), compiled on first use per
  processor structure, plus a step counter for an untimed run."""
  kw = dict(num_beams=beams, num_decodes=beams, max_decode_length=length,
            alpha=0.6)
  if driver == 't5_small':
    model = EncoderDecoder(T5Config(vocab_size=vocab, dropout_rate=0.0),
                           rngs=nnx.Rngs(seed))
    x = jnp.asarray(np.random.default_rng(seed).integers(
        2, vocab, size=(batch, 32)), jnp.int32)
    return lambda procs: decoding.beam_search(model, x, processors=procs,
                                              **kw)
  fn = synthetic_fn(vocab, seed)

  @jax.jit
  def run(procs):
    cache = {'step': jnp.zeros((), jnp.int32),
             'row': jnp.arange(batch)}       # a per-example leaf to gather
    return decoding.beam_search_core(fn, cache, batch_size=batch,
                                     processors=procs, **kw)
  return run


_CALLS: list = []


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _CountSteps:
  """A pass-through processor that counts its calls (a pytree without
  leaves, so it can be a jit argument like the trie)."""

  def __call__(self, log_probs, state):
    jax.debug.callback(lambda: _CALLS.append(1))
    return log_probs


def count_steps(run, procs) -> int:
  """Decoding steps of one decode (an untimed run; it compiles anew)."""
  _CALLS.clear()
  jax.block_until_ready(run(tuple(procs) + (_CountSteps(),)))
  jax.effects_barrier()
  return len(_CALLS)


def timed(fns, repeats):
  best = [float('inf')] * len(fns)
  outs = [None] * len(fns)
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      start = time.perf_counter()
      outs[i] = jax.block_until_ready(fn())
      best[i] = min(best[i], time.perf_counter() - start)
  return best, outs


def main(argv=None):
  args = parse_args(argv)
  print(f'jax {jax.__version__} on {jax.devices()[0].platform} '
        f'({os.cpu_count()} CPUs); vocab {args.vocab}; ids of '
        f'{args.min_len}-{args.max_len} tokens; batch {args.batch}; '
        f'alpha 0.6; load average {os.getloadavg()[0]:.1f}', flush=True)
  rows = []
  for n in args.ids:
    ids = random_ids(n, args.vocab, args.min_len, args.max_len, args.seed)
    start = time.perf_counter()
    trie = Trie.from_sequences(ids)
    build_s = time.perf_counter() - start
    proc = trie.constraint(args.vocab)
    mb = sum(a.nbytes for a in (proc.offsets, proc.edge_tokens)) / 2**20
    if proc.dense is not None:
      mb += proc.dense.nbytes / 2**20
    layout = ('dense' if not proc.max_fanout else
              f'{proc.num_dense:,} dense + CSR' if proc.num_dense else 'CSR')
    print(f'{n:,} ids: {trie.num_nodes:,} nodes, max fan-out '
          f'{trie.max_fanout} ({proc.max_fanout} past the dense nodes), '
          f'built in {build_s:.1f} s; {layout}, {mb:.1f} MB on device',
          flush=True)
    for driver, beams in itertools.product(args.driver, args.beams):
      run = make_runner(driver, args.vocab, args.batch, beams,
                        trie.max_length, args.seed)
      compile_s = []
      for procs in ((), (proc,)):
        compile_s.append(first_call(lambda: run(procs))[2])
      # A synthetic decode takes ~2 ms: many more repeats cost nothing and
      # keep a scheduler hiccup on a shared machine out of the best time.
      repeats = args.repeats * (20 if driver == 'synthetic' else 1)
      (free_s, cons_s), (_, (tok, score)) = timed(
          [lambda: run(()), lambda: run((proc,))], repeats)
      tok = np.asarray(tok).reshape(-1, tok.shape[-1])
      ok = np.asarray(score).reshape(-1) > -5e8
      assert all(trie.contains(r) for r in tok[ok]), 'an invalid id'
      steps = [count_steps(run, p) for p in ((), (proc,))]
      rows.append((driver, n, beams, layout, free_s, cons_s, steps,
                   compile_s))
      print(f'  {driver} beam {beams}: {free_s * 1e3:.1f} ms vs '
            f'{cons_s * 1e3:.1f} ms', flush=True)

  print('\n| decoder | ids | beams | layout | unconstrained ms | constrained '
        'ms | ratio | steps (u/c) | compile s (u/c) |')
  print('|---|---:|---:|---|---:|---:|---:|---|---|')
  for driver, n, beams, layout, f, c, steps, comp in rows:
    st = '/'.join(map(str, steps))
    print(f'| {driver} | {n:,} | {beams} | {layout} | {f * 1e3:.1f} | '
          f'{c * 1e3:.1f} | {c / f:.2f}x | {st} | {comp[0]:.1f} / '
          f'{comp[1]:.1f} |')


if __name__ == '__main__':
  main()
