"""Compiled decoding: greedy, temperature / top-k / top-p sampling, beam
search, and teacher-forced scoring.

Each decode runs under one `jax.jit`: the encoder runs once, the decoder
reads and writes its KV cache one token per iteration of a
`jax.lax.while_loop`, and the loop exits as soon as every example is
finished. Long decodes grow the self-attention cache in chunks (32, 64,
128, ... positions; one loop per chunk, `cache_chunk_ends`) so a step
reads only the capacity reached so far, not `max_decode_length`.

Two layers, as in t5x's decoding.py:

* Cores (`sample_core`, `beam_search_core`) know nothing about models. They
  drive a ``tokens_to_logits(tokens, cache) -> (logits, cross_attn, cache)``
  function; tests drive them with hand-written functions.
* Model-facing functions (`greedy`, `sample`, `beam_search`,
  `score_sequences`) take a Rosetta `EncoderDecoder`, encode, build the cache
  and call a core, all inside one jit.

Shapes: b batch, k beams, n decodes returned per example, L max decode
length, v vocabulary, S source length. Output tokens exclude the decoder
start token and are 0 after EOS (EOS itself is kept). Example::

    tokens, scores = beam_search(model, inputs,          # inputs (2, S)
                                 num_beams=4, num_decodes=2,
                                 max_decode_length=16, alpha=0.6)
    tokens.shape, scores.shape                           # (2, 2, 16), (2, 2)

Beam search follows HF / fairseq: at each step the top 2k continuations are
ranked by summed log-probability; those among the top k that end in EOS (or
reach the example's maximum length) join the *finished* set of width k with
their length (and coverage) penalty applied; the best k others stay *alive*.
An example is done once it has k finished hypotheses and no alive beam can
beat the worst of them even at its most favourable length (the bound holds
because log-probabilities are <= 0 and the coverage penalty only rises
toward 0). That is exact beam search, HF's ``early_stopping="never"``.

On a mesh, call under `Partitioner.activate()` with the batch sharded over
the data axis; every row stays on the devices that hold its example.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rosetta.decoding import processors as procs_lib
from rosetta.decoding.processors import NEG_INF, DecodeState, Processor
from rosetta.decoding.scores import (coverage_penalty, length_penalty,  # noqa: F401
                                     log_softmax)
from rosetta.decoding.loop import (  # noqa: F401  (cache_chunk_ends, tile_beams: public)
    cache_chunk_ends, check_cache_ends, chunked_while_loop,
    constrain_batch_rows, gather_beams, gather_flat_beams,
    per_example_max_lengths, sharded_top_k, tile_beams, write_position)
from rosetta.partitioning import constrain

TokensToLogits = Callable[[jax.Array, Any], tuple[jax.Array, Any, Any]]
LENGTH_PENALTIES = ('gnmt', 'hf')


# ------------------------------------------------ greedy and sampling ---


def _top_k_mask(x, k: int):
  """Keeps scores >= the k-th largest per row (ties kept, as in HF)."""
  kth = sharded_top_k(x, k)[0][:, -1:]
  return jnp.where(x >= kth, x, NEG_INF)


def _top_p_mask(x, p: float):
  """Nucleus: keeps the smallest set of top tokens whose mass reaches p
  (always at least the best token), as HF's TopPLogitsWarper."""
  desc = -jnp.sort(-x, axis=-1)
  probs = jax.nn.softmax(desc, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  n_keep = jnp.maximum(jnp.sum(mass_before < p, axis=-1, keepdims=True), 1)
  threshold = jnp.take_along_axis(desc, n_keep - 1, axis=-1)
  return jnp.where(x >= threshold, x, NEG_INF)


class _SampleState(NamedTuple):
  step: jax.Array       # ()
  seqs: jax.Array       # (b, L)
  last: jax.Array       # (b,) token fed at this step
  done: jax.Array       # (b,)
  log_prob: jax.Array   # (b,)
  cache: Any


def _check_sampling(temperature, top_k, top_p):
  if not isinstance(temperature, jax.core.Tracer):
    t = np.asarray(temperature, np.float32)
    if t.ndim > 1 or (t < 0).any() or not np.isfinite(t).all():
      raise ValueError(f'temperature must be a finite scalar or (batch,) '
                       f'array >= 0, got {temperature!r}')
  if not isinstance(top_k, int) or top_k < 0:
    raise ValueError(f'top_k must be an int >= 0 (0 = off), got {top_k!r}')
  if not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
    raise ValueError(f'top_p must be a float in (0, 1] (1 = off), got '
                     f'{top_p!r}')


def sample_core(tokens_to_logits: TokensToLogits, cache, *, batch_size: int,
                max_decode_length: int, rng: jax.Array | None = None,
                temperature=0.0, top_k: int = 0, top_p: float = 1.0,
                processors: Sequence[Processor] = (), max_lengths=None,
                eos_id: int = 1, start_id: int = 0, cache_ends=None,
                grow_cache=None):
  """Greedy (temperature 0) or ancestral sampling, one token per row a step.

  tokens_to_logits(tokens (b, 1), cache) -> (logits (b, v), _, cache).
  cache_ends / grow_cache: a chunked cache (see `cache_chunk_ends`): the
    given cache holds cache_ends[0] positions and grow_cache(cache, n)
    extends it to n when the loop reaches each later chunk.
  temperature: scalar or per-example (b,) array; rows with 0 take the argmax.
  Order as in HF: processors, then temperature, top-k, top-p.
  Returns tokens (b, L) and the log-probabilities of the chosen tokens
  (after processors, before temperature) summed over each row.
  """
  b, L = batch_size, max_decode_length
  ends = check_cache_ends(cache_ends, grow_cache, L)
  _check_sampling(temperature, top_k, top_p)
  greedy = isinstance(temperature, (int, float)) and temperature == 0
  if not greedy and rng is None:
    raise ValueError('sampling needs an rng key (temperature > 0)')
  max_lens = per_example_max_lengths(max_lengths, b, L)

  def body(s: _SampleState):
    logits, _, cache = tokens_to_logits(s.last[:, None], s.cache)
    logp = log_softmax(logits)
    logp = procs_lib.apply(processors, logp, DecodeState(s.step, s.seqs, 1))
    # = argmax (lowest index on ties); ~3x faster than argmax on XLA:CPU.
    best = sharded_top_k(logp, 1)[1][:, 0]
    if greedy:
      token = best
    else:
      t = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (b,))
      x = logp / jnp.where(t > 0, t, 1.0)[:, None]
      if top_k:
        if top_k > x.shape[-1]:
          raise ValueError(f'top_k={top_k} exceeds the vocabulary size '
                           f'{x.shape[-1]}')
        x = _top_k_mask(x, top_k)
      if top_p < 1.0:
        x = _top_p_mask(x, top_p)
      sampled = jax.random.categorical(jax.random.fold_in(rng, s.step), x)
      token = jnp.where(t > 0, sampled, best)
    token = jnp.where(s.done, 0, token).astype(jnp.int32)
    chosen = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
    return _SampleState(
        step=s.step + 1,
        seqs=constrain_batch_rows(write_position(s.seqs, s.step, token)),
        last=token,
        done=s.done | (token == eos_id) | (s.step + 1 >= max_lens),
        log_prob=s.log_prob + jnp.where(s.done, 0.0, chosen),
        cache=cache)

  init = _SampleState(
      step=jnp.zeros((), jnp.int32), seqs=jnp.zeros((b, L), jnp.int32),
      last=jnp.full((b,), start_id, jnp.int32), done=jnp.zeros((b,), bool),
      log_prob=jnp.zeros((b,), jnp.float32), cache=cache)
  out = chunked_while_loop(lambda s: ~jnp.all(s.done), body, init, ends,
                       grow_cache)
  return out.seqs, out.log_prob


