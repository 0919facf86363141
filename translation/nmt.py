"""The multilingual NMT setup named in gin: corpus, languages, vocabulary,
per-direction tasks, the temperature mixture and zero-shot eval tasks.

    import translation.nmt
    task_setup.register_fns = [@nmt.setup]
    nmt.setup.corpus = 'auto'                 # tatoeba if present, else django
    nmt.setup.languages = ['de', 'fr', 'es', 'it']
    nmt.setup.vocab_path = 'runs/vocab/tatoeba_de_fr_es_it_8k.model'
    train.task = 'nmt_mixture'

`setup` trains the SentencePiece vocabulary on a language-balanced sample of
the training side if `vocab_path` does not exist yet (deterministic, so
every run and host builds the same file), with the `<2xx>` tokens reserved,
then registers `{corpus}_translate_{src}_{tgt}` in both directions between
English and each language, and the mixture `mixture_name` sampling them with
rate n^(1/T) (or annealing T from `anneal_from` to `temperature`). With
FLORES present, every non-English pair (e.g. de->fr) is registered for
zero-shot evaluation as `flores_translate_{src}_{tgt}`.
`vocab_path='bytes'` uses seqio's byte vocabulary instead (no training).
Training copies the vocabulary into the run (`<run>/assets/`); `rosetta
translate` and `RunDir.load` read that copy, so a moved run decodes the
same, and a missing vocabulary is then an error, never a retrain.

A pretrained model brings its own vocabulary: with `base_vocab_path` (e.g.
mT5's `spiece.model`, or the HF checkpoint directory that holds it),
`vocab_path` is written as a copy of it with the `<2xx>` tokens appended at
the end (existing ids, and so the pretrained embeddings, unchanged). `model_vocab_size` (the embedding's rows) makes a
vocabulary with more ids than the model has rows an error at setup: JAX
would otherwise clamp the out-of-range ids silently. mT5 has 250,112 rows
for 250,100 pieces, so English plus at most 11 languages fit.
"""

from __future__ import annotations

import dataclasses
import os

import gin
import seqio

from rosetta import vocab as vocab_lib
from rosetta.run import run_dir
from translation import tasks
from rosetta.data import mixtures
from rosetta.data import corpora as sources


@dataclasses.dataclass
class NmtSetup:
  corpus: str
  languages: list[str]
  vocabulary: seqio.Vocabulary
  directions: list[tuple[str, str]]
  task_names: list[str]
  zero_shot_tasks: list[str]
  mixture: str


def resolve_corpus(corpus: sources.Corpus) -> sources.Corpus:
  if not isinstance(corpus, str):
    return corpus  # a ParallelCorpus of your own files
  if corpus != 'auto':
    # A saved run decodes from its own vocabulary: its corpus need not be
    # on this machine (the tasks read nothing until a split is used).
    if not sources.available(corpus) and not run_dir.reading_a_run():
      raise FileNotFoundError(f'corpus {corpus!r} is not available (data '
                              f'dir: {sources.tatoeba_root()})')
    return corpus
  return 'tatoeba' if sources.available('tatoeba') else 'django'


def build_vocabulary(path: str, corpus: str, languages, vocab_size: int,
                     sentences_per_language: int | None = 20000,
                     base_vocab_path: str | None = None
                     ) -> seqio.Vocabulary:
  if path == 'bytes':
    return seqio.ByteVocabulary()
  if not os.path.exists(path) and run_dir.reading_a_run():
    raise FileNotFoundError(
        f'{path}: the vocabulary of this run is missing (nmt.setup.'
        'vocab_path); a new one would decode garbage. Copy it back, or '
        're-train the run')
  all_langs = sorted({'en', *languages})
  if not os.path.exists(path) and base_vocab_path:
    if os.path.isdir(base_vocab_path):  # an HF checkpoint directory
      base_vocab_path = os.path.join(base_vocab_path, 'spiece.model')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    vocab_lib.add_language_tokens(base_vocab_path, all_langs, path)
  elif not os.path.exists(path):
    texts = sources.training_texts(corpus, all_langs)
    sample = vocab_lib.balanced_sample(texts,
                                       per_language=sentences_per_language)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # A small corpus (Django's .po strings on a machine without the data
    # folder) cannot fill 8k pieces: take the largest size it can.
    vocab_lib.train_sentencepiece(
        sample, path, vocab_size=vocab_size,
        language_tokens=[l.code for l in sources.LANGUAGES],
        fit_vocab_size=True)
  run_dir.register_asset('nmt.setup.vocab_path', path)
  return vocab_lib.load_vocabulary(path, languages=all_langs)


_LAST: dict[str, NmtSetup] = {}


@gin.configurable
def setup(corpus: str = 'auto', languages=('de', 'fr', 'es', 'it'),
          vocab_path: str = gin.REQUIRED, vocab_size: int = 8000,
          temperature: float = 5.0, anneal_from: float | None = None,
          anneal_examples: int | None = None, zero_shot: bool = True,
          mixture_name: str = 'nmt_mixture',
          base_vocab_path: str | None = None,
          model_vocab_size: int | None = None) -> NmtSetup:
  corpus = resolve_corpus(corpus)
  languages = [sources.language(l).code for l in languages]
  if 'en' in languages:
    raise ValueError("nmt.setup.languages: list the non-English languages; "
                     "English is the pivot of every direction")
  vocabulary = build_vocabulary(vocab_path, corpus, languages, vocab_size,
                                base_vocab_path=base_vocab_path)
  if model_vocab_size is not None and vocabulary.vocab_size > model_vocab_size:
    raise ValueError(
        f'vocabulary {vocab_path} has {vocabulary.vocab_size} ids but the '
        f'model has {model_vocab_size} embedding rows '
        f'(nmt.setup.model_vocab_size): use fewer languages than '
        f'{len(languages)} or a larger T5Config.vocab_size')
  directions = tasks.english_centric(languages)
  names = tasks.register_translation_tasks(vocabulary, corpus, directions)
  zs = []
  if zero_shot and sources.available('flores'):
    zs = tasks.register_zero_shot_eval_tasks(vocabulary, ['en', *languages],
                                             directions)
  if anneal_from is not None:
    if not anneal_examples:
      raise ValueError('nmt.setup.anneal_examples must be set with '
                       'anneal_from')
    mixtures.register_annealed_mixture(
        mixture_name, names, t0=anneal_from, t1=temperature,
        anneal_examples=anneal_examples)
  else:
    mixtures.register_temperature_mixture(mixture_name, names, temperature)
  out = NmtSetup(corpus, languages, vocabulary, directions, names, zs,
                 mixture_name)
  _LAST[mixture_name] = out
  return out


def last_setup(mixture_name: str = 'nmt_mixture') -> NmtSetup:
  if mixture_name not in _LAST:
    raise KeyError(f'nmt.setup has not run for {mixture_name!r}')
  return _LAST[mixture_name]
