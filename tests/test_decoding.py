"""Decoding: exact outputs from hand-written `tokens_to_logits` functions
(t5x decoding_test style), a brute-force check of beam search, sampling
statistics, and a tiny Rosetta model on one device and on a mesh.

Vocabulary of the hand-written models: 0 = start / pad, 1 = EOS, 2 = 'A',
3 = 'B'. A table row gives next-token probabilities after the last token
(row 0: after the start token); unlisted tokens get 1e-30.
"""

import dataclasses
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rosetta import partitioning
from rosetta.checkpoint import hf as checkpoint_import
from rosetta.decoding import algorithms as decoding
from rosetta.decoding import processors as lp
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config

PAD, EOS, A, B = 0, 1, 2, 3
V = 4
TINY = 1e-30


def table(rows, v=V):
  t = np.full((v, v), TINY)
  for last, nxt in rows.items():
    for tok, p in nxt.items():
      t[last, tok] = p
  return t


def markov(tables, attention=None, calls=None):
  """tokens_to_logits for first-order Markov chains, one per example when
  `tables` is (b, V, V). The example index lives in the cache, so a wrong
  beam gather would read another example's table. `attention` (V, S) is the
  cross-attention emitted after each last token. `calls` counts steps."""
  logt = jnp.log(jnp.asarray(tables, jnp.float32))

  def fn(tokens, cache):
    last = tokens[:, 0]
    logits = logt[last] if logt.ndim == 2 else logt[cache['example'], last]
    attn = None if attention is None else jnp.asarray(attention)[last]
    if calls is not None:
      jax.debug.callback(lambda: calls.append(1))
    return logits, attn, dict(cache, steps=cache['steps'] + 1)
  return fn


def cache_for(b):
  return {'example': jnp.arange(b), 'steps': jnp.zeros((), jnp.int32)}


def greedy_core(fn, b, length, **kw):
  return decoding.sample_core(fn, cache_for(b), batch_size=b,
                              max_decode_length=length, **kw)


def beam_core(fn, b, length, **kw):
  return decoding.beam_search_core(fn, cache_for(b), batch_size=b,
                                   max_decode_length=length, **kw)


# --------------------------------------------- beam search, exact cases ---

# Greedy takes A (0.6) and then wanders; B (0.4) is followed by EOS (0.9).
BEAM_BEATS_GREEDY = table({PAD: {A: .6, B: .4},
                           A: {A: .36, B: .34, EOS: .3},
                           B: {EOS: .9, A: .05, B: .05}})


def test_beam_search_finds_the_best_sequence_greedy_misses():
  fn = markov(BEAM_BEATS_GREEDY)
  tokens, score = greedy_core(fn, 1, 3)
  np.testing.assert_array_equal(tokens, [[A, A, A]])
  np.testing.assert_allclose(score, [np.log(.6 * .36 * .36)], rtol=1e-5)

  tokens, scores = beam_core(fn, 1, 3, num_beams=2, num_decodes=2, alpha=0.0)
  np.testing.assert_array_equal(tokens, [[[B, EOS, 0], [A, B, EOS]]])
  np.testing.assert_allclose(scores, [[np.log(.4 * .9), np.log(.6 * .34 * .9)]],
                             rtol=1e-5)


# Every sequence of this chain with L = 3, and its probability.
LP_CHAIN = table({PAD: {EOS: .45, A: .55}, A: {EOS: .5, A: .45, B: .05},
                  B: {EOS: 1.0}})
LP_SEQUENCES = {(EOS,): .45, (A, EOS): .55 * .5, (A, A, EOS): .55 * .45 * .5,
                (A, A, A): .55 * .45 * .45, (A, B, EOS): .55 * .05,
                (A, A, B): .55 * .45 * .05}


