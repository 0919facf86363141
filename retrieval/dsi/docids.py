"""Document identifiers for generative retrieval (DSI, Tay et al. 2022).

A `DocidMapping` maps each document key to a docid string; a
`DocidVocabulary` (a seqio Vocabulary) turns docid strings into the target
tokens the model decodes, and back. Three kinds:

  atomic    one new output token per document: doc i -> '17' -> [base + 17]
            (base = the text vocabulary's size; the model's vocabulary grows
            by the number of documents, padded: `padded_vocab_size`).
  naive     the document number as text: '17' -> text_vocabulary.encode('17')
            (bytes: [52, 58]; SentencePiece: whatever pieces it makes);
            the number is the position, or one given (Cranfield's own).
  semantic  hierarchical k-means over given document embeddings: the digits
            of the cluster path, then the position inside the leaf cluster:
            '3-1-4' -> [base + 3, base + 1, base + 4]. One new token per
            digit value (max(k, c) of them), shared across levels.

Semantic ids (DSI section 3.2): cluster the documents into k clusters; a
cluster with more than c documents is clustered again, recursively; a
cluster with <= c documents is a leaf and its documents get their position
in it (0..c-1) as the last digit. Ids are prefix-free and unique; documents
sharing a prefix sit in the same sub-cluster. k-means is NumPy (k-means++
seeding, Lloyd), seeded by (seed, cluster path): the same ids on every run.
Digits get their own tokens instead of the text vocabulary's digits
because SentencePiece may merge '31' into one piece, and leaf positions
can exceed 9 (DSI uses c = 100).

Every mapping checks that its ids, and the token sequences of a
`DocidVocabulary`, are unique, and raises naming the two documents.

Saved mapping (JSON, written atomically)::

    {"format": "rosetta.docids", "format_version": 1, "kind": "semantic",
     "params": {"k": 10, "c": 100, "seed": 0, "iterations": 50},
     "num_docs": 3, "ids": {"doc-a": "0-0", "doc-b": "0-1", "doc-c": "1-0"}}

Example::

    m = semantic_ids(keys, embeddings, k=10, c=100, seed=0)
    m.save('runs/dsi/docids.json');  m = DocidMapping.load(...)
    vocab = DocidVocabulary(m, seqio.ByteVocabulary())
    vocab.encode(m.ids['doc-b'])   # [259, 260]
    trie = Trie.from_sequences(vocab.token_sequences())   # retrieval.dsi.trie
    T5Config(vocab_size=padded_vocab_size(vocab.vocab_size))
"""

from __future__ import annotations

import dataclasses
import json
import re
import zlib
from typing import Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf
from rosetta.run import files

FORMAT = 'rosetta.docids'
FORMAT_VERSION = 1
KINDS = ('atomic', 'naive', 'semantic')
_NUMBER = re.compile(r'(0|[1-9][0-9]*)\Z')
_SEMANTIC = re.compile(r'(0|[1-9][0-9]*)(-(0|[1-9][0-9]*))*\Z')


