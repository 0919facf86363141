"""Parameter-efficient fine-tuning modules: LoRA and bottleneck adapters.

Both are switched on by `T5Config` fields and start as the identity (LoRA's
B and an adapter's up-projection are zero), so a network with fresh PEFT
parameters computes exactly what its base computes:

  lora_rank > 0     every kernel named in `lora_targets` gains a low-rank
                    update, y = x W + (alpha / r) x A B (Hu et al. 2021);
                    'query', 'key', 'value', 'out' (every attention, encoder
                    and decoder, self and cross) and 'mlp' (wi / wi_0 / wi_1
                    / wo). `merge_lora` folds A B into W.
  adapters          named bottleneck adapters stacked in every layer after
                    its feed-forward block, in order: x + U relu(D norm(x)).
                    ('language', 'task') is MAD-X (Pfeiffer et al. 2020): a
                    language adapter trained with span corruption on one
                    language's text, a task adapter trained above it, and at
                    inference the language adapter of another language.

Parameters live beside the kernels they adapt (`.../attention/lora/query/a`,
`.../layers/3/adapters/task/down`) and use their own variable types
(`flax.nnx.LoRAParam`, `AdapterParam`, both `nnx.Param`s), so a base
checkpoint and a PEFT network share every base path. Which parameters train
is the trainer's business (`Trainer(trainable=...)`, regular expressions
over parameter paths; `PEFT_TRAINABLE` names the usual choices).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rosetta.model import layers

LORA_TARGETS = ('query', 'key', 'value', 'out', 'mlp')
MLP_KERNELS = ('wi', 'wi_0', 'wi_1', 'wo')

# Regular expressions for `train.trainable` (matched with re.search against
# '/'-joined parameter paths).
PEFT_TRAINABLE = {
    'lora': (r'(^|/)lora/',),
    'adapters': (r'(^|/)adapters/',),
}


def adapter_pattern(name: str) -> str:
  """The `train.trainable` pattern of one named adapter in every layer."""
  return rf'(^|/)adapters/{re.escape(name)}/'


class AdapterParam(nnx.Param):
  """A bottleneck adapter's weight (a `Param`, told apart by type)."""


def _init(rngs: nnx.Rngs, shape, std, dtype):
  return layers.normal_init(rngs.params(), shape, std, dtype)


class LoRA(nnx.Module):
  """Low-rank update of one kernel of shape in_shape + out_shape.

  A is (*in_shape, r), B is (r, *out_shape), with the kernel's logical axes
  on the shared dimensions and 'lora_rank' (replicated) on r, so A and B are
  sharded like the kernel they adapt. `delta(x)` takes x (..., prod(in))
  and returns the float32 update (..., prod(out)).
  """

  def __init__(self, in_shape: Sequence[int], in_axes: Sequence[str],
               out_shape: Sequence[int], out_axes: Sequence[str], rank: int,
               alpha: float, dtype, param_dtype, *, rngs: nnx.Rngs):
    fan_in = math.prod(in_shape)
    self.a = nnx.LoRAParam(
        _init(rngs, (*in_shape, rank), fan_in ** -0.5, param_dtype),
        logical_axes=(*in_axes, 'lora_rank'))
    self.b = nnx.LoRAParam(jnp.zeros((rank, *out_shape), param_dtype),
                           logical_axes=('lora_rank', *out_axes))
    self.scale = alpha / rank
    self.dtype = dtype

  def delta(self, x):
    rank = self.a.shape[-1]
    h = layers.dense(x, self.a[...].reshape(-1, rank), self.dtype)
    y = layers.dense(h.astype(self.dtype), self.b[...].reshape(rank, -1),
                     self.dtype)
    return self.scale * y


class BottleneckAdapter(nnx.Module):
  """x + up(relu(down(rms_norm(x)))), zero up-projection at init."""

  def __init__(self, emb_dim: int, adapter_dim: int, eps: float, dtype,
               param_dtype, *, rngs: nnx.Rngs):
    self.norm_scale = AdapterParam(jnp.ones((emb_dim,), param_dtype),
                                   logical_axes=('embed',))
    self.down = AdapterParam(
        _init(rngs, (emb_dim, adapter_dim), emb_dim ** -0.5, param_dtype),
        logical_axes=('embed', 'adapter'))
    self.up = AdapterParam(jnp.zeros((adapter_dim, emb_dim), param_dtype),
                           logical_axes=('adapter', 'embed'))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = x32 * jax.lax.rsqrt(var + self.eps) * self.norm_scale[...]
    h = jax.nn.relu(layers.dense(normed.astype(self.dtype), self.down[...],
                                 self.dtype))
    y = layers.dense(h.astype(self.dtype), self.up[...], self.dtype)
    return (x32 + y).astype(x.dtype)


