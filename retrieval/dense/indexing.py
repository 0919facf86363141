"""Encode a corpus into sharded embedding files; restartable after a kill.

Layout of an index directory::

    manifest.json        what is being built: corpus fingerprint, shard size,
                         dtype, encoder name; `complete` once every shard is
    doc_ids.json         the document ids, row order
    shard-00000.npy      rows [0, shard_size), float32 or bfloat16 (stored as
    shard-00001.npy      uint16 bit patterns: .npy has no bfloat16 type)
    ...

Every file is written to a temporary name in the directory and moved into
place with `os.replace`, so a file that exists is whole. A run killed at any
moment (even SIGKILL) is resumed by calling `build_index` again with the
same arguments: it checks the manifest against the corpus and the
arguments, keeps the shards already there and encodes from the first
missing one. A different corpus, shard size, dtype or encoder name in the
same directory is an error, never a silent mix.

    build_index(encode_fn, texts, doc_ids, 'runs/index', shard_size=4096)
    emb, ids = load_index('runs/index')        # [n, d] array, list of ids

`encode_fn(texts: list[str]) -> array [len(texts), d]` is any callable
(a dual encoder, a TF-IDF projection...); its output is checked (shape,
finite values, a constant d) and the error names the failing rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Sequence

import ml_dtypes
import numpy as np
from tqdm import tqdm
from rosetta.run import files

FORMAT = 'rosetta-embedding-index/1'
MANIFEST = 'manifest.json'
DOC_IDS = 'doc_ids.json'
_DTYPES = ('float32', 'bfloat16')

EncodeFn = Callable[[list[str]], np.ndarray]


def atomic_write(path: str, write: Callable) -> None:
  """Writes via `write(fileobj)` through `rosetta.run.files.atomic_open`."""
  with files.atomic_open(path, 'wb') as f:
    write(f)


def _write_json(path: str, obj) -> None:
  atomic_write(path, lambda f: f.write(
      json.dumps(obj, indent=1, ensure_ascii=False).encode('utf-8')))


def shard_name(i: int) -> str:
  return f'shard-{i:05d}.npy'


def corpus_fingerprint(texts: Sequence[str], doc_ids: Sequence[str]) -> str:
  """sha256 over ids and texts: a resumed run must see the same corpus."""
  h = hashlib.sha256()
  for doc_id, text in zip(doc_ids, texts):
    for part in (doc_id, text):
      b = part.encode('utf-8')
      h.update(len(b).to_bytes(8, 'little'))
      h.update(b)
  return h.hexdigest()


def _read_manifest(directory: str) -> dict | None:
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}: not valid JSON ({e.msg})') from None
  if manifest.get('format') != FORMAT:
    raise ValueError(f'{path}: format {manifest.get("format")!r}, expected '
                     f'{FORMAT!r}')
  return manifest


def checked_embeddings(out, start: int, rows: int, dim: int | None,
                       source: str = 'encode_fn') -> np.ndarray:
  """`out` (an encoder's answer for corpus rows start..start+rows-1) as
  float32 [rows, dim]; a wrong shape, another dimension than earlier
  batches' or a non-finite row is an error naming the rows."""
  out = np.asarray(out)
  where = f'{source} on rows {start}..{start + rows - 1}'
  if out.ndim != 2 or out.shape[0] != rows:
    raise ValueError(f'{where}: returned shape {out.shape}, expected '
                     f'({rows}, d)')
  if dim is not None and out.shape[1] != dim:
    raise ValueError(f'{where}: returned dimension {out.shape[1]}, earlier '
                     f'batches had {dim}')
  out = out.astype(np.float32)
  finite = np.isfinite(out).all(axis=1)
  if not finite.all():
    raise ValueError(f'{where}: non-finite embedding for row '
                     f'{start + int(np.argmin(finite))}')
  return out


def _encode(encode_fn: EncodeFn, texts: list[str], start: int,
            dim: int | None) -> np.ndarray:
  return checked_embeddings(encode_fn(list(texts)), start, len(texts), dim)


def _load_shard(path: str, dtype: str) -> np.ndarray:
  arr = np.load(path, allow_pickle=False)
  if dtype == 'bfloat16':
    if arr.dtype != np.uint16:
      raise ValueError(f'{path}: dtype {arr.dtype}, expected uint16 '
                       '(bfloat16 bit patterns)')
    return arr.view(ml_dtypes.bfloat16)
  if arr.dtype != np.float32:
    raise ValueError(f'{path}: dtype {arr.dtype}, expected float32')
  return arr


def build_index(encode_fn: EncodeFn, texts: Sequence[str],
                doc_ids: Sequence[str], directory: str, *,
                shard_size: int = 4096, batch_size: int = 64,
                dtype: str = 'float32', encoder_name: str = '',
                progress: bool = True) -> dict:
  """Encodes `texts` into `directory` (module docstring); returns the manifest.

  Resumes an interrupted build of the same corpus. `encoder_name` is
  recorded and compared on resume (set it to the checkpoint path/step so
  that two models never share an index).
  """
  if dtype not in _DTYPES:
    raise ValueError(f'dtype must be one of {_DTYPES}, got {dtype!r}')
  if shard_size < 1 or batch_size < 1:
    raise ValueError(f'shard_size ({shard_size}) and batch_size '
                     f'({batch_size}) must be >= 1')
  texts, doc_ids = list(texts), [str(d) for d in doc_ids]
  if len(texts) != len(doc_ids) or not texts:
    raise ValueError(f'{len(texts)} texts and {len(doc_ids)} doc ids: need '
                     'the same, non-zero number')
  if len(set(doc_ids)) != len(doc_ids):
    raise ValueError('doc_ids has duplicates')
  os.makedirs(directory, exist_ok=True)
  n = len(texts)
  num_shards = -(-n // shard_size)
  wanted = {'format': FORMAT, 'num_docs': n, 'shard_size': shard_size,
            'num_shards': num_shards, 'dtype': dtype,
            'encoder_name': encoder_name,
            'fingerprint': corpus_fingerprint(texts, doc_ids)}
  manifest = _read_manifest(directory)
  if manifest is not None:
    for key, value in wanted.items():
      if manifest.get(key) != value:
        raise ValueError(
            f'{os.path.join(directory, MANIFEST)}: {key} is '
            f'{manifest.get(key)!r} but this build has {value!r}; use a new '
            'directory (or delete this one) for a different index')
  else:
    _write_json(os.path.join(directory, DOC_IDS), doc_ids)
    manifest = dict(wanted, dim=None, complete=False)
    _write_json(os.path.join(directory, MANIFEST), manifest)
  if manifest.get('complete'):
    return manifest
  for name in os.listdir(directory):   # half-written files of a killed run
    if files.is_temporary(name):
      os.remove(os.path.join(directory, name))

  # Shards are written in order, so the first missing one is where the
  # killed run stopped; any shard present is whole (atomic rename).
  present = [os.path.exists(os.path.join(directory, shard_name(i)))
             for i in range(num_shards)]
  first = present.index(False) if False in present else num_shards
  dim = manifest.get('dim')
  if first and dim is None:
    dim = _load_shard(os.path.join(directory, shard_name(0)), dtype).shape[1]
  storage = np.uint16 if dtype == 'bfloat16' else np.float32
  bar = tqdm(total=n, initial=min(first * shard_size, n), unit='doc',
             desc='indexing', disable=not progress)
  for i in range(first, num_shards):
    if present[i]:
      bar.update(min(shard_size, n - i * shard_size))
      continue
    lo, hi = i * shard_size, min(n, (i + 1) * shard_size)
    parts = []
    for b in range(lo, hi, batch_size):
      emb = _encode(encode_fn, texts[b:min(hi, b + batch_size)], b, dim)
      dim = emb.shape[1]
      parts.append(emb)
      bar.update(emb.shape[0])
    shard = np.concatenate(parts)
    if dtype == 'bfloat16':
      shard = shard.astype(ml_dtypes.bfloat16).view(np.uint16)
    shard = np.ascontiguousarray(shard, dtype=storage)
    atomic_write(os.path.join(directory, shard_name(i)),
                  lambda f, a=shard: np.save(f, a, allow_pickle=False))
  bar.close()
  manifest = dict(manifest, dim=dim, complete=True)
  _write_json(os.path.join(directory, MANIFEST), manifest)
  return manifest


def load_index(directory: str) -> tuple[np.ndarray, list[str]]:
  """The full [num_docs, d] matrix (float32 or bfloat16) and the doc ids."""
  manifest = _read_manifest(directory)
  mpath = os.path.join(directory, MANIFEST)
  if manifest is None:
    raise FileNotFoundError(f'{mpath}: no index manifest in {directory}')
  if not manifest.get('complete'):
    raise ValueError(f'{mpath}: the index is incomplete (a build was '
                     'interrupted): run build_index again to finish it')
  with open(os.path.join(directory, DOC_IDS), encoding='utf-8') as f:
    doc_ids = json.load(f)
  n, size = manifest['num_docs'], manifest['shard_size']
  if len(doc_ids) != n:
    raise ValueError(f'{directory}/{DOC_IDS}: {len(doc_ids)} ids, manifest '
                     f'says {n} documents')
  shards = []
  for i in range(manifest['num_shards']):
    path = os.path.join(directory, shard_name(i))
    arr = _load_shard(path, manifest['dtype'])
    rows = min(size, n - i * size)
    if arr.shape != (rows, manifest['dim']):
      raise ValueError(f'{path}: shape {arr.shape}, expected '
                       f'({rows}, {manifest["dim"]})')
    shards.append(arr)
  return np.concatenate(shards), doc_ids
