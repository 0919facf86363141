"""Parallel corpora for multilingual NMT: readers, splits, language codes.

Corpora (files under ``data_dir()``, see ../shared/data/README.md):

  tatoeba   `tatoeba_v2021/<xxx>-<yyy>/tatoeba-test-v2021-08-07.{xxx,yyy}`,
            21 English-paired languages (the folder name orders the two ISO
            639-3 codes alphabetically: `eng-fra`, `deu-eng`). One file pair
            gives train / validation / test by a hash of the English side.
  flores    `flores200_devtest/<xxx>_<Script>.devtest`, 1,012 multi-parallel
            lines: any two languages form a pair. validation / test only,
            split by DOCUMENT (URL in `metadata_devtest.tsv`): the file is
            sorted by domain, so its first 200 lines would all be wikinews.
  multi30k  `multi30k/data/task1/raw/{train,val,test_2016_flickr}.{en,de,fr,
            cs}.gz`, 4-way parallel image captions (official splits).
  django    English -> X UI strings from Django's `.po` files (installed with
            Django, so every machine has it); hash split like tatoeba.

Languages are named by ISO 639-1 codes ('de') everywhere (task names,
`<2de>` tokens); `language()` maps ISO 639-3, FLORES and Django codes to one
`Language` row of `LANGUAGES`::

    language('deu').code == 'de';  language('de').flores == 'deu_Latn'
    language('arb_Arab').code == 'ar';  language('zh').django == 'zh_Hans'

The hash split, on Tatoeba English-German::

    splits = tatoeba_splits('de')      # {'train': [(en, de), ...],
                                       #  'validation': [...], 'test': [...]}
    # An English sentence goes to validation if sha256(en) falls in the first
    # 2% of hash space, to test in the next 3% (caps: 500 / 1000 pairs);
    # every duplicate of it goes to the same side; the rest is train.
    splits.stats.pairs                 # {'train': 16717, 'validation': 341,
                                       #  'test': 507}
    corpus_stats()['tatoeba:de']       # the same CorpusStats, by name

The hash is of the English text alone, so it is the same in every
language: an English sentence held out for en-de is held out for en-fr too,
and a multilingual model never trains on a test sentence's English side in
another direction (0 of 9,217 held-out English sentences across the 21
pairs; this holds while the caps do not bind, as with the defaults here).

Malformed input raises an error that names the file (and the 1-based line
for bad UTF-8; both files for mismatched line counts, see
`rosetta.data.text_pairs.read_parallel_text`). Pairs with an empty side are skipped,
logged and counted in `corpus_stats()`, never silently.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Callable, Sequence

from absl import logging

from rosetta.data import django_po
from rosetta.data import parallel_corpus
from rosetta.data import record_files
from rosetta.data import bad_input
from rosetta.data import text_pairs
from rosetta.data.languages import LANGUAGES, Language, language  # noqa: F401

# The repository root of a source checkout (../shared/data sits beside it).
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def data_dir() -> str:
  """`$ROSETTA_DATA_DIR`, else `../shared/data` next to the repository."""
  return os.environ.get('ROSETTA_DATA_DIR',
                        os.path.join(os.path.dirname(_REPO), 'shared', 'data'))



# ---------------------------------------------------------------- stats ---

@dataclasses.dataclass
class CorpusStats:
  """What one reader kept and skipped (exposed by `corpus_stats()`)."""
  files: tuple[str, ...] = ()
  lines: int = 0                                   # line pairs / entries read
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  pairs: dict[str, int] = dataclasses.field(default_factory=dict)  # per split
  held_out_overflow: int = 0    # held-out pairs moved to train by a cap


_STATS: dict[str, CorpusStats] = {}


def corpus_stats() -> dict[str, CorpusStats]:
  """{'tatoeba:de' | 'flores:de-fr' | 'django:fr': CorpusStats}, the latest
  read of each (a read from another root replaces it; `Splits.stats` is
  tied to its own read)."""
  return dict(_STATS)


class Splits(dict):
  """{split: [(src_text, tgt_text), ...]} with the `stats` of the read."""

  def __init__(self, splits, stats: CorpusStats):
    super().__init__(splits)
    self.stats = stats


def _record(key: str, splits, stats: CorpusStats) -> Splits:
  _STATS[key] = stats
  for reason, n in stats.skipped.items():
    if n:  # empty lines are damage; untranslated .po entries are routine
      log = logging.warning if reason == 'empty side' else logging.info
      log('%s: skipped %d of %d pairs (%s) in %s', key, n, stats.lines,
          reason, ', '.join(stats.files))
  return Splits(splits, stats)


# ---------------------------------------------------------- hash split ---

@dataclasses.dataclass(frozen=True)
class SplitSpec:
  """Held-out fractions of hash space, and caps in pairs (None: no cap)."""
  validation: float = 0.02
  test: float = 0.03
  max_validation: int | None = 500
  max_test: int | None = 1000

  def __post_init__(self):
    if not (0 <= self.validation and 0 <= self.test
            and self.validation + self.test < 1):
      raise ValueError(f'SplitSpec: fractions must be >= 0 and sum < 1: '
                       f'{self}')


def hash_unit(text: str) -> float:
  """A stable pseudo-random number in [0, 1) from SHA-256 of the text."""
  return int.from_bytes(hashlib.sha256(text.encode('utf-8')).digest()[:8],
                        'big') / 2.0**64


def hash_split(pairs: Sequence[tuple[str, str]], spec: SplitSpec = SplitSpec(),
               key: Callable[[tuple[str, str]], str] = lambda p: p[0]
               ) -> tuple[dict[str, list[tuple[str, str]]], int]:
  """Splits pairs by `hash_unit(key(pair))`; returns (splits, overflow).

  Every pair with the same key lands in the same split (Tatoeba repeats an
  English sentence with several translations). Keys with hash below
  `spec.validation` are validation candidates, the next `spec.test` test
  candidates; candidates are taken in hash order while the split's pair
  count stays within its cap, and the rest (`overflow` pairs) go to train.
  Each split keeps input order. Position plays no role (the files are
  sorted, so "the last N lines" would be a biased test set).

  >>> s, _ = hash_split([('a', '1'), ('b', '2'), ('a', '3')])
  >>> # 'a' pairs are both in s['train'] or both held out, never split up.
  """
  bounds = (('validation', 0.0, spec.validation, spec.max_validation),
            ('test', spec.validation, spec.validation + spec.test,
             spec.max_test))
  groups: dict[str, int] = {}
  units: dict[str, float] = {}
  for p in pairs:
    k = key(p)
    groups[k] = groups.get(k, 0) + 1
    if k not in units:
      units[k] = hash_unit(k)
  where: dict[str, str] = {}
  overflow = 0
  for split, lo, hi, cap in bounds:
    count, full = 0, False
    for k in sorted((k for k, u in units.items() if lo <= u < hi),
                    key=units.get):
      if not full and (cap is None or count + groups[k] <= cap):
        where[k], count = split, count + groups[k]
      else:   # stop at the first that does not fit: a prefix of hash order
        full = True
        overflow += groups[k]
  out: dict[str, list[tuple[str, str]]] = {
      'train': [], 'validation': [], 'test': []}
  for p in pairs:
    out[where.get(key(p), 'train')].append(p)
  return out, overflow


# -------------------------------------------------------------- tatoeba ---

TATOEBA_STEM = 'tatoeba-test-v2021-08-07'


def tatoeba_root(root: str | None = None) -> str:
  return root or os.path.join(data_dir(), 'tatoeba_v2021')


def tatoeba_languages(root: str | None = None) -> list[str]:
  """ISO 639-1 codes of the English-paired folders present (sorted)."""
  root = tatoeba_root(root)
  if not os.path.isdir(root):
    return []
  out = []
  for d in os.listdir(root):
    codes = d.split('-')
    if len(codes) == 2 and 'eng' in codes:
      other = codes[1] if codes[0] == 'eng' else codes[0]
      out.append(language(other).code)
  return sorted(out)


def tatoeba_files(lang: str, root: str | None = None) -> tuple[str, str]:
  """(English file, other file) for an English-paired language."""
  iso3 = language(lang).iso3
  if iso3 == 'eng':
    raise ValueError('tatoeba: pairs are English-X; name X, not English')
  root = tatoeba_root(root)
  folder = os.path.join(root, '-'.join(sorted(['eng', iso3])))
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f'tatoeba: no folder {folder} (have: {tatoeba_languages(root)})')
  return (os.path.join(folder, f'{TATOEBA_STEM}.eng'),
          os.path.join(folder, f'{TATOEBA_STEM}.{iso3}'))


@functools.lru_cache(maxsize=None)
def tatoeba_splits(lang: str, root: str | None = None,
                   spec: SplitSpec = SplitSpec()) -> Splits:
  """{split: [(english, other), ...]} by the hash of the English sentence.

  Cached per arguments (the lists are shared: do not modify them).
  """
  lang = language(lang).code
  eng_path, other_path = tatoeba_files(lang, root)
  read = text_pairs.TextPairStats()
  pairs = text_pairs.read_parallel_text(eng_path, other_path, stats=read)
  splits, overflow = hash_split(pairs, spec)
  return _record(f'tatoeba:{lang}', splits, CorpusStats(
      files=(eng_path, other_path), lines=read.lines,
      skipped={'empty side': read.skipped_empty},
      pairs={k: len(v) for k, v in splits.items()},
      held_out_overflow=overflow))


# --------------------------------------------------------------- flores ---

FLORES_VALIDATION_LINES = 200


def flores_root(root: str | None = None) -> str:
  return root or os.path.join(data_dir(), 'flores200_devtest')


def flores_languages(root: str | None = None) -> list[str]:
  root = flores_root(root)
  if not os.path.isdir(root):
    return []
  return sorted(language(f.split('.')[0]).code for f in os.listdir(root)
                if f.endswith('.devtest'))


def _flores_lines(path: str) -> list[str]:
  if not os.path.exists(path):
    raise FileNotFoundError(f'flores: no file {path}')
  # text_pairs' line reader: splits on b'\n' only; errors name file:line.
  raw = text_pairs.read_lines(path)
  return [bad_input.decode(path, i + 1, l).strip() for i, l in enumerate(raw)]


def flores_validation_lines(root: str | None = None,
                            n: int = FLORES_VALIDATION_LINES) -> frozenset:
  """0-based line indices of the FLORES validation slice (~n lines).

  Whole documents (by URL in metadata_devtest.tsv) in hash order until at
  least n lines: no article is split between validation and test, and all
  three domains are represented. Without the metadata file: the n lines
  with the smallest hash of their index (logged).
  """
  root = flores_root(root)
  meta = os.path.join(root, 'metadata_devtest.tsv')
  if not os.path.exists(meta):
    logging.warning('%s missing: FLORES validation = %d lines by hash of '
                    'the line index (articles may straddle the split)', meta, n)
    ref = _flores_lines(os.path.join(root, 'eng_Latn.devtest'))
    order = sorted(range(len(ref)), key=lambda i: hash_unit(str(i)))
    return frozenset(order[:n])
  rows = _flores_lines(meta)[1:]          # header: URL domain topic ...
  sentences = os.path.join(root, 'eng_Latn.devtest')
  if os.path.exists(sentences):
    expected = len(_flores_lines(sentences))
    if len(rows) != expected:  # a row off and every later one is misplaced
      raise ValueError(
          f'{meta} has {len(rows)} rows after its header but {sentences} '
          f'has {expected} lines: the metadata must give one row per '
          'sentence')
  docs: dict[str, list[int]] = {}
  for i, row in enumerate(rows):
    docs.setdefault(row.split('\t')[0], []).append(i)
  chosen: set[int] = set()
  for url in sorted(docs, key=hash_unit):
    if len(chosen) >= n:
      break
    chosen.update(docs[url])
  return frozenset(chosen)


@functools.lru_cache(maxsize=None)
def flores_splits(src: str, tgt: str, root: str | None = None) -> Splits:
  """{'validation', 'test': [(src, tgt), ...]} for any two languages."""
  src_l, tgt_l = language(src), language(tgt)
  root = flores_root(root)
  paths = [os.path.join(root, f'{l.flores}.devtest') for l in (src_l, tgt_l)]
  a, b = _flores_lines(paths[0]), _flores_lines(paths[1])
  if len(a) != len(b):
    raise ValueError(f'flores files are not line-aligned: {paths[0]} has '
                     f'{len(a)} lines but {paths[1]} has {len(b)}')
  val = flores_validation_lines(root)
  if val and max(val) >= len(a):
    raise ValueError(f'{root}/metadata_devtest.tsv has more rows than '
                     f'{paths[0]} has lines ({len(a)})')
  out: dict[str, list[tuple[str, str]]] = {'validation': [], 'test': []}
  empty = 0
  for i, (s, t) in enumerate(zip(a, b)):
    if not s or not t:
      empty += 1
      continue
    out['validation' if i in val else 'test'].append((s, t))
  return _record(f'flores:{src_l.code}-{tgt_l.code}', out, CorpusStats(
      files=tuple(paths), lines=len(a), skipped={'empty side': empty},
      pairs={k: len(v) for k, v in out.items()}))


# ------------------------------------------------------------- multi30k ---

MULTI30K_LANGUAGES = ('cs', 'de', 'en', 'fr')
MULTI30K_SPLITS = {'train': 'train', 'validation': 'val',
                   'test': 'test_2016_flickr'}


def multi30k_root(root: str | None = None) -> str:
  return root or os.path.join(data_dir(), 'multi30k', 'data', 'task1',
                              'raw')


def multi30k_source(src: str, tgt: str,
                    root: str | None = None) -> text_pairs.TextPairSource:
  """`rosetta.data.text_pairs.parallel_text_source` over the official splits."""
  for l in (src, tgt):
    if l not in MULTI30K_LANGUAGES:
      raise ValueError(f'multi30k has {MULTI30K_LANGUAGES}, not {l!r}')
  root = multi30k_root(root)
  return text_pairs.parallel_text_source({
      split: (os.path.join(root, f'{stem}.{src}.gz'),
              os.path.join(root, f'{stem}.{tgt}.gz'))
      for split, stem in MULTI30K_SPLITS.items()})


# --------------------------------------------------------------- django ---

DJANGO_SPLIT = SplitSpec(validation=0.05, test=0.05, max_validation=None,
                         max_test=None)   # ~900 pairs/language: keep ~45 each


@functools.lru_cache(maxsize=None)
def django_splits(lang: str, spec: SplitSpec = DJANGO_SPLIT) -> Splits:
  """{split: [(english, other), ...]} from Django's .po files, hash split."""
  l = language(lang)
  if not l.django:
    raise ValueError(f'Django ships no translation for {l.name} ({l.code})')
  po = django_po.PoStats()
  pairs = django_po.django_pairs([l.django], stats=po).get(l.django, [])
  if not pairs:
    raise ValueError(f'no Django .po pairs for locale {l.django!r}')
  splits, overflow = hash_split(pairs, spec)
  return _record(f'django:{l.code}', splits, CorpusStats(
      files=(os.path.join(django_po.django_locale_root(), '**', l.django,
                          'LC_MESSAGES', '*.po'),),
      lines=po.entries,
      skipped={'fuzzy': po.fuzzy, 'untranslated': po.untranslated},
      pairs={k: len(v) for k, v in splits.items()},
      held_out_overflow=overflow))


