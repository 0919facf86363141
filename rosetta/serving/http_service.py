"""The HTTP JSON service of `rosetta serve` (Starlette, run by uvicorn).

    GET  /health        {"status": "ok", "endpoints": [...], ...}
    GET  /              the endpoints and their fields
    POST /v1/<name>     one JSON object in, one JSON object out

Bad requests are answered, never raised: malformed JSON, a body that is
not an object, unknown or missing fields, wrong types and refused values
get 400; a body over the size limit 413 (read no further than the limit);
an unknown path 404; another method 405. Each answer to an error is
{"error": "..."} naming the field or the problem. An endpoint that fails
while running a batch answers 500 to that batch's requests only; the
server keeps serving.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rosetta.serving.batching import MicroBatcher
from rosetta.serving.endpoints import Endpoint, RequestError

logger = logging.getLogger('rosetta.serving')


async def read_limited(request: Request, limit: int) -> bytes:
  """The body, or RequestError(413) as soon as it passes `limit` bytes."""
  declared = request.headers.get('content-length')
  if declared is not None and declared.isdigit() and int(declared) > limit:
    raise RequestError(413, f'the request body has {declared} bytes; the '
                       f'limit is {limit} (rosetta serve '
                       '--max_request_bytes)')
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise RequestError(413, f'the request body is over the limit of '
                         f'{limit} bytes (rosetta serve --max_request_bytes)')
    chunks.append(chunk)
  return b''.join(chunks)


def error(status: int, message: str) -> JSONResponse:
  return JSONResponse({'error': message}, status_code=status)


def make_app(endpoints: list[Endpoint], *, info: dict | None = None,
             max_batch: int = 32, max_wait_s: float = 0.01,
             max_request_bytes: int = 1 << 16) -> Starlette:
  """The application serving `endpoints` (names must be unique)."""
  names = [e.name for e in endpoints]
  if len(set(names)) != len(names):
    raise ValueError(f'endpoint names must be unique, got {names}')
  # One worker thread: device work runs one batch at a time (batching.py).
  executor = concurrent.futures.ThreadPoolExecutor(
      max_workers=1, thread_name_prefix='rosetta-serve')
  batchers = {e.name: MicroBatcher(e.run_batch, e.batch_key, executor,
                                   max_batch=max_batch, max_wait_s=max_wait_s)
              for e in endpoints}
  by_name = {e.name: e for e in endpoints}
  info = dict(info or {})

  async def health(request: Request) -> JSONResponse:
    del request
    return JSONResponse({'status': 'ok', 'endpoints': names, **info,
                         'batches_run': {n: len(b.batch_sizes)
                                         for n, b in batchers.items()}})

  async def index(request: Request) -> JSONResponse:
    del request
    return JSONResponse({'endpoints': [e.describe() for e in endpoints],
                         'health': '/health', **info})

  async def call(request: Request) -> JSONResponse:
    endpoint = by_name[request.path_params['name']] if (
        request.path_params['name'] in by_name) else None
    if endpoint is None:
      return error(404, f'no endpoint /v1/{request.path_params["name"]}; '
                   f'endpoints: {", ".join("/v1/" + n for n in names)}')
    try:
      raw = await read_limited(request, max_request_bytes)
      try:
        body = json.loads(raw.decode('utf-8'))
      except UnicodeDecodeError as e:
        raise RequestError(400, f'the request body is not UTF-8 ({e})') from e
      except json.JSONDecodeError as e:
        raise RequestError(400, f'malformed JSON: {e}') from e
      checked = endpoint.parse(body)
    except RequestError as e:
      return error(e.status, str(e))
    try:
      return JSONResponse(await batchers[endpoint.name].submit(checked))
    except RequestError as e:
      return error(e.status, str(e))
    except Exception as e:  # pylint: disable=broad-except
      logger.exception('/v1/%s failed', endpoint.name)
      return error(500, f'{type(e).__name__}: {e}')

  async def not_found(request: Request, exc) -> JSONResponse:
    del exc
    return error(404, f'no such path {request.url.path}; GET / lists the '
                 'endpoints')

  async def not_allowed(request: Request, exc) -> JSONResponse:
    del exc
    return error(405, f'{request.method} is not allowed on '
                 f'{request.url.path}')

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    yield
    executor.shutdown(wait=False)

  app = Starlette(
      routes=[Route('/health', health, methods=['GET']),
              Route('/', index, methods=['GET']),
              Route('/v1/{name}', call, methods=['POST'])],
      exception_handlers={404: not_found, 405: not_allowed},
      lifespan=lifespan)
  app.state.batchers = batchers
  return app
