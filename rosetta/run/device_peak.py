"""The peak FLOP/s that MFU is measured against: a table for accelerators,
a measurement for CPUs.

TPU and GPU chips have published dense peaks (per chip, bfloat16 inputs);
a CPU's depends on the model, the cores a job gets and the instruction set,
so it is measured once per process: the best of a few jitted matmuls in
the run's compute dtype (float32, or bfloat16 inputs with float32
accumulation), over every local device. A figure from a table that does
not match the hardware would print MFU above 100%; a measured one cannot,
short of the model beating a plain matmul.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bfloat16 peak FLOP/s per chip, by `device.device_kind` prefix
# (published figures; float32 matmuls on TPU run through bfloat16 passes).
ACCELERATOR_PEAKS = (
    ('TPU v6', 918e12),        # Trillium (v6e)
    ('TPU v5p', 459e12),
    ('TPU v5 lite', 197e12),   # v5e
    ('TPU v5e', 197e12),
    ('TPU v5', 459e12),        # v5p reports its device_kind as 'TPU v5'
    ('TPU v4', 275e12),
    ('TPU v3', 123e12),
    ('NVIDIA H200', 989e12),
    ('NVIDIA H100', 989e12),
    ('NVIDIA A100', 312e12),
    ('NVIDIA L4', 121e12),
)


def accelerator_peak(device_kind: str) -> float | None:
  """Peak FLOP/s of one chip from the table, or None if it is unknown."""
  for prefix, peak in ACCELERATOR_PEAKS:
    if device_kind.startswith(prefix):
      return peak
  return None


@functools.lru_cache(maxsize=None)
def measured_cpu_peak(dtype: str = 'float32', size: int = 2048,
                      repeats: int = 4) -> float:
  """FLOP/s of this process's best square matmul on the default CPU device
  (XLA:CPU uses every core it is given for one matmul)."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((size, size)), dtype=dtype)
  b = jnp.asarray(rng.standard_normal((size, size)), dtype=dtype)
  matmul = jax.jit(lambda x, y: jnp.matmul(
      x, y, preferred_element_type=jnp.float32))
  matmul(a, b).block_until_ready()          # compile
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * size ** 3 / best


def peak_flops(dtype: str = 'float32') -> float | None:
  """Peak FLOP/s of all devices of the run (every process's), or None when
  an accelerator is not in the table."""
  devices = jax.devices()
  kind = devices[0].platform
  if kind == 'cpu':
    # Simulated CPU devices share the host's cores: the host is the unit.
    return measured_cpu_peak(jnp.dtype(dtype).name) * jax.process_count()
  per_chip = accelerator_peak(devices[0].device_kind)
  return None if per_chip is None else per_chip * len(devices)
