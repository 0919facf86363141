"""GTR-style dual encoder on Rosetta's T5 encoder stack (Flax NNX).

A tower is the encoder half of `rosetta.model.encoder_decoder.EncoderDecoder`
(token embedding + `Encoder`, same parameter names, so HF T5/mT5 encoder
weights load into it), then pooling over the real tokens, an optional
projection and L2 normalisation (Ni et al. 2021, "Large Dual Encoders Are
Generalizable Retrievers")::

    tokens (b, l) -> T5 encoder (b, l, e) -> pool (b, e) -> project (b, p)
                  -> / ||.||  -> embedding

Query and document towers are one module (`shared_towers=True`, GTR) or two.
The softmax scale 1/temperature is fixed, or learnt as a log-scale
parameter clipped to [1, max_logit_scale] (CLIP / ALIGN).

    cfg = DualEncoderConfig(encoder=T5Config(...), projection_dim=768)
    net = DualEncoder(cfg, rngs=nnx.Rngs(0))
    q = net.encode(query_tokens, 'query')     # (b, 768), unit norm
    d = net.encode(doc_tokens, 'doc')
    scores = net.logit_scale() * q @ d.T      # 1/temperature

Parameter paths: `shared_tower/...` or `query_tower/...` + `doc_tower/...`,
each holding `shared_embedding/embedding`, `encoder/...` (as in
EncoderDecoder) and `projection`; plus `logit_scale/log_scale` when learnt.
"""

from __future__ import annotations

import dataclasses
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rosetta.checkpoint import hf as checkpoint_import
from rosetta.model import layer_stack
from rosetta.model import layers
from rosetta.model.encoder_decoder import Encoder, T5Config
from rosetta.partitioning import Partitioner, constrain
from retrieval.dense import contrastive

POOLINGS = ('mean', 'first')
TOWERS = ('query', 'doc')
EMBEDDING_AXES = ('activation_batch', 'activation_embed')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DualEncoderConfig:
  """What the dual encoder is. `encoder` is the T5 architecture of a tower
  (its decoder fields are unused); None takes `T5Config()` with its gin
  bindings, so `include 'models/t5_1_1_base.gin'` sizes the towers."""
  encoder: T5Config | None = None
  shared_towers: bool = True
  pooling: str = 'mean'               # 'mean' (GTR, Sentence-T5) | 'first'
  projection_dim: int | None = None   # None: no projection (dim = d_model)
  l2_normalize: bool = True
  temperature: float = 0.05           # fixed, or the initial value if learnt
  learn_temperature: bool = False
  max_logit_scale: float = 100.0      # CLIP's clip of exp(logit_scale)

  def __post_init__(self):
    if self.encoder is None:
      object.__setattr__(self, 'encoder', T5Config())
    if not isinstance(self.encoder, T5Config):
      raise TypeError(f'DualEncoderConfig.encoder must be a T5Config, got '
                      f'{type(self.encoder).__name__}')
    if self.pooling not in POOLINGS:
      raise ValueError(f'DualEncoderConfig.pooling must be one of {POOLINGS},'
                       f' got {self.pooling!r}')
    if self.projection_dim is not None and (
        not isinstance(self.projection_dim, int) or self.projection_dim <= 0):
      raise ValueError(f'DualEncoderConfig.projection_dim must be None or a '
                       f'positive int, got {self.projection_dim!r}')
    if not self.temperature > 0:
      raise ValueError(f'DualEncoderConfig.temperature must be > 0, got '
                       f'{self.temperature!r}')
    if not self.max_logit_scale >= 1.0:
      raise ValueError(f'DualEncoderConfig.max_logit_scale must be >= 1, got '
                       f'{self.max_logit_scale!r}')
    if self.learn_temperature and not (
        1.0 <= 1.0 / self.temperature <= self.max_logit_scale):
      raise ValueError(
          f'DualEncoderConfig.temperature={self.temperature} is outside the '
          f'learnable range [1/max_logit_scale, 1] = '
          f'[{1 / self.max_logit_scale:g}, 1]')

  @property
  def embedding_dim(self) -> int:
    return self.projection_dim or self.encoder.emb_dim

  def replace(self, **kw) -> 'DualEncoderConfig':
    return dataclasses.replace(self, **kw)


