"""The language table: one row per language, every code system it goes by.

Languages are named by ISO 639-1 codes ('de') everywhere (task names,
`<2de>` tokens); `language()` maps ISO 639-3, FLORES and Django codes to one
`Language` row of `LANGUAGES`::

    language('deu').code == 'de';  language('de').flores == 'deu_Latn'
    language('arb_Arab').code == 'ar';  language('zh').django == 'zh_Hans'
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Language:
  code: str                 # ISO 639-1: task names, <2xx> tokens
  iso3: str                 # ISO 639-3 (Tatoeba Challenge file names)
  flores: str | None        # FLORES-200 file stem
  django: str | None        # Django locale directory
  name: str


# One table for every code system. Arabic: Tatoeba uses the macrolanguage
# 'ara', FLORES Standard Arabic 'arb'; Swahili likewise 'swa' / 'swh'.
LANGUAGES: tuple[Language, ...] = tuple(Language(*row) for row in [
    ('en', 'eng', 'eng_Latn', None, 'English'),
    ('ar', 'ara', 'arb_Arab', 'ar', 'Arabic'),
    ('bn', 'ben', 'ben_Beng', 'bn', 'Bengali'),
    ('cs', 'ces', 'ces_Latn', 'cs', 'Czech'),
    ('de', 'deu', 'deu_Latn', 'de', 'German'),
    ('el', 'ell', 'ell_Grek', 'el', 'Greek'),
    ('es', 'spa', 'spa_Latn', 'es', 'Spanish'),
    ('fi', 'fin', 'fin_Latn', 'fi', 'Finnish'),
    ('fr', 'fra', 'fra_Latn', 'fr', 'French'),
    ('he', 'heb', 'heb_Hebr', 'he', 'Hebrew'),
    ('hi', 'hin', 'hin_Deva', 'hi', 'Hindi'),
    ('id', 'ind', 'ind_Latn', 'id', 'Indonesian'),
    ('it', 'ita', 'ita_Latn', 'it', 'Italian'),
    ('ja', 'jpn', 'jpn_Jpan', 'ja', 'Japanese'),
    ('kk', 'kaz', 'kaz_Cyrl', 'kk', 'Kazakh'),
    ('ko', 'kor', 'kor_Hang', 'ko', 'Korean'),
    ('ky', 'kir', 'kir_Cyrl', 'ky', 'Kyrgyz'),
    ('nl', 'nld', 'nld_Latn', 'nl', 'Dutch'),
    ('pl', 'pol', 'pol_Latn', 'pl', 'Polish'),
    ('pt', 'por', 'por_Latn', 'pt', 'Portuguese'),
    ('ru', 'rus', 'rus_Cyrl', 'ru', 'Russian'),
    ('sv', 'swe', 'swe_Latn', 'sv', 'Swedish'),
    ('sw', 'swa', 'swh_Latn', 'sw', 'Swahili'),
    ('th', 'tha', 'tha_Thai', 'th', 'Thai'),
    ('tr', 'tur', 'tur_Latn', 'tr', 'Turkish'),
    ('ug', 'uig', 'uig_Arab', 'ug', 'Uyghur'),
    ('uk', 'ukr', 'ukr_Cyrl', 'uk', 'Ukrainian'),
    ('vi', 'vie', 'vie_Latn', 'vi', 'Vietnamese'),
    ('yo', 'yor', 'yor_Latn', None, 'Yoruba'),
    ('zh', 'zho', 'zho_Hans', 'zh_Hans', 'Chinese'),
])

_BY_ANY_CODE: dict[str, Language] = {}
for _l in LANGUAGES:
  for _c in (_l.code, _l.iso3, _l.flores, _l.flores and _l.flores[:3],
             _l.django):
    if _c:
      _BY_ANY_CODE.setdefault(_c.lower(), _l)


def language(code: str) -> Language:
  """The row for an ISO 639-1/639-3, FLORES or Django code (any case)."""
  try:
    return _BY_ANY_CODE[code.lower()]
  except KeyError:
    raise ValueError(
        f'unknown language code {code!r}; known: '
        f'{", ".join(l.code for l in LANGUAGES)} (or their ISO 639-3 / '
        f'FLORES codes; add a row to rosetta.data.languages.LANGUAGES)'
    ) from None