# --------------------------------------------------------- beam search ---


class _BeamState(NamedTuple):
  step: jax.Array        # () index of the token being chosen
  alive_seqs: jax.Array  # (b, k, L)
  alive_logp: jax.Array  # (b, k) summed log-probs
  alive_cov: jax.Array   # (b, k, S) summed cross-attention (S = 0: off)
  fin_seqs: jax.Array    # (b, k, L)
  fin_scores: jax.Array  # (b, k) penalised, sorted descending
  fin_flags: jax.Array   # (b, k) slot holds a finished hypothesis
  done: jax.Array        # (b,)
  cache: Any             # leaves (b * k, ...)
  ancestry: jax.Array    # (b, k, L) cache row of each position (or (0,))


def _check_beam_args(num_beams, num_decodes, alpha, beta, kind):
  if not isinstance(num_beams, int) or num_beams < 1:
    raise ValueError(f'num_beams must be an int >= 1, got {num_beams!r}')
  if not isinstance(num_decodes, int) or not 1 <= num_decodes <= num_beams:
    raise ValueError(f'num_decodes must be an int in [1, num_beams='
                     f'{num_beams}], got {num_decodes!r}')
  if not isinstance(alpha, (int, float)) or alpha < 0:
    raise ValueError(f'alpha (length penalty exponent) must be a float >= 0, '
                     f'got {alpha!r}')
  if not isinstance(beta, (int, float)) or beta < 0:
    raise ValueError(f'beta (coverage penalty weight) must be a float >= 0, '
                     f'got {beta!r}')
  if kind not in LENGTH_PENALTIES:
    raise ValueError(f'length_penalty must be one of {LENGTH_PENALTIES}, got '
                     f'{kind!r}')


