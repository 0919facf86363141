"""`rosetta search` over a `rosetta index`: runs equal to the Python API's
(exact, bfloat16, verified, hubness), the model check, and bad inputs."""

import json
import os
import shutil

import numpy as np
import pytest

from retrieval import collection_files
from retrieval.dense import index_store
from retrieval.dsi import embeddings
from retrieval.search import exact, hubness, ir_metrics, verified
from tests.retrieval_cli_helpers import rosetta, trained_run, write_beir


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('search_cmd')
  coll, model = trained_run(tmp_path_factory)
  code, _, err = rosetta('index', '--model_dir', model, '--corpus',
                         f'beir:{coll}', '--output', root / 'idx',
                         '--shard_size', '20', '--no_progress')
  assert code == 0, err
  return root, coll, model


def python_api(model, coll, k, mode='exact', correction=None):
  """The run of the same search through the Python API."""
  run = embeddings.load_dual_encoder(model)
  docs = collection_files.read_texts(f'beir:{coll}', 'documents')
  queries = collection_files.read_texts(f'beir:{coll}', 'queries')
  q = embeddings.encoder(run, 'query', 32)(list(queries.texts))
  corpus = exact.shard_corpus(embeddings.encoder(run, 'doc', 64)(
      list(docs.texts)), run.mesh,
                              dtype='bfloat16' if mode == 'bfloat16' else None)
  corr = correction(corpus, q) if correction else None
  if mode == 'verified':
    corpus = verified.VerifiedCorpus.build(corpus)
  result = exact.search(corpus, q, k, correction=corr)
  return ir_metrics.run_from_topk(result.indices, queries.ids, docs.ids,
                                  scores=result.scores)


def search(root, coll, name, *extra):
  out = root / name
  code, _, err = rosetta('search', '--index', root / 'idx', '--queries',
                         f'beir:{coll}', '--output', out, '--k', '10',
                         '--no_progress', *extra)
  return code, out, err


@pytest.mark.parametrize('mode', ['exact', 'bfloat16', 'verified'])
def test_run_equals_the_python_api(setup, mode):
  root, coll, model = setup
  code, out, err = search(root, coll, f'{mode}.trec', '--mode', mode)
  assert code == 0, err
  want = root / f'{mode}.want.trec'
  ir_metrics.write_run(str(want), python_api(model, coll, 10, mode),
                       tag='dense')
  assert out.read_text() == want.read_text()
  assert len(out.read_text().splitlines()) == 96 * 10


def test_csls_equals_the_python_api(setup):
  root, coll, model = setup
  code, out, err = search(root, coll, 'csls.trec', '--hubness', 'csls',
                          '--hubness_k', '5')
  assert code == 0, err
  run = python_api(model, coll, 10, correction=lambda c, q: hubness.csls(
      c, q, k=5))
  got = ir_metrics.read_run(str(out))
  assert got.keys() == run.keys()
  for q, docs in run.items():
    assert list(got[q]) == list(docs)
    np.testing.assert_allclose(list(got[q].values()), list(docs.values()),
                               rtol=1e-6, atol=1e-6)
  plain = ir_metrics.read_run(str(root / 'exact.trec'))
  assert ir_metrics.read_run(str(out)) != plain    # it did change scores


def test_a_copy_of_the_run_is_the_same_model(setup, tmp_path):
  root, coll, model = setup
  shutil.copytree(model, tmp_path / 'copy')
  code, out, err = search(root, coll, 'copy.trec', '--model_dir',
                          tmp_path / 'copy')
  assert code == 0, err
  assert out.read_text() == (root / 'exact.trec').read_text()


def test_another_model_is_refused(setup, tmp_path):
  """The run's step-1 checkpoint alone: other parameters."""
  root, coll, model = setup
  other = tmp_path / 'other'
  shutil.copytree(model, other)
  shutil.rmtree(other / 'checkpoints' / '2')
  code, _, err = search(root, coll, 'x.trec', '--model_dir', other)
  assert code == 1, err
  assert (f'{root / "idx" / "manifest.json"}: the index was built by '
          f'{os.path.abspath(model)} (step 2)') in err
  assert f'encoded by {other} (step 1): another model' in err
  assert not (root / 'x.trec').exists()


