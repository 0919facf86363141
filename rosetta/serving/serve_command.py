"""`rosetta serve`: serve a translation run or a dense index over HTTP
(JSON, batched).

    rosetta serve --model_dir runs/nmt                 # POST /v1/translate
    rosetta serve --index runs/index                   # POST /v1/search
    rosetta serve --model_dir runs/nmt --index runs/index --port 8080

    curl -s localhost:8000/v1/translate \\
        -d '{"text": "Save and continue.", "target_lang": "fr"}'
    curl -s localhost:8000/health

The service listens on 127.0.0.1 (this machine only) unless --host says
otherwise; it has no authentication, so put it behind a proxy that has one
before opening it to a network. Requests that arrive within --max_wait_ms
of each other run as one batch (up to --max_batch), one batch at a time on
the devices. GET / lists the endpoints and their fields; bad requests get
a 4xx answer naming the field or the problem, and the service keeps going.

Endpoints come from the installed applications (the `rosetta.endpoints`
entry-point group): each one's module has `add_arguments(parser)` for its
options and `endpoints(args) -> list[Endpoint]`, which returns [] when the
given run or index is not one it serves.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import ipaddress
import socket
import sys

ENDPOINT_GROUP = 'rosetta.endpoints'


def endpoint_providers() -> dict:
  """{name: module} of the installed applications' endpoint providers."""
  return {ep.name: importlib.import_module(ep.value)
          for ep in importlib.metadata.entry_points(group=ENDPOINT_GROUP)}


def parse_args(argv, providers: dict):
  p = argparse.ArgumentParser(
      prog='rosetta serve', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--model_dir', default=None,
                 help='a run of `rosetta train` (e.g. a translation model)')
  p.add_argument('--index', default=None,
                 help='an index of `rosetta index` (search endpoint)')
  p.add_argument('--step', type=int, default=None,
                 help='checkpoint step of --model_dir (default: newest)')
  p.add_argument('--host', default='127.0.0.1',
                 help='address to listen on (default: loopback only)')
  p.add_argument('--port', type=int, default=8000,
                 help='0 picks a free port (printed on stderr)')
  p.add_argument('--max_batch', type=int, default=32,
                 help='most requests run as one batch')
  p.add_argument('--max_wait_ms', type=float, default=10.0,
                 help='how long a request waits for others to batch with')
  p.add_argument('--max_request_bytes', type=int, default=1 << 16,
                 help='larger request bodies get 413')
  for name, module in sorted(providers.items()):
    module.add_arguments(p.add_argument_group(f'{name} endpoint'))
  args = p.parse_args(argv)
  if args.model_dir is None and args.index is None:
    p.error('nothing to serve: give --model_dir, --index or both')
  for flag in ('max_batch', 'max_request_bytes'):
    if getattr(args, flag) < 1:
      p.error(f'--{flag} {getattr(args, flag)}: must be positive')
  if args.max_wait_ms < 0 or not 0 <= args.port < 65536:
    p.error('--max_wait_ms must be >= 0 and --port in 0..65535')
  return args


def is_loopback(host: str) -> bool:
  if host == 'localhost':
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def build_endpoints(args, providers: dict) -> list:
  """Every provider's endpoints for these arguments. A provider reads what
  it needs from its run's gin config while it builds; the config is
  cleared after each, so two runs' configs never mix."""
  import gin  # pylint: disable=import-outside-toplevel
  endpoints = []
  for _, module in sorted(providers.items()):
    try:
      endpoints += module.endpoints(args)
    finally:
      gin.clear_config()
  if not endpoints:
    given = ' and '.join(f'--{k} {getattr(args, k)}'
                         for k in ('model_dir', 'index') if getattr(args, k))
    raise ValueError(f'nothing to serve: no installed application serves '
                     f'{given} (providers: {", ".join(providers) or "none"})')
  return endpoints


def main(argv) -> int:
  providers = endpoint_providers()
  args = parse_args(argv, providers)
  import uvicorn  # pylint: disable=import-outside-toplevel
  from rosetta.serving import http_service  # pylint: disable=import-outside-toplevel
  endpoints = build_endpoints(args, providers)
  app = http_service.make_app(
      endpoints, info={'model_dir': args.model_dir, 'index': args.index},
      max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000,
      max_request_bytes=args.max_request_bytes)
  family = socket.AF_INET6 if ':' in args.host else socket.AF_INET
  sock = socket.create_server((args.host, args.port), family=family)
  host, port = sock.getsockname()[:2]
  if not is_loopback(args.host):
    print(f'rosetta serve: listening on {args.host}, reachable from other '
          'machines, without authentication', file=sys.stderr)
  print(f'rosetta serve: http://{host}:{port}/ serving '
        + ', '.join(f'/v1/{e.name}' for e in endpoints)
        + ' (GET /health; Ctrl-C stops)', file=sys.stderr, flush=True)
  server = uvicorn.Server(uvicorn.Config(app, log_level='warning',
                                         access_log=False))
  server.run(sockets=[sock])
  return 0