def padded_vocab_size(size: int, multiple: int = 128) -> int:
  """Model vocabulary size: `size` rounded up to a multiple (TPU lanes and
  mesh sharding of the vocab axis): 259 + 240 docs -> 512."""
  return -(-size // multiple) * multiple


def _unique_or_raise(values: Sequence, keys: Sequence[str], what: str,
                     where: str = 'DocidMapping'):
  seen: dict = {}
  for key, value in zip(keys, values):
    if value in seen:
      raise ValueError(f'{where}: {what} {value!r} is given to both '
                       f'documents {seen[value]!r} and {key!r}; docids must '
                       'be unique')
    seen[value] = key


@dataclasses.dataclass(frozen=True)
class DocidMapping:
  """Document key -> docid string (document order kept), with its kind and
  the parameters that made it."""
  kind: str
  ids: Mapping[str, str]
  params: Mapping[str, object] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'DocidMapping.kind must be one of {KINDS}, got '
                       f'{self.kind!r}')
    if not self.ids:
      raise ValueError('DocidMapping.ids is empty')
    pattern = _SEMANTIC if self.kind == 'semantic' else _NUMBER
    for key, docid in self.ids.items():
      if not isinstance(key, str) or not isinstance(docid, str):
        raise ValueError(f'DocidMapping.ids: keys and ids must be strings, '
                         f'got {key!r}: {docid!r}')
      if not pattern.match(docid):
        raise ValueError(f'DocidMapping.ids[{key!r}] = {docid!r} is not a '
                         f'{self.kind} docid')
    _unique_or_raise(list(self.ids.values()), list(self.ids), 'docid')

  @property
  def docs(self) -> list[str]:
    return list(self.ids)

  def inverse(self) -> dict[str, str]:
    """docid -> document key."""
    return {v: k for k, v in self.ids.items()}

  def save(self, path: str) -> str:
    """Writes the versioned JSON atomically (temp file + rename)."""
    record = dict(format=FORMAT, format_version=FORMAT_VERSION,
                  kind=self.kind, params=dict(self.params),
                  num_docs=len(self.ids), ids=dict(self.ids))
    return files.atomic_write_json(path, record, ensure_ascii=False)

  @classmethod
  def load(cls, path: str) -> 'DocidMapping':
    """Reads a saved mapping; a wrong format, version or field raises
    naming the file and the field."""
    with open(path, encoding='utf-8') as f:
      try:
        record = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not JSON ({e})') from None

    def field(name, kind):
      if not isinstance(record, dict) or name not in record:
        raise ValueError(f'{path}: missing field {name!r}')
      if not isinstance(record[name], kind):
        raise ValueError(f'{path}: field {name!r} must be a '
                         f'{kind.__name__}, got {record[name]!r:.60}')
      return record[name]

    if field('format', str) != FORMAT:
      raise ValueError(f'{path}: field "format" is {record["format"]!r}, '
                       f'not {FORMAT!r}')
    version = field('format_version', int)
    if version != FORMAT_VERSION:
      raise ValueError(f'{path}: field "format_version" is {version}; this '
                       f'Rosetta reads version {FORMAT_VERSION}')
    ids = field('ids', dict)
    if field('num_docs', int) != len(ids):
      raise ValueError(f'{path}: field "num_docs" is {record["num_docs"]} '
                       f'but field "ids" has {len(ids)} entries')
    try:
      return cls(kind=field('kind', str), ids=ids,
                 params=field('params', dict))
    except ValueError as e:
      raise ValueError(f'{path}: {e}') from None


# ------------------------------------------------------------- kinds ---


def _check_keys(doc_keys: Sequence[str]) -> list[str]:
  keys = [str(k) for k in doc_keys]
  if len(set(keys)) != len(keys):
    _unique_or_raise(keys, list(range(len(keys))), 'document key', 'docids')
  return keys


def atomic_ids(doc_keys: Sequence[str]) -> DocidMapping:
  """Document i (in the given order) -> '{i}', decoded as ONE new token."""
  keys = _check_keys(doc_keys)
  return DocidMapping('atomic', {k: str(i) for i, k in enumerate(keys)})


def naive_ids(doc_keys: Sequence[str],
              numbers: Sequence[int] | None = None) -> DocidMapping:
  """Document i -> str(numbers[i]) (default: i), decoded as text with the
  text vocabulary; e.g. a corpus's own document numbers."""
  keys = _check_keys(doc_keys)
  numbers = range(len(keys)) if numbers is None else numbers
  if len(numbers) != len(keys):
    raise ValueError(f'naive_ids: {len(numbers)} numbers for {len(keys)} '
                     'documents')
  return DocidMapping('naive', {k: str(int(n)) for k, n in zip(keys, numbers)})


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator,
           iterations: int = 50) -> np.ndarray:
  """Lloyd's k-means with k-means++ seeding: (n, d) -> (n,) labels in
  [0, k). An emptied cluster restarts at the point farthest from its
  centre; stops when no label changes."""
  n = len(x)
  x = np.asarray(x, np.float64)
  sq = np.einsum('nd,nd->n', x, x)

  def dist(centres):
    d = sq[:, None] - 2 * x @ centres.T + np.einsum('kd,kd->k', centres,
                                                    centres)[None]
    return np.maximum(d, 0.0)

  centres = [x[rng.integers(n)]]
  closest = dist(np.stack(centres))[:, 0]
  for _ in range(1, k):
    total = closest.sum()
    i = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
    centres.append(x[i])
    closest = np.minimum(closest, dist(x[i][None])[:, 0])
  centres = np.stack(centres)
  labels = np.full(n, -1)
  for _ in range(iterations):
    d = dist(centres)
    new = d.argmin(1)
    if np.array_equal(new, labels):
      break
    labels = new
    for j in range(k):
      members = labels == j
      if members.any():
        centres[j] = x[members].mean(0)
      else:
        far = int(d[np.arange(n), labels].argmax())
        centres[j], labels[far] = x[far], j
  return labels


