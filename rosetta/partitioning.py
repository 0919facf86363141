"""Device meshes, THE logical-axis rules table, and sharded parameter creation.

Every parameter and key activation in Rosetta names its axes with *logical*
names ('vocab', 'embed', 'activation_batch', ...). One table here maps those
names to *mesh* axes ('data', 'fsdp', 'model'). Applications add names with
`extend_rules`; they never edit `DEFAULT_RULES`.

Parameters and activations use different logical names on purpose (as in
MaxText): with FSDP the parameter axis 'embed' is sharded over 'fsdp' while
the activation batch is sharded over ('data', 'fsdp'); one name for both would
ask for the same mesh axis twice in one array.

Worked example, on a (data=4, fsdp=1, model=2) mesh::

    logical_to_mesh_axes(('embed', 'mlp'))          -> P('fsdp', 'model')
    logical_to_mesh_axes(('activation_batch', 'activation_length',
                          'activation_embed'))      -> P(('data', 'fsdp'), None, None)

A helper never silently drops an annotation: an unknown logical name, a mesh
axis used twice or a dimension that the mesh axis does not divide raises.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import gin
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'model')

LogicalAxes = tuple[str | None, ...]
MeshAxis = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxis], ...]

# THE table. Left: logical name; right: mesh axis (or tuple of axes, or None
# for replicated).
DEFAULT_RULES: Rules = (
    # --- parameters ---
    ('vocab', 'model'),
    ('embed', 'fsdp'),
    ('mlp', 'model'),
    ('heads', 'model'),
    ('kv', None),
    ('relpos_buckets', None),
    ('lora_rank', None),       # rosetta.model.peft: LoRA's low rank
    ('adapter', None),         # and a bottleneck adapter's width
    ('layers', None),          # scanned layers' stacked axis (layer_stack)
    # --- activations ---
    ('activation_batch', ('data', 'fsdp')),
    ('activation_length', None),
    ('activation_embed', None),
    ('activation_mlp', 'model'),
    ('activation_heads', 'model'),
    ('activation_kv', None),
    ('activation_vocab', 'model'),
    # --- decoder KV cache ---
    ('cache_batch', ('data', 'fsdp')),
    ('cache_length', None),
    ('cache_heads', 'model'),
    ('cache_kv', None),
)


# The logical axes of every input batch (batch over the data axes).
BATCH_AXES: LogicalAxes = ('activation_batch', 'activation_length')


def extend_rules(base: Rules, extra: Sequence[tuple[str, MeshAxis]]) -> Rules:
  """Returns `base` plus `extra`; a name already in `base` is an error.

  Applications add their own names (e.g. ('corpus', 'data') for a sharded
  retrieval index) without changing what the shared model means.
  """
  known = dict(base)
  out = list(base)
  for name, axis in extra:
    if name in known:
      raise ValueError(
          f'logical axis {name!r} is already in the rules table (mapped to '
          f'{known[name]!r}); pick a new name instead of redefining it')
    known[name] = axis
    out.append((name, axis))
  return tuple(out)


# ---------------------------------------------------------------- meshes ---


@gin.configurable
def make_mesh(data: int = -1, fsdp: int = 1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'model') mesh; one size may be -1 (use what is left).

  Axis types are `Auto` on purpose: Rosetta places arrays with explicit
  `NamedSharding`s and `with_sharding_constraint`, and lets XLA propagate the
  rest (`jax.make_mesh` defaults to `Explicit`, which would type every op's
  sharding).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, model]
  if shape.count(-1) > 1:
    raise ValueError(f'make_mesh: at most one axis may be -1, got '
                     f'data={data}, fsdp={fsdp}, model={model}')
  known = math.prod(s for s in shape if s != -1)
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f'make_mesh: axis sizes must be positive or -1, got '
                     f'data={data}, fsdp={fsdp}, model={model}')
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(
          f'make_mesh: {len(devices)} devices cannot be split into '
          f'data={data}, fsdp={fsdp}, model={model}')
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(
        f'make_mesh: data*fsdp*model = {math.prod(shape)} but there are '
        f'{len(devices)} devices (data={shape[0]}, fsdp={shape[1]}, '
        f'model={shape[2]})')
  return jax.make_mesh(tuple(shape), MESH_AXES,
                       axis_types=(AxisType.Auto,) * 3, devices=devices)


# ------------------------------------------------- logical -> mesh axes ---


def _mesh_axis_sizes(mesh: Mesh | jax.sharding.AbstractMesh) -> dict[str, int]:
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


def logical_to_mesh_axes(logical_axes: LogicalAxes,
                         rules: Rules | None = None,
                         mesh: Mesh | jax.sharding.AbstractMesh | None = None,
                         shape: Sequence[int] | None = None,
                         name: str = 'array') -> PartitionSpec:
  """Maps logical axis names to a PartitionSpec through the rules table.

  Mesh axes missing from `mesh` (e.g. 'fsdp' on a user's ('data', 'model')
  mesh) are dropped, since an axis that does not exist has size 1. With
  `shape`, each dimension must divide by the mesh axes it is sharded over.
  """
  rules = current_rules() if rules is None else rules
  table = dict(rules)
  sizes = _mesh_axis_sizes(mesh) if mesh is not None else None
  used: dict[str, str] = {}
  spec = []
  for dim, logical in enumerate(logical_axes):
    if logical is None:
      spec.append(None)
      continue
    if logical not in table:
      raise ValueError(f'{name}: logical axis {logical!r} has no rule in the '
                       f'partitioning table; known: {sorted(table)}')
    target = table[logical]
    axes = () if target is None else (
        (target,) if isinstance(target, str) else tuple(target))
    if sizes is not None:
      axes = tuple(a for a in axes if a in sizes)
    for a in axes:
      if a in used:
        raise ValueError(
            f'{name}: logical axes {used[a]!r} and {logical!r} both map to '
            f'mesh axis {a!r}; an array can use a mesh axis only once')
      used[a] = logical
    if shape is not None and sizes is not None and axes:
      n = math.prod(sizes[a] for a in axes)
      if shape[dim] % n:
        raise ValueError(
            f'{name}: dimension {dim} ({logical!r}) has size {shape[dim]}, '
            f'not divisible by mesh axes {axes} of total size {n}')
    spec.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
  return PartitionSpec(*spec)


def logical_sharding(logical_axes: LogicalAxes, mesh: Mesh,
                     rules: Rules | None = None,
                     shape: Sequence[int] | None = None,
                     name: str = 'array') -> NamedSharding:
  return NamedSharding(
      mesh, logical_to_mesh_axes(logical_axes, rules, mesh, shape, name))


def _variable_logical_axes(path, variable: nnx.Variable) -> LogicalAxes:
  axes = variable.get_metadata().get('logical_axes')
  shape = np.shape(variable.get_value())
  name = '/'.join(str(p) for p in path)
  if axes is None:
    raise ValueError(f'{name}: variable has no logical_axes metadata; every '
                     'Rosetta parameter and cache must name its axes')
  if len(axes) != len(shape):
    raise ValueError(f'{name}: {len(axes)} logical axes {axes} for an array '
                     f'of shape {shape}')
  return axes


def state_logical_axes(state: nnx.State) -> nnx.State:
  """The logical axes of every variable in `state`, as a State of tuples."""
  return nnx.map_state(_variable_logical_axes, state)


def state_shardings(state: nnx.State, mesh: Mesh,
                    rules: Rules | None = None) -> nnx.State:
  """A State of NamedShardings matching `state` (abstract or concrete)."""
  def to_sharding(path, variable):
    axes = _variable_logical_axes(path, variable)
    return logical_sharding(axes, mesh, rules, np.shape(variable.get_value()),
                            '/'.join(str(p) for p in path))
  return nnx.map_state(to_sharding, state)


def create_sharded(factory: Callable[[], nnx.Module], mesh: Mesh,
                   rules: Rules | None = None) -> nnx.Module:
  """Builds `factory()` with every variable created already sharded.

  The factory runs once abstractly (no memory) to learn shapes and logical
  axes, then under `jax.jit(..., out_shardings=...)` so that each device only
  ever materialises its own shard: a model too large for one device's memory
  can be initialised.
  """
  abstract = nnx.eval_shape(factory)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh, rules)

  def init():
    return nnx.split(factory())[1]

  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)()
  return nnx.merge(graphdef, state)


def shard_state(state: nnx.State, mesh: Mesh,
                rules: Rules | None = None) -> nnx.State:
  """Places a host (or differently sharded) state onto `mesh` by its axes."""
  return jax.device_put(state, state_shardings(state, mesh, rules))


# ------------------------------------------------ activation constraints ---

_RULES: contextvars.ContextVar[Rules] = contextvars.ContextVar(
    'rosetta_axis_rules', default=DEFAULT_RULES)


def current_rules() -> Rules:
  return _RULES.get()


@contextlib.contextmanager
def axis_rules(rules: Rules) -> Iterator[None]:
  """Sets the rules table used by `constrain` while tracing."""
  token = _RULES.set(tuple(rules))
  try:
    yield
  finally:
    _RULES.reset(token)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules | None = None) -> Iterator[Mesh]:
  """`jax.set_mesh(mesh)` plus the rules table, for tracing a model."""
  with jax.set_mesh(mesh), axis_rules(rules or current_rules()):
    yield mesh


def target_platform() -> str:
  """The platform being traced for: the active mesh's devices' ('tpu' for
  an ahead-of-time compile onto TPU devices from a CPU host), else the
  process's default backend. Backend-specific code paths key on this, never
  on `jax.default_backend()`, so an AOT compile takes the target's path."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    return mesh.abstract_device.platform
  return jax.default_backend()


