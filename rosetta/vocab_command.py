"""train a multilingual SentencePiece vocabulary (<2xx> tokens reserved)

    rosetta vocab --corpus tatoeba --languages de,fr,es --vocab_size 8000 \\
        --output runs/vocab/spm.model
    rosetta vocab --files en=data/train.en.gz de='data/train.*.de' \\
        --vocab_size 8000 --output runs/vocab/spm.model
    rosetta vocab --gin_file my_corpus.gin --corpus gin --languages de,fr \\
        --vocab_size 8000 --output runs/vocab/spm.model
    rosetta vocab --gin_file experiments/tiny_multi30k_en_de.gin \\
        --task multi30k_translate_en_de --vocab_size 500 --output v.model

Text comes from one of:
  --corpus NAME   a built-in corpus (tatoeba, django, multi30k) or `gin`:
                  the `parallel_corpus.ParallelCorpus` your gin files bind
                  (English-centric pairs with --languages; English added)
  --files L=PAT   plain text, one sentence per line (.gz read as gzip), per
                  language; several patterns per language allowed
  --task NAME     a task or mixture registered by the gin files: the raw
                  text of every string feature of its source, each (task,
                  feature) balanced like a language
The same number of distinct sentences per group (`--sentences_per_language`,
capped by the smallest group) is chosen by a seeded hash: the same command
gives the same file. Reserved pieces: pad=0, eos=1, unk=2, then `<2xx>` for
every language in `--token_languages` (default: all of Rosetta's language
table, so a later zero-shot or new direction needs no new vocabulary).
Writes `NAME.model` and `NAME.vocab` (the piece list).
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

from rosetta import vocab
from rosetta.data import bad_input
from rosetta.data import corpora
from rosetta.data import parallel_corpus
from rosetta.data import record_files
from rosetta.data.languages import LANGUAGES, language

# Lines read per group before sampling: the first ones of the files.
_MAX_LINES_PER_GROUP = 2_000_000


def file_texts(specs: list[str]) -> dict[str, list[str]]:
  """{'en': [...], ...} from ['en=pattern', ...] (lines, UTF-8 checked)."""
  out: dict[str, list[str]] = {}
  for spec in specs:
    lang, sep, pattern = spec.partition('=')
    if not sep or not lang or not pattern:
      raise ValueError(f'--files {spec!r}: expected LANG=PATTERN')
    lang = language(lang).code
    texts = out.setdefault(lang, [])
    for path in record_files.expand(pattern, f'--files {spec}'):
      with record_files.open_text(path) as f:
        for n, raw in enumerate(itertools.islice(f, _MAX_LINES_PER_GROUP), 1):
          line = bad_input.decode(path, n, raw.rstrip(b'\n').rstrip(b'\r'))
          if line.strip():
            texts.append(line)
  return out


def task_texts(name: str, split: str) -> dict[str, list[str]]:
  """{'task:feature': texts} of every string feature of the task's (or
  each sub-task's) source."""
  import seqio  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  provider = seqio.get_mixture_or_task(name)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [
      provider]
  out: dict[str, list[str]] = {}
  for task in tasks:
    ds = task.source.get_dataset(split=split, shuffle=False)
    keys = [k for k, spec in ds.element_spec.items()
            if spec.dtype == tf.string and spec.shape.rank == 0]
    if not keys:
      raise ValueError(f'task {task.name}: its source has no string feature')
    for ex in record_files.rows(ds.take(_MAX_LINES_PER_GROUP)):
      for k in keys:
        out.setdefault(f'{task.name}:{k}', []).append(ex[k].decode('utf-8'))
  return out


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog='rosetta vocab', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument('--corpus', help="tatoeba | django | multi30k | gin")
  src.add_argument('--files', nargs='+', metavar='LANG=PATTERN')
  src.add_argument('--task', help='a registered task or mixture')
  p.add_argument('--languages', default='',
                 help='with --corpus: comma-separated codes, e.g. de,fr,es')
  p.add_argument('--gin_file', action='append', default=[],
                 help='gin files that register tasks or bind ParallelCorpus')
  p.add_argument('--gin', dest='gin_bindings', action='append', default=[],
                 help='a gin binding, e.g. "ParallelCorpus.name = \'x\'"')
  p.add_argument('--split', default='train')
  p.add_argument('--vocab_size', type=int, required=True)
  p.add_argument('--output', required=True, help='path of NAME.model')
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
                 help='folder of the built-in corpora (default: '
                 '$ROSETTA_DATA_DIR or ../shared/data)')
  args = p.parse_args(argv)
  if args.vocab_size <= 0:
    p.error(f'--vocab_size {args.vocab_size}: must be positive')
  if args.corpus and not args.languages:
    p.error('--corpus needs --languages, e.g. --languages de,fr')
  if args.task and not args.gin_file:
    p.error('--task needs the --gin_file that registers it')
  return p, args


def main(argv=None) -> int:
  p, args = parse_args(argv)
  if args.token_languages == 'all':
    token_langs = [l.code for l in LANGUAGES]
  else:
    token_langs = [language(l).code
                   for l in args.token_languages.split(',') if l.strip()]
  if args.gin_file or args.gin_bindings:
    from rosetta import gin_utils  # pylint: disable=import-outside-toplevel
    from rosetta.run import run_dir  # pylint: disable=import-outside-toplevel
    gin_utils.parse(args.gin_file, args.gin_bindings)
    if args.task:
      run_dir.task_setup()
  start = time.time()
  try:
    if args.files:
      texts = file_texts(args.files)
    elif args.task:
      texts = task_texts(args.task, args.split)
    else:
      texts = corpus_texts(p, args)
  except (bad_input.BadInputError, FileNotFoundError) as e:
    p.exit(1, f'rosetta vocab: {e}\n')
  langs = [k for k in texts if k in {l.code for l in LANGUAGES}]
  missing = sorted(set(langs) - set(token_langs))
  if missing:
    p.error(f'--token_languages lacks {missing}, which the vocabulary is '
            f'trained on')
  sample = vocab.balanced_sample(
      texts, per_language=args.sentences_per_language, seed=args.seed)
  vocab.train_sentencepiece(
      sample, args.output, vocab_size=args.vocab_size,
      language_tokens=token_langs, model_type=args.model_type,
      character_coverage=args.character_coverage,
      normalization=args.normalization)
  per_group = len(sample) // len(texts)
  print(f'{args.output}: {args.vocab_size} pieces from {per_group} sentences'
        f' x {len(texts)} groups ({", ".join(sorted(texts))}); '
        f'{len(token_langs)} language tokens; {time.time() - start:.1f}s')
  return 0


def corpus_texts(p: argparse.ArgumentParser, args) -> dict[str, list[str]]:
  langs = sorted({language(l).code for l in args.languages.split(',')
                  if l.strip()} | {'en'})
  if args.corpus == 'gin':
    corpus = parallel_corpus.ParallelCorpus()
    root = None
  elif args.corpus in ('tatoeba', 'django', 'multi30k'):
    corpus = args.corpus
    root = None
    if args.data_dir:
      sub = {'tatoeba': 'tatoeba_v2021',
             'multi30k': 'multi30k/data/task1/raw'}.get(args.corpus, '')
      root = os.path.join(args.data_dir, sub)
  else:
    p.error(f'--corpus {args.corpus!r}: tatoeba, django, multi30k or gin')
  return corpora.training_texts(corpus, langs, root=root,
                                max_pairs=_MAX_LINES_PER_GROUP)
