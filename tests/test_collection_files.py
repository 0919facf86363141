"""Retrieval collections from files (BEIR folders, MS MARCO TSVs, training
triples): what each reader returns, the exact error of every kind of bad
line, the skip policy's counts, and the three consumers (pair tasks, DSI
tasks, evaluation); slow: a tiny dual encoder trained through gin on a
BEIR folder of real XQuAD text, then evaluated by the real metric code."""

import gzip
import json
import os
import subprocess
import sys
import zlib

import gin
import numpy as np
import pytest
import seqio

from retrieval import collection_files as cf
from retrieval import datasets
from retrieval.dense import evaluation
from retrieval.dense import pair_tasks
from retrieval.dsi import dsi_tasks
from retrieval.search import ir_metrics
from rosetta import gin_utils
from rosetta.data import bad_input
from rosetta.run import run_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CORPUS = [{'_id': 'd1', 'title': 'Cats', 'text': 'Cats purr.'},
          {'_id': 'd2', 'title': '', 'text': 'Dogs\u2028bark.'},   # U+2028
          {'_id': 3, 'text': 'Fish swim.'},                       # int id
          {'_id': 'd4', 'title': 'Birds', 'text': ''},
          {'_id': 'd5', 'title': None, 'text': 'Cows moo.',
           'metadata': {'x': 1}}]
QUERIES = [{'_id': 'q1', 'text': 'Do cats purr?'},
           {'_id': 'q2', 'text': 'Who barks?'},
           {'_id': 'q3', 'text': 'What swims?'},
           {'_id': 'q4', 'text': 'What flies?'}]
HEADER = 'query-id\tcorpus-id\tscore\n'