def test_hf_length_penalty_prefers_longer_by_hand():
  fn = markov(LP_CHAIN)
  tokens, scores = beam_core(fn, 1, 3, num_beams=2, alpha=0.0)
  np.testing.assert_array_equal(tokens[0, 0], [EOS, 0, 0])
  np.testing.assert_allclose(scores[0, 0], np.log(.45), rtol=1e-5)
  # len ** 1: [A EOS] log(.275) / 2 = -0.6455 beats [EOS] log(.45) = -0.7985
  # and [A A EOS] log(.12375) / 3 = -0.6965 is second.
  tokens, scores = beam_core(fn, 1, 3, num_beams=2, num_decodes=2, alpha=1.0,
                             length_penalty_kind='hf')
  np.testing.assert_array_equal(tokens[0], [[A, EOS, 0], [A, A, EOS]])
  np.testing.assert_allclose(scores[0], [np.log(.275) / 2, np.log(.12375) / 3],
                             atol=1e-5)


@pytest.mark.parametrize('kind,alpha', [('hf', 0.0), ('hf', 1.0), ('hf', 2.5),
                                        ('gnmt', 0.6), ('gnmt', 5.0)])
def test_length_penalty_ranking_follows_the_formula(kind, alpha):
  def penalty(n):
    return ((5 + n) / 6) ** alpha if kind == 'gnmt' else n ** alpha
  expected = sorted(((np.log(p) / penalty(len(s)), s)
                     for s, p in LP_SEQUENCES.items()), reverse=True)[:4]
  # 4 beams hold every prefix of this chain, so the search is exact.
  tokens, scores = beam_core(markov(LP_CHAIN), 1, 3, num_beams=4,
                             num_decodes=4, alpha=alpha,
                             length_penalty_kind=kind)
  got = [tuple(int(t) for t in row if t) for row in tokens[0]]
  assert got == [s for _, s in expected]
  np.testing.assert_allclose(scores[0], [x for x, _ in expected], atol=1e-5)


def test_coverage_penalty_by_hand():
  rows = table({PAD: {A: .5, B: .4, EOS: .1}, A: {EOS: .9, A: .06, B: .04},
                B: {EOS: .9, A: .07, B: .03}})
  # Attention over 3 source positions after each fed token; position 2 is
  # padding (attention 0) and must not count.
  attention = np.zeros((V, 3))
  attention[PAD], attention[A], attention[B] = [.5, .5, 0], [.95, .05, 0], [
      .3, .7, 0]
  mask = jnp.array([[True, True, False]])
  fn = markov(rows, attention)
  kw = dict(num_beams=4, num_decodes=2, alpha=0.0, source_mask=mask)
  tokens, scores = beam_core(fn, 1, 2, **kw)
  np.testing.assert_array_equal(tokens[0], [[A, EOS], [B, EOS]])
  # [A EOS]: coverage [.5+.95, .5+.05] -> log(min(1.45, 1)) + log(.55);
  # [B EOS]: coverage [.8, 1.2] -> log(.8) + log(1): B now wins.
  tokens, scores = beam_core(fn, 1, 2, beta=1.0, **kw)
  np.testing.assert_array_equal(tokens[0], [[B, EOS], [A, EOS]])
  np.testing.assert_allclose(
      scores[0], [np.log(.36) + np.log(.8), np.log(.45) + np.log(.55)],
      atol=1e-5)
  tokens, scores = beam_core(fn, 1, 2, beta=0.5, alpha=0.0, num_beams=4,
                             num_decodes=1, source_mask=mask,
                             length_penalty_kind='gnmt')
  np.testing.assert_allclose(scores[0, 0], np.log(.45) + .5 * np.log(.55),
                             atol=1e-5)


