"""English -> X pairs from the gettext `.po` files shipped inside Django.

Django (BSD-3) ships about 1,200 `django.po` files over ~98 languages, so any
machine with the package registry has real multilingual text. Each entry::

    #, python-format
    msgctxt "month name"
    msgid "May"
    msgstr "Mai"

gives the pair ("May", "Mai"). Skipped, and counted: the header (empty
msgid), fuzzy entries (unreviewed), untranslated entries (empty msgstr) and
obsolete ones (`#~`). A line that is not gettext syntax raises an error that
names the file and line.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import glob
import os
import re


@dataclasses.dataclass
class PoEntry:
  msgid: str
  msgstr: str
  msgctxt: str | None
  line: int          # line of the msgid
  plural: bool = False


@dataclasses.dataclass
class PoStats:
  entries: int = 0
  fuzzy: int = 0
  untranslated: int = 0
  obsolete: int = 0


_KEYWORD = re.compile(r'^(msgctxt|msgid|msgid_plural|msgstr(?:\[(\d+)\])?)\s+'
                      r'(".*")\s*$')


def _unquote(token: str, path: str, lineno: int) -> str:
  try:
    value = ast.literal_eval(token)
  except (ValueError, SyntaxError) as e:
    raise ValueError(f'{path}:{lineno}: bad string literal {token!r}') from e
  if not isinstance(value, str):
    raise ValueError(f'{path}:{lineno}: expected a quoted string')
  return value


def parse_po(path: str, stats: PoStats | None = None) -> list[PoEntry]:
  """Translated, reviewed entries of one `.po` file, in file order."""
  stats = stats if stats is not None else PoStats()
  entries: list[PoEntry] = []
  fields: dict[str, str] = {}
  current: str | None = None
  fuzzy = False
  start = 0

  def flush():
    nonlocal fields, current, fuzzy
    if 'msgid' in fields:
      msgid = fields['msgid']
      singular = fields.get('msgstr', fields.get('msgstr[0]', ''))
      if msgid:
        stats.entries += 1
        if fuzzy:
          stats.fuzzy += 1
        elif not singular:
          stats.untranslated += 1
        else:
          ctx = fields.get('msgctxt')
          entries.append(PoEntry(msgid, singular, ctx, start))
          plural_src = fields.get('msgid_plural')
          plural_tgt = fields.get('msgstr[1]')
          if plural_src and plural_tgt:
            entries.append(PoEntry(plural_src, plural_tgt, ctx, start, True))
    fields, current, fuzzy = {}, None, False

  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f'{path}: not UTF-8 ({e})') from e
  for lineno, raw in enumerate(lines, start=1):
    line = raw.strip()
    if not line:
      flush()
      continue
    if line.startswith('#~'):
      stats.obsolete += line.startswith('#~ msgid ')
      continue
    if line.startswith('#'):
      if line.startswith('#,') and 'fuzzy' in line:
        if 'msgid' in fields:
          flush()
        fuzzy = True
      continue
    if line.startswith('"'):
      if current is None:
        raise ValueError(f'{path}:{lineno}: continuation string outside '
                         'an entry')
      fields[current] += _unquote(line, path, lineno)
      continue
    m = _KEYWORD.match(line)
    if not m:
      raise ValueError(f'{path}:{lineno}: not gettext syntax: {raw[:60]!r}')
    key = m.group(1)
    if key in ('msgctxt', 'msgid') and 'msgid' in fields and (
        key == 'msgctxt' or 'msgstr' in fields or 'msgstr[0]' in fields):
      keep_fuzzy = fuzzy if key == 'msgctxt' else False
      flush()
      fuzzy = keep_fuzzy
    if key == 'msgid':
      start = lineno
    fields[key] = _unquote(m.group(3), path, lineno)
    current = key
  flush()
  return entries


def django_locale_root() -> str:
  try:
    import django
  except ImportError as e:
    raise ImportError('Django is not installed; `pip install -c '
                      'constraints.txt django` provides its .po files') from e
  return os.path.dirname(django.__file__)


def language_of(path: str) -> str:
  """'.../locale/pt_BR/LC_MESSAGES/django.po' -> 'pt_BR'."""
  parts = path.split(os.sep)
  try:
    return parts[parts.index('LC_MESSAGES') - 1]
  except ValueError:
    raise ValueError(f'{path}: not under <lang>/LC_MESSAGES/') from None


def django_pairs(languages=None, root: str | None = None,
                 stats: PoStats | None = None
                 ) -> dict[str, list[tuple[str, str]]]:
  """{lang: [(english, translation), ...]} over every Django `.po` file,
  de-duplicated per language, in a deterministic order."""
  root = root or django_locale_root()
  files = sorted(glob.glob(os.path.join(root, '**', 'LC_MESSAGES', '*.po'),
                           recursive=True))
  if not files:
    raise FileNotFoundError(f'{root}: no */LC_MESSAGES/*.po files')
  wanted = None if languages is None else set(languages)
  out: dict[str, dict[tuple[str, str], None]] = collections.defaultdict(dict)
  for path in files:
    lang = language_of(path)
    if wanted is not None and lang not in wanted:
      continue
    for e in parse_po(path, stats):
      out[lang][(e.msgid, e.msgstr)] = None
  return {lang: list(pairs) for lang, pairs in sorted(out.items())}
