"""What the CPU-time-budget benchmarks share (benchmarks/nmt_quality.py,
benchmarks/retrieval_quality.py): one XLA compute thread, the CPU's name.

The budget clock itself (`BudgetClock`: process CPU seconds of a system's
own steps, snapshots at marks) and `pin` (one core) live in
benchmarks/hf_t5_peer.py; Rosetta's trainer has `train.cpu_budget_s`.
No JAX, TF or torch here: child processes import it before choosing
their threads.
"""

from __future__ import annotations

import platform

# XLA:CPU with one compute thread (set before JAX starts).
ONE_THREAD_XLA_FLAGS = ('--xla_cpu_multi_thread_eigen=false '
                        'intra_op_parallelism_threads=1')


def one_thread_xla_flags(existing: str = '') -> str:
  """`existing` XLA_FLAGS plus the one-thread flags."""
  return (existing + ' ' + ONE_THREAD_XLA_FLAGS).strip()


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()