def beam_search_core(tokens_to_logits: TokensToLogits, cache, *,
                     batch_size: int, num_beams: int, max_decode_length: int,
                     alpha: float = 0.6, beta: float = 0.0,
                     length_penalty_kind: str = 'gnmt', num_decodes: int = 1,
                     max_lengths=None, processors: Sequence[Processor] = (),
                     source_mask: jax.Array | None = None, eos_id: int = 1,
                     start_id: int = 0, cache_ancestry: bool = False,
                     cache_ends=None, grow_cache=None,
                     tile_cache=None):
  """Beam search over a `tokens_to_logits` function.

  tokens_to_logits(tokens (b*k, 1), cache) -> (logits (b*k, v),
    cross_attn (b*k, S) or None, new cache). `cache` is given per example
    (leaves (b, ...)) and tiled to b*k rows here; scalar leaves are shared.
    Each step the cache rows follow their beams, except leaves returned as
    the very same object (never written, e.g. cross-attention K/V): all
    beams of an example still hold the same value, so they are not copied.
  alpha, length_penalty_kind: finished score = sum log p / lp(len), lp from
    `length_penalty` ('gnmt' or 'hf'); alpha = 0 ranks by log-likelihood.
  beta: GNMT coverage penalty weight; > 0 needs cross_attn and source_mask
    (b, S) bool.
  max_lengths: optional (b,) ints in [1, L]: an example's hypotheses end
    there without EOS (and keep their score).
  cache_ancestry: the cache is never reordered; instead tokens_to_logits is
    called as (tokens, cache, ancestry) with ancestry (b, k, L) ints: the
    beam slot (row within the example) whose cache holds the hypothesis's
    state at each position (the current position is its own slot).
  cache_ends / grow_cache: a chunked cache, as in `sample_core` (grown
    after tiling, so grow_cache sees b * k rows).
  tile_cache(cache, k): makes the per-beam cache from the per-example one
    (default `tile_beams`: every batched leaf repeated k times); a model
    may keep leaves it only reads (encoder K/V) per example.

  Returns tokens (b, num_decodes, L) and scores (b, num_decodes), best
  first. Scores below NEG_INF / 2 mark slots with no possible sequence
  (only when processors leave fewer than num_beams continuations).
  """
  _check_beam_args(num_beams, num_decodes, alpha, beta, length_penalty_kind)
  b, k, L = batch_size, num_beams, max_decode_length
  ends = check_cache_ends(cache_ends, grow_cache, L)
  max_lens = per_example_max_lengths(max_lengths, b, L)
  use_cov = beta > 0
  if use_cov and source_mask is None:
    raise ValueError('the coverage penalty (beta > 0) needs source_mask')
  src = source_mask.shape[1] if use_cov else 0
  lp = functools.partial(length_penalty, alpha=alpha,
                         kind=length_penalty_kind)

  def body(s: _BeamState):
    i = s.step
    prev = jnp.take(s.alive_seqs, jnp.maximum(i - 1, 0), axis=2)
    last = jnp.where(i == 0, start_id, prev).reshape(b * k, 1)
    if cache_ancestry:
      ancestry = s.ancestry.at[:, :, i].set(jnp.arange(k, dtype=jnp.int32))
      logits, xattn, cache = tokens_to_logits(last, s.cache, ancestry)
    else:
      logits, xattn, cache = tokens_to_logits(last, s.cache)
    logp = log_softmax(logits)
    logp = procs_lib.apply(processors, logp,
                           DecodeState(i, s.alive_seqs.reshape(b * k, L), k))
    v = logp.shape[-1]
    # Top 2k continuations: even if the best k all end, k stay alive.
    cand = s.alive_logp[:, :, None] + logp.reshape(b, k, v)
    top_logp, top_idx = sharded_top_k(cand.reshape(b, k * v), 2 * k)
    parent, token = top_idx // v, top_idx % v
    seqs = write_position(gather_beams(s.alive_seqs, parent), i, token)
    cov = s.alive_cov
    if use_cov:
      if xattn is None:
        raise ValueError('beta > 0 needs tokens_to_logits to return the '
                         'cross-attention')
      cov = gather_beams(cov + xattn.reshape(b, k, src).astype(jnp.float32),
                    parent)
    length = i + 1
    ends = (token == eos_id) | (length >= max_lens[:, None])

    # Alive: the best k continuations that did not end.
    alive_logp, pos = sharded_top_k(jnp.where(ends, NEG_INF, top_logp), k)
    # A leaf returned unchanged (the same object, e.g. the cross-attention
    # K/V) still holds its tiled per-example value: no gather needed.
    rows = gather_beams(parent, pos)
    if cache_ancestry:
      ancestry = gather_beams(ancestry, rows)
    else:
      ancestry = s.ancestry
      cache = jax.tree.map(
          lambda new, old: new if new is old or jnp.ndim(new) == 0
          else gather_flat_beams(new, rows), cache, s.cache)

    # Finished: only the top k may finish (HF / fairseq); merge, keep best k.
    just = ends & (jnp.arange(2 * k) < k)[None] & ~s.done[:, None]
    score = top_logp / lp(length)
    if use_cov:
      score += coverage_penalty(cov, source_mask[:, None, :], beta)
    score = jnp.where(just, score, NEG_INF)
    fin_scores, fpos = sharded_top_k(
        jnp.concatenate([s.fin_scores, score], axis=1), k)
    fin_seqs = gather_beams(jnp.concatenate([s.fin_seqs, seqs], axis=1), fpos)
    fin_flags = gather_beams(jnp.concatenate([s.fin_flags, just], axis=1), fpos)

    # Done when no alive beam can beat the worst finished one: its summed
    # log-prob only falls, and lp is monotone in the final length.
    best = alive_logp[:, 0]
    bound = jnp.maximum(best / lp(length + 1), best / lp(max_lens))
    done = (s.done | (length >= max_lens) |
            (jnp.all(fin_flags, axis=1) & (bound <= fin_scores[:, -1])))
    bc = constrain_batch_rows
    return _BeamState(
        step=i + 1, alive_seqs=bc(gather_beams(seqs, pos)),
        alive_logp=bc(alive_logp),
        alive_cov=bc(gather_beams(cov, pos)) if use_cov else s.alive_cov,
        fin_seqs=bc(fin_seqs), fin_scores=bc(fin_scores),
        fin_flags=bc(fin_flags), done=bc(done), cache=cache,
        ancestry=bc(ancestry) if cache_ancestry else ancestry)

  # Only beam 0 is live at first, so the k copies do not pick the same token.
  alive_logp = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)
  init = _BeamState(
      step=jnp.zeros((), jnp.int32),
      alive_seqs=jnp.zeros((b, k, L), jnp.int32),
      alive_logp=jnp.broadcast_to(alive_logp, (b, k)).astype(jnp.float32),
      alive_cov=jnp.zeros((b, k, src), jnp.float32),
      fin_seqs=jnp.zeros((b, k, L), jnp.int32),
      fin_scores=jnp.full((b, k), NEG_INF, jnp.float32),
      fin_flags=jnp.zeros((b, k), bool), done=jnp.zeros((b,), bool),
      cache=(tile_cache or tile_beams)(cache, k),
      ancestry=(jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32)[:, None],
                                 (b, k, L)) if cache_ancestry
                else jnp.zeros((0,), jnp.int32)))
  out = chunked_while_loop(lambda s: ~jnp.all(s.done), body, init, ends,
                       grow_cache)
  return out.fin_seqs[:, :num_decodes], out.fin_scores[:, :num_decodes]


