"""seqio tasks for generative retrieval (DSI): indexing, retrieval, mixture.

    {corpus}_dsi_indexing{sfx}     document text, first `index_length`
                                   tokens -> its docid (`index_windows`:
                                   every window of that length). Split
                                   'train' only:
                                   DSI memorises the whole corpus. XQuAD:
                                   each paragraph in each `index_languages`.
    {corpus}_dsi_retrieval{sfx}    query -> docid. 'train': one example per
                                   (query, relevant document); 'test': one
                                   per query, target its most relevant
                                   document, and every relevant docid in
                                   the feature 'relevant_docids'
                                   (space-separated) for the metrics.
    xquad_dsi_retrieval_{l}{sfx}   the same, questions in language l only
    {corpus}_dsi_synthetic{sfx}    synthetic query -> docid of the document
                                   it was generated from (Pradeep et al.
                                   2023; `retrieval.dsi.synthetic_queries`),
                                   only when synthetic queries are given
    {corpus}_dsi{sfx}              mixture for training: indexing at rate r
                                   (`indexing_ratio`), retrieval 'train' at
                                   rate 1, so r / (r + 1) of the examples
                                   are indexing examples (DSI's ratio);
                                   synthetic queries at `synthetic_ratio`

Corpora (read by `retrieval.datasets`):

    xquad      240 paragraphs whose docids are shared by the 12 languages
               (key '<title>_p<j>'); a question in any language maps to its
               paragraph's id. Questions split by `datasets.xquad_split`
               (md5 of the question id, 70/30, the same in every language:
               a test question is trained on in no language). A test
               question whose text in some language is also a training
               question there (XQuAD repeats a few under other ids) is
               dropped in every language.
    cranfield  1,400 abstracts (keys '1'..'1400'), 225 queries, relevant =
               grade >= `min_grade` (datasets: 4 = complete answer ... 1 =
               minimum interest); queries split by the same md5 rule of
               'cranfield:<query id>'. Queries with no relevant document
               are dropped.
    beir:<folder>, msmarco:<folder>
               your own collection (`retrieval.collection_files`), named
               '<kind>_<folder>' (tasks 'beir_scifact_dsi', ...): keys
               are its document ids, relevant = grade >= `min_grade`.
               Training queries are the 'train' split's, test queries the
               'test' (else 'dev') split's; a collection with no 'train'
               split has its test queries split by the md5 rule of
               '<name>:<query id>', as Cranfield's. Language 'und'.

Features: 'inputs' (text vocabulary, EOS) and 'targets' (a
`docids.DocidVocabulary`, EOS); seqio keeps '*_pretokenized'. Metrics on
the retrieval tasks: hits@1 (the decoded docid is relevant) and the rate of
decodes that are docids at all (100 with `DsiSetup.constraint()`). Beam
metrics (Hits@10, MRR@10, TREC runs) are `retrieval.dsi.evaluation`'s.

gin (the trainer's `task_setup`)::

    import retrieval.dsi.dsi_tasks
    task_setup.register_fns = [@dsi_tasks.setup]
    dsi_tasks.setup.corpus = 'xquad'
    dsi_tasks.setup.docid_kind = 'atomic'       # or 'naive', 'semantic'
    dsi_tasks.setup.model_vocab_size = %VOCAB   # = T5Config.vocab_size
    train.task = 'xquad_dsi'
    # evaluation (periodic and `rosetta evaluate`) decodes only docids
    encoder_decoder_model.EncoderDecoderModel.processors = @dsi_tasks.processors_for
    dsi_tasks.processors_for.mixture = 'xquad_dsi'
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from retrieval import collection_files
from retrieval import datasets
from retrieval.dsi import docids as docids_lib
from retrieval.dsi import query_files
from retrieval.search import passages
from retrieval.dsi.trie import Trie
from rosetta.data import bad_input
from rosetta.data import text_pairs
from rosetta.run import run_dir
from rosetta import vocab as vocab_lib

CORPORA = ('xquad', 'cranfield')
# The gin binding under which a run keeps its docids (`<run>/assets/`).
MAPPING_ASSET = 'dsi_tasks.setup.mapping_path'


@dataclasses.dataclass(frozen=True)
class Query:
  qid: str                                # the same in every language
  text: str
  language: str
  relevant: tuple[tuple[str, int], ...]   # (doc key, grade), best first


@dataclasses.dataclass(frozen=True)
class DsiCorpus:
  """Documents (one key, texts in one or more languages) and queries."""
  name: str
  doc_keys: tuple[str, ...]
  doc_texts: dict[str, tuple[str, ...]]   # language -> texts, doc_keys order
  queries: dict[str, tuple[Query, ...]]   # split -> queries


def _relevant(qrel: dict[str, int], min_grade: int, key=lambda d: d):
  """Relevant (doc key, grade) pairs, best grade first, ties in qrels order."""
  rel = [(key(d), g) for d, g in qrel.items() if g >= min_grade]
  return tuple(sorted(rel, key=lambda x: -x[1]))


def _without_leaks(queries: dict[str, list[Query]]
                   ) -> dict[str, tuple[Query, ...]]:
  """Drops a held-out question (in every language, so the test sets stay
  parallel) whose text in some language is a training question too: XQuAD
  repeats a few questions under other ids ('Who won Super Bowl XLIX?',
  same paragraph), and the split is by id."""
  seen = {(q.language, q.text) for q in queries['train']}
  leaked = {q.qid for split, qs in queries.items() if split != 'train'
            for q in qs if (q.language, q.text) in seen}
  return {split: tuple(q for q in qs if split == 'train' or
                       q.qid not in leaked)
          for split, qs in queries.items()}


def xquad_corpus(index_languages: Sequence[str] = datasets.XQUAD_LANGUAGES,
                 query_languages: Sequence[str] = datasets.XQUAD_LANGUAGES
                 ) -> DsiCorpus:
  """XQuAD paragraphs and questions (see the module doc)."""
  strip = lambda pid: pid.split(':', 1)[1]    # 'de:Title_p3' -> 'Title_p3'
  keys = tuple(strip(p.pid) for p in datasets.xquad_paragraphs('en'))
  texts = {}
  for lang in index_languages:
    pars = datasets.xquad_paragraphs(lang)
    if tuple(strip(p.pid) for p in pars) != keys:
      raise ValueError(f'XQuAD {lang}: paragraphs do not line up with the '
                       'English ones (titles or order differ)')
    texts[lang] = tuple(p.context for p in pars)
  queries = {'train': [], 'test': []}
  for lang in query_languages:
    for split in queries:
      rs = datasets.xquad(lang, corpus=lang, split=split)
      queries[split] += [Query(qid, q, lang,
                               _relevant(rs.qrels[qid], 1, strip))
                         for qid, q in zip(rs.query_ids, rs.queries)]
  return DsiCorpus('xquad', keys, texts, _without_leaks(queries))


def cranfield_corpus(min_grade: int = 1) -> DsiCorpus:
  """Cranfield abstracts and queries (see the module doc)."""
  rs = datasets.cranfield()
  queries = {'train': [], 'test': []}
  for qid, q in zip(rs.query_ids, rs.queries):
    rel = _relevant(rs.qrels.get(qid, {}), min_grade)
    if rel:
      split = datasets.xquad_split(f'cranfield:{qid}')
      queries[split].append(Query(qid, q, 'en', rel))
  return DsiCorpus('cranfield', rs.doc_ids, {'en': rs.docs},
                   _without_leaks(queries))


# Language label of a collection's texts (ISO 639-2 'undetermined').
COLLECTION_LANGUAGE = 'und'
TEST_SPLITS = ('test', 'dev')   # a collection's test queries: the first found


def collection_corpus(spec: str, min_grade: int = 1,
                      on_bad_line: str = 'error') -> DsiCorpus:
  """A BEIR or MS MARCO collection as a DSI corpus (see the module doc)."""
  s = collection_files.parse_spec(spec)
  found = collection_files.splits(s)
  test = next((t for t in TEST_SPLITS if t in found), None)
  if test is None:
    raise ValueError(f'dsi_tasks: collection {spec!r} has no test split '
                     f'{TEST_SPLITS} (splits: {found})')

  def read(split):
    return collection_files.read_split(s, split, on_bad_line=on_bad_line)
  rs = read(test)
  queries = {'train': [], 'test': []}

  def add(split, rs, by_md5=False):
    for qid, q in zip(rs.query_ids, rs.queries):
      rel = _relevant(rs.qrels[qid], min_grade)
      if rel:
        to = datasets.xquad_split(f'{s.name}:{qid}') if by_md5 else split
        queries[to].append(Query(qid, q, COLLECTION_LANGUAGE, rel))
  if 'train' in found:
    add('train', read('train'))
    add('test', rs)
  else:
    add(None, rs, by_md5=True)
  return DsiCorpus(s.name, rs.doc_ids, {COLLECTION_LANGUAGE: rs.docs},
                   _without_leaks(queries))


def read_corpus(corpus: str, *,
                index_languages: Sequence[str] = datasets.XQUAD_LANGUAGES,
                query_languages: Sequence[str] = datasets.XQUAD_LANGUAGES,
                min_grade: int = 1, on_bad_line: str = 'error',
                field: str = 'dsi_tasks.setup.corpus') -> DsiCorpus:
  """'xquad', 'cranfield' or a collection spec ('beir:<folder>', ...);
  `field` names the setting in the error for anything else."""
  if corpus == 'xquad':
    return xquad_corpus(index_languages, query_languages)
  if corpus == 'cranfield':
    return cranfield_corpus(min_grade)
  kind, sep, _ = corpus.partition(':')
  if sep and kind in collection_files.COLLECTION_KINDS:
    return collection_corpus(corpus, min_grade, on_bad_line)
  raise ValueError(f'{field} must be one of {CORPORA} or a collection spec '
                   "such as 'beir:/data/scifact' or 'msmarco:/data/msmarco', "
                   f'got {corpus!r}')


# ---------------------------------------------------------------- tasks ---

class ExampleSource(text_pairs.TextPairSource):
  """In-memory (inputs, target, relevant_docids) rows per split, shuffled
  and sharded like `rosetta.data.pipeline.TextPairSource` (`pairs(split)` returns
  the rows, so mixtures can count them)."""

  def __init__(self, rows_by_split, description: str):
    def loader(rows):
      def fn(stats: text_pairs.TextPairStats):
        stats.lines = stats.pairs = len(rows)
        return list(rows)
      return fn
    super().__init__({k: loader(v) for k, v in rows_by_split.items()},
                     description=description)

  def _dataset_fn(self, split, shuffle_files, seed=None):
    rows = self.pairs(split)
    ds = tf.data.Dataset.from_tensor_slices({
        name: tf.constant([r[i] for r in rows], tf.string)
        for i, name in enumerate(('inputs', 'targets', 'relevant_docids'))})
    if shuffle_files:
      ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    return ds


def truncate_inputs(dataset: tf.data.Dataset, length: int) -> tf.data.Dataset:
  """Keeps the first `length` input tokens (before EOS): DSI indexes a
  document by its first L tokens."""
  def fn(ex):
    return dict(ex, inputs=ex['inputs'][:length])
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def postprocess(output, example=None, is_target=False):
  """Targets -> the list of relevant docids; predictions stay strings."""
  if is_target:
    rel = example.get('relevant_docids', b'') if example is not None else b''
    rel = rel.decode('utf-8') if isinstance(rel, bytes) else rel
    return rel.split() if rel else [output]
  return output


def dsi_metrics(targets, predictions):
  """hits@1: the decoded docid is relevant; valid_docid_rate: it is a
  docid at all ('' decodes a token sequence that is none). Percent."""
  hits = [p in set(t) for t, p in zip(targets, predictions)]
  valid = [bool(p) for p in predictions]
  return {'hits@1': 100.0 * float(np.mean(hits)),
          'valid_docid_rate': 100.0 * float(np.mean(valid))}


def _register(name, rows_by_split, features, preprocessors):
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=ExampleSource(rows_by_split, name),
      output_features=features,
      preprocessors=[seqio.preprocessors.tokenize, *preprocessors,
                     seqio.preprocessors.append_eos_after_trim],
      postprocess_fn=postprocess, metric_fns=[dsi_metrics])


@dataclasses.dataclass(frozen=True)
class DsiTasks:
  indexing: str
  retrieval: str
  per_language: dict[str, str]
  mixture: str
  synthetic: str | None = None


def register_dsi_tasks(corpus: DsiCorpus,
                       vocabulary: docids_lib.DocidVocabulary, *,
                       index_length: int = 64, indexing_ratio: float = 1.0,
                       synthetic: Sequence[tuple[str, str]] = (),
                       synthetic_ratio: float = 1.0,
                       suffix: str = '',
                       index_windows: bool = False) -> DsiTasks:
  """Registers the tasks and mixture of the module doc (replacing any of
  the same names). `vocabulary` holds the mapping and the text vocabulary;
  `synthetic` holds (query text, doc key) pairs of generated queries.

  index_windows: index every window of `index_length` pieces of a
  document (stride half of it; `retrieval.search.passages`), each -> its docid,
  not only its first `index_length` tokens (DSI's "FirstP"): an XQuAD
  paragraph is a median ~290 pieces, so most of what questions ask about
  is never indexed otherwise. Needs a SentencePiece text vocabulary.
  """
  if indexing_ratio <= 0 or index_length < 1 or synthetic_ratio <= 0:
    raise ValueError(f'register_dsi_tasks: need indexing_ratio > 0, '
                     f'synthetic_ratio > 0 and index_length >= 1, got '
                     f'{indexing_ratio}, {synthetic_ratio}, {index_length}')
  ids = vocabulary.mapping.ids
  missing = [k for k in corpus.doc_keys if k not in ids]
  if missing:
    raise ValueError(f'register_dsi_tasks: {len(missing)} {corpus.name} '
                     f'documents have no docid (e.g. {missing[0]!r}); the '
                     'mapping was made for another corpus')
  features = {
      'inputs': seqio.Feature(vocabulary.text_vocabulary, add_eos=True),
      'targets': seqio.Feature(vocabulary, add_eos=True)}
  index_rows = [(text, ids[key], ids[key])
                for texts in corpus.doc_texts.values()
                for key, text in zip(corpus.doc_keys, texts)]
  if index_windows:
    if not isinstance(vocabulary.text_vocabulary,
                      seqio.SentencePieceVocabulary):
      raise ValueError('dsi_tasks.setup.index_windows needs a SentencePiece '
                       'text vocabulary (windows are cut on its pieces), got '
                       f'{type(vocabulary.text_vocabulary).__name__}')
    split = passages.split([t for t, _, _ in index_rows],
                           vocabulary.text_vocabulary, index_length)
    index_rows = [(text, index_rows[d][1], index_rows[d][2])
                  for text, d in zip(split.texts, split.owner)]

  def retrieval_rows(language=None):
    rows = {}
    for split, queries in corpus.queries.items():
      queries = [q for q in queries if language in (None, q.language)]
      if split == 'train':   # every relevant document is a training target
        rows[split] = [(q.text, ids[d], _all(q)) for q in queries
                       for d, _ in q.relevant]
      else:                  # one example per query, judged on all of them
        rows[split] = [(q.text, ids[q.relevant[0][0]], _all(q))
                       for q in queries]
    return rows

  def _all(q):
    return ' '.join(ids[d] for d, _ in q.relevant)

  names = DsiTasks(f'{corpus.name}_dsi_indexing{suffix}',
                   f'{corpus.name}_dsi_retrieval{suffix}', {},
                   f'{corpus.name}_dsi{suffix}',
                   f'{corpus.name}_dsi_synthetic{suffix}' if synthetic
                   else None)
  _register(names.indexing, {'train': index_rows}, features,
            [functools.partial(truncate_inputs, length=index_length)])
  if synthetic:
    unknown = sorted({k for _, k in synthetic if k not in ids})
    if unknown:
      raise ValueError(f'register_dsi_tasks: synthetic queries name '
                       f'{len(unknown)} documents that have no docid (e.g. '
                       f'{unknown[0]!r})')
    _register(names.synthetic, {'train': [(q, ids[k], ids[k])
                                          for q, k in synthetic]},
              features, [])
  _register(names.retrieval, retrieval_rows(), features, [])
  languages = sorted({q.language for qs in corpus.queries.values()
                      for q in qs})
  if len(languages) > 1:
    for lang in languages:
      name = f'{corpus.name}_dsi_retrieval_{lang}{suffix}'
      _register(name, retrieval_rows(lang), features, [])
      names.per_language[lang] = name
  seqio.MixtureRegistry.remove(names.mixture)
  rates = [(names.indexing, indexing_ratio), (names.retrieval, 1.0)]
  if synthetic:
    rates.append((names.synthetic, synthetic_ratio))
  seqio.MixtureRegistry.add(names.mixture, rates)
  return names


# ---------------------------------------------------------------- setup ---

@dataclasses.dataclass
class DsiSetup:
  corpus: DsiCorpus
  mapping: docids_lib.DocidMapping
  vocabulary: docids_lib.DocidVocabulary
  tasks: DsiTasks
  model_vocab_size: int

  @functools.cached_property
  def trie(self) -> Trie:
    return Trie.from_sequences(self.vocabulary.token_sequences(),
                               eos_id=self.vocabulary.eos_id)

  @functools.cached_property
  def _constraint(self):
    return self.trie.constraint(self.model_vocab_size)

  def constraint(self):
    """Logits processor: decode only docids (for `predict_batch`). Made
    once: evaluation asks for it every batch, and a big trie's arrays
    should go to the device once."""
    return self._constraint


_LAST: dict[str, DsiSetup] = {}


def text_vocabulary(spec: str) -> seqio.Vocabulary:
  """'bytes' or the path of a SentencePiece model."""
  if spec == 'bytes':
    return seqio.ByteVocabulary()
  if not os.path.exists(spec):
    raise FileNotFoundError(f'dsi_tasks.setup.vocabulary: no SentencePiece '
                            f'model at {spec!r} (or use "bytes")')
  return vocab_lib.load_vocabulary(spec)


def corpus_vocabulary(corpus: DsiCorpus, path: str, vocab_size: int,
                      per_language: int = 20000) -> str:
  """Trains a SentencePiece model on the corpus documents and TRAINING
  queries (a balanced sample per language; test queries never) and writes
  it to `path`. Word pieces let a small model match words that bytes would
  have to learn to spell: a tiny DSI model's held-out Hits@10 on XQuAD-en
  went from 2.5x to 9x random in the same minute of training."""
  texts = {lang: list(ts) for lang, ts in corpus.doc_texts.items()}
  for q in corpus.queries.get('train', ()):
    texts.setdefault(q.language, []).append(q.text)
  sample = vocab_lib.balanced_sample(texts, per_language=per_language)
  return vocab_lib.train_sentencepiece(sample, path, vocab_size=vocab_size)


def make_mapping(corpus: DsiCorpus, kind: str, *, embeddings=None,
                 k: int = 10, c: int = 100, seed: int = 0
                 ) -> docids_lib.DocidMapping:
  """Docids for the corpus. Semantic ids need `embeddings`: an (n, d)
  array or .npy path in `corpus.doc_keys` order (e.g. from the dual
  encoder), or 'lexical' (hashed TF-IDF of the English texts, else the
  first language's)."""
  if kind == 'atomic':
    return docids_lib.atomic_ids(corpus.doc_keys)
  if kind == 'naive':   # a corpus numbering its documents keeps its numbers
    numeric = all(k.isdigit() and k == str(int(k)) for k in corpus.doc_keys)
    return docids_lib.naive_ids(corpus.doc_keys, [
        int(k) for k in corpus.doc_keys] if numeric else None)
  if kind != 'semantic':
    raise ValueError(f'dsi_tasks: docid_kind must be one of '
                     f'{docids_lib.KINDS}, got {kind!r}')
  if embeddings is None:
    raise ValueError("dsi_tasks: semantic docids need embeddings (a .npy "
                     "path, an array, or 'lexical')")
  if isinstance(embeddings, str) and embeddings == 'lexical':
    texts = corpus.doc_texts.get('en') or next(iter(
        corpus.doc_texts.values()))
    embeddings = docids_lib.lexical_embeddings(texts, seed=seed)
  elif isinstance(embeddings, str):
    embeddings = np.load(embeddings)
  return docids_lib.semantic_ids(corpus.doc_keys, embeddings, k=k, c=c,
                                 seed=seed)


def load_or_make_mapping(path: str | None, corpus: DsiCorpus, kind: str,
                         **kw) -> docids_lib.DocidMapping:
  """The saved mapping at `path` if there is one (docids must not change
  between runs of one model), else a new one, saved there."""
  if path and os.path.exists(path):
    mapping = docids_lib.DocidMapping.load(path)
    if mapping.kind != kind or set(mapping.ids) != set(corpus.doc_keys):
      raise ValueError(f'{path}: a {mapping.kind} mapping of '
                       f'{len(mapping.ids)} documents, but the run asks for '
                       f'{kind} ids of the {len(corpus.doc_keys)} '
                       f'{corpus.name} documents; use another mapping_path')
    return mapping
  mapping = make_mapping(corpus, kind, **kw)
  if path:
    mapping.save(path)
  return mapping


@functools.lru_cache(maxsize=1)
def _scratch_dir() -> str:
  """One temporary folder per process for mappings that have no file."""
  return tempfile.mkdtemp(prefix='rosetta_docids_')


def _register_run_assets(mapping: docids_lib.DocidMapping,
                         mapping_path: str | None, vocabulary: str) -> None:
  """The docids and the text vocabulary travel with the run (`<run>/assets/`,
  `run_dir.register_asset`): a loaded run decodes the very ids it learnt
  (`rosetta dsi-retrieve`) even when `mapping_path` was None (semantic ids
  are then remade from embeddings that may be gone) or the vocabulary file
  moved. A mapping without a file is written to a temporary one to copy."""
  if not mapping_path:
    mapping_path = os.path.join(_scratch_dir(),
                                f'{mapping.kind}_{len(mapping.ids)}.json')
    mapping.save(mapping_path)
  run_dir.register_asset(MAPPING_ASSET, mapping_path)
  if vocabulary != 'bytes':
    run_dir.register_asset('dsi_tasks.setup.vocabulary', vocabulary)


@gin.configurable
def setup(corpus: str = 'xquad', docid_kind: str = 'atomic',
          vocabulary: str = 'bytes', mapping_path: str | None = None,
          embeddings: str | None = None, k: int = 10, c: int = 100,
          seed: int = 0, index_length: int = 64,
          indexing_ratio: float = 1.0, model_vocab_size: int | None = None,
          index_languages: Sequence[str] = datasets.XQUAD_LANGUAGES,
          query_languages: Sequence[str] = datasets.XQUAD_LANGUAGES,
          min_grade: int = 1, synthetic_queries: str | None = None,
          synthetic_ratio: float = 1.0, suffix: str = '',
          index_windows: bool = False,
          on_bad_line: str = 'error') -> DsiSetup:
  """Reads the corpus, makes (or loads) the docids, registers the tasks.

  model_vocab_size: the model's T5Config.vocab_size; checked to hold the
    docid tokens (atomic ids add one token per document).
  synthetic_queries: a JSONL file of `retrieval.dsi.synthetic_queries`; its
    queries become indexing examples at rate `synthetic_ratio`.
  corpus: 'xquad', 'cranfield' or a collection spec (module doc), whose
    bad lines are errors or, with on_bad_line='skip', skipped and counted.
  """
  bad_input.check_policy(on_bad_line, 'dsi_tasks.setup.on_bad_line')
  dsi_corpus = read_corpus(corpus, index_languages=index_languages,
                           query_languages=query_languages,
                           min_grade=min_grade, on_bad_line=on_bad_line)
  mapping = load_or_make_mapping(mapping_path, dsi_corpus, docid_kind,
                                 embeddings=embeddings, k=k, c=c, seed=seed)
  _register_run_assets(mapping, mapping_path, vocabulary)
  vocab = docids_lib.DocidVocabulary(mapping, text_vocabulary(vocabulary))
  if model_vocab_size is not None and model_vocab_size < vocab.vocab_size:
    raise ValueError(
        f'dsi_tasks.setup.model_vocab_size (T5Config.vocab_size) = '
        f'{model_vocab_size} is too small for {docid_kind} docids of '
        f'{len(mapping.ids)} documents: they need {vocab.vocab_size} '
        f'(padded: {docids_lib.padded_vocab_size(vocab.vocab_size)})')
  synthetic = ()
  if synthetic_queries:
    synthetic = query_files.pairs_for(
        query_files.read_queries(synthetic_queries), dsi_corpus,
        synthetic_queries)
  tasks = register_dsi_tasks(dsi_corpus, vocab, index_length=index_length,
                             indexing_ratio=indexing_ratio,
                             synthetic=synthetic,
                             synthetic_ratio=synthetic_ratio, suffix=suffix,
                             index_windows=index_windows)
  out = DsiSetup(dsi_corpus, mapping, vocab, tasks,
                 model_vocab_size or vocab.vocab_size)
  _LAST[tasks.mixture] = out
  return out


@gin.configurable
def processors_for(mixture: str = gin.REQUIRED) -> tuple:
  """The docid constraint of the setup that registered `mixture`, as a
  processors tuple for `predict_batch(..., processors=...)`. Call it at
  predict time: the setup runs in `task_setup`, after gin builds the
  model."""
  return (last_setup(mixture).constraint(),)


def last_setup(mixture: str) -> DsiSetup:
  """The DsiSetup that registered `mixture` (e.g. 'xquad_dsi')."""
  if mixture not in _LAST:
    raise KeyError(f'dsi_tasks.setup has not registered {mixture!r}; '
                   f'registered: {sorted(_LAST)}')
  return _LAST[mixture]