def _brute_force(tables, attention, mask, max_len, alpha, beta, kind):
  """Every sequence (EOS-terminated, or cut at max_len) of a second-order
  chain tables[prev, last, next], with its penalised score."""
  out = []
  for n in range(1, max_len + 1):
    bodies = itertools.product([A, B], repeat=n - 1)
    for body in bodies:
      for seq in ([body + (EOS,)] +
                  ([body + (t,) for t in (A, B)] if n == max_len else [])):
        logp, prev, last = 0.0, PAD, PAD
        cov = np.zeros(attention.shape[1])
        for t in seq:
          logp += np.log(tables[prev, last, t])
          cov += attention[last]
          prev, last = last, t
        lpen = ((5 + n) / 6) ** alpha if kind == 'gnmt' else n ** alpha
        cp = beta * np.sum(np.log(np.clip(cov, 1e-30, 1.0))[mask])
        out.append((logp / lpen + cp, seq))
  return sorted(out, reverse=True)


@pytest.mark.parametrize('kind,alpha,beta,ancestry', [
    ('hf', 0.0, 0.0, False), ('hf', 1.0, 0.0, False),
    ('gnmt', 2.0, 0.5, False), ('gnmt', 2.0, 0.5, True)])
def test_beam_search_matches_brute_force(kind, alpha, beta, ancestry):
  """With more beams than prefixes, beam search is exhaustive; a second
  order chain whose history lives in the cache checks the beam gathers (or,
  with `cache_ancestry`, the ancestry bookkeeping: the history is written in
  place and read back through it), and per-example tables and max lengths
  check the batch bookkeeping."""
  rng = np.random.default_rng(0)
  tables = np.full((2, V, V, V), TINY)
  tables[..., 1:] = rng.dirichlet(np.ones(3), size=(2, V, V))
  attention = rng.dirichlet(np.ones(3), size=V)
  attention = np.concatenate([attention, np.zeros((V, 1))], axis=1)
  mask = np.array([True, True, True, False])
  logt = jnp.log(jnp.asarray(tables, jnp.float32))

  def fn(tokens, cache):
    last = tokens[:, 0]
    logits = logt[cache['example'], cache['prev'], last]
    return logits, jnp.asarray(attention)[last], dict(cache, prev=last)

  def fn_ancestry(tokens, cache, ancestry):
    i, last = cache['step'], tokens[:, 0]
    hist = cache['hist'].at[:, i].set(last)   # each row writes in place
    b, k, _ = ancestry.shape
    at = jnp.maximum(i - 1, 0)
    prev = jnp.take_along_axis(hist.reshape(b, k, -1)[:, :, at],
                               ancestry[:, :, at], axis=1).reshape(-1)
    prev = jnp.where(i == 0, 0, prev)
    logits = logt[cache['example'], prev, last]
    return (logits, jnp.asarray(attention)[last],
            dict(cache, hist=hist, step=i + 1))

  cache = {'example': jnp.arange(2), 'prev': jnp.zeros((2,), jnp.int32)}
  if ancestry:
    fn = fn_ancestry
    cache = {'example': jnp.arange(2), 'hist': jnp.zeros((2, 4), jnp.int32),
             'step': jnp.zeros((), jnp.int32)}
  max_lens = [4, 3]
  tokens, scores = decoding.beam_search_core(
      fn, cache, batch_size=2, num_beams=32, max_decode_length=4,
      cache_ancestry=ancestry,
      num_decodes=5, alpha=alpha, beta=beta, length_penalty_kind=kind,
      max_lengths=jnp.array(max_lens), source_mask=jnp.array([mask, mask]))
  for e in range(2):
    want = _brute_force(tables[e], attention, mask, max_lens[e], alpha, beta,
                        kind)[:5]
    got = [tuple(int(t) for t in row if t) for row in tokens[e]]
    assert got == [s for _, s in want], e
    np.testing.assert_allclose(scores[e], [x for x, _ in want], atol=1e-4)


