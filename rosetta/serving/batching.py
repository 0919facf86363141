"""Request batching for `rosetta serve`: requests that arrive together run
as one batch.

A compiled decode or encode costs about the same for 1 row as for 32 on a
CPU or an accelerator, so answering concurrent requests one by one wastes
the device. Each endpoint's requests wait at most `max_wait_s` for others
with the same batch key; up to `max_batch` then run as one call of the
endpoint's `run_batch`. Every call runs on one worker thread shared by
all endpoints: device work is serialised (JAX dispatch from many threads
would interleave programs and multiply memory), and the event loop stays
free to accept and validate requests meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable, Hashable


class MicroBatcher:
  """Collects requests per batch key and runs them in batches."""

  def __init__(self, run_batch: Callable[[list[dict]], list[dict]],
               batch_key: Callable[[dict], Hashable],
               executor: concurrent.futures.Executor, *, max_batch: int,
               max_wait_s: float):
    if max_batch < 1 or max_wait_s < 0:
      raise ValueError(f'max_batch must be >= 1 and max_wait_s >= 0, got '
                       f'{max_batch}, {max_wait_s}')
    self._run_batch, self._batch_key = run_batch, batch_key
    self._executor = executor
    self._max_batch, self._max_wait_s = max_batch, max_wait_s
    self._pending: dict[Hashable, list] = {}
    self._timers: dict[Hashable, asyncio.TimerHandle] = {}
    self.batch_sizes: list[int] = []   # what ran, for tests and /health

  async def submit(self, request: dict) -> dict:
    """The response to `request`, once its batch has run."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    key = self._batch_key(request)
    waiting = self._pending.setdefault(key, [])
    waiting.append((request, future))
    if len(waiting) >= self._max_batch:
      self._flush(key)
    elif key not in self._timers:
      self._timers[key] = loop.call_later(self._max_wait_s, self._flush, key)
    return await future

  def _flush(self, key: Hashable) -> None:
    timer = self._timers.pop(key, None)
    if timer is not None:
      timer.cancel()
    items = self._pending.pop(key, [])
    if items:
      asyncio.get_running_loop().create_task(self._run(items))

  async def _run(self, items: list) -> None:
    requests = [request for request, _ in items]
    self.batch_sizes.append(len(requests))
    loop = asyncio.get_running_loop()
    try:
      responses = await loop.run_in_executor(self._executor, self._run_batch,
                                             requests)
      if len(responses) != len(requests):
        raise RuntimeError(f'run_batch answered {len(responses)} of '
                           f'{len(requests)} requests')
    except Exception as e:  # pylint: disable=broad-except
      for _, future in items:
        if not future.done():
          future.set_exception(e)
      return
    for (_, future), response in zip(items, responses):
      if not future.done():   # its client may have gone
        future.set_result(response)
