"""Long documents as overlapping token windows ("passages"), scored by
their best window (MaxP; Dai & Callan 2019, "Deeper Text Understanding for
IR with Contextual Neural Language Modeling").

A dual encoder reads at most its trained length (e.g. 96 tokens) of a
text, and most documents are longer: an XQuAD paragraph is a median ~290
tokens of our 8k SentencePiece vocabulary (~70% of its tokens lie past the
first 96), a Cranfield abstract ~380. Encoding only the first window
("FirstP") hides most answers from the index, while BM25 sees every word.
So the index holds every window of `length` tokens, `stride` apart (the
last one ends at the document's end), and a document's score for a query
is its best window's.

Windows are cut on SentencePiece pieces and returned as the document's own
text between the first piece's start and the last piece's end (UTF-8 byte
offsets, so a window never splits a character, byte-fallback pieces
included): any encoder that takes text (ours, or a peer's) indexes the
same windows, and re-tokenising a window gives back its pieces.

`doc_topk` turns a search over passages into a ranking of documents
exactly: the first k distinct documents of a best-first passage list are
the k documents with the highest maximum, and they all lie within its
first k x (most windows of one document) entries, which is how many
`search` asks for.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def _processor(vocabulary):
  """A sentencepiece processor from a model path, a processor, or a
  seqio.SentencePieceVocabulary."""
  import sentencepiece as spm
  if isinstance(vocabulary, spm.SentencePieceProcessor):
    return vocabulary
  if isinstance(vocabulary, str):
    return spm.SentencePieceProcessor(model_file=vocabulary)
  tokenizer = getattr(vocabulary, 'tokenizer', None)
  if isinstance(tokenizer, spm.SentencePieceProcessor):
    return tokenizer
  raise TypeError('passages need a SentencePiece vocabulary (a model path, '
                  'a SentencePieceProcessor or a seqio.SentencePieceVocabulary'
                  f'), got {type(vocabulary).__name__}')


def check_window(length: int, stride: int | None) -> int:
  if length < 1:
    raise ValueError(f'passage length must be >= 1 token, got {length}')
  stride = max(1, length // 2) if stride is None else stride
  if not 1 <= stride <= length:
    raise ValueError(f'passage stride must be in [1, length={length}], got '
                     f'{stride} (a larger stride would skip text)')
  return stride


def window_spans(piece_spans: Sequence[tuple[int, int]], length: int,
                 stride: int | None = None) -> list[tuple[int, int]]:
  """Byte spans of the windows over a text's pieces ((begin, end) each):
  starts 0, stride, 2 x stride, ... while the text goes on, the last
  window ending at the last piece. A text of no pieces: one empty span."""
  stride = check_window(length, stride)
  n = len(piece_spans)
  if n == 0:
    return [(0, 0)]
  starts = list(range(0, max(n - length, 0) + 1, stride))
  if starts[-1] + length < n:        # the stride stepped over the tail
    starts.append(n - length)
  return [(piece_spans[s][0], piece_spans[min(s + length, n) - 1][1])
          for s in starts]


def _piece_spans(sp, text: str) -> tuple[bytes, list[tuple[int, int]]]:
  proto = sp.encode(text, out_type='proto')
  return text.encode('utf-8'), [(p.begin, p.end) for p in proto.pieces]


def windows(text: str, vocabulary, length: int,
            stride: int | None = None) -> list[tuple[int, int, str]]:
  """(begin, end, text) of each window of `text`; begin/end are character
  offsets in `text`."""
  raw, spans = _piece_spans(_processor(vocabulary), text)
  out = []
  for b, e in window_spans(spans, length, stride):
    cb = len(raw[:b].decode('utf-8'))
    piece = raw[b:e].decode('utf-8')
    out.append((cb, cb + len(piece), piece))
  return out


def window_holding(text: str, start: int, end: int, vocabulary, length: int,
                   stride: int | None = None) -> str:
  """The window of `text` that best holds characters [start, end) (e.g. an
  answer span); see `best_window`."""
  return best_window(windows(text, vocabulary, length, stride), start, end,
                     len(text))


def best_window(wins: Sequence[tuple[int, int, str]], start: int, end: int,
                text_length: int) -> str:
  """The text of `best_window_span`."""
  return best_window_span(wins, start, end, text_length)[2]


def best_window_span(wins: Sequence[tuple[int, int, str]], start: int,
                     end: int, text_length: int) -> tuple[int, int, str]:
  """Of `windows(...)` of one text, the one holding [start, end): among
  the windows covering all of it, the one where it is most central; if
  none covers it (longer than a window), the one overlapping it most."""
  if not 0 <= start <= end <= text_length:
    raise ValueError(f'span [{start}, {end}) is outside a text of '
                     f'{text_length} characters')
  mid = (start + end) / 2

  def key(w):
    b, e, _ = w
    covers = b <= start and end <= e
    overlap = min(e, end) - max(b, start)
    return (covers, overlap, -abs((b + e) / 2 - mid))
  return max(wins, key=key)


@dataclasses.dataclass(frozen=True)
class Passages:
  """Windows of a corpus: `texts[i]` is a window of document `owner[i]`."""
  texts: tuple[str, ...]
  owner: np.ndarray            # int32 [num_passages]
  num_docs: int
  length: int
  stride: int

  @property
  def max_per_doc(self) -> int:
    return int(np.bincount(self.owner, minlength=self.num_docs).max())


def split(docs: Sequence[str], vocabulary, length: int,
          stride: int | None = None) -> Passages:
  """Every document's windows of `length` pieces, `stride` apart (default
  length // 2), in document order. A document no longer than `length` is
  one passage, itself."""
  sp = _processor(vocabulary)
  stride = check_window(length, stride)
  texts, owner = [], []
  for d, doc in enumerate(docs):
    raw, spans = _piece_spans(sp, doc)
    for b, e in window_spans(spans, length, stride):
      texts.append(raw[b:e].decode('utf-8'))
      owner.append(d)
  return Passages(tuple(texts), np.asarray(owner, np.int32), len(docs),
                  length, stride)


def doc_topk(scores: np.ndarray, indices: np.ndarray, owner: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray]:
  """Best-first passage hits [q, m] -> the k best documents by their best
  passage: (scores [q, k] float32, document rows [q, k] int32). Exact
  when m >= k x (most passages of one document), or m = all passages;
  rows with fewer distinct documents are padded with -1 / -inf."""
  q = indices.shape[0]
  out_s = np.full((q, k), -np.inf, np.float32)
  out_i = np.full((q, k), -1, np.int32)
  docs = owner[indices]
  for r in range(q):
    _, first = np.unique(docs[r], return_index=True)
    first = np.sort(first)[:k]
    out_s[r, :len(first)] = scores[r, first]
    out_i[r, :len(first)] = docs[r, first]
  return out_s, out_i


def search(corpus, queries, k: int, passages: Passages, **search_kwargs):
  """Exact top-k documents by their best passage: `retrieval.search.exact.search`
  over the passage embeddings (`corpus`, rows in `passages` order; any
  hubness `correction=` applies to passages), then `doc_topk`."""
  from retrieval.search import exact as search_lib
  if corpus.n_docs != len(passages.texts):
    raise ValueError(f'the corpus holds {corpus.n_docs} rows but there are '
                     f'{len(passages.texts)} passages')
  k = min(k, passages.num_docs)
  m = min(len(passages.texts), k * passages.max_per_doc)
  hits = search_lib.search(corpus, queries, m, **search_kwargs)
  s, i = doc_topk(np.asarray(hits.scores), np.asarray(hits.indices),
                  passages.owner, k)
  return search_lib.SearchResult(s, i)