def test_eos_and_per_example_max_length():
  # Example 0 says EOS after two tokens; example 1 never says EOS.
  tables = np.stack([table({PAD: {A: .9, EOS: .1}, A: {B: .8, A: .2},
                            B: {EOS: .95, A: .05}}),
                     table({PAD: {A: .7, B: .3}, A: {A: .6, B: .4},
                            B: {B: .9, A: .1}})])
  fn = markov(tables)
  tokens, scores = greedy_core(fn, 2, 5, max_lengths=jnp.array([5, 3]))
  np.testing.assert_array_equal(tokens, [[A, B, EOS, 0, 0], [A, A, A, 0, 0]])
  np.testing.assert_allclose(
      scores, [np.log(.9 * .8 * .95), np.log(.7 * .6 * .6)], rtol=1e-5)
  tokens, scores = beam_core(fn, 2, 5, num_beams=2, alpha=0.0,
                             max_lengths=jnp.array([5, 2]))
  np.testing.assert_array_equal(tokens[:, 0],
                                [[A, B, EOS, 0, 0], [A, A, 0, 0, 0]])
  # A cut hypothesis keeps its score (with the length penalty of its length).
  tokens, scores = beam_core(fn, 2, 5, num_beams=2, alpha=1.0,
                             length_penalty_kind='hf',
                             max_lengths=jnp.array([1, 2]))
  np.testing.assert_array_equal(tokens[:, 0],
                                [[A, 0, 0, 0, 0], [A, A, 0, 0, 0]])
  np.testing.assert_allclose(scores[:, 0], [np.log(.9), np.log(.42) / 2],
                             rtol=1e-5)


def test_beam_search_exits_early_when_nothing_can_improve():
  calls = []
  fn = markov(table({PAD: {EOS: .9, A: .1}, A: {EOS: .95, A: .04, B: .01},
                     B: {EOS: 1.0}}), calls=calls)
  tokens, scores = beam_core(fn, 1, 20, num_beams=2, num_decodes=2,
                             alpha=0.0)
  np.testing.assert_array_equal(tokens[0, :, :3], [[EOS, 0, 0], [A, EOS, 0]])
  # Step 0 finishes [EOS]; step 1 finishes [A EOS] (.095), which the best
  # alive beam (.004) cannot beat: 2 decoder calls, not 20.
  jax.effects_barrier()
  assert len(calls) == 2
  calls.clear()
  tokens, _ = greedy_core(fn, 1, 20)
  jax.effects_barrier()
  assert len(calls) == 1 and tokens[0, 0] == EOS


def test_processors_prefix_min_length_and_banned_tokens():
  rows = table({PAD: {EOS: .6, A: .3, B: .1}, A: {EOS: .7, A: .2, B: .1},
                B: {EOS: .7, B: .2, A: .1}})
  fn = markov(rows)
  prefix = jnp.array([[B, A], [A, 0]])  # example 1 has a shorter prefix
  min_len = lp.MinLength(jnp.array([3, 2]))
  # Prefix, then no EOS before 3 (example 0) or 2 (example 1) tokens.
  tokens, scores = greedy_core(fn, 2, 6,
                               processors=(lp.ForcePrefix(prefix), min_len))
  np.testing.assert_array_equal(tokens, [[B, A, A, EOS, 0, 0],
                                         [A, A, EOS, 0, 0, 0]])
  # Forced tokens keep their model log-probability; nothing renormalises.
  np.testing.assert_allclose(
      scores, np.log([.1 * .1 * .2 * .7, .3 * .2 * .7]), rtol=1e-5)

  # B banned and EOS held back: only A* EOS remains, ranked by likelihood.
  tokens, scores = beam_core(
      fn, 2, 6, num_beams=2, num_decodes=2, alpha=0.0,
      processors=lp.compose(min_len, lp.BanTokens(jnp.array([B]))))
  np.testing.assert_array_equal(tokens, [
      [[A, A, A, EOS, 0, 0], [A, A, A, A, EOS, 0]],
      [[A, A, EOS, 0, 0, 0], [A, A, A, EOS, 0, 0]]])
  np.testing.assert_allclose(scores, np.log([
      [.3 * .2 * .2 * .7, .3 * .2 * .2 * .2 * .7],
      [.3 * .2 * .7, .3 * .2 * .2 * .7]]), rtol=1e-5)

  tokens, scores = beam_core(fn, 2, 6, num_beams=2, alpha=0.0,
                             processors=[lp.ForcePrefix(prefix),
                                         lp.MinLength(3)])
  np.testing.assert_array_equal(tokens[:, 0], [[B, A, A, EOS, 0, 0],
                                               [A, A, A, EOS, 0, 0]])


