"""Retrieval collections from files: the BEIR layout and MS MARCO's TSVs.

Both layouts are read into `retrieval.datasets.RetrievalSet`s, one per
split, so every consumer of the built-in sets (dual-encoder pair tasks, DSI
tasks, search and `ir_metrics`) takes them as they are.

BEIR (also the layout of Mr. TyDi's and MIRACL's BEIR exports)::

    scifact/corpus.jsonl      {"_id": "d1", "title": "Cats",
                               "text": "Cats purr."}      (one line each)
    scifact/queries.jsonl     {"_id": "q1", "text": "Do cats purr?"}
    scifact/qrels/test.tsv    query-id<TAB>corpus-id<TAB>score     (header)
                              q1<TAB>d1<TAB>1

MS MARCO::

    msmarco/collection.tsv    pid<TAB>passage
    msmarco/queries.dev.tsv   qid<TAB>query
    msmarco/qrels.dev.tsv     qid 0 pid grade          (TREC, any whitespace)
    triples.train.small.tsv   query<TAB>positive passage<TAB>negative passage
    qidpidtriples.train.full.tsv   qid<TAB>pid<TAB>pid  (texts: collection.tsv
                                   and queries.train.tsv beside it)

Any file may be gzipped instead (`corpus.jsonl.gz`, `collection.tsv.gz`).

    rs = read_beir('data/scifact', 'test')
    rs.docs        # ('Cats Cats purr.',): title + ' ' + text, as BEIR's
                   # own evaluation encodes a document
    rs.qrels       # {'q1': {'d1': 1}}
    splits('beir:data/scifact')            # ('test',): the qrels files
    read_split('beir:data/scifact', 'test')  # the same set, from a spec
    read_triples('triples.train.small.tsv')  # [(query, positive, negative)]

Specs (strings for gin): 'beir:<folder>', 'msmarco:<folder>' (collections
with qrels), 'triples:<file>' and 'idtriples:<file>' (training triples).

Splits. A BEIR split is the queries its `qrels/<split>.tsv` names
(queries.jsonl holds every split's); an MS MARCO split is the queries of
`queries.<split>.tsv`. A query of the split with no relevant document
(grade >= 1, `ir_metrics`' definition) cannot be evaluated: it is left
out of the set and counted in `ReadStats.queries_without_relevant`.
Queries and documents keep their file order.

Checks. Every line is checked; a bad one calls `bad_input.handle`, which
raises `BadInputError('<file>:<line>: <reason>')` under
on_bad_line='error' (the default) or, under 'skip', drops the line and
counts it (`bad_input.SKIPPED`, and `ReadStats.skipped_lines`): invalid
UTF-8, bad JSON, a line that is not a JSON object, a missing or non-string
field, an empty id or text, an id with whitespace (TREC run and qrels
files cannot hold it), a duplicate id (the later line is the bad one), a
wrong number of columns, a non-integer grade, a qrels row naming a query
or document the other files lack, a query judging a document twice.
Lines are split on b'\\n' only (never `str.splitlines`, which also splits
on U+2028 and friends inside a passage) and a trailing '\\r' is dropped;
blank lines hold no record and are passed over. Ids are strings (a JSON
integer `_id` is read as its decimal string, as TSV qrels spell it); raw
control characters inside JSON strings (a tab), which strict JSON
forbids, are read as they are.

Titles. A BEIR document is `title + title_separator + text` (' ', as
BEIR's evaluation does; `title_separator=None` drops titles), or its title
alone when the text is empty. `RetrievalSet` stays one text per document,
so search, BM25, pair tasks and DSI indexing all see the title.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import json
import os
import re
from typing import Iterator, Sequence

from absl import logging

from retrieval import datasets
from rosetta.data import bad_input

COLLECTION_KINDS = ('beir', 'msmarco')      # folders with queries and qrels
TRIPLE_KINDS = ('triples', 'idtriples')     # training triples files
KINDS = COLLECTION_KINDS + TRIPLE_KINDS
BEIR_QRELS_HEADER = ('query-id', 'corpus-id', 'score')
Triple = tuple[str, str, str]               # (query, positive, negative)


@dataclasses.dataclass
class ReadStats:
  """What one read kept and left out (skips also go to bad_input.SKIPPED)."""
  documents: int = 0
  queries: int = 0                    # kept: with a relevant document
  judgements: int = 0                 # qrels rows of the kept queries
  triples: int = 0
  skipped_lines: int = 0              # bad lines under on_bad_line='skip'
  queries_without_relevant: int = 0   # of the split, left out (docstring)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A parsed 'kind:path' spec; `name` is a seqio-safe 'kind_stem'."""
  kind: str
  path: str

  @property
  def stem(self) -> str:
    base = os.path.basename(os.path.normpath(self.path))
    for ext in ('.gz', '.tsv'):
      base = base[:-len(ext)] if base.endswith(ext) else base
    return re.sub(r'[^a-z0-9]+', '_', base.lower()).strip('_') or 'data'

  @property
  def name(self) -> str:
    return f'{self.kind}_{self.stem}'


