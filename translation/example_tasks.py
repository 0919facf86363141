"""Small real seq2seq tasks with a byte vocabulary (no SentencePiece model
needed), for smoke runs and trainer tests:

  django_en_fr_bytes    English -> French UI strings from Django's .po files
                        (any machine); 90/10 train/validation by a stable
                        hash of the English string.
  multi30k_en_de_bytes  Multi30k image captions, English -> German
                        (train / validation = val / test = test_2016_flickr),
                        registered when the data directory has Multi30k.

Metrics: sacreBLEU BLEU and chrF on the decoded strings.
"""

from __future__ import annotations

import hashlib
import os

import sacrebleu
import seqio

from rosetta import data
from translation import django_po


def bleu_chrf(targets, predictions):
  """seqio metric fn: corpus BLEU and chrF (sacreBLEU defaults)."""
  refs = [list(targets)]
  return {'bleu': sacrebleu.corpus_bleu(list(predictions), refs).score,
          'chrf': sacrebleu.corpus_chrf(list(predictions), refs).score}


def stable_bucket(text: str, buckets: int = 100) -> int:
  return int(hashlib.sha256(text.encode('utf-8')).hexdigest(), 16) % buckets


def _django_splits(lang: str):
  pairs = django_po.django_pairs([lang])[lang]
  train = [p for p in pairs if stable_bucket(p[0]) >= 10]
  val = [p for p in pairs if stable_bucket(p[0]) < 10]
  return {'train': train, 'validation': val}


def register(replace: bool = True) -> list[str]:
  vocab = seqio.ByteVocabulary()
  names = []
  splits = _django_splits('fr')
  data.register_text_pair_task(
      'django_en_fr_bytes',
      data.pairs_source(splits, 'Django .po en->fr'), vocab,
      metric_fns=[bleu_chrf], replace=replace)
  names.append('django_en_fr_bytes')
  root = os.path.join(data.data_dir(), 'multi30k', 'data', 'task1', 'raw')
  if os.path.exists(os.path.join(root, 'train.en.gz')):
    files = {'train': 'train', 'validation': 'val', 'test': 'test_2016_flickr'}
    data.register_text_pair_task(
        'multi30k_en_de_bytes',
        data.parallel_text_source({
            split: (os.path.join(root, f'{stem}.en.gz'),
                    os.path.join(root, f'{stem}.de.gz'))
            for split, stem in files.items()}),
        vocab, metric_fns=[bleu_chrf], replace=replace)
    names.append('multi30k_en_de_bytes')
  return names


REGISTERED = register()
