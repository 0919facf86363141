"""The encoder-decoder on its own: bucketing, packing, the KV cache, dropout,
bfloat16 activations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rosetta.model import layers
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config

CFG = T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
               num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)


@pytest.fixture(scope='module')
def model():
  return EncoderDecoder(CFG, rngs=nnx.Rngs(0))


def test_relative_position_buckets_golden():
  rel = jnp.array([-1000, -200, -127, -16, -8, -5, -1, 0, 1, 5, 8, 127, 200])
  bidirectional = layers.relative_position_bucket(rel, True, 32, 128)
  causal = layers.relative_position_bucket(rel, False, 32, 128)
  # Hand-computed from T5's formula (exact below max_exact, then log-spaced).
  assert bidirectional.tolist() == [15, 15, 15, 10, 8, 5, 1, 0, 17, 21, 24,
                                    31, 31]
  assert causal.tolist() == [31, 31, 31, 16, 8, 5, 1, 0, 0, 0, 0, 0, 0]


def test_packed_row_equals_separate_examples(model):
  # Two examples, run alone (padded) and packed into one row.
  a_enc, a_tgt = [5, 6, 7, 1], [9, 10, 1]
  b_enc, b_tgt = [11, 12, 1], [13, 14, 15, 1]

  def shift(t):
    return [0] + t[:-1]

  def alone(enc, tgt):
    e = jnp.array([enc + [0] * (8 - len(enc))])
    t = jnp.array([tgt + [0] * (8 - len(tgt))])
    d = jnp.array([shift(tgt) + [0] * (8 - len(tgt))])
    return model(e, d, t)[0, :len(tgt)]

  enc = jnp.array([a_enc + b_enc + [0]])
  enc_seg = jnp.array([[1] * 4 + [2] * 3 + [0]])
  enc_pos = jnp.array([[0, 1, 2, 3, 0, 1, 2, 0]])
  tgt = jnp.array([a_tgt + b_tgt + [0]])
  dec_in = jnp.array([shift(a_tgt) + shift(b_tgt) + [0]])
  dec_seg = jnp.array([[1] * 3 + [2] * 4 + [0]])
  dec_pos = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]])
  packed = model(enc, dec_in, tgt, enc_seg, dec_seg, enc_pos, dec_pos)[0]
  np.testing.assert_allclose(packed[:3], alone(a_enc, a_tgt), atol=1e-5)
  np.testing.assert_allclose(packed[3:7], alone(b_enc, b_tgt), atol=1e-5)


def test_incremental_decoding_matches_teacher_forcing(model):
  enc = jnp.array([[5, 6, 7, 1, 0], [3, 4, 1, 0, 0]])
  dec_in = jnp.array([[0, 9, 10, 11, 12], [0, 12, 13, 14, 15]])
  full, full_xattn = model.decode(model.encode(enc), enc, dec_in,
                                  return_cross_attention=True)

  @nnx.jit
  def run(m, enc, dec_in):
    m.init_cache(m.encode(enc), enc, max_decode_length=7)
    steps = [m.decode_step(dec_in[:, t:t + 1]) for t in range(2)]
    rest = m.decode_step(dec_in[:, 2:])  # a multi-token chunk works too
    logits = jnp.concatenate([s[0] for s in steps] + [rest[0]], axis=1)
    xattn = jnp.concatenate([s[1] for s in steps] + [rest[1]], axis=1)
    return logits, xattn, m.decoder.cache_index[...]

  m = EncoderDecoder(CFG, rngs=nnx.Rngs(0))
  logits, xattn, index = run(m, enc, dec_in)
  np.testing.assert_allclose(logits, full, atol=1e-5)
  np.testing.assert_allclose(xattn, full_xattn, atol=1e-6)
  assert int(index) == 5
  # Cross-attention never lands on encoder padding and sums to one.
  assert float(jnp.abs(xattn[1, :, 3:]).max()) < 1e-6
  np.testing.assert_allclose(xattn.sum(-1), 1.0, atol=1e-5)


def test_dropout_is_active_only_when_asked():
  cfg = CFG.replace(dropout_rate=0.3)
  m = EncoderDecoder(cfg, rngs=nnx.Rngs(0))
  enc = jnp.array([[5, 6, 7, 1]])
  dec_in, tgt = jnp.array([[0, 9, 10]]), jnp.array([[9, 10, 1]])
  det1 = m(enc, dec_in, tgt)
  det2 = m(enc, dec_in, tgt)
  np.testing.assert_array_equal(det1, det2)
  r1 = m(enc, dec_in, tgt, deterministic=False, rngs=nnx.Rngs(dropout=1))
  r1b = m(enc, dec_in, tgt, deterministic=False, rngs=nnx.Rngs(dropout=1))
  r2 = m(enc, dec_in, tgt, deterministic=False, rngs=nnx.Rngs(dropout=2))
  np.testing.assert_array_equal(r1, r1b)
  assert float(jnp.abs(r1 - r2).max()) > 1e-3
  assert float(jnp.abs(r1 - det1).max()) > 1e-3


def test_bfloat16_activations_float32_params(model):
  bf = EncoderDecoder(CFG.replace(dtype='bfloat16'), rngs=nnx.Rngs(0))
  for _, v in nnx.to_flat_state(nnx.state(bf, nnx.Param)):
    assert v.get_value().dtype == jnp.float32
  enc = jnp.array([[5, 6, 7, 1, 0]])
  dec_in, tgt = jnp.array([[0, 9, 10]]), jnp.array([[9, 10, 1]])
  assert bf.encode(enc).dtype == jnp.bfloat16
  logits = bf(enc, dec_in, tgt)
  assert logits.dtype == jnp.float32  # losses are computed in float32
  ref = model(enc, dec_in, tgt)
  assert float(jnp.abs(logits - ref).max()) < 0.1 * float(jnp.abs(ref).max())
  # Softmax outputs agree closely even though activations are bfloat16.
  np.testing.assert_allclose(jax.nn.softmax(logits), jax.nn.softmax(ref),
                             atol=2e-2)


def test_tied_embeddings_have_no_output_kernel():
  m = EncoderDecoder(CFG.replace(tie_word_embeddings=True,
                                 mlp_activations=('relu',)),
                     rngs=nnx.Rngs(0))
  names = {'/'.join(map(str, p)) for p, _ in
           nnx.to_flat_state(nnx.state(m, nnx.Param))}
  assert 'decoder/logits_dense' not in names
  assert 'encoder/layers/0/mlp/wi' in names
  enc = jnp.array([[5, 6, 1]])
  assert m(enc, jnp.array([[0, 3]]), jnp.array([[3, 1]])).shape == (1, 2, 64)


def test_bad_activation_name():
  with pytest.raises(ValueError, match="unknown MLP activation 'gleu'"):
    EncoderDecoder(CFG.replace(mlp_activations=('gleu', 'linear')),
                   rngs=nnx.Rngs(0))