def parse_spec(spec: str | Spec) -> Spec:
  """'beir:/data/scifact' -> Spec('beir', '/data/scifact')."""
  if isinstance(spec, Spec):
    return spec
  kind, sep, path = spec.partition(':')
  if not sep or kind not in KINDS or not path:
    raise ValueError(f'collection spec {spec!r}: expected "<kind>:<path>" '
                     f'with kind one of {KINDS}, e.g. "beir:/data/scifact"')
  return Spec(kind, path)


# ----------------------------------------------------------------- lines ---

def find_file(path: str) -> str | None:
  """`path` or `path.gz`, whichever exists; both is an error (which one
  is current?); None if neither."""
  found = [p for p in (path, path + '.gz') if _exists(p)]
  if len(found) > 1:
    raise ValueError(f'both {path} and {path}.gz exist: keep one')
  return found[0] if found else None


def require_file(path: str, what: str) -> str:
  found = find_file(path)
  if found is None:
    raise FileNotFoundError(f'{what}: no file {path} (or {path}.gz)')
  return found


def _exists(path: str) -> bool:
  if '://' in path:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.io.gfile.exists(path)
  return os.path.isfile(path)


@contextlib.contextmanager
def _open(path: str):
  """The file in binary, decompressed if its name ends in .gz."""
  if '://' in path:   # gs:// and the like, through TensorFlow's file system
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    raw = tf.io.gfile.GFile(path, 'rb')
  else:
    raw = open(path, 'rb')
  with raw:           # GzipFile(fileobj=...) leaves `raw` open: close it here
    if path.endswith('.gz'):
      with gzip.GzipFile(fileobj=raw) as f:
        yield f
    else:
      yield raw


class _Reader:
  """One file's lines, decoded, with the bad-line policy and its count."""

  def __init__(self, path: str, policy: str):
    self.path, self.policy, self.skipped = path, policy, 0

  def bad(self, line: int, reason: str) -> None:
    bad_input.handle(self.policy, self.path, line, reason)  # raises: 'error'
    self.skipped += 1

  def lines(self) -> Iterator[tuple[int, str]]:
    """(1-based line, text) of the non-blank lines; split on b'\\n' only
    (binary file iteration), '\\r' and a leading BOM dropped."""
    with _open(self.path) as f:
      for n, raw in enumerate(f, start=1):
        raw = raw[:-1] if raw.endswith(b'\n') else raw
        raw = raw[:-1] if raw.endswith(b'\r') else raw
        if n == 1 and raw.startswith(b'\xef\xbb\xbf'):
          raw = raw[3:]
        try:
          text = raw.decode('utf-8')
        except UnicodeDecodeError as e:
          self.bad(n, f'not valid UTF-8 ({e.reason} at byte {e.start}: '
                   f'{raw[max(0, e.start - 10):e.start + 10]!r})')
          continue
        if text.strip():
          yield n, text

  def columns(self, n: int, text: str, names: Sequence[str],
              separator: str | None = '\t') -> list[str] | None:
    """The stripped fields of a line, or None (skipped) if their number is
    not len(names) or one is empty. separator None: any whitespace."""
    cells = text.split(separator)
    if len(cells) != len(names):
      how = 'tab-separated columns' if separator else 'fields'
      self.bad(n, f'expected {len(names)} {how} ({", ".join(names)}), '
               f'found {len(cells)}')
      return None
    cells = [c.strip() for c in cells]
    for name, cell in zip(names, cells):
      if not cell:
        self.bad(n, f'empty {name}')
        return None
    return cells

  def json_object(self, n: int, text: str) -> dict | None:
    try:
      obj = json.loads(text, strict=False)   # raw tabs inside strings: fine
    except json.JSONDecodeError as e:
      self.bad(n, f'not valid JSON ({e.msg} at column {e.colno})')
      return None
    if not isinstance(obj, dict):
      self.bad(n, f'expected a JSON object, found {_json_type(obj)}')
      return None
    return obj

  def json_string(self, n: int, obj: dict, field: str, *,
                  required: bool = True, is_id: bool = False) -> str | None:
    """A string field, stripped ('' for a missing optional one or null);
    None when the line was bad (and skipped)."""
    if field not in obj or (obj[field] is None and not required):
      if required:
        self.bad(n, f'no field {field!r}')
        return None
      return ''
    value = obj[field]
    if is_id and isinstance(value, int) and not isinstance(value, bool):
      value = str(value)
    if not isinstance(value, str):
      self.bad(n, f'field {field!r} is {_json_type(value)}, expected a '
               'string')
      return None
    return value.strip()

  def check_id(self, n: int, value: str, what: str) -> bool:
    if not value:
      self.bad(n, f'empty {what}')
      return False
    if any(c.isspace() for c in value):
      self.bad(n, f'{what} {value!r} has whitespace (TREC run and qrels '
               'files cannot hold it)')
      return False
    return True


