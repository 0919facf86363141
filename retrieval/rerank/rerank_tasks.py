"""seqio tasks for rerankers: (query, positive, negatives mined from a
first-stage run), the pair format, and the feature converter.

Sets (`setup.sets`, one task `rerank_<set>` each, and a temperature
mixture `setup.mixture` over them):

    'xquad:<q>-<d>'     XQuAD questions in language q against the 240
                        paragraphs in language d ('xquad:en-en' same
                        language, 'xquad:de-en' cross-lingual x->en)
    'cranfield'         Cranfield's 225 queries against its 1,400 abstracts
    'beir:<folder>'     your own collection (`retrieval.collection_files`)
    'msmarco:<folder>'

Splits. 'train' and 'validation' come from the training side of the
set, 'test' is the held-out side: XQuAD's 70/30 question split
(`datasets.xquad_split`, the same in every language), Cranfield's by the
same md5 rule of 'cranfield:<qid>' (as the DSI tasks), a collection's
qrels/train.tsv against its test (else dev) split (a collection without a
train split splits its test queries by the md5 rule of '<name>:<qid>').
'validation' is a deterministic `dev_fraction` of the training side (md5
of 'rerank-dev:<qid>', `is_dev`): kept out of training, for tuning the
interpolation weight and early stopping. A held-out query whose text is
also a training query's (XQuAD repeats a few under other ids) is dropped,
and so is a query without a document of grade >= `min_grade` (counted in
`RerankSet.skipped`).

Lists. One per (query, relevant document of grade >= min_grade): that
document first (candidate 0, label = its grade), then `num_negatives`
negatives: documents of the first stage's top `negative_depth` that are
not relevant at all (grade < 1), drawn by a seeded generator of (seed,
task, query, positive) and kept in first-stage order. The first stage is
BM25 in-process (`retrieval.search.bm25`, the documents' language's
stopwords) or a TREC run file (`first_stage_runs`, per task); teacher
scores (`teacher_runs`, per task, a TREC run of the teacher) give each
candidate its teacher's score, NaN in a set without a teacher; a
candidate the teacher run does not score is an error naming the file.

Pair format. A candidate's tokens are those of `PairFormat.template`
('Query: {query} Document: {document} Relevant:', monoT5's), each part
encoded on its own (so any vocabulary cuts them the same way), then EOS:

    tokens(prefix 'Query: <q> Document: ')[:q_keep]
      + tokens(document)[:d_keep] + tokens(suffix ' Relevant:') + [EOS]

Over `length` tokens, the room left after the suffix and EOS is shared:
the prefix keeps up to half of it (more when the document is shorter),
the document the rest. Training (the TF preprocessor) and scoring
(`PairFormat.tokens`) cut identically (tested).

Features. The task's one output feature is 'pairs' (int32 [candidates,
tokens], ragged), beside 'labels' and 'teacher_scores' (float32
[candidates]); `train.task_feature_lengths = {'pairs': L}`.
`RerankFeatureConverter(num_candidates=n)` pads (or cuts) every list to n
candidates of L tokens: 'pair_tokens' int32 (n, L) (padding candidates
all zeros), 'labels' and 'teacher_scores' float32 (n,). Packing is not
supported (a row is one list).

gin (the trainer's `task_setup`)::

    import retrieval.rerank.rerank_tasks
    task_setup.register_fns = [@rerank_tasks.setup]
    rerank_tasks.setup.sets = ['xquad:en-en', 'xquad:de-en']
    train.task = 'rerank'                          # setup.mixture
    train.task_feature_lengths = {'pairs': 256}
    train.pack = False

Nothing is read when the tasks are registered (a saved run's setup costs
nothing); a split is read, mined and kept the first time it is used.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import random
from typing import Callable, Collection, Mapping, NamedTuple, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from retrieval import collection_files
from retrieval import datasets
from retrieval.dense import pair_tasks
from retrieval.search import bm25 as bm25_lib
from retrieval.search import ir_metrics
from rosetta import vocab as vocab_lib
from rosetta.data import bad_input
from rosetta.data import mixtures
from rosetta.run import run_dir

MONO_TEMPLATE = 'Query: {query} Document: {document} Relevant:'
RANKT5_TEMPLATE = 'Query: {query} Document: {document}'
SPLITS = ('train', 'validation', 'test')
# The gin binding under which a run keeps its vocabulary (`<run>/assets/`).
VOCABULARY_ASSET = 'rerank_tasks.setup.vocabulary'
_Spec = seqio.FeatureConverter.FeatureSpec


# --------------------------------------------------------- pair format ---


def split_room(room: int, prefix: int, document: int) -> tuple[int, int]:
  """(prefix tokens kept, document tokens kept) in `room` tokens: the
  prefix up to half the room (more if the document leaves it free), the
  document the rest."""
  q_keep = min(prefix, max(room // 2, room - document))
  return q_keep, min(document, room - q_keep)


@dataclasses.dataclass(frozen=True)
class PairFormat:
  """How a (query, document) pair becomes tokens (module docstring)."""
  template: str = MONO_TEMPLATE

  def __post_init__(self):
    t = self.template
    if (not isinstance(t, str) or t.count('{query}') != 1
        or t.count('{document}') != 1
        or t.index('{query}') > t.index('{document}')):
      raise ValueError(
          f'pair template {t!r}: needs {{query}} once, then {{document}} '
          f'once, e.g. {MONO_TEMPLATE!r}')

  @property
  def parts(self) -> tuple[str, str, str]:
    """(before the query, between query and document, after the
    document)."""
    head, suffix = self.template.split('{document}')
    before, between = head.split('{query}')
    return before, between, suffix

  def prefix(self, query: str) -> str:
    before, between, _ = self.parts
    return before + query + between

  @property
  def suffix(self) -> str:
    return self.parts[2]

  def tail_ids(self, vocabulary: seqio.Vocabulary) -> list[int]:
    """The suffix's tokens and EOS: the end of every pair."""
    return list(vocabulary.encode(self.suffix)) + [vocabulary.eos_id]

  def room(self, vocabulary: seqio.Vocabulary, length: int) -> int:
    """Tokens left for the prefix and the document in `length`."""
    room = length - len(self.tail_ids(vocabulary))
    if room < 2:
      raise ValueError(
          f'pair length {length} leaves {room} tokens for the query and the '
          f'document after the template suffix {self.suffix!r} and EOS; '
          'use a longer length')
    return room

  def tokens(self, vocabulary: seqio.Vocabulary, query: str, document: str,
             length: int | None = None) -> list[int]:
    """The pair's token ids (no padding), at most `length` of them."""
    prefix = list(vocabulary.encode(self.prefix(query)))
    doc = list(vocabulary.encode(document))
    tail = self.tail_ids(vocabulary)
    if length is None:
      return prefix + doc + tail
    q_keep, d_keep = split_room(self.room(vocabulary, length), len(prefix),
                                len(doc))
    return prefix[:q_keep] + doc[:d_keep] + tail

  def batch(self, vocabulary: seqio.Vocabulary,
            pairs: Sequence[tuple[str, str]], length: int) -> np.ndarray:
    """(n, length) int32 rows of `tokens`, zero-padded."""
    out = np.zeros((len(pairs), length), np.int32)
    for i, (query, document) in enumerate(pairs):
      ids = self.tokens(vocabulary, query, document, length)
      out[i, :len(ids)] = ids
    return out


