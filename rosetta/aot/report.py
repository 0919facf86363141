"""What a compiled step needs per device, against the chip, and what to
change when it does not fit.

Memory comes from XLA's `memory_analysis()` of the compiled program (one
device's): arguments (this device's shards of the state and the batch),
outputs not aliased to a donated argument, and temporaries (activations
kept for the backward pass, gradients, collective buffers, scratch). The
peak a device needs is arguments + outputs - aliased + temporaries +
generated code, as MaxText's train_compile reports it. Cost comes from
`cost_analysis()`: FLOPs per device and `optimal_seconds`, the compiler's
roofline estimate of the step (the slowest of its compute, memory and
interconnect bounds): a cost-model bound, not a measurement.
"""

from __future__ import annotations

import dataclasses
import re
GiB = 1024 ** 3
FIT_HEADROOM = 0.10   # a step "fits comfortably" with >= 10% HBM free


@dataclasses.dataclass
class StepReport:
  """One compiled step on one target, per device unless named otherwise."""
  step: str                  # 'train', 'decode'
  target: str
  num_devices: int
  mesh: dict                 # {'data': 16, 'fsdp': 1, 'model': 1}
  hbm_bytes: int
  peak_flops: float          # per device
  params_bytes: int
  opt_state_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  flops: float               # compiled, per device
  optimal_seconds: float     # the compiler's estimate (a bound)
  model_flops: float | None = None   # 6·N·tokens, whole step (train only)
  # Set when the TPU compiler itself refused the program for lack of HBM
  # (it then reports no cost): its message.
  compiler_refusal: str | None = None
  # XLA's cost analysis counts a loop body once: with scanned layers
  # (`layer_stack`) `flops` and `optimal_seconds` cover one layer per
  # stack, so no MFU bound is derived from them.
  scanned_layers: bool = False
  # The step's matmul FLOPs as JAX traced them (all devices; remat
  # recomputation included, scan bodies times their length).
  traced_flops: float | None = None

  @classmethod
  def from_compiled(cls, compiled, *, step, target, mesh, state_bytes=None,
                    model_flops=None) -> 'StepReport':
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    cost = cost or {}   # XLA's GPU compiler reports none
    state_bytes = state_bytes or {}
    return cls(
        step=step, target=target.name, num_devices=target.num_devices,
        mesh=dict(mesh.shape), hbm_bytes=target.hbm_bytes,
        peak_flops=target.peak_flops,
        params_bytes=state_bytes.get('params', 0),
        opt_state_bytes=state_bytes.get('opt_state', 0),
        argument_bytes=mem.argument_size_in_bytes,
        output_bytes=mem.output_size_in_bytes,
        alias_bytes=mem.alias_size_in_bytes,
        temp_bytes=mem.temp_size_in_bytes,
        code_bytes=mem.generated_code_size_in_bytes,
        flops=float(cost.get('flops', 0.0)),
        optimal_seconds=float(cost.get('optimal_seconds', 0.0)),
        model_flops=model_flops)

  # ----------------------------------------------------------- derived ---
  @classmethod
  def from_refusal(cls, message: str, *, step, target, mesh,
                   state_bytes=None, model_flops=None) -> 'StepReport':
    """From the TPU compiler's "Ran out of memory on HBM" error: the
    temporaries it needed, on top of the state's own bytes."""
    state_bytes = state_bytes or {}
    state = state_bytes.get('params', 0) + state_bytes.get('opt_state', 0)
    return cls(
        step=step, target=target.name, num_devices=target.num_devices,
        mesh=dict(mesh.shape), hbm_bytes=target.hbm_bytes,
        peak_flops=target.peak_flops,
        params_bytes=state_bytes.get('params', 0),
        opt_state_bytes=state_bytes.get('opt_state', 0),
        argument_bytes=state, output_bytes=0, alias_bytes=0,
        temp_bytes=refused_temporaries(message), code_bytes=0, flops=0.0,
        optimal_seconds=0.0, model_flops=model_flops,
        compiler_refusal=message.strip().splitlines()[0])

  @property
  def total_bytes(self) -> int:
    return (self.argument_bytes + self.output_bytes - self.alias_bytes +
            self.temp_bytes + self.code_bytes)

  @property
  def headroom(self) -> float:
    """Free fraction of HBM (negative: over by that fraction)."""
    return 1.0 - self.total_bytes / self.hbm_bytes

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.hbm_bytes

  @property
  def flops_ratio(self) -> float | None:
    """Compiled FLOPs over 6·N·tokens: what remat, attention and padding
    add (or the embedding lookups, which do no matmul, take away)."""
    if not self.model_flops or not self.flops:
      return None
    return self.flops * self.num_devices / self.model_flops

  @property
  def traced_ratio(self) -> float | None:
    """Traced matmul FLOPs over 6·N·tokens: what remat recomputation and
    attention add, free of the compiler's loop counting."""
    if not self.model_flops or not self.traced_flops:
      return None
    return self.traced_flops / self.model_flops

  @property
  def mfu_bound(self) -> float | None:
    """The MFU the compiler's estimated step time implies (6·N·tokens over
    peak x devices x estimated seconds): an upper bound from a cost model,
    not a measured MFU."""
    if (not self.model_flops or self.optimal_seconds <= 0
        or self.scanned_layers):
      return None
    return self.model_flops / (self.peak_flops * self.num_devices *
                               self.optimal_seconds)

  def as_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out.update(total_bytes=self.total_bytes, headroom=self.headroom,
               fits=self.fits, flops_ratio=self.flops_ratio,
               traced_ratio=self.traced_ratio, mfu_bound=self.mfu_bound)
    return out


