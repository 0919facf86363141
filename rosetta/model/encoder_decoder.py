"""The T5.1.1 / mT5 encoder-decoder Transformer in Flax NNX.

Pre-norm residual blocks with RMS norm, relative position bias (one table per
stack, bidirectional in the encoder, causal in the decoder), gated-GELU MLP,
tied or untied output projection, dropout, padding and packing masks, and a
decoder KV cache (self-attention written step by step, cross-attention K/V
projected once).

Packing follows seqio's EncDecFeatureConverter: several examples share a row,
told apart by `*_segment_ids` (1, 2, ...; 0 is padding) and `*_positions`
(restarting at 0 in each segment). Example, one packed encoder row::

    encoder_input_tokens   = [8, 9, 1, 4, 1, 0]
    encoder_segment_ids    = [1, 1, 1, 2, 2, 0]
    encoder_positions      = [0, 1, 2, 0, 1, 0]

Tokens of segment 1 never attend to segment 2, so the packed row gives the
same outputs as the two examples run alone. Relative position biases are
computed once per batch from token indices, (1, h, q, k) as in t5x: inside
a segment, positions restart with the segment, so index differences equal
position differences, and pairs across segments are masked anyway. (Per
example it was a (b, h, q, k) gather: ~3% of a T5-small training step.)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from rosetta.model import layer_stack
from rosetta.model import layers
from rosetta.model import peft
from rosetta.partitioning import constrain

LOGITS_AXES = ('activation_batch', 'activation_length', 'activation_vocab')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture hyper-parameters; names follow t5x, HF names in comments."""
  vocab_size: int = 32128
  emb_dim: int = 512                 # d_model
  num_heads: int = 6
  head_dim: int = 64                 # d_kv
  mlp_dim: int = 1024                # d_ff
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  mlp_activations: Sequence[str] = ('gelu', 'linear')  # ('relu',): T5 v1.0
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  tie_word_embeddings: bool = False  # True for T5 v1.0 (logits scaled)
  dtype: str = 'float32'             # activations; 'bfloat16' on TPU
  param_dtype: str = 'float32'
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  # Rematerialisation of each encoder / decoder layer in training (decoding
  # never remats): 'none', 'full' (keep only each layer's input) or
  # 'dots_saveable' (keep matmul outputs, recompute the rest).
  remat: str = 'none'
  # Stack each stack's layers into one module run by `jax.lax.scan`
  # (`rosetta.model.layer_stack`): the compiler sees one layer body, so big
  # models compile several times faster. Parameter paths lose the layer
  # index (`encoder/layers/mlp/...`, leading axis L).
  scan_layers: bool = False
  # Parameter-efficient fine-tuning (`rosetta.model.peft`; all off by
  # default, and when on, the fresh network computes what its base does).
  lora_rank: int = 0                 # 0: no LoRA
  lora_alpha: float = 8.0            # the update is scaled by alpha / rank
  lora_targets: Sequence[str] = ('query', 'value')  # + 'key', 'out', 'mlp'
  adapters: Sequence[str] = ()       # bottleneck adapters per layer, stacked
  adapter_dim: int = 64              # in order, e.g. ('language', 'task')

  def __post_init__(self):
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    object.__setattr__(self, 'lora_targets', tuple(self.lora_targets))
    object.__setattr__(self, 'adapters', tuple(self.adapters))
    peft.check_config(self.lora_rank, self.lora_alpha, self.lora_targets,
                      self.adapters, self.adapter_dim)
    if self.remat not in layers.REMAT_POLICIES:
      raise ValueError(f'T5Config.remat must be one of '
                       f'{sorted(layers.REMAT_POLICIES)}, got {self.remat!r}')
    for field in ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
                  'num_encoder_layers', 'num_decoder_layers',
                  'relative_attention_num_buckets',
                  'relative_attention_max_distance'):
      value = getattr(self, field)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f'T5Config.{field} must be a positive int, got '
                         f'{value!r}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'T5Config.dropout_rate must be in [0, 1), got '
                       f'{self.dropout_rate!r}')
    for field in ('dtype', 'param_dtype'):
      try:
        jnp.dtype(getattr(self, field))
      except TypeError as e:
        raise ValueError(f'T5Config.{field}: unknown dtype '
                         f'{getattr(self, field)!r}') from e

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **kw) -> 'T5Config':
    return dataclasses.replace(self, **kw)

  def lora(self, rngs: nnx.Rngs):
    """The layers' LoRA factory (None without LoRA)."""
    return peft.lora_factory(self.lora_rank, self.lora_alpha,
                             self.lora_targets, self.jnp_dtype,
                             self.jnp_param_dtype, rngs=rngs)

  @property
  def lora_scale(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  def adapter_modules(self, rngs: nnx.Rngs) -> nnx.Dict:
    return peft.make_adapters(self.adapters, self.emb_dim, self.adapter_dim,
                              self.layer_norm_epsilon, self.jnp_dtype,
                              self.jnp_param_dtype, rngs=rngs)


def _index_positions(length, start=0):
  """(1, length) int32 positions start, start + 1, ...: one row that the
  relative position bias and masks broadcast over the batch."""
  return (start + jnp.arange(length, dtype=jnp.int32))[None]


def _attention_mask(q_valid, k_valid, q_segments=None, k_segments=None):
  """(b, 1, q, k) bool: both positions real and, if packed, same segment."""
  mask = q_valid[:, None, :, None] & k_valid[:, None, None, :]
  if q_segments is not None:
    mask &= q_segments[:, None, :, None] == k_segments[:, None, None, :]
  return mask


def _layer_stack(modules, scan_layers: bool):
  return layer_stack.stack(modules) if scan_layers else nnx.List(modules)


class EncoderLayer(nnx.Module):

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    dt, pdt = cfg.jnp_dtype, cfg.jnp_param_dtype
    self.pre_attention_norm = layers.RMSNorm(cfg.emb_dim,
                                             cfg.layer_norm_epsilon, dt, pdt)
    lora = cfg.lora(rngs)
    self.attention = layers.MultiHeadAttention(
        cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, pdt,
        rngs=rngs, lora=lora)
    self.pre_mlp_norm = layers.RMSNorm(cfg.emb_dim, cfg.layer_norm_epsilon,
                                       dt, pdt)
    self.mlp = layers.MlpBlock(cfg.emb_dim, cfg.mlp_dim, cfg.mlp_activations,
                               cfg.dropout_rate, dt, pdt, rngs=rngs, lora=lora)
    self.dropout = nnx.Dropout(cfg.dropout_rate)
    self.adapter_names = cfg.adapters
    self.adapters = cfg.adapter_modules(rngs)

  def __call__(self, x, bias, mask, deterministic, rngs):
    h = self.attention(self.pre_attention_norm(x), bias=bias, mask=mask,
                       deterministic=deterministic, rngs=rngs)
    x = x + self.dropout(h, deterministic=deterministic, rngs=rngs)
    h = self.mlp(self.pre_mlp_norm(x), deterministic=deterministic, rngs=rngs)
    x = x + self.dropout(h, deterministic=deterministic, rngs=rngs)
    return peft.apply_adapters(self.adapters, self.adapter_names, x)


class Encoder(nnx.Module):

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    self.relpos_bias = layers.RelativePositionBias(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance, cfg.num_heads,
        bidirectional=True, param_dtype=cfg.jnp_param_dtype, rngs=rngs)
    self.layers = _layer_stack(
        [EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_encoder_layers)],
        cfg.scan_layers)
    self.final_norm = layers.RMSNorm(cfg.emb_dim, cfg.layer_norm_epsilon,
                                     cfg.jnp_dtype, cfg.jnp_param_dtype)
    self.dropout = nnx.Dropout(cfg.dropout_rate)
    self.remat = cfg.remat
    self.scan_layers = cfg.scan_layers

  def __call__(self, embedded, valid, segment_ids, deterministic, rngs):
    idx = _index_positions(embedded.shape[1])
    bias = self.relpos_bias(idx, idx)
    mask = _attention_mask(valid, valid, segment_ids, segment_ids)
    x = self.dropout(embedded, deterministic=deterministic, rngs=rngs)
    if self.scan_layers:
      x, _ = layer_stack.scan(
          self.layers, lambda layer, x, layer_rngs: (
              layer(x, bias, mask, deterministic, layer_rngs), None),
          x, rngs=rngs, deterministic=deterministic, remat=self.remat)
      x = self.final_norm(x)
      return self.dropout(x, deterministic=deterministic, rngs=rngs)
    call = layers.rematerialized(
        lambda layer, x, bias, mask, rngs: layer(x, bias, mask, deterministic,
                                                 rngs), self.remat)
    for layer in self.layers:
      x = call(layer, x, bias, mask, rngs)
    x = self.final_norm(x)
    return self.dropout(x, deterministic=deterministic, rngs=rngs)


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    dt, pdt = cfg.jnp_dtype, cfg.jnp_param_dtype
    eps = cfg.layer_norm_epsilon
    lora = cfg.lora(rngs)
    self.pre_self_attention_norm = layers.RMSNorm(cfg.emb_dim, eps, dt, pdt)
    self.self_attention = layers.MultiHeadAttention(
        cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, pdt,
        rngs=rngs, lora=lora)
    self.pre_cross_attention_norm = layers.RMSNorm(cfg.emb_dim, eps, dt, pdt)
    self.cross_attention = layers.MultiHeadAttention(
        cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dt, pdt,
        rngs=rngs, lora=lora)
    self.pre_mlp_norm = layers.RMSNorm(cfg.emb_dim, eps, dt, pdt)
    self.mlp = layers.MlpBlock(cfg.emb_dim, cfg.mlp_dim, cfg.mlp_activations,
                               cfg.dropout_rate, dt, pdt, rngs=rngs, lora=lora)
    self.dropout = nnx.Dropout(cfg.dropout_rate)
    self.adapter_names = cfg.adapters
    self.adapters = cfg.adapter_modules(rngs)

  def __call__(self, x, encoded, self_bias, self_mask, cross_mask,
               cache_index, deterministic, rngs, beam_ancestry=None):
    drop = lambda h: self.dropout(h, deterministic=deterministic, rngs=rngs)
    h = self.self_attention(self.pre_self_attention_norm(x), bias=self_bias,
                            mask=self_mask, cache_index=cache_index,
                            deterministic=deterministic, rngs=rngs,
                            beam_ancestry=beam_ancestry)
    x = x + drop(h)
    h, probs = self.cross_attention(
        self.pre_cross_attention_norm(x), encoded, mask=cross_mask,
        use_static_kv=cache_index is not None, deterministic=deterministic,
        rngs=rngs, return_probs=True,
        # Beam search keeps one encoder K/V row per example, not per beam.
        beam_groups=None if beam_ancestry is None else beam_ancestry.shape[1])
    x = x + drop(h)
    h = self.mlp(self.pre_mlp_norm(x), deterministic=deterministic, rngs=rngs)
    x = peft.apply_adapters(self.adapters, self.adapter_names, x + drop(h))
    return x, probs