def _encode_rows(vocabulary: seqio.Vocabulary, texts: tf.Tensor
                 ) -> tf.RaggedTensor:
  """1-D strings -> ragged int32 tokens. Byte vocabularies cannot encode a
  batch of different lengths in one call: one string at a time there."""
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    out = vocabulary.encode_tf(texts)
  else:
    out = tf.map_fn(vocabulary.encode_tf, texts,
                    fn_output_signature=tf.RaggedTensorSpec(
                        [None], tf.int32, ragged_rank=0))
  if not isinstance(out, tf.RaggedTensor):
    out = tf.RaggedTensor.from_tensor(out)
  return tf.cast(out, tf.int32)


def pair_preprocessor(pair_format: PairFormat) -> Callable:
  """The task's preprocessor: {query, documents, labels, teacher_scores}
  strings -> {'pairs': ragged int32 tokens, 'labels', 'teacher_scores'},
  cut to `sequence_length['pairs']` exactly as `PairFormat.tokens`."""
  before, between, _ = pair_format.parts

  def make_pairs(dataset, output_features, sequence_length=None):
    vocab = output_features['pairs'].vocabulary
    tail = tf.constant(pair_format.tail_ids(vocab), tf.int32)
    length = (sequence_length or {}).get('pairs')
    room = None if length is None else pair_format.room(vocab, length)

    def fn(ex):
      documents = ex['documents']
      if isinstance(documents, tf.RaggedTensor):
        documents = documents.flat_values
      prefix = tf.cast(vocab.encode_tf(
          tf.strings.join([before, ex['query'], between])), tf.int32)
      docs = _encode_rows(vocab, documents)
      k = tf.shape(documents, out_type=tf.int64)[0]
      doc_len = docs.row_lengths()
      p = tf.shape(prefix, out_type=tf.int64)[0]
      if room is None:
        q_keep, d_keep = tf.fill(tf.reshape(k, [1]), p), doc_len
      else:
        q_keep = tf.minimum(p, tf.maximum(tf.constant(room // 2, tf.int64),
                                          room - doc_len))
        d_keep = tf.minimum(doc_len, room - q_keep)
      prefix_rows = tf.RaggedTensor.from_tensor(
          tf.tile(prefix[None], tf.stack([k, 1])), lengths=q_keep)
      doc_rows = tf.ragged.boolean_mask(
          docs, tf.ragged.range(doc_len) < d_keep[:, None])
      tail_rows = tf.RaggedTensor.from_tensor(
          tf.tile(tail[None], tf.stack([k, 1])))
      return {'pairs': tf.concat([prefix_rows, doc_rows, tail_rows], axis=1),
              'labels': _dense(ex['labels']),
              'teacher_scores': _dense(ex['teacher_scores'])}
    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
  return make_pairs


def _dense(x):
  return x.flat_values if isinstance(x, tf.RaggedTensor) else x


def _pad_1d(x: tf.Tensor, length: int) -> tf.Tensor:
  x = x[:length]
  x = tf.pad(x, [[0, length - tf.shape(x)[0]]])
  x.set_shape([length])
  return x


class RerankFeatureConverter(seqio.FeatureConverter):
  """'pairs' (+ 'labels', 'teacher_scores') -> 'pair_tokens' (n, L),
  'labels' (n,), 'teacher_scores' (n,) for n = `num_candidates` (module
  docstring). Lists longer than n keep their first n candidates (the
  positive is candidate 0)."""

  TASK_FEATURES = {'pairs': _Spec(tf.int32, rank=2, sequence_dim=1)}
  MODEL_FEATURES = {
      'pair_tokens': _Spec(tf.int32, rank=2, sequence_dim=1),
      'labels': _Spec(tf.float32, rank=1),
      'teacher_scores': _Spec(tf.float32, rank=1)}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = False, num_candidates: int = 8, **kwargs):
    if pack:
      raise ValueError(
          'RerankFeatureConverter: packing is not supported (a row is one '
          "query's candidate list); set train.pack = False")
    if isinstance(num_candidates, bool) or not isinstance(
        num_candidates, int) or num_candidates < 1:
      raise ValueError(f'num_candidates must be a positive int, got '
                       f'{num_candidates!r}')
    self.num_candidates = num_candidates
    super().__init__(pack=False, **kwargs)

  def extra_example_features(self) -> dict[str, tf.TensorSpec]:
    """Features an example carries beyond TASK_FEATURES (`rosetta
    compile` builds its sample example from them)."""
    return {'labels': tf.TensorSpec([1], tf.float32),
            'teacher_scores': tf.TensorSpec([1], tf.float32)}

  def _convert_features(self, ds, task_feature_lengths):
    n, length = self.num_candidates, task_feature_lengths['pairs']

    def convert(ex):
      pairs = ex['pairs']
      if not isinstance(pairs, tf.RaggedTensor):
        pairs = tf.RaggedTensor.from_tensor(pairs)
      return {'pair_tokens': pairs.to_tensor(default_value=0,
                                             shape=[n, length]),
              'labels': _pad_1d(tf.cast(ex['labels'], tf.float32), n),
              'teacher_scores': _pad_1d(
                  tf.cast(ex['teacher_scores'], tf.float32), n)}
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    n = self.num_candidates
    return {'pair_tokens': task_feature_lengths['pairs'], 'labels': n,
            'teacher_scores': n}