_UNITS = {'': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40}
_REFUSAL = re.compile(r'memory required for HLO temporaries \(([\d.]+)([KMGT]?)\)')


def is_refusal(error: Exception) -> bool:
  """The TPU compiler's "does not fit" (it refuses such a program)."""
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text and 'memory' in text


def refused_temporaries(message: str) -> int:
  """Bytes of temporaries named in the compiler's refusal (0 if none)."""
  m = _REFUSAL.search(message)
  return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0


def gib(n: float) -> str:
  """Bytes as GiB (MiB under one GiB)."""
  if abs(n) < GiB:
    return f'{n / 2 ** 20:.1f} MiB'
  return f'{n / GiB:.2f} GiB'


def _mesh_text(mesh: dict) -> str:
  return ' '.join(f'{k}={v}' for k, v in mesh.items())


def advice(r: StepReport, *, remat: str | None, num_microbatches: int,
           batch_size: int) -> list[str]:
  """The knobs that would bring a step that does not fit (or fits with
  under 10% headroom) under 90% of HBM, each with a rough estimate."""
  budget = (1 - FIT_HEADROOM) * r.hbm_bytes
  over = r.total_bytes - budget
  if over <= 0:
    return []
  tips = []
  state = r.params_bytes + r.opt_state_bytes
  fsdp, model = r.mesh.get('fsdp', 1), r.mesh.get('model', 1)
  # Parameters and optimizer shard over fsdp (and partly over model).
  k = fsdp
  while k < r.num_devices // model and state * (1 - fsdp / (2 * k)) < over:
    k *= 2
  if state > 0.2 * r.total_bytes and (k * 2 <= r.num_devices // model or
                                      k > fsdp):
    k = max(k, fsdp * 2)
    saved = state * (1 - fsdp / k)
    tips.append(f'shard parameters and optimizer state wider: '
                f'--gin.partitioning.make_mesh.fsdp={k} (now {fsdp}) saves '
                f'about {gib(saved)} of the {gib(state)} they take')
  if remat in ('none', 'dots_saveable') and r.temp_bytes > over / 2:
    tips.append(f"rematerialise each layer: --gin.encoder_decoder.T5Config."
                f"remat=\"'full'\" (now {remat!r}): activations are most of "
                f'the {gib(r.temp_bytes)} of temporaries; ~1.33x the FLOPs')
  m = num_microbatches * 2
  while batch_size % m == 0 and r.temp_bytes * (1 - num_microbatches / m) < over \
      and m < batch_size:
    m *= 2
  if batch_size % m == 0:
    tips.append(f'accumulate gradients: --gin.train.num_microbatches={m} '
                f'(now {num_microbatches}) divides the per-step activations '
                f'by about {m // num_microbatches}')
  tips.append(f'split the matmuls over a model axis: '
              f'--gin.partitioning.make_mesh.model={model * 2} (now {model}) '
              'shards parameters, optimizer state and the MLP / attention '
              'activations')
  tips.append('or a target with more devices or more HBM per chip')
  return tips


