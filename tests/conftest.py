"""Test harness: JAX sees 8 CPU devices; fixtures for the standard meshes.

The device count must be fixed before JAX initialises its backends, so it is
set here, at import time of the first conftest, for every test process.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)

from rosetta import partitioning  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



@pytest.fixture(scope='session')
def num_devices():
  n = len(jax.devices())
  assert n == 8, f'tests expect 8 simulated CPU devices, JAX sees {n}'
  return n


@pytest.fixture(scope='session')
def mesh_data8(num_devices):
  return partitioning.make_mesh(data=8)


@pytest.fixture(scope='session')
def mesh_data4_model2(num_devices):
  return partitioning.make_mesh(data=4, model=2)


@pytest.fixture(scope='session')
def mesh_data2_model4(num_devices):
  return partitioning.make_mesh(data=2, model=4)


@pytest.fixture(scope='session')
def mesh_data2_fsdp2_model2(num_devices):
  return partitioning.make_mesh(data=2, fsdp=2, model=2)


@pytest.fixture(params=['data8', 'data4_model2', 'data2_model4',
                        'data2_fsdp2_model2'])
def any_mesh(request, num_devices):
  shapes = {'data8': dict(data=8), 'data4_model2': dict(data=4, model=2),
            'data2_model4': dict(data=2, model=4),
            'data2_fsdp2_model2': dict(data=2, fsdp=2, model=2)}
  return partitioning.make_mesh(**shapes[request.param])