# ---------------------------------------------------------------- sets ---


@dataclasses.dataclass(frozen=True)
class Query:
  qid: str
  text: str
  qrels: Mapping[str, int]      # judged documents -> grade


@dataclasses.dataclass(frozen=True)
class RerankSet:
  """A set's documents and its queries by split (module docstring)."""
  name: str
  doc_ids: tuple[str, ...]
  docs: tuple[str, ...]
  lang: str | None                          # the documents' (BM25 stopwords)
  queries: Mapping[str, tuple[Query, ...]]  # SPLITS -> queries
  skipped: Mapping[str, int]     # queries without a relevant document
  repeated: Mapping[str, int]    # held-out queries repeating a training text


def is_dev(qid: str, fraction: float) -> bool:
  """Whether a training-side query is in the development part: md5 of
  'rerank-dev:<qid>', the same in every language."""
  h = int(hashlib.md5(f'rerank-dev:{qid}'.encode('utf-8')).hexdigest(), 16)
  return h % 10000 < round(fraction * 10000)


def task_name(spec: str) -> str:
  """'xquad:de-en' -> 'rerank_xquad_de_en', 'cranfield' ->
  'rerank_cranfield', 'beir:/data/scifact' -> 'rerank_beir_scifact'."""
  kind, sep, rest = spec.partition(':')
  if spec == 'cranfield':
    return 'rerank_cranfield'
  if kind == 'xquad' and sep:
    q, d = _xquad_pair(spec)
    return f'rerank_xquad_{q}_{d}'
  if sep and kind in collection_files.COLLECTION_KINDS and rest:
    return f'rerank_{collection_files.parse_spec(spec).name}'
  raise ValueError(
      f"rerank_tasks.setup.sets: {spec!r} is not a set; expected "
      "'xquad:<query lang>-<doc lang>' (e.g. 'xquad:de-en'), 'cranfield', "
      "'beir:<folder>' or 'msmarco:<folder>'")