# ------------------------------------------------------- model-facing ---


def _split_processors(processors):
  """Array leaves of `processors` are traced; the rest (functions, ints,
  pytree structure) is static and keys the compilation cache."""
  if processors is None:
    processors = ()
  elif callable(processors):
    processors = (processors,)
  leaves, treedef = jax.tree.flatten(tuple(processors))
  is_array = [isinstance(x, (jax.Array, np.ndarray)) for x in leaves]
  dynamic = [x for x, a in zip(leaves, is_array) if a]
  static = tuple(None if a else x for x, a in zip(leaves, is_array))
  return dynamic, (treedef, static)


def _join_processors(dynamic, static_part):
  treedef, static = static_part
  it = iter(dynamic)
  return jax.tree.unflatten(treedef,
                            [next(it) if x is None else x for x in static])


@dataclasses.dataclass(frozen=True)
class _Static:
  strategy: str          # 'sample' or 'beam'
  max_decode_length: int
  processors: Any        # from _split_processors
  options: tuple         # core keyword arguments that must be static
  cache_ends: tuple      # chunked self-attention cache (cache_chunk_ends)


def _fresh_cache(cache):
  """A copy of the cache State with new Variable objects (`nnx.merge` reuses
  and mutates the Variables it is given), each value re-constrained to its
  logical sharding: after beam gathers XLA keeps heads on 'model' and rows
  on the data axes."""
  def fn(_, var):
    axes = var.get_metadata().get('logical_axes')
    value = var.get_value()
    if axes and jnp.ndim(value):
      value = constrain(value, axes)
    return var.replace(value)
  return nnx.map_state(fn, cache)


