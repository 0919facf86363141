"""The .po reader on hand-written files and on Django's real ones."""

import pytest

from rosetta.data import django_po

GOOD = r'''# header comment
msgid ""
msgstr ""
"Language: fr\n"

#: forms.py:10
msgid "Save"
msgstr "Enregistrer"

msgctxt "month name"
msgid "May"
msgstr "Mai"

#, fuzzy
msgid "Unreviewed"
msgstr "Pas relu"

msgid "Empty"
msgstr ""

msgid ""
"Two "
"lines with \"quotes\"\n"
msgstr "Deux lignes avec \"guillemets\"\n"

msgid "%(n)s item"
msgid_plural "%(n)s items"
msgstr[0] "%(n)s élément"
msgstr[1] "%(n)s éléments"

#~ msgid "Old"
#~ msgstr "Vieux"
'''


def test_parse_po(tmp_path):
  path = tmp_path / 'django.po'
  path.write_text(GOOD, encoding='utf-8')
  stats = django_po.PoStats()
  entries = django_po.parse_po(str(path), stats)
  pairs = [(e.msgid, e.msgstr) for e in entries]
  assert pairs == [
      ('Save', 'Enregistrer'),
      ('May', 'Mai'),
      ('Two lines with "quotes"\n', 'Deux lignes avec "guillemets"\n'),
      ('%(n)s item', '%(n)s élément'),
      ('%(n)s items', '%(n)s éléments'),
  ]
  assert entries[1].msgctxt == 'month name'
  assert entries[0].line == 7
  assert (stats.fuzzy, stats.untranslated, stats.obsolete) == (1, 1, 1)


def test_malformed_po_names_file_and_line(tmp_path):
  path = tmp_path / 'bad.po'
  path.write_text('msgid "a"\nmsgstr "b"\n\nmsgid "c"\nmsgstr oops\n')
  with pytest.raises(ValueError, match=r'bad.po:5: not gettext syntax'):
    django_po.parse_po(str(path))
  path.write_text('"orphan continuation"\n')
  with pytest.raises(ValueError, match=r'bad.po:1: continuation'):
    django_po.parse_po(str(path))
  path.write_bytes(b'msgid "\xff"\nmsgstr "x"\n')
  with pytest.raises(ValueError, match='bad.po: not UTF-8'):
    django_po.parse_po(str(path))


def test_real_django_files():
  stats = django_po.PoStats()
  pairs = django_po.django_pairs(['fr', 'de', 'ja'], stats=stats)
  assert set(pairs) == {'fr', 'de', 'ja'}
  assert all(len(v) > 500 for v in pairs.values())
  fr = dict(pairs['fr'])
  assert fr['Arabic'] == 'Arabe'
  assert stats.entries > sum(len(v) for v in pairs.values()) // 2
  assert django_po.language_of('/x/locale/pt_BR/LC_MESSAGES/django.po') == (
      'pt_BR')