# -------------------------------------------------------------- sources ---

CORPORA = ('tatoeba', 'flores', 'multi30k', 'django')


# A built-in corpus by name, or one of your own (files named in gin).
Corpus = str | parallel_corpus.ParallelCorpus


def corpus_name(corpus: Corpus) -> str:
  if isinstance(corpus, parallel_corpus.ParallelCorpus):
    return corpus.name
  if corpus not in CORPORA:
    raise ValueError(f'unknown corpus {corpus!r}; known: {CORPORA}, or a '
                     'rosetta.data.parallel_corpus.ParallelCorpus of your '
                     'own files')
  return corpus


def available(corpus: Corpus, root: str | None = None) -> bool:
  """Whether the corpus's files are here (django: whether it is installed;
  a ParallelCorpus: always, its files are checked when read)."""
  if isinstance(corpus, parallel_corpus.ParallelCorpus):
    return True
  if corpus == 'tatoeba':
    return bool(tatoeba_languages(root))
  if corpus == 'flores':
    return bool(flores_languages(root))
  if corpus == 'multi30k':
    return os.path.exists(os.path.join(multi30k_root(root), 'train.en.gz'))
  if corpus == 'django':
    try:
      django_po.django_locale_root()
      return True
    except ImportError:
      return False
  raise ValueError(f'unknown corpus {corpus!r}; known: {CORPORA}')


def _english_centric(corpus, src, tgt):
  if 'en' not in (src, tgt) or src == tgt:
    raise ValueError(f'{corpus} pairs English with another language; '
                     f'{src}->{tgt} is not such a direction')
  return tgt if src == 'en' else src


def direction_splits(corpus: str, src: str, tgt: str, *,
                     root: str | None = None,
                     spec: SplitSpec | None = None
                     ) -> Callable[[], Splits]:
  """A loader: () -> {split: [(src_text, tgt_text), ...]} (tatoeba, flores,
  django; multi30k is file-backed, see `source`). Reads on first call."""
  src, tgt = language(src).code, language(tgt).code

  def swap(splits, other):
    if src == other:
      return Splits({k: [(b, a) for a, b in v] for k, v in splits.items()},
                    splits.stats)
    return splits
  if corpus == 'tatoeba':
    other = _english_centric(corpus, src, tgt)
    return lambda: swap(tatoeba_splits(other, root, spec or SplitSpec()),
                        other)
  if corpus == 'django':
    other = _english_centric(corpus, src, tgt)
    return lambda: swap(django_splits(other, spec or DJANGO_SPLIT), other)
  if corpus == 'flores':
    if src == tgt:
      raise ValueError(f'flores: {src}->{tgt} translates into itself')
    return lambda: flores_splits(src, tgt, root)
  raise ValueError(f'direction_splits: unknown corpus {corpus!r}')


