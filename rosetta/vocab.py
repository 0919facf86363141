"""SentencePiece vocabularies: training, loading, target-language tokens.

Multilingual NMT (Johnson et al. 2017) marks the target language with a
token `<2xx>` at the start of the source. Here each `<2xx>` is a reserved
piece (a SentencePiece `user_defined_symbol`), so it is ONE token id that the
tokenizer never splits and never produces from ordinary text.

Conventions (T5/mT5): pad_id=0, eos_id=1, unk_id=2, no BOS; unigram model
with byte fallback, so any character (e.g. CJK that the sample never saw)
encodes as UTF-8 byte pieces `<0xE4>...` and decodes back exactly.

Worked example (what `tests/test_vocab.py` checks)::

    texts = {'en': [...], 'de': [...], 'ru': [...]}   # from the train splits
    sample = balanced_sample(texts, per_language=1000)  # 1000 each, seeded
    train_sentencepiece(sample, '/tmp/spm.model', vocab_size=500,
                        language_tokens=['de', 'en', 'ru', 'zh'])
    vocab = load_vocabulary('/tmp/spm.model', languages=['de'])
    vocab.tokenizer.id_to_piece([0, 1, 2, 3])
    # ['<pad>', '</s>', '<unk>', '<2de>']
    language_token_id(vocab, 'de')              # 3
    vocab.decode(vocab.encode('今日は？'))        # '今日は？' (byte pieces)

Gotcha: the tokenizer's dummy prefix turns the TEXT '<2de> Hallo' into
['▁', '<2de>', '▁Hallo']: the tag is then the second token. Prepend the id
instead: `[language_token_id(vocab, 'de')] + vocab.encode('Hallo')`
(`translation.tasks` does exactly this).

An existing model (e.g. mT5's `spiece.model`) has no `<2xx>` pieces:
`load_vocabulary(path, languages=[...])` then fails and names the missing
tokens; `add_language_tokens(path, languages, new_path)` appends them as
user-defined pieces at the END of the model (existing ids unchanged, so
pretrained embeddings still line up; the model's embedding table must have
rows for the new ids, e.g. mT5's 250,112 rows cover 250,100 + 12 ids, so
more than 12 tokens need a resized table).
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import Iterable, Mapping, Sequence

from absl import logging
import seqio
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
import tensorflow as tf

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def language_token(lang: str) -> str:
  """'de' -> '<2de>' (the reserved piece that asks for German output)."""
  if not lang or any(c in lang for c in '<> \t\n'):
    raise ValueError(f'language code {lang!r}: expected e.g. "de"')
  return f'<2{lang}>'


def _stable_key(seed: int, text: str) -> bytes:
  return hashlib.sha256(f'{seed}\x00{text}'.encode('utf-8')).digest()


def balanced_sample(texts_by_language: Mapping[str, Sequence[str]], *,
                    per_language: int | None = None,
                    seed: int = 0) -> list[str]:
  """The same number of distinct sentences from every language.

  Each language's sentences are de-duplicated (after stripping), ordered by a
  seeded SHA-256 of the text (independent of input order, so the same text
  gives the same sample on any machine) and the first
  `n = min(per_language, smallest language)` are kept. Empty strings are
  ignored. The result is ordered by the same hash across languages.

  >>> balanced_sample({'en': ['a', 'b', 'b', 'c'], 'de': ['x', 'y']})
  ... # 2 English + 2 German sentences, e.g. ['y', 'c', 'x', 'a']
  """
  if not texts_by_language:
    raise ValueError('balanced_sample: no languages given')
  distinct = {}
  for lang, texts in texts_by_language.items():
    uniq = {t.strip() for t in texts} - {''}
    if not uniq:
      raise ValueError(f'balanced_sample: language {lang!r} has no text')
    distinct[lang] = sorted(uniq, key=lambda t: _stable_key(seed, t))
  n = min(len(v) for v in distinct.values())
  if per_language is not None:
    n = min(n, per_language)
  smallest = min(distinct, key=lambda k: len(distinct[k]))
  logging.info('balanced_sample: %d sentences x %d languages (smallest: %s '
               'with %d)', n, len(distinct), smallest, len(distinct[smallest]))
  out = [t for lang in sorted(distinct) for t in distinct[lang][:n]]
  return sorted(out, key=lambda t: _stable_key(seed, t))


def train_sentencepiece(sentences: Iterable[str], output: str, *,
                        vocab_size: int,
                        language_tokens: Sequence[str] = (),
                        model_type: str = 'unigram',
                        character_coverage: float = 0.9995,
                        byte_fallback: bool = True,
                        user_defined_symbols: Sequence[str] = (),
                        normalization: str = 'identity',
                        num_threads: int = 2,
                        fit_vocab_size: bool = False) -> str:
  """Trains a SentencePiece model on `sentences`; writes `output` (+.vocab).

  `language_tokens` are language codes: `<2xx>` for each becomes a
  user-defined piece with ids 3, 4, ... in the given order (after pad=0,
  eos=1, unk=2). `output` may be any tf.io.gfile path (gs:// too); the
  piece list is written beside it as `<output minus .model>.vocab`.
  Returns `output`. `fit_vocab_size`: when the sentences cannot fill
  `vocab_size` pieces, train the largest size SentencePiece reports they
  can (logged) instead of failing.

  `normalization='identity'` (not SentencePiece's default 'nmt_nfkc', which
  T5/mT5 use): NFKC rewrites full-width punctuation and Devanagari nukta
  letters, so decode(encode(reference)) != reference for 27% of Tatoeba's
  Chinese, 14% of its Japanese and 1% of its Hindi sentences, and a perfect
  model would lose BLEU against the raw references. Runs of spaces are
  still collapsed.
  """
  symbols = [language_token(l) for l in language_tokens]
  symbols += [s for s in user_defined_symbols if s not in symbols]
  if len(set(symbols)) != len(symbols):
    raise ValueError(f'duplicate language tokens in {list(language_tokens)}')
  sentences = [s for s in sentences if s.strip()]
  if not sentences:
    raise ValueError('train_sentencepiece: no sentences')

  def train(size: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model,
        vocab_size=size, model_type=model_type,
        character_coverage=character_coverage, byte_fallback=byte_fallback,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        user_defined_symbols=symbols, normalization_rule_name=normalization,
        # Use every sentence, in order: the sample is already balanced and
        # deterministic; SentencePiece's own sampling would undo both.
        input_sentence_size=0, shuffle_input_sentence=False,
        num_threads=num_threads, minloglevel=2)
    return model.getvalue()

  try:
    try:
      proto = train(vocab_size)
    except RuntimeError as e:
      # "Vocabulary size is too high (8000). Please set it to a value <=
      # 4303.": a small corpus cannot fill the requested size.
      largest = re.search(r'value <= (\d+)', str(e))
      if not (fit_vocab_size and largest):
        raise
      fitted = int(largest.group(1))
      logging.warning('train_sentencepiece: %d sentences hold at most %d '
                      'pieces, not %d; training %d', len(sentences), fitted,
                      vocab_size, fitted)
      proto = train(fitted)
  except RuntimeError as e:
    raise RuntimeError(
        f'SentencePiece training failed for vocab_size={vocab_size} on '
        f'{len(sentences)} sentences ({len(symbols)} reserved symbols'
        f'{", 256 byte pieces" if byte_fallback else ""}): {e}') from e
  _write(output, proto)
  sp = spm.SentencePieceProcessor(model_proto=proto)
  vocab_path = (output[:-len('.model')] if output.endswith('.model')
                else output) + '.vocab'
  _write(vocab_path, ''.join(
      f'{sp.id_to_piece(i)}\t{sp.get_score(i)}\n'
      for i in range(sp.get_piece_size())).encode('utf-8'))
  logging.info('wrote %s: %d pieces, %d reserved symbols, from %d sentences',
               output, sp.get_piece_size(), len(symbols), len(sentences))
  return output


def _write(path: str, data: bytes) -> None:
  parent = path.rsplit('/', 1)[0] if '/' in path else ''
  if parent:
    tf.io.gfile.makedirs(parent)
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(data)


def _read_proto(path: str) -> sentencepiece_model_pb2.ModelProto:
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'SentencePiece model not found: {path}')
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  try:
    return sentencepiece_model_pb2.ModelProto.FromString(data)
  except Exception as e:  # protobuf's DecodeError
    raise ValueError(f'{path}: not a SentencePiece model ({e})') from e


def add_language_tokens(model_path: str, languages: Sequence[str],
                        output: str) -> list[int]:
  """Copies a model with `<2xx>` pieces for `languages` appended at the end.

  Pieces already present are left where they are (not added twice). The new
  pieces are USER_DEFINED (never split, never produced from plain text),
  the same mechanism seqio uses for `<extra_id_N>`. Returns the id of each
  language's token, in `languages` order.
  """
  proto = _read_proto(model_path)
  index = {p.piece: i for i, p in enumerate(proto.pieces)}
  ids = []
  for lang in languages:
    tok = language_token(lang)
    if tok not in index:
      proto.pieces.add(
          piece=tok, score=0.0,
          type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
      index[tok] = len(proto.pieces) - 1
    ids.append(index[tok])
  _write(output, proto.SerializeToString())
  return ids


def load_vocabulary(path: str, *, languages: Sequence[str] = (),
                    extra_ids: int = 0) -> seqio.SentencePieceVocabulary:
  """A `seqio.SentencePieceVocabulary`, checked for Rosetta's conventions.

  Raises ValueError if pad/eos are not 0/1 (seqio and the feature converters
  assume them) or if a `<2xx>` token for one of `languages` is missing or is
  not a single reserved piece (see `add_language_tokens`).
  """
  proto = _read_proto(path)
  sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
  if (sp.pad_id(), sp.eos_id()) != (PAD_ID, EOS_ID):
    raise ValueError(
        f'{path}: pad_id={sp.pad_id()}, eos_id={sp.eos_id()}; Rosetta (T5 '
        f'convention) needs pad_id=0, eos_id=1 (train with '
        f'`rosetta vocab`)')
  user_defined = {p.piece for p in proto.pieces if p.type == p.USER_DEFINED}
  missing = [language_token(l) for l in languages
             if language_token(l) not in user_defined]
  if missing:
    raise ValueError(
        f'{path}: no reserved piece for {", ".join(missing)}. Train a '
        f'vocabulary with `rosetta vocab` (it reserves <2xx> for every '
        f'language) or append them with rosetta.vocab.add_language_tokens('
        f'{path!r}, languages, new_path)')
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def language_token_id(vocab: seqio.Vocabulary, lang: str) -> int | None:
  """The id of `<2xx>` in a SentencePiece vocabulary; None for others.

  None means "no such single token": byte-level vocabularies spell the tag
  as text. A SentencePiece vocabulary without the piece raises (a silent
  fallback to text would give the model a different input format).
  """
  if not isinstance(vocab, seqio.SentencePieceVocabulary):
    return None
  tok = language_token(lang)
  sp = vocab.tokenizer
  i = sp.piece_to_id(tok)
  if i == sp.unk_id() or sp.id_to_piece(i) != tok:
    raise ValueError(
        f'vocabulary {vocab.sentencepiece_model_file} has no piece {tok!r}; '
        f'use a vocabulary from `rosetta vocab` or '
        f'rosetta.vocab.add_language_tokens')
  return i