def test_min_length_equal_to_max_length_forces_full_outputs():
  fn = markov(table({PAD: {EOS: .9, A: .1}, A: {EOS: .9, A: .1}}))
  tokens, _ = greedy_core(fn, 2, 4, processors=[lp.MinLength(4)])
  np.testing.assert_array_equal(tokens, [[A] * 4] * 2)


class AllowedSequences:
  """A trie-style constraint in a few lines: only continuations of the
  (m, L) `allowed` sequences (0-padded, EOS-terminated) are possible. It
  reads only `state.tokens` and `state.step`, as a docid trie would."""

  def __init__(self, allowed):
    self.allowed = jnp.asarray(allowed)

  def __call__(self, log_probs, state):
    pos = jnp.arange(self.allowed.shape[1])
    before = pos[None, None, :] < state.step
    same = (state.tokens[:, None, :] == self.allowed[None]) | ~before
    match = jnp.all(same, axis=-1)                        # (n, m)
    nxt = jnp.take(self.allowed, state.step, axis=1)      # (m,)
    ok = jnp.any(match[:, :, None] &
                 (nxt[None, :, None] == jnp.arange(log_probs.shape[1])),
                 axis=1)
    return jnp.where(ok, log_probs, lp.NEG_INF)


def test_constraint_hook_restricts_beam_search_to_a_trie():
  allowed = np.array([[B, B, EOS, 0], [A, B, A, EOS], [B, A, EOS, 0]])
  rows = table({PAD: {A: .5, B: .3, EOS: .2}, A: {A: .5, B: .3, EOS: .2},
                B: {A: .5, B: .3, EOS: .2}})
  tokens, scores = beam_core(markov(rows), 1, 4, num_beams=3, num_decodes=3,
                             alpha=0.0,
                             processors=[AllowedSequences(allowed)])
  # Ranked by log-likelihood: [B A EOS] .03, [B B EOS] .018, [A B A EOS] .015.
  np.testing.assert_array_equal(tokens[0], allowed[[2, 0, 1]])
  np.testing.assert_allclose(
      scores[0], np.log([.3 * .5 * .2, .3 * .3 * .2, .5 * .3 * .5 * .2]),
      rtol=1e-5)


def test_bad_arguments_are_reported():
  fn = markov(BEAM_BEATS_GREEDY)
  with pytest.raises(ValueError, match='num_decodes'):
    beam_core(fn, 1, 3, num_beams=2, num_decodes=3)
  with pytest.raises(ValueError, match='alpha'):
    beam_core(fn, 1, 3, num_beams=2, alpha=-0.5)
  with pytest.raises(ValueError, match='length_penalty'):
    beam_core(fn, 1, 3, num_beams=2, length_penalty_kind='wu')
  with pytest.raises(ValueError, match='source_mask'):
    beam_core(fn, 1, 3, num_beams=2, beta=0.2)
  with pytest.raises(ValueError, match='cross-attention'):
    beam_core(fn, 1, 3, num_beams=2, beta=0.2, source_mask=jnp.ones((1, 2),
                                                                    bool))
  with pytest.raises(ValueError, match='max_lengths'):
    beam_core(fn, 2, 3, num_beams=2, max_lengths=jnp.array([4, 1]))
  with pytest.raises(ValueError, match='top_p'):
    greedy_core(fn, 1, 3, rng=jax.random.key(0), temperature=1.0, top_p=0.0)
  with pytest.raises(ValueError, match='temperature'):
    greedy_core(fn, 1, 3, rng=jax.random.key(0), temperature=-1.0)
  with pytest.raises(ValueError, match='rng'):
    greedy_core(fn, 1, 3, temperature=1.0)
  with pytest.raises(ValueError, match='top_k'):
    greedy_core(fn, 1, 3, rng=jax.random.key(0), temperature=1.0, top_k=9)


