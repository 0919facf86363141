"""Corpus readers and splits on the real files, and on broken copies.

Tatoeba / FLORES / Multi30k tests skip when the data directory
($ROSETTA_DATA_DIR or ../shared/data) lacks them; Django tests always run.
"""

import gzip
import os

import pytest

from rosetta.data import corpora as sources

needs_tatoeba = pytest.mark.skipif(
    not sources.available('tatoeba'),
    reason=f'no Tatoeba Challenge files under {sources.tatoeba_root()}')
needs_flores = pytest.mark.skipif(
    not sources.available('flores'),
    reason=f'no FLORES-200 devtest under {sources.flores_root()}')
needs_multi30k = pytest.mark.skipif(
    not sources.available('multi30k'),
    reason=f'no Multi30k under {sources.multi30k_root()}')


def english_of(pairs):
  return {e for e, _ in pairs}


# ------------------------------------------------------------ languages ---

def test_language_table_maps_every_code_system():
  codes = [l.code for l in sources.LANGUAGES]
  assert len(set(codes)) == len(codes)
  assert len({l.iso3 for l in sources.LANGUAGES}) == len(codes)
  for l in sources.LANGUAGES:
    for c in (l.code, l.iso3, l.flores, l.django):
      if c:
        assert sources.language(c) is l, c
  assert sources.language('deu').flores == 'deu_Latn'
  assert sources.language('arb_Arab').code == 'ar'   # FLORES: Standard Arabic
  assert sources.language('swh').code == 'sw'
  assert sources.language('ZH_HANS').code == 'zh'
  with pytest.raises(ValueError, match="unknown language code 'xx'"):
    sources.language('xx')


@needs_tatoeba
@needs_flores
def test_every_real_folder_and_file_is_in_the_table():
  assert len(sources.tatoeba_languages()) == 21
  assert len(sources.flores_languages()) == 30
  for lang in sources.tatoeba_languages():
    for path in sources.tatoeba_files(lang):
      assert os.path.exists(path), path


# ----------------------------------------------------------- hash split ---

def test_hash_split_keeps_keys_together_and_respects_caps():
  pairs = [(f'e{i % 700}', f'x{i}') for i in range(2000)]   # ~3 per English
  spec = sources.SplitSpec(validation=0.1, test=0.1, max_validation=50,
                           max_test=None)
  splits, overflow = sources.hash_split(pairs, spec)
  assert sum(len(v) for v in splits.values()) == 2000
  sides = [english_of(splits[k]) for k in ('train', 'validation', 'test')]
  assert not (sides[0] & sides[1] or sides[0] & sides[2] or
              sides[1] & sides[2])
  assert 44 < len(splits['validation']) <= 50
  assert overflow > 100                           # ~10% of 2000, minus 50
  assert 120 < len(splits['test']) < 300          # uncapped: ~10%
  # the kept validation keys are a prefix of hash order
  kept = max(sources.hash_unit(e) for e in sides[1])
  assert all(sources.hash_unit(e) > kept for e in sides[0]
             if sources.hash_unit(e) < 0.1)
  # input order within a split; same answer on a second call
  assert splits['train'] == [p for p in pairs if p[0] in sides[0]]
  assert sources.hash_split(pairs, spec) == (splits, overflow)
  with pytest.raises(ValueError, match='sum < 1'):
    sources.SplitSpec(validation=0.6, test=0.5)


# -------------------------------------------------------------- tatoeba ---

@needs_tatoeba
@pytest.mark.parametrize('lang', ['de', 'zh'])
def test_tatoeba_split_real(lang):
  splits = sources.tatoeba_splits(lang)
  stats = splits.stats
  n = stats.lines
  assert n > 10_000
  assert sum(len(v) for v in splits.values()) == n - stats.skipped[
      'empty side']
  assert stats.pairs == {k: len(v) for k, v in splits.items()}
  assert 0.01 * n < len(splits['validation']) <= 500
  assert 0.02 * n < len(splits['test']) <= 1000
  train, val, test = (english_of(splits[k])
                      for k in ('train', 'validation', 'test'))
  assert not train & test and not train & val and not val & test
  # not by position: held-out pairs come from all over the sorted file
  eng_path, _ = sources.tatoeba_files(lang)
  with open(eng_path, encoding='utf-8') as f:
    position = {line.strip(): i for i, line in enumerate(f)}
  where = sorted(position[e] for e, _ in splits['test'])
  assert where[0] < n // 10 and where[-1] > n - n // 10
  # deterministic: a fresh read gives the same split
  assert sources.tatoeba_splits.__wrapped__(lang) == splits


