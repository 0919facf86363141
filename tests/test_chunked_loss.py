"""Chunked output projection + cross entropy (`rosetta.model.chunked_loss`)
against the whole-logits path: same losses, metrics and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rosetta import optimizers
from rosetta.model import chunked_loss
from rosetta.model import layers
from rosetta.model import losses
from rosetta.model import encoder_decoder_model
from rosetta import partitioning, trainer
from rosetta.model.encoder_decoder import T5Config
from tests.test_trainer import step_losses


def _whole(x, kernel, targets, weights, dtype, ls, z_loss):
  logits = layers.dense(x, kernel, dtype)
  loss, z = losses.cross_entropy_with_logits(
      logits, targets, weights, label_smoothing=ls, z_loss=z_loss)
  target_logit = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  correct = (target_logit >= jnp.max(logits, -1)) * weights
  return loss, z, correct


def _chunked(x, kernel, targets, weights, dtype, ls, z_loss, chunk):
  return chunked_loss.projected_cross_entropy(
      x, kernel, targets, weights, dtype=dtype, chunk_length=chunk,
      label_smoothing=ls, z_loss=z_loss)


def _problem(seed=0, b=3, l=7, e=16, v=40):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, l, e)).astype(np.float32)
  kernel = (rng.standard_normal((e, v)) * 0.5).astype(np.float32)
  targets = rng.integers(0, v, (b, l)).astype(np.int32)
  weights = (rng.random((b, l)) > 0.2).astype(np.float32)
  return x, kernel, targets, weights


@pytest.mark.parametrize('chunk', [1, 3, 7, 16])
@pytest.mark.parametrize('ls,z_loss', [(0.0, 0.0), (0.1, 1e-2)])
def test_float32_equals_whole_logits(chunk, ls, z_loss):
  """Length 7 in chunks of 1, 3 (padded), 7 and 16 (one padded chunk)."""
  x, kernel, targets, weights = _problem()
  want = _whole(x, kernel, targets, weights, jnp.float32, ls, z_loss)
  got = _chunked(x, kernel, targets, weights, jnp.float32, ls, z_loss, chunk)
  for w, g in zip(want, got):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)

  def total(fn, *extra):
    def f(x, kernel, weights):
      loss, z, _ = fn(x, kernel, targets, weights, jnp.float32, ls, z_loss,
                      *extra)
      return loss.sum() + 3.0 * z.sum()   # both outputs carry gradient
    return jax.grad(f, argnums=(0, 1, 2))(x, kernel, weights)
  for w, g in zip(total(_whole), total(_chunked, chunk)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_bfloat16_gradients_match_the_whole_logits_path():
  x, kernel, targets, weights = _problem(seed=1, b=4, l=9, e=32, v=64)

  def grads(fn, *extra):
    f = lambda x, k: fn(x, k, targets, weights, jnp.bfloat16, 0.1, 1e-3,
                        *extra)[0].sum()
    return jax.jit(jax.grad(f, argnums=(0, 1)))(x, kernel)
  for w, g in zip(grads(_whole), grads(_chunked, 4)):
    np.testing.assert_allclose(g, w, rtol=2e-2, atol=2e-3)


def test_bad_arguments():
  x, kernel, targets, weights = _problem()
  with pytest.raises(ValueError, match='chunk_length'):
    _chunked(x, kernel, targets, weights, jnp.float32, 0.0, 0.0, 0)
  with pytest.raises(ValueError, match='label_smoothing'):
    _chunked(x, kernel, targets, weights, jnp.float32, 1.0, 0.0, 2)
  with pytest.raises(ValueError, match='loss_chunk_length'):
    encoder_decoder_model.EncoderDecoderModel(T5Config(), loss_chunk_length=0)


CFG = T5Config(vocab_size=48, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
               num_encoder_layers=1, num_decoder_layers=2, dropout_rate=0.0)


def _batch(b=4, seed=0):
  rng = np.random.default_rng(seed)
  tgt = rng.integers(2, 48, (b, 10)).astype(np.int32)
  tgt[0, 6:] = 0
  return {'encoder_input_tokens': rng.integers(2, 48, (b, 8)).astype(np.int32),
          'decoder_target_tokens': tgt,
          'decoder_input_tokens': np.concatenate(
              [np.zeros((b, 1), np.int32), tgt[:, :-1]], 1)}


@pytest.mark.parametrize('tied', [False, True])
def test_model_loss_metrics_and_gradients(tied):
  """The wrapper's loss_fn with loss_chunk_length equals the whole-logits
  loss_fn on the same network: loss, metrics and every parameter's
  gradient (tied embeddings: the T5 v1.0 rescaled projection)."""
  cfg = CFG.replace(tie_word_embeddings=tied)
  whole = encoder_decoder_model.EncoderDecoderModel(cfg, label_smoothing=0.1, z_loss=1e-3)
  chunked = encoder_decoder_model.EncoderDecoderModel(cfg, label_smoothing=0.1, z_loss=1e-3,
                                       loss_chunk_length=3)
  net = whole.make_network(nnx.Rngs(0))
  graphdef, params = nnx.split(net, nnx.Param)
  batch = _batch()

  def run(wrapper):
    def f(p):
      return wrapper.loss_fn(nnx.merge(graphdef, p), batch)
    (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, metrics, grads
  lw, mw, gw = run(whole)
  lc, mc, gc = run(chunked)
  np.testing.assert_allclose(lc, lw, rtol=1e-5)
  for k in mw:
    np.testing.assert_allclose(mc[k], mw[k], rtol=1e-5, err_msg=k)
  for (path, w), (_, g) in zip(jax.tree_util.tree_leaves_with_path(gw),
                               jax.tree_util.tree_leaves_with_path(gc)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def test_sharded_train_steps_equal_whole_logits(mesh_data4_model2):
  """Three AdamW steps on a (data=4, model=2) mesh (vocabulary sharded over
  'model'): the same losses with and without chunking."""
  runs = []
  for chunk in (None, 4):
    sched = optimizers.learning_rate_schedule('constant', 1e-2, 0)
    tr = trainer.Trainer(
        encoder_decoder_model.EncoderDecoderModel(CFG, z_loss=1e-4,
                                   loss_chunk_length=chunk),
        partitioning.Partitioner(mesh_data4_model2),
        optimizers.make_optimizer('adamw', sched), sched, seed=3)
    state = tr.init_state()
    batch = _batch(b=8)
    batch = jax.device_put(batch, tr.batch_shardings(batch))
    runs.append(step_losses(tr, state, batch, 3))
  np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5)
  assert runs[0][2] < runs[0][0]
