"""Retrieval set loaders on the real files, and on broken copies of them.

Tests skip when $ROSETTA_DATA_DIR (or ../shared/data) lacks a data set.
"""

import os
import shutil

import pytest

from retrieval import datasets

needs = {name: pytest.mark.skipif(not datasets.available(name),
                                  reason=f'no {name} under '
                                         f'{datasets.data_root()}')
         for name in ('flores', 'xquad', 'cranfield')}


@needs['flores']
def test_flores_mining_both_directions():
  langs = datasets.flores_languages()
  assert len(langs) == 30 and 'eng_Latn' in langs
  for lang in langs:
    assert len(datasets.flores_sentences(lang)) == 1012, lang
  sets = datasets.flores_mining_directions('deu_Latn')
  fwd, back = sets['deu_Latn->eng_Latn'], sets['eng_Latn->deu_Latn']
  assert len(fwd.queries) == len(fwd.docs) == 1012
  assert fwd.query_ids[0] == 'deu_Latn:1' and fwd.doc_ids[-1] == 'eng_Latn:1012'
  assert fwd.qrels['deu_Latn:17'] == {'eng_Latn:17': 1}
  assert back.queries == fwd.docs and back.docs == fwd.queries
  assert back.qrels['eng_Latn:5'] == {'deu_Latn:5': 1}
  with pytest.raises(ValueError, match="no FLORES-200 devtest file for "
                                       "'xxx_Latn'"):
    datasets.flores_mining('xxx_Latn')


@needs['xquad']
def test_xquad_counts_ids_and_split():
  en = datasets.xquad_paragraphs('en')
  assert en[0].pid == 'en:Super_Bowl_50_p0'
  for lang in datasets.XQUAD_LANGUAGES:
    pars = datasets.xquad_paragraphs(lang)
    assert len(pars) == 240, lang
    assert sum(len(p.question_ids) for p in pars) == 1190, lang
    assert [p.question_ids for p in pars] == [p.question_ids for p in en]
  # The 70/30 split by md5 of the question id: stable sizes, and the same
  # questions in every language.
  train, test = datasets.xquad('en', split='train'), datasets.xquad(
      'en', split='test')
  assert (len(train.query_ids), len(test.query_ids)) == (822, 368)
  assert not set(train.query_ids) & set(test.query_ids)
  assert datasets.xquad('th', split='test').query_ids == test.query_ids
  assert datasets.xquad_split('56beb4343aeaaa14008c925b') == 'train'
  assert datasets.xquad_split('56beb4343aeaaa14008c925c') == 'test'
  assert len(train.docs) == 240          # the corpus stays whole


@needs['xquad']
def test_xquad_corpora_and_qrels():
  de = datasets.xquad('de', corpus='en')
  qid = de.query_ids[0]
  assert de.qrels[qid] == {'en:Super_Bowl_50_p0': 1}
  assert de.queries[0] != datasets.xquad('en').queries[0]   # German text
  mono = datasets.xquad('zh', corpus='zh')
  assert mono.doc_ids[0] == 'zh:Super_Bowl_50_p0'
  pool = datasets.xquad('ru', corpus='pool')
  assert len(pool.docs) == 2880 and len(set(pool.docs)) == 2880
  assert len(pool.qrels[qid]) == 12
  assert set(pool.qrels[qid]) == {f'{l}:Super_Bowl_50_p0'
                                  for l in datasets.XQUAD_LANGUAGES}
  assert pool.num_judgements() == 1190 * 12
  with pytest.raises(ValueError, match="unknown XQuAD language 'fr'"):
    datasets.xquad('fr')


