"""Model wrappers: what the trainer calls, apart from the network.

The network (`EncoderDecoder`) stays plain Flax; a wrapper owns the loss and
the inference functions for one kind of model. The trainer only calls:

  make_network(rngs)                          -> nnx.Module
  get_initial_variables(seed, partitioner)    -> nnx.Module, params sharded
  loss_fn(network, batch, dropout_rng, normalizer) -> (loss, metrics)
  predict_batch(network, batch)               -> decoded tokens
  score_batch(network, batch)                 -> per-example log-likelihood

Batches are dicts of seqio's EncDecFeatureConverter features.
"""

from __future__ import annotations

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rosetta.decoding import algorithms as decoding
from rosetta.model.chunked_loss import projected_cross_entropy
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config
from rosetta.model.losses import cross_entropy_with_logits  # noqa: F401 (re-export)
from rosetta.data.packing import FirstFitEncDecFeatureConverter
from rosetta.partitioning import Partitioner


@gin.configurable
class EncoderDecoderModel:
  """Wrapper for T5-style sequence-to-sequence models (NMT, DSI)."""

  FEATURES = ('encoder_input_tokens', 'decoder_input_tokens',
              'decoder_target_tokens')

  def __init__(self, config: T5Config | None = None, *,
               label_smoothing: float = 0.0, z_loss: float = 1e-4,
               max_decode_length: int = 64, num_beams: int = 1,
               alpha: float = 0.6, beta: float = 0.0,
               length_penalty: str = 'gnmt', temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               processors=None,
               packing: str = 'seqio', loss_chunk_length: int | None = None):
    """processors: an optional zero-argument callable returning logits
    processors that every `predict_batch` applies (after any passed to it),
    e.g. `@dsi_tasks.processors_for` so evaluation decodes only docids. It
    is called at predict time because tasks (and their tries) are
    registered after gin builds the model.
    packing: how training batches are packed: 'seqio' (next fit, seqio's
    own) or 'first_fit' (`rosetta.data.packing`: first-fit decreasing over 1,024
    examples; ~1.2x more real target tokens per row on Tatoeba).
    loss_chunk_length: project to the vocabulary and take the loss over
    this many target positions at a time (`rosetta.model.chunked_loss`), so the
    (batch, length, vocab) logits are never held whole; None = all at once.
    Same loss and gradients up to float32 rounding.
    max_decode_length ... seed: the default decoding (`DecodeOptions`);
    temperature > 0 with num_beams = 1 samples (top_k, top_p, seed)."""
    self.config = config if config is not None else T5Config()
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError('EncoderDecoderModel.label_smoothing must be in [0, 1)')
    self.label_smoothing = label_smoothing
    self.z_loss = z_loss
    # The wrapper's default decoding (evaluation, `rosetta infer`); callers
    # pass their own `DecodeOptions` to `predict_batch`.
    self.decode_options = decoding.DecodeOptions(
        max_decode_length=max_decode_length, num_beams=num_beams,
        alpha=alpha, beta=beta, length_penalty=length_penalty,
        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if processors is not None and not callable(processors):
      raise TypeError('EncoderDecoderModel.processors must be a zero-argument'
                      f' callable returning processors, got {processors!r}')
    self.processors = processors
    if packing not in ('seqio', 'first_fit'):
      raise ValueError(f"EncoderDecoderModel.packing must be 'seqio' or "
                       f"'first_fit', got {packing!r}")
    self.packing = packing
    if loss_chunk_length is not None and (
        isinstance(loss_chunk_length, bool) or
        not isinstance(loss_chunk_length, int) or loss_chunk_length <= 0):
      raise ValueError(f'EncoderDecoderModel.loss_chunk_length must be a '
                       f'positive int or None, got {loss_chunk_length!r}')
    self.loss_chunk_length = loss_chunk_length
    if packing == 'first_fit':
      # The input pipeline's converter (t5x's FEATURE_CONVERTER_CLS).
      self.FEATURE_CONVERTER_CLS = FirstFitEncDecFeatureConverter

  # ------------------------------------------------------------- network ---
  def make_network(self, rngs: nnx.Rngs) -> EncoderDecoder:
    return EncoderDecoder(self.config, rngs=rngs)

  def get_initial_variables(self, seed: int,
                            partitioner: Partitioner) -> EncoderDecoder:
    return partitioner.create_sharded(
        lambda: self.make_network(nnx.Rngs(params=seed)))

  def check_batch(self, batch):
    missing = [f for f in self.FEATURES if f not in batch]
    if missing:
      raise KeyError(f'batch is missing features {missing}; got '
                     f'{sorted(batch)} (use seqio EncDecFeatureConverter)')

  @staticmethod
  def loss_weights(batch):
    if 'decoder_loss_weights' in batch:
      return batch['decoder_loss_weights'].astype(jnp.float32)
    return (batch['decoder_target_tokens'] > 0).astype(jnp.float32)

  # ---------------------------------------------------------------- loss ---
  def loss_fn(self, network: EncoderDecoder, batch, dropout_rng=None,
              normalizer=None):
    """Summed token loss / normalizer (default: this batch's target tokens).

    Passing the normalizer of the whole batch makes gradient accumulation
    over microbatches exactly equal to one big batch.
    """
    deterministic = dropout_rng is None
    rngs = None if deterministic else nnx.Rngs(dropout=dropout_rng)
    chunked = self.loss_chunk_length is not None
    out = network(
        batch['encoder_input_tokens'], batch['decoder_input_tokens'],
        batch['decoder_target_tokens'], batch.get('encoder_segment_ids'),
        batch.get('decoder_segment_ids'), batch.get('encoder_positions'),
        batch.get('decoder_positions'), deterministic=deterministic,
        rngs=rngs, project=not chunked)
    targets = batch['decoder_target_tokens']
    weights = self.loss_weights(batch)
    if chunked:
      scale, kernel = network.output_projection()
      states = out * scale if scale != 1.0 else out
      loss, z, correct = projected_cross_entropy(
          states, kernel, targets, weights, dtype=self.config.jnp_dtype,
          chunk_length=self.loss_chunk_length,
          label_smoothing=self.label_smoothing, z_loss=self.z_loss)
    else:
      loss, z = cross_entropy_with_logits(
          out, targets, weights, label_smoothing=self.label_smoothing,
          z_loss=self.z_loss)
      # Cheaper than argmax over the vocabulary (differs only on exact ties).
      target_logit = jnp.take_along_axis(out, targets[..., None], -1)[..., 0]
      correct = (target_logit >= jnp.max(out, -1)) * weights
    num_tokens = weights.sum()
    normalizer = num_tokens if normalizer is None else normalizer
    normalizer = jnp.maximum(normalizer, 1.0)
    metrics = {
        'loss_sum': loss.sum(),
        'z_loss_sum': z.sum(),
        'correct': correct.sum(),
        'num_tokens': num_tokens,
    }
    return loss.sum() / normalizer, metrics

  # ----------------------------------------------------------- inference ---
  def predict_batch(self, network: EncoderDecoder, batch, *,
                    options: decoding.DecodeOptions | None = None,
                    processors=(), return_scores: bool = False,
                    num_decodes: int | None = None):
    """Best decode per example: (b, max_decode_length) tokens (and its
    score with `return_scores`) under `options` (default: the wrapper's
    `decode_options`); `processors` are logits processors, e.g. a forced
    language token; the wrapper's own `processors()` are appended.
    num_decodes: n outputs per example instead, (b, n, max_decode_length)
    tokens and (b, n) scores (`decoding.decode_nbest`: the n best beams,
    or n samples)."""
    options = options if options is not None else self.decode_options
    if self.processors is not None:
      processors = tuple(processors) + tuple(self.processors())
    if num_decodes is not None:
      tokens, scores = decoding.decode_nbest(
          network, batch['encoder_input_tokens'], options, num_decodes,
          processors=processors)
    else:
      tokens, scores = decoding.decode(network, batch['encoder_input_tokens'],
                                       options, processors=processors)
    return (tokens, scores) if return_scores else tokens

  def score_batch(self, network: EncoderDecoder, batch):
    """Log-likelihood of each example's target: (b,)."""
    return decoding.score_sequences(network, batch['encoder_input_tokens'],
                                    batch['decoder_target_tokens'])