def _json_type(value) -> str:
  for kind, name in ((bool, 'a boolean'), (dict, 'an object'),
                     (list, 'an array'), (str, 'a string'),
                     ((int, float), 'a number')):
    if isinstance(value, kind):
      return name
  return 'null'


@dataclasses.dataclass(frozen=True)
class _Texts:
  """Ids and texts of one file, in file order, with its skipped lines."""
  path: str
  ids: tuple[str, ...]
  texts: tuple[str, ...]
  skipped: int

  @functools.cached_property
  def by_id(self) -> dict[str, str]:
    return dict(zip(self.ids, self.texts))


def _collect(reader: _Reader, records, what: str) -> _Texts:
  """(line, id, text) records -> _Texts; a repeated id is a bad line."""
  first: dict[str, int] = {}
  texts = []
  for n, key, text in records:
    if key in first:
      reader.bad(n, f'duplicate {what} {key!r} (first on line {first[key]})')
      continue
    first[key] = n
    texts.append(text)
  return _Texts(reader.path, tuple(first), tuple(texts), reader.skipped)


def _file_key(path: str) -> tuple:
  """Cache key of a file's contents: path, size, modification time."""
  if '://' in path:
    return (path,)
  st = os.stat(path)
  return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


# A big corpus is read once for all its splits (pair tasks read 'train',
# 'validation' and 'test' separately); keyed by the file's size and mtime.
@functools.lru_cache(maxsize=4)
def _beir_jsonl(key: tuple, path: str, policy: str, what: str,
                title_separator: str | None) -> _Texts:
  del key
  reader = _Reader(path, policy)

  def records():
    for n, line in reader.lines():
      obj = reader.json_object(n, line)
      if obj is None:
        continue
      key = reader.json_string(n, obj, '_id', is_id=True)
      if key is None or not reader.check_id(n, key, f'{what} id'):
        continue
      text = reader.json_string(n, obj, 'text')
      if text is None:
        continue
      titled = what == 'document' and title_separator is not None
      if titled:
        title = reader.json_string(n, obj, 'title', required=False)
        if title is None:
          continue
        if title:
          text = title + title_separator + text if text else title
      if not text:
        reader.bad(n, "empty field 'text'" + (" and no 'title'" if titled
                                               else ''))
        continue
      yield n, key, text
  return _collect(reader, records(), f'{what} id')


@functools.lru_cache(maxsize=4)
def _id_text_tsv(key: tuple, path: str, policy: str, id_name: str,
                 text_name: str) -> _Texts:
  del key
  reader = _Reader(path, policy)

  def records():
    for n, line in reader.lines():
      cells = reader.columns(n, line, (id_name, text_name))
      if cells is not None and reader.check_id(n, cells[0], id_name):
        yield n, cells[0], cells[1]
  return _collect(reader, records(), id_name)


# ----------------------------------------------------------------- qrels ---

@dataclasses.dataclass
class _Qrels:
  judged: dict[str, dict[str, int]]   # {qid: {doc id: grade}}, file order
  named: set[str]     # known queries named by any row, bad ones included
  skipped: int


