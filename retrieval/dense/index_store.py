"""The on-disk dense index of `rosetta index`: self-describing, sharded,
restartable after `kill -9`, built by one process or many.

Layout of an index directory::

    manifest.json     format, the model's identity (run dir, checkpoint
                      step, fingerprints of its parameters, config and
                      vocabulary), the corpus fingerprint, rows, dim, dtype,
                      shard size, passage settings; `complete` and every
                      shard's rows and sha256 once the build is done
    doc_ids.json      the document ids, in corpus order
    owner.npy         int32 per row: its document (only with passages)
    shard-00000.npy   rows [0, shard_size): float32, or bfloat16 stored as
    shard-00001.npy   uint16 bit patterns (.npy has no bfloat16)

Every file is written under a temporary name and moved into place
(`os.replace`), so a file that exists is whole. Shard i is encoded by
process i mod P; a re-run with the same model, corpus and settings skips
the shards present, and since a shard's batches always start at its first
row it holds the same bytes as in an uninterrupted build. Anything else
in the same directory (another model, corpus, shard size, dtype or
passage setting) is an error, never a silent mix.

    write(encode_fn, texts, doc_ids, 'runs/index', identity=identity)
    index = DenseIndex.open('runs/index')   # checks every shard's sha256
    corpus = index.corpus(mesh)             # rows placed on `mesh`; each
                                            # process reads only its rows
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Callable, Sequence

import jax
import ml_dtypes
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from retrieval.dense import indexing
from retrieval.search import exact
from rosetta.run import files

FORMAT = 'rosetta-dense-index/1'
MANIFEST, DOC_IDS, OWNER = 'manifest.json', 'doc_ids.json', 'owner.npy'
DTYPES = ('float32', 'bfloat16')
# Manifest fields a resumed build must match (identity of what is built).
_BUILD_KEYS = ('format', 'model', 'corpus_fingerprint', 'num_rows',
               'num_docs', 'shard_size', 'num_shards', 'dtype', 'passages')

EncodeFn = Callable[[list[str]], np.ndarray]


def _sha256_of_bytes(chunks) -> str:
  h = hashlib.sha256()
  for c in chunks:
    h.update(c)
  return h.hexdigest()


def file_sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return _sha256_of_bytes(iter(lambda: f.read(1 << 22), b''))


def model_fingerprint(params, config_text: str, vocabulary) -> dict:
  """sha256s that tell two models apart: every parameter (path, dtype,
  shape, bytes), the run's config.gin without its `model_dir` lines (a
  moved or copied run is the same model) and the vocabulary (a
  SentencePiece model's bytes, else its class and size)."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.asarray(jax.device_get(leaf))
    h.update(f'{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|'.encode())
    h.update(np.ascontiguousarray(a).tobytes())
  config = '\n'.join(line for line in config_text.splitlines()
                     if 'model_dir' not in line)
  sp_model = getattr(vocabulary, 'sp_model', None)
  vocab = sp_model if isinstance(sp_model, bytes) else (
      f'{type(vocabulary).__name__}:{getattr(vocabulary, "vocab_size", "")}'
      ).encode()
  return {'params': h.hexdigest(),
          'config': hashlib.sha256(config.encode()).hexdigest(),
          'vocabulary': hashlib.sha256(vocab).hexdigest()}


def same_model(a: dict, b: dict) -> bool:
  """Whether two `model` manifest entries name the same model (the
  fingerprints; run dir and step may differ for a copied run)."""
  return a.get('fingerprint') == b.get('fingerprint')


def _read_json(path: str, what: str):
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: missing ({what})')
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}: not valid JSON ({e.msg})') from None


def read_manifest(directory: str) -> dict:
  path = os.path.join(directory, MANIFEST)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'{directory}: no such index directory')
  manifest = _read_json(path, 'the index manifest; is this a `rosetta '
                        'index` output?')
  if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
    found = manifest.get('format') if isinstance(manifest, dict) else None
    raise ValueError(f'{path}: format {found!r}, expected {FORMAT!r}')
  return manifest


def _is_main() -> bool:
  return jax.process_index() == 0


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def _check_resume(directory: str, found: dict, wanted: dict) -> None:
  for key in _BUILD_KEYS:
    if found.get(key) != wanted[key]:
      what = ('another model' if key == 'model' else
              f'another {key.replace("_", " ")}')
      raise ValueError(
          f'{os.path.join(directory, MANIFEST)}: this index was started with '
          f'{what} ({key}: {found.get(key)!r}, this build: {wanted[key]!r}); '
          'use a new --output (or delete this one)')


