"""The encoder-decoder wrapper's loss against hand computations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rosetta.model import encoder_decoder_model
from rosetta.model.encoder_decoder import T5Config

CFG = T5Config(vocab_size=32, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
               num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)


def test_cross_entropy_golden():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
  targets = jnp.array([[0, 2]])
  weights = jnp.array([[1.0, 1.0]])
  loss, z = encoder_decoder_model.cross_entropy_with_logits(logits, targets, weights)
  np.testing.assert_allclose(loss, [[-np.log(0.5), -np.log(0.8)]], rtol=1e-6)
  assert float(jnp.abs(z).max()) == 0.0
  # Label smoothing 0.2 over 3 classes: q = (0.8, 0.1, 0.1) at target 0.
  ls, _ = encoder_decoder_model.cross_entropy_with_logits(logits, targets, weights,
                                           label_smoothing=0.2)
  q = np.array([0.8, 0.1, 0.1])
  p = np.array([0.5, 0.25, 0.25])
  want0 = -(q * np.log(p)).sum() + (q * np.log(q)).sum()
  np.testing.assert_allclose(ls[0, 0], want0, rtol=1e-5)
  # z-loss: log Z of unnormalised logits.
  shifted = logits + 2.0
  zl, zpart = encoder_decoder_model.cross_entropy_with_logits(shifted, targets, weights,
                                               z_loss=1e-2)
  np.testing.assert_allclose(zpart, 1e-2 * 4.0, rtol=1e-5)
  np.testing.assert_allclose(zl - zpart, loss, rtol=1e-5)
  # Weights zero out padding.
  wl, _ = encoder_decoder_model.cross_entropy_with_logits(logits, targets,
                                           jnp.array([[1.0, 0.0]]))
  assert float(wl[0, 1]) == 0.0


def _reference_cross_entropy(logits, targets, weights, ls, z_loss):
  """The textbook formula, differentiated by autodiff."""
  v = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits, -1)
  q = jnp.where(jax.nn.one_hot(targets, v) > 0, 1.0 - ls, ls / (v - 1))
  entropy = -jnp.sum(jnp.where(q > 0, q * jnp.log(jnp.maximum(q, 1e-30)),
                               0.0), -1)
  z = z_loss * jnp.square(jax.nn.logsumexp(logits, -1))
  loss = -jnp.sum(q * log_probs, -1) - entropy
  return (loss + z) * weights, z * weights


@pytest.mark.parametrize('ls,z_loss', [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-2),
                                       (0.2, 1e-3)])
def test_cross_entropy_custom_gradient_equals_autodiff(ls, z_loss):
  """The fused hand-written VJP (rosetta/model/losses.py) against autodiff of the
  textbook formula: logits and weights gradients, both outputs used."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(0, 3, (2, 5, 11)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, (2, 5)), jnp.int32)
  weights = jnp.asarray(rng.integers(0, 2, (2, 5)), jnp.float32)
  def objective(fn):
    def f(lg, w):
      loss, z = fn(lg, targets, w)
      return jnp.sum(loss * jnp.arange(1, 6)) + 3.0 * jnp.sum(z)
    return f
  ours = functools.partial(encoder_decoder_model.cross_entropy_with_logits,
                           label_smoothing=ls, z_loss=z_loss)
  ref = functools.partial(_reference_cross_entropy, ls=ls, z_loss=z_loss)
  np.testing.assert_allclose(ours(logits, targets, weights)[0],
                             ref(logits, targets, weights)[0], rtol=1e-5,
                             atol=1e-5)
  got = jax.grad(objective(ours), argnums=(0, 1))(logits, weights)
  want = jax.grad(objective(ref), argnums=(0, 1))(logits, weights)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(got[0]).max()) > 0.01   # not trivially zero


def test_cross_entropy_rejects_bad_smoothing():
  with pytest.raises(ValueError, match='label_smoothing'):
    encoder_decoder_model.cross_entropy_with_logits(jnp.zeros((1, 1, 3)), jnp.zeros((1, 1),
                                     jnp.int32), jnp.ones((1, 1)),
                                     label_smoothing=1.0)


def test_loss_normalised_by_target_tokens_and_accumulation_exact():
  wrapper = encoder_decoder_model.EncoderDecoderModel(CFG, z_loss=0.0)
  net = wrapper.make_network(nnx.Rngs(0))
  rng = np.random.default_rng(0)
  tgt = rng.integers(2, 32, (4, 6)).astype(np.int32)
  tgt[0, 3:] = 0
  tgt[2, 1:] = 0
  batch = {
      'encoder_input_tokens': rng.integers(2, 32, (4, 5)).astype(np.int32),
      'decoder_target_tokens': tgt,
      'decoder_input_tokens': np.concatenate(
          [np.zeros((4, 1), np.int32), tgt[:, :-1]], 1),
  }
  loss, metrics = wrapper.loss_fn(net, batch)
  assert float(metrics['num_tokens']) == (tgt > 0).sum()
  np.testing.assert_allclose(loss, metrics['loss_sum'] / (tgt > 0).sum(),
                             rtol=1e-6)
  # Two microbatches with the global normaliser sum to the full-batch loss.
  halves = [{k: v[i:i + 2] for k, v in batch.items()} for i in (0, 2)]
  parts = [wrapper.loss_fn(net, h, normalizer=metrics['num_tokens'])[0]
           for h in halves]
  np.testing.assert_allclose(sum(parts), loss, rtol=1e-6)
  with pytest.raises(KeyError, match='decoder_input_tokens'):
    wrapper.check_batch({'encoder_input_tokens': 1,
                         'decoder_target_tokens': 1})


def test_dropout_rng_changes_loss():
  wrapper = encoder_decoder_model.EncoderDecoderModel(CFG.replace(dropout_rate=0.5))
  net = wrapper.make_network(nnx.Rngs(0))
  batch = {'encoder_input_tokens': jnp.array([[3, 4, 5, 1]]),
           'decoder_input_tokens': jnp.array([[0, 6, 7]]),
           'decoder_target_tokens': jnp.array([[6, 7, 1]])}
  a = wrapper.loss_fn(net, batch, jax.random.key(1))[0]
  b = wrapper.loss_fn(net, batch, jax.random.key(2))[0]
  c = wrapper.loss_fn(net, batch, jax.random.key(1))[0]
  assert float(a) != float(b) and float(a) == float(c)
