"""Rewrites tests/golden/*.json: parameter structure per gin model size and
per-mesh shardings of the tiny model. Run after an intended change:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      .venv/bin/python tools/update_golden.py
"""

import json
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from rosetta import gin_utils, param_structure, partitioning  # noqa: E402
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'tests', 'golden')
MESHES = {'data8': dict(data=8), 'data4_model2': dict(data=4, model=2),
          'data2_model4': dict(data=2, model=4),
          'data2_fsdp2_model2': dict(data=2, fsdp=2, model=2)}


def abstract_state(gin_file):
  gin_utils.parse([gin_file])
  cfg = T5Config()
  model = nnx.eval_shape(lambda: EncoderDecoder(cfg, rngs=nnx.Rngs(0)))
  return nnx.state(model)


def golden_name(gin_file):
  return 'params_' + os.path.splitext(os.path.basename(gin_file))[0] + '.json'


def write(name, obj):
  with open(os.path.join(GOLDEN, name), 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.write('\n')


def main():
  os.makedirs(GOLDEN, exist_ok=True)
  for gin_file in gin_utils.all_gin_files('models'):
    write(golden_name(gin_file),
          param_structure.describe_params(abstract_state(gin_file)))
  state = abstract_state('models/tiny.gin')
  write('shardings_tiny.json', {
      name: param_structure.describe_mesh_shardings(
          state, partitioning.make_mesh(**shape))
      for name, shape in MESHES.items()})
  print(f'wrote golden files to {GOLDEN} ({len(jax.devices())} devices)')


if __name__ == '__main__':
  main()