# ------------------------------------------------------------ sampling ---

WIDE = table({PAD: {A: .4, B: .35, EOS: .25}, A: {A: .4, B: .35, EOS: .25},
              B: {A: .4, B: .35, EOS: .25}})


def test_sampling_degenerates_to_greedy():
  tables = np.stack([WIDE, BEAM_BEATS_GREEDY] * 4)
  fn = markov(tables)
  want, _ = greedy_core(fn, 8, 6)
  key = jax.random.key(3)
  for kw in (dict(top_k=1), dict(top_p=1e-6),
             dict(temperature=jnp.zeros((8,)))):
    got, _ = greedy_core(fn, 8, 6, rng=key, **{'temperature': 1.0, **kw})
    np.testing.assert_array_equal(got, want, err_msg=str(kw))


def test_sampling_is_reproducible_and_per_example_temperature():
  fn = markov(np.stack([WIDE] * 8))
  want, _ = greedy_core(fn, 8, 6)
  t = jnp.array([0.0, 1.0] * 4)
  a, sa = greedy_core(fn, 8, 6, rng=jax.random.key(1), temperature=t)
  b, sb = greedy_core(fn, 8, 6, rng=jax.random.key(1), temperature=t)
  c, _ = greedy_core(fn, 8, 6, rng=jax.random.key(2), temperature=t)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(sa, sb)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(a[::2], want[::2])  # temperature 0 rows