@needs_tatoeba
def test_tatoeba_held_out_english_is_held_out_in_every_direction():
  held, train = set(), set()
  for lang in sources.tatoeba_languages():
    splits = sources.tatoeba_splits(lang)
    assert splits.stats.held_out_overflow == 0      # caps do not bind
    held |= english_of(splits['validation'] + splits['test'])
    train |= english_of(splits['train'])
  assert len(held) > 9000 and not held & train


def write_tatoeba(root, eng_lines, deu_lines, raw_deu=None):
  folder = root / 'deu-eng'
  folder.mkdir(parents=True, exist_ok=True)
  (folder / f'{sources.TATOEBA_STEM}.eng').write_text(
      ''.join(l + '\n' for l in eng_lines), encoding='utf-8')
  path = folder / f'{sources.TATOEBA_STEM}.deu'
  if raw_deu is not None:
    path.write_bytes(raw_deu)
  else:
    path.write_text(''.join(l + '\n' for l in deu_lines), encoding='utf-8')
  return str(root)


def test_tatoeba_broken_inputs_name_file_and_line(tmp_path):
  root = write_tatoeba(tmp_path / 'a', ['Hi.', 'Bye.', 'Yes.'],
                       ['Hallo.', 'Tschüss.'])
  with pytest.raises(ValueError, match=r'not line-aligned: .*\.eng has 3 '
                     r'lines but .*deu-eng/tatoeba-test-v2021-08-07\.deu '
                     r'has 2'):
    sources.tatoeba_splits('de', root)
  root = write_tatoeba(tmp_path / 'b', ['Hi.', 'Bye.', 'Yes.'], None,
                       raw_deu=b'Hallo.\nTsch\xfc\xdf.\nJa.\n')  # Latin-1
  with pytest.raises(ValueError, match=r'tatoeba-test-v2021-08-07\.deu:2: '
                     r'not valid UTF-8'):
    sources.tatoeba_splits('de', root)
  with pytest.raises(FileNotFoundError, match='no folder .*eng-fra'):
    sources.tatoeba_files('fr', root)


def test_tatoeba_empty_lines_are_counted_and_logged(tmp_path, caplog):
  eng = [f'Sentence {i}.' for i in range(50)] + ['', 'Lonely.']
  deu = [f'Satz {i}.' for i in range(50)] + ['Leer.', '  ']
  root = write_tatoeba(tmp_path, eng, deu)
  with caplog.at_level('WARNING'):
    splits = sources.tatoeba_splits('de', root)
  assert sum(len(v) for v in splits.values()) == 50
  stats = sources.corpus_stats()['tatoeba:de']
  assert stats is splits.stats
  assert (stats.lines, stats.skipped) == (52, {'empty side': 2})
  assert 'skipped 2 of 52 pairs (empty side)' in caplog.text
  src = sources.source('tatoeba', 'de', 'en', root=root)
  assert src.pairs('train')[0] == ('Satz 0.', 'Sentence 0.')   # reversed
  assert src.stats('train').skipped_empty == 2


# --------------------------------------------------------------- flores ---