def test_bad_inputs_name_the_file(setup, tmp_path):
  root, coll, model = setup
  dup = tmp_path / 'q.jsonl'
  dup.write_text('{"_id": "a", "text": "cat"}\n{"_id": "a", "text": "dog"}\n')
  code, _, err = rosetta('search', '--index', root / 'idx', '--queries', dup,
                         '--output', tmp_path / 'r.trec')
  assert code == 1 and "q.jsonl:2: duplicate query id 'a'" in err, err
  broken = tmp_path / 'broken'
  shutil.copytree(root / 'idx', broken)
  args = ['search', '--index', broken, '--queries', f'beir:{coll}',
          '--output', tmp_path / 'r.trec']
  shard = broken / 'shard-00001.npy'
  raw = bytearray(shard.read_bytes())
  raw[-3] ^= 0xFF
  shard.write_bytes(bytes(raw))
  code, _, err = rosetta(*args)
  assert code == 1 and f'{shard}: corrupt shard (its sha256' in err, err
  shard.write_bytes(bytes(raw[:100]))
  code, _, err = rosetta(*args)
  assert code == 1 and f'{shard}: corrupt shard' in err, err
  os.remove(shard)
  code, _, err = rosetta(*args)
  assert code == 1 and f'{shard}: missing shard' in err, err
  os.remove(broken / 'manifest.json')
  code, _, err = rosetta(*args)
  assert code == 1 and f'{broken}/manifest.json: missing' in err, err
  code, _, err = rosetta('search', '--index', root / 'idx', '--queries',
                         f'beir:{coll}', '--output', tmp_path / 'r.trec',
                         '--hubness', 'dbnorm')
  assert code == 2 and '--gallery_bank' in err
  assert not (tmp_path / 'r.trec').exists()


def hashed_words(texts, dim=16):
  """A fixed text embedding (a real function, not a model): word counts
  hashed into `dim` buckets by crc32, L2-normalised."""
  import zlib  # pylint: disable=import-outside-toplevel
  out = np.zeros((len(texts), dim), np.float32)
  for i, t in enumerate(texts):
    for w in t.split():
      out[i, zlib.crc32(w.encode()) % dim] += 1
  return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def test_passage_rows_rank_documents_by_their_best_window(tmp_path):
  """An index of passages (rows -> documents through owner.npy) searched
  by `Searcher` equals `passages.search` on the same embeddings."""
  from retrieval.dense import searcher as searcher_lib
  from retrieval.search import passages
  windows = ['cat dog', 'dog fish', 'bird', 'tree river', 'river stone',
             'stone cloud', 'sun', 'moon star', 'star rain', 'cat moon']
  owner = np.asarray([0, 0, 1, 2, 2, 2, 3, 4, 4, 4], np.int32)
  doc_ids = ['a', 'b', 'c', 'd', 'e']
  identity = {'run_dir': '/none', 'step': 0, 'fingerprint': {'params': 'x'}}
  index_store.write(hashed_words, windows, doc_ids, str(tmp_path / 'idx'),
                    identity=identity, owner=owner,
                    passages={'length': 2, 'stride': 1}, shard_size=3,
                    batch_size=2, progress=False)
  index = index_store.DenseIndex.open(str(tmp_path / 'idx'))
  np.testing.assert_array_equal(index.owner, owner)
  s = searcher_lib.Searcher(index, None, index.corpus(), 'exact')
  q = hashed_words(['cat', 'river rain', 'moon'])
  got = s.search(q, k=3)
  want = passages.search(exact.shard_corpus(hashed_words(windows)), q, 3,
                         passages.Passages(tuple(windows), owner, 5, 2, 1))
  np.testing.assert_array_equal(got.indices, want.indices)
  np.testing.assert_array_equal(got.scores, want.scores)
  assert s.run(['q1', 'q2', 'q3'], got)['q1'].keys() == {'a', 'e', 'b'}