def write(path, text, gz=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  data = text.encode('utf-8') if isinstance(text, str) else text
  with (gzip.open if gz else open)(str(path), 'wb') as f:
    f.write(data)
  return str(path)


def jsonl(records):
  return ''.join(json.dumps(r) + '\n' for r in records)


def beir(root, corpus=CORPUS, queries=QUERIES, qrels=None, gz=False):
  """A BEIR folder; qrels: {split: tsv text without the header}."""
  root = str(root)
  qrels = qrels or {'test': 'q1\td1\t1\nq2\td2\t2\nq2\td1\t0\n'
                            'q4\td4\t0\n',
                    'train': 'q3\t3\t1\n'}
  sfx = '.gz' if gz else ''
  write(f'{root}/corpus.jsonl{sfx}', corpus if isinstance(corpus, (str, bytes))
        else jsonl(corpus), gz)
  write(f'{root}/queries.jsonl{sfx}', queries if isinstance(
      queries, (str, bytes)) else jsonl(queries), gz)
  for split, rows in qrels.items():
    write(f'{root}/qrels/{split}.tsv', HEADER + rows)
  return root


def msmarco(root, collection='1\tCats purr.\n2\tDogs bark.\r\n3\tFish swim.\n',
            queries=None, qrels=None):
  root = str(root)
  write(f'{root}/collection.tsv', collection)
  queries = queries or {'dev': '10\tDo cats purr?\n11\tWho barks?\n'
                               '12\tunjudged query\n',
                        'train': '20\tWhat swims?\n'}
  qrels = qrels or {'dev': '10 0 1 1\n11\t0\t2\t1\n11 0 3 0\n',
                    'train': '20 0 3 1\n'}
  for split, text in queries.items():
    write(f'{root}/queries.{split}.tsv', text)
  for split, text in qrels.items():
    write(f'{root}/qrels.{split}.tsv', text)
  return root


@pytest.fixture(autouse=True)
def fresh_skip_log():
  bad_input.SKIPPED.clear()
  yield
  bad_input.SKIPPED.clear()


# --------------------------------------------------------------- formats ---

@pytest.mark.parametrize('gz', [False, True])
def test_beir_folder_reads_into_a_retrieval_set(tmp_path, gz):
  root = beir(tmp_path / 'my-set', gz=gz)
  stats = cf.ReadStats()
  rs = cf.read_beir(root, 'test', stats=stats)
  assert rs == datasets.RetrievalSet(
      'beir:my_set:test', ('q1', 'q2'), ('Do cats purr?', 'Who barks?'),
      ('d1', 'd2', '3', 'd4', 'd5'),
      ('Cats Cats purr.', 'Dogs\u2028bark.', 'Fish swim.', 'Birds',
       'Cows moo.'),
      {'q1': {'d1': 1}, 'q2': {'d2': 2, 'd1': 0}})
  # q4 is judged, but only non-relevant: left out and counted.
  assert stats == cf.ReadStats(documents=5, queries=2, judgements=3,
                               queries_without_relevant=1)
  assert cf.read_beir(root, 'train').qrels == {'q3': {'3': 1}}
  assert cf.splits(f'beir:{root}') == ('test', 'train')
  assert cf.read_split(f'beir:{root}', 'test') == rs
  untitled = beir(tmp_path / 'untitled', corpus=CORPUS[:3],
                  qrels={'test': 'q1\td1\t1\n'})
  assert cf.read_beir(untitled, 'test', title_separator=None).docs == (
      'Cats purr.', 'Dogs\u2028bark.', 'Fish swim.')


def test_lines_split_on_newline_only_with_crlf_bom_and_blank_lines(tmp_path):
  corpus = ('\ufeff{"_id": "d1", "text": "one\u2028two\u0085three\x0cfour"}'
            '\r\n\n  \n{"_id": "d2", "text": "five"}')    # no final newline
  root = beir(tmp_path, corpus=corpus, qrels={'test': 'q1\td2\t1\r\n'})
  rs = cf.read_beir(root, 'test')
  assert rs.docs == ('one\u2028two\u0085three\x0cfour', 'five')
  assert rs.qrels == {'q1': {'d2': 1}}


def test_msmarco_folder_reads_tsvs_and_trec_qrels(tmp_path):
  root = msmarco(tmp_path / 'marco')
  stats = cf.ReadStats()
  rs = cf.read_msmarco(root, 'dev', stats=stats)
  assert rs == datasets.RetrievalSet(
      'msmarco:marco:dev', ('10', '11'), ('Do cats purr?', 'Who barks?'),
      ('1', '2', '3'), ('Cats purr.', 'Dogs bark.', 'Fish swim.'),
      {'10': {'1': 1}, '11': {'2': 1, '3': 0}})
  assert stats.queries_without_relevant == 1       # '12' has no qrels row
  assert cf.splits(f'msmarco:{root}') == ('dev', 'train')
  assert cf.read_split(f'msmarco:{root}', 'train').query_ids == ('20',)
  # The TREC qrels file means the same to ir_metrics' reader.
  assert ir_metrics.read_qrels(f'{root}/qrels.dev.tsv') == rs.qrels


def test_qrels_round_trip_through_ir_metrics_files(tmp_path):
  rs = cf.read_beir(beir(tmp_path / 'b'), 'test')
  ir_metrics.write_qrels(str(tmp_path / 'test.qrels'), rs.qrels)
  assert ir_metrics.read_qrels(str(tmp_path / 'test.qrels')) == rs.qrels


def test_text_triples_and_id_triples(tmp_path):
  path = write(tmp_path / 'triples.train.small.tsv',
               'q one\tpos one\tneg one\nq two\tpos two\tneg two\n')
  stats = cf.ReadStats()
  assert cf.read_triples(path, stats=stats) == [
      ('q one', 'pos one', 'neg one'), ('q two', 'pos two', 'neg two')]
  assert stats.triples == 2
  assert cf.read_triples(path, limit=1) == [('q one', 'pos one', 'neg one')]
  root = msmarco(tmp_path / 'marco')
  ids = write(tmp_path / 'marco' / 'qidpidtriples.train.full.tsv',
              '20\t3\t1\n20\t3\t2\n')
  assert cf.read_spec_triples(f'idtriples:{ids}') == [
      ('What swims?', 'Fish swim.', 'Cats purr.'),
      ('What swims?', 'Fish swim.', 'Dogs bark.')]
  dev = write(tmp_path / 'dev_triples.tsv', '12\t3\t1\n')
  assert cf.read_id_triples(dev, queries=f'{root}/queries.dev.tsv',
                            collection=f'{root}/collection.tsv') == [
      ('unjudged query', 'Fish swim.', 'Cats purr.')]


def test_specs_and_missing_files(tmp_path):
  assert cf.parse_spec('beir:/data/SciFact/') == cf.Spec('beir',
                                                         '/data/SciFact/')
  assert cf.parse_spec('beir:/data/SciFact/').name == 'beir_scifact'
  assert cf.parse_spec('triples:/x/triples.train.small.tsv.gz').name == (
      'triples_triples_train_small')
  for bad in ('scifact', 'bier:/x', 'beir:'):
    with pytest.raises(ValueError, match='expected "<kind>:<path>"'):
      cf.parse_spec(bad)
  with pytest.raises(FileNotFoundError) as e:
    cf.splits(f'beir:{tmp_path}')
  assert str(e.value) == (f'BEIR collection {tmp_path}: no file '
                          f'{tmp_path}/corpus.jsonl (or '
                          f'{tmp_path}/corpus.jsonl.gz)')
  root = beir(tmp_path / 'b')
  with pytest.raises(FileNotFoundError, match=r"split 'dev' \(splits: "
                     r"\('test', 'train'\)\)"):
    cf.read_beir(root, 'dev')
  write(f'{root}/corpus.jsonl.gz', b'', gz=True)
  with pytest.raises(ValueError, match='both .*corpus.jsonl and .*'
                     'corpus.jsonl.gz exist'):
    cf.read_beir(root, 'test')


# ------------------------------------------------------------ bad input ---

BAD_BEIR = [   # (file, contents, line, reason)
    ('corpus',
     b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "caf\xe9"}\n',
     2, "not valid UTF-8 (invalid continuation byte at byte 26: "
     "b'ext\": \"caf\\xe9\"}')"),
    ('corpus', '{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": }\n',
     2, 'not valid JSON (Expecting value at column 23)'),
    ('corpus', '["d1", "text"]\n', 1, 'expected a JSON object, found an array'),
    ('corpus', '{"_id": "d1"}\n', 1, "no field 'text'"),
    ('corpus', '{"text": "x"}\n', 1, "no field '_id'"),
    ('corpus', '{"_id": 3.5, "text": "x"}\n', 1,
     "field '_id' is a number, expected a string"),
    ('corpus', '{"_id": "d1", "text": ["x"]}\n', 1,
     "field 'text' is an array, expected a string"),
    ('corpus', '{"_id": "d1", "title": 7, "text": "x"}\n', 1,
     "field 'title' is a number, expected a string"),
    ('corpus', '{"_id": "d1", "title": " ", "text": " "}\n', 1,
     "empty field 'text' and no 'title'"),
    ('corpus', '{"_id": "", "text": "x"}\n', 1, 'empty document id'),
    ('corpus', '{"_id": "d 1", "text": "x"}\n', 1,
     "document id 'd 1' has whitespace (TREC run and qrels files cannot "
     "hold it)"),
    ('corpus', '{"_id": "d1", "text": "x"}\n\n{"_id": "d1", "text": "y"}\n',
     3, "duplicate document id 'd1' (first on line 1)"),
    ('queries', '{"_id": "q1", "text": "  "}\n', 1, "empty field 'text'"),
    ('queries', '{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n',
     2, "duplicate query id 'q1' (first on line 1)"),
    ('qrels', HEADER + 'q1\td1\n', 2,
     'expected 3 tab-separated columns (query-id, corpus-id, score), '
     'found 2'),
    ('qrels', HEADER + 'q1\td1\t1\t0\n', 2,
     'expected 3 tab-separated columns (query-id, corpus-id, score), '
     'found 4'),
    ('qrels', HEADER + 'q1\t\t1\n', 2, 'empty corpus-id'),
    ('qrels', HEADER + 'q1\td1\t1.0\n', 2, "score '1.0' is not an integer"),
    ('qrels', HEADER + 'q1\td1\thigh\n', 2, "score 'high' is not an integer"),
    ('qrels', HEADER + 'q1\td1\t1\nq9\td1\t1\n', 3,
     "query 'q9' is not in {root}/queries.jsonl"),
    ('qrels', HEADER + 'q1\td9\t1\n', 2,
     "document 'd9' is not in {root}/corpus.jsonl"),
    ('qrels', HEADER + 'q1\td1\t1\nq1\td1\t2\n', 3,
     "query 'q1' judges document 'd1' twice (first on line 2)"),
]