def _weights_in_compute_dtype(model):
  """With bfloat16 activations, casts the matmul weights to bfloat16 ONCE,
  before the loop: each step otherwise re-reads float32 weights and converts
  them, and a decode step is bound by reading weights (rows = batch x beams
  is small). Norm scales and relative-position tables stay float32."""
  dtype = model.cfg.jnp_dtype
  if dtype == jnp.float32:
    return model
  gd, params, rest = nnx.split(model, nnx.Param, ...)

  def cast(path, var):
    value = var.get_value()
    if value.ndim < 2 or 'relpos_bias' in map(str, path):
      return var
    return var.replace(value.astype(dtype))
  return nnx.merge(gd, nnx.map_state(cast, params), rest)


@functools.partial(jax.jit, static_argnames=('graphdef', 'static'))
def _decode_jit(graphdef, state, encoder_input_tokens, dynamic, proc_leaves,
                *, static: _Static):
  model = _weights_in_compute_dtype(nnx.merge(graphdef, state))
  cfg = model.cfg
  b = encoder_input_tokens.shape[0]
  encoded = model.encode(encoder_input_tokens)
  model.init_cache(encoded, encoder_input_tokens, static.cache_ends[0])
  gd, params, cache, rest = nnx.split(model, nnx.Param, nnx.Cache, ...)

  def tile_self_attention(cache, k):
    """Per-beam rows for the self-attention caches only; the encoder K/V
    and mask stay per example (cross-attention groups the beams)."""
    def fn(path, var):
      value = var.get_value()
      if 'self_attention' not in map(str, path) or not jnp.ndim(value):
        return var
      return var.replace(jnp.repeat(value, k, axis=0))
    return nnx.map_state(fn, cache)

  def grow_cache(cache, length):
    m = nnx.merge(gd, params, _fresh_cache(cache), rest)
    m.grow_cache(length)
    return nnx.state(m, nnx.Cache)

  def tokens_to_logits(tokens, cache, ancestry=None):
    fresh = _fresh_cache(cache)
    given = jax.tree.leaves(fresh)
    m = nnx.merge(gd, params, fresh, rest)
    logits, cross_attn = m.decode_step(tokens, beam_ancestry=ancestry)
    new = nnx.state(m, nnx.Cache)
    # Leaves decode_step did not write go back as the very input objects,
    # so that beam search sees they are unchanged and skips gathering them.
    leaves = [old if n is g else n for n, g, old in
              zip(jax.tree.leaves(new), given, jax.tree.leaves(cache))]
    return (logits[:, -1], cross_attn[:, -1],
            jax.tree.unflatten(jax.tree.structure(new), leaves))

  common = dict(
      batch_size=b, max_decode_length=static.max_decode_length,
      processors=_join_processors(proc_leaves, static.processors),
      eos_id=cfg.eos_token_id, start_id=cfg.decoder_start_token_id,
      cache_ends=static.cache_ends, grow_cache=grow_cache,
      **dynamic, **dict(static.options))
  if static.strategy == 'beam':
    # The decoder reads its self-attention history through the ancestry,
    # so the cache is written in place and never copied between beams.
    return beam_search_core(
        tokens_to_logits, cache,
        source_mask=encoder_input_tokens != cfg.pad_token_id,
        cache_ancestry=True, tile_cache=tile_self_attention, **common)
  return sample_core(tokens_to_logits, cache, **common)


