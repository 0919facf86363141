"""Learning-rate schedules and optimizer construction."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rosetta import optimizers


def test_rsqrt_schedule_matches_t5():
  s = optimizers.learning_rate_schedule('rsqrt', base=1.0, warmup_steps=100)
  np.testing.assert_allclose([float(s(0)), float(s(50)), float(s(100)),
                              float(s(400))], [0.1, 0.1, 0.1, 0.05],
                             rtol=1e-6)


def test_warmup_then_decay_endpoints():
  lin = optimizers.learning_rate_schedule('linear', 2.0, warmup_steps=10,
                                          total_steps=110, end_factor=0.5)
  cos = optimizers.learning_rate_schedule('cosine', 2.0, warmup_steps=10,
                                          total_steps=110, end_factor=0.0)
  assert float(lin(0)) == 0.0 and float(lin(5)) == pytest.approx(1.0)
  assert float(lin(10)) == pytest.approx(2.0)
  assert float(lin(60)) == pytest.approx(1.5)
  assert float(lin(110)) == pytest.approx(1.0)
  assert float(cos(60)) == pytest.approx(1.0, abs=1e-5)
  assert float(cos(110)) == pytest.approx(0.0, abs=1e-6)
  const = optimizers.learning_rate_schedule('constant', 3.0, warmup_steps=0)
  assert float(const(1000)) == 3.0


@pytest.mark.parametrize('kw,match', [
    (dict(kind='exp'), "'exp' is not one of"),
    (dict(kind='cosine', warmup_steps=10), 'total_steps must be set'),
    (dict(kind='rsqrt', warmup_steps=-1), 'warmup_steps must be >= 0'),
])
def test_schedule_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    optimizers.learning_rate_schedule(**kw)


def test_optimizers_and_clipping():
  params = {'w': jnp.ones((4, 256)), 'b': jnp.ones((3,))}
  grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
  for name in ('adafactor', 'adamw', 'sgd'):
    tx = optimizers.make_optimizer(name, optax.constant_schedule(0.1),
                                   grad_clip_norm=1.0)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert all(np.isfinite(np.asarray(u)).all()
               for u in jax.tree.leaves(updates))
  sgd = optimizers.make_optimizer('sgd', optax.constant_schedule(1.0),
                                  grad_clip_norm=1.0)
  updates, _ = sgd.update(grads, sgd.init(params), params)
  assert float(optax.global_norm(updates)) == pytest.approx(1.0, rel=1e-5)
  with pytest.raises(ValueError, match="'lamb' is not one of"):
    optimizers.make_optimizer('lamb')
  with pytest.raises(ValueError, match='grad_clip_norm must be positive'):
    optimizers.make_optimizer('sgd', grad_clip_norm=-1.0)
