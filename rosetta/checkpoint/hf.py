"""HF T5 / T5.1.1 / mT5 / ByT5 checkpoints <-> Rosetta parameters.

Reads `config.json` plus `model.safetensors` (or a sharded
`model.safetensors.index.json`) from a local directory; never pickle. Writes
the same layout back so that a Rosetta model can be loaded by
`transformers.T5ForConditionalGeneration.from_pretrained`.

Layouts: HF stores Linear weights as (out, in) with heads flattened; Rosetta
keeps (in, heads, head_dim) for q/k/v and (heads, head_dim, out) for o, so
that heads can be sharded by name. For example::

    HF  encoder.block.3.layer.0.SelfAttention.q.weight   (h*d, e)
    ->  encoder/layers/3/attention/query                  (e, h, d)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable, Iterable

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from rosetta.model import layer_stack
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config
from rosetta.partitioning import Partitioner

# HF feed_forward_proj -> Rosetta mlp_activations. HF maps 'gated-gelu' to
# the tanh approximation ('gelu_new') but plain 'gelu' to the exact one.
_FFN = {
    'gated-gelu': ('gelu', 'linear'),
    'gated-gelu_new': ('gelu', 'linear'),
    'gated-relu': ('relu', 'linear'),
    'gated-silu': ('silu', 'linear'),
    'relu': ('relu',),
    'gelu': ('gelu_exact',),
    'gelu_new': ('gelu',),
}
_FFN_BACK = {v: k for k, v in reversed(list(_FFN.items()))}


def config_from_hf(hf: dict, source: str = 'config.json', **overrides
                   ) -> T5Config:
  """T5Config from a parsed HF config.json (`source` names it in errors)."""
  def need(key):
    if key not in hf:
      raise ValueError(f'{source}: missing field {key!r} needed for a T5 '
                       'model')
    return hf[key]
  ffn = hf.get('feed_forward_proj', 'relu')
  if ffn not in _FFN:
    raise ValueError(f'{source}: feed_forward_proj {ffn!r} is not supported; '
                     f'supported: {sorted(_FFN)}')
  num_layers = need('num_layers')
  kw = dict(
      vocab_size=need('vocab_size'), emb_dim=need('d_model'),
      num_heads=need('num_heads'), head_dim=need('d_kv'),
      mlp_dim=need('d_ff'), num_encoder_layers=num_layers,
      num_decoder_layers=hf.get('num_decoder_layers') or num_layers,
      mlp_activations=_FFN[ffn],
      relative_attention_num_buckets=hf.get('relative_attention_num_buckets',
                                            32),
      relative_attention_max_distance=hf.get(
          'relative_attention_max_distance', 128),
      dropout_rate=hf.get('dropout_rate', 0.1),
      layer_norm_epsilon=hf.get('layer_norm_epsilon', 1e-6),
      tie_word_embeddings=_rescales_logits(hf),
      pad_token_id=hf.get('pad_token_id', 0) or 0,
      eos_token_id=hf.get('eos_token_id', 1),
      decoder_start_token_id=hf.get('decoder_start_token_id', 0) or 0)
  if isinstance(kw['eos_token_id'], list):
    kw['eos_token_id'] = kw['eos_token_id'][0]
  kw.update(overrides)
  return T5Config(**kw)


def _rescales_logits(hf: dict) -> bool:
  """Whether decoder outputs are scaled by d_model**-0.5 (T5 v1.0 style).

  transformers 5 always writes tie_word_embeddings=true: for T5 it records
  the real v1.0-vs-1.1 difference in scale_decoder_outputs, and mT5 never
  rescales. Older files only have tie_word_embeddings.
  """
  if 'scale_decoder_outputs' in hf:
    return bool(hf['scale_decoder_outputs'])
  if hf.get('model_type') in ('mt5', 'umt5'):
    return False
  return bool(hf.get('tie_word_embeddings', True))


def config_to_hf(cfg: T5Config, model_type: str = 't5') -> dict:
  if cfg.mlp_activations not in _FFN_BACK:
    raise ValueError(f'mlp_activations {cfg.mlp_activations} has no HF '
                     'feed_forward_proj equivalent')
  return {
      'architectures': ['T5ForConditionalGeneration'],
      'model_type': model_type,
      'vocab_size': cfg.vocab_size, 'd_model': cfg.emb_dim,
      'd_kv': cfg.head_dim, 'd_ff': cfg.mlp_dim,
      'num_layers': cfg.num_encoder_layers,
      'num_decoder_layers': cfg.num_decoder_layers,
      'num_heads': cfg.num_heads,
      'relative_attention_num_buckets': cfg.relative_attention_num_buckets,
      'relative_attention_max_distance': cfg.relative_attention_max_distance,
      'dropout_rate': cfg.dropout_rate,
      'layer_norm_epsilon': cfg.layer_norm_epsilon,
      'feed_forward_proj': _FFN_BACK[cfg.mlp_activations],
      'tie_word_embeddings': cfg.tie_word_embeddings,
      'scale_decoder_outputs': cfg.tie_word_embeddings,
      'is_encoder_decoder': True,
      'pad_token_id': cfg.pad_token_id, 'eos_token_id': cfg.eos_token_id,
      'decoder_start_token_id': cfg.decoder_start_token_id,
  }


# --------------------------------------------------------- the name map ---
# Each entry: Rosetta path, HF name, HF -> Rosetta array fn, inverse fn.

def _linear_in(e, h, d):   # HF (h*d, e) -> (e, h, d)
  return (lambda w: w.T.reshape(e, h, d), lambda w: w.reshape(e, h * d).T)


def _linear_out(e, h, d):  # HF (e, h*d) -> (h, d, e)
  return (lambda w: w.T.reshape(h, d, e), lambda w: w.reshape(h * d, e).T)


_T = (lambda w: w.T, lambda w: w.T)
_ID = (lambda w: w, lambda w: w)


def name_map(cfg: T5Config) -> list[tuple[tuple, str, Callable, Callable]]:
  e, h, d = cfg.emb_dim, cfg.num_heads, cfg.head_dim
  qkv, o = _linear_in(e, h, d), _linear_out(e, h, d)
  out = [(('shared_embedding', 'embedding'), 'shared.weight', *_ID)]

  def attention(rpath, hf):
    return [(rpath + ('query',), f'{hf}.q.weight', *qkv),
            (rpath + ('key',), f'{hf}.k.weight', *qkv),
            (rpath + ('value',), f'{hf}.v.weight', *qkv),
            (rpath + ('out',), f'{hf}.o.weight', *o)]

  def mlp(rpath, hf):
    names = ['wi'] if len(cfg.mlp_activations) == 1 else ['wi_0', 'wi_1']
    return ([(rpath + (n,), f'{hf}.{n}.weight', *_T) for n in names] +
            [(rpath + ('wo',), f'{hf}.wo.weight', *_T)])

  def norm(rpath, hf):
    return [(rpath + ('scale',), f'{hf}.weight', *_ID)]

  for stack in ('encoder', 'decoder'):
    out.append(((stack, 'relpos_bias', 'embedding'),
                f'{stack}.block.0.layer.0.SelfAttention.'
                'relative_attention_bias.weight', *_ID))
    out += norm((stack, 'final_norm'), f'{stack}.final_layer_norm')
  for i in range(cfg.num_encoder_layers):
    r, hf = ('encoder', 'layers', i), f'encoder.block.{i}.layer'
    out += norm(r + ('pre_attention_norm',), f'{hf}.0.layer_norm')
    out += attention(r + ('attention',), f'{hf}.0.SelfAttention')
    out += norm(r + ('pre_mlp_norm',), f'{hf}.1.layer_norm')
    out += mlp(r + ('mlp',), f'{hf}.1.DenseReluDense')
  for i in range(cfg.num_decoder_layers):
    r, hf = ('decoder', 'layers', i), f'decoder.block.{i}.layer'
    out += norm(r + ('pre_self_attention_norm',), f'{hf}.0.layer_norm')
    out += attention(r + ('self_attention',), f'{hf}.0.SelfAttention')
    out += norm(r + ('pre_cross_attention_norm',), f'{hf}.1.layer_norm')
    out += attention(r + ('cross_attention',), f'{hf}.1.EncDecAttention')
    out += norm(r + ('pre_mlp_norm',), f'{hf}.2.layer_norm')
    out += mlp(r + ('mlp',), f'{hf}.2.DenseReluDense')
  if not cfg.tie_word_embeddings:
    out.append((('decoder', 'logits_dense'), 'lm_head.weight', *_T))
  return out


# Names HF writes that carry no extra information for Rosetta.
_REDUNDANT = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')


# ------------------------------------------------------------- reading ---

def _safetensors_files(directory: str) -> list[str]:
  index = os.path.join(directory, 'model.safetensors.index.json')
  single = os.path.join(directory, 'model.safetensors')
  if os.path.exists(index):
    with open(index) as f:
      try:
        weight_map = json.load(f)['weight_map']
      except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f'{index}: not a safetensors index ({e})') from e
    return [os.path.join(directory, n) for n in sorted(set(weight_map.values()))]
  if os.path.exists(single):
    return [single]
  found = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
  raise FileNotFoundError(
      f'{directory}: no model.safetensors or model.safetensors.index.json '
      f'(found: {found}). Pickled pytorch_model.bin files are not read.')


def read_safetensors(directory: str) -> dict[str, tuple[np.ndarray, str]]:
  """{HF name: (array, file it came from)} for every tensor in the checkpoint."""
  out = {}
  for path in _safetensors_files(directory):
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path}: listed in the index but missing')
    with safe_open(path, framework='numpy') as f:
      for key in f.keys():
        out[key] = (f.get_tensor(key), path)
  return out


def load_hf_config(directory: str, **overrides) -> T5Config:
  path = os.path.join(directory, 'config.json')
  try:
    with open(path) as f:
      hf = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no config.json in the checkpoint '
                            'directory') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: invalid JSON at line {e.lineno}: {e.msg}'
                     ) from e
  return config_from_hf(hf, path, **overrides)


def hf_to_rosetta(tensors: dict[str, tuple[np.ndarray, str]], cfg: T5Config,
                  abstract_state: nnx.State) -> dict[tuple, np.ndarray]:
  """Converts HF tensors to Rosetta's flat {path: array}, checking shapes.
  HF names one tensor per layer: a scanned config's layers are converted
  one by one and stacked (`layer_stack`)."""
  expected = {path: v.get_value()
              for path, v in nnx.to_flat_state(abstract_state)}
  if cfg.scan_layers:
    expected = layer_stack.unstack_paths(expected)
  out, used = {}, set()
  for rpath, hf_name, to_rosetta, _ in name_map(
      cfg.replace(scan_layers=False)):
    if hf_name not in tensors and hf_name == 'shared.weight':
      hf_name = 'encoder.embed_tokens.weight'  # some exports drop 'shared'
    if hf_name not in tensors and hf_name == 'lm_head.weight':
      # Untied-by-config but tied-in-file (deduplicated on save): the output
      # projection is the embedding itself.
      hf_name, to_rosetta = 'shared.weight', _T[0]
    if hf_name not in tensors:
      raise KeyError(f'checkpoint has no tensor {hf_name!r} (needed for '
                     f'{"/".join(map(str, rpath))})')
    array, source = tensors[hf_name]
    used.add(hf_name)
    try:
      value = to_rosetta(np.asarray(array))
    except ValueError as e:
      raise ValueError(f'{source}: tensor {hf_name!r} of shape {array.shape} '
                       f'does not fit the config ({e})') from e
    want = expected[rpath]
    if tuple(value.shape) != tuple(want.shape):
      raise ValueError(f'{source}: tensor {hf_name!r} has shape '
                       f'{array.shape}; the config needs {want.shape} after '
                       'conversion')
    out[rpath] = value.astype(want.dtype)
  redundant = set(_REDUNDANT)
  if cfg.tie_word_embeddings:
    redundant.add('lm_head.weight')  # a tied copy of the embedding
  unexpected = sorted(set(tensors) - used - redundant)
  if unexpected:
    raise ValueError(f'checkpoint has tensors the config does not use: '
                     f'{unexpected[:5]}{"..." if len(unexpected) > 5 else ""}'
                     ' (wrong num_layers or feed_forward_proj?)')
  return layer_stack.stack_paths(out) if cfg.scan_layers else out


def import_hf_checkpoint(directory: str, partitioner: Partitioner | None = None,
                         **config_overrides) -> EncoderDecoder:
  """Loads an HF T5-family checkpoint directory into an EncoderDecoder.

  With a partitioner, each parameter is placed straight onto its shards of
  the mesh (`jax.device_put` with its NamedSharding).
  """
  cfg = load_hf_config(directory, **config_overrides)
  abstract = nnx.eval_shape(lambda: EncoderDecoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  flat = hf_to_rosetta(read_safetensors(directory), cfg, abstract_state)
  shardings = (None if partitioner is None
               else dict(nnx.to_flat_state(
                   partitioner.state_shardings(abstract_state))))
  fresh = None
  if any(path not in flat for path, _ in nnx.to_flat_state(abstract_state)):
    # LoRA / adapter parameters (`rosetta.model.peft`) are not in an HF
    # checkpoint: they keep their fresh values (the identity update).
    fresh = dict(nnx.to_flat_state(nnx.state(
        EncoderDecoder(cfg, rngs=nnx.Rngs(params=0)), nnx.Param)))

  def place(path, variable):
    value = flat[path] if path in flat else fresh[path].get_value()
    if shardings is not None:
      value = jax.device_put(value, shardings[path])
    else:
      value = jax.numpy.asarray(value)
    return variable.replace(value)
  state = nnx.map_state(place, abstract_state)
  return nnx.merge(graphdef, state)


# ------------------------------------------------------------- writing ---

def rosetta_to_hf(model: EncoderDecoder) -> dict[str, np.ndarray]:
  cfg = model.cfg
  flat = {path: v.get_value()
          for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  if cfg.scan_layers:
    flat = layer_stack.unstack_paths(flat)
  out = {}
  for rpath, hf_name, _, to_hf in name_map(cfg.replace(scan_layers=False)):
    out[hf_name] = np.ascontiguousarray(to_hf(np.asarray(flat[rpath])))
  return out


def export_hf_checkpoint(model: EncoderDecoder, directory: str,
                         model_type: str = 't5') -> str:
  """Writes config.json + model.safetensors into `directory` atomically.

  The files are written to a temporary sibling directory first and moved in
  place at the end, so a crash never leaves a half-written checkpoint. An
  existing non-empty `directory` is an error, not overwritten.
  """
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory):
    raise FileExistsError(f'{directory}: exists and is not empty; refusing '
                          'to overwrite an existing checkpoint')
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.export-', dir=parent)
  try:
    save_file(rosetta_to_hf(model), os.path.join(tmp, 'model.safetensors'),
              metadata={'format': 'pt'})
    with open(os.path.join(tmp, 'config.json'), 'w') as f:
      json.dump(config_to_hf(model.cfg, model_type), f, indent=2)
    if os.path.exists(directory):
      os.rmdir(directory)
    os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory
