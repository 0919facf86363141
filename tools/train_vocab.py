"""Train a multilingual SentencePiece vocabulary with <2xx> language tokens.

    python tools/train_vocab.py --corpus tatoeba --languages de,fr,es \\
        --vocab_size 8000 --output /tmp/vocab/spm.model

Text: the TRAIN split of each language (English always included: every
corpus here pairs with it), the same number of distinct sentences per
language (`--sentences_per_language`, capped by the smallest language),
chosen by a seeded hash: the same command gives the same file. Reserved
pieces: pad=0, eos=1, unk=2, then `<2xx>` for every language in
`--token_languages` (default: all of rosetta.data.corpora.LANGUAGES, so a
later zero-shot or new direction needs no new vocabulary). Writes
`spm.model` and `spm.vocab` (the piece list).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


# pylint: disable=g-import-not-at-top
from rosetta import vocab  # noqa: E402
from rosetta.data import corpora as sources  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--corpus', required=True,
                 choices=['tatoeba', 'django', 'multi30k'])
  p.add_argument('--languages', required=True,
                 help='comma-separated codes, e.g. de,fr,es (English added)')
  p.add_argument('--vocab_size', type=int, required=True)
  p.add_argument('--output', required=True, help='path of spm.model')
  p.add_argument('--sentences_per_language', type=int, default=100_000)
  p.add_argument('--token_languages', default='all',
                 help="languages that get a <2xx> token: 'all' or a list")
  p.add_argument('--character_coverage', type=float, default=0.9995)
  p.add_argument('--model_type', default='unigram',
                 choices=['unigram', 'bpe'])
  p.add_argument('--normalization', default='identity',
                 help="SentencePiece normalization_rule_name; 'nmt_nfkc' as "
                 "in T5/mT5 (see rosetta.vocab.train_sentencepiece)")
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--data_dir', default=None,
                 help='corpus folder (default: rosetta.data.pipeline.data_dir())')
  args = p.parse_args(argv)

  langs = sorted({sources.language(l).code
                  for l in args.languages.split(',') if l.strip()} | {'en'})
  if args.token_languages == 'all':
    token_langs = [l.code for l in sources.LANGUAGES]
  else:
    token_langs = [sources.language(l).code
                   for l in args.token_languages.split(',') if l.strip()]
  missing = sorted(set(langs) - set(token_langs))
  if missing:
    p.error(f'--token_languages lacks {missing}, which the vocabulary is '
            f'trained on')
  root = None
  if args.data_dir:
    sub = {'tatoeba': 'tatoeba_v2021',
           'multi30k': 'multi30k/data/task1/raw'}.get(args.corpus, '')
    root = os.path.join(args.data_dir, sub)
  start = time.time()
  texts = sources.training_texts(args.corpus, langs, root=root)
  sample = vocab.balanced_sample(
      texts, per_language=args.sentences_per_language, seed=args.seed)
  vocab.train_sentencepiece(
      sample, args.output, vocab_size=args.vocab_size,
      language_tokens=token_langs, model_type=args.model_type,
      character_coverage=args.character_coverage,
      normalization=args.normalization)
  per_lang = len(sample) // len(langs)
  print(f'{args.output}: {args.vocab_size} pieces from {per_lang} sentences '
        f'x {len(langs)} languages ({",".join(langs)}); '
        f'{len(token_langs)} language tokens; {time.time() - start:.1f}s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
