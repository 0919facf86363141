"""Sharded embedding files: round trip, bfloat16, errors, and resume after a
SIGKILL mid-run giving the same matrix as an uninterrupted build.

The encoder is a real text feature map, not a stub: character-trigram counts
hashed (crc32, stable across processes) into 64 signed buckets, then
L2-normalised. Run as a script (`python tests/test_indexing.py child ...`)
this file is the process that gets killed.
"""

import json
import os
import signal
import subprocess
import sys
import time
import zlib

import ml_dtypes
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)     # the child process runs this file directly

from retrieval.dense import indexing  # noqa: E402

DIM = 64


def trigram_encoder(texts, delay=0.0):
  out = np.zeros((len(texts), DIM), np.float32)
  for i, text in enumerate(texts):
    padded = f'  {text.lower()}  '
    for j in range(len(padded) - 2):
      h = zlib.crc32(padded[j:j + 3].encode('utf-8'))
      out[i, h % DIM] += 1.0 if (h >> 16) & 1 else -1.0
  norms = np.linalg.norm(out, axis=1, keepdims=True)
  time.sleep(delay)
  return out / np.maximum(norms, 1e-6)


@pytest.fixture(scope='module')
def corpus():
  """FLORES English (1,012 sentences), else this repository's own prose."""
  from retrieval import datasets  # pylint: disable=import-outside-toplevel
  if datasets.available('flores'):
    texts = list(datasets.flores_sentences('eng_Latn'))
  else:
    texts = []
    results = sorted(os.listdir(os.path.join(REPO, 'docs', 'results')))
    for name in ('README.md', 'BUILD_NOTES.md',
                 *(os.path.join('docs', 'results', n) for n in results)):
      with open(os.path.join(REPO, name), encoding='utf-8') as f:
        texts += [l.strip() for l in f if len(l.strip()) > 20]
  assert len(texts) > 400
  return texts, [f'doc:{i + 1}' for i in range(len(texts))]


def test_round_trip_float32_and_bfloat16(tmp_path, corpus):
  texts, ids = corpus
  n = len(texts)
  want = trigram_encoder(texts)
  assert len(np.unique(want.round(5), axis=0)) > 0.95 * n  # features differ
  m = indexing.build_index(trigram_encoder, texts, ids, str(tmp_path / 'f'),
                           shard_size=300, batch_size=64, progress=False)
  assert m['num_shards'] == -(-n // 300) and m['dim'] == DIM and m['complete']
  emb, got_ids = indexing.load_index(str(tmp_path / 'f'))
  np.testing.assert_array_equal(emb, want)
  assert got_ids == ids and emb.dtype == np.float32
  indexing.build_index(trigram_encoder, texts, ids, str(tmp_path / 'b'),
                       shard_size=300, dtype='bfloat16', progress=False)
  emb16, _ = indexing.load_index(str(tmp_path / 'b'))
  assert emb16.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(emb16, want.astype(ml_dtypes.bfloat16))
  assert not np.array_equal(emb16.astype(np.float32), want)
  last = m['num_shards'] - 1
  raw = np.load(tmp_path / 'b' / indexing.shard_name(last))
  assert raw.dtype == np.uint16 and raw.shape == (n - 300 * last, DIM)


def test_mismatched_rebuild_and_bad_encoders_are_errors(tmp_path, corpus):
  texts, ids = corpus
  texts, ids = texts[:50], ids[:50]
  d = str(tmp_path / 'i')
  indexing.build_index(trigram_encoder, texts, ids, d, shard_size=20,
                       progress=False)
  with pytest.raises(ValueError, match='fingerprint'):
    indexing.build_index(trigram_encoder, texts[::-1], ids, d, shard_size=20,
                         progress=False)
  with pytest.raises(ValueError, match="dtype is 'float32' but this build "
                                       "has 'bfloat16'"):
    indexing.build_index(trigram_encoder, texts, ids, d, shard_size=20,
                         dtype='bfloat16', progress=False)
  calls = []

  def bad_second_batch(t):
    calls.append(len(t))
    return np.zeros((len(t), 2, 2)) if len(calls) == 2 else trigram_encoder(t)
  with pytest.raises(ValueError, match=r'encode_fn on rows 16..31: returned '
                                       r'shape \(16, 2, 2\)'):
    indexing.build_index(bad_second_batch, texts, ids, str(tmp_path / 'j'),
                         batch_size=16, progress=False)

  def nan_at_row_3(t):
    out = trigram_encoder(t)
    out[3 % len(t)] = np.nan
    return out
  with pytest.raises(ValueError, match='non-finite embedding for row 3'):
    indexing.build_index(nan_at_row_3, texts, ids, str(tmp_path / 'k'),
                         progress=False)
  with pytest.raises(ValueError, match='duplicates'):
    indexing.build_index(trigram_encoder, ['a', 'b'], ['x', 'x'],
                         str(tmp_path / 'l'), progress=False)


def test_resume_after_sigkill_equals_uninterrupted_build(tmp_path, corpus):
  texts, ids = corpus
  shard = 64                                     # 16 shards for 1,012 docs
  total = -(-len(texts) // shard)
  (tmp_path / 'texts.json').write_text(json.dumps([texts, ids]))
  killed = tmp_path / 'killed'
  child = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), 'child',
       str(tmp_path / 'texts.json'), str(killed), str(shard)],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 60
    while not (killed / indexing.shard_name(3)).exists():
      assert child.poll() is None, child.stderr.read().decode()
      assert time.time() < deadline, 'the child wrote no shards in 60 s'
      time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
  finally:
    if child.poll() is None:
      child.kill()
  assert child.returncode == -signal.SIGKILL
  done = sorted(p for p in os.listdir(killed) if p.startswith('shard-'))
  assert 4 <= len(done) < total, done          # killed mid-run
  assert done == [indexing.shard_name(i) for i in range(len(done))]
  with pytest.raises(ValueError, match='incomplete'):
    indexing.load_index(str(killed))
  encoded = []

  def counting(batch):
    encoded.extend(batch)
    return trigram_encoder(batch)
  indexing.build_index(counting, texts, ids, str(killed), shard_size=shard,
                       batch_size=16, progress=False)
  # Resumed at the first missing shard: only the rest was encoded.
  assert encoded == texts[len(done) * shard:]
  assert not [p for p in os.listdir(killed) if p.startswith('.tmp-')]
  resumed, resumed_ids = indexing.load_index(str(killed))
  indexing.build_index(trigram_encoder, texts, ids, str(tmp_path / 'whole'),
                       shard_size=shard, batch_size=16, progress=False)
  whole, _ = indexing.load_index(str(tmp_path / 'whole'))
  np.testing.assert_array_equal(resumed, whole)
  assert resumed_ids == ids