def write(encode_fn: EncodeFn, texts: Sequence[str], doc_ids: Sequence[str],
          directory: str, *, identity: dict, owner: np.ndarray | None = None,
          passages: dict | None = None, shard_size: int = 4096,
          batch_size: int = 64, dtype: str = 'float32',
          progress: bool = True) -> dict:
  """Encodes `texts` (one per row) into `directory`; returns the manifest.

  identity: the `model` entry (run dir, step, fingerprint). owner: the
  document of each row when rows are passages (then `passages` holds the
  window settings), else rows are `doc_ids`. Every process calls this
  with the same arguments and encodes its own shards (module docstring);
  the shared directory must be visible to all of them.
  """
  if dtype not in DTYPES:
    raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
  if shard_size < 1 or batch_size < 1:
    raise ValueError(f'shard_size ({shard_size}) and batch_size '
                     f'({batch_size}) must be >= 1')
  texts, doc_ids = list(texts), [str(d) for d in doc_ids]
  if not texts:
    raise ValueError(f'{directory}: nothing to index (an empty corpus)')
  if owner is None and len(texts) != len(doc_ids):
    raise ValueError(f'{len(texts)} texts for {len(doc_ids)} document ids')
  if owner is not None and len(owner) != len(texts):
    raise ValueError(f'{len(owner)} owners for {len(texts)} passages')
  n = len(texts)
  row_ids = doc_ids if owner is None else [
      f'{doc_ids[o]}#{i}' for i, o in enumerate(owner)]
  wanted = {'format': FORMAT, 'model': identity,
            'corpus_fingerprint': indexing.corpus_fingerprint(texts,
                                                              row_ids),
            'num_rows': n, 'num_docs': len(doc_ids),
            'shard_size': shard_size, 'num_shards': -(-n // shard_size),
            'dtype': dtype, 'passages': passages}
  mpath = os.path.join(directory, MANIFEST)
  if _is_main():
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(mpath):
      _check_resume(directory, read_manifest(directory), wanted)
    else:
      files.atomic_write_json(os.path.join(directory, DOC_IDS), doc_ids)
      if owner is not None:
        indexing.atomic_write(os.path.join(directory, OWNER), lambda f: np.save(
            f, np.asarray(owner, np.int32), allow_pickle=False))
      files.atomic_write_json(mpath, dict(wanted, complete=False), indent=1)
    for name in os.listdir(directory):     # half-written files of a kill
      if files.is_temporary(name):
        os.remove(os.path.join(directory, name))
  _barrier('rosetta-index-start')
  manifest = read_manifest(directory)
  _check_resume(directory, manifest, wanted)
  if manifest.get('complete'):
    return manifest
  num_shards = wanted['num_shards']
  mine = range(jax.process_index(), num_shards, jax.process_count())
  todo = [i for i in mine if not os.path.exists(
      os.path.join(directory, indexing.shard_name(i)))]
  rows_of = lambda i: min(n, (i + 1) * shard_size) - i * shard_size
  bar = tqdm(total=sum(rows_of(i) for i in mine),
             initial=sum(rows_of(i) for i in mine if i not in todo),
             unit='doc', desc='index', disable=not progress)
  dim = None
  for i in todo:
    lo, hi = i * shard_size, i * shard_size + rows_of(i)
    parts = []
    for b in range(lo, hi, batch_size):
      emb = indexing.checked_embeddings(
          encode_fn(texts[b:min(hi, b + batch_size)]), b,
          min(hi, b + batch_size) - b, dim, source='the encoder')
      dim = emb.shape[1]
      parts.append(emb)
      bar.update(emb.shape[0])
    shard = np.concatenate(parts)
    if dtype == 'bfloat16':
      shard = shard.astype(ml_dtypes.bfloat16).view(np.uint16)
    indexing.atomic_write(
        os.path.join(directory, indexing.shard_name(i)),
        lambda f, a=np.ascontiguousarray(shard): np.save(
            f, a, allow_pickle=False))
  bar.close()
  _barrier('rosetta-index-shards')
  if _is_main():
    shards, dims = [], set()
    for i in range(num_shards):
      path = os.path.join(directory, indexing.shard_name(i))
      arr = _load_shard(path, dtype, (rows_of(i), None))
      dims.add(arr.shape[1])
      shards.append({'file': indexing.shard_name(i), 'rows': rows_of(i),
                     'sha256': file_sha256(path)})
    if len(dims) != 1:
      raise ValueError(f'{directory}: shards of different dimensions {dims}')
    files.atomic_write_json(mpath, dict(wanted, dim=dims.pop(),
                                        shards=shards, complete=True),
                            indent=1)
  _barrier('rosetta-index-done')
  return read_manifest(directory)


def _load_shard(path: str, dtype: str, shape: tuple, mmap: bool = False
                ) -> np.ndarray:
  """A shard as float32 or bfloat16; a missing, unreadable or misshapen
  file is an error naming it."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: missing shard (was the index copied '
                            'whole?)')
  try:
    arr = np.load(path, allow_pickle=False, mmap_mode='r' if mmap else None)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f'{path}: corrupt shard ({e})') from None
  storage = np.uint16 if dtype == 'bfloat16' else np.float32
  if (arr.dtype != storage or arr.ndim != 2 or arr.shape[0] != shape[0] or
      (shape[1] is not None and arr.shape[1] != shape[1])):
    raise ValueError(f'{path}: corrupt shard ({arr.dtype} {arr.shape}, '
                     f'expected {np.dtype(storage)} ({shape[0]}, '
                     f'{shape[1] if shape[1] is not None else "d"}))')
  return arr.view(ml_dtypes.bfloat16) if dtype == 'bfloat16' else arr


@dataclasses.dataclass(frozen=True, eq=False)
class DenseIndex:
  """A complete index directory, opened: manifest, ids, row owners."""
  directory: str
  manifest: dict
  doc_ids: tuple[str, ...]
  owner: np.ndarray | None          # int32 [num_rows] with passages

  @classmethod
  def open(cls, directory: str, verify: bool = True) -> 'DenseIndex':
    """Reads and checks the manifest, ids and (verify) every shard's
    sha256; an incomplete build, a missing or corrupt file is an error
    naming it."""
    m = read_manifest(directory)
    mpath = os.path.join(directory, MANIFEST)
    if not m.get('complete'):
      raise ValueError(f'{mpath}: the index is incomplete (its build was '
                       'interrupted): run the same `rosetta index` again to '
                       'finish it')
    doc_ids = _read_json(os.path.join(directory, DOC_IDS), 'document ids')
    if not isinstance(doc_ids, list) or len(doc_ids) != m['num_docs']:
      raise ValueError(f'{os.path.join(directory, DOC_IDS)}: '
                       f'{len(doc_ids) if isinstance(doc_ids, list) else 0} '
                       f'ids, the manifest says {m["num_docs"]} documents')
    owner = None
    if m.get('passages'):
      path = os.path.join(directory, OWNER)
      if not os.path.exists(path):
        raise FileNotFoundError(f'{path}: missing (passage owners)')
      owner = np.load(path, allow_pickle=False)
      if owner.shape != (m['num_rows'],):
        raise ValueError(f'{path}: shape {owner.shape}, expected '
                         f'({m["num_rows"]},)')
    for s in m['shards']:
      path = os.path.join(directory, s['file'])
      _load_shard(path, m['dtype'], (s['rows'], m['dim']), mmap=True)
      if verify and file_sha256(path) != s['sha256']:
        raise ValueError(f'{path}: corrupt shard (its sha256 differs from '
                         'the manifest\'s)')
    return cls(directory, m, tuple(doc_ids), owner)

  @property
  def num_rows(self) -> int:
    return self.manifest['num_rows']

  @property
  def dim(self) -> int:
    return self.manifest['dim']

  @property
  def model(self) -> dict:
    return self.manifest['model']

  def rows(self, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) (clipped to the index) read from the shards that
    hold them (memory-mapped: only these rows are read)."""
    size, m = self.manifest['shard_size'], self.manifest
    stop = min(stop, self.num_rows)
    parts = []
    for i in range(start // size, -(-stop // size) if stop > start else 0):
      s = m['shards'][i]
      arr = _load_shard(os.path.join(self.directory, s['file']), m['dtype'],
                        (s['rows'], m['dim']), mmap=True)
      lo = max(start, i * size) - i * size
      hi = min(stop, (i + 1) * size) - i * size
      parts.append(np.asarray(arr[lo:hi]))
    dtype = ml_dtypes.bfloat16 if m['dtype'] == 'bfloat16' else np.float32
    return (np.concatenate(parts) if parts
            else np.zeros((0, self.dim), dtype))

  def corpus(self, mesh=None, dtype: str | None = None,
             corpus_axes: Sequence[str] | None = None) -> exact.ShardedCorpus:
    """The rows on `mesh` (default one device) as a `ShardedCorpus`, split
    over `corpus_axes` (default all) and zero-padded like
    `exact.shard_corpus`; each process reads only the rows its devices
    hold. dtype: 'float32' or 'bfloat16' (default: the stored one)."""
    mesh = exact.single_device_mesh() if mesh is None else mesh
    axes = tuple(mesh.axis_names if corpus_axes is None else corpus_axes)
    shards = math.prod(mesh.shape[a] for a in axes)
    padded = -(-self.num_rows // shards) * shards
    target = np.dtype(ml_dtypes.bfloat16 if (dtype or self.manifest['dtype'])
                      == 'bfloat16' else np.float32)

    def block(idx):
      rows = idx[0]
      start, stop = rows.start or 0, padded if rows.stop is None else rows.stop
      got = self.rows(start, stop).astype(target)
      if got.shape[0] < stop - start:      # padding rows past the end
        got = np.concatenate([got, np.zeros((stop - start - got.shape[0],
                                             self.dim), target)])
      return got

    emb = jax.make_array_from_callback(
        (padded, self.dim), NamedSharding(mesh, P(axes, None)), block)
    return exact.ShardedCorpus(emb, self.num_rows, mesh, axes)
