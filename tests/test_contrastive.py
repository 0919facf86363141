"""Contrastive losses: hand-computed values (duplicates, hard negatives,
DEXML, temperature), a loop-by-loop NumPy reference, the learnt
temperature, and the global batch on an 8-device mesh."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rosetta import partitioning
from retrieval.dense import contrastive


def softplus(x):
  return math.log1p(math.exp(x))


def lse(xs):
  return math.log(sum(math.exp(x) for x in xs))


def run(q, p, n=None, **kw):
  out = contrastive.in_batch_softmax(
      jnp.asarray(q, jnp.float32), jnp.asarray(p, jnp.float32),
      None if n is None else jnp.asarray(n, jnp.float32), **kw)
  return jax.tree.map(np.asarray, out)


# With positives = identity rows, scores = scale * queries.
Q2 = [[1.0, 0.0], [0.5, 0.8]]
EYE2 = np.eye(2)


def test_two_queries_by_hand():
  out = run(Q2, EYE2, scale=1.0, bidirectional=False)
  # query 0: own 1.0 vs 0.0; query 1: own 0.8 vs 0.5.
  np.testing.assert_allclose(out.loss, [softplus(0 - 1), softplus(0.5 - 0.8)],
                             rtol=1e-6)
  np.testing.assert_array_equal(out.correct, [1, 1])
  out = run(Q2, EYE2, scale=1.0, bidirectional=True)
  # doc 0 against queries: own 1.0 vs 0.5; doc 1: own 0.8 vs 0.0.
  d2q = [softplus(0.5 - 1.0), softplus(0.0 - 0.8)]
  np.testing.assert_allclose(out.doc_to_query, d2q, rtol=1e-6)
  np.testing.assert_allclose(
      out.loss, [(softplus(-1) + d2q[0]) / 2, (softplus(-0.3) + d2q[1]) / 2],
      rtol=1e-6)


def test_temperature_scales_scores():
  out = run(Q2, EYE2, scale=1 / 0.1, bidirectional=False)
  np.testing.assert_allclose(out.loss, [softplus(-10.0), softplus(-3.0)],
                             rtol=1e-5)
  np.testing.assert_allclose(out.scores, 10 * np.asarray(Q2), rtol=1e-6)


S3 = np.array([[2.0, 1.5, 0.3],
               [1.0, 0.2, -0.4],
               [0.1, 0.7, 0.9]])


def test_duplicate_positive_is_masked_not_a_negative():
  # Rows 0 and 1 share a positive document (same id): for query 0, doc 1 is
  # the same document and must not count as a negative, and vice versa.
  ids = jnp.asarray([7, 7, 9])
  out = run(S3, np.eye(3), scale=1.0, positive_ids=ids, bidirectional=False)
  np.testing.assert_allclose(out.loss, [
      softplus(0.3 - 2.0),                 # 0: negatives {2}
      softplus(-0.4 - 0.2),                # 1: negatives {2}, not {0}
      softplus(lse([0.1, 0.7]) - 0.9)], rtol=1e-6)
  plain = run(S3, np.eye(3), scale=1.0, bidirectional=False)
  assert plain.loss[0] > out.loss[0] + 0.3   # masking changed the loss
  # Doc->query: doc 0's negatives are queries {2} (query 1 shares doc 0).
  both = run(S3, np.eye(3), scale=1.0, positive_ids=ids)
  np.testing.assert_allclose(both.doc_to_query, [
      softplus(0.1 - 2.0), softplus(0.7 - 0.2),
      softplus(lse([0.3, -0.4]) - 0.9)], rtol=1e-6)
  # Accuracy: query 1's own doc (0.2) loses to doc 0 (1.0), but doc 0 is
  # relevant, so only the negative doc 2 (-0.4) competes.
  np.testing.assert_array_equal(out.correct, [1, 1, 1])
  np.testing.assert_array_equal(plain.correct, [1, 0, 1])


def test_duplicate_queries_are_masked():
  # Tatoeba repeats an English sentence with two translations: each
  # translation is a right answer for both copies.
  out = run(S3, np.eye(3), scale=1.0, query_ids=jnp.asarray([4, 4, 5]),
            bidirectional=False)
  np.testing.assert_allclose(out.loss[:2], [softplus(0.3 - 2.0),
                                            softplus(-0.4 - 0.2)], rtol=1e-6)


def test_hard_negatives_by_hand():
  # B=2, K=2: candidates [p0, p1, n00, n01, n10, n11], every row's hard
  # negatives serve every query. n01 is padding (masked), n11 repeats
  # row 0's positive (id 7): a false negative for query 0 only.
  q = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  p = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]])
  n = np.array([[[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]],
                [[0.1, 0.3, 0.9], [0.9, 0.1, 0.0]]])
  out = run(q, p, n, scale=1.0, positive_ids=jnp.asarray([7, 8]),
            negative_ids=jnp.asarray([[1, 2], [3, 7]]),
            negative_valid=jnp.asarray([[True, False], [True, True]]),
            bidirectional=False)
  s = q @ np.concatenate([p, n.reshape(4, 3)]).T
  np.testing.assert_allclose(out.scores, s, rtol=1e-6)
  # query 0: negatives p1, n00, n10 (n01 padding, n11 == its positive).
  # query 1: negatives p0, n00, n10, n11.
  np.testing.assert_allclose(out.loss, [
      softplus(lse([s[0, 1], s[0, 2], s[0, 4]]) - s[0, 0]),
      softplus(lse([s[1, 0], s[1, 2], s[1, 4], s[1, 5]]) - s[1, 1])],
      rtol=1e-6)


def test_dexml_decoupled_softmax():
  # Rows 0 and 1 share a positive: with DEXML both are positives of both
  # queries, each scored against the negatives only.
  ids = jnp.asarray([7, 7, 9])
  out = run(S3, np.eye(3), scale=1.0, positive_ids=ids, mode='dexml',
            bidirectional=False)
  np.testing.assert_allclose(out.loss, [
      (softplus(0.3 - 2.0) + softplus(0.3 - 1.5)) / 2,
      (softplus(-0.4 - 1.0) + softplus(-0.4 - 0.2)) / 2,
      softplus(lse([0.1, 0.7]) - 0.9)], rtol=1e-6)
  # With one positive per query DEXML is the plain softmax.
  a = run(S3, np.eye(3), scale=1.0, mode='dexml')
  b = run(S3, np.eye(3), scale=1.0, mode='mask')
  np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)


def test_padding_rows_drop_out():
  out = run(S3, np.eye(3), scale=1.0, bidirectional=False,
            row_valid=jnp.asarray([True, True, False]))
  np.testing.assert_allclose(out.loss, [softplus(1.5 - 2.0),
                                        softplus(1.0 - 0.2), 0.0], rtol=1e-6)


def reference(q, p, n, scale, qid, pid, nid, nvalid, bidirectional, mode):
  """The module docstring's definitions, one query (and document) at a
  time, in float64."""
  b = len(q)
  k = 0 if n is None else n.shape[1]
  cands = list(p) + ([] if n is None else list(n.reshape(b * k, -1)))
  cid = list(pid) + ([] if n is None else list(nid.reshape(-1)))
  cvalid = [True] * b + ([] if n is None else list(nvalid.reshape(-1)))
  s = scale * np.asarray(q, np.float64) @ np.asarray(cands, np.float64).T

  def one(scores, rel, own, valid):
    negs = [scores[c] for c in range(len(scores)) if valid[c] and not rel[c]]
    pos = [own] if mode == 'mask' else [c for c in range(len(scores))
                                         if rel[c] and valid[c]]
    neg_lse = lse(negs) if negs else -math.inf
    terms = [math.log1p(math.exp(neg_lse - scores[c])) if negs else 0.0
             for c in pos]
    return sum(terms) / len(terms)

  q2d = []
  for i in range(b):
    rel = [c == i or (c < b and (pid[c] == pid[i] or qid[c] == qid[i]))
           or (c >= b and cid[c] == pid[i]) for c in range(len(cands))]
    q2d.append(one(s[i], rel, i, cvalid))
  if not bidirectional:
    return np.array(q2d)
  d2q = []
  for j in range(b):
    rel = [i == j or pid[i] == pid[j] or qid[i] == qid[j] for i in range(b)]
    d2q.append(one(s[:b, j], rel, j, [True] * b))
  return (np.array(q2d) + np.array(d2q)) / 2


@pytest.mark.parametrize('mode', ['mask', 'dexml'])
@pytest.mark.parametrize('bidirectional', [False, True])
@pytest.mark.parametrize('k', [0, 2])
def test_matches_loop_reference(mode, bidirectional, k):
  rng = np.random.default_rng(k)
  b, e = 6, 5
  q, p = rng.normal(size=(b, e)), rng.normal(size=(b, e))
  qid = np.array([0, 1, 2, 1, 4, 5])      # queries 1 and 3 identical
  pid = np.array([10, 11, 10, 13, 14, 15])   # rows 0 and 2 share a doc
  n = nid = nvalid = None
  if k:
    n = rng.normal(size=(b, k, e))
    nid = np.array([[20, 21], [22, 14], [23, 24], [25, 26], [27, 28],
                    [29, 30]])             # row 1's n1 is row 4's positive
    nvalid = np.ones((b, k), bool)
    nvalid[3, 1] = False
  out = run(q, p, n, scale=3.0, query_ids=jnp.asarray(qid),
            positive_ids=jnp.asarray(pid),
            negative_ids=None if nid is None else jnp.asarray(nid),
            negative_valid=None if nvalid is None else jnp.asarray(nvalid),
            bidirectional=bidirectional, mode=mode)
  want = reference(q, p, n, 3.0, qid, pid, nid, nvalid, bidirectional, mode)
  np.testing.assert_allclose(out.loss, want, rtol=2e-5, atol=1e-6)


def test_logit_scale_fixed_and_learnt():
  fixed = contrastive.LogitScale(0.05)
  assert float(fixed()) == pytest.approx(20.0)
  assert not nnx.state(fixed, nnx.Param)
  learnt = contrastive.LogitScale(0.07, learn=True, max_scale=100.0)
  assert float(learnt()) == pytest.approx(1 / 0.07, rel=1e-6)
  assert learnt.log_scale.get_metadata()['logical_axes'] == ()

  def loss(module):
    out = contrastive.in_batch_softmax(jnp.asarray(Q2), jnp.asarray(EYE2),
                                       scale=module())
    return out.loss.mean()
  # The positives already win: a larger scale lowers the loss.
  g = nnx.grad(loss)(learnt).log_scale[...]
  assert float(g) < 0
  # Clipped at max_scale (CLIP's 100): the value stops there, and so does
  # the gradient.
  learnt.log_scale[...] = jnp.asarray(math.log(1000.0))
  assert float(learnt()) == pytest.approx(100.0, rel=1e-5)
  assert float(nnx.grad(loss)(learnt).log_scale[...]) == 0.0
  with pytest.raises(ValueError, match='learnt temperature'):
    contrastive.LogitScale(2.0, learn=True)
  with pytest.raises(ValueError, match="mode must be one of"):
    run(Q2, EYE2, scale=1.0, mode='softmax')


# ------------------------------------------------------- global batch ---

B, E, K = 16, 8, 1


def _global_inputs():
  rng = np.random.default_rng(0)
  x = {'q': rng.normal(size=(B, E)), 'p': rng.normal(size=(B, E)),
       'n': rng.normal(size=(B, K, E))}
  x = {k: v.astype(np.float32) for k, v in x.items()}
  # Row 3 (device 1) and row 12 (device 6) share a positive document: only
  # a loss that sees the whole batch can mask it.
  pid = np.arange(B, dtype=np.int32)
  pid[12] = 3
  return x, pid


def _loss(w, x, pid):
  """Embeddings = normalised (inputs @ w); mean loss over the batch."""
  emb = lambda a: a @ w / jnp.linalg.norm(a @ w, axis=-1, keepdims=True)
  out = contrastive.in_batch_softmax(
      emb(x['q']), emb(x['p']), emb(x['n']), scale=10.0,
      positive_ids=pid, negative_ids=1000 + jnp.arange(
          x['n'].shape[0] * K, dtype=jnp.int32).reshape(-1, K))
  return out.loss.mean(), out.scores


def test_global_batch_on_8_devices(mesh_data8):
  x, pid = _global_inputs()
  w = np.random.default_rng(1).normal(size=(E, E)).astype(np.float32)
  grad_fn = jax.value_and_grad(_loss, has_aux=True)

  # One device, the whole batch: the definition.
  (ref_loss, _), ref_grad = jax.jit(grad_fn)(w, x, pid)

  # Eight devices, rows sharded over 'data' as the trainer feeds them.
  rows = NamedSharding(mesh_data8, P('data'))
  xs = jax.device_put(x, rows)
  pids = jax.device_put(pid, rows)
  ws = jax.device_put(w, NamedSharding(mesh_data8, P()))
  with partitioning.activate(mesh_data8):
    step = jax.jit(grad_fn)
    (loss, scores), grad = step(ws, xs, pids)
    hlo = step.lower(ws, xs, pids).compile().as_text()
  assert all(len(a.sharding.device_set) == 8 for a in jax.tree.leaves(xs))
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad),
                             rtol=1e-4, atol=1e-6)
  # The score matrix is (16 queries, 16 + 16 candidates): each device holds
  # its own queries' rows against ALL candidates, which it gathered.
  assert scores.shape == (B, B + B * K)
  assert scores.sharding.is_equivalent_to(
      NamedSharding(mesh_data8, P('data', None)), 2)
  assert 'all-gather' in hlo

  # What a per-device loss would compute: each shard of 2 rows alone.
  per_shard = [jax.value_and_grad(_loss, has_aux=True)(
      w, {k: v[i:i + 2] for k, v in x.items()}, pid[i:i + 2])
               for i in range(0, B, 2)]
  shard_loss = np.mean([float(l) for (l, _), _ in per_shard])
  shard_grad = np.mean([np.asarray(g) for _, g in per_shard], axis=0)
  assert abs(shard_loss - float(ref_loss)) > 0.5, (shard_loss, ref_loss)
  assert np.abs(shard_grad - np.asarray(ref_grad)).max() > 1e-2
