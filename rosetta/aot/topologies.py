"""TPU targets by their Cloud names (`v5e-16`, `v5p-128`, `2xv6e-256`) and
NVIDIA GPU hosts (`h100-8`, `a100-16`), as devices this host can compile
for without owning them.

libtpu describes any slice from its topology name alone
(`jax.experimental.topologies.get_topology_desc`), so `Target.devices()`
returns real `TpuDevice`s (not addressable) for a mesh. Naming follows the
Cloud accelerator types: v4 and v5p count TensorCores (two per chip, one
megacore device), v5e and v6e count chips; `NxNAME` is N slices joined by
the data-center network (multi-slice). HBM and peak FLOP/s are per chip
(= per device) and come from Google's published specs: libtpu does not
report a memory size for a device it cannot address.

GPUs: JAX's CUDA PJRT plugin (`jax-cuda12-pjrt`, the `gpu_compile` extra;
no CUDA driver or GPU needed) builds a topology from an XLA GPU target
config, the device description a real GPU would report (`GPU_CONFIGS`:
SM count, shared memory, L2, clock, memory size, compute capability), so
XLA's GPU compiler lays out and schedules the program for that GPU. A name
counts GPUs: up to 8 on one host, more in hosts of 8. The GPU compiler
gives memory but no cost analysis.
"""

from __future__ import annotations

import dataclasses
import os
import re

GiB = 1024 ** 3

# generation: (topology prefix, chip config, counts cores?, HBM bytes per
# chip, dense bfloat16 peak FLOP/s per chip). Sources:
# cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} (system architecture pages).
GENERATIONS = {
    'v4': ('v4', 'megacore', True, 32 * GiB, 275e12),
    'v5e': ('v5e', 'default', False, 16 * GiB, 197e12),
    'v5p': ('v5', 'megacore', True, 95 * GiB, 459e12),
    'v6e': ('v6e', 'default', False, 32 * GiB, 918e12),
}

# Chips -> the slice's chip grid (Cloud's standard shapes; MaxText's
# accelerator_to_spec_map uses the same).
_GRID_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8',
            128: '8x16', 256: '16x16'}
_GRID_3D = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4',
            128: '4x4x8', 256: '4x8x8', 512: '8x8x8', 1024: '8x8x16',
            2048: '8x16x16', 4096: '16x16x16'}

_NAME = re.compile(r'^(?:(\d+)x)?(v4|v5e|v5p|v6e)-(\d+)$')
_GPU_NAME = re.compile(r'^(a100|h100|h200)-(\d+)$')


def _gpu_config(name, sms, major, minor, smem_per_sm, smem_optin, l2, ghz,
                bandwidth, memory, fp32_per_sm):
  # An XLA GpuTargetConfig (text proto): what the GPU's driver would report.
  return f"""
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {smem_per_sm}
  threads_per_core_limit: 2048
  core_count: {sms}
  fpus_per_core: {fp32_per_sm}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: {l2}
  clock_rate_ghz: {ghz}
  device_memory_size: {memory}
  shared_memory_per_block_optin: {smem_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{name}"
"""


# gpu: (target config, memory bytes, dense bfloat16 peak FLOP/s). Sources:
# NVIDIA's A100 / H100 / H200 datasheets (SXM parts) and the CUDA
# programming guide's per-compute-capability limits; memory as CUDA
# reports it (80 GB parts: 79.1-79.3 GiB; H200: 140.4 GiB).
GPU_CONFIGS = {
    'a100': (_gpu_config('NVIDIA A100-SXM4-80GB', 108, 8, 0, 167936, 166912,
                         41943040, 1.41, 2039000000000, 85198045184, 64),
             85198045184, 312e12),
    'h100': (_gpu_config('NVIDIA H100 80GB HBM3', 132, 9, 0, 233472, 232448,
                         52428800, 1.98, 3352320000000, 84929347584, 128),
             84929347584, 989e12),
    'h200': (_gpu_config('NVIDIA H200', 132, 9, 0, 233472, 232448, 52428800,
                         1.98, 4800000000000, 150754820096, 128),
             150754820096, 989e12),
}
GPUS_PER_HOST = 8
FIBER_STACK_FLAG = '--fibers_default_thread_stack_size=67108864'


