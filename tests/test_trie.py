"""Docid tries: the CSR arrays against a Python dict-of-dicts trie, the
processor's masks against the reference, and property tests over random
tries: constrained beam search / sampling never emit an invalid id (the
same random logits do without the constraint), and with enough beams the
constrained search returns exactly the brute-force ranking of the ids.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from retrieval.dsi.trie import Trie
from jax.sharding import PartitionSpec as P

from rosetta import partitioning
from rosetta.decoding import algorithms as decoding
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config
from rosetta.decoding.processors import NEG_INF, DecodeState

EOS = 1


def random_ids(rng, n, vocab, max_len, min_len=1):
  """n distinct random token sequences over [2, vocab), lengths in
  [min_len, max_len]; short ones can be prefixes of longer ones."""
  n = min(n, sum((vocab - 2)**l for l in range(min_len, max_len + 1)))
  out = set()
  while len(out) < n:
    length = int(rng.integers(min_len, max_len + 1))
    out.add(tuple(int(t) for t in rng.integers(2, vocab, size=length)))
  return sorted(out, key=lambda s: rng.random())


def reference(seqs):
  """Dict-of-dicts trie; EOS edges lead to {}."""
  root = {}
  for s in seqs:
    node = root
    for t in list(s) + [EOS]:
      node = node.setdefault(t, {})
  return root


def assert_same_trie(trie, ref):
  stack = [(0, ref)]
  visited = 0
  while stack:
    node, children = stack.pop()
    visited += 1
    tokens, nodes = trie.children(node)
    assert list(tokens) == sorted(children), node
    stack += [(int(n), children[int(t)]) for t, n in zip(tokens, nodes)]
  assert visited == trie.num_nodes


def test_worked_example_arrays():
  trie = Trie.from_sequences([[5, 7], [5, 8], [6]])
  np.testing.assert_array_equal(trie.offsets, [0, 2, 4, 5, 6, 7, 7, 7, 7, 7])
  np.testing.assert_array_equal(trie.edge_tokens, [5, 6, 7, 8, 1, 1, 1])
  assert (trie.num_nodes, trie.sink, trie.max_length, trie.max_fanout) == (
      8, 8, 3, 2)
  assert trie.child(0, 6) == 2 and trie.child(2, EOS) == 5
  assert trie.child(2, 7) == trie.sink


@pytest.mark.parametrize('seed', range(20))
def test_arrays_match_reference_trie(seed):
  rng = np.random.default_rng(seed)
  vocab = int(rng.integers(4, 40))
  seqs = random_ids(rng, int(rng.integers(1, 60)), vocab,
                    max_len=int(rng.integers(1, 7)))
  trie = Trie.from_sequences(seqs)
  assert_same_trie(trie, reference(seqs))
  assert trie.num_sequences == len(seqs)
  assert trie.max_length == max(map(len, seqs)) + 1
  # The same ids as a 0-padded array give the same arrays.
  padded = np.zeros((len(seqs), trie.max_length + 2), np.int32)
  for i, s in enumerate(seqs):
    padded[i, :len(s)] = s
  again = Trie.from_sequences(padded)
  np.testing.assert_array_equal(again.offsets, trie.offsets)
  np.testing.assert_array_equal(again.edge_tokens, trie.edge_tokens)
  ids = set(seqs)
  for s in seqs:
    assert trie.contains(list(s) + [EOS, 0, 0])
    assert not trie.contains(list(s))                   # no EOS
    if len(s) > 1 and s[:-1] not in ids:
      assert not trie.contains(list(s[:-1]) + [EOS])    # a strict prefix
    assert trie.contains(list(s) + [EOS]) == (tuple(s) in ids)
  for _ in range(50):
    s = tuple(int(t) for t in rng.integers(2, vocab, size=rng.integers(1, 4)))
    assert trie.contains(list(s) + [EOS]) == (s in ids)


def test_bad_ids_are_reported():
  with pytest.raises(ValueError, match='sequences 0 and 2 are the same id'):
    Trie.from_sequences([[3, 4], [5], [3, 4]])
  with pytest.raises(ValueError, match=r'sequence 1 = \[3, 1\] contains EOS'):
    Trie.from_sequences([[3, 4], [3, 1]])
  with pytest.raises(ValueError, match=r'sequence 0 = \[3, -1, 4\] contains'):
    Trie.from_sequences([[3, -1, 4]])
  with pytest.raises(ValueError, match='sequence 1 is empty'):
    Trie.from_sequences([[3], []])
  with pytest.raises(ValueError, match='token after padding'):
    Trie.from_sequences(np.array([[3, 0, 4]]))
  with pytest.raises(ValueError, match='no sequences'):
    Trie.from_sequences([])
  trie = Trie.from_sequences([[3, 70]])
  with pytest.raises(ValueError, match='token 70 is outside the model '
                     r'vocabulary \(vocab_size=64\)'):
    trie.constraint(vocab_size=64)
  with pytest.raises(ValueError, match="max_length=2 is below the trie's 3"):
    trie.constraint(max_length=2)


def allowed_by_reference(ref, prefix):
  node = ref
  for t in prefix:
    if t not in node:
      return set()
    node = node[t]
  return set(node)


@pytest.mark.parametrize('layout', ['csr', 'dense', 'hybrid', 'padded',
                                    'padded_dense', 'padded_hybrid'])
def test_processor_masks_match_reference(layout):
  rng = np.random.default_rng(7)
  vocab, length = 30, 7
  seqs = random_ids(rng, 80, vocab, max_len=5)
  trie, ref = Trie.from_sequences(seqs), reference(seqs)
  pad = dict(num_nodes=trie.num_nodes + 50, max_fanout=vocab,
             max_length=length)
  kw = dict(csr=dict(dense=False), dense=dict(dense=True),
            hybrid=dict(dense=9), padded=dict(dense=False, **pad),
            padded_dense=dict(dense=True, **pad),
            padded_hybrid=dict(dense=9, **pad))[layout]
  proc = trie.constraint(vocab_size=vocab, **kw)
  assert proc.num_dense == {'csr': 0, 'padded': 0, 'dense': trie.num_nodes + 1,
                            'padded_dense': trie.num_nodes + 51}.get(layout, 9)
  assert (proc.max_fanout == 0) == layout.endswith('dense')
  apply = jax.jit(lambda lp, tok, step: proc(lp, DecodeState(step, tok)))
  log_probs = jnp.asarray(rng.normal(size=(len(seqs), vocab)), jnp.float32)
  for step in range(length):
    # Rows: every id's prefix (valid), then the same with one token changed
    # (mostly invalid); positions >= step hold junk the walk must ignore.
    tokens = rng.integers(2, vocab, size=(2 * len(seqs), length))
    for i, s in enumerate(seqs):
      full = list(s) + [EOS] + [0] * length
      tokens[i, :step] = tokens[i + len(seqs), :step] = full[:step]
      if step:
        tokens[i + len(seqs), rng.integers(step)] = rng.integers(2, vocab)
    lp2 = jnp.concatenate([log_probs, log_probs])
    out = np.asarray(apply(lp2, jnp.asarray(tokens, jnp.int32), step))
    for row in range(len(tokens)):
      want = allowed_by_reference(ref, tokens[row, :step].tolist())
      kept = set(np.nonzero(out[row] > NEG_INF / 2)[0].tolist())
      assert kept == want, (layout, step, row)
      np.testing.assert_array_equal(out[row, sorted(want)],
                                    np.asarray(lp2)[row, sorted(want)])


# ---------------------------------------------- decoding with random logits --

B, V, L = 8, 16, 5          # examples, vocabulary, decode length
MAX_NODES = 160
SEEDS = 60


def random_logits_fn(logp):
  """tokens_to_logits from per-example, per-step tables (b, L, V, V) of
  log-probs indexed by the last token; the example index lives in the cache
  (a wrong beam gather would read another example's table)."""
  def fn(tokens, cache):
    logits = logp[cache['example'], cache['step'], tokens[:, 0]]
    return logits, None, dict(cache, step=cache['step'] + 1)
  return fn


def cache0():
  return {'example': jnp.arange(B), 'step': jnp.zeros((), jnp.int32)}


@jax.jit
def beam(logp, proc):
  procs = () if proc is None else (proc,)
  return decoding.beam_search_core(
      random_logits_fn(logp), cache0(), batch_size=B, num_beams=4,
      num_decodes=4, max_decode_length=L, alpha=0.6, processors=procs)


def random_tables(rng, scale=3.0):
  x = rng.normal(size=(B, L, V, V)) * scale
  return jnp.asarray(x - np.log(np.exp(x).sum(-1, keepdims=True)),
                     jnp.float32)


def test_constrained_beam_search_never_emits_an_invalid_id():
  """Many random tries and logits, one compilation (padded tries)."""
  invalid_unconstrained = valid_best = 0
  for seed in range(SEEDS):
    rng = np.random.default_rng(100 + seed)
    seqs = random_ids(rng, int(rng.integers(1, 40)), V, max_len=L - 1)
    trie = Trie.from_sequences(seqs)
    # Three layouts: all dense, pure CSR, dense root + 4 nodes, CSR rest.
    proc = trie.constraint(V, dense=(True, False, 5)[seed % 3],
                           num_nodes=MAX_NODES, max_fanout=V, max_length=L)
    logp = random_tables(rng)
    tokens, scores = map(np.asarray, beam(logp, proc))
    assert (scores[:, 0] > NEG_INF / 2).all(), seed   # always an answer
    for e in range(B):
      for row, score in zip(tokens[e], scores[e]):
        if score > NEG_INF / 2:
          assert trie.contains(row), (seed, e, row)
          valid_best += 1
    free, _ = beam(logp, None)
    invalid_unconstrained += sum(not trie.contains(r)
                                 for r in np.asarray(free)[:, 0])
  assert valid_best >= SEEDS * B
  # The constraint matters: the same logits alone leave the id set.
  assert invalid_unconstrained > SEEDS * B // 2, invalid_unconstrained


def brute_force(logp_e, seqs):
  """Every id's log-likelihood under one example's tables, best first."""
  out = []
  for s in seqs:
    prev, total = 0, 0.0
    for t, tok in enumerate(list(s) + [EOS]):
      total += float(logp_e[t, prev, tok])
      prev = tok
    out.append((total, tuple(s) + (EOS,)))
  return sorted(out, reverse=True)


def test_exhaustive_constrained_beam_search_ranks_all_ids_exactly():
  """With at least as many beams as ids, nothing is pruned: the decodes
  are the ids ranked by log-likelihood (alpha = 0), scores unchanged."""
  k = 12
  run = jax.jit(lambda logp, proc: decoding.beam_search_core(
      random_logits_fn(logp), cache0(), batch_size=B, num_beams=k,
      num_decodes=k, max_decode_length=L, alpha=0.0, processors=(proc,)))
  for seed in range(6):
    rng = np.random.default_rng(seed)
    seqs = random_ids(rng, int(rng.integers(2, k + 1)), V, max_len=L - 1)
    proc = Trie.from_sequences(seqs).constraint(
        V, num_nodes=MAX_NODES, max_fanout=V, max_length=L)
    logp = random_tables(rng, scale=1.0)
    tokens, scores = map(np.asarray, run(logp, proc))
    for e in range(B):
      want = brute_force(np.asarray(logp[e]), seqs)
      got = [tuple(int(t) for t in row if t) for row in tokens[e, :len(seqs)]]
      assert got == [s for _, s in want], (seed, e)
      np.testing.assert_allclose(scores[e, :len(seqs)], [x for x, _ in want],
                                 atol=1e-4)
      assert (scores[e, len(seqs):] < NEG_INF / 2).all()


def test_constrained_sampling_and_greedy_emit_only_ids():
  rng = np.random.default_rng(3)
  seqs = random_ids(rng, 30, V, max_len=L - 1)
  trie = Trie.from_sequences(seqs)
  proc = trie.constraint(V)
  logp = random_tables(rng, scale=1.0)
  for kw in (dict(), dict(rng=jax.random.key(0), temperature=1.0)):
    tokens, _ = decoding.sample_core(
        random_logits_fn(logp), cache0(), batch_size=B, max_decode_length=L,
        processors=(proc,), **kw)
    assert all(trie.contains(r) for r in np.asarray(tokens)), kw


# --------------------------------------------------- a real model, a mesh --


def test_tiny_model_constrained_beam_search_on_a_mesh(mesh_data4_model2):
  """Through the model-facing `beam_search` (processors as jit arguments):
  only ids come out, the same on a (data=4, model=2) mesh as on one
  device."""
  cfg = T5Config(vocab_size=64, emb_dim=32, num_heads=2, head_dim=8,
                 mlp_dim=48, num_encoder_layers=1, num_decoder_layers=1,
                 dropout_rate=0.0)
  model = EncoderDecoder(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  seqs = random_ids(rng, 50, 64, max_len=4, min_len=2)
  trie = Trie.from_sequences(seqs)
  x = jnp.asarray(rng.integers(2, 64, size=(8, 6)), jnp.int32)
  kw = dict(num_beams=4, num_decodes=2, max_decode_length=trie.max_length)
  proc = trie.constraint(64, dense=4)      # dense root + 3, CSR rest
  tok, score = map(np.asarray, decoding.beam_search(
      model, x, processors=(proc,), **kw))
  assert all(trie.contains(r) for r in tok.reshape(16, -1))
  assert (score > NEG_INF / 2).all()

  part = partitioning.Partitioner(mesh_data4_model2)
  sharded = part.create_sharded(lambda: EncoderDecoder(cfg, rngs=nnx.Rngs(0)))
  assert sharded.decoder.logits_dense[...].sharding.spec == P('fsdp', 'model')
  xs = jax.device_put(x, part.sharding(('activation_batch', None)))
  with part.activate():
    got, got_score = decoding.beam_search(sharded, xs, processors=(proc,),
                                          **kw)
  assert len(got.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(got), tok)
  np.testing.assert_allclose(np.asarray(got_score), score, atol=1e-4)