def _last_probs(out):
  """A scanned decoder layer's (x, head-averaged cross-attention)."""
  x, probs = out
  return x, jnp.mean(probs, axis=1)


def _with_rngs(call, rngs, layer, *args):
  return call(layer, *args, rngs)


class Decoder(nnx.Module):

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.relpos_bias = layers.RelativePositionBias(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance, cfg.num_heads,
        bidirectional=False, param_dtype=cfg.jnp_param_dtype, rngs=rngs)
    self.layers = _layer_stack(
        [DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_decoder_layers)],
        cfg.scan_layers)
    # With scan_layers, `init_cache` puts the layers here one by one (slices
    # of the stacked parameters): decoding keeps a KV cache per layer.
    self.decode_layers: nnx.List | None = nnx.data(None)
    self.final_norm = layers.RMSNorm(cfg.emb_dim, cfg.layer_norm_epsilon,
                                     cfg.jnp_dtype, cfg.jnp_param_dtype)
    self.dropout = nnx.Dropout(cfg.dropout_rate)
    if not cfg.tie_word_embeddings:
      self.logits_dense = nnx.Param(
          layers.normal_init(rngs.params(), (cfg.emb_dim, cfg.vocab_size),
                             cfg.emb_dim ** -0.5, cfg.jnp_param_dtype),
          logical_axes=('embed', 'vocab'))
    self.cache_index: nnx.Cache | None = nnx.data(None)

  def __call__(self, embedded, encoded, self_bias, self_mask, cross_mask,
               shared_embedding, deterministic, rngs, decode: bool,
               beam_ancestry=None, project: bool = True):
    cache_index = self.cache_index[...] if decode else None
    x = self.dropout(embedded, deterministic=deterministic, rngs=rngs)
    probs = None
    if decode:
      call = lambda layer, *args: layer(*args, cache_index, deterministic,
                                        rngs, beam_ancestry)
    elif self.cfg.scan_layers:
      x, probs = layer_stack.scan(
          self.layers, lambda layer, x, layer_rngs: _last_probs(layer(
              x, encoded, self_bias, self_mask, cross_mask, None,
              deterministic, layer_rngs)),
          x, rngs=rngs, deterministic=deterministic, remat=self.cfg.remat)
      call, probs = None, probs[-1]
    else:  # training / scoring: the remat policy (no cache, no beams)
      call = layers.rematerialized(
          lambda layer, x, encoded, self_bias, self_mask, cross_mask, rngs:
          layer(x, encoded, self_bias, self_mask, cross_mask, None,
                deterministic, rngs, beam_ancestry), self.cfg.remat)
      call = functools.partial(_with_rngs, call, rngs)
    for layer in self.cached_layers() if call is not None else ():
      x, probs = call(layer, x, encoded, self_bias, self_mask, cross_mask)
      probs = jnp.mean(probs, axis=1)
    x = self.final_norm(x)
    x = self.dropout(x, deterministic=deterministic, rngs=rngs)
    if not project:   # the states the output projection would read
      return x, probs
    if self.cfg.tie_word_embeddings:
      # T5 v1.0 rescales before reusing the input embedding (as HF does).
      logits = shared_embedding.attend(x * self.cfg.emb_dim ** -0.5)
    else:
      logits = layers.dense(x, self.logits_dense[...], x.dtype)
    if decode:
      self.cache_index[...] = cache_index + embedded.shape[1]
    # Cross-attention of the last layer, averaged over heads: (b, q, k); the
    # GNMT coverage penalty reads it.
    return constrain(logits, LOGITS_AXES), probs

  def cached_layers(self):
    """The layers one by one: the decoding copies of scanned layers once
    `init_cache` has made them, else the unrolled layers."""
    if self.cfg.scan_layers:
      if self.decode_layers is None:
        raise ValueError('a scanned decoder decodes step by step only after '
                         'init_cache')
      return self.decode_layers
    return self.layers