def _read_qrels(path: str, policy: str, queries: _Texts, docs: _Texts,
                trec: bool) -> _Qrels:
  """BEIR: 3 tab-separated columns after a 'query-id corpus-id score'
  header; TREC: 'qid iteration docid grade', any whitespace, no header."""
  reader = _Reader(path, policy)
  names = (('query-id', 'iteration', 'corpus-id', 'score') if trec
           else BEIR_QRELS_HEADER)
  qrels: dict[str, dict[str, int]] = {}
  named: set[str] = set()
  first: dict[tuple[str, str], int] = {}
  for n, line in reader.lines():
    cells = reader.columns(n, line, names, None if trec else '\t')
    if cells is None:
      continue
    if not trec and tuple(c.lower() for c in cells) == BEIR_QRELS_HEADER:
      continue          # the header (only the exact one: no data dropped)
    qid, did, grade = (cells[0], cells[2], cells[3]) if trec else cells
    if qid in queries.by_id:
      named.add(qid)
    if not re.fullmatch(r'[+-]?\d+', grade):
      reader.bad(n, f'score {grade!r} is not an integer')
      continue
    if qid not in queries.by_id:
      reader.bad(n, f'query {qid!r} is not in {queries.path}')
      continue
    if did not in docs.by_id:
      reader.bad(n, f'document {did!r} is not in {docs.path}')
      continue
    if (qid, did) in first:
      reader.bad(n, f'query {qid!r} judges document {did!r} twice (first '
                 f'on line {first[qid, did]})')
      continue
    first[qid, did] = n
    qrels.setdefault(qid, {})[did] = int(grade)
  return _Qrels(qrels, named, reader.skipped)


def _assemble(name: str, qrels_path: str, split_queries: Sequence[str],
              queries: _Texts, docs: _Texts, judged: _Qrels,
              stats: ReadStats | None) -> datasets.RetrievalSet:
  """The set of the split's queries that have a relevant document."""
  qrels = judged.judged
  keep = [q for q in split_queries
          if any(g >= 1 for g in qrels.get(q, {}).values())]
  if not docs.ids:
    raise ValueError(f'{docs.path}: no documents')
  if not keep:
    raise ValueError(f'{qrels_path}: no query of the split has a relevant '
                     'document (a qrels row of grade >= 1)')
  dropped = len(split_queries) - len(keep)
  if dropped:
    logging.info('%s: %d of %d queries have no relevant document (grade >= '
                 '1) and are left out', qrels_path, dropped,
                 len(split_queries))
  kept_qrels = {q: qrels[q] for q in keep}
  stats = stats if stats is not None else ReadStats()
  stats.documents = len(docs.ids)
  stats.queries = len(keep)
  stats.judgements = sum(len(d) for d in kept_qrels.values())
  stats.skipped_lines = queries.skipped + docs.skipped + judged.skipped
  stats.queries_without_relevant = dropped
  return datasets.RetrievalSet(
      name, tuple(keep), tuple(queries.by_id[q] for q in keep), docs.ids,
      docs.texts, kept_qrels)


# ------------------------------------------------------------------ BEIR ---

def beir_files(directory: str, split: str) -> tuple[str, str, str]:
  """(corpus, queries, qrels) paths of a BEIR folder's split."""
  what = f'BEIR collection {directory}'
  return (require_file(os.path.join(directory, 'corpus.jsonl'), what),
          require_file(os.path.join(directory, 'queries.jsonl'), what),
          require_file(os.path.join(directory, 'qrels', f'{split}.tsv'),
                       f'{what}, split {split!r} (splits: '
                       f'{_beir_splits(directory)})'))


def read_beir(directory: str, split: str = 'test', *,
              on_bad_line: str = 'error', title_separator: str | None = ' ',
              stats: ReadStats | None = None) -> datasets.RetrievalSet:
  """One split of a BEIR folder (module docstring): its queries (those of
  `qrels/<split>.tsv` with a relevant document) against the whole corpus.
  `stats`, if given, is filled in."""
  policy = bad_input.check_policy(on_bad_line)
  corpus_path, queries_path, qrels_path = beir_files(directory, split)
  docs = _beir_jsonl(_file_key(corpus_path), corpus_path, policy,
                     'document', title_separator)
  queries = _beir_jsonl(_file_key(queries_path), queries_path, policy,
                        'query', None)
  judged = _read_qrels(qrels_path, policy, queries, docs, trec=False)
  in_split = [q for q in queries.ids if q in judged.named]
  name = f'beir:{Spec("beir", directory).stem}:{split}'
  return _assemble(name, qrels_path, in_split, queries, docs, judged, stats)