def _run(model, encoder_input_tokens, strategy, max_decode_length,
         processors, dynamic, options, chunked_cache: bool = True):
  tokens = jnp.asarray(encoder_input_tokens)
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f'encoder_input_tokens must be (batch, length) ints, '
                     f'got {tokens.dtype}{tuple(tokens.shape)}')
  if not isinstance(max_decode_length, int) or max_decode_length < 1:
    raise ValueError(f'max_decode_length must be an int >= 1, got '
                     f'{max_decode_length!r}')
  # Validate here, where the values are concrete, not inside the trace.
  dynamic = {key: value for key, value in dynamic.items() if value is not None}
  if 'max_lengths' in dynamic:
    dynamic['max_lengths'] = per_example_max_lengths(dynamic['max_lengths'],
                                          tokens.shape[0], max_decode_length)
  graphdef, state = nnx.split(model)
  proc_leaves, proc_static = _split_processors(processors)
  static = _Static(strategy, max_decode_length, proc_static,
                   tuple(sorted(options.items())),
                   cache_chunk_ends(max_decode_length) if chunked_cache
                   else (max_decode_length,))
  return _decode_jit(graphdef, state, tokens, dynamic, proc_leaves,
                     static=static)


def greedy(model, encoder_input_tokens, *, max_decode_length: int,
           processors: Sequence[Processor] = (), max_lengths=None,
           chunked_cache: bool = True):
  """Greedy decoding: (b, S) source tokens -> tokens (b, L), log-probs (b,).

  Example: ``greedy(model, x, max_decode_length=8)`` on x of shape (3, 20)
  gives tokens (3, 8), ending with EOS then 0s, and the summed log-prob of
  each output.
  """
  return _run(model, encoder_input_tokens, 'sample', max_decode_length,
              processors, dict(max_lengths=max_lengths),
              dict(temperature=0.0), chunked_cache)