def source(corpus: Corpus, src: str, tgt: str, *, root: str | None = None,
           spec: SplitSpec | None = None):
  """A lazy seqio source of {'source', 'target'} strings for one direction.

  Splits: tatoeba/django/multi30k: train, validation, test; flores:
  validation, test. Nothing is read until a split is used.
  `source(...).stats(split)` is a `rosetta.data.text_pairs.TextPairStats` (lines of the
  whole file pair, pairs in the split, empty pairs skipped in the file).
  """
  src, tgt = language(src).code, language(tgt).code
  if isinstance(corpus, parallel_corpus.ParallelCorpus):
    return corpus.source(src, tgt)  # streamed from its files
  if corpus == 'multi30k':
    return multi30k_source(src, tgt, root)
  load = direction_splits(corpus, src, tgt, root=root, spec=spec)
  splits = ('validation', 'test') if corpus == 'flores' else (
      'train', 'validation', 'test')

  def loader(split):
    def fn(stats: text_pairs.TextPairStats):
      loaded = load()
      stats.lines, stats.pairs = loaded.stats.lines, len(loaded[split])
      stats.skipped_empty = loaded.stats.skipped.get('empty side', 0)
      return loaded[split]
    return fn
  return text_pairs.TextPairSource({s: loader(s) for s in splits},
                             description=f'{corpus} {src}->{tgt}')


