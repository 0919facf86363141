"""What an HTTP endpoint of `rosetta serve` is, and how a request is checked.

Applications describe their endpoints (translation: `translate`;
retrieval: `search`) with `Endpoint`: the JSON fields a request may carry,
a per-request value check, and a function that answers a list of checked
requests at once (the server batches requests that arrive together and
share a `batch_key`). The core server knows no application: it finds them
through the `rosetta.endpoints` entry-point group (rosetta/serving/
serve_command.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable


class RequestError(ValueError):
  """A request the server answers with a 4xx status and this message."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass(frozen=True)
class Field:
  """One JSON field of a request: its type, whether it must be present, its
  default when absent, and a one-line description for the index page."""
  kind: type
  required: bool = False
  default: Any = None
  help: str = ''

  def type_name(self) -> str:
    return {str: 'string', int: 'integer', float: 'number', bool: 'boolean',
            list: 'array'}.get(self.kind, self.kind.__name__)


def _no_check(request: dict) -> str | None:
  del request
  return None


def _one_batch(request: dict) -> Hashable:
  del request
  return None


@dataclasses.dataclass
class Endpoint:
  """POST /v1/<name>. `run_batch(requests) -> responses` gets checked
  requests (defaults filled in) that share one `batch_key` and returns one
  JSON-able dict per request, in order. `check(request)` returns why a
  request's values are refused (a 400 answer), or None."""
  name: str
  summary: str
  fields: dict[str, Field]
  run_batch: Callable[[list[dict]], list[dict]]
  check: Callable[[dict], str | None] = _no_check
  batch_key: Callable[[dict], Hashable] = _one_batch

  def describe(self) -> dict:
    return {'path': f'/v1/{self.name}', 'method': 'POST',
            'summary': self.summary,
            'fields': {k: {'type': f.type_name(), 'required': f.required,
                           **({} if f.required else {'default': f.default}),
                           'help': f.help}
                       for k, f in self.fields.items()}}

  def parse(self, body: Any) -> dict:
    """The request with defaults filled in; RequestError(400) naming the
    field for anything else than a JSON object of the declared fields."""
    if not isinstance(body, dict):
      raise RequestError(400, 'the request body must be a JSON object, got '
                         f'{type(body).__name__}')
    unknown = sorted(set(body) - set(self.fields))
    if unknown:
      raise RequestError(400, f'unknown field(s) {", ".join(unknown)}; '
                         f'/v1/{self.name} takes {", ".join(self.fields)}')
    request = {}
    for key, field in self.fields.items():
      if key not in body:
        if field.required:
          raise RequestError(400, f'missing field {key!r} '
                             f'({field.type_name()})')
        request[key] = field.default
        continue
      value = body[key]
      ok = isinstance(value, field.kind) and not (
          field.kind is not bool and isinstance(value, bool))
      if field.kind is float and isinstance(value, int) and not isinstance(
          value, bool):
        value, ok = float(value), True
      if not ok:
        name = field.type_name()
        article = 'an' if name[0] in 'aeiou' else 'a'
        raise RequestError(400, f'field {key!r} must be {article} {name}, '
                           f'got {json_type(value)}')
      request[key] = value
    reason = self.check(request)
    if reason:
      raise RequestError(400, reason)
    return request


def json_type(value: Any) -> str:
  if value is None:
    return 'null'
  return {bool: 'boolean', int: 'integer', float: 'number', str: 'string',
          list: 'array', dict: 'object'}.get(type(value), type(value).__name__)