class EncoderDecoder(nnx.Module):
  """T5.1.1 / mT5. Call it on a (possibly packed) batch for logits; use
  `encode`, `init_cache` and `decode_step` for incremental decoding."""

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.shared_embedding = layers.Embed(cfg.vocab_size, cfg.emb_dim,
                                         cfg.jnp_dtype, cfg.jnp_param_dtype,
                                         rngs=rngs)
    self.encoder = Encoder(cfg, rngs=rngs)
    self.decoder = Decoder(cfg, rngs=rngs)
    self.encoder_valid: nnx.Cache | None = nnx.data(None)  # by init_cache

  # ----------------------------------------------------------- encoding ---
  def encode(self, encoder_input_tokens, encoder_segment_ids=None,
             encoder_positions=None, *, deterministic: bool = True,
             rngs: nnx.Rngs | None = None):
    """(b, l) int tokens (0 = padding) -> (b, l, e) encoder outputs."""
    # encoder_positions is accepted for packed batches; the relative
    # position bias reads token indices (see the module docstring).
    del encoder_positions
    tokens = encoder_input_tokens
    valid = tokens != self.cfg.pad_token_id
    if encoder_segment_ids is not None:
      valid &= encoder_segment_ids != 0
    embedded = self.shared_embedding(tokens)
    return self.encoder(embedded, valid, encoder_segment_ids, deterministic,
                        rngs)

  # ----------------------------------------------------------- decoding ---
  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
             decoder_target_tokens=None, encoder_segment_ids=None,
             decoder_segment_ids=None, decoder_positions=None, *,
             deterministic: bool = True, rngs: nnx.Rngs | None = None,
             return_cross_attention: bool = False, project: bool = True):
    """Teacher-forced decoder over whole sequences -> (b, l, v) f32 logits.

    The decoder input starts with `decoder_start_token_id`, which equals the
    pad id in T5, so padding is read from `decoder_target_tokens` (or the
    segment ids), never from the inputs. project=False returns the (b, l, e)
    states before the output projection instead of logits (see
    `output_projection`; `rosetta.model.chunked_loss` projects them in chunks).
    """
    cfg = self.cfg
    del decoder_positions  # accepted for packed batches, as in `encode`
    b, lq = decoder_input_tokens.shape
    q_valid = (jnp.ones((b, lq), bool) if decoder_target_tokens is None
               else decoder_target_tokens != cfg.pad_token_id)
    if decoder_segment_ids is not None:
      q_valid &= decoder_segment_ids != 0
    k_enc_valid = encoder_input_tokens != cfg.pad_token_id
    if encoder_segment_ids is not None:
      k_enc_valid &= encoder_segment_ids != 0
    idx = _index_positions(lq)
    causal = idx[:, :, None] >= idx[:, None, :]   # (1, q, k)
    self_mask = _attention_mask(q_valid, q_valid, decoder_segment_ids,
                                decoder_segment_ids) & causal[:, None]
    cross_mask = _attention_mask(q_valid, k_enc_valid, decoder_segment_ids,
                                 encoder_segment_ids)
    self_bias = self.decoder.relpos_bias(idx, idx)
    embedded = self.shared_embedding(decoder_input_tokens)
    logits, cross = self.decoder(embedded, encoded, self_bias, self_mask,
                                 cross_mask, self.shared_embedding,
                                 deterministic, rngs, decode=False,
                                 project=project)
    return (logits, cross) if return_cross_attention else logits

  def output_projection(self):
    """(x_scale, kernel (e, v)): logits = (states * x_scale) @ kernel, in
    float32 accumulation of `cfg.dtype` matmuls (`layers.dense`)."""
    if self.cfg.tie_word_embeddings:
      return self.cfg.emb_dim ** -0.5, self.shared_embedding.embedding[...].T
    return 1.0, self.decoder.logits_dense[...]

  def __call__(self, encoder_input_tokens, decoder_input_tokens,
               decoder_target_tokens=None, encoder_segment_ids=None,
               decoder_segment_ids=None, encoder_positions=None,
               decoder_positions=None, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None, project: bool = True):
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids,
                          encoder_positions, deterministic=deterministic,
                          rngs=rngs)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, encoder_segment_ids,
                       decoder_segment_ids, decoder_positions,
                       deterministic=deterministic, rngs=rngs,
                       project=project)

  # ------------------------------------------------- incremental decoding ---
  def init_cache(self, encoded, encoder_input_tokens, max_decode_length: int):
    """Prepares the decoder for `decode_step`: an empty self-attention cache
    of `max_decode_length` positions per layer, cross-attention K/V projected
    once from `encoded`, and the encoder padding mask."""
    b = encoded.shape[0]
    if self.cfg.scan_layers:
      self.decoder.decode_layers = nnx.List(
          layer_stack.unstack(self.decoder.layers))
    for layer in self.decoder.cached_layers():
      layer.self_attention.init_cache(b, max_decode_length)
      layer.cross_attention.set_static_kv(encoded)
    self.decoder.cache_index = nnx.Cache(jnp.zeros((), jnp.int32),
                                         logical_axes=())
    self.encoder_valid = nnx.Cache(
        encoder_input_tokens != self.cfg.pad_token_id,
        logical_axes=('cache_batch', 'cache_length'))

  def grow_cache(self, max_decode_length: int):
    """Extends every self-attention cache to `max_decode_length` positions,
    keeping what is written (`decoding` runs one loop per cache chunk)."""
    for layer in self.decoder.cached_layers():
      layer.self_attention.grow_cache(max_decode_length)

  def decode_step(self, decoder_input_tokens, beam_ancestry=None):
    """Runs (b, c) new tokens (usually c = 1) at the cache position.

    Returns f32 logits (b, c, v) and the last layer's head-averaged
    cross-attention (b, c, source length); advances the cache index by c.
    beam_ancestry: optional (b / beams, beams, L) ints for beam search
      without cache reordering (`layers.MultiHeadAttention`); c must be 1.
      The self-attention cache then has b rows (one per beam), the
      cross-attention K/V and `encoder_valid` b / beams (one per example).
      L may exceed the cache's current length (a chunked cache): only the
      first cache-length positions are read.
    """
    index = self.decoder.cache_index[...]
    c = decoder_input_tokens.shape[1]
    max_len = self.decoder.cached_layers()[0].self_attention.cached_key.shape[2]
    if beam_ancestry is not None and beam_ancestry.shape[-1] > max_len:
      beam_ancestry = beam_ancestry[..., :max_len]
    q_pos = _index_positions(c, start=index)   # (1, c): the same row for
    k_pos = _index_positions(max_len)          # every example and beam
    self_bias = self.decoder.relpos_bias(q_pos, k_pos)
    self_mask = (k_pos[:, None, :] <= q_pos[:, :, None])[:, None]
    valid = self.encoder_valid[...]          # (b, S), or (b / beams, S)
    cross_mask = jnp.broadcast_to(valid[:, None, None, :],
                                  (valid.shape[0], 1, c, valid.shape[1]))
    embedded = self.shared_embedding(decoder_input_tokens)
    return self.decoder(embedded, None, self_bias, self_mask, cross_mask,
                        self.shared_embedding, True, None, decode=True,
                        beam_ancestry=beam_ancestry)
