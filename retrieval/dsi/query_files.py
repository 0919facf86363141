"""The synthetic-queries file: JSONL records of (doc, language, query,
sample), written by `retrieval.dsi.synthetic_queries.generate` and read by
the DSI indexing tasks (`dsi_tasks.setup.synthetic_queries`).

    {"doc": "Super_Bowl_50_p0", "language": "en", "sample": 0,
     "query": "who won super bowl 50?", "log_prob": -12.3}

Written atomically (`rosetta.run.files`: a reader never sees half a file).
`read_queries` checks every line and names file:line and the field on an
error; `pairs_for` refuses documents that the corpus does not have.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from rosetta.run import files

RECORD_FIELDS = {'doc': str, 'language': str, 'query': str, 'sample': int}


def write_queries(path: str, records: Iterable[dict]) -> str:
  """JSONL, all or nothing: a temp file beside `path`, fsynced, renamed
  over it; on any error the temp file is removed and `path` is untouched.
  Records are checked before they are written."""
  with files.atomic_open(path, 'w') as f:
    for i, r in enumerate(records, start=1):
      _check_record(r, f'write_queries({path}) record {i}')
      f.write(json.dumps(r, ensure_ascii=False) + '\n')
  return path


def _check_record(r, where: str):
  if not isinstance(r, dict):
    raise ValueError(f'{where}: expected a JSON object, got {r!r:.60}')
  for name, kind in RECORD_FIELDS.items():
    if name not in r:
      raise ValueError(f'{where}: missing field {name!r}')
    if not isinstance(r[name], kind) or isinstance(r[name], bool):
      raise ValueError(f'{where}: field {name!r} must be {kind.__name__}, '
                       f'got {r[name]!r:.60}')
  if not r['query'].strip():
    raise ValueError(f'{where}: field "query" is empty')


def read_queries(path: str) -> list[dict]:
  """The records of a queries file, each line checked (errors name
  file:line and the field)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'synthetic queries file {path!r} does not exist')
  records = []
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{n}: not JSON ({e})') from None
      _check_record(r, f'{path}:{n}')
      records.append(r)
  if not records:
    raise ValueError(f'{path}: no queries')
  return records


def pairs_for(records: Sequence[dict], corpus,
              path: str = '<records>') -> list[tuple[str, str]]:
  """(query, doc key) pairs for `register_dsi_tasks(synthetic=...)` from
  the records for `corpus` (a `dsi_tasks.DsiCorpus`);
  a document the corpus lacks is an error naming the file."""
  keys = set(corpus.doc_keys)
  for i, r in enumerate(records, start=1):
    if r['doc'] not in keys:
      raise ValueError(f'{path}: record {i} is for document {r["doc"]!r}, '
                       f'which the {corpus.name} corpus does not have '
                       '(queries generated for another corpus?)')
  return [(r['query'], r['doc']) for r in records]
