"""Meshes, the rules table and sharded creation, on 8 simulated CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rosetta import partitioning
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config

TINY = T5Config(vocab_size=128, emb_dim=32, num_heads=4, head_dim=8,
                mlp_dim=64, num_encoder_layers=1, num_decoder_layers=1,
                dropout_rate=0.0)


def test_make_mesh_shapes(num_devices):
  mesh = partitioning.make_mesh(data=4, model=2)
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 1, 'model': 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  assert dict(partitioning.make_mesh(model=2).shape)['data'] == 4
  assert dict(partitioning.make_mesh(data=2, fsdp=-1).shape)['fsdp'] == 4


@pytest.mark.parametrize('kw,match', [
    (dict(data=3), 'data\\*fsdp\\*model = 3'),
    (dict(data=-1, model=3), 'cannot be split'),
    (dict(data=-1, fsdp=-1), 'at most one axis'),
    (dict(data=0), 'positive'),
])
def test_make_mesh_errors(kw, match, num_devices):
  with pytest.raises(ValueError, match=match):
    partitioning.make_mesh(**kw)


def test_logical_to_mesh_axes(mesh_data4_model2):
  m = mesh_data4_model2
  assert partitioning.logical_to_mesh_axes(('embed', 'mlp'), mesh=m) == P(
      'fsdp', 'model')
  assert partitioning.logical_to_mesh_axes(
      ('activation_batch', 'activation_length', 'activation_embed'),
      mesh=m) == P(('data', 'fsdp'), None, None)
  assert partitioning.logical_to_mesh_axes((None, 'kv')) == P(None, None)
  # A user's mesh without 'fsdp': the missing axis is dropped.
  user = jax.make_mesh((4, 2), ('data', 'model'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  assert partitioning.logical_to_mesh_axes(
      ('activation_batch', 'embed'), mesh=user) == P('data', None)


def test_rules_errors_are_loud(mesh_data2_model4):
  with pytest.raises(ValueError, match="'nonsense' has no rule"):
    partitioning.logical_to_mesh_axes(('nonsense',))
  with pytest.raises(ValueError, match="both map to mesh axis 'model'"):
    partitioning.logical_to_mesh_axes(('mlp', 'heads'))
  with pytest.raises(ValueError, match='not divisible'):
    partitioning.logical_to_mesh_axes(('heads',), mesh=mesh_data2_model4,
                                      shape=(6,), name='query')


def test_extend_rules():
  rules = partitioning.extend_rules(partitioning.DEFAULT_RULES,
                                    [('corpus', 'data')])
  assert dict(rules)['corpus'] == 'data'
  assert partitioning.DEFAULT_RULES == rules[:-1]
  with pytest.raises(ValueError, match="'vocab' is already"):
    partitioning.extend_rules(partitioning.DEFAULT_RULES, [('vocab', None)])
  # Extended names resolve through an active rules context.
  with partitioning.axis_rules(rules):
    assert partitioning.logical_to_mesh_axes(('corpus',)) == P('data')


def test_create_sharded_places_every_param(any_mesh):
  model = partitioning.create_sharded(
      lambda: EncoderDecoder(TINY, rngs=nnx.Rngs(0)), any_mesh)
  reference = EncoderDecoder(TINY, rngs=nnx.Rngs(0))
  ref = dict(nnx.to_flat_state(nnx.state(reference)))
  for path, v in nnx.to_flat_state(nnx.state(model)):
    array = v.get_value()
    axes = v.get_metadata()['logical_axes']
    want = partitioning.logical_sharding(axes, any_mesh)
    assert array.sharding.is_equivalent_to(want, array.ndim), path
    # Same values as an unsharded init with the same seed (up to jit's
    # fusion of the scale multiply).
    np.testing.assert_allclose(np.asarray(array),
                               np.asarray(ref[path].get_value()), atol=1e-6)
  kernel = model.encoder.layers[0].mlp.wi_0[...]
  model_size = dict(any_mesh.shape)['model']
  fsdp_size = dict(any_mesh.shape)['fsdp']
  assert {s.data.shape for s in kernel.addressable_shards} == {
      (32 // fsdp_size, 64 // model_size)}


def test_constrain_really_shards_activations(mesh_data4_model2):
  mesh = mesh_data4_model2
  def f(x):
    y = x * 2.0
    return partitioning.constrain(y, ('activation_batch', 'activation_mlp'))
  x = jnp.ones((8, 6))
  with partitioning.activate(mesh):
    y = jax.jit(f)(x)
    hlo = jax.jit(f).lower(x).as_text()
  assert y.sharding.is_equivalent_to(
      NamedSharding(mesh, P('data', 'model')), 2)
  assert 'sharding' in hlo
  # No mesh at all: nothing to constrain, values unchanged.
  np.testing.assert_array_equal(f(x), x * 2.0)
  # Under a mesh, a bad annotation raises instead of being ignored.
  with partitioning.activate(mesh), pytest.raises(ValueError,
                                                  match='not divisible'):
    jax.jit(f)(jnp.ones((6, 6)))


def test_shard_state_reshards_onto_other_mesh(mesh_data4_model2,
                                               mesh_data2_model4):
  model = partitioning.create_sharded(
      lambda: EncoderDecoder(TINY, rngs=nnx.Rngs(1)), mesh_data4_model2)
  state = partitioning.shard_state(nnx.state(model), mesh_data2_model4)
  q = state['encoder']['layers'][0]['attention']['query'].get_value()
  assert {s.data.shape for s in q.addressable_shards} == {(32, 1, 8)}
  np.testing.assert_array_equal(
      np.asarray(q),
      np.asarray(model.encoder.layers[0].attention.query[...]))
