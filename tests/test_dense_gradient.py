"""`layers.dense`'s custom VJP: exact math, and kernels XLA:CPU runs fast.

The kernel gradient `x^T g` is computed as a canonical matmul on a
materialised transpose of x (`layers.materialized_transpose`): XLA folds a
plain transpose into the dot, and XLA:CPU then runs it with bfloat16
promoted to float32 on a kernel ~2.5x slower (a third of a T5 training
step's matmul FLOPs).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rosetta.model import layers


def _grads(x, k, dtype):
  return jax.jit(jax.grad(lambda x, k: (layers.dense(x, k, dtype) ** 2).sum(),
                          argnums=(0, 1)))(x, k)


@pytest.mark.parametrize('rows,cols,out', [(1, 2, 1), (3, 5, 4), (7, 6, 3),
                                           (64, 32, 48), (129, 130, 17)])
def test_float32_gradients_equal_numpy(rows, cols, out):
  rng = np.random.default_rng(rows * cols)
  x = rng.standard_normal((rows, cols)).astype(np.float32)
  k = rng.standard_normal((cols, out)).astype(np.float32)
  gx, gk = _grads(x, k, 'float32')
  g = 2 * (x.astype(np.float64) @ k)            # d(sum y^2)/dy
  np.testing.assert_allclose(gx, g @ k.T, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gk, x.T @ g, rtol=1e-4, atol=1e-4)


def test_bfloat16_gradients_round_like_bfloat16_activations():
  """Inputs, kernel and cotangent are rounded to bfloat16, products are
  accumulated in float32: exactly that computation in NumPy."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((96, 34)).astype(np.float32)
  k = rng.standard_normal((34, 20)).astype(np.float32)
  gx, gk = _grads(x, k, 'bfloat16')
  bf = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32),
                            np.float64)
  xl, kl = bf(x), bf(k)
  g = bf(2 * np.asarray(jnp.dot(jnp.asarray(xl, jnp.bfloat16),
                                jnp.asarray(kl, jnp.bfloat16),
                                preferred_element_type=jnp.float32)))
  np.testing.assert_allclose(gx, g @ kl.T, rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(gk, xl.T @ g, rtol=1e-4, atol=1e-3)
  assert gx.dtype == jnp.float32 and gk.dtype == jnp.float32


def test_materialized_transpose():
  x = np.arange(3 * 8).reshape(3, 8)
  np.testing.assert_array_equal(layers.materialized_transpose(x), x.T)
  odd = np.arange(3 * 5).reshape(3, 5)
  np.testing.assert_array_equal(layers.materialized_transpose(odd), odd.T)


def _dots_on_promoted_operands(hlo: str) -> int:
  """Dots with an operand that is bfloat16 converted to float32: a
  float32 value made by a `convert` (or a fusion named after one)."""
  defs = dict(re.findall(r'%([\w.\-]+) = (\S+) ', hlo))
  ops = dict(re.findall(r'%([\w.\-]+) = \S+ (\w[\w\-]*)\(', hlo))
  count = 0
  for operands in re.findall(r'= \S+ dot\(([^)]*)\)', hlo):
    for op in operands.split(','):
      name = op.strip().lstrip('%')
      if defs.get(name, '').startswith('f32') and (
          ops.get(name) == 'convert' or 'convert' in name):
        count += 1
  return count


def test_kernel_gradient_compiles_like_the_forward_matmul():
  """Whatever XLA:CPU does with a canonical bfloat16 x bfloat16 -> float32
  matmul on this machine, the backward matmuls get the same treatment:
  no dot of the backward pass reads bfloat16 promoted to float32 unless
  the forward one does. (It fails with a plain `x.T @ g`.)"""
  x = jnp.zeros((256, 128), jnp.float32)
  k = jnp.zeros((128, 192), jnp.float32)
  fwd = jax.jit(lambda x, k: layers.dense(x, k, 'bfloat16')).lower(
      x, k).compile().as_text()
  bwd = jax.jit(jax.grad(lambda x, k: layers.dense(x, k, 'bfloat16').sum(),
                         argnums=(0, 1))).lower(x, k).compile().as_text()
  if _dots_on_promoted_operands(fwd):
    pytest.skip('this CPU promotes even the forward bfloat16 matmul')
  assert _dots_on_promoted_operands(bwd) == 0, bwd
