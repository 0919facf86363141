"""Teacher outputs on disk, for distillation: scores and embeddings.

Teacher SCORES are a TREC run (`qid Q0 docid rank score tag`), read and
written by `retrieval.search.ir_metrics` (so `rosetta score` and `rosetta
fuse` read them too); `read_teacher_scores` adds the checks a teacher file
needs (UTF-8, finite scores, not empty) with the file and line named, and
`teacher_score(run, qid, docid)` a lookup whose error names the pair.

Teacher EMBEDDINGS are keyed by the text itself, so any task holding the
same text finds its vector without ids::

    <prefix>.npy        float32 (rows, dim), row i the vector of keys[i]
    <prefix>.keys.json  {"format": "rosetta-teacher-embeddings",
                         "version": 1, "teacher": "<name>", "kind":
                         "query" | "passage" | null, "dim": 384,
                         "rows": n, "vectors_sha1": "<sha1 of the array>",
                         "keys": ["<sha1 hex of the UTF-8 text>", ...]}

(one key per line). Each file is written atomically, the array first and
the keys file last: the keys file commits the pair, and its `vectors_sha1`
tells a reader that an array was replaced without its keys. A text given
twice is stored once (the first vector). Vectors must be finite: the pair
tasks mark a text missing from the file with NaN (`TextEmbeddings.lookup`
callers choose), so a stored NaN could not be told from a missing text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from rosetta.data import bad_input
from rosetta.run import files
from retrieval.search import ir_metrics

FORMAT = 'rosetta-teacher-embeddings'
VERSION = 1
KINDS = ('query', 'passage')
_SHA1_HEX = re.compile(r'[0-9a-f]{40}')


def text_key(text: str) -> str:
  """The key of a text in a teacher embeddings file: its UTF-8 SHA-1, hex."""
  if not isinstance(text, str):
    raise TypeError(f'text_key: expected a str, got {type(text).__name__}')
  return hashlib.sha1(text.encode('utf-8')).hexdigest()


def embedding_paths(prefix: str) -> tuple[str, str]:
  """(<prefix>.npy, <prefix>.keys.json)."""
  prefix = os.fspath(prefix)
  if prefix.endswith('.npy'):
    prefix = prefix[:-len('.npy')]
  elif prefix.endswith('.keys.json'):
    prefix = prefix[:-len('.keys.json')]
  return prefix + '.npy', prefix + '.keys.json'


def _vectors_digest(vectors: np.ndarray) -> str:
  return hashlib.sha1(np.ascontiguousarray(vectors).tobytes()).hexdigest()


def _line_of(text: str, needle: str) -> int:
  """1-based line of the first occurrence of `needle` in `text` (0 if none):
  errors about a JSON entry name the line the user can open."""
  at = text.find(needle)
  return 0 if at < 0 else text.count('\n', 0, at) + 1


@dataclasses.dataclass(frozen=True, eq=False)
class TextEmbeddings:
  """A teacher's vectors of texts, looked up by `text_key`.

      emb = TextEmbeddings.load('teacher/xquad_de')
      vectors, found = emb.lookup(['Wer schrieb ...?', 'unknown text'])
      # vectors (2, emb.dim) float32; found [True, False]; missing rows 0
  """
  teacher: str
  kind: str | None
  keys: tuple[str, ...]
  vectors: np.ndarray        # float32 (len(keys), dim)

  def __post_init__(self):
    if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.keys):
      raise ValueError(f'TextEmbeddings: {len(self.keys)} keys for vectors '
                       f'of shape {self.vectors.shape}')
    object.__setattr__(self, '_rows',
                       {k: i for i, k in enumerate(self.keys)})

  @property
  def dim(self) -> int:
    return int(self.vectors.shape[1])

  def __len__(self) -> int:
    return len(self.keys)

  def row(self, text: str) -> int:
    """Row of `text`, or -1."""
    return self._rows.get(text_key(text), -1)

  def __contains__(self, text: str) -> bool:
    return self.row(text) >= 0

  def lookup(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n, dim) float32, found (n,) bool); a text not in the file
    gets a zero row and found False."""
    if isinstance(texts, str):
      raise TypeError('lookup takes a list of texts, not one string')
    rows = np.asarray([self.row(t) for t in texts], np.int64)
    found = rows >= 0
    out = np.zeros((len(rows), self.dim), np.float32)
    out[found] = self.vectors[rows[found]]
    return out, found

  @classmethod
  def from_texts(cls, texts: Sequence[str], vectors, *, teacher: str,
                 kind: str | None = None) -> 'TextEmbeddings':
    """Keys of `texts` with their rows of `vectors`; a repeated text keeps
    its first row. Vectors must be finite."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
      raise ValueError(f'{len(texts)} texts for vectors of shape '
                       f'{vectors.shape}; expected ({len(texts)}, dim)')
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
      raise ValueError(f'the vector of text {int(bad[0])} '
                       f'({texts[bad[0]][:60]!r}) is not finite')
    _check_header_fields('TextEmbeddings', teacher, kind)
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
      first.setdefault(text_key(t), i)
    keep = np.fromiter(first.values(), np.int64, len(first))
    return cls(teacher, kind, tuple(first),
               np.ascontiguousarray(vectors[keep], np.float32))

  # ----------------------------------------------------------- files ---
  def save(self, prefix: str) -> str:
    """Writes <prefix>.npy then <prefix>.keys.json, each atomically;
    returns the prefix."""
    npy, keys_path = embedding_paths(prefix)
    with files.atomic_path(npy, suffix='.npy') as tmp:
      np.save(tmp, self.vectors)
    header = {'format': FORMAT, 'version': VERSION, 'teacher': self.teacher,
              'kind': self.kind, 'dim': self.dim, 'rows': len(self),
              'vectors_sha1': _vectors_digest(self.vectors)}
    # One key per line: a bad entry's error can name its line.
    text = (json.dumps(header)[:-1] + ',\n"keys": [\n' +
            ',\n'.join(json.dumps(k) for k in self.keys) + '\n]}\n')
    files.atomic_write_text(keys_path, text)
    return npy[:-len('.npy')]

  @classmethod
  def load(cls, prefix: str) -> 'TextEmbeddings':
    """Reads and checks a pair written by `save`; errors name the file (and
    the line of a bad key)."""
    npy, keys_path = embedding_paths(prefix)
    if not os.path.isfile(keys_path):
      raise FileNotFoundError(f'{keys_path}: no such teacher keys file (a '
                              f'teacher embeddings prefix names '
                              f'<prefix>.npy + <prefix>.keys.json)')
    with open(keys_path, 'rb') as f:
      text = bad_input.decode(keys_path, 0, f.read())
    try:
      meta = json.loads(text)
    except json.JSONDecodeError as e:
      raise bad_input.BadInputError(keys_path, e.lineno,
                                    f'not JSON: {e.msg}') from None
    if not isinstance(meta, dict):
      raise ValueError(f'{keys_path}: expected a JSON object, got '
                       f'{type(meta).__name__}')
    if meta.get('format') != FORMAT:
      raise ValueError(f'{keys_path}: "format" is {meta.get("format")!r}, '
                       f'not {FORMAT!r}: not a teacher embeddings keys file')
    if meta.get('version') != VERSION:
      raise ValueError(f'{keys_path}: "version" {meta.get("version")!r} is '
                       f'not supported (this reader knows {VERSION})')
    for field in ('teacher', 'dim', 'rows', 'keys', 'vectors_sha1'):
      if field not in meta:
        raise ValueError(f'{keys_path}: no {field!r} field')
    _check_header_fields(keys_path, meta['teacher'], meta.get('kind'))
    for field in ('dim', 'rows'):
      value = meta[field]
      if isinstance(value, bool) or not isinstance(value, int) or value < (
          1 if field == 'dim' else 0):
        raise ValueError(f'{keys_path}: "{field}" must be a '
                         f'{"positive" if field == "dim" else "non-negative"}'
                         f' integer, got {value!r}')
    keys = meta['keys']
    if not isinstance(keys, list):
      raise ValueError(f'{keys_path}: "keys" must be a list of SHA-1 hex '
                       'digests')
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
      if not isinstance(k, str) or not _SHA1_HEX.fullmatch(k):
        raise bad_input.BadInputError(
            keys_path, _line_of(text, json.dumps(k)),
            f'keys[{i}] = {k!r} is not a SHA-1 hex digest (40 lowercase hex '
            'digits of the UTF-8 text)')
      if k in seen:
        at = text.find(json.dumps(k), text.find(json.dumps(k)) + 1)
        raise bad_input.BadInputError(
            keys_path, text.count('\n', 0, at) + 1,
            f'keys[{i}] repeats keys[{seen[k]}] ({k})')
      seen[k] = i
    if len(keys) != meta['rows']:
      raise ValueError(f'{keys_path}: "rows" is {meta["rows"]} but there are '
                       f'{len(keys)} keys')
    if not os.path.isfile(npy):
      raise FileNotFoundError(f'{npy}: no such teacher vectors file (named '
                              f'by {keys_path})')
    try:
      vectors = np.load(npy, allow_pickle=False)
    except (ValueError, OSError) as e:
      raise ValueError(f'{npy}: not a .npy array ({e})') from None
    want = (meta['rows'], meta['dim'])
    if vectors.dtype != np.float32 or vectors.shape != want:
      raise ValueError(f'{npy}: {vectors.dtype} {vectors.shape}; {keys_path} '
                       f'expects float32 {want}')
    if _vectors_digest(vectors) != meta['vectors_sha1']:
      raise ValueError(f'{npy}: its contents do not match {keys_path} '
                       '("vectors_sha1"): one file was replaced without the '
                       'other; write both again')
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
      raise ValueError(f'{npy}: row {int(bad[0])} is not finite')
    return cls(meta['teacher'], meta.get('kind'), tuple(keys), vectors)


def _check_header_fields(where: str, teacher, kind) -> None:
  if not isinstance(teacher, str) or not teacher.strip():
    raise ValueError(f'{where}: "teacher" must name the teacher (a '
                     f'non-empty string), got {teacher!r}')
  if kind is not None and kind not in KINDS:
    raise ValueError(f'{where}: "kind" must be one of {KINDS} or null, got '
                     f'{kind!r}')


def write_text_embeddings(prefix: str, texts: Sequence[str], vectors, *,
                          teacher: str, kind: str | None = None
                          ) -> TextEmbeddings:
  """`TextEmbeddings.from_texts(...)` saved at `prefix`; returns it."""
  emb = TextEmbeddings.from_texts(texts, vectors, teacher=teacher, kind=kind)
  emb.save(prefix)
  return emb


# ---------------------------------------------------------------- scores ---

Run = Mapping[str, Mapping[str, float]]


def read_teacher_scores(path: str) -> dict[str, dict[str, float]]:
  """A teacher's TREC run {qid: {docid: score}} (`ir_metrics.read_run`),
  checked: the file exists and is UTF-8, scores are finite, it is not
  empty. Errors name the file and line."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such teacher run file')
  try:
    run = ir_metrics.read_run(path)
  except UnicodeDecodeError:
    with open(path, 'rb') as f:
      for n, raw in enumerate(f, start=1):
        bad_input.decode(path, n, raw)      # raises, naming the line
    raise
  if not run:
    raise ValueError(f'{path}: an empty teacher run')
  for qid, docs in run.items():
    for doc, score in docs.items():
      if not math.isfinite(score):
        raise bad_input.BadInputError(
            path, _run_line(path, qid, doc),
            f'score {score} of query {qid!r} document {doc!r} is not finite')
  return run


def _run_line(path: str, qid: str, doc: str) -> int:
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, start=1):
      parts = line.split()
      if len(parts) == 6 and parts[0] == qid and parts[2] == doc:
        return n
  return 0


def write_teacher_scores(path: str, run: Run, tag: str = 'teacher') -> None:
  """A teacher's scores as a TREC run, atomically (`ir_metrics.write_run`)."""
  ir_metrics.write_run(path, run, tag=tag)


def teacher_score(run: Run, qid: str, docid: str) -> float:
  """The teacher's score of (qid, docid); a KeyError names the missing pair."""
  docs = run.get(qid)
  if docs is None:
    raise KeyError(f'the teacher run has no query {qid!r}')
  if docid not in docs:
    raise KeyError(f'the teacher run has no score for query {qid!r} and '
                   f'document {docid!r} (it scores {len(docs)} documents of '
                   'that query)')
  return float(docs[docid])


def teacher_scores(run: Run, qid: str, docids: Iterable[str]) -> np.ndarray:
  """float32 scores of `docids` for `qid` (a list's teacher scores)."""
  return np.asarray([teacher_score(run, qid, d) for d in docids], np.float32)