@pytest.mark.parametrize('file,contents,line,reason', BAD_BEIR)
def test_bad_beir_line_names_file_and_line(tmp_path, file, contents, line,
                                           reason):
  root = beir(tmp_path, qrels={'test': 'q1\td1\t1\n'})
  path = {'corpus': f'{root}/corpus.jsonl',
          'queries': f'{root}/queries.jsonl',
          'qrels': f'{root}/qrels/test.tsv'}[file]
  write(path, contents)
  with pytest.raises(bad_input.BadInputError) as e:
    cf.read_beir(root, 'test')
  assert str(e.value) == f'{path}:{line}: ' + reason.replace('{root}', root)


BAD_MSMARCO = [
    ('collection.tsv', '1\tCats purr.\t\n', 1,
     'expected 2 tab-separated columns (pid, passage), found 3'),
    ('collection.tsv', '1\tok\n2\n', 2,
     'expected 2 tab-separated columns (pid, passage), found 1'),
    ('collection.tsv', '1\tok\n2\t \n', 2, 'empty passage'),
    ('collection.tsv', b'1\tok\n2\t\xff\n', 2,
     "not valid UTF-8 (invalid start byte at byte 2: b'2\\t\\xff')"),
    ('collection.tsv', '1\tok\n1\tagain\n', 2,
     "duplicate pid '1' (first on line 1)"),
    ('queries.dev.tsv', '10\tq\n\t?\n', 2, 'empty qid'),
    ('qrels.dev.tsv', '10 0 1\n', 1,
     'expected 4 fields (query-id, iteration, corpus-id, score), found 3'),
    ('qrels.dev.tsv', '10 0 1 yes\n', 1, "score 'yes' is not an integer"),
    ('qrels.dev.tsv', '10 0 1 1\n99 0 1 1\n', 2,
     "query '99' is not in {root}/queries.dev.tsv"),
]