def pool(hidden, valid, method: str):
  """(b, l, e) hidden states, (b, l) bool real-token mask -> (b, e) float32.

  'mean' averages the real tokens only (padding never dilutes it; an
  all-padding row gives zeros); 'first' takes position 0 (T5 has no CLS
  token, so this is the first word piece: Sentence-T5's weaker option).
  """
  if method == 'first':
    return hidden[:, 0].astype(jnp.float32)
  if method != 'mean':
    raise ValueError(f'pooling must be one of {POOLINGS}, got {method!r}')
  w = valid.astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * w, axis=1)
  return total / jnp.maximum(jnp.sum(w, axis=1), 1.0)


def l2_normalize(x, eps: float = 1e-6):
  """x / max(||x||, eps) in float32. A zero row (an all-padding hard
  negative pools to zeros) stays zero with a finite gradient: sqrt would
  give an infinite one at 0, hence rsqrt of the clipped square."""
  x = x.astype(jnp.float32)
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


class EncoderTower(nnx.Module):
  """Token embedding + T5 encoder (named as in EncoderDecoder) + pooling,
  projection and normalisation."""

  def __init__(self, cfg: DualEncoderConfig, *, rngs: nnx.Rngs):
    t5 = cfg.encoder
    self.cfg = cfg
    self.shared_embedding = layers.Embed(t5.vocab_size, t5.emb_dim,
                                         t5.jnp_dtype, t5.jnp_param_dtype,
                                         rngs=rngs)
    self.encoder = Encoder(t5, rngs=rngs)
    if cfg.projection_dim:
      # Sharded like an MLP input kernel: no new logical axis name needed.
      self.projection = nnx.Param(
          layers.normal_init(rngs.params(), (t5.emb_dim, cfg.projection_dim),
                             t5.emb_dim ** -0.5, t5.jnp_param_dtype),
          logical_axes=('embed', 'mlp'))

  def hidden_states(self, tokens, *, deterministic: bool = True,
                    rngs: nnx.Rngs | None = None):
    """(b, l) tokens (0 = padding) -> (b, l, e) encoder outputs, exactly
    `EncoderDecoder.encode` of the same weights (tested)."""
    t5 = self.cfg.encoder
    valid = tokens != t5.pad_token_id
    return self.encoder(self.shared_embedding(tokens), valid, None,
                        deterministic, rngs)

  def __call__(self, tokens, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None):
    """(b, l) tokens -> (b, embedding_dim) float32 embeddings."""
    hidden = self.hidden_states(tokens, deterministic=deterministic,
                                rngs=rngs)
    x = pool(hidden, tokens != self.cfg.encoder.pad_token_id,
             self.cfg.pooling)
    x = constrain(x, EMBEDDING_AXES)
    if self.cfg.projection_dim:
      x = layers.dense(x, self.projection[...], self.cfg.encoder.jnp_dtype)
    if self.cfg.l2_normalize:
      x = l2_normalize(x)
    return constrain(x.astype(jnp.float32), EMBEDDING_AXES)


