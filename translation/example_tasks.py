"""Small byte-level translation tasks on real text, registered at import,
for smoke runs and trainer tests (no vocabulary to train):

  django_translate_en_fr_bytes    Django .po strings (any machine)
  multi30k_translate_en_de_bytes  Multi30k captions, when the data is there

They are ordinary `translation.tasks` tasks (target tag `<2xx> ` as text,
BLEU / chrF / off-target metrics) with seqio's ByteVocabulary.
"""

import seqio

from translation import tasks
from rosetta.data import corpora as sources

_BYTES = seqio.ByteVocabulary()

REGISTERED = tasks.register_translation_tasks(_BYTES, 'django', [('en', 'fr')],
                                              suffix='_bytes')
if sources.available('multi30k'):
  REGISTERED += tasks.register_translation_tasks(
      _BYTES, 'multi30k', [('en', 'de')], suffix='_bytes')
