"""Every gin model file parses, finalizes, builds and runs a forward pass, and
its parameter structure matches the checked-in golden JSON."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rosetta import gin_utils, param_structure, partitioning
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config

GOLDEN = os.path.join(os.path.dirname(__file__), 'golden')
MODEL_FILES = gin_utils.all_gin_files('models')
# Larger sizes run the same forward pass abstractly (jax.eval_shape traces
# every op and checks every shape, without 4-50 GB of random weights).
REAL_FORWARD_MAX_PARAMS = 100_000_000


def golden(name):
  with open(os.path.join(GOLDEN, name)) as f:
    return json.load(f)


def batch(vocab):
  enc = jnp.array([[5, 6, 7, 1, 0, 0], [8, 9, 1, 0, 0, 0]], jnp.int32) % vocab
  dec_in = jnp.array([[0, 4, 5, 0], [0, 6, 0, 0]], jnp.int32)
  tgt = jnp.array([[4, 5, 1, 0], [6, 1, 0, 0]], jnp.int32)
  return enc, dec_in, tgt


def test_model_files_exist():
  names = {os.path.basename(f) for f in MODEL_FILES}
  for size in ('tiny', 't5_1_1_small', 't5_1_1_base', 't5_1_1_large',
               'mt5_small', 'mt5_base', 'mt5_large', 'mt5_xl', 'mt5_xxl'):
    assert f'{size}.gin' in names


@pytest.mark.parametrize('gin_file', MODEL_FILES)
def test_gin_model_builds_and_runs(gin_file):
  gin_utils.parse([gin_file])
  cfg = T5Config()
  expected = golden('params_' + os.path.basename(gin_file)[:-4] + '.json')
  abstract = nnx.eval_shape(lambda: EncoderDecoder(cfg, rngs=nnx.Rngs(0)))
  assert param_structure.describe_params(nnx.state(abstract)) == expected, (
      f'{gin_file}: parameter structure differs from tests/golden; if the '
      'change is intended, run tools/update_golden.py')

  enc, dec_in, tgt = batch(cfg.vocab_size)
  if expected['num_params'] <= REAL_FORWARD_MAX_PARAMS:
    model = EncoderDecoder(cfg, rngs=nnx.Rngs(0))
    logits = nnx.jit(lambda m, *a: m(*a))(model, enc, dec_in, tgt)
    assert logits.shape == (2, 4, cfg.vocab_size)
    assert np.isfinite(np.asarray(logits)).all()
  else:
    graphdef, state = nnx.split(abstract)
    out = jax.eval_shape(
        lambda s: nnx.merge(graphdef, s)(enc, dec_in, tgt), state)
    assert out.shape == (2, 4, cfg.vocab_size) and out.dtype == jnp.float32


def test_gin_typo_names_the_binding():
  with pytest.raises(ValueError, match='emb_dimm'):
    gin_utils.parse(['models/tiny.gin'], ['T5Config.emb_dimm = 3'])
  with pytest.raises(FileNotFoundError, match='no_such_size.gin'):
    gin_utils.parse(['models/no_such_size.gin'])


def test_bad_config_value_names_the_field():
  gin_utils.parse(['models/tiny.gin'], ['T5Config.num_heads = 0'])
  with pytest.raises(ValueError, match='T5Config.num_heads'):
    T5Config()
  gin_utils.parse(['models/tiny.gin'], ["T5Config.dtype = 'float17'"])
  with pytest.raises(ValueError, match='T5Config.dtype'):
    T5Config()


@pytest.mark.parametrize('mesh_name', ['data8', 'data4_model2',
                                       'data2_model4', 'data2_fsdp2_model2'])
def test_tiny_shardings_match_golden(mesh_name, num_devices):
  from tools.update_golden import MESHES
  gin_utils.parse(['models/tiny.gin'])
  cfg = T5Config()
  mesh = partitioning.make_mesh(**MESHES[mesh_name])
  model = partitioning.create_sharded(
      lambda: EncoderDecoder(cfg, rngs=nnx.Rngs(0)), mesh)
  state = nnx.state(model)
  want = golden('shardings_tiny.json')[mesh_name]
  assert param_structure.describe_mesh_shardings(state, mesh) == want
  # ...and the created arrays really carry those shardings.
  for path, v in nnx.to_flat_state(state):
    name = '/'.join(map(str, path))
    array = v.get_value()
    spec = eval(want[name], {'P': jax.sharding.PartitionSpec})  # noqa: S307
    assert array.sharding.is_equivalent_to(
        jax.sharding.NamedSharding(mesh, spec), array.ndim), name