def test_end_to_end_bitext_mining_on_flores(tmp_path, corpus, mesh_data8):
  """Index -> load -> shard on 8 devices (bf16) -> search, with and without
  CSLS -> pytrec_eval: French FLORES sentences find their English lines."""
  # pylint: disable=import-outside-toplevel
  from retrieval import datasets
  from retrieval.search import hubness
  from retrieval.search import ir_metrics
  from retrieval.search import exact as search
  if not datasets.available('flores'):
    pytest.skip('no FLORES-200 devtest under $ROSETTA_DATA_DIR')
  mining = datasets.flores_mining('fra_Latn')
  assert list(mining.docs) == corpus[0]
  indexing.build_index(trigram_encoder, mining.docs, mining.doc_ids,
                       str(tmp_path / 'eng'), shard_size=256,
                       dtype='bfloat16', progress=False)
  emb, doc_ids = indexing.load_index(str(tmp_path / 'eng'))
  corpus_on_mesh = search.shard_corpus(emb, mesh_data8)
  queries = trigram_encoder(list(mining.queries))
  out = {}
  for name, corr in (('plain', None),
                     ('csls', hubness.csls(corpus_on_mesh, queries, k=10))):
    r = search.search(corpus_on_mesh, queries, k=10, correction=corr)
    run = ir_metrics.run_from_topk(r.indices, mining.query_ids, doc_ids)
    out[name] = (ir_metrics.evaluate(run, mining.qrels, ks=(1, 10)),
                 hubness.skewness(hubness.k_occurrence(r.indices, 1012)))
  # Trigram hashing is a weak cross-lingual encoder, but far above chance
  # (1/1012), and CSLS lowers hubness without losing accuracy.
  assert out['plain'][0]['Hits@1'] > 0.05
  assert out['csls'][0]['Hits@1'] >= out['plain'][0]['Hits@1']
  assert out['csls'][1] < 0.8 * out['plain'][1]


def _child(texts_json, directory, shard_size):
  with open(texts_json, encoding='utf-8') as f:
    texts, ids = json.load(f)
  indexing.build_index(lambda t: trigram_encoder(t, delay=0.1), texts, ids,
                       directory, shard_size=int(shard_size), batch_size=16,
                       progress=False)


if __name__ == '__main__' and sys.argv[1:2] == ['child']:
  _child(*sys.argv[2:])
