"""benchmarks/compile_clock.py: the compile-time column of the speed
benchmarks reads JAX's own monitoring events, so it must see a compile
(a renamed event in a JAX upgrade would silently read 0) and see none on
a cached call."""

import os
import sys

import jax
import jax.numpy as jnp
from benchmarks import compile_clock  # noqa: E402


def test_counts_the_compile_and_not_the_cached_call():
  @jax.jit
  def f(x):
    return jnp.tanh(x @ x.T).sum(axis=0) * 3.0

  x = jnp.ones((64, 64))
  out, wall_s, compile_s = compile_clock.first_call(lambda: f(x))
  assert out.shape == (64,)
  assert 0.0 < compile_s <= wall_s
  _, _, again = compile_clock.first_call(lambda: f(x))
  assert again == 0.0
  _, _, other = compile_clock.first_call(lambda: f(jnp.ones((32, 64))))
  assert other > 0.0                       # a new shape compiles again


def test_every_counted_event_is_one_jax_emits():
  seen = set()
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **_: seen.add(event))
  jax.jit(lambda x: jnp.sin(x) * 2.0)(jnp.ones((3, 5)))
  assert set(compile_clock.COMPILE_EVENTS) <= seen, sorted(seen)