def _beir_splits(directory: str) -> tuple[str, ...]:
  root = os.path.join(directory, 'qrels')
  if not os.path.isdir(root):
    return ()
  return tuple(sorted({m.group(1) for f in os.listdir(root)
                       if (m := re.fullmatch(r'(.+)\.tsv(\.gz)?', f))}))


# -------------------------------------------------------------- MS MARCO ---

def read_msmarco_files(collection: str, queries: str, qrels: str, *,
                       name: str = 'msmarco', on_bad_line: str = 'error',
                       stats: ReadStats | None = None
                       ) -> datasets.RetrievalSet:
  """MS MARCO-style files: `collection` (pid<TAB>passage), `queries`
  (qid<TAB>query, the split's queries) and TREC `qrels`."""
  policy = bad_input.check_policy(on_bad_line)
  for path in (collection, queries, qrels):
    if not _exists(path):
      raise FileNotFoundError(f'{name}: no file {path}')
  docs = _id_text_tsv(_file_key(collection), collection, policy, 'pid',
                      'passage')
  qs = _id_text_tsv(_file_key(queries), queries, policy, 'qid', 'query')
  judged = _read_qrels(qrels, policy, qs, docs, trec=True)
  return _assemble(name, qrels, qs.ids, qs, docs, judged, stats)


def read_msmarco(directory: str, split: str = 'dev', *,
                 on_bad_line: str = 'error',
                 stats: ReadStats | None = None) -> datasets.RetrievalSet:
  """`collection.tsv`, `queries.<split>.tsv`, `qrels.<split>.tsv` of a
  folder (each possibly .gz); split e.g. 'dev', 'dev.small', 'train'."""
  what = f'MS MARCO collection {directory}'
  paths = [require_file(os.path.join(directory, f), what + (
      '' if f == 'collection.tsv' else
      f', split {split!r} (splits: {_msmarco_splits(directory)})'))
           for f in ('collection.tsv', f'queries.{split}.tsv',
                     f'qrels.{split}.tsv')]
  return read_msmarco_files(
      *paths, name=f'msmarco:{Spec("msmarco", directory).stem}:{split}',
      on_bad_line=on_bad_line, stats=stats)


def _msmarco_splits(directory: str) -> tuple[str, ...]:
  if not os.path.isdir(directory):
    return ()
  names = os.listdir(directory)

  def of(prefix):
    return {m.group(1) for f in names
            if (m := re.fullmatch(prefix + r'\.(.+)\.tsv(\.gz)?', f))}
  return tuple(sorted(of('queries') & of('qrels')))


# --------------------------------------------------------------- triples ---

def read_triples(path: str, *, on_bad_line: str = 'error',
                 limit: int | None = None,
                 stats: ReadStats | None = None) -> list[Triple]:
  """(query, positive, negative) texts of a triples file, in file order;
  `limit` stops after that many good triples (MS MARCO's
  triples.train.small.tsv holds 39.8M, ~27 GB of text)."""
  policy = bad_input.check_policy(on_bad_line)
  reader = _Reader(require_file(path, 'triples'), policy)
  out = []
  for n, line in reader.lines():
    if limit is not None and len(out) >= limit:
      break
    cells = reader.columns(n, line, ('query', 'positive', 'negative'))
    if cells is not None:
      out.append(tuple(cells))
  return _triples_done(reader, out, stats)


