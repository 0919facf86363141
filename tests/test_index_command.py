"""`rosetta index`: a tiny dual encoder's corpus into an on-disk index;
its manifest, shards equal to the Python API's embeddings, resume, and bad
inputs named."""

import json
import os
import shutil

import numpy as np
import pytest

from retrieval.dense import index_store, searcher
from retrieval.dense import indexing
from retrieval.dsi import embeddings
from tests.retrieval_cli_helpers import rosetta, trained_run, write_beir


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('index_cmd')
  coll, model = trained_run(tmp_path_factory)
  return root, coll, model


def build(root, coll, model, name, *extra):
  out = root / name
  code, _, err = rosetta('index', '--model_dir', model, '--corpus',
                         f'beir:{coll}', '--output', out, '--shard_size',
                         '20', '--batch_size', '8', '--no_progress', *extra)
  return code, out, err


def test_index_holds_the_encoders_embeddings(setup):
  root, coll, model = setup
  code, out, err = build(root, coll, model, 'idx')
  assert code == 0, err
  assert '48 documents, 48 rows x 32 float32 in 3 shard(s)' in err
  m = json.loads((out / 'manifest.json').read_text())
  assert m['complete'] and m['num_docs'] == 48 and m['dim'] == 32
  assert m['model']['run_dir'] == os.path.abspath(model)
  assert m['model']['step'] == 2
  assert [s['rows'] for s in m['shards']] == [20, 20, 8]
  assert set(m['model']['fingerprint']) == {'params', 'config', 'vocabulary'}
  index = index_store.DenseIndex.open(str(out))
  assert index.doc_ids == tuple(f'd{i}' for i in range(48))
  run = embeddings.load_dual_encoder(model, mesh=searcher.local_mesh())
  texts = [json.loads(l)['title'] + ' ' + json.loads(l)['text']
           for l in open(os.path.join(coll, 'corpus.jsonl'))]
  want = embeddings.encoder(run, 'doc', 8)(texts)
  np.testing.assert_array_equal(index.rows(0, 48), want)
  np.testing.assert_array_equal(index.rows(15, 25), want[15:25])


def test_rerun_resumes_and_keeps_bytes(setup):
  root, coll, model = setup
  code, out, err = build(root, coll, model, 'resume')
  assert code == 0, err
  before = {p: (out / p).read_bytes() for p in os.listdir(out)}
  # What a kill leaves: the manifest of a build in progress, a shard
  # missing and a half-written temporary file.
  m = json.loads(before['manifest.json'])
  for key in ('dim', 'shards'):
    m.pop(key)
  (out / 'manifest.json').write_text(json.dumps(dict(m, complete=False)))
  os.remove(out / indexing.shard_name(1))
  (out / '.shard-00001.npy.tmp-1234').write_bytes(b'half')
  mtime = os.stat(out / indexing.shard_name(0)).st_mtime_ns
  code, _, err = build(root, coll, model, 'resume')
  assert code == 0, err
  assert {p: (out / p).read_bytes() for p in os.listdir(out)} == before
  assert os.stat(out / indexing.shard_name(0)).st_mtime_ns == mtime


def test_bfloat16_index(setup):
  root, coll, model = setup
  code, out, err = build(root, coll, model, 'bf16', '--dtype', 'bfloat16')
  assert code == 0, err
  f32 = index_store.DenseIndex.open(str(root / 'idx')).rows(0, 48)
  bf16 = index_store.DenseIndex.open(str(out)).rows(0, 48)
  assert bf16.dtype.name == 'bfloat16'
  np.testing.assert_array_equal(bf16, f32.astype(bf16.dtype))


def test_bad_inputs_name_the_file(setup, tmp_path):
  root, coll, model = setup
  empty = tmp_path / 'empty'
  shutil.copytree(coll, empty)
  (empty / 'corpus.jsonl').write_text('\n')
  code, _, err = rosetta('index', '--model_dir', model, '--corpus',
                         f'beir:{empty}', '--output', tmp_path / 'i')
  assert code == 1 and f'{empty}/corpus.jsonl: no documents' in err, err
  (tmp_path / 'docs.txt').write_text('d1 text\n')
  code, _, err = rosetta('index', '--model_dir', model, '--corpus',
                         tmp_path / 'docs.txt', '--output', tmp_path / 'i')
  assert code == 1 and 'docs.txt: unknown format of documents' in err, err
  (tmp_path / 'docs.tsv').write_text('d1\tone\nd1\ttwo\n')
  code, _, err = rosetta('index', '--model_dir', model, '--corpus',
                         f'tsv:{tmp_path / "docs.tsv"}', '--output',
                         tmp_path / 'i')
  assert code == 1 and "docs.tsv:2: duplicate document id 'd1'" in err, err
  code, _, err = build(root, coll, model, 'idx', '--passage_length', '16')
  assert code == 1 and 'passages need a SentencePiece vocabulary' in err, err
  code, _, err = rosetta('index', '--corpus', f'beir:{coll}', '--output',
                         tmp_path / 'i')
  assert code == 2 and '--model_dir' in err


def test_another_build_in_the_same_directory_is_refused(setup, tmp_path):
  root, coll, model = setup
  smaller = tmp_path / 'smaller'
  write_beir(smaller, n_docs=30)
  code, out, err = build(root, smaller, model, 'idx')
  assert code == 1 and 'started with another corpus fingerprint' in err, err
  code, out, err = build(root, coll, model, 'idx', '--shard_size', '7')
  assert code == 1 and 'another shard size' in err, err


def test_corpus_and_query_specs(tmp_path):
  """Every spec form `rosetta index / search / bm25` take reads the same
  ids and texts; an MS MARCO folder's queries need their file named."""
  from retrieval import collection_files
  beir = write_beir(tmp_path / 'beir', n_docs=3)
  ms = tmp_path / 'ms'
  ms.mkdir()
  (ms / 'collection.tsv').write_text('7\tseven\n8\teight\n')
  (ms / 'queries.dev.tsv').write_text('1\tone?\n')
  read = collection_files.read_texts
  docs = read(f'beir:{beir}')
  assert docs.ids == ('d0', 'd1', 'd2')
  assert docs.texts[0].startswith('doc 0 ')               # title + text
  for spec in (beir, f'jsonl:{beir}/corpus.jsonl', f'{beir}/corpus.jsonl'):
    assert read(str(spec)) == docs
  assert read(f'{beir}/queries.jsonl', 'queries').ids[:2] == ('q0_0',
                                                             'q0_1')
  assert read(str(beir), 'queries') == read(f'beir:{beir}', 'queries')
  assert read(f'msmarco:{ms}').texts == ('seven', 'eight')
  assert read(str(ms)).ids == ('7', '8')
  assert read(f'tsv:{ms}/queries.dev.tsv', 'queries').ids == ('1',)
  with pytest.raises(ValueError, match='name it, e.g.'):
    read(f'msmarco:{ms}', 'queries')
  with pytest.raises(FileNotFoundError, match='no file'):
    read(f'beir:{tmp_path}/nowhere')