def test_sampling_distribution_with_filters():
  """One step from p = (A .5, B .3, EOS .2); 4,000 rows."""
  n = 4000
  fn = markov(table({PAD: {A: .5, B: .3, EOS: .2}}))
  def freq(**kw):
    tok, _ = greedy_core(fn, n, 1, rng=jax.random.key(0), **kw)
    return np.bincount(np.asarray(tok[:, 0]), minlength=V)[[A, B, EOS]] / n
  np.testing.assert_allclose(freq(temperature=1.0), [.5, .3, .2], atol=.03)
  # top-k 2 and top-p .7 both keep {A, B} and renormalise.
  np.testing.assert_allclose(freq(temperature=1.0, top_k=2), [.625, .375, 0],
                             atol=.03)
  np.testing.assert_allclose(freq(temperature=1.0, top_p=.7), [.625, .375, 0],
                             atol=.03)
  # Temperature .5 squares the probabilities: (.25, .09, .04) / .38.
  half = freq(temperature=jnp.full((n,), .5))
  np.testing.assert_allclose(half, [.658, .237, .105], atol=.03)
  tok, _ = greedy_core(fn, n, 1, rng=jax.random.key(0),
                       temperature=jnp.where(jnp.arange(n) < n // 2, .5, 2.0))
  low = np.bincount(np.asarray(tok[:n // 2, 0]), minlength=V)[[A, B, EOS]]
  high = np.bincount(np.asarray(tok[n // 2:, 0]), minlength=V)[[A, B, EOS]]
  p2 = np.sqrt([.5, .3, .2]) / np.sqrt([.5, .3, .2]).sum()
  np.testing.assert_allclose(low / (n // 2), [.658, .237, .105], atol=.04)
  np.testing.assert_allclose(high / (n // 2), p2, atol=.04)


# ------------------------------------------------ tiny Rosetta model ---

TINY_CFG = T5Config(vocab_size=64, emb_dim=32, num_heads=2, head_dim=8,
                    mlp_dim=48, num_encoder_layers=2, num_decoder_layers=2,
                    dropout_rate=0.0)


@pytest.fixture(scope='module')
def tiny_model():
  model = EncoderDecoder(TINY_CFG, rngs=nnx.Rngs(0))
  # Sharper output distribution so that near-ties do not hide bugs.
  logits = model.decoder.logits_dense
  logits[...] = logits[...] * 4.0
  return model


def source_batch(b=8, length=9, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(2, TINY_CFG.vocab_size, size=(b, length))
  for row, n in enumerate(rng.integers(2, length + 1, size=b)):
    x[row, n - 1], x[row, n:] = EOS, 0
  return jnp.asarray(x, jnp.int32)


def test_model_scores_match_teacher_forcing(tiny_model):
  x = source_batch()
  tokens, scores = decoding.greedy(tiny_model, x, max_decode_length=10)
  np.testing.assert_allclose(
      scores, decoding.score_sequences(tiny_model, x, tokens), atol=1e-4)
  tokens, scores = decoding.beam_search(tiny_model, x, num_beams=3,
                                        num_decodes=3, max_decode_length=10,
                                        alpha=0.0)
  flat = tokens.reshape(-1, 10)
  np.testing.assert_allclose(
      scores.reshape(-1),
      decoding.score_sequences(tiny_model, jnp.repeat(x, 3, axis=0), flat),
      atol=1e-4)
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)
  # One beam without a length penalty is greedy.
  one, _ = decoding.beam_search(tiny_model, x, num_beams=1, alpha=0.0,
                                max_decode_length=10)
  greedy_tokens, _ = decoding.greedy(tiny_model, x, max_decode_length=10)
  np.testing.assert_array_equal(one[:, 0], greedy_tokens)


def test_model_processors(tiny_model):
  x = source_batch(4)
  prefix = jnp.array([[60, 61, 62], [60, 0, 0], [0, 0, 0], [63, 62, 0]])
  procs = (lp.ForcePrefix(prefix), lp.MinLength(5), lp.BanTokens(
      jnp.array([7, 8, 9])))
  outs = [decoding.greedy(tiny_model, x, max_decode_length=8,
                          processors=procs)[0],
          decoding.sample(tiny_model, x, rng=jax.random.key(0),
                          max_decode_length=8, processors=procs)[0],
          decoding.beam_search(tiny_model, x, num_beams=3, num_decodes=3,
                               max_decode_length=8, processors=procs,
                               beta=0.2)[0].reshape(4, 3, 8)]
  for out in outs:
    out = np.asarray(out).reshape(4, -1, 8)
    for e in range(4):
      p = [t for t in np.asarray(prefix[e]) if t]
      for row in out[e]:
        assert list(row[:len(p)]) == p
        assert EOS not in row[:5]
        assert not set(row.tolist()) & {7, 8, 9}


def test_mesh_decoding_matches_one_device(tiny_model, tmp_path,
                                          mesh_data4_model2):
  x = source_batch(8, seed=1)
  kw = dict(max_decode_length=10)
  beam_kw = dict(num_beams=4, num_decodes=2, alpha=0.6, beta=0.2, **kw)
  procs = (lp.MinLength(jnp.arange(8) % 3),)
  temp = jnp.array([0.0, 0.5, 1.0, 2.0] * 2)
  ref = [decoding.greedy(tiny_model, x, processors=procs, **kw),
         decoding.sample(tiny_model, x, rng=jax.random.key(5),
                         temperature=temp, top_k=20, top_p=0.9, **kw),
         decoding.beam_search(tiny_model, x, processors=procs, **beam_kw)]

  part = partitioning.Partitioner(mesh_data4_model2)
  path = checkpoint_import.export_hf_checkpoint(tiny_model,
                                                str(tmp_path / 'ckpt'))
  sharded = checkpoint_import.import_hf_checkpoint(path, partitioner=part)
  assert sharded.decoder.logits_dense[...].sharding.spec == P('fsdp', 'model')
  put = lambda a: jax.device_put(a, part.sharding(
      ('activation_batch',) + (None,) * (a.ndim - 1)))
  x_sharded = put(x)
  assert len(x_sharded.sharding.device_set) == 8
  with part.activate():
    got = [decoding.greedy(sharded, x_sharded, processors=procs, **kw),
           decoding.sample(sharded, x_sharded, rng=jax.random.key(5),
                           temperature=put(temp), top_k=20, top_p=0.9, **kw),
           decoding.beam_search(sharded, x_sharded, processors=procs,
                                **beam_kw)]
  for (want_tok, want_score), (tok, score) in zip(ref, got):
    np.testing.assert_array_equal(np.asarray(tok), np.asarray(want_tok))
    np.testing.assert_allclose(np.asarray(score), np.asarray(want_score),
                               atol=1e-4)
  # The outputs come back with rows split over the data axis.
  tok = got[2][0]
  assert tok.sharding.spec[0] in ('data', ('data', 'fsdp')), tok.sharding

  # Rows never leave their data shard: no all-gather in the compiled beam
  # search yields the whole batch (8 examples, 32 beams), e.g. around top-k.
  graphdef, state = nnx.split(sharded)
  with part.activate():
    hlo = jax.jit(lambda st, x: decoding.beam_search(
        nnx.merge(graphdef, st), x, processors=procs, **beam_kw)).lower(
            state, x_sharded).compile().as_text()
  gathers = re.findall(r'= \w+\[(\d+)[,\]][^\n]* all-gather\(', hlo)
  assert not set(map(int, gathers)) & {8, 32}, gathers


def test_bfloat16_decoding_casts_weights_once_and_agrees(tiny_model):
  """With bfloat16 activations the matmul weights are cast before the loop
  (norm scales and relative-position tables stay float32), and beam search
  still finds what the float32 model finds on this sharp tiny model."""
  graphdef, state = nnx.split(tiny_model)
  cfg = dataclasses.replace(TINY_CFG, dtype='bfloat16')
  bf16 = nnx.merge(nnx.graphdef(EncoderDecoder(cfg, rngs=nnx.Rngs(0))),
                   state)
  cast = decoding._weights_in_compute_dtype(bf16)
  params = dict(nnx.to_flat_state(nnx.state(cast, nnx.Param)))
  for path, var in params.items():
    name = '/'.join(map(str, path))
    want = (jnp.float32 if var.ndim < 2 or 'relpos_bias' in name
            else jnp.bfloat16)
    assert var.get_value().dtype == want, name
  x = source_batch()
  ours, _ = decoding.beam_search(bf16, x, num_beams=3, max_decode_length=10)
  ref, _ = decoding.beam_search(tiny_model, x, num_beams=3,
                                max_decode_length=10)
  np.testing.assert_array_equal(ours, ref)


def test_log_softmax_matches_jax_on_one_device_and_vocab_sharded(
    mesh_data4_model2):
  """The decoders' log-softmax (its max behind an identity reduce_precision,
  which keeps XLA:CPU from fusing it into the logits matmul) equals
  jax.nn.log_softmax, also with the vocabulary sharded over 'model'."""
  x = jnp.asarray(np.random.default_rng(0).normal(0, 4, (8, 50)),
                  jnp.float32)
  x = x.at[0, 3].set(1e-40).at[1, 2].set(-3e38)   # a denormal, a huge one
  want = np.asarray(jax.nn.log_softmax(x, -1))
  np.testing.assert_allclose(jax.jit(decoding.log_softmax)(x), want,
                             atol=1e-6)
  part = partitioning.Partitioner(mesh_data4_model2)
  spec = P('data', 'model')
  xs = jax.device_put(x, jax.sharding.NamedSharding(mesh_data4_model2, spec))
  with part.activate():
    hlo = jax.jit(decoding.log_softmax).lower(xs).compile().as_text()
    np.testing.assert_allclose(jax.jit(decoding.log_softmax)(xs), want,
                               atol=1e-6)
  assert 'all-gather' not in hlo