def training_texts(corpus: Corpus, languages: Sequence[str], *,
                   root: str | None = None, split: str = 'train',
                   max_pairs: int | None = 200_000
                   ) -> dict[str, list[str]]:
  """{lang: sentences} from the `split` side of each language (for a
  vocabulary). English-centric corpora give English from every pair read.
  A ParallelCorpus is read from the start of its files, at most `max_pairs`
  pairs per language pair.
  """
  codes = sorted({language(l).code for l in languages})
  out: dict[str, list[str]] = {l: [] for l in codes}
  others = [l for l in codes if l != 'en'] or (
      ['de'] if corpus == 'multi30k' else [])
  if not others:
    raise ValueError(f'{corpus_name(corpus)}: name at least one non-English '
                     'language')
  for other in others:
    if isinstance(corpus, parallel_corpus.ParallelCorpus):
      read = corpus.source('en', other).get_dataset(split, shuffle=False)
      pairs = [(ex['source'].decode(), ex['target'].decode())
               for ex in record_files.rows(read.take(max_pairs or -1))]
    elif corpus == 'multi30k':
      pairs = multi30k_source('en', other, root).pairs(split)
    else:
      loaded = direction_splits(corpus, 'en', other, root=root)()
      if split not in loaded:
        raise ValueError(f'{corpus} has no {split!r} split ({list(loaded)})')
      pairs = loaded[split]
    if 'en' in out:
      out['en'].extend(e for e, _ in pairs)
    if other in out:
      out[other].extend(x for _, x in pairs)
  return out
