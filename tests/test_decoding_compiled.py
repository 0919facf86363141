"""What XLA makes of the decode loop: structural checks on compiled HLO.

Speed regressions of the decode loop show up as extra work inside the
compiled `while` body long before a benchmark notices them; these tests
read that body (not the clock, which is shared and noisy here).
"""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from rosetta.decoding import algorithms as decoding
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config

CFG = T5Config(vocab_size=64, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48,
               num_encoder_layers=1, num_decoder_layers=2, dropout_rate=0.0)
BATCH, BEAMS, SOURCE = 2, 4, 7


def _while_bodies(hlo: str) -> list[str]:
  comps = {m.group(1): m.group(2) for m in re.finditer(
      r'^(?:ENTRY )?%?([\w.\-]+) \(.*?\{\n(.*?)\n\}', hlo, re.S | re.M)}
  names = re.findall(r'while\(.*?body=%?([\w.\-]+)', hlo)
  assert names, 'no while loop in the compiled decode'
  return [comps[n] for n in names]


def _compiled(dtype: str, strategy: str, length: int) -> str:
  model = EncoderDecoder(T5Config(**{**CFG.__dict__, 'dtype': dtype}),
                         rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  x = np.random.default_rng(0).integers(2, CFG.vocab_size, (BATCH, SOURCE))
  x = x.astype(np.int32)

  def run(st, x):
    m = nnx.merge(graphdef, st)
    if strategy == 'greedy':
      return decoding.greedy(m, x, max_decode_length=length)
    return decoding.beam_search(m, x, num_beams=BEAMS,
                                max_decode_length=length)
  return jax.jit(run).lower(state, x).compile().as_text()


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('strategy', ['greedy', 'beam'])
@pytest.mark.parametrize('length', [12, 80])
def test_decode_loop_never_copies_the_kv_cache(dtype, strategy, length):
  """Each step writes one position into every layer's self-attention cache
  in place. A copy of a whole cache inside the loop body costs a full
  cache read + write per layer and step: a beam-attention read of the
  cache in another shape once made XLA:CPU copy each cache twice a step
  (~40% of a beam-4 step at 128 tokens). Length 80 runs a chunked cache:
  one loop per chunk, each with its own cache size."""
  rows = BATCH * (BEAMS if strategy == 'beam' else 1)
  h, d = CFG.num_heads, CFG.head_dim
  cache = rf'\[{rows},{h},\d+,{d}\]'
  grouped = rf'\[{BATCH},{BEAMS},{h},\d+,{d}\]'
  bodies = _while_bodies(_compiled(dtype, strategy, length))
  ends = decoding.cache_chunk_ends(length)
  assert len(ends) == (1 if length == 12 else 2)
  sizes = set()
  for body in bodies:
    copies = re.findall(rf'= \w+(?:{cache}|{grouped})\S* copy\(', body)
    assert not copies, f'{len(copies)} KV-cache copies per decode step'
    sizes |= {int(n) for n in re.findall(rf'\[{rows},{h},(\d+),{d}\]',
                                          body)}
  # Every chunk's loop attends over its own cache size, never a larger one.
  assert set(ends) <= sizes, (ends, sorted(sizes))
  if strategy == 'beam':
    # The encoder K/V (source length 7) stay one row per example: a copy
    # tiled per beam would make each step read them `BEAMS` times.
    tiled = rf'\[{BATCH * BEAMS},{h},{SOURCE},{d}\]'
    for body in bodies:
      assert not re.search(tiled, body), 'encoder K/V tiled per beam'
      assert re.search(rf'\[{BATCH},{h},{SOURCE},{d}\]', body)