def _semantic(x, index, path, k, c, seed, iterations, out):
  if len(index) <= c:
    for pos, i in enumerate(index):
      out[i] = path + (pos,)
    return
  rng = np.random.default_rng([seed, len(path), *path])
  labels = kmeans(x[index], k, rng, iterations)
  groups = [index[labels == j] for j in range(k) if (labels == j).any()]
  if len(groups) == 1:  # identical embeddings: split by order to progress
    groups = [g for g in np.array_split(index, k) if len(g)]
  for digit, group in enumerate(groups):
    _semantic(x, group, path + (digit,), k, c, seed, iterations, out)


def semantic_ids(doc_keys: Sequence[str], embeddings: np.ndarray, *,
                 k: int = 10, c: int = 100, seed: int = 0,
                 iterations: int = 50) -> DocidMapping:
  """Hierarchical k-means ids (see the module doc) from (n, d) embeddings
  whose row i belongs to doc_keys[i]. Deterministic in (embeddings, k, c,
  seed, iterations)."""
  keys = _check_keys(doc_keys)
  x = np.asarray(embeddings)
  if x.ndim != 2 or len(x) != len(keys):
    raise ValueError(f'semantic_ids: embeddings must be (num_docs='
                     f'{len(keys)}, dim), got {x.shape}')
  if not np.isfinite(x).all():
    raise ValueError('semantic_ids: embeddings contain NaN or inf')
  if k < 2 or c < 1:
    raise ValueError(f'semantic_ids: need k >= 2 and c >= 1, got k={k}, '
                     f'c={c}')
  out: list = [None] * len(keys)
  _semantic(x, np.arange(len(keys)), (), k, c, seed, iterations, out)
  ids = {key: '-'.join(map(str, p)) for key, p in zip(keys, out)}
  return DocidMapping('semantic', ids, dict(k=k, c=c, seed=seed,
                                            iterations=iterations))


def lexical_embeddings(texts: Sequence[str], dim: int = 256,
                       seed: int = 0, buckets: int = 1 << 18) -> np.ndarray:
  """Embeddings for semantic ids without a trained encoder: TF-IDF of
  lower-cased words hashed into `buckets` (CRC32, stable across runs),
  L2-normalised, then a seeded Gaussian random projection to `dim`
  (distances are kept, Johnson-Lindenstrauss). (n, dim) float32."""
  rows = []
  for text in texts:
    words = re.findall(r'\w+', text.lower())
    ids, counts = np.unique([zlib.crc32(w.encode()) % buckets
                             for w in words] or [0], return_counts=True)
    rows.append((ids, counts if words else counts * 0))
  df = np.zeros(buckets)
  for ids, counts in rows:
    df[ids[counts > 0]] += 1
  idf = np.log((1 + len(rows)) / (1 + df)) + 1
  proj = {}
  out = np.zeros((len(rows), dim), np.float32)
  for i, (ids, counts) in enumerate(rows):
    w = counts * idf[ids]
    norm = np.linalg.norm(w)
    if norm == 0:
      continue
    for b, x in zip(ids, w / norm):
      if b not in proj:  # only the buckets in use get a projection row
        proj[b] = np.random.default_rng([seed, int(b)]).standard_normal(dim)
      out[i] += x * proj[b]
  return out / np.sqrt(dim)


