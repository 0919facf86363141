"""SentencePiece vocabulary: balanced sample, training, language tokens, CLI.

Trains tiny (500-piece) vocabularies on Django's .po strings (any machine),
about a second each.
"""

import os
import sys

import pytest
import seqio
import tensorflow as tf

from rosetta import vocab
from rosetta.data import corpora as sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN_LANGS = [l.code for l in sources.LANGUAGES]
TEXTS = {  # several scripts; CJK and Greek never occur in the training text
    'latin': 'Die Zeitzone wurde geändert. Ça a été enregistré.',
    'devanagari': 'ख़ुशी का कोई अस्तित्व नहीं',   # precomposed nukta letter
    'cyrillic': 'Пароль успешно изменён.',
    'cjk': '今日は良い天気です。我们有４个月大的老鼠，对吗？',  # full-width
    'greek': 'Καλημέρα κόσμε',
    'korean': '안녕하세요',
}


@pytest.fixture(scope='module')
def texts():
  return sources.training_texts('django', ['en', 'de', 'ru'])


@pytest.fixture(scope='module')
def spm_path(tmp_path_factory, texts):
  path = str(tmp_path_factory.mktemp('vocab') / 'spm.model')
  sample = vocab.balanced_sample(texts, per_language=600, seed=0)
  vocab.train_sentencepiece(sample, path, vocab_size=500,
                            language_tokens=TOKEN_LANGS)
  return path


def test_balanced_sample_is_balanced_and_deterministic(texts):
  assert set(texts) == {'de', 'en', 'ru'}
  sample = vocab.balanced_sample(texts, per_language=300, seed=0)
  assert len(sample) == 900   # 300 per language (a string may be in two)
  for lang in texts:
    assert len(set(sample) & {t.strip() for t in texts[lang]}) >= 300
  shuffled = {k: list(reversed(v)) for k, v in texts.items()}
  assert vocab.balanced_sample(shuffled, per_language=300, seed=0) == sample
  assert vocab.balanced_sample(texts, per_language=300, seed=1) != sample
  # capped by the smallest language; duplicates and blanks do not count
  small = vocab.balanced_sample({'a': ['x', 'x', 'y', ' '],
                                 'b': ['1', '2', '3']})
  assert len(small) == 4 and {'x', 'y'} <= set(small)
  with pytest.raises(ValueError, match="'b' has no text"):
    vocab.balanced_sample({'a': ['x'], 'b': ['', ' ']})


def test_special_ids_and_language_tokens(spm_path):
  v = vocab.load_vocabulary(spm_path, languages=['de', 'zh', 'en'])
  assert isinstance(v, seqio.SentencePieceVocabulary)
  assert v.vocab_size == 500
  sp = v.tokenizer
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert [sp.id_to_piece(i) for i in range(3, 6)] == ['<2en>', '<2ar>', '<2bn>']
  for lang in TOKEN_LANGS:
    i = vocab.language_token_id(v, lang)
    assert sp.id_to_piece(i) == f'<2{lang}>'
    # one token, never split; the text form gets the dummy prefix in front
    assert sp.encode(f'<2{lang}>', out_type=str)[-1] == f'<2{lang}>'
  assert vocab.language_token_id(seqio.ByteVocabulary(), 'de') is None
  # plain text never produces a language token
  ids = v.encode('2de <2 de> 2en')
  assert not set(ids) & {vocab.language_token_id(v, l) for l in TOKEN_LANGS}


@pytest.mark.parametrize('script', sorted(TEXTS))
def test_round_trip_with_byte_fallback(spm_path, script):
  v = vocab.load_vocabulary(spm_path)
  text = TEXTS[script]
  ids = v.encode(text)
  assert v.unk_id not in ids
  assert v.decode(ids) == text
  # the TF tokenizer (seqio's pipeline) agrees with the Python one
  assert v.encode_tf(tf.constant(text)).numpy().tolist() == ids
  if script in ('cjk', 'greek', 'korean'):
    pieces = v.tokenizer.id_to_piece(ids)
    assert any(p.startswith('<0x') for p in pieces), pieces


def test_add_language_tokens_to_an_existing_model(spm_path, tmp_path):
  with pytest.raises(ValueError, match=r'no reserved piece for <2xq>.*'
                     r'add_language_tokens'):
    vocab.load_vocabulary(spm_path, languages=['de', 'xq'])
  out = str(tmp_path / 'extended.model')
  ids = vocab.add_language_tokens(spm_path, ['xq', 'de', 'xr'], out)
  old = vocab.load_vocabulary(spm_path)
  new = vocab.load_vocabulary(out, languages=['xq', 'xr', 'de'])
  assert ids == [500, vocab.language_token_id(old, 'de'), 501]
  assert new.vocab_size == 502
  assert vocab.language_token_id(new, 'xq') == 500
  text = 'Пароль успешно изменён. <2xq>'
  assert new.encode(text)[-1] == 500
  assert new.encode(TEXTS['latin']) == old.encode(TEXTS['latin'])
  with pytest.raises(ValueError, match="no piece '<2xq>'"):
    vocab.language_token_id(old, 'xq')
  with pytest.raises(FileNotFoundError, match='not found'):
    vocab.load_vocabulary(str(tmp_path / 'missing.model'))


def test_cli_matches_api_and_is_deterministic(spm_path, tmp_path, texts):
  from rosetta import vocab_command as train_vocab  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'cli' / 'spm.model')
  assert train_vocab.main([
      '--corpus', 'django', '--languages', 'de,ru', '--vocab_size', '500',
      '--sentences_per_language', '600', '--output', out]) == 0
  assert os.path.exists(out[:-len('.model')] + '.vocab')
  with open(out, 'rb') as a, open(spm_path, 'rb') as b:
    assert a.read() == b.read()   # same sample, same options, same bytes
  with pytest.raises(SystemExit):
    train_vocab.main(['--corpus', 'django', '--languages', 'de',
                      '--vocab_size', '500', '--output', out,
                      '--token_languages', 'fr'])


def test_a_small_corpus_fits_the_vocabulary_it_can_hold(tmp_path, caplog):
  sentences = ['Save and continue editing.', 'Delete the selected items.',
               'This field is required.', 'Enter a valid email address.'] * 5
  out = str(tmp_path / 'small.model')
  with pytest.raises(RuntimeError, match='vocab_size=2000 on 20 sentences'):
    vocab.train_sentencepiece(sentences, out, vocab_size=2000,
                              language_tokens=['de'])
  assert not os.path.exists(out)
  vocab.train_sentencepiece(sentences, out, vocab_size=2000,
                            language_tokens=['de'], fit_vocab_size=True)
  fitted = vocab.load_vocabulary(out)
  assert 259 < fitted.vocab_size < 2000     # bytes + specials + pieces
  assert fitted.decode(fitted.encode('Save the items.')) == 'Save the items.'
  assert any('not 2000' in r.getMessage() for r in caplog.records)