def _xquad_pair(spec: str) -> tuple[str, str]:
  pair = spec.partition(':')[2].split('-')
  if len(pair) != 2 or not all(l in datasets.XQUAD_LANGUAGES for l in pair):
    raise ValueError(f'rerank_tasks.setup.sets: {spec!r}: expected '
                     "'xquad:<q>-<d>' with languages in "
                     f'{datasets.XQUAD_LANGUAGES}')
  return pair[0], pair[1]


def _queries(rs: datasets.RetrievalSet) -> list[Query]:
  return [Query(qid, text, dict(rs.qrels.get(qid, {})))
          for qid, text in zip(rs.query_ids, rs.queries)]


def _split_sides(name: str, sides: Mapping[str, list[Query]],
                 read_skipped: Mapping[str, int], min_grade: int,
                 dev_fraction: float):
  """Training side -> 'train' + 'validation' (`is_dev`), held-out side ->
  'test'; queries without a document of grade >= min_grade and held-out
  repeats of training texts dropped. Returns (queries, skipped, repeated)."""
  raw = {'train': [], 'validation': [], 'test': []}
  for q in sides['train']:
    raw['validation' if is_dev(q.qid, dev_fraction) else 'train'].append(q)
  raw['test'] = list(sides['test'])
  skipped = {s: 0 for s in SPLITS}
  skipped['train'] += read_skipped.get('train', 0)
  skipped['test'] += read_skipped.get('test', 0)
  kept = {}
  for split, qs in raw.items():
    kept[split] = [q for q in qs
                   if any(g >= min_grade for g in q.qrels.values())]
    skipped[split] += len(qs) - len(kept[split])
  seen = {q.text for q in kept['train']}
  repeated = {s: 0 for s in SPLITS}
  for split in ('validation', 'test'):
    fresh = [q for q in kept[split] if q.text not in seen]
    repeated[split] = len(kept[split]) - len(fresh)
    kept[split] = fresh
  for split, qs in kept.items():
    if skipped[split] or repeated[split]:
      logging.info('%s %s: %d queries kept, %d without a document of grade '
                   '>= %d skipped, %d repeating a training query dropped',
                   name, split, len(qs), skipped[split], min_grade,
                   repeated[split])
  return ({k: tuple(v) for k, v in kept.items()}, skipped, repeated)