@pytest.mark.parametrize('file,contents,line,reason', BAD_MSMARCO)
def test_bad_msmarco_line_names_file_and_line(tmp_path, file, contents,
                                              line, reason):
  root = msmarco(tmp_path, collection='1\tok\n',
                 queries={'dev': '10\tq\n'}, qrels={'dev': '10 0 1 1\n'})
  path = write(f'{root}/{file}', contents)
  with pytest.raises(bad_input.BadInputError) as e:
    cf.read_msmarco(root, 'dev')
  assert str(e.value) == f'{path}:{line}: ' + reason.replace('{root}', root)


@pytest.mark.parametrize('contents,line,reason', [
    ('q\tp\tn\nq\tp\n', 2,
     'expected 3 tab-separated columns (query, positive, negative), found 2'),
    ('q\tp\t \n', 1, 'empty negative'),
])
def test_bad_triples_line(tmp_path, contents, line, reason):
  path = write(tmp_path / 'triples.tsv', contents)
  with pytest.raises(bad_input.BadInputError) as e:
    cf.read_triples(path)
  assert str(e.value) == f'{path}:{line}: {reason}'


def test_bad_id_triple_names_the_missing_id(tmp_path):
  root = msmarco(tmp_path)
  path = write(f'{root}/qidpidtriples.train.full.tsv', '20\t3\t1\n20\t3\t9\n')
  with pytest.raises(bad_input.BadInputError) as e:
    cf.read_id_triples(path)
  assert str(e.value) == (f"{path}:2: document '9' is not in "
                          f'{root}/collection.tsv')


def test_skip_policy_drops_counts_and_logs_every_bad_line(tmp_path):
  corpus = jsonl(CORPUS[:2]) + '{"_id": "d1", "text": "again"}\nnot json\n'
  qrels = {'test': 'q1\td1\t1\nq2\td9\t1\nq3\td2\tx\nq2\td2\t1\n'
                   'q4\td2\t1\n'}
  root = beir(tmp_path, corpus=corpus, qrels=qrels)
  with pytest.raises(bad_input.BadInputError):
    cf.read_beir(root, 'test')                      # 'error' is the default
  stats = cf.ReadStats()
  rs = cf.read_beir(root, 'test', on_bad_line='skip', stats=stats)
  assert rs.doc_ids == ('d1', 'd2') and rs.docs[0] == 'Cats Cats purr.'
  # q3's only row was bad: no relevant document left, out of evaluation.
  assert rs.qrels == {'q1': {'d1': 1}, 'q2': {'d2': 1}, 'q4': {'d2': 1}}
  assert stats == cf.ReadStats(documents=2, queries=3, judgements=3,
                               skipped_lines=4, queries_without_relevant=1)
  report = bad_input.SKIPPED.report()
  assert report['skipped'] == 4
  assert report['files'] == {
      f'{root}/corpus.jsonl': {
          "duplicate document id 'd1' (first on line 1)": 1,
          'not valid JSON (Expecting value at column 1)': 1},
      f'{root}/qrels/test.tsv': {
          f"document 'd9' is not in {root}/corpus.jsonl": 1,
          "score 'x' is not an integer": 1}}
  # Reading again (the cached corpus, the qrels re-read) counts no line twice.
  cf.read_beir(root, 'test', on_bad_line='skip')
  assert bad_input.SKIPPED.total() == 4


