"""T5 rerankers (monoT5, RankT5) on Rosetta's encoder-decoder, in Flax NNX.

A `Reranker` IS an `EncoderDecoder`: the same parameters under the same
paths, so a Rosetta NMT run, a `rosetta import`ed HF T5 / mT5 run or an HF
folder initialise it (`RerankerModel.import_hf_checkpoint`), plus one head
that turns the tokens of a (query, document) pair into one score:

  'mono'          monoT5 (Nogueira et al. 2020): the input reads
                  "Query: q Document: d Relevant:"; one decoder step from
                  the start token; the score is the log-softmax over the
                  logits of the two tokens {true, false}, taken at 'true':
                  l_true - log(exp(l_true) + exp(l_false)).
  'rank_encdec'   RankT5, encoder-decoder (Zhuang et al. 2023): the first
                  decoder step's logit of one designated token (an unused
                  one, e.g. '<extra_id_10>'), unnormalised.
  'rank_encoder'  RankT5, encoder only: the encoder outputs pooled (the
                  first token, or the mean of the real tokens), then a dense
                  score head, the one parameter the T5 does not have:
                  `score_head/kernel` (e,) and `score_head/bias` ().

The decoder is kept (unused) by 'rank_encoder', so every head has the T5's
parameter paths. The head's parameters are drawn after the T5's from the
same key stream: `Reranker(cfg, head, rngs=nnx.Rngs(params=s))` holds
exactly the parameters of `EncoderDecoder(cfg, rngs=nnx.Rngs(params=s))`.

    head = HeadConfig('mono', true_id=1176, false_id=6136)   # T5's pieces
    net = Reranker(cfg, head, rngs=nnx.Rngs(params=0))
    scores = net.score(pair_tokens)      # (n, L) int32 -> (n,) float32
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import seqio
from flax import nnx

from retrieval.dense import dual_encoder
from rosetta.model import layers
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config
from rosetta.partitioning import constrain

HEADS = ('mono', 'rank_encdec', 'rank_encoder')
POOLINGS = dual_encoder.POOLINGS
SCORE_AXES = ('activation_batch',)


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """Which head, and the token ids it reads (resolved from words by
  `token_id`): true_id / false_id for 'mono', score_id for 'rank_encdec';
  pooling ('first' or 'mean') for 'rank_encoder'."""
  kind: str = 'mono'
  true_id: int | None = None
  false_id: int | None = None
  score_id: int | None = None
  pooling: str = 'first'

  def check(self, vocab_size: int) -> None:
    if self.kind not in HEADS:
      raise ValueError(f'reranker head must be one of {HEADS}, got '
                       f'{self.kind!r}')
    needed = {'mono': ('true_id', 'false_id'), 'rank_encdec': ('score_id',),
              'rank_encoder': ()}[self.kind]
    for field in needed:
      value = getattr(self, field)
      if isinstance(value, bool) or not isinstance(value, int) or not (
          0 <= value < vocab_size):
        raise ValueError(f'the {self.kind!r} head needs {field} in '
                         f'[0, {vocab_size}) (T5Config.vocab_size), got '
                         f'{value!r}')
    if self.kind == 'mono' and self.true_id == self.false_id:
      raise ValueError(f'the mono head needs two different tokens for true '
                       f'and false, got {self.true_id} twice')
    if self.kind == 'rank_encoder' and self.pooling not in POOLINGS:
      raise ValueError(f'rank_encoder pooling must be one of {POOLINGS}, '
                       f'got {self.pooling!r}')


def vocabulary_name(vocabulary: seqio.Vocabulary) -> str:
  """How an error message names a vocabulary."""
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return (f'the SentencePiece vocabulary '
            f'{vocabulary.sentencepiece_model_file} '
            f'(extra_ids={vocabulary.extra_ids})')
  return f'the {type(vocabulary).__name__}'


def token_id(token: str | int, vocabulary: seqio.Vocabulary | None,
             field: str) -> int:
  """The id of `token`: an int is taken as it is; a word must be exactly one
  piece of `vocabulary` (monoT5's 'true' / 'false' are in T5's
  SentencePiece model; '<extra_id_10>' needs extra_ids). `field` names the
  setting in errors."""
  if isinstance(token, int) and not isinstance(token, bool):
    return token
  if not isinstance(token, str) or not token:
    raise ValueError(f'{field} must be a word or a token id, got {token!r}')
  if vocabulary is None:
    raise ValueError(f'{field} = {token!r} is a word, and no vocabulary is '
                     'known to look it up in; give its id (an int)')
  ids = list(vocabulary.encode(token))
  if len(ids) != 1:
    raise ValueError(
        f'{field} = {token!r} is {len(ids)} pieces {ids} in '
        f'{vocabulary_name(vocabulary)}, not one; choose a word that is one '
        'piece of this vocabulary, or give the token id (an int)')
  return int(ids[0])


class ScoreHead(nnx.Module):
  """RankT5's encoder-only score: pooled (n, e) -> (n,) = x . kernel + bias.
  The kernel is sharded like an embedding dimension ('embed')."""

  def __init__(self, dim: int, dtype, param_dtype, *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(
        layers.normal_init(rngs.params(), (dim,), dim ** -0.5, param_dtype),
        logical_axes=('embed',))
    self.bias = nnx.Param(jnp.zeros((), param_dtype), logical_axes=())
    self.dtype = dtype

  def __call__(self, pooled):
    out = layers.dense(pooled, self.kernel[...][:, None], self.dtype)[:, 0]
    return out + self.bias[...].astype(jnp.float32)


class Reranker(EncoderDecoder):
  """An EncoderDecoder with a reranking head (module docstring)."""

  def __init__(self, cfg: T5Config, head: HeadConfig, *, rngs: nnx.Rngs):
    head.check(cfg.vocab_size)
    super().__init__(cfg, rngs=rngs)
    self.head = head
    if head.kind == 'rank_encoder':
      self.score_head = ScoreHead(cfg.emb_dim, cfg.jnp_dtype,
                                  cfg.jnp_param_dtype, rngs=rngs)

  def first_step_logits(self, tokens, *, deterministic: bool = True,
                        rngs: nnx.Rngs | None = None):
    """(n, L) pair tokens -> (n, vocab) float32 logits of the first decoder
    step (input: the decoder start token), exactly the EncoderDecoder's."""
    start = jnp.full((tokens.shape[0], 1), self.cfg.decoder_start_token_id,
                     jnp.int32)
    logits = self(tokens, start, deterministic=deterministic, rngs=rngs)
    return logits[:, 0]

  def score_from_logits(self, logits):
    """(n, vocab) first-step logits -> (n,) scores of the 'mono' or
    'rank_encdec' head."""
    if self.head.kind == 'mono':
      pair = jnp.stack([logits[:, self.head.true_id],
                        logits[:, self.head.false_id]], axis=-1)
      return pair[:, 0] - jnp.logaddexp(pair[:, 0], pair[:, 1])
    if self.head.kind == 'rank_encdec':
      return logits[:, self.head.score_id]
    raise ValueError('the rank_encoder head does not read decoder logits')

  def score(self, tokens, *, deterministic: bool = True,
            rngs: nnx.Rngs | None = None):
    """(n, L) int32 pair tokens (0 = padding) -> (n,) float32 scores."""
    if self.head.kind == 'rank_encoder':
      encoded = self.encode(tokens, deterministic=deterministic, rngs=rngs)
      pooled = dual_encoder.pool(encoded, tokens != self.cfg.pad_token_id,
                                 self.head.pooling)
      pooled = constrain(pooled, dual_encoder.EMBEDDING_AXES)
      out = self.score_head(pooled)
    else:
      out = self.score_from_logits(self.first_step_logits(
          tokens, deterministic=deterministic, rngs=rngs))
    return constrain(out.astype(jnp.float32), SCORE_AXES)