def read_set(spec: str, *, min_grade: int = 1, dev_fraction: float = 0.1,
             on_bad_line: str = 'error') -> RerankSet:
  """A set of `setup.sets` (module docstring) with its three splits."""
  name = task_name(spec)
  kind, _, _ = spec.partition(':')
  read_skipped = {}
  if spec == 'cranfield':
    rs = datasets.cranfield()
    sides = {'train': [], 'test': []}
    for q in _queries(rs):
      sides[datasets.xquad_split(f'cranfield:{q.qid}')].append(q)
    lang = 'en'
  elif kind == 'xquad':
    q_lang, d_lang = _xquad_pair(spec)
    by_side = {side: datasets.xquad(q_lang, corpus=d_lang, split=side)
               for side in ('train', 'test')}
    rs = by_side['train']
    sides = {side: _queries(r) for side, r in by_side.items()}
    lang = d_lang
  else:
    rs, sides, read_skipped = _collection_sides(spec, on_bad_line)
    lang = None
  queries, skipped, repeated = _split_sides(name, sides, read_skipped,
                                            min_grade, dev_fraction)
  return RerankSet(name, tuple(rs.doc_ids), tuple(rs.docs), lang, queries,
                   skipped, repeated)


def _collection_sides(spec: str, on_bad_line: str):
  """(a RetrievalSet with the corpus, {'train', 'test'} queries, queries
  the reader left out for having no relevant document, by side)."""
  s = collection_files.parse_spec(spec)
  found = collection_files.splits(s)
  test = next((t for t in ('test', 'dev') if t in found), None)
  if test is None and 'train' not in found:
    raise ValueError(f'rerank_tasks: collection {spec!r} has no train, test '
                     f'or dev qrels (splits: {found})')
  sides, skipped, rs = {'train': [], 'test': []}, {}, None
  for side, split in (('train', 'train' if 'train' in found else None),
                      ('test', test)):
    if split is None:
      continue
    stats = collection_files.ReadStats()
    rs = collection_files.read_split(s, split, on_bad_line=on_bad_line,
                                     stats=stats)
    sides[side] = _queries(rs)
    skipped[side] = stats.queries_without_relevant
  if 'train' not in found or test is None:   # one split: md5 70/30
    every = sides['train'] + sides['test']
    sides = {'train': [], 'test': []}
    for q in every:
      sides[datasets.xquad_split(f'{s.name}:{q.qid}')].append(q)
    skipped = {'train': sum(skipped.values())}
  return rs, sides, skipped


# ------------------------------------------------------------ run files ---