def sample(model, encoder_input_tokens, *, rng: jax.Array,
           max_decode_length: int, temperature=1.0, top_k: int = 0,
           top_p: float = 1.0, processors: Sequence[Processor] = (),
           max_lengths=None, chunked_cache: bool = True):
  """Temperature sampling with optional top-k and nucleus (top-p) filters.

  temperature: float or per-example (b,) array (0 = greedy for that row).
  Returns tokens (b, L) and the summed log-probs (b,) of the sampled tokens
  under the model (after processors, before temperature). The same `rng`
  gives the same samples, on one device or sharded.
  """
  _check_sampling(temperature, top_k, top_p)
  if isinstance(temperature, (int, float)) and temperature == 0:
    return greedy(model, encoder_input_tokens,
                  max_decode_length=max_decode_length, processors=processors,
                  max_lengths=max_lengths, chunked_cache=chunked_cache)
  return _run(model, encoder_input_tokens, 'sample', max_decode_length,
              processors,
              dict(max_lengths=max_lengths, rng=rng,
                   temperature=jnp.asarray(temperature, jnp.float32)),
              dict(top_k=top_k, top_p=float(top_p)), chunked_cache)


def beam_search(model, encoder_input_tokens, *, num_beams: int,
                max_decode_length: int, alpha: float = 0.6, beta: float = 0.0,
                length_penalty: str = 'gnmt', num_decodes: int = 1,
                processors: Sequence[Processor] = (), max_lengths=None,
                chunked_cache: bool = True):
  """Beam search (see the module docstring for the exact semantics).

  length_penalty: 'gnmt' divides by ((5 + len) / 6) ** alpha, 'hf' by
    len ** alpha (HF `length_penalty=alpha`); len counts EOS.
  beta: GNMT coverage penalty weight, from the last decoder layer's
    head-averaged cross-attention over real source positions.

  Example: inputs (2, S), num_beams=4, num_decodes=2, max_decode_length=16
  -> tokens (2, 2, 16) and scores (2, 2), best first.
  """
  _check_beam_args(num_beams, num_decodes, alpha, beta, length_penalty)
  return _run(model, encoder_input_tokens, 'beam', max_decode_length,
              processors, dict(max_lengths=max_lengths),
              dict(num_beams=num_beams, alpha=float(alpha), beta=float(beta),
                   length_penalty_kind=length_penalty,
                   num_decodes=num_decodes), chunked_cache)


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How to decode, as one typed value from the command line to the loop.

  num_beams > 1: beam search with `alpha` (length penalty exponent),
  `beta` (GNMT coverage penalty) and `length_penalty` ('gnmt' or 'hf').
  Otherwise temperature > 0 samples (with `top_k` / `top_p` filters and
  `seed`), temperature 0 is greedy. Invalid values raise at construction,
  naming the field.
  """
  max_decode_length: int = 64
  num_beams: int = 1
  alpha: float = 0.6
  beta: float = 0.0
  length_penalty: str = 'gnmt'
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0

  def __post_init__(self):
    for name in ('max_decode_length', 'num_beams'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'DecodeOptions.{name} must be an integer >= 1, '
                         f'got {value!r}')
    if self.num_beams > 1 and self.temperature:
      raise ValueError('DecodeOptions: beam search (num_beams > 1) does not '
                       'sample; set temperature = 0 or num_beams = 1')
    _check_beam_args(self.num_beams, 1, self.alpha, self.beta,
                     self.length_penalty)
    _check_sampling(self.temperature, self.top_k, self.top_p)

  def replace(self, **changes) -> 'DecodeOptions':
    return dataclasses.replace(self, **changes)


def decode(model, encoder_input_tokens, options: DecodeOptions, *,
           processors: Sequence[Processor] = (), max_lengths=None):
  """The best decode per example under `options`: tokens (b, L) and their
  log-probabilities (b,), by beam search, sampling or greedy search."""
  if options.num_beams > 1:
    tokens, scores = beam_search(
        model, encoder_input_tokens, num_beams=options.num_beams,
        max_decode_length=options.max_decode_length, alpha=options.alpha,
        beta=options.beta, length_penalty=options.length_penalty,
        processors=processors, max_lengths=max_lengths)
    return tokens[:, 0], scores[:, 0]
  if options.temperature:
    return sample(model, encoder_input_tokens,
                  rng=jax.random.key(options.seed),
                  max_decode_length=options.max_decode_length,
                  temperature=options.temperature, top_k=options.top_k,
                  top_p=options.top_p, processors=processors,
                  max_lengths=max_lengths)
  return greedy(model, encoder_input_tokens,
                max_decode_length=options.max_decode_length,
                processors=processors, max_lengths=max_lengths)


def decode_nbest(model, encoder_input_tokens, options: DecodeOptions,
                 num_decodes: int, *, processors: Sequence[Processor] = (),
                 max_lengths=None):
  """`num_decodes` outputs per example under `options`: tokens (b, n, L)
  and scores (b, n).

  Beam search (num_beams > 1): the n best finished hypotheses, best first,
  with their beam scores (length-penalised log-probabilities); n <=
  num_beams. Sampling (temperature > 0): n independent samples with their
  summed log-probabilities, in draw order; sample 0 uses
  `jax.random.key(options.seed)` exactly as `decode` does (so it is the
  1-best sample) and sample i > 0 `fold_in(key(seed), i)`. Greedy search
  has one output (n = 1).
  """
  if isinstance(num_decodes, bool) or not isinstance(num_decodes, int) or (
      num_decodes < 1):
    raise ValueError(f'num_decodes must be an integer >= 1, got '
                     f'{num_decodes!r}')
  if options.num_beams > 1:
    if num_decodes > options.num_beams:
      raise ValueError(f'num_decodes={num_decodes} outputs need at least as '
                       f'many beams (num_beams={options.num_beams})')
    return beam_search(
        model, encoder_input_tokens, num_beams=options.num_beams,
        max_decode_length=options.max_decode_length, alpha=options.alpha,
        beta=options.beta, length_penalty=options.length_penalty,
        num_decodes=num_decodes, processors=processors,
        max_lengths=max_lengths)
  if not options.temperature:
    if num_decodes > 1:
      raise ValueError(f'num_decodes={num_decodes}: greedy search has one '
                       'output; use beam search (num_beams >= num_decodes) '
                       'or sampling (temperature > 0)')
    tokens, scores = decode(model, encoder_input_tokens, options,
                            processors=processors, max_lengths=max_lengths)
    return tokens[:, None], scores[:, None]
  key = jax.random.key(options.seed)
  outputs = [sample(model, encoder_input_tokens,
                    rng=key if i == 0 else jax.random.fold_in(key, i),
                    max_decode_length=options.max_decode_length,
                    temperature=options.temperature, top_k=options.top_k,
                    top_p=options.top_p, processors=processors,
                    max_lengths=max_lengths) for i in range(num_decodes)]
  return (jnp.stack([t for t, _ in outputs], axis=1),
          jnp.stack([s for _, s in outputs], axis=1))


@functools.partial(jax.jit, static_argnames=('graphdef',))
def _score_jit(graphdef, state, encoder_input_tokens, targets):
  model = nnx.merge(graphdef, state)
  cfg = model.cfg
  start = jnp.full((targets.shape[0], 1), cfg.decoder_start_token_id,
                   targets.dtype)
  inputs = jnp.concatenate([start, targets[:, :-1]], axis=1)
  logits = model(encoder_input_tokens, inputs, targets)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(jnp.where(targets != cfg.pad_token_id, token_logp, 0.0),
                 axis=-1)


def score_sequences(model, encoder_input_tokens, decoder_target_tokens):
  """Teacher-forced log-likelihood of each target: (b, S), (b, T) -> (b,).

  Sums log p(token) over the non-pad target tokens (EOS included), so the
  score of a beam search output with alpha = 0 and no processors equals
  its beam score. Example: targets [[7, 9, 1, 0]] -> log p(7) + log p(9|7)
  + log p(EOS|7 9).
  """
  enc = jnp.asarray(encoder_input_tokens)
  tgt = jnp.asarray(decoder_target_tokens)
  if enc.ndim != 2 or tgt.ndim != 2 or enc.shape[0] != tgt.shape[0]:
    raise ValueError(f'score_sequences: want (b, S) inputs and (b, T) '
                     f'targets, got {enc.shape} and {tgt.shape}')
  graphdef, state = nnx.split(model)
  return _score_jit(graphdef, state, enc, tgt)