def read_id_triples(path: str, *, queries: str | None = None,
                    collection: str | None = None,
                    on_bad_line: str = 'error', limit: int | None = None,
                    stats: ReadStats | None = None) -> list[Triple]:
  """qid<TAB>pid<TAB>pid triples with their texts looked up in `queries`
  and `collection` (default: queries.train.tsv and collection.tsv in the
  triples' folder). An id those files lack is a bad line."""
  policy = bad_input.check_policy(on_bad_line)
  folder = os.path.dirname(path)
  queries = queries or require_file(
      os.path.join(folder, 'queries.train.tsv'), f'id triples {path}')
  collection = collection or require_file(
      os.path.join(folder, 'collection.tsv'), f'id triples {path}')
  qs = _id_text_tsv(_file_key(queries), queries, policy, 'qid', 'query')
  docs = _id_text_tsv(_file_key(collection), collection, policy, 'pid',
                      'passage')
  reader = _Reader(require_file(path, 'id triples'), policy)
  out = []
  for n, line in reader.lines():
    if limit is not None and len(out) >= limit:
      break
    cells = reader.columns(n, line, ('qid', 'positive pid', 'negative pid'))
    if cells is None:
      continue
    qid, pos, neg = cells
    missing = ([f'query {qid!r} is not in {queries}']
               if qid not in qs.by_id else []) + [
                   f'document {d!r} is not in {collection}'
                   for d in (pos, neg) if d not in docs.by_id]
    if missing:
      reader.bad(n, missing[0])
      continue
    out.append((qs.by_id[qid], docs.by_id[pos], docs.by_id[neg]))
  reader.skipped += qs.skipped + docs.skipped
  return _triples_done(reader, out, stats)


def _triples_done(reader: _Reader, out: list[Triple],
                  stats: ReadStats | None) -> list[Triple]:
  if not out:
    raise ValueError(f'{reader.path}: no triples ({reader.skipped} bad '
                     'lines skipped)')
  if stats is not None:
    stats.triples, stats.skipped_lines = len(out), reader.skipped
  return out


# ----------------------------------------------------------------- specs ---

def splits(spec: str | Spec) -> tuple[str, ...]:
  """The splits of a collection spec that have qrels (sorted); checks
  that the corpus and queries files are there."""
  s = parse_spec(spec)
  if s.kind not in COLLECTION_KINDS:
    raise ValueError(f'{s.kind}:{s.path}: triples have no qrels splits; '
                     f'collections are {COLLECTION_KINDS}')
  if s.kind == 'beir':
    what = f'BEIR collection {s.path}'
    require_file(os.path.join(s.path, 'corpus.jsonl'), what)
    require_file(os.path.join(s.path, 'queries.jsonl'), what)
    found = _beir_splits(s.path)
    where = os.path.join(s.path, 'qrels', '<split>.tsv')
  else:
    require_file(os.path.join(s.path, 'collection.tsv'),
                 f'MS MARCO collection {s.path}')
    found = _msmarco_splits(s.path)
    where = os.path.join(s.path, 'queries.<split>.tsv + qrels.<split>.tsv')
  if not found:
    raise FileNotFoundError(f'{s.kind}:{s.path}: no split ({where})')
  return found


def read_split(spec: str | Spec, split: str, *, on_bad_line: str = 'error',
               stats: ReadStats | None = None) -> datasets.RetrievalSet:
  """`read_beir` or `read_msmarco` by the spec's kind."""
  s = parse_spec(spec)
  if s.kind == 'beir':
    return read_beir(s.path, split, on_bad_line=on_bad_line, stats=stats)
  if s.kind == 'msmarco':
    return read_msmarco(s.path, split, on_bad_line=on_bad_line, stats=stats)
  raise ValueError(f'{s.kind}:{s.path}: not a collection with qrels '
                   f'({COLLECTION_KINDS}); triples are read by read_triples')


def read_spec_triples(spec: str | Spec, *, on_bad_line: str = 'error',
                      limit: int | None = None,
                      stats: ReadStats | None = None) -> list[Triple]:
  """`read_triples` ('triples:') or `read_id_triples` ('idtriples:')."""
  s = parse_spec(spec)
  if s.kind == 'triples':
    return read_triples(s.path, on_bad_line=on_bad_line, limit=limit,
                        stats=stats)
  if s.kind == 'idtriples':
    return read_id_triples(s.path, on_bad_line=on_bad_line, limit=limit,
                           stats=stats)
  raise ValueError(f'{s.kind}:{s.path}: not a triples spec {TRIPLE_KINDS}')


# ------------------------------------------- documents, queries, qrels ---
# The retrieval commands (`rosetta index`, `search`, `bm25`, `score`) read a
# corpus or a query set on its own, without a split's qrels.

