"""Observability of a run: TensorBoard event files and a console progress
bar (steps/s, tokens/s, loss, ETA), written by process 0 only.

Scalars logged per train report: loss, z_loss, accuracy, learning_rate,
grad_norm, param_norm, tokens_per_s, steps_per_s and, when the peak FLOP/s
of the hardware is known (`rosetta.run.device_peak`), MFU = achieved model
FLOP/s / peak. The ETA is the sooner of the last step and the end of the
time budget, when one is set.
"""

from __future__ import annotations

import os
import sys
import time

import gin
import jax
from tqdm import tqdm


def _summary_writer(log_dir: str):
  import tensorflow as tf  # seqio already imports it; keep it off accelerators
  tf.config.set_visible_devices([], 'GPU')
  return tf.summary.create_file_writer(log_dir)


@gin.configurable
class RunLogger:
  """`peak_flops`: the hardware's peak FLOP/s over all devices, for MFU
  (`rosetta.run.device_peak.peak_flops`). `deadline`: the `time.time()` at
  which the run's time budget ends (ETA = the sooner of that and the last
  step)."""

  def __init__(self, log_dir: str, total_steps: int, start_step: int = 0, *,
               peak_flops: float | None = None, flops_per_token: float = 0.0,
               progress_bar: bool = True, deadline: float | None = None):
    self.main = jax.process_index() == 0
    self.total_steps = total_steps
    self.peak_flops = peak_flops
    self.deadline = deadline
    self.flops_per_token = flops_per_token
    self._last = (time.time(), start_step, 0.0)
    self.writers = {}
    self.log_dir = log_dir
    self.bar = None
    if self.main and progress_bar:
      self.bar = tqdm(total=total_steps, initial=start_step, unit='step',
                      dynamic_ncols=True, file=sys.stderr,
                      disable=None)  # disabled when stderr is not a TTY

  def _writer(self, name):
    if name not in self.writers:
      self.writers[name] = _summary_writer(os.path.join(self.log_dir, name))
    return self.writers[name]

  def write_scalars(self, split: str, step: int, scalars: dict[str, float]):
    if not self.main:
      return
    import tensorflow as tf
    with self._writer(split).as_default():
      for key, value in scalars.items():
        tf.summary.scalar(key, float(value), step=step)
    self._writer(split).flush()

  def train_report(self, step: int, metrics: dict[str, float],
                   tokens: float) -> dict[str, float]:
    """Call every few steps with host-side metric values; returns what it
    logged (with throughput and MFU added)."""
    now = time.time()
    t0, s0, _ = self._last
    elapsed = max(now - t0, 1e-9)
    out = dict(metrics)
    out['steps_per_s'] = (step - s0) / elapsed
    out['tokens_per_s'] = tokens / elapsed
    if self.peak_flops and self.flops_per_token:
      out['mfu'] = out['tokens_per_s'] * self.flops_per_token / self.peak_flops
    self._last = (now, step, 0.0)
    self.write_scalars('train', step, out)
    if self.bar is not None:
      self.bar.update(step - self.bar.n)
      self.bar.set_postfix(loss=f"{out['loss']:.3f}",
                           tok_s=f"{out['tokens_per_s']:,.0f}")
    if self.main and (self.bar is None or self.bar.disable):
      remaining = (self.total_steps - step) / max(out['steps_per_s'], 1e-9)
      if self.deadline is not None:
        remaining = max(0.0, min(remaining, self.deadline - now))
      print(f'step {step}/{self.total_steps}  loss {out["loss"]:.4f}  '
            f'{out["steps_per_s"]:.2f} steps/s  '
            f'{out["tokens_per_s"]:,.0f} tokens/s  '
            + (f'MFU {out["mfu"]:.1%}  ' if 'mfu' in out else '')
            + f'ETA {remaining / 60:.1f} min', flush=True)
    return out

  def reset_timer(self, step: int):
    """Restart the throughput window (after an eval or a checkpoint wait,
    which are not training time)."""
    self._last = (time.time(), step, 0.0)

  def exclude(self, seconds: float):
    """Leave `seconds` of other work inside the throughput window (an
    evaluation before the next report) out of it."""
    t0, s0, x = self._last
    self._last = (t0 + seconds, s0, x)

  def eval_report(self, step: int, split: str, metrics: dict[str, float]):
    self.write_scalars(split, step, metrics)
    if self.main:
      shown = '  '.join(f'{k} {v:.4g}' for k, v in sorted(metrics.items()))
      print(f'[{split} @ step {step}] {shown}', flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()
    for w in self.writers.values():
      w.close()
