"""Chunked self-attention caches: decoding grows the cache 32 -> 64 -> ...
positions (one `while_loop` per chunk) and must give exactly what one loop
over a cache of `max_decode_length` positions gives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rosetta.decoding import algorithms as decoding
from rosetta.decoding import processors as lp
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config

CFG = T5Config(vocab_size=64, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48,
               num_encoder_layers=1, num_decoder_layers=2, dropout_rate=0.0)
LENGTH = 70   # chunks (32, 70): the loop crosses one cache growth


def test_chunk_ends():
  assert decoding.cache_chunk_ends(12) == (12,)
  assert decoding.cache_chunk_ends(48) == (48,)      # 32 would save < 1/3
  assert decoding.cache_chunk_ends(49) == (32, 49)
  assert decoding.cache_chunk_ends(128) == (32, 64, 128)
  assert decoding.cache_chunk_ends(512) == (32, 64, 128, 256, 512)
  assert decoding.cache_chunk_ends(100, first=16) == (16, 32, 64, 100)


@pytest.mark.parametrize('ends, match', [
    ((32, 60), 'end at max_decode_length=70'),
    ((40, 32, 70), 'must increase'),
    ((0, 70), 'must increase'),
])
def test_bad_chunk_ends(ends, match):
  fn = lambda tokens, cache: (jnp.zeros((1, 4)), None, cache)
  with pytest.raises(ValueError, match=match):
    decoding.sample_core(fn, {}, batch_size=1, max_decode_length=70,
                         cache_ends=ends, grow_cache=lambda c, n: c)


def test_chunks_need_grow_cache():
  fn = lambda tokens, cache: (jnp.zeros((1, 4)), None, cache)
  with pytest.raises(ValueError, match='needs grow_cache'):
    decoding.beam_search_core(fn, {}, batch_size=1, num_beams=2,
                              max_decode_length=70, cache_ends=(32, 70))


@pytest.fixture(scope='module', params=['float32', 'bfloat16'])
def model_and_inputs(request):
  cfg = T5Config(**{**CFG.__dict__, 'dtype': request.param})
  model = EncoderDecoder(cfg, rngs=nnx.Rngs(3))
  x = np.random.default_rng(1).integers(2, cfg.vocab_size, (3, 9))
  x[2, 6:] = 0                                      # a padded source
  return model, x.astype(np.int32)


def _rtol(model):
  # bfloat16: reductions over 32 vs 70 key positions round differently.
  return 1e-6 if model.cfg.dtype == 'float32' else 1e-4


def _both(fn):
  chunked, whole = fn(True), fn(False)
  return jax.tree.map(np.asarray, chunked), jax.tree.map(np.asarray, whole)


def test_greedy_same_with_chunks(model_and_inputs):
  model, x = model_and_inputs
  # Outputs run past the first chunk: EOS banned for 50 steps, and the
  # per-example limits end one row inside the first chunk.
  (tok_c, lp_c), (tok_w, lp_w) = _both(lambda chunked: decoding.greedy(
      model, x, max_decode_length=LENGTH, chunked_cache=chunked,
      processors=[lp.MinLength(50)], max_lengths=np.array([LENGTH, 20, 60])))
  assert (tok_c[0] != 0).sum() > 32
  np.testing.assert_array_equal(tok_c, tok_w)
  np.testing.assert_allclose(lp_c, lp_w, rtol=_rtol(model))


def test_beam_search_same_with_chunks(model_and_inputs):
  model, x = model_and_inputs
  (tok_c, sc_c), (tok_w, sc_w) = _both(lambda chunked: decoding.beam_search(
      model, x, num_beams=4, num_decodes=2, max_decode_length=LENGTH,
      alpha=0.6, beta=0.2, chunked_cache=chunked,
      processors=[lp.MinLength(40)]))
  assert ((tok_c != 0).sum(-1) > 32).all()
  np.testing.assert_array_equal(tok_c, tok_w)
  np.testing.assert_allclose(sc_c, sc_w, rtol=_rtol(model))


def test_sampling_same_with_chunks(model_and_inputs):
  model, x = model_and_inputs
  (tok_c, lp_c), (tok_w, lp_w) = _both(lambda chunked: decoding.sample(
      model, x, rng=jax.random.key(7), max_decode_length=LENGTH,
      temperature=np.array([1.0, 0.7, 0.0], np.float32), top_p=0.9,
      chunked_cache=chunked, processors=[lp.MinLength(45)]))
  assert (tok_c != 0).sum() > 3 * 32
  np.testing.assert_array_equal(tok_c, tok_w)
  np.testing.assert_allclose(lp_c, lp_w, rtol=_rtol(model))


def test_grow_cache_keeps_the_written_prefix(model_and_inputs):
  model, x = model_and_inputs
  m = nnx.clone(model)
  m.init_cache(m.encode(x), x, 8)
  dec = np.random.default_rng(2).integers(2, CFG.vocab_size, (3, 12))
  m.decode_step(dec[:, :5])
  attn = m.decoder.layers[1].self_attention
  before = np.asarray(attn.cached_key[...])
  m.grow_cache(20)
  after = np.asarray(attn.cached_key[...])
  assert after.shape[2] == 20
  np.testing.assert_array_equal(after[:, :, :8], before)
  assert not after[:, :, 8:].any()
  with pytest.raises(ValueError, match='current length 20'):
    m.grow_cache(10)
  # Decoding on after the growth equals decoding with the big cache.
  grown = m.decode_step(dec[:, 5:12])[0]
  ref = nnx.clone(model)
  ref.init_cache(ref.encode(x), x, 20)
  ref.decode_step(dec[:, :5])
  np.testing.assert_allclose(np.asarray(grown, np.float32),
                             np.asarray(ref.decode_step(dec[:, 5:12])[0],
                                        np.float32), rtol=1e-5, atol=1e-5)


def test_grouped_cross_attention_equals_tiled(model_and_inputs):
  """Beam search keeps the encoder K/V one row per example; the grouped
  attention must equal plain attention over K/V tiled per beam (context
  and the probabilities the coverage penalty reads)."""
  model, x = model_and_inputs
  attn = nnx.clone(model.decoder.layers[0].cross_attention)
  beams, n, s = 3, x.shape[0], x.shape[1]
  rng = np.random.default_rng(4)
  enc = jnp.asarray(rng.normal(size=(n, s, CFG.emb_dim)), attn.dtype)
  q = jnp.asarray(rng.normal(size=(n * beams, 1, CFG.emb_dim)), attn.dtype)
  mask = jnp.asarray(x != 0)[:, None, None, :]                  # (n, 1, 1, S)
  attn.set_static_kv(enc)
  out_g, probs_g = attn(q, mask=mask, use_static_kv=True, return_probs=True,
                        beam_groups=beams)
  attn.set_static_kv(jnp.repeat(enc, beams, axis=0))
  out_t, probs_t = attn(q, mask=jnp.repeat(mask, beams, axis=0),
                        use_static_kv=True, return_probs=True)
  tol = dict(rtol=_rtol(model) * 10, atol=_rtol(model) * 10)
  np.testing.assert_allclose(np.asarray(probs_g), np.asarray(probs_t), **tol)
  assert not np.asarray(probs_g)[2 * beams:, :, :, 6:].any()    # padding
  np.testing.assert_allclose(np.asarray(out_g, np.float32),
                             np.asarray(out_t, np.float32),
                             rtol=0.02 if attn.dtype != jnp.float32 else 1e-5,
                             atol=0.02 if attn.dtype != jnp.float32 else 1e-5)
  with pytest.raises(ValueError, match='4 query rows for 3'):
    attn.set_static_kv(enc)
    attn(q[:4], mask=mask, use_static_kv=True, beam_groups=1)
