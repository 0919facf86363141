"""Scanned layers: one layer module whose parameters carry a leading
'layers' axis, run with `jax.lax.scan` (t5x's and MaxText's `scan_layers`).

The compiler then sees the layer body once instead of once per layer: the
T5.1.1-small train step (8 + 8 layers) compiles for a TPU slice in 30 s
instead of 150 s, XL (24 + 24) in about 95 s, and the program no longer
grows with the depth (BUILD_NOTES.md, TPU). The step computes what the
unrolled layers compute: `stack` builds the layers exactly as the unrolled
model does (same initialisation, same RNG draws) and stacks their
variables, and a test checks logits and gradients match the unrolled
network with the same parameters.

Parameter paths lose the layer index: `encoder/layers/3/mlp/wi_0/kernel`
(e, m) becomes `encoder/layers/mlp/wi_0/kernel` (L, e, m). `stack_paths`
and `unstack_paths` convert flat parameter dicts between the two layouts
(HF import and export, runs started from a run of the other layout).

Decoding keeps a per-layer KV cache, so `unstack` gives the decoder its
layers as separate modules (slices of the stacked parameters) when the
cache is set up; training and scoring never unstack.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rosetta.model import layers

# The logical name of the stacked axis; partitioning maps it to no mesh axis
# (every device holds every layer's shard of each parameter).
LAYERS_AXIS = 'layers'

def stack(modules: Sequence[nnx.Module]) -> nnx.Module:
  """One module of the same class whose variables are the modules'
  variables stacked on a new leading axis (logical axis 'layers')."""
  if not modules:
    raise ValueError('stack: no layers to stack')
  graphdef, _ = nnx.split(modules[0])
  states = [nnx.state(m) for m in modules]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  module = nnx.merge(graphdef, stacked)
  for _, variable in nnx.iter_graph(module):
    if isinstance(variable, nnx.Variable):
      axes = variable.get_metadata().get('logical_axes')
      if axes is not None:
        variable.set_metadata(logical_axes=(LAYERS_AXIS, *axes))
  return module


def num_layers(module: nnx.Module) -> int:
  leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
  if not leaves:
    raise ValueError('a stacked layer module without parameters')
  return int(leaves[0].shape[0])


def unstack(module: nnx.Module) -> list[nnx.Module]:
  """The stacked module's layers as separate modules (slices)."""
  graphdef, state = nnx.split(module)
  modules = []
  for i in range(num_layers(module)):
    layer = nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], state))
    for _, variable in nnx.iter_graph(layer):
      if isinstance(variable, nnx.Variable):
        axes = variable.get_metadata().get('logical_axes')
        if axes and axes[0] == LAYERS_AXIS:
          variable.set_metadata(logical_axes=tuple(axes[1:]))
    modules.append(layer)
  return modules


def scan(module: nnx.Module, body: Callable, x, *, rngs: nnx.Rngs | None,
         deterministic: bool, remat: str = 'none'):
  """Runs `body(layer, x, layer_rngs) -> (x, y)` over the stacked layers.

  Returns the last x and the ys stacked over layers (unused ys are dropped
  by JAX's dead-code elimination). Dropout gets one key per layer, split
  from `rngs.dropout()`; remat ('full', 'dots_saveable') checkpoints the
  body, so each layer's saved activations are what the policy keeps.
  """
  graphdef, state = nnx.split(module)
  n = num_layers(module)
  keys = (jax.random.split(rngs.dropout(), n)
          if rngs is not None and not deterministic else None)

  def step(carry, xs):
    layer_state, key = xs
    layer = nnx.merge(graphdef, layer_state)
    layer_rngs = None if key is None else nnx.Rngs(dropout=key)
    return body(layer, carry, layer_rngs)

  if remat != 'none':
    step = jax.checkpoint(step, policy=layers.REMAT_POLICIES[remat],
                          prevent_cse=False)
  return jax.lax.scan(step, x, (state, keys))


def stack_depths(params) -> dict[str, int]:
  """{stack prefix: number of layers} of a parameter tree (arrays or
  ShapeDtypeStructs); empty for unrolled layers."""
  depths = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    prefix = stack_prefix(path)
    if prefix is not None:
      depths[prefix] = int(leaf.shape[0])
  return depths


def _key(entry):
  for attr in ('key', 'name', 'idx'):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  return entry


def stack_prefix(path: Sequence) -> str | None:
  """For a pytree path (jax key entries or plain keys) inside a stacked
  layer module, its stack ('encoder/layers': a 'layers' key followed by a
  name, not an index); None elsewhere."""
  keys = [_key(e) for e in path]
  for j, k in enumerate(keys[:-1]):
    if k == 'layers' and not isinstance(keys[j + 1], int):
      return '/'.join(str(x) for x in keys[:j + 1])
  return None


_INDEXED = re.compile(r'^(encoder|decoder)$')


def _layer_index(path: tuple) -> int | None:
  """The position of the layer index in an unrolled path, or None."""
  for j in range(len(path) - 2):
    if (_INDEXED.match(str(path[j])) and path[j + 1] == 'layers'
        and isinstance(path[j + 2], int)):
      return j + 2
  return None


def stack_paths(flat: Mapping[tuple, Any]) -> dict[tuple, Any]:
  """{unrolled path: array} -> {stacked path: (L, ...) array}; paths outside
  the encoder / decoder layers pass through."""
  out, groups = {}, {}
  for path, value in flat.items():
    j = _layer_index(path)
    if j is None:
      out[path] = value
    else:
      groups.setdefault(path[:j] + path[j + 1:], {})[path[j]] = value
  for path, by_layer in groups.items():
    indices = sorted(by_layer)
    if indices != list(range(len(indices))):
      raise ValueError(f'{"/".join(map(str, path))}: layers {indices} are '
                       'not 0..L-1; cannot stack them')
    out[path] = np.stack([np.asarray(by_layer[i]) for i in indices])
  return out


def unstack_paths(flat: Mapping[tuple, Any],
                  stacked_prefixes: Sequence[tuple] = (('encoder', 'layers'),
                                                       ('decoder', 'layers'))
                  ) -> dict[tuple, Any]:
  """The inverse of `stack_paths`: (L, ...) arrays (or ShapeDtypeStructs)
  under a stacked prefix (anywhere in the path) become L indexed paths."""
  out = {}
  for path, value in flat.items():
    j = next((k for k in range(len(path) - 1)
              for p in stacked_prefixes if tuple(path[k:k + 2]) == p), None)
    if j is None or (len(path) > j + 2 and isinstance(path[j + 2], int)):
      out[path] = value   # not stacked, or already unrolled
      continue
    for i in range(np.shape(value)[0]):
      out[path[:j + 2] + (i,) + path[j + 2:]] = (
          jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
          if isinstance(value, jax.ShapeDtypeStruct) else value[i])
  return out