def constrain(x: jax.Array, logical_axes: LogicalAxes) -> jax.Array:
  """`with_sharding_constraint` by logical names, against the current mesh.

  With no mesh set (plain single-device use) there is nothing to constrain
  and `x` is returned as is; under `activate(mesh)` (or `jax.set_mesh`) the
  constraint is always applied, on CPU as on TPU.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_mesh_axes(logical_axes, current_rules(), mesh, x.shape,
                              'activation')
  return jax.lax.with_sharding_constraint(x, spec)


@dataclasses.dataclass(frozen=True)
class Partitioner:
  """A mesh plus a rules table: what the trainer and decoders carry around."""
  mesh: Mesh
  rules: Rules = DEFAULT_RULES

  def sharding(self, logical_axes: LogicalAxes,
               shape: Sequence[int] | None = None) -> NamedSharding:
    return logical_sharding(logical_axes, self.mesh, self.rules, shape)

  def state_shardings(self, state: nnx.State) -> nnx.State:
    return state_shardings(state, self.mesh, self.rules)

  def create_sharded(self, factory: Callable[[], nnx.Module]) -> nnx.Module:
    with axis_rules(self.rules):
      return create_sharded(factory, self.mesh, self.rules)

  def activate(self):
    return activate(self.mesh, self.rules)


def placed_network(model, network_or_params, partitioner: Partitioner):
  """`model`'s network (a wrapper with `make_network`) with its parameters
  on `partitioner`'s mesh, from a network, a train state {'params': ...}
  (with or without 'step' / 'opt_state': a parameters-only restore such
  as `RunDir.restore_for_inference` gives just {'params': ...}) or a pure
  params dict."""
  if isinstance(network_or_params, nnx.Module):
    graphdef, state = nnx.split(network_or_params)
  else:
    params = network_or_params
    if isinstance(params, Mapping) and 'params' in params and (
        set(params) <= {'params', 'step', 'opt_state'}):
      params = params['params']
    with partitioner.activate():
      abstract = nnx.eval_shape(lambda: model.make_network(nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, params)
  state = jax.device_put(state, partitioner.state_shardings(state))
  return nnx.merge(graphdef, state)


def as_partitioner(p: Partitioner | Mesh) -> Partitioner:
  """A Partitioner from a Partitioner or a bare Mesh (default rules)."""
  if isinstance(p, Partitioner):
    return p
  if isinstance(p, jax.sharding.Mesh):
    return Partitioner(p)
  raise TypeError(f'partitioner: expected a Partitioner or a Mesh, got '
                  f'{type(p).__name__}')


def describe_shardings(state: nnx.State) -> dict[str, Any]:
  """{'path/to/param': str(PartitionSpec)} for a concrete, placed state."""
  out = {}
  for path, v in nnx.to_flat_state(state):
    out['/'.join(str(p) for p in path)] = str(v.get_value().sharding.spec)
  return out