@needs['cranfield']
def test_cranfield_counts_renumbering_and_grades():
  c = datasets.cranfield()
  assert len(c.docs) == 1400 and c.doc_ids[0] == '1'
  assert len(c.queries) == 225 and c.query_ids[-1] == '225'
  # cran.qry numbers its queries 1, 2, 4, 8, ...; cranqrel uses positions.
  assert c.queries[2].startswith('what problems of heat conduction in '
                                 'composite slabs')
  # 1,837 judgement lines (`wc -l` counts 1,836: no final newline).
  assert c.num_judgements() == 1837
  grades = [g for docs in c.qrels.values() for g in docs.values()]
  # Cleverdon code c -> grade 5 - c; code -1 -> 0 (see datasets docstring).
  assert {g: grades.count(g) for g in range(5)} == {
      0: 225, 1: 363, 2: 734, 3: 387, 4: 128}
  assert c.qrels['1']['184'] == 3       # cranqrel line 1: "1 184 2"
  assert c.qrels['1']['486'] == 0       # "1 486 -1"
  assert all(any(g > 0 for g in d.values()) for d in c.qrels.values())
  assert c.docs[0].startswith('experimental investigation of the '
                              'aerodynamics of a wing in a slipstream')
  # Abstract 240 has stray `.A`/`.B` lines in its body: kept as text.
  assert 'application to turbulent separations' in c.docs[239]
  assert c.docs[470] == ''              # .I 471 has an empty abstract


def _copy(name, tmp_path, monkeypatch):
  dst = tmp_path / name
  shutil.copytree(os.path.join(datasets.data_root(), name), dst)
  monkeypatch.setenv('ROSETTA_DATA_DIR', str(tmp_path))
  return dst


def _edit_line(path, lineno, text):
  lines = path.read_bytes().split(b'\n')
  lines[lineno - 1] = text
  path.write_bytes(b'\n'.join(lines))


@needs['cranfield']
@pytest.mark.parametrize('file,lineno,text,message', [
    ('cranqrel', 5, b'1 51', r'cranqrel:5: expected "<query> <doc> <code>"'),
    ('cranqrel', 7, b'1 13 7', r'cranqrel:7: relevance code 7'),
    ('cranqrel', 8, b'1 1401 2', r'cranqrel:8: document 1401 is not in'),
    ('cranqrel', 9, b'1 184 2', r'cranqrel:9: query 1 judges document 184 '
                                r'twice'),
    ('cran.all.1400', 10, b'.X', r"cran.all.1400:10: unexpected marker '.X'"),
    ('cran.all.1400', 26, b'.I 7', r'cran.all.1400:26: expected document .I 2'),
    ('cran.all.1400', 36, b'', r'cran.all.1400:26: record .I 2 has no .W'),
    ('cran.qry', 2, b'.T', r"cran.qry:2: unexpected marker '.T'"),
    ('cran.qry', 3, b'\xff\xfe bad', r'cran.qry:3: not valid UTF-8'),
])
def test_cranfield_malformed_files_name_file_and_line(
    tmp_path, monkeypatch, file, lineno, text, message):
  root = _copy('cranfield', tmp_path, monkeypatch)
  _edit_line(root / file, lineno, text)
  with pytest.raises(ValueError, match=message):
    datasets.cranfield()


@needs['xquad']
def test_xquad_malformed_files_name_the_field(tmp_path, monkeypatch):
  root = _copy('xquad', tmp_path, monkeypatch)
  path = root / 'xquad.en.json'
  good = path.read_text(encoding='utf-8')
  path.write_text(good.replace('"id": "56beb4343aeaaa14008c925c"',
                               '"iid": "x"', 1), encoding='utf-8')
  with pytest.raises(ValueError, match=r"xquad.en.json: data\[0\]."
                                       r"paragraphs\[0\].qas\[1\]: missing "
                                       r"field 'id'"):
    datasets.xquad('en')
  cut = good.index('"context"', 5000)
  path.write_text(good[:cut] + ',' + good[cut:], encoding='utf-8')
  line = good[:cut].count('\n') + 1
  col = cut - good.rfind('\n', 0, cut)
  with pytest.raises(ValueError, match=rf'xquad.en.json:{line}:{col}: not '
                                       'valid JSON'):
    datasets.xquad('en')


@needs['flores']
def test_flores_malformed_files_name_file_and_line(tmp_path, monkeypatch):
  root = _copy('flores200_devtest', tmp_path, monkeypatch)
  _edit_line(root / 'deu_Latn.devtest', 12, b'   ')
  with pytest.raises(ValueError, match=r'deu_Latn.devtest:12: empty line'):
    datasets.flores_mining('deu_Latn')
  lines = (root / 'fra_Latn.devtest').read_bytes().split(b'\n')
  (root / 'fra_Latn.devtest').write_bytes(b'\n'.join(lines[:500]))
  with pytest.raises(ValueError, match='not line-aligned: fra_Latn has 500'):
    datasets.flores_mining('fra_Latn')
