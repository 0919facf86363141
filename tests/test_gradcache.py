"""Gradient accumulation for the dual encoder (GradCache): microbatches keep
the whole batch's in-batch negatives, so the accumulated gradient equals the
one-batch gradient, on a data=4 x model=2 mesh; naive per-microbatch
accumulation (negatives shrunk to a microbatch) does not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rosetta import optimizers, partitioning, trainer
from retrieval.dense import dual_encoder_model as dem

from tests.test_dual_encoder import cfg, model_batch


def _trainer(model, mesh, microbatches):
  return trainer.Trainer(model, partitioning.Partitioner(mesh),
                         optimizers.make_optimizer('sgd', 1.0),
                         num_microbatches=microbatches)


def _step(tr, net, batch):
  state = tr.state_from_network(net)
  before = jax.tree.map(np.asarray, state['params'])   # the step donates
  batch = jax.device_put(batch, tr.batch_shardings(batch))
  new, metrics = tr.train_step(state, batch)
  # SGD at lr 1: params - new params = the gradient.
  grads = jax.tree.map(lambda a, b: a - np.asarray(b), before,
                       new['params'])
  return grads, metrics


def test_split_and_merge_microbatches_are_inverse():
  batch = {'a': jnp.arange(12).reshape(6, 2), 'b': jnp.arange(6)}
  micro = trainer.split_microbatches(batch, 3)
  assert micro['b'].tolist() == [[0, 3], [1, 4], [2, 5]]   # strided
  merged = trainer.merge_microbatches(micro)
  assert all((merged[k] == batch[k]).all() for k in batch)
  with pytest.raises(ValueError, match='not divisible by num_microbatches=4'):
    trainer.split_microbatches(batch, 4)


@pytest.mark.parametrize('negatives', [0, 1])
def test_gradcache_equals_one_batch(mesh_data4_model2, negatives):
  model = dem.DualEncoderModel(cfg(learn_temperature=True),
                               num_negatives=negatives)
  net = model.make_network(nnx.Rngs(0))
  batch = model_batch(b=16, k=max(negatives, 1))
  if not negatives:
    batch = {k: v for k, v in batch.items() if 'negative' not in k}
  want, m1 = _step(_trainer(model, mesh_data4_model2, 1), net, batch)
  got, m4 = _step(_trainer(model, mesh_data4_model2, 4), net, batch)
  np.testing.assert_allclose(float(m4['loss']), float(m1['loss']), rtol=1e-5)
  assert float(m4['accuracy']) == float(m1['accuracy'])
  assert float(m4['num_tokens']) == 16.0
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-6)
  # The learnable temperature gets its gradient (from the loss pass).
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(got)) > 1e-4


def test_naive_microbatch_accumulation_differs(mesh_data4_model2):
  """What GradCache avoids: summing per-microbatch losses (4 negatives per
  query instead of 16) changes the loss and the gradient."""
  model = dem.DualEncoderModel(cfg(), num_negatives=0)
  net = model.make_network(nnx.Rngs(0))
  batch = {k: v for k, v in model_batch(b=16).items() if 'negative' not in k}
  want, m1 = _step(_trainer(model, mesh_data4_model2, 1), net, batch)
  graphdef, params = nnx.split(net, nnx.Param)
  micro = trainer.split_microbatches(batch, 4)
  naive = None
  for i in range(4):
    mb = jax.tree.map(lambda x: x[i], micro)
    g = jax.grad(lambda p: model.loss_fn(nnx.merge(graphdef, p), mb,
                                         normalizer=16.0)[0])(params)
    naive = g if naive is None else jax.tree.map(jnp.add, naive, g)
  naive_leaves = [np.asarray(x) for x in jax.tree.leaves(naive)]
  gaps = [np.abs(a - b).max() for a, b in zip(naive_leaves,
                                              jax.tree.leaves(want))]
  assert max(gaps) > 1e-3
