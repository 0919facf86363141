"""BM25 baseline through bm25s, returning `search.SearchResult`s.

    index = BM25Index(corpus_texts, lang='en')
    result = index.search(query_texts, k=100)   # same format as search.search
    run = ir_metrics.run_from_topk(result.indices, query_ids, doc_ids)

Tokenisation (`tokenize`): Unicode case folding (`str.lower`), then runs of
letters, digits and combining marks (Python's `\\w` alone splits Hindi or
Thai words at every vowel sign, since those are marks, not letters). Inside
a run, text in a script written without spaces between words (Han,
Hiragana, Katakana, Thai, Lao, Khmer, Myanmar) becomes overlapping
character bigrams (a lone character stays a unigram), as Lucene's CJK
analyser does: whitespace tokenisation would make a whole Chinese or Thai
sentence one token. The choice is by script, so mixed text ("iPhone手机")
works whatever `lang` says. `lang` only picks a stopword list that bm25s
ships (en, de, es, fr, it, pt, nl, ru, sv, tr, zh, ko, ...); no stemming
(PyStemmer is not a dependency).

Ranking is deterministic: the full BM25 score vector of each query is
ranked by score, ties to the lower corpus row, like `search.search`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Sequence

import bm25s
import bm25s.stopwords
import numpy as np

from retrieval.search.exact import SearchResult

# Combining marks of the BMP: part of a word (Devanagari/Thai vowel signs).
_MARKS = ''.join(chr(c) for c in range(0x300, 0x10000)
                 if unicodedata.category(chr(c)).startswith('M')
                 and not 0xD800 <= c <= 0xDFFF)
_TOKEN = re.compile('[\\w' + re.escape(_MARKS) + ']+')
# Scripts written without spaces between words -> character bigrams.
_NO_SPACE = ('\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff'
             '\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff')
_SEGMENT = re.compile(f'[{_NO_SPACE}]+|[^{_NO_SPACE}]+')
_IS_NO_SPACE = re.compile(f'[{_NO_SPACE}]')

_STOPWORDS = {
    'en': 'STOPWORDS_EN', 'de': 'STOPWORDS_GERMAN', 'es': 'STOPWORDS_SPANISH',
    'fr': 'STOPWORDS_FRENCH', 'it': 'STOPWORDS_ITALIAN',
    'pt': 'STOPWORDS_PORTUGUESE', 'nl': 'STOPWORDS_DUTCH',
    'ru': 'STOPWORDS_RUSSIAN', 'sv': 'STOPWORDS_SWEDISH',
    'tr': 'STOPWORDS_TURKISH', 'zh': 'STOPWORDS_CHINESE',
    'ko': 'STOPWORDS_KOREAN', 'da': 'STOPWORDS_DANISH',
    'no': 'STOPWORDS_NORWEGIAN'}


def stopwords(lang: str | None) -> frozenset[str]:
  """bm25s's stopword list for an ISO 639-1 code; empty if it has none."""
  if lang is None or lang not in _STOPWORDS:
    return frozenset()
  return frozenset(w.lower() for w in getattr(bm25s.stopwords,
                                              _STOPWORDS[lang]))


def tokenize(text: str, stop: frozenset[str] = frozenset()) -> list[str]:
  """Lower-cased word tokens; bigrams for no-space scripts (docstring)."""
  out = []
  for run in _TOKEN.findall(text.lower()):
    for seg in _SEGMENT.findall(run):
      if _IS_NO_SPACE.match(seg):
        out.extend([seg] if len(seg) == 1 else
                   [seg[i:i + 2] for i in range(len(seg) - 1)])
      elif seg not in stop and seg != '_' * len(seg):
        out.append(seg)
  return out


class BM25Index:
  """A bm25s index of `docs` (row i = docs[i])."""

  def __init__(self, docs: Sequence[str], *, lang: str | None = None,
               k1: float = 1.5, b: float = 0.75, method: str = 'lucene',
               tokenizer: Callable[[str], list[str]] | None = None):
    """tokenizer: replaces `tokenize` (and `lang`'s stopwords) if given."""
    if not docs:
      raise ValueError('BM25Index: empty corpus')
    self.lang = lang
    self.num_docs = len(docs)
    stop = stopwords(lang)
    self._tokenize = tokenizer or (lambda text: tokenize(text, stop))
    self._bm25 = bm25s.BM25(k1=k1, b=b, method=method)
    self._bm25.index([self._tokenize(d) for d in docs], show_progress=False)

  def scores(self, query: str) -> np.ndarray:
    """BM25 score of every document for one query (float32 [num_docs])."""
    ids = self._bm25.get_tokens_ids(self._tokenize(query))
    if not ids:                       # no query word is in the corpus
      return np.zeros(self.num_docs, np.float32)
    return np.asarray(self._bm25.get_scores(ids), np.float32)

  def search(self, queries: Sequence[str], k: int) -> SearchResult:
    if not 1 <= k <= self.num_docs:
      raise ValueError(f'k={k} must be in 1..{self.num_docs} (corpus size)')
    rows = np.arange(self.num_docs)
    scores = np.empty((len(queries), k), np.float32)
    indices = np.empty((len(queries), k), np.int32)
    for i, q in enumerate(queries):
      s = self.scores(q)
      # All documents scoring at least the k-th best, then an exact
      # (score desc, row asc) sort of those few.
      kth = np.partition(s, self.num_docs - k)[self.num_docs - k]
      cand = rows[s >= kth]
      order = np.lexsort((cand, -s[cand]))[:k]
      indices[i] = cand[order]
      scores[i] = s[cand[order]]
    return SearchResult(scores, indices)