def read_first_stage_run(path: str, doc_ids: Collection[str],
                         query_ids: Collection[str] | None = None, *,
                         corpus: str = 'the corpus',
                         queries: str = 'the queries') -> ir_metrics.Run:
  """A TREC run whose documents are all in `doc_ids` (and queries in
  `query_ids`, when given); a malformed line, or a document or query that
  is not there, is an error naming the file and line."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such run file')
  run = ir_metrics.read_run(path)
  if not run:
    raise ValueError(f'{path}: an empty run')
  docs = doc_ids if isinstance(doc_ids, (set, frozenset, dict)) else set(
      doc_ids)
  wanted = None if query_ids is None else (
      query_ids if isinstance(query_ids, (set, frozenset, dict))
      else set(query_ids))
  if all(d in docs for ranked in run.values() for d in ranked) and (
      wanted is None or all(q in wanted for q in run)):
    return run
  with open(path, encoding='utf-8') as f:   # where is the first bad one?
    for n, line in enumerate(f, start=1):
      parts = line.split()
      if not parts:
        continue
      if wanted is not None and parts[0] not in wanted:
        raise ValueError(f'{path}:{n}: query {parts[0]!r} is not in '
                         f'{queries}')
      if parts[2] not in docs:
        raise ValueError(f'{path}:{n}: document {parts[2]!r} is not in '
                         f'{corpus}')
  raise AssertionError('unreachable: a bad id was found above')


def top(run: ir_metrics.Run, depth: int) -> ir_metrics.Run:
  """Each query's `depth` best documents, in trec_eval's order."""
  return {q: dict(ir_metrics.trec_order(docs)[:depth])
          for q, docs in run.items()}


# ------------------------------------------------------------- examples ---


class Example(NamedTuple):
  """One candidate list: candidate 0 is the positive."""
  qid: str
  query: str
  doc_ids: tuple[str, ...]
  docs: tuple[str, ...]
  labels: tuple[float, ...]
  teacher_scores: tuple[float, ...]      # NaN without a teacher


@dataclasses.dataclass(frozen=True)
class MiningOptions:
  """How lists are made (module docstring); see `setup` for each field."""
  num_negatives: int = 7
  negative_depth: int = 30
  seed: int = 0
  min_grade: int = 1
  dev_fraction: float = 0.1
  first_stage_run: str | None = None
  teacher_run: str | None = None
  bm25_k1: float = 1.5
  bm25_b: float = 0.75
  on_bad_line: str = 'error'


class RerankTaskData:
  """One task's set, first-stage rankings and lists, made on first use."""

  def __init__(self, task: str, spec: str, options: MiningOptions):
    self.task, self.spec, self.options = task, spec, options
    self._rankings: dict[tuple[str, int], ir_metrics.Run] = {}

  @functools.cached_property
  def set(self) -> RerankSet:
    return read_set(self.spec, min_grade=self.options.min_grade,
                    dev_fraction=self.options.dev_fraction,
                    on_bad_line=self.options.on_bad_line)

  @functools.cached_property
  def texts(self) -> dict[str, str]:
    return dict(zip(self.set.doc_ids, self.set.docs))

  @functools.cached_property
  def _bm25(self) -> bm25_lib.BM25Index:
    return bm25_lib.BM25Index(self.set.docs, lang=self.set.lang,
                              k1=self.options.bm25_k1, b=self.options.bm25_b)

  @functools.cached_property
  def _file_run(self) -> ir_metrics.Run:
    return read_first_stage_run(self.options.first_stage_run,
                                self.texts, corpus=f'the {self.set.name} '
                                'documents')

  @functools.cached_property
  def _teacher(self) -> ir_metrics.Run:
    if not os.path.isfile(self.options.teacher_run):
      raise FileNotFoundError(f'{self.options.teacher_run}: no such teacher '
                              f'run file (rerank_tasks.setup.teacher_runs, '
                              f'{self.task})')
    return ir_metrics.read_run(self.options.teacher_run)

  def ranking(self, split: str, depth: int) -> ir_metrics.Run:
    """The first stage's `depth` best documents of each query of `split`
    ({qid: {doc id: score}})."""
    key = (split, depth)
    if key not in self._rankings:
      queries = self.set.queries[split]
      if self.options.first_stage_run:
        path, full = self.options.first_stage_run, self._file_run
        missing = [q.qid for q in queries if q.qid not in full]
        if missing:
          raise ValueError(
              f'{path}: no line for query {missing[0]!r} (a {split} query '
              f'of {self.task}; {len(missing)} missing): the first-stage '
              'run must rank every query of the set')
        run = top({q.qid: full[q.qid] for q in queries}, depth)
      elif not queries:
        run = {}
      else:
        k = min(depth, len(self.set.docs))
        result = self._bm25.search([q.text for q in queries], k)
        run = ir_metrics.run_from_topk(result.indices,
                                       [q.qid for q in queries],
                                       self.set.doc_ids,
                                       scores=result.scores)
      self._rankings[key] = run
    return self._rankings[key]

  def _teacher_scores(self, qid: str, doc_ids: Sequence[str]
                      ) -> tuple[float, ...]:
    if not self.options.teacher_run:
      return (math.nan,) * len(doc_ids)
    scores = self._teacher.get(qid, {})
    for d in doc_ids:
      if d not in scores:
        raise ValueError(
            f'{self.options.teacher_run}: no teacher score for query '
            f'{qid!r} and document {d!r} (a candidate of {self.task}); the '
            'teacher run must score every candidate of every list')
    return tuple(scores[d] for d in doc_ids)

  def negatives(self, qid: str, positive: str, pool: Sequence[str]
                ) -> list[str]:
    """`num_negatives` of `pool` (first-stage order kept), drawn by a
    generator seeded with (seed, task, query, positive)."""
    n = self.options.num_negatives
    if len(pool) <= n:
      return list(pool)
    rng = random.Random(f'{self.options.seed}\t{self.task}\t{qid}\t'
                        f'{positive}')
    return [pool[i] for i in sorted(rng.sample(range(len(pool)), n))]

  def examples(self, split: str) -> list[Example]:
    """The lists of `split` (module docstring), queries in set order."""
    ranked = self.ranking(split, self.options.negative_depth)
    out = []
    for q in self.set.queries[split]:
      order = [d for d, _ in ir_metrics.trec_order(ranked.get(q.qid, {}))]
      pool = [d for d in order if q.qrels.get(d, 0) < 1]
      for pos, grade in q.qrels.items():
        if grade < self.options.min_grade:
          continue
        ids = (pos, *self.negatives(q.qid, pos, pool))
        out.append(Example(
            q.qid, q.text, ids, tuple(self.texts[d] for d in ids),
            (float(grade),) + (0.0,) * (len(ids) - 1),
            self._teacher_scores(q.qid, ids)))
    logging.info('%s %s: %d lists from %d queries', self.task, split,
                 len(out), len(self.set.queries[split]))
    return out

  def retrieval_set(self, split: str) -> datasets.RetrievalSet:
    """The queries of `split` against the whole corpus, with their qrels."""
    queries = self.set.queries[split]
    return datasets.RetrievalSet(
        f'{self.task}:{split}', tuple(q.qid for q in queries),
        tuple(q.text for q in queries), self.set.doc_ids, self.set.docs,
        {q.qid: dict(q.qrels) for q in queries})