@dataclasses.dataclass(frozen=True)
class Target:
  """One TPU slice type (or several slices of it)."""
  name: str                # as given, e.g. 'v5p-128' or '2xv5e-256'
  generation: str          # 'v4', 'v5e', 'v5p', 'v6e'
  topology: str            # libtpu's name, e.g. 'v5:4x4x4'
  chip_config: str         # 'megacore' (v4, v5p) or 'default'
  chips_per_slice: int
  num_slices: int
  hbm_bytes: int           # per device (= per chip)
  peak_flops: float        # per device, dense bfloat16
  platform: str = 'tpu'    # or 'cuda'

  @property
  def num_devices(self) -> int:
    return self.chips_per_slice * self.num_slices

  def devices(self) -> list:
    """The slice's devices (libtpu's description: compile, never run)."""
    if self.platform == 'cuda':
      return self._gpu_devices()
    # Off a TPU VM libtpu looks for the VM's metadata first; these keep it
    # from waiting on (and warning about) a metadata server.
    os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
    # libtpu takes /tmp/libtpu_lockfile for the process's lifetime: without
    # this a second compiling process (a test worker, a running job's
    # `rosetta compile`) is refused. Nothing here drives a chip.
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    # libtpu's codegen recurses deeply estimating a large fused matmul (mT5
    # XL's 250k-vocab logits over FSDP overflowed the default fiber stack:
    # SIGSEGV in FusedSpatialMajorConvolution::MakeConvWindows); 64 MiB
    # fibers compile it. Read when libtpu loads, i.e. the first topology.
    args = os.environ.get('LIBTPU_INIT_ARGS', '')
    if 'fibers_default_thread_stack_size' not in args:
      os.environ['LIBTPU_INIT_ARGS'] = (
          f'{args} {FIBER_STACK_FLAG}'.strip())
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    try:
      desc = topologies.get_topology_desc(
          topology_name=self.topology, platform='tpu',
          chip_config_name=self.chip_config, chips_per_host_bounds=(2, 2, 1),
          num_slices=self.num_slices)
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(
          f'{self.name}: libtpu cannot describe topology {self.topology!r} '
          f'({e}); is libtpu installed (pip install "jax[tpu]")?') from e
    devices = list(desc.devices)
    if len(devices) != self.num_devices:
      raise RuntimeError(f'{self.name}: libtpu gave {len(devices)} devices '
                         f'for {self.topology}, expected {self.num_devices}')
    return devices


  def _gpu_devices(self) -> list:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    config = GPU_CONFIGS[self.generation][0]
    try:
      desc = topologies.get_topology_desc(
          platform='cuda', target_config=config, topology=self.topology)
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(
          f'{self.name}: JAX cannot describe {self.generation.upper()} GPUs '
          f'({e}); is the CUDA PJRT plugin installed (pip install '
          "'.[gpu_compile]')?") from e
    devices = list(desc.devices)
    if len(devices) != self.num_devices:
      raise RuntimeError(f'{self.name}: the plugin gave {len(devices)} '
                         f'devices for {self.topology}, expected '
                         f'{self.num_devices}')
    return devices


def _parse_gpu(name: str, m: re.Match) -> Target:
  generation, count = m.group(1), int(m.group(2))
  if count < 1 or (count > GPUS_PER_HOST and count % GPUS_PER_HOST):
    raise ValueError(f'target {name!r}: up to {GPUS_PER_HOST} GPUs on one '
                     f'host, or whole hosts of {GPUS_PER_HOST} (e.g. '
                     f'{generation}-16)')
  hosts = max(1, count // GPUS_PER_HOST)
  _, memory, peak = GPU_CONFIGS[generation]
  return Target(name=name, generation=generation,
                topology=f'1x{hosts}x{count // hosts}', chip_config='',
                chips_per_slice=count, num_slices=1, hbm_bytes=memory,
                peak_flops=peak, platform='cuda')


def parse_target(name: str) -> Target:
  """'v5e-16', 'v5p-128', 'v4-8', 'v6e-256', '2xv5e-256', 'h100-8' ->
  Target."""
  gpu = _GPU_NAME.match(name.strip())
  if gpu:
    return _parse_gpu(name, gpu)
  m = _NAME.match(name.strip())
  if not m:
    raise ValueError(
        f'target {name!r}: expected GEN-SIZE or NxGEN-SIZE with GEN one of '
        f'{", ".join(GENERATIONS)} (e.g. v5e-16, v5p-128, 2xv6e-256), or '
        f'a GPU host: {", ".join(GPU_CONFIGS)}-N (e.g. h100-8)')
  slices, generation, size = int(m.group(1) or 1), m.group(2), int(m.group(3))
  prefix, chip_config, counts_cores, hbm, peak = GENERATIONS[generation]
  if counts_cores:
    if size % 2:
      raise ValueError(f'target {name!r}: {generation} sizes count '
                       'TensorCores (two per chip): use an even size, e.g. '
                       f'{generation}-8')
    chips, grids = size // 2, _GRID_3D
  else:
    chips, grids = size, _GRID_2D
  if chips not in grids:
    sizes = sorted(c * 2 if counts_cores else c for c in grids)
    raise ValueError(f'target {name!r}: no standard {generation} slice of '
                     f'that size; sizes: {", ".join(map(str, sizes))}')
  if slices < 1:
    raise ValueError(f'target {name!r}: the slice count must be >= 1')
  return Target(name=name, generation=generation,
                topology=f'{prefix}:{grids[chips]}', chip_config=chip_config,
                chips_per_slice=chips, num_slices=slices, hbm_bytes=hbm,
                peak_flops=peak)
