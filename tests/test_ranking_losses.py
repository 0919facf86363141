"""Ranking losses (retrieval/rerank/losses.py) against plain NumPy loops on
random padded lists; zero losses and finite gradients for lists with
nothing to learn; the invariances the losses are chosen for."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrieval.rerank import losses


def softplus(x: float) -> float:
  return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def ref_pointwise(s, y, m):
  out = []
  for si, yi, mi in zip(s, y, m):
    terms = [softplus(a) - float(b > 0) * a
             for a, b, ok in zip(si, yi, mi) if ok]
    out.append(sum(terms) / len(terms) if terms else 0.0)
  return np.asarray(out)


def ref_pairwise(s, y, m):
  out = []
  for si, yi, mi in zip(s, y, m):
    n = len(si)
    terms = [softplus(-(si[i] - si[j])) for i in range(n) for j in range(n)
             if mi[i] and mi[j] and yi[i] > yi[j]]
    out.append(sum(terms) / len(terms) if terms else 0.0)
  return np.asarray(out)


def ref_listwise(s, y, m):
  out = []
  for si, yi, mi in zip(s, y, m):
    valid = [i for i in range(len(si)) if mi[i]]
    grades = {i: max(yi[i], 0.0) for i in valid}
    total = sum(grades.values())
    if not valid or total == 0:
      out.append(0.0)
      continue
    top = max(si[i] for i in valid)
    lse = top + math.log(sum(math.exp(si[i] - top) for i in valid))
    out.append(-sum(grades[i] / total * (si[i] - lse) for i in valid))
  return np.asarray(out)


def ref_margin_mse(s, t, m):
  out = []
  for si, ti, mi in zip(s, t, m):
    terms = [((si[0] - si[j]) - (ti[0] - ti[j])) ** 2
             for j in range(1, len(si)) if mi[0] and mi[j]]
    out.append(sum(terms) / len(terms) if terms else 0.0)
  return np.asarray(out)


def random_lists(seed=0, b=7, n=6):
  """Scores, graded labels (0..3) and a mask with padded tails; row 5 is
  all padding, row 6 one candidate; padding holds NaN / inf garbage."""
  rng = np.random.default_rng(seed)
  s = rng.normal(0, 2, (b, n)).astype(np.float32)
  y = rng.integers(0, 4, (b, n)).astype(np.float32)
  lengths = rng.integers(2, n + 1, b)
  lengths[5], lengths[6] = 0, 1
  m = np.arange(n)[None, :] < lengths[:, None]
  s = np.where(m, s, np.nan).astype(np.float32)
  s[0, -1] = np.inf if not m[0, -1] else s[0, -1]
  y = np.where(m, y, np.nan).astype(np.float32)
  return s, y, m


REFERENCES = {'pointwise': ref_pointwise, 'pairwise': ref_pairwise,
              'listwise': ref_listwise}


@pytest.mark.parametrize('name', sorted(REFERENCES))
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_loss_matches_numpy_loop(name, seed):
  s, y, m = random_lists(seed)
  got = np.asarray(losses.ranking_loss(name, s, y, m))
  want = REFERENCES[name](s.tolist(), y.tolist(), m.tolist())
  assert got.shape == (7,) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert got[5] == 0.0                      # all padding
  assert (got >= 0).all() and np.isfinite(got).all()


@pytest.mark.parametrize('seed', [0, 1])
def test_margin_mse_matches_numpy_loop(seed):
  s, _, m = random_lists(seed)
  t = np.random.default_rng(seed + 10).normal(size=s.shape).astype(
      np.float32)
  t = np.where(m, t, np.nan).astype(np.float32)
  got = np.asarray(losses.margin_mse_loss(s, t, m))
  np.testing.assert_allclose(got, ref_margin_mse(s.tolist(), t.tolist(),
                                                 m.tolist()),
                             rtol=1e-5, atol=1e-6)
  assert got[5] == got[6] == 0.0            # no candidate / no negative


def test_bfloat16_scores_are_computed_in_float32():
  s, y, m = random_lists(3)
  low = jnp.asarray(np.nan_to_num(s), jnp.bfloat16)
  got = losses.listwise_softmax_loss(low, y, m)
  assert got.dtype == jnp.float32
  want = ref_listwise(np.asarray(low, np.float32).tolist(), y.tolist(),
                      m.tolist())
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


ALL = dict(losses.LOSSES, margin_mse=losses.margin_mse_loss)


@pytest.mark.parametrize('name', sorted(ALL))
def test_nothing_to_learn_gives_zero_and_finite_gradients(name):
  n = 4
  s = np.array([[np.nan, np.inf, -np.inf, 1e30],     # all padding
                [3.0, np.nan, np.nan, np.nan],       # one candidate
                [1.0, 2.0, 0.5, np.nan]], np.float32)
  y = np.array([[np.nan] * n, [2.0, 0, 0, 0], [0.0, 0.0, 0.0, np.nan]],
               np.float32)
  m = np.array([[False] * n, [True, False, False, False],
                [True, True, True, False]])
  second = y if name != 'margin_mse' else np.where(m, s, np.nan)
  fn = ALL[name]
  value = np.asarray(fn(s, second, m))
  grads = np.asarray(jax.grad(lambda x: fn(x, second, m).sum())(
      jnp.asarray(s)))
  assert np.isfinite(grads).all(), grads
  assert value[0] == 0.0 and (grads[0] == 0).all()
  # One candidate: nothing to rank, except pointwise, which classifies it.
  if name != 'pointwise':
    assert value[1] == 0.0 and (grads[1] == 0).all()
  if name in ('pairwise', 'listwise'):     # no relevant candidate at all
    assert value[2] == 0.0 and (grads[2] == 0).all()
  if name == 'margin_mse':                  # student == teacher
    assert value[2] == 0.0


def test_listwise_is_invariant_to_a_constant_per_list():
  s, y, m = random_lists(4)
  s = np.nan_to_num(s, nan=0.0, posinf=0.0)
  shift = np.array([[100.0], [-50.0], [0.5], [0], [7], [3], [-2]],
                   np.float32)
  a = np.asarray(losses.listwise_softmax_loss(s, y, m))
  b = np.asarray(losses.listwise_softmax_loss(s + shift, y, m))
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # ... but not to a change of order: swapping two graded candidates moves it.
  assert not np.allclose(
      a, losses.listwise_softmax_loss(s[:, ::-1], y, m[:, ::-1]))


def test_margin_mse_zero_for_teacher_plus_constant_only():
  rng = np.random.default_rng(5)
  t = rng.normal(size=(4, 5)).astype(np.float32)
  m = np.ones((4, 5), bool)
  m[1, 3:] = False
  shift = rng.normal(size=(4, 1)).astype(np.float32) * 10
  np.testing.assert_allclose(
      np.asarray(losses.margin_mse_loss(t + shift, t, m)), 0.0, atol=1e-5)
  scaled = np.asarray(losses.margin_mse_loss(2 * t, t, m))
  assert (scaled > 1e-3).all()
  # Its gradient pulls the student's margins toward the teacher's.
  s = jnp.asarray(2 * t)
  g = jax.grad(lambda x: losses.margin_mse_loss(x, t, m).sum())(s)
  after = np.asarray(losses.margin_mse_loss(s - 0.1 * g, t, m))
  assert (after < scaled).all()


def test_pointwise_and_pairwise_prefer_the_right_order():
  y = np.array([[2.0, 0.0, 1.0]], np.float32)
  m = np.ones((1, 3), bool)
  good = np.array([[3.0, -3.0, 1.0]], np.float32)
  bad = np.array([[-3.0, 3.0, 1.0]], np.float32)  # non-relevant on top
  for name in ('pointwise', 'pairwise', 'listwise'):
    assert (float(losses.ranking_loss(name, good, y, m)[0])
            < float(losses.ranking_loss(name, bad, y, m)[0])), name


def test_unknown_loss_name_and_bad_shapes():
  s = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match=r"'hinge'.*listwise.*pairwise.*"
                     r"pointwise"):
    losses.ranking_loss('hinge', s, s, s > 0)
  with pytest.raises(ValueError, match=r'labels \(2, 4\) do not match'):
    losses.pairwise_loss(s, np.zeros((2, 4)), s == 0)
  with pytest.raises(ValueError, match='scores and mask'):
    losses.pointwise_loss(s, s, np.ones((3,), bool))