def test_nothing_left_is_an_error_not_an_empty_set(tmp_path):
  root = beir(tmp_path, qrels={'test': 'q1\td9\t1\nq2\td1\t0\n'})
  with pytest.raises(ValueError) as e:
    cf.read_beir(root, 'test', on_bad_line='skip')
  assert str(e.value) == (f'{root}/qrels/test.tsv: no query of the split '
                          'has a relevant document (a qrels row of grade '
                          '>= 1)')
  with pytest.raises(ValueError, match="on_bad_line='drop'"):
    cf.read_beir(root, 'test', on_bad_line='drop')
  path = write(tmp_path / 't.tsv', 'q\tp\n')
  with pytest.raises(ValueError) as e:
    cf.read_triples(path, on_bad_line='skip')
  assert str(e.value) == f'{path}: no triples (1 bad lines skipped)'


# ------------------------------------------------------------ consumers ---

def test_pair_tasks_from_a_collection_and_from_triples(tmp_path):
  root = beir(tmp_path / 'toy', qrels={
      'train': 'q1\td1\t2\nq1\td5\t1\nq1\td2\t0\nq1\t3\t0\n',
      'dev': 'q2\td2\t1\n', 'test': 'q3\t3\t1\n'})
  triples = write(tmp_path / 'triples.tsv', 'a?\tyes a\tno a\n')
  names = pair_tasks.setup(tatoeba_languages=[], xquad_pairs=[],
                           collections=[f'beir:{root}', f'triples:{triples}'],
                           collection_min_grade=1, mixture='own_pairs')
  assert names == ['beir_pairs_toy', 'triples_pairs_triples']
  src = seqio.get_mixture_or_task('beir_pairs_toy').source
  assert sorted(src.splits) == ['test', 'train', 'validation']
  negs = tuple(sorted(src.pairs('train')[0][2]))
  assert negs == ('Dogs\u2028bark.', 'Fish swim.')
  assert [(q, p) for q, p, _ in src.pairs('train')] == [
      ('Do cats purr?', 'Cats Cats purr.'), ('Do cats purr?', 'Cows moo.')]
  assert src.pairs('validation') == [('Who barks?', 'Dogs\u2028bark.', ())]
  triples_task = seqio.get_mixture_or_task('triples_pairs_triples')
  assert list(triples_task.source.get_dataset(
      'train', shuffle=False).as_numpy_iterator()) == [
              {'queries': b'a?', 'positives': b'yes a', 'negative': b'no a'}]
  ex = next(triples_task.get_dataset(
      {'queries': 8, 'positives': 8, 'negatives': 8}, 'train',
      shuffle=False).as_numpy_iterator())
  assert ex['negatives'].tolist() == [[113, 114, 35, 100, 1]]  # 'no a' EOS
  # min_grade 2: only the grade-2 document is a positive.
  pair_tasks.register_collection_pair_task(seqio.ByteVocabulary(),
                                           f'beir:{root}', min_grade=2)
  src = seqio.get_mixture_or_task('beir_pairs_toy').source
  assert [p for _, p, _ in src.pairs('train')] == ['Cats Cats purr.']
  # Tokenized through the mixture, with the hard negatives.
  ds = seqio.get_mixture_or_task('own_pairs').get_dataset(
      {'queries': 16, 'positives': 32, 'negatives': 32}, 'train',
      shuffle=False)
  rows = list(ds.take(3).as_numpy_iterator())
  assert {r['negatives'].shape[0] for r in rows} <= {1, 2}
  with pytest.raises(ValueError, match="two specs make the task "
                     "'beir_pairs_toy'"):
    pair_tasks.setup(tatoeba_languages=[], xquad_pairs=[],
                     collections=[f'beir:{root}', f'beir:{root}/'])
  with pytest.raises(FileNotFoundError, match='no file'):
    pair_tasks.setup(tatoeba_languages=[], xquad_pairs=[],
                     collections=[f'beir:{tmp_path}/none'])
  with pytest.raises(ValueError, match='pair_tasks.setup.on_bad_line'):
    pair_tasks.setup(tatoeba_languages=[], xquad_pairs=[],
                     collections=[f'beir:{root}'], on_bad_line='ignore')


