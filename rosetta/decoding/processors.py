"""Logits processors: array-only hooks applied at every decoding step.

A processor is any callable ``(log_probs, state) -> log_probs`` where
``log_probs`` is the (n, v) float32 log-softmax of the model's logits for the
n rows being decoded (n = batch * num_beams) and ``state`` is a
`DecodeState`. Processors run inside the compiled while loop, so they must be
pure jax.numpy (no host callbacks): the same code compiles on TPU.

Greedy, sampling and beam search all apply processors to normalised
log-probabilities, before temperature / top-k / top-p (as HF does in beam
search). Masking sets a score to `NEG_INF`; nothing is renormalised, so a
beam's score stays the model's log-likelihood of the tokens it chose. A
processor should only lower scores (never push one above 0): beam search
stops early on the bound that summed log-probabilities never rise.

The processors here are frozen dataclasses registered as pytrees: their
array fields are traced (a new prefix does not recompile), their other
fields are static. A plain function works too; it becomes part of the
compilation key, so define it once rather than as a fresh lambda per call.

Worked example: two examples, 2 beams each (rows 0,1 belong to example 0),
force a target-language token on example 0 only, no EOS before 3 tokens::

    prefix = jnp.array([[250_100], [0]])        # (b, P); 0 = nothing forced
    procs = (ForcePrefix(prefix), MinLength(3, eos_id=1))
    decoding.beam_search(model, inputs, num_beams=2, processors=procs, ...)

A constraint such as a docid trie for generative retrieval is just another
processor: from ``state.tokens[:, :state.step]`` it finds the allowed next
tokens and masks the rest (see `tests/test_decoding.py`, `AllowedSequences`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

# Finite so sums and differences of masked scores never produce NaN; any
# score below NEG_INF / 2 marks an impossible sequence.
NEG_INF = -1.0e9


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeState:
  """What a processor may look at.

  step: () int32, the index of the token being chosen (0 = first token
    after the decoder start token).
  tokens: (n, L) int32 tokens chosen so far in each row; positions >= step
    are 0. Rows are example-major: row r belongs to example r // num_beams.
  num_beams: rows per example (1 for greedy and sampling).
  """
  step: jax.Array
  tokens: jax.Array
  num_beams: int = dataclasses.field(default=1, metadata=dict(static=True))

  def per_row(self, x) -> jax.Array:
    """Repeats a per-example array (b, ...) to one entry per row (n, ...)."""
    return jnp.repeat(jnp.asarray(x), self.num_beams, axis=0)


Processor = Callable[[jax.Array, DecodeState], jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ForcePrefix:
  """Forces per-example prefixes, e.g. a target-language token.

  prefix: (b, P) int, right-padded with 0 for shorter prefixes (0 is never
  forced). At step t < P, rows of example e may only emit prefix[e, t].
  The forced token keeps its model log-probability.
  """
  prefix: jax.Array

  def __post_init__(self):
    if hasattr(self.prefix, 'ndim') and self.prefix.ndim != 2:
      raise ValueError(f'ForcePrefix: prefix must be (batch, length), got '
                       f'shape {self.prefix.shape}')

  def __call__(self, log_probs, state: DecodeState):
    p = self.prefix.shape[1]
    token = jnp.take(state.per_row(self.prefix), jnp.minimum(state.step, p - 1),
                     axis=1)
    active = (state.step < p) & (token != 0)
    vocab = jnp.arange(log_probs.shape[-1])
    keep = ~active[:, None] | (vocab[None, :] == token[:, None])
    return jnp.where(keep, log_probs, NEG_INF)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MinLength:
  """Bans EOS at steps < min_length: at least `min_length` tokens precede
  EOS (HF's `min_new_tokens`). min_length: int or per-example (b,) ints;
  min_length >= max length forces exactly max-length outputs."""
  min_length: jax.Array | int
  eos_id: int = dataclasses.field(default=1, metadata=dict(static=True))

  def __call__(self, log_probs, state: DecodeState):
    min_len = jnp.asarray(self.min_length)
    if min_len.ndim:
      min_len = state.per_row(min_len)
    ban = jnp.broadcast_to(state.step < min_len, log_probs.shape[:1])
    return log_probs.at[:, self.eos_id].set(
        jnp.where(ban, NEG_INF, log_probs[:, self.eos_id]))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BanTokens:
  """Never emits any of `token_ids` ((m,) ints)."""
  token_ids: jax.Array

  def __call__(self, log_probs, state: DecodeState):
    return log_probs.at[:, jnp.asarray(self.token_ids)].set(NEG_INF)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Chain:
  """Applies processors left to right; see `compose`."""
  processors: tuple

  def __call__(self, log_probs, state: DecodeState):
    for p in self.processors:
      log_probs = p(log_probs, state)
    return log_probs


def compose(*processors: Processor) -> Chain:
  """One processor from several, applied in order."""
  for p in processors:
    if not callable(p):
      raise TypeError(f'compose: a processor must be callable '
                      f'(log_probs, state) -> log_probs, got {p!r}')
  return Chain(tuple(processors))


def apply(processors: Sequence[Processor] | Processor | None, log_probs,
          state: DecodeState) -> jax.Array:
  """Runs `processors` (one, a sequence, or None) on (n, v) log-probs."""
  if processors is None:
    return log_probs
  if callable(processors):
    processors = (processors,)
  for p in processors:
    log_probs = p(log_probs, state)
    if log_probs.ndim != 2:
      raise ValueError(f'processor {p!r} returned shape {log_probs.shape}; '
                       'expected (rows, vocab)')
  return log_probs