def make_adapters(names: Sequence[str], emb_dim: int, adapter_dim: int,
                  eps: float, dtype, param_dtype, *, rngs: nnx.Rngs
                  ) -> nnx.Dict:
  """A layer's named adapters (`apply_adapters` runs them in order)."""
  return nnx.Dict({name: BottleneckAdapter(emb_dim, adapter_dim, eps, dtype,
                                           param_dtype, rngs=rngs)
                   for name in names})


def apply_adapters(adapters: nnx.Dict, names: Sequence[str], x):
  for name in names:
    x = adapters[name](x)
  return x


def lora_factory(rank: int, alpha: float, targets: Sequence[str], dtype,
                 param_dtype, *, rngs: nnx.Rngs):
  """What `layers.MultiHeadAttention` / `MlpBlock` call per kernel:
  `(name, in_shape, in_axes, out_shape, out_axes) -> LoRA | None`; None
  when LoRA is off (rank 0) or the kernel is not a target."""
  if not rank:
    return None
  wanted = set(targets)

  def make(name, in_shape, in_axes, out_shape, out_axes):
    kind = 'mlp' if name in MLP_KERNELS else name
    if kind not in wanted:
      return None
    return LoRA(in_shape, in_axes, out_shape, out_axes, rank, alpha, dtype,
                param_dtype, rngs=rngs)
  return make


def check_config(lora_rank: int, lora_alpha: float, lora_targets,
                 adapters, adapter_dim: int) -> None:
  """Raises ValueError naming the T5Config field that is wrong."""
  if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or (
      lora_rank < 0):
    raise ValueError(f'T5Config.lora_rank must be an int >= 0 (0 = no LoRA),'
                     f' got {lora_rank!r}')
  if lora_rank and not lora_alpha > 0:
    raise ValueError(f'T5Config.lora_alpha must be > 0, got {lora_alpha!r}')
  unknown = [t for t in lora_targets if t not in LORA_TARGETS]
  if unknown or (lora_rank and not lora_targets):
    raise ValueError(f'T5Config.lora_targets: {unknown or "empty"}; choose '
                     f'from {LORA_TARGETS}')
  for name in adapters:
    if not isinstance(name, str) or not re.fullmatch(r'[A-Za-z_]\w*', name):
      raise ValueError(f'T5Config.adapters: {name!r} is not a name '
                       '(letters, digits, underscores)')
  if len(set(adapters)) != len(adapters):
    raise ValueError(f'T5Config.adapters names an adapter twice: '
                     f'{tuple(adapters)}')
  if adapters and (not isinstance(adapter_dim, int) or adapter_dim <= 0):
    raise ValueError(f'T5Config.adapter_dim must be a positive int, got '
                     f'{adapter_dim!r}')


# ------------------------------------------------------------- merging ---


def merge_lora(params: Mapping[str, Any], scale: float) -> dict[str, Any]:
  """Pure-dict parameters with every `lora/<kernel>` {a, b} folded into the
  sibling `<kernel>` (W + scale A B, scale = lora_alpha / lora_rank) and the
  `lora` entries removed: the parameters of the same network with
  `lora_rank = 0`."""
  out = {key: merge_lora(value, scale) if isinstance(value, Mapping)
         else value for key, value in params.items() if key != 'lora'}
  for target, ab in params.get('lora', {}).items():
    if target not in out:
      raise KeyError(f'lora/{target}: no kernel {target!r} beside it to '
                     'merge into')
    a, b = ab['a'], ab['b']
    rank = a.shape[-1]
    kernel = out[target]
    # Scanned layers (`layer_stack`) stack a, b and the kernel on one more
    # leading axis than the kernel's own dimensions account for.
    lead = a.shape[:a.ndim + b.ndim - 2 - kernel.ndim]
    product = jnp.einsum('...ir,...rj->...ij',
                         jnp.asarray(a, jnp.float32).reshape(*lead, -1, rank),
                         jnp.asarray(b, jnp.float32).reshape(*lead, rank, -1),
                         precision=jax.lax.Precision.HIGHEST)
    out[target] = (jnp.asarray(kernel, jnp.float32) +
                   scale * product.reshape(kernel.shape)).astype(kernel.dtype)
  return out
