"""Train state, sharded steps, gradient accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rosetta import optimizers, partitioning, trainer
from rosetta.model import encoder_decoder_model
from rosetta.model.encoder_decoder import T5Config

CFG = T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
               num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)


def make_trainer(mesh, name='adafactor', microbatches=1, cfg=CFG):
  sched = optimizers.learning_rate_schedule('constant', 1e-2, 0)
  return trainer.Trainer(
      encoder_decoder_model.EncoderDecoderModel(cfg, z_loss=1e-4),
      partitioning.Partitioner(mesh),
      optimizers.make_optimizer(name, sched, grad_clip_norm=1.0), sched,
      num_microbatches=microbatches, seed=3)


def make_batch(tr, seed=0, b=8):
  rng = np.random.default_rng(seed)
  tgt = rng.integers(2, 64, (b, 6)).astype(np.int32)
  tgt[:, -1] = 1
  tgt[1, 3:] = 0
  batch = {'encoder_input_tokens': rng.integers(2, 64, (b, 7)).astype(
               np.int32),
           'decoder_target_tokens': tgt,
           'decoder_input_tokens': np.concatenate(
               [np.zeros((b, 1), np.int32), tgt[:, :-1]], 1)}
  return jax.device_put(batch, tr.batch_shardings(batch))


def test_state_is_born_sharded(mesh_data4_model2):
  tr = make_trainer(mesh_data4_model2, 'adamw')
  state = tr.init_state()
  wi = state['params']['encoder']['layers'][0]['mlp']['wi_0']
  want = NamedSharding(mesh_data4_model2, P('fsdp', 'model'))
  assert wi.sharding.is_equivalent_to(want, 2)
  mu = state['opt_state'][1][0].mu['encoder']['layers'][0]['mlp']['wi_0']
  assert mu.sharding.is_equivalent_to(want, 2)
  assert int(state['step']) == 0


def test_loss_goes_down_and_step_counts(mesh_data4_model2):
  tr = make_trainer(mesh_data4_model2)
  state = tr.init_state()
  batch = make_batch(tr)
  losses = []
  for _ in range(15):
    state, metrics = tr.train_step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.6 * losses[0]
  assert int(state['step']) == 15
  assert float(metrics['learning_rate']) == pytest.approx(1e-2)
  assert np.isfinite(float(metrics['grad_norm']))


@pytest.mark.parametrize('name', ['sgd', 'adamw'])
def test_gradient_accumulation_equals_big_batch(mesh_data4_model2, name):
  one = make_trainer(mesh_data4_model2, name, microbatches=1)
  two = make_trainer(mesh_data4_model2, name, microbatches=2)
  s1, s2 = one.init_state(), two.init_state()
  batch = make_batch(one)
  for _ in range(2):
    s1, m1 = one.train_step(s1, batch)
    s2, m2 = two.train_step(s2, batch)
    np.testing.assert_allclose(float(m1['loss']), float(m2['loss']),
                               rtol=1e-5)
    np.testing.assert_allclose(float(m1['grad_norm']),
                               float(m2['grad_norm']), rtol=1e-4)
  # Adam divides by sqrt(v): a gradient component near zero turns float
  # rounding of the two summation orders into up to ~1% of one lr-sized
  # (1e-2) step; a wrong accumulation (e.g. a missing normalizer) moves
  # parameters by a whole step.
  atol = 1e-4 if name == 'adamw' else 2e-5
  for a, b in zip(jax.tree.leaves(s1['params']), jax.tree.leaves(s2['params'])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol)


def step_losses(tr, state, batch, steps):
  """The losses of `steps` train steps on the same batch."""
  losses = []
  for _ in range(steps):
    state, metrics = tr.train_step(state, batch)
    losses.append(float(metrics['loss']))
  return losses


def test_same_losses_on_two_meshes(mesh_data8, mesh_data2_model4):
  losses = []
  for mesh in (mesh_data8, mesh_data2_model4):
    tr = make_trainer(mesh, 'adamw', cfg=CFG.replace(dropout_rate=0.1))
    state = tr.init_state()
    losses.append(step_losses(tr, state, make_batch(tr), 3))
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_aot_lowering_without_data(mesh_data4_model2):
  tr = make_trainer(mesh_data4_model2)
  shapes = {'encoder_input_tokens': (8, 16), 'decoder_input_tokens': (8, 8),
            'decoder_target_tokens': (8, 8)}
  compiled = tr.lower_train_step(shapes).compile()
  assert compiled is not None


def test_bad_microbatching(mesh_data4_model2):
  tr = make_trainer(mesh_data4_model2, microbatches=3)
  with pytest.raises(ValueError, match='not divisible by num_microbatches=3'):
    tr.train_step(tr.init_state(), make_batch(tr))
