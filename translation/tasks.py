"""seqio translation tasks: one per corpus and direction, target tag first.

Naming: `{corpus}_translate_{src}_{tgt}{suffix}` with ISO 639-1 codes, e.g.

    tatoeba_translate_en_de    train / validation / test (hash split)
    tatoeba_translate_de_en    the same pairs reversed (same split)
    flores_translate_de_fr     validation / test only: evaluation, also for
                               zero-shot directions (FLORES is multi-parallel)
    django_translate_en_fr     Django .po strings (any machine)
    multi30k_translate_en_de   official Multi30k splits

`suffix` tells vocabularies apart when both are registered (e.g. '_bytes').

Input format (Johnson et al. 2017): the target-language token `<2xx>` comes
first. With a SentencePiece vocabulary it is ONE reserved piece (see
`rosetta.vocab`), prepended as an id after tokenization, so it is always
`inputs[0]`::

    register_translation_tasks(vocab, 'tatoeba', [('en', 'de')])
    ex = next(seqio.get_mixture_or_task('tatoeba_translate_en_de')
              .get_dataset(None, 'validation', shuffle=False)
              .as_numpy_iterator())
    ex['inputs']               # [language_token_id(vocab, 'de'), ..., 1(EOS)]
    ex['inputs_pretokenized']  # b'<2de> When I came home, I felt very hungry.'
    ex['targets_pretokenized'] # b'Als ich nach Hause kam, hatte ich gro...'

With `seqio.ByteVocabulary()` the tag is plain text ('<2de> ' + source:
six byte tokens). `encode_source` builds the same ids for inference.

Metrics per task: `translation.metrics.metric_fn_for(tgt)` (one table of
BLEU tokenizers for the tasks and the evaluation table: sacreBLEU BLEU with
'zh' / 'ja-mecab' / 'ko-mecab' / '13a' by target language, chrF, and the
fastText off-target rate), on detokenized text against the raw references.
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

import seqio
import tensorflow as tf

from rosetta.data import text_pairs
from rosetta import vocab as vocab_lib
from translation import metrics
from rosetta.data import corpora as sources

Direction = tuple[str, str]


def task_name(corpus: sources.Corpus, src: str, tgt: str,
              suffix: str = '') -> str:
  """('tatoeba', 'en', 'de') -> 'tatoeba_translate_en_de' (a ParallelCorpus:
  its name)."""
  name = sources.corpus_name(corpus)
  src, tgt = sources.language(src).code, sources.language(tgt).code
  return f'{name}_translate_{src}_{tgt}{suffix}'


def parse_directions(spec: str | Iterable[str | Direction]) -> list[Direction]:
  """'en-de,de-en' (or ['en-de', ('de', 'en')]) -> [('en','de'), ('de','en')].

  Codes are normalised to ISO 639-1 ('deu-eng' -> ('de', 'en')).
  """
  items = spec.split(',') if isinstance(spec, str) else list(spec)
  out = []
  for item in items:
    pair = item.strip().split('-') if isinstance(item, str) else list(item)
    if len(pair) != 2 or not all(pair):
      raise ValueError(f'direction {item!r}: expected "src-tgt", e.g. "en-de"')
    src, tgt = (sources.language(c).code for c in pair)
    if src == tgt:
      raise ValueError(f'direction {item!r} translates into itself')
    out.append((src, tgt))
  return out


def english_centric(languages: Iterable[str]) -> list[Direction]:
  """['de', 'fr'] -> [('en','de'), ('de','en'), ('en','fr'), ('fr','en')]."""
  out = []
  for l in languages:
    l = sources.language(l).code
    if l != 'en':
      out += [('en', l), (l, 'en')]
  return out


def zero_shot_directions(languages: Iterable[str],
                         trained: Iterable[Direction]) -> list[Direction]:
  """Ordered pairs of `languages` not among the `trained` directions,
  e.g. (['en', 'de', 'fr'], english_centric(['de', 'fr'])) ->
  [('de', 'fr'), ('fr', 'de')]."""
  codes = sorted({sources.language(l).code for l in languages})
  seen = set(parse_directions(list(trained)))
  return [(a, b) for a in codes for b in codes if a != b and (a, b) not in seen]


def metric_fns(tgt: str) -> list:
  """seqio metric fns for a target language: [fn(targets, predictions) ->
  {'bleu', 'chrf', 'off_target'}] from `translation.metrics`."""
  return [metrics.metric_fn_for(sources.language(tgt).code)]


def prepend_token(dataset: tf.data.Dataset, token_id: int,
                  tag: str) -> tf.data.Dataset:
  """After tokenization: inputs = [token_id] + inputs; the readable copy
  `inputs_pretokenized` becomes tag + ' ' + source."""
  def fn(ex):
    ex = dict(ex)
    ex['inputs'] = tf.concat(
        [tf.constant([token_id], ex['inputs'].dtype), ex['inputs']], 0)
    if 'inputs_pretokenized' in ex:
      ex['inputs_pretokenized'] = tf.strings.join(
          [tag + ' ', ex['inputs_pretokenized']])
    return ex
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def encode_source(vocabulary: seqio.Vocabulary, text: str,
                  tgt: str) -> list[int]:
  """Token ids of a source sentence as the tasks build them (no EOS)."""
  tgt = sources.language(tgt).code
  token = vocab_lib.language_token_id(vocabulary, tgt)
  if token is None:
    return list(vocabulary.encode(f'{vocab_lib.language_token(tgt)} {text}'))
  return [token] + list(vocabulary.encode(text))


def register_task(name: str, source: seqio.DataSource,
                  vocabulary: seqio.Vocabulary, tgt: str, *,
                  replace: bool = True,
                  shuffle_buffer_size: int = seqio.SHUFFLE_BUFFER_SIZE
                  ) -> seqio.Task:
  """One translation Task from a {'source', 'target'} source into `tgt`.

  Preprocessors: text pair -> inputs/targets (tag as text for byte
  vocabularies), tokenize, prepend the tag id (SentencePiece), the cache
  point, EOS after trimming (a truncated example keeps its tag and ends in
  EOS).
  """
  tgt = sources.language(tgt).code
  tag = vocab_lib.language_token(tgt)
  token = vocab_lib.language_token_id(vocabulary, tgt)
  preprocessors = [
      functools.partial(text_pairs.text_pair_to_inputs_targets,
                        input_prefix='' if token is not None else tag + ' '),
      seqio.preprocessors.tokenize]
  if token is not None:
    preprocessors.append(functools.partial(prepend_token, token_id=token,
                                           tag=tag))
  # What comes before is what an offline cache (`rosetta cache`) stores.
  preprocessors.append(seqio.CacheDatasetPlaceholder())
  preprocessors.append(seqio.preprocessors.append_eos_after_trim)
  if replace:
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=source,
      output_features={
          'inputs': seqio.Feature(vocabulary, add_eos=True),
          'targets': seqio.Feature(vocabulary, add_eos=True)},
      preprocessors=preprocessors, metric_fns=metric_fns(tgt),
      shuffle_buffer_size=shuffle_buffer_size)


def register_translation_tasks(
    vocabulary: seqio.Vocabulary, corpus: sources.Corpus,
    directions: str | Sequence[str | Direction], *, suffix: str = '',
    root: str | None = None, spec: sources.SplitSpec | None = None,
    replace: bool = True) -> list[str]:
  """Registers `{corpus}_translate_{src}_{tgt}{suffix}` for each direction.

  Idempotent with replace=True (the default): calling it again, e.g. with a
  new vocabulary, re-registers the same names. Nothing is read until a task's
  dataset is built. Returns the task names in `directions` order.

  >>> register_translation_tasks(seqio.ByteVocabulary(), 'django',
  ...                            'en-fr,fr-en', suffix='_bytes')
  ['django_translate_en_fr_bytes', 'django_translate_fr_en_bytes']
  """
  names = []
  for src, tgt in parse_directions(directions):
    name = task_name(corpus, src, tgt, suffix)
    register_task(name, sources.source(corpus, src, tgt, root=root,
                                       spec=spec),
                  vocabulary, tgt, replace=replace)
    names.append(name)
  return names


def register_zero_shot_eval_tasks(
    vocabulary: seqio.Vocabulary, languages: Iterable[str],
    trained: Iterable[Direction], *, suffix: str = '',
    root: str | None = None) -> list[str]:
  """FLORES tasks (validation/test only) for every pair of `languages` that
  the model was not trained on, e.g. de->fr after English-centric training.
  """
  return register_translation_tasks(
      vocabulary, 'flores', zero_shot_directions(languages, trained),
      suffix=suffix, root=root)