def test_dsi_tasks_index_a_beir_folder(tmp_path):
  root = beir(tmp_path / 'toy', qrels={
      'train': 'q1\td1\t1\nq3\t3\t1\nq3\td5\t2\n',
      'test': 'q2\td2\t1\nq4\td4\t2\nq4\td2\t1\n'})
  s = dsi_tasks.setup(corpus=f'beir:{root}', docid_kind='naive',
                      index_length=16, suffix='_t')
  assert s.tasks.mixture == 'beir_toy_dsi_t'
  assert s.corpus.doc_keys == ('d1', 'd2', '3', 'd4', 'd5')
  assert s.corpus.doc_texts['und'][0] == 'Cats Cats purr.'
  lengths = {'inputs': 32, 'targets': 8}

  def rows(name, split):
    ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split,
                                                     shuffle=False)
    return [(r['inputs_pretokenized'].decode(),
             r['targets_pretokenized'].decode(),
             r['relevant_docids'].decode())
            for r in ds.as_numpy_iterator()]
  ids = s.mapping.ids
  assert len(rows(s.tasks.indexing, 'train')) == 5
  assert sorted(rows(s.tasks.retrieval, 'train')) == sorted([
      ('Do cats purr?', ids['d1'], ids['d1']),
      ('What swims?', ids['d5'], f"{ids['d5']} {ids['3']}"),
      ('What swims?', ids['3'], f"{ids['d5']} {ids['3']}")])
  assert rows(s.tasks.retrieval, 'test') == [
      ('Who barks?', ids['d2'], ids['d2']),
      ('What flies?', ids['d4'], f"{ids['d4']} {ids['d2']}")]
  # Without a train split, the test queries are split by md5, as Cranfield.
  only_test = beir(tmp_path / 'only', qrels={'test': 'q1\td1\t1\nq2\td2\t1\n'
                                                     'q3\t3\t1\nq4\td4\t1\n'})
  c = dsi_tasks.collection_corpus(f'beir:{only_test}')
  assert sorted(q.qid for qs in c.queries.values() for q in qs) == [
      'q1', 'q2', 'q3', 'q4']
  assert all(datasets.xquad_split(f'beir_only:{q.qid}') == split
             for split, qs in c.queries.items() for q in qs)
  with pytest.raises(ValueError, match='must be one of'):
    dsi_tasks.setup(corpus='msmarco')


def bag_of_words(texts):
  """A toy encoder: hashed lower-cased words, L2-normalised."""
  out = np.zeros((len(texts), 256), np.float32)
  for i, t in enumerate(texts):
    for w in t.lower().replace('?', ' ').replace('.', ' ').split():
      out[i, zlib.crc32(w.rstrip('s').encode()) % 256] += 1
  return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def test_evaluation_on_a_collection_read_from_files(tmp_path, mesh_data8):
  root = beir(tmp_path / 'toy', qrels={'test': 'q1\td1\t1\nq3\t3\t1\n'})
  rs = cf.read_split(f'beir:{root}', 'test')
  out = str(tmp_path / 'eval')
  m = evaluation.evaluate_set(bag_of_words, bag_of_words, rs, k=3, ks=(1, 3),
                              mesh=mesh_data8, out_dir=out,
                              index_dir=str(tmp_path / 'index'))
  # 'cats' and 'purr' / 'swim' only occur in the relevant documents.
  assert m['MRR@10'] == 1.0 and m['Recall@1'] == 1.0
  assert ir_metrics.read_qrels(f'{out}/qrels.txt') == rs.qrels
  run = ir_metrics.read_run(f'{out}/run.trec')
  assert sorted(run) == ['q1', 'q3'] and all(len(d) == 3
                                             for d in run.values())
  assert ir_metrics.evaluate(run, rs.qrels, ks=(1, 3)) == m
  with open(f'{out}/metrics.json', encoding='utf-8') as f:
    saved = json.load(f)
  assert saved['set'] == 'beir:toy:test' and saved['MRR@10'] == 1.0