class ExampleSource(pair_tasks.PairSource):
  """In-memory lists per split, made on first use; the whole split is
  reshuffled every epoch (`retrieval.dense.pair_tasks.PairSource`, whose
  loading and counting it shares; only the features differ)."""

  def _dataset_fn(self, split: str, shuffle_files: bool,
                  seed: int | None = None) -> tf.data.Dataset:
    rows = self.pairs(split)
    lengths = tf.constant([len(r.docs) for r in rows], tf.int64)

    def ragged(values, dtype):
      return tf.RaggedTensor.from_row_lengths(tf.constant(values, dtype),
                                              lengths)
    ds = tf.data.Dataset.from_tensor_slices({
        'query': tf.constant([r.query for r in rows], tf.string),
        'documents': ragged([d for r in rows for d in r.docs], tf.string),
        'labels': ragged([x for r in rows for x in r.labels], tf.float32),
        'teacher_scores': ragged([x for r in rows for x in r.teacher_scores],
                                 tf.float32)})
    if shuffle_files:
      ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    return ds


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """'pairs' tokens, and the lists' float features (declared, so that a
  mixture keeps them)."""
  floats = seqio.PassThroughVocabulary(size=0)
  return {'pairs': seqio.Feature(vocabulary, add_eos=False, rank=2),
          'labels': seqio.Feature(floats, add_eos=False, dtype=tf.float32),
          'teacher_scores': seqio.Feature(floats, add_eos=False,
                                          dtype=tf.float32)}


def register_task(name: str, data: RerankTaskData,
                  vocabulary: seqio.Vocabulary,
                  pair_format: PairFormat) -> seqio.Task:
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=ExampleSource(
          {split: functools.partial(data.examples, split) for split in SPLITS},
          description=f'{name}: {data.spec} lists'),
      output_features=output_features(vocabulary),
      preprocessors=[pair_preprocessor(pair_format)],
      shuffle_buffer_size=None)   # the source shuffles the whole split


# ---------------------------------------------------------------- setup ---


@dataclasses.dataclass
class RerankSetup:
  """What one `setup` registered."""
  vocabulary: seqio.Vocabulary
  pair_format: PairFormat
  tasks: dict[str, RerankTaskData]     # task name -> its data
  mixture: str


_SETUPS: dict[str, RerankSetup] = {}   # mixture -> setup
_CURRENT: list[RerankSetup] = []       # the latest setup


def last_setup(name: str | None = None) -> RerankSetup:
  """The setup that registered the mixture or task `name` (None: the
  latest setup)."""
  if name is None:
    if not _CURRENT:
      raise KeyError('rerank_tasks.setup has not run in this process')
    return _CURRENT[0]
  if name in _SETUPS:
    return _SETUPS[name]
  for s in reversed(list(_SETUPS.values())):
    if name in s.tasks:
      return s
  raise KeyError(f'rerank_tasks.setup has not registered {name!r}; '
                 f'registered mixtures: {sorted(_SETUPS)}')


def current_vocabulary() -> seqio.Vocabulary | None:
  """The latest setup's vocabulary (None before any setup)."""
  return _CURRENT[0].vocabulary if _CURRENT else None


def vocabulary_from(spec: str, extra_ids: int = 0) -> seqio.Vocabulary:
  """'bytes' or the path of a SentencePiece model (T5's needs
  extra_ids=100 for its '<extra_id_N>' pieces)."""
  if spec == 'bytes':
    return seqio.ByteVocabulary()
  if not tf.io.gfile.exists(spec):
    raise FileNotFoundError(f'rerank_tasks.setup.vocabulary: no file {spec!r}'
                            " (give 'bytes' or a SentencePiece model path)")
  return vocab_lib.load_vocabulary(spec, extra_ids=extra_ids)