# ------------------------------------------------------------ tokens ---


class DocidVocabulary(seqio.Vocabulary):
  """seqio Vocabulary of docid strings: encode a docid to its target
  tokens, decode tokens to a docid ('' for a sequence that is no docid).

  `vocab_size` is the text vocabulary's plus the new tokens (atomic: one
  per document; semantic: one per digit value); the model needs at least
  that many outputs. EOS and PAD are the text vocabulary's.
  """

  def __init__(self, mapping: DocidMapping,
               text_vocabulary: seqio.Vocabulary):
    super().__init__(extra_ids=0)
    self.mapping, self.text_vocabulary = mapping, text_vocabulary
    self.base = text_vocabulary.vocab_size
    self._docids = list(mapping.ids.values())
    seqs = [tuple(self._tokens(d)) for d in self._docids]
    _unique_or_raise(seqs, mapping.docs, 'token sequence',
                     f'DocidVocabulary({mapping.kind})')
    specials = {0, text_vocabulary.eos_id}
    for doc, seq in zip(mapping.docs, seqs):
      if not seq or specials & set(seq):
        raise ValueError(f'DocidVocabulary: docid of {doc!r} tokenises to '
                         f'{list(seq)} (empty, or PAD/EOS inside)')
    self._seqs = seqs
    self._by_tokens = dict(zip(seqs, self._docids))
    self._row = {d: i for i, d in enumerate(self._docids)}
    self._size = max(max(s) for s in seqs) + 1 if seqs else self.base
    self._size = max(self._size, self.base)
    self._table = None

  def _tokens(self, docid: str) -> list[int]:
    if self.mapping.kind == 'atomic':
      return [self.base + int(docid)]
    if self.mapping.kind == 'semantic':
      return [self.base + int(d) for d in docid.split('-')]
    return list(self.text_vocabulary.encode(docid))

  def token_sequences(self) -> list[tuple[int, ...]]:
    """Token ids of every docid, in document order (for `Trie`)."""
    return list(self._seqs)

  @property
  def eos_id(self):
    return self.text_vocabulary.eos_id

  @property
  def unk_id(self):
    return None  # ids >= base are docid tokens, not unknown pieces

  @property
  def _base_vocab_size(self):
    return self._size

  def _encode(self, s: str):
    if s not in self._row:
      raise ValueError(f'DocidVocabulary: {s!r} is not a docid of this '
                       f'{self.mapping.kind} mapping')
    return list(self._seqs[self._row[s]])

  def _decode(self, ids):
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    while ids and ids[-1] == 0:
      ids.pop()
    return self._by_tokens.get(tuple(ids), '')

  def _encode_tf(self, s):
    if self._table is None:
      # Lazily (most users never tokenise in TF), but eagerly: the first
      # call may be inside a tf.data trace, and the table outlives it.
      with tf.init_scope():
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self._docids),
                tf.range(len(self._docids), dtype=tf.int64)), -1)
        self._ragged = tf.ragged.constant([list(q) for q in self._seqs],
                                          dtype=tf.int32)
    row = self._table.lookup(s)
    check = tf.debugging.Assert(tf.reduce_all(row >= 0), [
        'DocidVocabulary: not a docid of this mapping:', s])
    with tf.control_dependencies([check]):
      return tf.gather(self._ragged, tf.identity(row))

  def _decode_tf(self, ids):
    def fn(x):
      x = x.numpy()
      flat = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
      out = [self._decode(r).encode('utf-8') for r in flat]
      return np.array(out, dtype=object).reshape(x.shape[:-1])
    return tf.py_function(fn, [ids], tf.string)

  def __eq__(self, other):
    return (isinstance(other, DocidVocabulary) and
            self.mapping == other.mapping and
            self.text_vocabulary == other.text_vocabulary)

  def __hash__(self):
    return hash((self.mapping.kind, len(self._docids), self.base))