TEXT_KINDS = ('beir', 'msmarco', 'jsonl', 'tsv')
TEXT_SPEC_HELP = (
    "'beir:<folder>' (its corpus.jsonl / queries.jsonl), 'msmarco:<folder>' "
    "(its collection.tsv; documents only), 'jsonl:<file>' (BEIR records "
    "{\"_id\", \"text\"[, \"title\"]}), 'tsv:<file>' (id<TAB>text), or a "
    'plain path: a folder holding corpus.jsonl / queries.jsonl / '
    'collection.tsv, or a file named *.jsonl / *.tsv (optionally .gz)')


@dataclasses.dataclass(frozen=True)
class TextFile:
  """Ids and texts of one documents or queries file, in file order."""
  path: str
  ids: tuple[str, ...]
  texts: tuple[str, ...]


def _text_file(spec: str, what: str) -> tuple[str, str]:
  """(kind 'jsonl' or 'tsv', path) of a documents / queries spec."""
  kind, sep, path = spec.partition(':')
  if not sep or kind not in TEXT_KINDS or not path:
    kind, path = '', spec
  if not kind and os.path.isdir(path):
    kind = 'beir' if find_file(os.path.join(
        path, 'corpus.jsonl' if what == 'documents' else 'queries.jsonl')
    ) else 'msmarco'
  if kind == 'beir':
    name = 'corpus.jsonl' if what == 'documents' else 'queries.jsonl'
    return 'jsonl', require_file(os.path.join(path, name),
                                 f'BEIR {what} in {path}')
  if kind == 'msmarco':
    if what != 'documents':
      raise ValueError(f'{spec}: an MS MARCO folder holds one query file per '
                       "split: name it, e.g. 'tsv:<folder>/queries.dev.tsv'")
    return 'tsv', require_file(os.path.join(path, 'collection.tsv'),
                               f'MS MARCO {what} in {path}')
  if not kind:
    base = path[:-3] if path.endswith('.gz') else path
    kind = next((k for k in ('jsonl', 'tsv') if base.endswith('.' + k)), '')
    if not kind:
      raise ValueError(f'{path}: unknown format of {what}: {TEXT_SPEC_HELP}')
  return kind, require_file(path, what)


def read_texts(spec: str, what: str = 'documents', *,
               on_bad_line: str = 'error',
               title_separator: str | None = ' ') -> TextFile:
  """Documents (`what='documents'`) or queries (`'queries'`) of a spec
  (`TEXT_SPEC_HELP`), checked line by line like the collections; a
  duplicate id or an empty file is an error naming the file."""
  if what not in ('documents', 'queries'):
    raise ValueError(f"what must be 'documents' or 'queries', got {what!r}")
  policy = bad_input.check_policy(on_bad_line)
  kind, path = _text_file(spec, what)
  one = what[:-1] if what == 'documents' else 'query'
  if kind == 'jsonl':
    got = _beir_jsonl(_file_key(path), path, policy, one,
                      title_separator if what == 'documents' else None)
  else:
    got = _id_text_tsv(_file_key(path), path, policy, f'{one} id', 'text')
  if not got.ids:
    raise ValueError(f'{path}: no {what}')
  return TextFile(path, got.ids, got.texts)


def read_qrels_file(path: str) -> dict[str, dict[str, int]]:
  """Judgements of a qrels file on their own: TREC (`qid 0 docid grade`,
  any whitespace) or BEIR (`query-id<TAB>corpus-id<TAB>score`, header
  optional), told apart by the first line's columns."""
  path = require_file(path, 'qrels')
  reader = _Reader(path, 'error')
  qrels: dict[str, dict[str, int]] = {}
  trec = None
  for n, line in reader.lines():
    if trec is None:
      trec = len(line.split()) == 4
      if not trec and tuple(c.strip().lower() for c in line.split('\t')
                            ) == BEIR_QRELS_HEADER:
        continue
    names = (('query-id', 'iteration', 'corpus-id', 'score') if trec
             else BEIR_QRELS_HEADER)
    cells = reader.columns(n, line, names, None if trec else '\t')
    qid, did, grade = (cells[0], cells[2], cells[3]) if trec else cells
    if not re.fullmatch(r'[+-]?\d+', grade):
      reader.bad(n, f'score {grade!r} is not an integer')
    if did in qrels.get(qid, {}):
      reader.bad(n, f'query {qid!r} judges document {did!r} twice')
    qrels.setdefault(qid, {})[did] = int(grade)
  if not qrels:
    raise ValueError(f'{path}: no judgements')
  return qrels
