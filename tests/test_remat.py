"""Rematerialisation policies (T5Config.remat) change what the backward pass
keeps, never what it computes: loss and gradients equal the 'none' policy's
(dropout on, so the dropout masks must be drawn identically too)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rosetta.model.encoder_decoder import T5Config
from rosetta.model.encoder_decoder_model import EncoderDecoderModel

CFG = T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
               num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1)


@functools.cache
def _loss_and_grads(remat: str):
  model = EncoderDecoderModel(CFG.replace(remat=remat))
  network = model.make_network(nnx.Rngs(params=0))
  graphdef, params, rest = nnx.split(network, nnx.Param, ...)
  rng = np.random.default_rng(0)
  batch = {
      'encoder_input_tokens': jnp.asarray(rng.integers(2, 64, (4, 12))),
      'decoder_input_tokens': jnp.asarray(rng.integers(2, 64, (4, 10))),
      'decoder_target_tokens': jnp.asarray(rng.integers(2, 64, (4, 10))),
  }

  def loss(params):
    net = nnx.merge(graphdef, params, rest)
    return model.loss_fn(net, batch, jax.random.key(3))[0]
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  return float(value), nnx.to_pure_dict(grads)


@pytest.mark.parametrize('remat', ['full', 'dots_saveable'])
def test_remat_policy_gives_the_same_loss_and_gradients(remat):
  loss_none, grads_none = _loss_and_grads('none')
  loss, grads = _loss_and_grads(remat)
  assert loss == pytest.approx(loss_none, rel=1e-6)
  assert np.isfinite(loss_none) and loss_none > 1.0   # a real loss, dropout on
  flat_none = jax.tree.leaves(grads_none)
  flat = jax.tree.leaves(grads)
  assert len(flat) == len(flat_none) > 15
  for a, b in zip(flat, flat_none):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-6)


def test_unknown_remat_policy_is_named():
  with pytest.raises(ValueError, match=r"T5Config.remat must be one of .*"
                     r"'dots_saveable'.*got 'some'"):
    CFG.replace(remat='some')