def test_gin_example_registers_the_collection_pairs(tmp_path):
  root = beir(tmp_path / 'toy', qrels={'train': 'q1\td1\t1\n',
                                       'dev': 'q2\td2\t1\n'})
  gin_utils.parse(['retrieval/dual_encoder_beir_tiny.gin'],
                  [f"pair_tasks.setup.collections = ['beir:{root}']"],
                  finalize=False)
  try:
    run_dir.task_setup()
    mixture = seqio.get_mixture_or_task(gin.query_parameter('train.task'))
    assert [t.name for t in mixture.tasks] == ['beir_pairs_toy']
  finally:
    gin.clear_config()


# ------------------------------------------------------------ end to end ---

@pytest.mark.slow
def test_dual_encoder_trains_on_a_beir_folder_and_is_evaluated(tmp_path):
  """XQuAD English as a BEIR folder (paragraphs with their article titles,
  questions split by `datasets.xquad_split`), `rosetta train` with the gin
  example, then `python -m retrieval.dense.evaluation` on the test split:
  MRR@10 far above a random ranking's."""
  if not datasets.available('xquad'):
    pytest.skip(f'no xquad under {datasets.data_root()}')
  root = str(tmp_path / 'xquad_en')
  pars = datasets.xquad_paragraphs('en')
  write(f'{root}/corpus.jsonl', jsonl(
      {'_id': p.pid.split(':', 1)[1],
       'title': p.pid.split(':', 1)[1].rsplit('_p', 1)[0].replace('_', ' '),
       'text': p.context} for p in pars))
  write(f'{root}/queries.jsonl', jsonl(
      {'_id': q, 'text': t} for p in pars
      for q, t in zip(p.question_ids, p.questions)))
  rows = {'train': [], 'test': []}
  for p in pars:
    for q in p.question_ids:
      rows[datasets.xquad_split(q)].append(
          f'{q}\t{p.pid.split(":", 1)[1]}\t1\n')
  write(f'{root}/qrels/train.tsv', HEADER + ''.join(rows['train']))
  # dev: for the validation loss only; no choice is made on it here
  write(f'{root}/qrels/dev.tsv', HEADER + ''.join(rows['test'][:64]))
  write(f'{root}/qrels/test.tsv', HEADER + ''.join(rows['test']))
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  model_dir = str(tmp_path / 'run')
  p = subprocess.run(
      [sys.executable, '-m', 'rosetta', 'train',
       '--gin_file=retrieval/dual_encoder_beir_tiny.gin',
       f"--gin.pair_tasks.setup.collections=['beir:{root}']",
       f"--gin.train.model_dir='{model_dir}'", '--gin.train.total_steps=120',
       '--gin.train.eval_period=120', '--gin.train.log_period=20'],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
  assert '[validation @ step 120]' in p.stdout + p.stderr
  out = str(tmp_path / 'eval')
  p = subprocess.run(
      [sys.executable, '-m', 'retrieval.dense.evaluation',
       '--dual_encoder', model_dir, '--collection', f'beir:{root}',
       '--split', 'test', '--out', out],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
  printed = json.loads(p.stdout.strip().splitlines()[-1])
  rs = cf.read_beir(root, 'test')
  assert printed['queries'] == len(rs.queries) == len(rows['test'])
  assert printed['documents'] == 240
  run = ir_metrics.read_run(f'{out}/run.trec')
  metrics = ir_metrics.evaluate(run, ir_metrics.read_qrels(f'{out}/qrels.txt'))
  assert metrics['MRR@10'] == pytest.approx(printed['MRR@10'])
  # A random ranking of 240 paragraphs: MRR@10 = H(10)/240 = 0.012; 120
  # steps gave 0.16 (Recall@100 0.77).
  random_mrr = sum(1 / r for r in range(1, 11)) / 240
  assert metrics['MRR@10'] > 6 * random_mrr, metrics
  assert metrics['Recall@100'] > 100 / 240, metrics