def _per_task(mapping: Mapping[str, str] | None, names: Sequence[str],
              field: str) -> dict[str, str]:
  mapping = dict(mapping or {})
  unknown = sorted(set(mapping) - set(names))
  if unknown:
    raise ValueError(f'rerank_tasks.setup.{field}: {unknown[0]!r} is not a '
                     f'task of this setup (tasks: {list(names)})')
  if not run_dir.reading_a_run():   # a saved run's tasks are not mined
    for task, path in mapping.items():
      if not os.path.isfile(path):
        raise FileNotFoundError(f'rerank_tasks.setup.{field}[{task!r}]: no '
                                f'such run file {path}')
  return mapping


@gin.configurable
def setup(sets: Sequence[str] = ('xquad:en-en',),
          vocabulary: str = 'bytes', extra_ids: int = 0,
          template: str = MONO_TEMPLATE, num_negatives: int = 7,
          negative_depth: int = 30, seed: int = 0,
          dev_fraction: float = 0.1, min_grade: int = 1,
          first_stage_runs: Mapping[str, str] | None = None,
          teacher_runs: Mapping[str, str] | None = None,
          mixture: str = 'rerank', temperature: float = 2.0,
          bm25_k1: float = 1.5, bm25_b: float = 0.75,
          on_bad_line: str = 'error') -> RerankSetup:
  """Registers a task per set and the temperature mixture `mixture`.

  sets: see the module docstring. vocabulary: 'bytes' or a SentencePiece
  model (kept in the run's assets), with `extra_ids`. template: the pair
  format (`PairFormat`; RankT5's has no ' Relevant:'). num_negatives:
  negatives per list, drawn from the first stage's top `negative_depth`
  non-relevant documents with `seed`. dev_fraction: the training side's
  share held out as 'validation'. min_grade: a positive's least grade.
  first_stage_runs / teacher_runs: {task name: TREC run file}; a task
  not named uses BM25 (k1, b) / has no teacher. on_bad_line: a
  collection's bad lines stop ('error') or are skipped and counted."""
  bad_input.check_policy(on_bad_line, 'rerank_tasks.setup.on_bad_line')
  if isinstance(sets, str):
    raise ValueError('rerank_tasks.setup.sets must be a list of sets, got '
                     f'the string {sets!r}')
  if not sets:
    raise ValueError('rerank_tasks.setup.sets is empty: nothing to train on')
  for field, value, least in (('num_negatives', num_negatives, 0),
                              ('negative_depth', negative_depth, 1),
                              ('min_grade', min_grade, 1)):
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      raise ValueError(f'rerank_tasks.setup.{field} must be an int >= '
                       f'{least}, got {value!r}')
  if not 0.0 <= dev_fraction < 1.0:
    raise ValueError(f'rerank_tasks.setup.dev_fraction must be in [0, 1), '
                     f'got {dev_fraction!r}')
  pair_format = PairFormat(template)
  names = [task_name(s) for s in sets]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f'rerank_tasks.setup.sets: two sets make the task '
                     f'{twice[0]!r}')
  first = _per_task(first_stage_runs, names, 'first_stage_runs')
  teachers = _per_task(teacher_runs, names, 'teacher_runs')
  vocab = vocabulary_from(vocabulary, extra_ids)
  if vocabulary != 'bytes':
    run_dir.register_asset(VOCABULARY_ASSET, vocabulary)
  tasks = {}
  for spec, name in zip(sets, names):
    options = MiningOptions(
        num_negatives=num_negatives, negative_depth=negative_depth,
        seed=seed, min_grade=min_grade, dev_fraction=dev_fraction,
        first_stage_run=first.get(name), teacher_run=teachers.get(name),
        bm25_k1=bm25_k1, bm25_b=bm25_b, on_bad_line=on_bad_line)
    tasks[name] = RerankTaskData(name, spec, options)
    register_task(name, tasks[name], vocab, pair_format)
  mixtures.register_temperature_mixture(mixture, names, temperature)
  out = RerankSetup(vocab, pair_format, tasks, mixture)
  _SETUPS[mixture] = out
  _CURRENT[:] = [out]
  return out
