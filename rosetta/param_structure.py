"""Describe a model's parameters as plain JSON: shapes, dtypes, logical axes,
and the PartitionSpec each gets on a mesh.

Checked-in copies of these descriptions (tests/golden/) make any change that
would break old checkpoints or change sharding fail a test (flaxformer's
`check_params` and MaxText's sharding dumps); `tools/update_golden.py`
rewrites them when a change is intended.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rosetta import partitioning


def _name(path) -> str:
  return '/'.join(str(p) for p in path)


def describe_params(state: nnx.State) -> dict[str, Any]:
  params = {}
  total = 0
  for path, v in nnx.to_flat_state(state):
    value = v.get_value()
    shape = [int(d) for d in np.shape(value)]
    total += int(np.prod(shape))
    params[_name(path)] = {
        'shape': shape,
        'dtype': str(value.dtype),
        'logical_axes': list(v.get_metadata()['logical_axes']),
    }
  return {'num_params': total, 'params': params}


def describe_mesh_shardings(state: nnx.State, mesh: Mesh,
                            rules: partitioning.Rules | None = None
                            ) -> dict[str, str]:
  shardings = partitioning.state_shardings(state, mesh, rules)
  return {_name(path): str(s.spec)
          for path, s in nnx.to_flat_state(shardings)}