class DualEncoder(nnx.Module):
  """Query and document towers (one shared module or two) + the scale."""

  def __init__(self, cfg: DualEncoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    if cfg.shared_towers:
      self.shared_tower = EncoderTower(cfg, rngs=rngs)
    else:
      self.query_tower = EncoderTower(cfg, rngs=rngs)
      self.doc_tower = EncoderTower(cfg, rngs=rngs)
    self.logit_scale = contrastive.LogitScale(
        cfg.temperature, cfg.learn_temperature, cfg.max_logit_scale)

  def tower(self, name: str) -> EncoderTower:
    if name not in TOWERS:
      raise ValueError(f'tower must be one of {TOWERS}, got {name!r}')
    if self.cfg.shared_towers:
      return self.shared_tower
    return self.query_tower if name == 'query' else self.doc_tower

  def encode(self, tokens, tower: str = 'query', *,
             deterministic: bool = True, rngs: nnx.Rngs | None = None):
    """(b, l) or (b, k, l) tokens -> (b, dim) or (b, k, dim) embeddings."""
    lead = tokens.shape[:-1]
    flat = tokens.reshape(-1, tokens.shape[-1])
    out = self.tower(tower)(flat, deterministic=deterministic, rngs=rngs)
    return out.reshape(*lead, out.shape[-1])

  def __call__(self, query_tokens, doc_tokens, *, deterministic: bool = True,
               rngs: nnx.Rngs | None = None):
    return (self.encode(query_tokens, 'query', deterministic=deterministic,
                        rngs=rngs),
            self.encode(doc_tokens, 'doc', deterministic=deterministic,
                        rngs=rngs))


# ------------------------------------------------- HF checkpoint import ---

# Sentence-Transformers layout of GTR / Sentence-T5 (e.g. gtr-t5-base): the
# T5 encoder at the top level, its projection in 2_Dense/.
_DENSE_DIR = '2_Dense'
# Tied copies of `shared.weight` that HF may write as well.
_REDUNDANT = {'encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'}


def _encoder_entries(cfg: T5Config):
  """checkpoint_import's name map, restricted to embedding + encoder."""
  return [e for e in checkpoint_import.name_map(cfg)
          if e[0][0] in ('shared_embedding', 'encoder')]


def _read_projection(directory: str, cfg: DualEncoderConfig):
  """(d_model, projection_dim) from a Sentence-Transformers Dense module
  (no bias, identity activation, as GTR's), or None without one."""
  path = os.path.join(directory, _DENSE_DIR, 'model.safetensors')
  if not os.path.exists(path):
    return None
  config = os.path.join(directory, _DENSE_DIR, 'config.json')
  if os.path.exists(config):
    with open(config) as f:
      dense = json.load(f)
    activation = dense.get('activation_function', '')
    if dense.get('bias') or not activation.endswith('Identity'):
      raise ValueError(f'{config}: bias={dense.get("bias")!r}, '
                       f'activation_function={activation!r}; DualEncoder '
                       'projections are linear without bias (as in GTR)')
  tensors = checkpoint_import.read_safetensors(os.path.dirname(path))
  if 'linear.bias' in tensors:
    raise ValueError(f'{path}: the projection has a bias (linear.bias); '
                     'DualEncoder projections have none')
  if 'linear.weight' not in tensors:
    raise KeyError(f'{path}: no tensor linear.weight (found '
                   f'{sorted(tensors)})')
  w = np.asarray(tensors['linear.weight'][0]).T       # (out, in) -> (in, out)
  want = (cfg.encoder.emb_dim, cfg.projection_dim)
  if w.shape != want:
    raise ValueError(f'{path}: linear.weight gives a {w.shape} projection; '
                     f'DualEncoderConfig.projection_dim needs {want}')
  return w


def _fresh_projection(cfg: DualEncoderConfig, seed: int,
                      index: int) -> np.ndarray:
  """A projection no checkpoint holds: normal, std d_model**-0.5 as in
  EncoderTower, from numpy (no device work)."""
  rng = np.random.default_rng([seed, index])
  return rng.normal(0.0, cfg.encoder.emb_dim ** -0.5,
                    (cfg.encoder.emb_dim, cfg.projection_dim))


def import_hf_encoder(directory: str, cfg: DualEncoderConfig | None = None, *,
                      partitioner: Partitioner | None = None, seed: int = 0,
                      **t5_overrides) -> DualEncoder:
  """A DualEncoder whose tower(s) hold the encoder of an HF T5-family
  checkpoint (T5 / T5.1.1 / mT5 encoder-decoder, or an encoder-only
  `T5EncoderModel` such as GTR's); decoder tensors are ignored.

  The architecture comes from the checkpoint's config.json (`cfg.encoder`
  is replaced); the rest of `cfg` (towers, pooling, projection,
  temperature) is kept. Separate towers both start from the same weights.
  A Sentence-Transformers `2_Dense/model.safetensors` fills the projection;
  otherwise it is drawn from `seed`. Nothing is randomly initialised and
  then overwritten: the network is built abstractly and each array is
  placed once (on its shards of the mesh, with a partitioner).
  """
  t5 = checkpoint_import.load_hf_config(directory, **t5_overrides)
  cfg = (cfg or DualEncoderConfig(encoder=t5)).replace(encoder=t5)
  tensors = checkpoint_import.read_safetensors(directory)
  abstract = nnx.eval_shape(lambda: DualEncoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  shardings = (dict(nnx.to_flat_state(partitioner.state_shardings(state)))
               if partitioner is not None else {})
  values: dict[tuple, np.ndarray] = {}
  origin: dict[tuple, str] = {}   # path -> 'file: tensor', for errors
  used = set()
  projection = (_read_projection(directory, cfg) if cfg.projection_dim
                else None)
  towers = (['shared_tower'] if cfg.shared_towers
            else ['query_tower', 'doc_tower'])
  for tower in towers:
    for rpath, hf_name, to_rosetta, _ in _encoder_entries(
        t5.replace(scan_layers=False)):
      if hf_name not in tensors and hf_name == 'shared.weight':
        hf_name = 'encoder.embed_tokens.weight'  # some exports drop 'shared'
      if hf_name not in tensors:
        raise KeyError(f'{directory}: checkpoint has no tensor {hf_name!r} '
                       f'(needed for {"/".join(map(str, rpath))})')
      array, source = tensors[hf_name]
      used.add(hf_name)
      origin[(tower,) + rpath] = f'{source}: tensor {hf_name!r}'
      try:
        values[(tower,) + rpath] = np.asarray(to_rosetta(np.asarray(array)))
      except ValueError as e:
        raise ValueError(f'{source}: tensor {hf_name!r} of shape '
                         f'{array.shape} does not fit the config ({e})'
                         ) from e
    if cfg.projection_dim:
      values[(tower, 'projection')] = (
          projection if projection is not None
          else _fresh_projection(cfg, seed, towers.index(tower)))
  if cfg.learn_temperature:
    values[('logit_scale', 'log_scale')] = np.asarray(
        np.log(1.0 / cfg.temperature), np.float32)
  unused = sorted(n for n in set(tensors) - used - _REDUNDANT
                  if not n.startswith(('decoder.', 'lm_head.')))
  if unused:
    raise ValueError(f'{directory}: tensors the encoder does not use: '
                     f'{unused[:5]}{"..." if len(unused) > 5 else ""} (wrong '
                     'num_layers or feed_forward_proj in config.json?)')

  if t5.scan_layers:   # HF has one tensor per layer: stack them
    values = layer_stack.stack_paths(values)

  def place(path, variable):
    want = variable.get_value()
    if path not in values:
      raise NotImplementedError(f'import_hf_encoder: no source for '
                                f'{"/".join(map(str, path))}')
    value = values[path]
    if tuple(value.shape) != tuple(want.shape):
      raise ValueError(f'{origin.get(path, directory)} gives '
                       f'{"/".join(map(str, path))} the shape {value.shape}; '
                       f'the config needs {want.shape}')
    value = np.asarray(value).astype(want.dtype)
    return variable.replace(jax.device_put(value, shardings[path])
                            if path in shardings else jnp.asarray(value))
  return nnx.merge(graphdef, nnx.map_state(place, state))
