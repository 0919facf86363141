"""TPU targets by their Cloud names (`v5e-16`, `v5p-128`, `2xv6e-256`), as
devices this host can compile for without owning them.

libtpu describes any slice from its topology name alone
(`jax.experimental.topologies.get_topology_desc`), so `Target.devices()`
returns real `TpuDevice`s (not addressable) for a mesh. Naming follows the
Cloud accelerator types: v4 and v5p count TensorCores (two per chip, one
megacore device), v5e and v6e count chips; `NxNAME` is N slices joined by
the data-center network (multi-slice). HBM and peak FLOP/s are per chip
(= per device) and come from Google's published specs: libtpu does not
report a memory size for a device it cannot address.
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

  @property
  def num_devices(self) -> int:
    return self.chips_per_slice * self.num_slices

  def devices(self) -> list:
    """The slice's devices (libtpu's description: compile, never run)."""
    # Off a TPU VM libtpu looks for the VM's metadata first; these keep it
    # from waiting on (and warning about) a metadata server.
    os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
    # libtpu takes /tmp/libtpu_lockfile for the process's lifetime: without
    # this a second compiling process (a test worker, a running job's
    # `rosetta compile`) is refused. Nothing here drives a chip.
    os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
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


def parse_target(name: str) -> Target:
  """'v5e-16', 'v5p-128', 'v4-8', 'v6e-256', '2xv5e-256' -> Target."""
  m = _NAME.match(name.strip())
  if not m:
    raise ValueError(
        f'target {name!r}: expected GEN-SIZE or NxGEN-SIZE with GEN one of '
        f'{", ".join(GENERATIONS)} (e.g. v5e-16, v5p-128, 2xv6e-256)')
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
