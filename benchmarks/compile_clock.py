"""Compile time of a JAX call, apart from its run time, from jax.monitoring's
duration events (tracing, lowering to MLIR, the backend compile).

    from benchmarks.compile_clock import first_call
    result, wall_s, compile_s = first_call(lambda: f(x))

Shared by benchmarks/decoding.py, search.py and constrained_decoding.py so
that every table's "compile s" column counts the same events.
"""

from __future__ import annotations

import time

import jax

# jax/_src/dispatch.py's event names (jax 0.10); tests/test_compile_clock.py
# fails if a JAX upgrade renames them (the clock would read 0).
COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')

_seconds = [0.0]
_listening = [False]


def _on_event(event: str, duration: float, **_):
  if event in COMPILE_EVENTS:
    _seconds[0] += duration


def first_call(fn):
  """Runs `fn()` to completion (block_until_ready) and returns (its result,
  wall seconds, seconds of that spent tracing, lowering and compiling)."""
  if not _listening[0]:
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    _listening[0] = True
  before = _seconds[0]
  start = time.perf_counter()
  result = jax.block_until_ready(fn())
  return result, time.perf_counter() - start, _seconds[0] - before