def format_report(r: StepReport, tips: list[str] = ()) -> str:
  per_chip = gib(r.hbm_bytes)
  lines = [f'{r.step} step on {r.target}: {r.num_devices} devices, mesh '
           f'{_mesh_text(r.mesh)}, {per_chip} HBM per device',
           '  per device:']
  batch = r.argument_bytes - r.params_bytes - r.opt_state_bytes
  rows = []
  if r.opt_state_bytes:
    rows += [('parameters', r.params_bytes),
             ('optimizer state', r.opt_state_bytes),
             ('batch, tile padding', batch)]
  elif r.params_bytes:   # decoding: no optimizer
    rows += [('parameters', r.params_bytes), ('inputs, tile padding', batch)]
  else:
    rows += [('arguments', r.argument_bytes)]
  rows += [('outputs (not donated)', r.output_bytes - r.alias_bytes),
           ('temporaries', r.temp_bytes), ('program', r.code_bytes)]
  for name, n in rows:
    lines.append(f'    {name:<24}{gib(n):>12}')
  verdict = (f'fits, {r.headroom:.0%} of HBM free' if r.fits else
             f'does not fit: {gib(r.total_bytes - r.hbm_bytes)} over '
             f'({r.total_bytes / r.hbm_bytes:.2f}x the chip)')
  lines.append(f'    {"total":<24}{gib(r.total_bytes):>12} of {per_chip}: '
               f'{verdict}')
  if r.compiler_refusal:
    lines.append(f'  the TPU compiler refused it: {r.compiler_refusal}')
  elif not r.flops:
    lines.append('  compiled FLOPs per step: none (this compiler gives no '
                 'cost analysis: XLA:GPU)')
  else:
    lines.append(f'  compiled FLOPs per step: {r.flops * r.num_devices:.3e} '
                 f'({r.flops:.3e} per device)' +
                 ('; XLA counts the scanned layer loop once' if
                  r.scanned_layers else ''))
  if r.flops_ratio is not None and not r.scanned_layers:
    lines.append(f'    = {r.flops_ratio:.2f}x 6·N·tokens ({r.model_flops:.3e})')
  if r.traced_ratio is not None:
    lines.append(f'  matmul FLOPs as traced: {r.traced_flops:.3e} = '
                 f'{r.traced_ratio:.2f}x 6·N·tokens (remat recomputation '
                 'included)')
  if r.scanned_layers:
    pass   # one loop iteration's estimate: not the step's
  elif r.optimal_seconds > 0:
    lines.append(f"  compiler's estimated step time: {r.optimal_seconds:.4g} "
                 's (XLA cost model: a bound, not a measurement)')
  elif not r.compiler_refusal and r.flops:   # v5e programs: not an estimate
    lines.append("  compiler's estimated step time: none (its cost model "
                 f'returned {r.optimal_seconds:.4g} s)')
  if r.mfu_bound is not None:
    lines.append(f'  implied MFU bound: {r.mfu_bound:.1%} of '
                 f'{r.peak_flops / 1e12:.0f} TFLOP/s per chip')
  if tips:
    lines.append('  to fit with 10% headroom:' if r.fits else
                 '  what would change it:')
    lines += [f'    - {t}' for t in tips]
  return '\n'.join(lines)