@needs_flores
def test_flores_validation_is_whole_documents_across_domains():
  val = sources.flores_validation_lines()
  assert 200 <= len(val) < 240
  meta = os.path.join(sources.flores_root(), 'metadata_devtest.tsv')
  with open(meta, encoding='utf-8') as f:
    rows = [l.rstrip('\n').split('\t') for l in f][1:]
  urls = {rows[i][0] for i in val}
  assert all(rows[i][0] not in urls for i in range(len(rows)) if i not in val)
  assert {rows[i][1] for i in val} == {'wikinews', 'wikibooks', 'wikivoyage'}
  splits = sources.flores_splits('de', 'fr')
  assert len(splits['validation']) + len(splits['test']) == 1012
  assert len(splits['validation']) == len(val)
  zh_de = sources.flores_splits('zh', 'de')      # multi-parallel: same lines
  assert [d for _, d in zh_de['test']] == [d for d, _ in splits['test']]


def test_flores_mismatched_files(tmp_path):
  (tmp_path / 'deu_Latn.devtest').write_text('a\nb\nc\n', encoding='utf-8')
  (tmp_path / 'fra_Latn.devtest').write_text('a\nb\n', encoding='utf-8')
  (tmp_path / 'eng_Latn.devtest').write_bytes(b'a\n\xff\nc\n')
  with pytest.raises(ValueError, match=r'deu_Latn.devtest has 3 lines but '
                     r'.*fra_Latn.devtest has 2'):
    sources.flores_splits('de', 'fr', str(tmp_path))
  with pytest.raises(ValueError, match=r'eng_Latn.devtest:2: not valid UTF-8'):
    sources.flores_splits('en', 'de', str(tmp_path))


def test_flores_metadata_must_have_one_row_per_sentence(tmp_path):
  for lang in ('eng_Latn', 'deu_Latn'):
    (tmp_path / f'{lang}.devtest').write_text('a\nb\nc\n', encoding='utf-8')
  (tmp_path / 'metadata_devtest.tsv').write_text(
      'URL\tdomain\nu1\twiki\nu2\tnews\n', encoding='utf-8')  # a row gone
  with pytest.raises(ValueError, match=r'metadata_devtest.tsv has 2 rows '
                     r'after its header but .*eng_Latn.devtest has 3 lines'):
    sources.flores_splits('en', 'de', str(tmp_path))


# ------------------------------------------------------------- multi30k ---

@needs_multi30k
def test_multi30k_source():
  src = sources.source('multi30k', 'en', 'fr')
  assert len(src.pairs('validation')) == 1014
  assert set(src.splits) == {'train', 'validation', 'test'}
  with pytest.raises(ValueError, match="multi30k has .* not 'ru'"):
    sources.source('multi30k', 'en', 'ru')


def test_multi30k_mismatch_names_both_files(tmp_path):
  for lang, n in (('en', 3), ('de', 2)):
    with gzip.open(tmp_path / f'val.{lang}.gz', 'wt') as f:
      f.write('x\n' * n)
  src = sources.multi30k_source('en', 'de', str(tmp_path))
  with pytest.raises(ValueError, match=r'val\.en\.gz has 3 lines but '
                     r'.*val\.de\.gz has 2'):
    src.pairs('validation')


# --------------------------------------------------------------- django ---

def test_django_split_always_available():
  splits = sources.django_splits('fr')
  stats = sources.corpus_stats()['django:fr']
  assert len(splits['train']) > 600
  assert 20 < len(splits['validation']) < 100
  assert 20 < len(splits['test']) < 100
  train, val, test = (english_of(splits[k])
                      for k in ('train', 'validation', 'test'))
  assert not train & test and not train & val and not val & test
  assert stats.lines > stats.pairs['train'] and 'fuzzy' in stats.skipped
  src = sources.source('django', 'fr', 'en')
  assert src.pairs('test') == [(b, a) for a, b in splits['test']]
  with pytest.raises(ValueError, match='Django ships no translation for '
                     'Yoruba'):
    sources.django_splits('yo')
  with pytest.raises(ValueError, match='pairs English with another'):
    sources.source('django', 'de', 'fr')


def test_training_texts_english_from_every_pair():
  texts = sources.training_texts('django', ['de', 'fr', 'en'])
  assert set(texts) == {'de', 'en', 'fr'}
  assert len(texts['en']) == len(texts['de']) + len(texts['fr'])
  de_train = sources.django_splits('de')['train']
  assert texts['de'] == [x for _, x in de_train]
