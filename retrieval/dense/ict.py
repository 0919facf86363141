"""Inverse cloze task: (sentence, its passage) training pairs cut from the
corpus to be searched, without any query (Lee, Chang & Toutanova 2019,
"Latent Retrieval for Weakly Supervised Open Domain Question Answering").

A retriever trained from scratch on a few hundred labelled questions per
language has seen the corpus only through their positives; BM25 matches
every word of every document. ICT trains the encoder on the corpus itself:
each sentence of a document is a pseudo-query whose positive is the
passage window around it (`retrieval.search.passages`: the window where the
sentence is most central, i.e. the same windows the MaxP index holds),
with the sentence cut out of the window in (1 - keep_rate) of the pairs so
the encoder must match the context rather than copy words (ORQA keeps it
10% of the time so lexical matching is still learnt).

Nothing here reads a query: pairs come from documents only, so a corpus
whose test questions are held out (XQuAD's 30%) can be used whole. Which
pairs keep their sentence is a fixed function of (document key, sentence
position), the same in every run and for every system trained on them.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

from retrieval.search import passages

# A sentence ends at . ! ? (and the Devanagari danda, the Arabic question
# mark) followed by whitespace, or right after a CJK full stop / ! / ?.
_SENTENCE_END = re.compile(
    r'(?<=[.!?\u0964\u061f])\s+|(?<=[\u3002\uff01\uff1f])\s*')
# Thai writes no sentence punctuation: a space separates sentences (and
# clauses), so there the unit is the space-separated chunk.
_SPACE = re.compile(r'\s+')
SPACE_SEPARATED = frozenset({'th'})


def sentence_spans(text: str, lang: str = 'en') -> list[tuple[int, int]]:
  """[start, end) character spans of `text`'s sentences (no surrounding
  whitespace), in order."""
  sep = _SPACE if lang in SPACE_SEPARATED else _SENTENCE_END
  spans, start = [], 0
  for m in list(sep.finditer(text)) + [None]:
    end = len(text) if m is None else m.start()
    piece = text[start:end]
    lead = len(piece) - len(piece.lstrip())
    trail = len(piece) - len(piece.rstrip())
    if piece.strip():
      spans.append((start + lead, end - trail))
    if m is not None:
      start = m.end()
  return spans


def check_keep_rate(keep_rate: float) -> None:
  if not 0.0 <= keep_rate <= 1.0:
    raise ValueError(f'ICT keep_rate must be in [0, 1], got {keep_rate}')


def _keeps(key: str, keep_rate: float) -> bool:
  h = int(hashlib.md5(key.encode('utf-8')).hexdigest()[:8], 16)
  return h / 0x100000000 < keep_rate


def _without(text: str, s: int, t: int) -> tuple[str, int]:
  """`text` with text[s:t] cut out, and where the cut now is."""
  before, after = text[:s], text[t:]
  joint = ' ' if (before[-1:].isspace() or after[:1].isspace()) else ''
  before = before.rstrip()
  return before + joint + after.lstrip(), len(before) + len(joint) // 2


def examples(docs: Sequence[str], vocabulary, length: int, *,
             lang: str = 'en', keep_rate: float = 0.1,
             min_query_chars: int = 10, key: str = '',
             stride: int | None = None
             ) -> list[tuple[str, str, tuple[()]]]:
  """(sentence, passage around it, ()) for every sentence of at least
  min_query_chars characters of every document that has another sentence.

  The passage is a window of `length` pieces of `vocabulary` (stride
  `stride`, default length // 2, as `passages.windows` cuts them): when
  the sentence is kept, the document's window where it is most central;
  otherwise the window of the document WITHOUT the sentence most central
  on where it was, so a long sentence cut out still leaves a full window
  of its context."""
  check_keep_rate(keep_rate)
  if min_query_chars < 1:
    raise ValueError(f'ICT min_query_chars must be >= 1, got '
                     f'{min_query_chars}')
  out = []
  for d, text in enumerate(docs):
    spans = sentence_spans(text, lang)
    if len(spans) < 2:
      continue
    wins = None
    for j, (s, t) in enumerate(spans):
      if t - s < min_query_chars:
        continue
      if _keeps(f'{key}\t{d}\t{j}', keep_rate):
        wins = wins or passages.windows(text, vocabulary, length, stride)
        positive = passages.best_window(wins, s, t, len(text))
      else:
        rest, at = _without(text, s, t)
        positive = passages.best_window(
            passages.windows(rest, vocabulary, length, stride), at, at,
            len(rest))
      out.append((text[s:t], positive, ()))
  return out
