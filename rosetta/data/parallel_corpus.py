"""A parallel corpus of your own, described in gin: TSV, Moses file pairs,
JSONL or a TFDS translation dataset, streamed (see `record_files`).

    import translation.nmt
    import rosetta.data.parallel_corpus

    nmt.setup.corpus = @parallel_corpus.ParallelCorpus()
    parallel_corpus.ParallelCorpus.name = 'europarl'
    parallel_corpus.ParallelCorpus.format = 'moses'
    parallel_corpus.ParallelCorpus.splits = {
        'train': 'data/europarl-v7.{pair}.{lang}.gz',     # + globs
        'validation': 'data/newstest2013.{lang}'}
    nmt.setup.languages = ['de', 'fr']

registers `europarl_translate_en_de`, `..._de_en`, `..._en_fr`, `..._fr_en`
like the built-in corpora. A split's entry is a file pattern (several: a
list) with placeholders, or {pair: patterns} to name each language pair's
files yourself:

  {lang}   moses: the language of the file ('de' for train.de)
  {pair}   the language pair, e.g. 'de-en', in `pair_order`: 'alphabetical'
           (OPUS, Europarl), 'english_last' ('fr-en' as in WMT/TFDS) or
           'english_first'; in the {pair: ...} form the key's order counts

Formats:
  'tsv'    `columns=(0, 1)`: the positions of the pair's first and second
           language (in `{pair}` order); or a header-name template such as
           `columns='{lang}'` (the header names each column by language)
           with `header=True`. Every line must have the file's column count.
  'jsonl'  `fields='{lang}'`: dotted path of each language's text, e.g.
           'translation.{lang}' (the Hugging Face translation layout)
  'moses'  one file per language, line-aligned (patterns contain {lang})
  'tfds'   `tfds_name='wmt14_translate/{pair}:1.0.0'` read from
           `tfds_data_dir` (prepared beforehand: nothing is downloaded);
           features are the language codes; `splits`, if given, maps split
           names to TFDS splits or slices ({'validation': 'train[:1%]'})

Bad lines raise naming the file and line, or with `on_bad_line='skip'` are
skipped and counted (`rosetta.data.bad_input`). Pairs are English-centric
in `nmt.setup`; any pair the files hold can be read with `source(src, tgt)`.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import gin
import seqio
import tensorflow as tf

from rosetta.data import bad_input
from rosetta.data import record_files
from rosetta.data.languages import language

FORMATS = ('tsv', 'jsonl', 'moses', 'tfds')
PAIR_ORDERS = ('alphabetical', 'english_last', 'english_first')


def pair_name(a: str, b: str, order: str = 'alphabetical') -> str:
  """('en', 'de') -> 'de-en' (alphabetical, english_last) / 'en-de'."""
  if order == 'alphabetical':
    a, b = sorted((a, b))
  elif order == 'english_last':
    a, b = (b, a) if a == 'en' else (a, b)
  elif order == 'english_first':
    a, b = (b, a) if b == 'en' else (a, b)
  else:
    raise ValueError(f'pair_order={order!r}: expected one of {PAIR_ORDERS}')
  return f'{a}-{b}'


class RenamedFeatures(seqio.DataSource):
  """A source whose features are renamed ({'de': x} -> {'source': x})."""

  def __init__(self, inner: seqio.DataSource, names: Mapping[str, str]):
    self._inner, self._names = inner, dict(names)
    super().__init__(splits=inner.splits, num_input_examples=None,
                     caching_permitted=inner.caching_permitted)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return self._inner.supports_arbitrary_sharding

  def list_shards(self, split: str):
    return self._inner.list_shards(split)

  def num_input_examples(self, split: str):
    return self._inner.num_input_examples(split)

  def get_dataset(self, split: str = 'train', shuffle: bool = True,
                  seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, **kwargs):
    ds = self._inner.get_dataset(split=split, shuffle=shuffle, seed=seed,
                                 shard_info=shard_info)
    return ds.map(lambda ex: {new: ex[old] for old, new in self._names.items()},
                  num_parallel_calls=tf.data.AUTOTUNE)


@gin.configurable
class ParallelCorpus:
  """Files (or a TFDS dataset) holding sentence pairs; see the module doc."""

  def __init__(self, name: str = gin.REQUIRED,
               splits: Mapping[str, Any] | None = None,
               format: str = 'tsv', *,  # pylint: disable=redefined-builtin
               columns: Sequence[int] | str = (0, 1), header: bool = False,
               fields: str = '{lang}', pair_order: str = 'alphabetical',
               tfds_name: str | None = None,
               tfds_data_dir: str | None = None,
               on_bad_line: str = 'error'):
    if not name or not name.replace('_', '').isalnum():
      raise ValueError(f'ParallelCorpus.name={name!r}: letters, digits and '
                       '_ only (it starts every task name)')
    if format not in FORMATS:
      raise ValueError(f'ParallelCorpus({name}).format={format!r}: expected '
                       f'one of {FORMATS}')
    if format == 'tfds':
      if not tfds_name or ':' not in tfds_name:
        raise ValueError(f'ParallelCorpus({name}): format tfds needs '
                         'tfds_name with its version, e.g. '
                         f'"wmt14_translate/{{pair}}:1.0.0" (got {tfds_name!r})')
    elif not splits:
      raise ValueError(f'ParallelCorpus({name}).splits: give file patterns '
                       "per split, e.g. {'train': 'data/train.{lang}'}")
    if isinstance(columns, str) and not header:
      raise ValueError(f'ParallelCorpus({name}).columns={columns!r} names '
                       'header columns: set header=True')
    if not isinstance(columns, str) and len(columns) != 2:
      raise ValueError(f'ParallelCorpus({name}).columns={columns!r}: two '
                       'positions, of the first and second language')
    pair_name('en', 'de', pair_order)  # validates the order
    self.name, self.format = name, format
    self.splits = dict(splits or {})
    self.columns, self.header, self.fields = columns, header, fields
    self.pair_order = pair_order
    self.tfds_name, self.tfds_data_dir = tfds_name, tfds_data_dir
    self.on_bad_line = bad_input.check_policy(
        on_bad_line, f'ParallelCorpus({name}).on_bad_line')

  def __repr__(self):
    return f'ParallelCorpus({self.name!r}, format={self.format!r})'

  def _patterns(self, spec, a: str, b: str) -> tuple[str, list[str]]:
    """The pair's name (in its files' order) and its patterns for a split."""
    if isinstance(spec, Mapping):
      for key in (f'{a}-{b}', f'{b}-{a}'):
        if key in spec:
          value = spec[key]
          return key, [value] if isinstance(value, str) else list(value)
      raise ValueError(f'ParallelCorpus({self.name}): no files for the pair '
                       f'{a}-{b}; pairs: {sorted(spec)}')
    pair = pair_name(a, b, self.pair_order)
    return pair, [spec] if isinstance(spec, str) else list(spec)

  def _split_spec(self, split: str):
    if split not in self.splits:
      raise ValueError(f'ParallelCorpus({self.name}): no split {split!r}; '
                       f'splits: {sorted(self.splits)}')
    return self.splits[split]

  def _file_source(self, src: str, tgt: str) -> seqio.DataSource:
    split_files, fmt = {}, None
    for split, spec in self.splits.items():
      pair, patterns = self._patterns(spec, src, tgt)
      first, second = pair.split('-')
      if self.format == 'moses':
        shards = []
        for p in patterns:
          if '{lang}' not in p:
            raise ValueError(f'ParallelCorpus({self.name}) split {split!r}: '
                             f'moses pattern {p!r} has no {{lang}}')
          shards += self._aligned(p.replace('{pair}', pair), src, tgt)
        split_files[split] = shards
        fmt = record_files.AlignedLines(('source', 'target'))
        continue
      split_files[split] = [p.replace('{pair}', pair) for p in patterns]
      if self.format == 'jsonl':
        fmt = record_files.Jsonl({
            'source': self.fields.replace('{lang}', src),
            'target': self.fields.replace('{lang}', tgt)})
      elif isinstance(self.columns, str):
        fmt = record_files.Tsv({'source': self.columns.replace('{lang}', src),
                                'target': self.columns.replace('{lang}', tgt)},
                               header=True)
      else:
        col = dict(zip((first, second), self.columns))
        fmt = record_files.Tsv({'source': col[src], 'target': col[tgt]},
                               header=self.header)
    return record_files.RecordFileSource(
        split_files, fmt, on_bad_line=self.on_bad_line,
        description=f'{self.name} {src}->{tgt}')

  def _aligned(self, pattern: str, src: str, tgt: str) -> list[tuple[str, str]]:
    """(src file, tgt file) pairs of a {lang} pattern: globs are expanded
    for `src`, and each match's `tgt` file (the same wildcard matches)
    must exist."""
    what = f'ParallelCorpus({self.name})'
    if '[' in pattern:
      raise ValueError(f'{what}: pattern {pattern!r}: use * and ? only')
    tokens = re.split(r'(\{lang\}|\*|\?)', pattern)
    regex = ''.join({'{lang}': re.escape(src), '*': '([^/]*)',
                     '?': '([^/])'}.get(t, re.escape(t)) for t in tokens)
    out = []
    for found in record_files.expand(pattern.replace('{lang}', src), what):
      groups = iter(re.fullmatch(regex, found).groups())
      other = ''.join(tgt if t == '{lang}' else next(groups)
                      if t in ('*', '?') else t for t in tokens)
      if not tf.io.gfile.exists(other):
        raise FileNotFoundError(f'{what}: {found} has no aligned {tgt} file '
                                f'{other}')
      out.append((found, other))
    return out

  def source(self, src: str, tgt: str) -> seqio.DataSource:
    """{'source', 'target'} strings for the direction src -> tgt."""
    src, tgt = language(src).code, language(tgt).code
    if src == tgt:
      raise ValueError(f'{self.name}: {src}->{tgt} translates into itself')
    if self.format != 'tfds':
      return self._file_source(src, tgt)
    pair = pair_name(src, tgt, self.pair_order)
    name = self.tfds_name.replace('{pair}', pair)
    # read_only: a dataset not prepared in tfds_data_dir is an error, never
    # a download.
    inner = seqio.TfdsDataSource(tfds_name=name,
                                 tfds_data_dir=self.tfds_data_dir,
                                 splits=self.splits or None, read_only=True)
    return RenamedFeatures(inner, {src: 'source', tgt: 'target'})
