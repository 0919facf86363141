"""seqio tasks of (query, positive, hard negatives) for dual encoders.

    tatoeba_pairs_en_de   English sentence -> its German translation
                          (rosetta.data.corpora' Tatoeba hash split: a held-out
                          English sentence is held out here and in NMT);
                          train / validation / test; no hard negatives
    xquad_pairs_de_en     German XQuAD question -> its English paragraph;
                          hard negatives: the other paragraphs of the same
                          article. train / test by `retrieval.datasets.
                          xquad_split(question id)` (70/30, same in every
                          language), so the test questions of the retrieval
                          evaluation are never trained on
    ict_pairs_xquad_de    inverse cloze task on a corpus (`retrieval.dense.ict`):
    ict_pairs_cranfield   a sentence of a document -> its passage window,
                          sentence cut out; documents only, no queries;
                          train split only; no hard negatives
    beir_pairs_<folder>   your own collection (`retrieval.collection_files`
    msmarco_pairs_<folder>  spec 'beir:<folder>' / 'msmarco:<folder>'):
                          query -> each document of qrels grade >=
                          `collection_min_grade`; hard negatives: documents
                          judged non-relevant (grade <= 0). A split per
                          qrels file, 'dev' named 'validation' (the
                          trainer validates on it)
    triples_pairs_<file>  training triples ('triples:<file>' of texts,
    idtriples_pairs_<file>  'idtriples:<file>' of MS MARCO ids): query ->
                          positive, the negative as a hard negative; train.
                          Text triples are streamed (any size); id triples
                          are joined with the collection in memory

Every task has the same three features (a mixture needs that)::

    queries    int32 [None]         tokens + EOS
    positives  int32 [None]
    negatives  int32 [None, None]   ragged, one row per hard negative
                                    (zero rows for Tatoeba)

plus '*_pretokenized' strings of queries and positives.
`retrieval.dense.dual_encoder_model.DualEncoderFeatureConverter` pads them into
model features. `setup` (gin: `task_setup.register_fns =
[@pair_tasks.setup]`) registers the tasks and their temperature mixture.

Teacher features (`setup.teacher_embeddings`: distillation, see
`retrieval.dense.distillation`): every task then also carries, from a
teacher embeddings file keyed by text (`retrieval.teacher.teacher_files`,
written by `rosetta teacher embeddings`)::

    teacher_query_embeddings     float32 [dim]  the teacher's vector of
    teacher_positive_embeddings  float32 [dim]  the query / positive text
    teacher_scores               float32 [1 + n] the teacher's dot product
                                 of the query with the positive, then with
                                 each hard negative (only where the lengths
                                 name 'negatives'; else [1])

A text missing from the file is an error naming the task and the text
(`teacher_missing='error'`), or (`'skip'`) NaN, which the distillation
loss reads as "no teacher" for that text. TensorFlow has no SHA-1 op, so
the lookup is one Python call per example (`tf.numpy_function`, before
tokenization); the vectors stay in NumPy, not copied into the dataset
graph (a table of a million 384-d vectors is 1.5 GB).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from rosetta.data import bad_input
from rosetta.data import record_files
from rosetta.data import text_pairs
from retrieval import collection_files
from retrieval import datasets
from retrieval.dense import ict
from retrieval.search import passages
from retrieval.teacher import teacher_files
from rosetta.data import mixtures
from rosetta.data import corpora as sources

Example = tuple[str, str, tuple[str, ...]]  # (query, positive, negatives)


class PairSource(text_pairs.TextPairSource):
  """In-memory (query, positive, negatives) examples per split, read on
  first use; shuffled and sharded like `rosetta.data.pipeline.TextPairSource` (whose
  `pairs(split)` here returns these triples, so mixtures can count them).

  The whole split is reshuffled every epoch here, so the task needs no
  shuffle buffer after tokenization (`performs_internal_shuffling`; seqio's
  default buffer of 1,000 tokenized examples per task made a 33-task
  mixture tokenize 33,000 examples, ~1 minute on 2 cores, before its first
  batch)."""

  @property
  def performs_internal_shuffling(self) -> bool:
    return True

  def __init__(self, loaders: dict[str, Callable[[], list[Example]]],
               description: str = ''):
    def counted(load):
      def fn(stats: text_pairs.TextPairStats):
        rows = load()
        stats.lines = stats.pairs = len(rows)
        return rows
      return fn
    super().__init__({k: counted(v) for k, v in loaders.items()},
                     description=description)

  def _dataset_fn(self, split: str, shuffle_files: bool,
                  seed: int | None = None) -> tf.data.Dataset:
    rows = self.pairs(split)
    negatives = tf.RaggedTensor.from_row_lengths(
        tf.constant([n for _, _, negs in rows for n in negs], tf.string),
        tf.constant([len(negs) for _, _, negs in rows], tf.int64))
    ds = tf.data.Dataset.from_tensor_slices({
        'queries': tf.constant([q for q, _, _ in rows], tf.string),
        'positives': tf.constant([p for _, p, _ in rows], tf.string),
        'negatives': negatives})
    if shuffle_files:
      ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    return ds


# ---------------------------------------------------------- teacher ---

TEACHER_FEATURES = ('teacher_query_embeddings', 'teacher_positive_embeddings',
                    'teacher_scores')
TEACHER_MISSING = ('error', 'skip')
_TEXT_SHOWN = 120    # characters of a missing text in the error


@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
  """A teacher's vectors of the query texts (`queries`) and of the
  positive / hard negative texts (`passages`; the same file unless e5-style
  query and passage prefixes call for two), and what a missing text does
  (`TEACHER_MISSING`)."""
  queries: teacher_files.TextEmbeddings
  passages: teacher_files.TextEmbeddings
  query_path: str
  passage_path: str
  missing: str = 'error'

  @classmethod
  def load(cls, query_prefix: str, passage_prefix: str | None = None,
           missing: str = 'error') -> 'Teacher':
    if missing not in TEACHER_MISSING:
      raise ValueError(f'pair_tasks.setup.teacher_missing={missing!r}: '
                       f'expected one of {TEACHER_MISSING}')
    queries = teacher_files.TextEmbeddings.load(query_prefix)
    passages = (queries if passage_prefix is None
                else teacher_files.TextEmbeddings.load(passage_prefix))
    paths = [teacher_files.embedding_paths(p)[1]
             for p in (query_prefix, passage_prefix or query_prefix)]
    if passages.dim != queries.dim:
      raise ValueError(f'teacher embeddings disagree on the dim: {paths[0]} '
                       f'has {queries.dim}, {paths[1]} {passages.dim}')
    return cls(queries, passages, paths[0], paths[1], missing)

  @property
  def dim(self) -> int:
    return self.queries.dim

  def output_features(self) -> dict[str, seqio.Feature]:
    # Output features, so that a mixture (which keeps only those) keeps them.
    vector = lambda: seqio.Feature(seqio.PassThroughVocabulary(0),
                                   add_eos=False, dtype=tf.float32, rank=1)
    return {f: vector() for f in TEACHER_FEATURES}

  def _vectors(self, task: str, what: str, texts: list[str]
               ) -> tuple[np.ndarray, str]:
    """(vectors with NaN rows for missing texts, error text or '')."""
    table, path = ((self.queries, self.query_path) if what == 'query'
                   else (self.passages, self.passage_path))
    vectors, found = table.lookup(texts)
    if found.all():
      return vectors, ''
    if self.missing == 'error':
      text = texts[int(np.flatnonzero(~found)[0])]
      shown = text if len(text) <= _TEXT_SHOWN else text[:_TEXT_SHOWN] + '...'
      return vectors, (
          f'pair task {task!r}: {path} has no teacher vector of the {what} '
          f'{shown!r} (embed every text of the tasks with `rosetta teacher '
          "embeddings`, or set pair_tasks.setup.teacher_missing = 'skip')")
    vectors[~found] = np.nan
    return vectors, ''

  def preprocessor(self, task: str):
    """A seqio preprocessor adding `TEACHER_FEATURES` to string examples
    ('queries', 'positives', 'negatives'), before tokenization."""
    def lookup(query, positive, negatives):
      q, err_q = self._vectors(task, 'query', [query.decode('utf-8')])
      p, err_p = self._vectors(task, 'positive', [positive.decode('utf-8')])
      n, err_n = self._vectors(task, 'hard negative',
                               [x.decode('utf-8') for x in negatives])
      error = err_q or err_p or err_n
      scores = np.concatenate([p, n]) @ q[0]       # NaN stays NaN
      return (np.asarray(error.encode('utf-8'), object), q[0], p[0],
              scores.astype(np.float32))

    def add(dataset: tf.data.Dataset, sequence_length=None):
      # As tokenize_examples: hard negatives only where the lengths name them
      # (None: inspection, which needs no teacher scores of negatives).
      with_negatives = (sequence_length is not None
                        and 'negatives' in sequence_length)

      def fn(ex):
        negatives = ex['negatives']
        if isinstance(negatives, tf.RaggedTensor):
          negatives = negatives.to_tensor()
        if not with_negatives:
          negatives = negatives[:0]
        error, q, p, scores = tf.numpy_function(
            lookup, [ex['queries'], ex['positives'], negatives],
            [tf.string, tf.float32, tf.float32, tf.float32], stateful=False)
        with tf.control_dependencies([tf.debugging.Assert(
            tf.equal(error, b''), [error], summarize=1)]):
          q, p, scores = tf.identity(q), tf.identity(p), tf.identity(scores)
        q.set_shape([self.dim])
        p.set_shape([self.dim])
        scores.set_shape([None])
        return dict(ex, teacher_query_embeddings=q,
                    teacher_positive_embeddings=p, teacher_scores=scores)
      return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)
    return add


def tokenize_examples(dataset: tf.data.Dataset, output_features,
                      sequence_length=None) -> tf.data.Dataset:
  """Strings -> token ids with each feature's vocabulary (no EOS yet);
  keeps 'queries_pretokenized' / 'positives_pretokenized'. Negatives are
  one ragged batch call for SentencePiece; byte vocabularies cannot encode
  a batch of different lengths, so there they go one string at a time
  (`tf.map_fn`, slower to trace and to run).

  Feature lengths that name no 'negatives' (a model trained without hard
  negatives: `DualEncoderFeatureConverter` then reads none) leave every
  example with zero negatives, untokenized: an XQuAD example carries the
  article's other paragraphs, whose tokenization took its batched input
  cost from 0.34 to 0.81 CPU ms."""
  skip_negatives = (sequence_length is not None
                    and 'negatives' not in sequence_length)

  def fn(ex):
    out = {k: v for k, v in ex.items() if k in TEACHER_FEATURES}
    for key in ('queries', 'positives'):
      out[f'{key}_pretokenized'] = ex[key]
      out[key] = output_features[key].vocabulary.encode_tf(ex[key])
    vocab = output_features['negatives'].vocabulary
    negs = ex['negatives'][:0] if skip_negatives else ex['negatives']
    if isinstance(negs, tf.RaggedTensor):   # [:0]: same spec, nothing to do
      negs = negs.to_tensor()
    if isinstance(vocab, seqio.SentencePieceVocabulary):
      out['negatives'] = tf.cast(vocab.encode_tf(negs), tf.int32)
    else:
      out['negatives'] = tf.map_fn(
          vocab.encode_tf, negs,
          fn_output_signature=tf.RaggedTensorSpec([None], tf.int32,
                                                  ragged_rank=0))
    return out
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def output_features(vocabulary: seqio.Vocabulary,
                    teacher: Teacher | None = None
                    ) -> dict[str, seqio.Feature]:
  out = {'queries': seqio.Feature(vocabulary, add_eos=True),
         'positives': seqio.Feature(vocabulary, add_eos=True),
         'negatives': seqio.Feature(vocabulary, add_eos=True, rank=2)}
  if teacher is not None:
    out.update(teacher.output_features())
  return out


def register_pair_task(name: str, source: PairSource,
                       vocabulary: seqio.Vocabulary, *,
                       replace: bool = True,
                       teacher: Teacher | None = None) -> seqio.Task:
  """A Task over a PairSource: [teacher lookups,] tokenize, then EOS
  after trimming (a truncated text still ends in EOS, as `make_encode_fn`
  builds them)."""
  if replace:
    seqio.TaskRegistry.remove(name)
  preprocessors = [tokenize_examples,
                   seqio.preprocessors.append_eos_after_trim]
  if teacher is not None:
    preprocessors.insert(0, teacher.preprocessor(name))
  return seqio.TaskRegistry.add(
      name, source=source,
      output_features=output_features(vocabulary, teacher),
      preprocessors=preprocessors,
      shuffle_buffer_size=None)   # PairSource shuffles the whole split


# -------------------------------------------------------------- Tatoeba ---


def tatoeba_task_name(lang: str) -> str:
  return f'tatoeba_pairs_en_{sources.language(lang).code}'


def register_tatoeba_pair_task(vocabulary: seqio.Vocabulary, lang: str, *,
                               root: str | None = None,
                               teacher: Teacher | None = None) -> str:
  """English -> `lang` translation pairs, split as for NMT."""
  lang = sources.language(lang).code
  load = sources.direction_splits('tatoeba', 'en', lang, root=root)

  def loader(split):
    return lambda: [(en, x, ()) for en, x in load()[split]]
  name = tatoeba_task_name(lang)
  register_pair_task(name, PairSource(
      {s: loader(s) for s in ('train', 'validation', 'test')},
      description=f'tatoeba en->{lang} pairs'), vocabulary, teacher=teacher)
  return name


# ---------------------------------------------------------------- XQuAD ---


def xquad_task_name(query_lang: str, doc_lang: str) -> str:
  return f'xquad_pairs_{query_lang}_{doc_lang}'


def _article(pid: str) -> str:
  """'<lang>:<title>_p<j>' (retrieval.datasets' paragraph id) -> title."""
  return pid.split(':', 1)[1].rsplit('_p', 1)[0]


def _stable_order(key: str, items: Sequence[str]) -> list[str]:
  """A fixed pseudo-random order of `items` for `key` (which hard negatives
  come first, when a converter keeps fewer than there are)."""
  return sorted(items, key=lambda s: hashlib.md5(
      f'{key}\t{s}'.encode('utf-8')).hexdigest())


def xquad_examples(query_lang: str, doc_lang: str, split: str,
                   passage: tuple[seqio.Vocabulary, int] | None = None
                   ) -> list[Example]:
  """Questions of `split` -> (question, paragraph, other paragraphs of the
  same article, in a fixed per-question order).

  passage=(vocabulary, tokens): the positive is not the whole paragraph
  but its window of `tokens` pieces (`retrieval.search.passages`, stride half of
  it) that holds the question's answer in `doc_lang`: an encoder trained
  on 96 tokens would otherwise see the answer of ~70% of the questions cut
  off, and a passage index (MaxP) searches those same windows."""
  rs = datasets.xquad(query_lang, corpus=doc_lang, split=split)
  text = dict(zip(rs.doc_ids, rs.docs))
  by_article: dict[str, list[str]] = {}
  for pid in rs.doc_ids:
    by_article.setdefault(_article(pid), []).append(pid)
  answer = ({qid: a for par in datasets.xquad_paragraphs(doc_lang)
             for qid, a in zip(par.question_ids, par.answers)}
            if passage else {})
  wins: dict[str, list] = {}        # a paragraph's windows, cut once
  out = []
  for qid, question in zip(rs.query_ids, rs.queries):
    (pos,) = [d for d, g in rs.qrels[qid].items() if g > 0]
    others = [d for d in by_article[_article(pos)] if d != pos]
    positive = text[pos]
    if passage:
      if pos not in wins:
        wins[pos] = passages.windows(positive, passage[0], passage[1])
      start, ans = answer[qid]
      positive = passages.best_window(wins[pos], start, start + len(ans),
                                      len(positive))
    out.append((question, positive,
                tuple(text[d] for d in _stable_order(qid, others))))
  return out


def register_xquad_pair_task(vocabulary: seqio.Vocabulary, query_lang: str,
                             doc_lang: str,
                             passage_tokens: int | None = None, *,
                             teacher: Teacher | None = None) -> str:
  for lang in (query_lang, doc_lang):
    if lang not in datasets.XQUAD_LANGUAGES:
      raise ValueError(f'XQuAD has no language {lang!r}; known: '
                       f'{datasets.XQUAD_LANGUAGES}')
  if passage_tokens is not None and not isinstance(
      vocabulary, seqio.SentencePieceVocabulary):
    raise ValueError('pair_tasks.setup.xquad_passage_tokens needs a '
                     'SentencePiece vocabulary (windows are cut on its '
                     f'pieces), got {type(vocabulary).__name__}')
  passage = None if passage_tokens is None else (vocabulary, passage_tokens)
  name = xquad_task_name(query_lang, doc_lang)
  register_pair_task(name, PairSource(
      {s: (lambda s=s: xquad_examples(query_lang, doc_lang, s, passage))
       for s in ('train', 'test')},
      description=f'xquad {query_lang} questions -> {doc_lang} ' + (
          'paragraphs' if passage is None else
          f'answer windows of {passage_tokens} tokens')),
      vocabulary, teacher=teacher)
  return name


# ------------------------------------------------------------------ ICT ---


def ict_task_name(corpus: str) -> str:
  return 'ict_pairs_' + corpus.replace('-', '_')


def ict_corpus_language(corpus: str) -> str:
  """'xquad-<lang>' -> lang, 'cranfield' -> 'en'; anything else an error."""
  if corpus == 'cranfield':
    return 'en'
  name, _, lang = corpus.partition('-')
  if name == 'xquad' and lang in datasets.XQUAD_LANGUAGES:
    return lang
  raise ValueError(f'ICT corpus {corpus!r}: expected "cranfield" or '
                   f'"xquad-<lang>" with lang in {datasets.XQUAD_LANGUAGES}')


def corpus_documents(corpus: str) -> list[str]:
  """The documents of an ICT corpus: an XQuAD language's 240 paragraphs,
  or Cranfield's 1,400 abstracts."""
  lang = ict_corpus_language(corpus)
  if corpus == 'cranfield':
    return list(datasets.cranfield().docs)
  return [p.context for p in datasets.xquad_paragraphs(lang)]


def register_ict_task(vocabulary: seqio.Vocabulary, corpus: str,
                      passage_tokens: int, keep_rate: float = 0.1, *,
                      teacher: Teacher | None = None) -> str:
  if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
    raise ValueError('pair_tasks.setup.ict_corpora needs a SentencePiece '
                     'vocabulary (windows are cut on its pieces), got '
                     f'{type(vocabulary).__name__}')
  lang = ict_corpus_language(corpus)
  ict.check_keep_rate(keep_rate)      # now, not at the first batch

  def load():
    return ict.examples(corpus_documents(corpus), vocabulary,
                        passage_tokens, lang=lang, keep_rate=keep_rate,
                        key=corpus)
  name = ict_task_name(corpus)
  register_pair_task(name, PairSource(
      {'train': load}, description=f'ICT on {corpus}: sentence -> its '
      f'window of {passage_tokens} tokens'), vocabulary, teacher=teacher)
  return name


# ---------------------------------------------------------- collections ---

# Collection split -> pair-task split: the trainer validates on 'validation'.
SPLIT_NAMES = {'dev': 'validation'}
# Judged non-relevant documents kept per example, in `_stable_order`: the
# converter takes the first num_negatives; TREC-COVID judges ~1,000 per
# query, which would be tensors of millions of strings if all were kept.
COLLECTION_NEGATIVES = 4


def collection_task_name(spec: str) -> str:
  """'beir:/data/scifact' -> 'beir_pairs_scifact'."""
  s = collection_files.parse_spec(spec)
  return f'{s.kind}_pairs_{s.stem}'


def collection_examples(rs: datasets.RetrievalSet,
                        min_grade: int = 1) -> list[Example]:
  """(query, document, judged non-relevant documents) for every qrels row
  of grade >= min_grade, queries and rows in file order. The negatives
  (grade <= 0) are the first COLLECTION_NEGATIVES in a fixed per-query
  order; a document graded between 0 and min_grade is neither."""
  text = dict(zip(rs.doc_ids, rs.docs))
  out = []
  for qid, query in zip(rs.query_ids, rs.queries):
    judged = rs.qrels[qid]
    negatives = tuple(text[d] for d in _stable_order(
        qid, [d for d, g in judged.items() if g <= 0])[
            :COLLECTION_NEGATIVES])
    out += [(query, text[d], negatives) for d, g in judged.items()
            if g >= min_grade]
  return out


def register_collection_pair_task(vocabulary: seqio.Vocabulary, spec: str, *,
                                  min_grade: int = 1,
                                  on_bad_line: str = 'error',
                                  max_triples: int | None = None,
                                  teacher: Teacher | None = None) -> str:
  """A pair task from a collection or triples spec (module docstring).
  Files are listed now (a missing one fails the setup) and read on first
  use of a split."""
  bad_input.check_policy(on_bad_line)
  s = collection_files.parse_spec(spec)
  name = collection_task_name(spec)
  if s.kind in collection_files.TRIPLE_KINDS:
    path = collection_files.find_file(s.path)
    if not path:
      raise FileNotFoundError(f'pair_tasks.setup.collections: {spec!r}: no '
                              f'file {s.path} (or {s.path}.gz)')
    if s.kind == 'triples':  # texts: streamed, however large the file
      register_streamed_triples_task(name, path, vocabulary,
                                     on_bad_line=on_bad_line,
                                     max_triples=max_triples,
                                     teacher=teacher)
      return name
    loaders = {'train': lambda: [(q, p, (n,)) for q, p, n in
                                 collection_files.read_spec_triples(
                                     s, on_bad_line=on_bad_line,
                                     limit=max_triples)]}
    what = 'training triples'
  else:
    loaders = {SPLIT_NAMES.get(split, split): (
        lambda split=split: collection_examples(collection_files.read_split(
            s, split, on_bad_line=on_bad_line), min_grade))
               for split in collection_files.splits(s)}
    what = f'queries -> documents of grade >= {min_grade}'
  register_pair_task(name, PairSource(loaders, description=f'{spec}: {what}'),
                     vocabulary, teacher=teacher)
  return name


def triples_to_pairs(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """{queries, positives, negative} -> the pair features (one negative)."""
  return dataset.map(
      lambda ex: {'queries': ex['queries'], 'positives': ex['positives'],
                  'negatives': tf.reshape(ex['negative'], [1])},
      num_parallel_calls=tf.data.AUTOTUNE)


def register_streamed_triples_task(name: str, path: str,
                                   vocabulary: seqio.Vocabulary, *,
                                   on_bad_line: str = 'error',
                                   max_triples: int | None = None,
                                   teacher: Teacher | None = None) -> None:
  """MS MARCO-style text triples (query TAB positive TAB negative) read
  line by line (`rosetta.data.record_files`): memory stays flat for the
  27 GB `triples.train.small.tsv`. Bad lines name file and line (or are
  skipped and counted); `max_triples` keeps the first N lines of a pass;
  seqio's bounded buffer shuffles."""
  source = record_files.RecordFileSource(
      {'train': path},
      record_files.Tsv({'queries': 0, 'positives': 1, 'negative': 2},
                       num_columns=3),
      on_bad_line=on_bad_line, description=f'training triples {path}')
  preprocessors = [triples_to_pairs, tokenize_examples,
                   seqio.preprocessors.append_eos_after_trim]
  if teacher is not None:
    preprocessors.insert(1, teacher.preprocessor(name))
  if max_triples is not None:
    preprocessors.insert(0, lambda ds: ds.take(max_triples))
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=source,
                         output_features=output_features(vocabulary, teacher),
                         preprocessors=preprocessors)


# ---------------------------------------------------------------- setup ---


def vocabulary_from(spec: str | seqio.Vocabulary) -> seqio.Vocabulary:
  """'bytes' -> seqio.ByteVocabulary(); a path -> its SentencePiece model
  (e.g. T5's 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model')."""
  if isinstance(spec, seqio.Vocabulary):
    return spec
  if spec == 'bytes':
    return seqio.ByteVocabulary()
  if not tf.io.gfile.exists(spec):
    raise FileNotFoundError(f'pair_tasks vocabulary: no file {spec!r} '
                            "(give 'bytes' or a SentencePiece model path)")
  return seqio.SentencePieceVocabulary(spec)


def parse_pairs(specs: Sequence[str]) -> list[tuple[str, str]]:
  """['de-en', 'en-en'] -> [('de', 'en'), ('en', 'en')]."""
  out = []
  for spec in specs:
    parts = spec.split('-')
    if len(parts) != 2 or not all(parts):
      raise ValueError(f'xquad pair {spec!r}: expected "query-doc", e.g. '
                       '"de-en"')
    out.append((parts[0], parts[1]))
  return out


@gin.configurable
def setup(vocabulary: str | seqio.Vocabulary = 'bytes',
          tatoeba_languages: Sequence[str] = ('de', 'fr', 'es'),
          xquad_pairs: Sequence[str] = ('en-en', 'de-de', 'de-en'),
          mixture: str = 'retrieval_pairs', temperature: float = 2.0,
          root: str | None = None,
          xquad_passage_tokens: int | None = None,
          ict_corpora: Sequence[str] = (),
          ict_passage_tokens: int | None = None,
          ict_keep_rate: float = 0.1,
          collections: Sequence[str] = (),
          collection_min_grade: int = 1,
          on_bad_line: str = 'error',
          max_triples: int | None = None,
          teacher_embeddings: str | None = None,
          teacher_passage_embeddings: str | None = None,
          teacher_missing: str = 'error') -> list[str]:
  """Registers Tatoeba and XQuAD pair tasks and the temperature mixture
  `mixture` over them (rate n^(1/T), each task shuffled with its own seed).
  Returns the task names. Tatoeba languages missing from the data
  directory are an error, not skipped. xquad_passage_tokens: XQuAD
  positives are the paragraph's window of that many pieces holding the
  answer (`xquad_examples`), e.g. the positives' length minus EOS.
  ict_corpora: inverse-cloze tasks on these corpora ('xquad-<lang>',
  'cranfield'; `register_ict_task`), windows of ict_passage_tokens pieces
  (default xquad_passage_tokens), the sentence kept with ict_keep_rate.
  collections: your own data, as `retrieval.collection_files` specs:
  'beir:<folder>', 'msmarco:<folder>' (query -> each document of qrels
  grade >= collection_min_grade), 'triples:<file>', 'idtriples:<file>'
  (the first max_triples triples, all if None); on_bad_line: 'error' or
  'skip' (`rosetta.data.bad_input`).
  teacher_embeddings: prefix of a teacher embeddings file
  (`retrieval.teacher.teacher_files`) holding every query text, and the
  positives' and hard negatives' unless teacher_passage_embeddings names
  another (e5 embeds queries and passages with different prefixes): every
  task then carries the teacher features (module docstring) for
  `DualEncoderModel.distillation`. teacher_missing: 'error' (a text
  missing from the files stops the input, naming task and text) or 'skip'
  (NaN: that text gets no distillation term)."""
  bad_input.check_policy(on_bad_line, 'pair_tasks.setup.on_bad_line')
  vocab = vocabulary_from(vocabulary)
  if teacher_missing not in TEACHER_MISSING:
    raise ValueError(f'pair_tasks.setup.teacher_missing={teacher_missing!r}:'
                     f' expected one of {TEACHER_MISSING}')
  teacher = None
  if teacher_embeddings is not None:
    teacher = Teacher.load(teacher_embeddings, teacher_passage_embeddings,
                           teacher_missing)
  elif teacher_passage_embeddings is not None:
    raise ValueError('pair_tasks.setup.teacher_passage_embeddings needs '
                     "teacher_embeddings (the queries' vectors) too")
  names = [register_tatoeba_pair_task(vocab, l, root=root, teacher=teacher)
           for l in tatoeba_languages]
  if xquad_passage_tokens is not None:
    passages.check_window(xquad_passage_tokens, None)
  names += [register_xquad_pair_task(vocab, q, d, xquad_passage_tokens,
                                     teacher=teacher)
            for q, d in parse_pairs(xquad_pairs)]
  if ict_corpora:
    length = (xquad_passage_tokens if ict_passage_tokens is None
              else ict_passage_tokens)
    if length is None:
      raise ValueError('pair_tasks.setup.ict_corpora needs '
                       'ict_passage_tokens (or xquad_passage_tokens)')
    passages.check_window(length, None)
    names += [register_ict_task(vocab, c, length, ict_keep_rate,
                                teacher=teacher)
              for c in ict_corpora]
  own = [collection_task_name(c) for c in collections]
  twice = sorted({n for n in own if own.count(n) > 1})
  if twice:
    raise ValueError(f'pair_tasks.setup.collections: two specs make the '
                     f'task {twice[0]!r} (same kind and file or folder name)')
  names += [register_collection_pair_task(
      vocab, c, min_grade=collection_min_grade, on_bad_line=on_bad_line,
      max_triples=max_triples, teacher=teacher) for c in collections]
  if not names:
    raise ValueError('pair_tasks.setup: no tatoeba_languages, xquad_pairs, '
                     'ict_corpora or collections: nothing to train on')
  mixtures.register_temperature_mixture(mixture, names, temperature)
  return names
