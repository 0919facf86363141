"""Retrieval quality: BM25, a Rosetta dual encoder, a sentence-transformers
peer of the same architecture; each dense system with and without hubness
correction.

    python -m benchmarks.retrieval_quality --quick       # ~10 min end to end
    python -m benchmarks.retrieval_quality               # 20 CPU min each
    python -m benchmarks.retrieval_quality --budget-minutes 10 --full \\
        --out runs/retrieval_quality_full

What is compared (the gin file, default
gin/retrieval/dual_encoder_small_cpu.gin, is the single source of both
systems' hyperparameters; `--gin.KEY=VALUE` overrides apply to both):

  data        the pair mixture of retrieval.dense.pair_tasks.setup: Tatoeba
              translation pairs (English -> each language, the NMT hash
              split's train side) and the XQuAD training questions
              (xquad_split == 'train') -> their paragraph in the same language
              and in English, the first of the article's other paragraphs
              as a hard negative; inverse-cloze pairs of the corpora if
              `pair_tasks.setup.ict_corpora` (default none; retrieval/
              ict.py); tasks sampled with rate n^(1/T)
  vocabulary  one SentencePiece model (unigram, byte fallback) trained here
              on a language-balanced sample of that training text; the peer
              reads it through a `tokenizers` conversion of the same model
              (SpmConverter), checked token-for-token against seqio
  model       the same T5.1.1 encoder (gin T5Config), shared towers, mean
              pooling, L2 normalisation; the peer is HF `T5EncoderModel` +
              sentence-transformers Pooling('mean') + Normalize; both start
              from the SAME initial weights (HF's T5 initialisation, loaded
              into Rosetta with `train.init_from_hf`)
  loss        in-batch softmax at the gin temperature: Rosetta's
              `DualEncoderModel` (global batch, bidirectional, duplicates
              masked) vs sentence-transformers' MultipleNegativesRankingLoss
              (scale = 1/temperature, directions query_to_doc + doc_to_query
              averaged when bidirectional, NO_DUPLICATES batches)
  optimizer   AdamW (betas 0.9/0.999, eps 1e-8, no weight decay), the gin
              learning rate with linear warmup then constant, global-norm
              clipping: optax in Rosetta, torch.optim.AdamW in the peer
  time        the same budget of process CPU seconds (`--budget-minutes`,
              CPU minutes), as in benchmarks/nmt_quality.py: both train AT
              THE SAME TIME, one compute thread each (`--threads`), each
              pinned to its own core (Rosetta core 0, the peer core 1;
              `--no-pin` to let them float); time spent waiting for a core
              held by other jobs (or stopped) counts for neither. Rosetta:
              `train.cpu_budget_s`, every thread of its process (XLA,
              tf.data, checkpointing) from its training loop's start, so the
              compile and the pipeline's first batches count, checked every
              `train.log_period` steps; the peer: `BudgetClock` over its
              steps (collate and tokenisation included), checked every step.
              Both report the CPU and wall seconds their loop used.

Rosetta trains through the real trainer (`python -m rosetta train`
with the gin file); the peer in a child process too
(benchmarks/retrieval_peer.py: sentence-transformers' own model, collate,
loss and fit-loop steps; the library's `SentenceTransformerTrainer` needs
the `datasets` and `accelerate` packages, which are not installed here).

Evaluation (benchmarks/retrieval_eval.py, on retrieval.datasets), every
set searched with Rosetta's exact search (retrieval.search.exact) for both dense
systems, plus CSLS (k=10), inverted softmax and DBNorm (beta =
1/temperature) from retrieval.search.hubness:

  FLORES-200  bitext mining, accuracy (= Hits@1) both directions against
              English; a handful of languages (all 29 with --full)
  XQuAD       test questions only (xquad_split == 'test'): same language
              (question lang == paragraph lang), cross-lingual to the
              English paragraphs, and to the pool of 2,880 paragraphs
  Cranfield   225 queries, 1,400 abstracts, graded (nDCG@10)

Long documents (an XQuAD paragraph is a median ~290 pieces, a Cranfield
abstract ~380, the encoders read 96): each dense system indexes every
window of the positives length (stride half of it) and scores a document
by its best window (retrieval.search.passages, MaxP); a '(first window only)' row
per system shows what encoding each document once, truncated, gives
(`--no-passages`: that alone). Training positives of XQuAD are the windows
holding the answers (`pair_tasks.setup.xquad_passage_tokens` in the gin
file), the same text for both systems.

Hubness banks: the query bank is the query set itself for FLORES (as in
mining) and Cranfield, the TRAINING questions of the same language for
XQuAD; DBNorm's gallery bank is up to 500 LASER-Tatoeba sentences in the
corpus language (never a corpus of any evaluation here). Metrics by
pytrec_eval (retrieval.search.ir_metrics): MRR@10, nDCG@10, Recall@k, Hits@k.

Outputs under `--out`: `trec/<system>/<set>.trec` (TREC run files for every
evaluation), `qrels/<set>.qrels`, `retrieval_quality.json` (everything,
atomically), `recall_<family>.json` ({system: {k: recall}}, what
`rosetta plot recall` reads) with its PNG, `table.md`, the trained models
(`rosetta/`, `st/`), the vocabulary and logs.

Outside CI: it measures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time

from benchmarks import retrieval_peer  # benchmarks/retrieval_peer.py (the script's folder)
from benchmarks.retrieval_eval import (DENSE_LABEL, eval_sets, evaluate_all,
                            markdown_table, recall_curves, rosetta_system,
                            st_system, summarise)
from benchmarks.retrieval_peer import write_json
from benchmarks.cpu_budget import cpu_model, one_thread_xla_flags
from benchmarks import hf_t5_peer  # benchmarks/hf_t5_peer.py: pin (numpy only)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The repository root is NOT put on sys.path (the editable install finds
# rosetta / retrieval / translation): gin resolves `include 'runs/...'` by
# first asking importlib for a package 'runs', and a `runs/` directory on
# sys.path (the README's run directories) is a namespace package without a
# file, on which gin 0.5 crashes (TypeError in _parse_config_path). For the
# same reason the children run in the output directory, which has no
# runs/, models/ or architectures/ folder.
DEFAULT_GIN = 'retrieval/dual_encoder_small_cpu.gin'


def parse_args(argv):
  p = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--budget-minutes', type=float, default=None,
                 help='training CPU minutes per dense system (process CPU '
                 'time; default 20, 2.5 with --quick)')
  p.add_argument('--quick', action='store_true',
                 help='short budget, FLORES de/zh, XQuAD en/de/zh/hi')
  p.add_argument('--full', action='store_true',
                 help='every FLORES language (default: a handful)')
  p.add_argument('--out', default='runs/retrieval_quality')
  p.add_argument('--gin_file', default=DEFAULT_GIN)
  p.add_argument('--gin', action='append', default=[], metavar='BINDING',
                 help="extra gin binding for both systems, e.g. "
                 "\"train.batch_size = 32\"")
  p.add_argument('--threads', type=int, default=1,
                 help='compute threads per system (XLA and torch)')
  p.add_argument('--sequential', action='store_true',
                 help='train one system after the other (default: both at '
                 'once, so load hits them alike)')
  p.add_argument('--no-pin', dest='pin', action='store_false',
                 help='do not pin each trainer to its own core (default: '
                 'Rosetta on core 0, the peer on core 1, when both train at '
                 'once with one thread each)')
  p.add_argument('--systems', default='bm25,init,rosetta,st',
                 help='init: the untrained initial weights both dense '
                 'systems start from (no hubness rows)')
  p.add_argument('--reuse', action='store_true',
                 help='reuse trained models / vocabulary found in --out')
  p.add_argument('--no-passages', dest='passages', action='store_false',
                 help='dense systems encode each document once, truncated '
                 'to the positives length (default: every window of that '
                 'length, a document scored by its best; '
                 'retrieval.search.passages)')
  p.add_argument('--vocab-size', type=int, default=8000)
  p.add_argument('--eval-batch-size', type=int, default=64)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  if args.budget_minutes is None:
    args.budget_minutes = 2.5 if args.quick else 20.0
  args.systems = [s.strip() for s in args.systems.split(',') if s.strip()]
  return args


def thread_env(threads: int) -> dict:
  # PYTHONPATH: the peer child runs as `-m benchmarks.retrieval_peer` from
  # the output directory.
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             PYTHONPATH=os.pathsep.join(
                 p for p in (REPO, os.environ.get('PYTHONPATH')) if p),
             OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
             TOKENIZERS_PARALLELISM='false')
  if threads == 1:
    env['XLA_FLAGS'] = one_thread_xla_flags(env.get('XLA_FLAGS', ''))
  return env


# ------------------------------------------------------------- config ---


def read_config(gin_file: str, bindings, vocab_path: str) -> dict:
  """Both systems' hyperparameters, from the gin file (+ bindings)."""
  import gin
  from rosetta import gin_utils
  from rosetta.model.encoder_decoder import T5Config
  from retrieval.dense import dual_encoder_model as dem
  gin.clear_config()
  gin_utils.parse([gin_file], bindings=list(bindings) + [
      f"pair_tasks.setup.vocabulary = '{vocab_path}'"], finalize=False)

  def q(name, default=None):
    try:
      return gin.query_parameter(name)
    except (ValueError, KeyError):
      return default
  model = dem.DualEncoderModel()
  cfg = model.config
  if q('optimizers.make_optimizer.name') != 'adamw':
    raise SystemExit('the peer mirrors AdamW only; the gin file sets '
                     f"{q('optimizers.make_optimizer.name')!r}")
  if q('optimizers.learning_rate_schedule.kind') != 'constant':
    raise SystemExit('the peer mirrors the constant schedule only')
  if cfg.learn_temperature or cfg.projection_dim or not cfg.shared_towers \
      or cfg.pooling != 'mean' or not cfg.l2_normalize or model.mode != 'mask':
    raise SystemExit('the peer mirrors shared towers, mean pooling, L2 '
                     'norm, a fixed temperature, no projection, mode mask')
  conf = dict(
      t5={f: getattr(cfg.encoder, f) for f in (
          'vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
          'num_encoder_layers', 'num_decoder_layers', 'dropout_rate',
          'dtype', 'mlp_activations')},
      temperature=cfg.temperature, bidirectional=model.bidirectional,
      num_negatives=model.num_negatives,
      batch_size=q('train.batch_size'),
      lengths=dict(q('train.task_feature_lengths')),
      lr=q('optimizers.learning_rate_schedule.base'),
      warmup=q('optimizers.learning_rate_schedule.warmup_steps', 0),
      grad_clip=q('optimizers.make_optimizer.grad_clip_norm'),
      weight_decay=q('optimizers.make_optimizer.weight_decay', 0.0),
      mixture=q('train.task'),
      tatoeba_languages=list(q('pair_tasks.setup.tatoeba_languages')),
      xquad_pairs=list(q('pair_tasks.setup.xquad_pairs')),
      mixture_temperature=q('pair_tasks.setup.temperature'),
      ict_corpora=list(q('pair_tasks.setup.ict_corpora', ())))
  conf['t5']['mlp_activations'] = list(conf['t5']['mlp_activations'])
  conf['t5_config'] = T5Config(**{k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in conf['t5'].items()})
  if conf['weight_decay']:
    raise SystemExit('the peer mirrors weight_decay = 0 only')
  return conf


# --------------------------------------------------------- vocabulary ---


def _sentences(text: str) -> list[str]:   # ict's, cut to SPM's length cap
  from retrieval.dense import ict
  out = []
  for s in (text[b:e] for b, e in ict.sentence_spans(text)):
    while len(s) > 1000:                      # SentencePiece's length cap
      cut = s.rfind(' ', 0, 1000)
      cut = cut if cut > 0 else 1000
      out.append(s[:cut])
      s = s[cut:].strip()
    if s.strip():
      out.append(s.strip())
  return out


def training_texts(conf) -> dict[str, list[str]]:
  """The training text by language (what the vocabulary is trained on)."""
  from rosetta.data import corpora as sources
  from retrieval.dense import pair_tasks
  texts: dict[str, list[str]] = {}
  for lang in conf['tatoeba_languages']:
    code = sources.language(lang).code
    for en, x in sources.tatoeba_splits(code)['train']:
      texts.setdefault('en', []).append(en)
      texts.setdefault(code, []).append(x)
  for ql, dl in pair_tasks.parse_pairs(conf['xquad_pairs']):
    for q, pos, negs in pair_tasks.xquad_examples(ql, dl, 'train'):
      texts.setdefault(ql, []).append(q)
      for par in (pos,) + tuple(negs):
        texts.setdefault(dl, []).extend(_sentences(par))
  for corpus in conf['ict_corpora']:          # documents the ICT pairs read
    texts.setdefault(pair_tasks.ict_corpus_language(corpus), []).extend(
        s for d in pair_tasks.corpus_documents(corpus) for s in _sentences(d))
  return texts


def build_vocabulary(conf, path: str, size: int, log) -> None:
  from rosetta import vocab
  texts = training_texts(conf)
  # Balanced over the languages with enough text; the small ones (XQuAD's
  # ro and th have only their paragraphs and questions) are taken whole
  # rather than cutting every language down to their size.
  per = 4000
  big = {l: t for l, t in texts.items() if len(set(t)) >= per}
  sample = vocab.balanced_sample(big, per_language=per, seed=0)
  sample += [t for l, ts in texts.items() if l not in big
             for t in sorted(set(ts))]
  log(f'vocabulary: {len(sample):,} sentences from {len(texts)} languages '
      f'-> {size} pieces')
  vocab.train_sentencepiece(sample, path, vocab_size=size)


# ----------------------------------------------------------- training ---


def st_training_data(conf, path: str, seed: int, size: int = 50_000) -> dict:
  """The mixture as a finite stream for the peer: task i contributes
  round(size * r_i / sum r) examples (its shuffled epochs, cycled), in the
  Rosetta mixture's rates; JSON lines {q, p, n}."""
  import numpy as np
  import seqio
  from rosetta.run import runs
  runs.task_setup()            # registers the gin-bound tasks and mixture
  mix = seqio.get_mixture_or_task(conf['mixture'])
  tasks = list(mix.tasks)
  rates = np.asarray([mix.get_rate(t) for t in tasks], np.float64)
  rng = np.random.default_rng(seed)
  rows, counts = [], {}
  k = conf['num_negatives']
  for task, rate in zip(tasks, rates):
    ex = task.source.pairs('train')
    n = int(round(size * rate / rates.sum()))
    order = np.concatenate([rng.permutation(len(ex))
                            for _ in range(-(-n // len(ex)))])[:n]
    for i in order:
      q, pos, negs = ex[i]
      rows.append({'q': q, 'p': pos, 'n': list(negs[:k])})
    counts[task.name] = n
  rows = [rows[i] for i in rng.permutation(len(rows))]
  with open(path, 'w', encoding='utf-8') as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + '\n')
  return counts


def rosetta_command(args, run_dir: str, vocab_path: str, init_dir: str,
                    budget_s: float) -> list[str]:
  cmd = [sys.executable, '-m', 'rosetta', 'train',
         f'--gin_file={args.gin_file}',
         f"--gin.train.model_dir='{run_dir}'",
         f"--gin.pair_tasks.setup.vocabulary='{vocab_path}'",
         f"--gin.train.init_from_hf='{init_dir}'",
         f'--gin.train.cpu_budget_s={budget_s}',
         f'--gin.train.seed={args.seed}']
  if args.gin:
    cmd.append('--gin_bindings=' + '\n'.join(args.gin))
  return cmd


def run_children(children: dict, sequential: bool, cwd: str, log) -> dict:
  """Runs {name: (cmd, log_path, env)}; per child wall and CPU seconds and
  the load average sampled meanwhile."""
  out, loads, first_steps = {}, [], {}
  names = list(children)
  batches = [[n] for n in names] if sequential else [names]
  for batch in batches:
    procs = {}
    for name in batch:
      cmd, path, env, cpus = children[name]
      log(f'{name}: ' + ' '.join(cmd[1:4]) + ' ...  (core '
          f'{"any" if cpus is None else cpus}; log: {path})')
      f = open(path, 'w')
      pin = (lambda c=cpus: hf_t5_peer.pin(c)) if cpus is not None else None
      procs[name] = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                      env=env, cwd=cwd, preexec_fn=pin), f,
                     time.time())
    while procs:
      time.sleep(5)
      loads.append(os.getloadavg()[0])
      for name in list(procs):
        p, f, t0 = procs[name]
        if name not in first_steps:   # both trainers print 'step 10...'
          with open(children[name][1], errors='replace') as g:
            if re.search(r'^step 10\b', g.read(), re.M):
              first_steps[name] = time.time() - t0
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == 0:
          continue
        f.close()
        p.returncode = os.waitstatus_to_exitcode(status)
        out[name] = dict(returncode=p.returncode, wall_s=time.time() - t0,
                         cpu_s=ru.ru_utime + ru.ru_stime,
                         to_step_10_s=first_steps.get(name))
        log(f'{name}: exit {p.returncode} after {out[name]["wall_s"]:.0f}s '
            f'({out[name]["cpu_s"]:.0f} CPU-s)')
        del procs[name]
  for v in out.values():
    v['load_average_during'] = dict(
        mean=sum(loads) / max(len(loads), 1), min=min(loads, default=0),
        max=max(loads, default=0))
  return out


def rosetta_train_log(run_dir: str) -> dict:
  import numpy as np
  rows = [json.loads(l) for l in open(f'{run_dir}/train_metrics.jsonl')]
  last = rows[-20:]
  return dict(steps=rows[-1]['step'],
              loss_first=float(np.mean([r['loss'] for r in rows[:10]])),
              loss_last=float(np.mean([r['loss'] for r in last])),
              accuracy_last=float(np.mean([r['accuracy'] for r in last])))


DONE_RE = re.compile(r'^done: step (\d+) \(training loop: ([\d.]+) CPU s, '
                     r'([\d.]+) s wall\)', re.M)


def rosetta_loop_clock(log_text: str) -> dict:
  """Rosetta's training-loop CPU and wall seconds (train's last line)."""
  m = DONE_RE.search(log_text)
  if m is None:
    raise ValueError('no "done: step N (training loop: ...)" line')
  return dict(train_cpu_s=float(m.group(2)), train_wall_s=float(m.group(3)))


def training_table(training: dict) -> str:
  """Markdown: the budget each dense system got and what it did with it.
  CPU s / wall s: its training loop's (what the budget counts); process:
  the whole child process (imports, data loading and saving included)."""
  out = ['| system | CPU budget s | CPU s | wall s | CPU s per wall s | '
         'steps | examples | examples per CPU s | loss first 10 / last 20 '
         '| process CPU s / wall s |',
         '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for key, r in sorted(training.items(), key=lambda kv: kv[0] != 'rosetta'):
    out.append(
        f"| {DENSE_LABEL.get(key, key)} | {r['budget_s']:.0f} | "
        f"{r['train_cpu_s']:.1f} | {r['train_wall_s']:.0f} | "
        f"{r['train_cpu_s'] / max(r['train_wall_s'], 1e-9):.2f} | "
        f"{r['steps']:,} | {r['examples']:,} | "
        f"{r['examples'] / max(r['train_cpu_s'], 1e-9):.1f} | "
        f"{r['loss_first']:.2f} / {r['loss_last']:.2f} | "
        f"{r['cpu_s']:.0f} / {r['wall_s']:.0f} |")
  return '\n'.join(out)


# --------------------------------------------------------------- main ---


def main(argv=None) -> int:
  args = parse_args(argv)
  os.environ.update({k: v for k, v in thread_env(args.threads).items()
                     if k in ('JAX_PLATFORMS', 'TF_CPP_MIN_LOG_LEVEL',
                              'XLA_FLAGS', 'TOKENIZERS_PARALLELISM')})
  started = time.time()

  def log(msg):
    print(f'[{time.time() - started:6.0f}s] {msg}', flush=True)
  out = os.path.abspath(args.out)
  os.makedirs(os.path.join(out, 'logs'), exist_ok=True)
  load_start = os.getloadavg()
  log(f'load average {load_start[0]:.1f} / {load_start[1]:.1f} / '
      f'{load_start[2]:.1f} on {os.cpu_count()} cores ({cpu_model()})')
  spm_path = os.path.join(out, 'vocab', 'spm.model')
  conf = read_config(args.gin_file, args.gin, spm_path)
  if conf['t5']['vocab_size'] < args.vocab_size:
    raise SystemExit(f"--vocab-size {args.vocab_size} exceeds the model's "
                     f"{conf['t5']['vocab_size']} rows")
  if not (args.reuse and os.path.exists(spm_path)):
    build_vocabulary(conf, spm_path, args.vocab_size, log)
  tok_dir = os.path.join(out, 'vocab', 'hf_tokenizer')
  tok = retrieval_peer.build_hf_tokenizer(spm_path, tok_dir)
  init_dir = os.path.join(out, 'init')
  if not (args.reuse and os.path.exists(os.path.join(init_dir,
                                                     'config.json'))):
    retrieval_peer.build_init(conf['t5_config'], init_dir, args.seed)
  import torch
  torch.set_num_threads(args.threads)
  t5 = conf['t5']
  log(f"model: T5.1.1 encoder d={t5['emb_dim']} x {t5['num_encoder_layers']}"
      f" layers, {t5['num_heads']} heads x {t5['head_dim']}, ff "
      f"{t5['mlp_dim']}, vocab {t5['vocab_size']}; batch "
      f"{conf['batch_size']}, lengths {conf['lengths']}, temperature "
      f"{conf['temperature']}, {conf['num_negatives']} hard negative(s), lr "
      f"{conf['lr']} (warmup {conf['warmup']}), budget "
      f'{args.budget_minutes} CPU min, {args.threads} thread(s) each')
  st_data = os.path.join(out, 'st_train.jsonl')
  counts = st_training_data(conf, st_data, args.seed)
  budget_s = args.budget_minutes * 60
  children, training = {}, {}
  env = thread_env(args.threads)
  run_dir = os.path.join(out, 'rosetta')
  st_dir = os.path.join(out, 'st')
  for key, path in (('rosetta', run_dir), ('st', st_dir)):
    done = os.path.join(path, 'train_result.json')
    if key not in args.systems:
      continue
    if args.reuse and os.path.exists(done):
      with open(done) as f:
        training[key] = json.load(f)
      log(f'{key}: reusing the trained model in {path}')
      continue
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    if key == 'rosetta':
      cmd = rosetta_command(args, path, spm_path, init_dir, budget_s)
    else:
      cfg_path = os.path.join(path, 'config.json')
      write_json(cfg_path, dict(
          threads=args.threads, seed=args.seed, init_dir=init_dir,
          tok_dir=tok_dir, data=st_data, out_dir=path,
          cpu_budget_s=budget_s,
          max_seq_length=conf['lengths']['positives'],
          batch_size=conf['batch_size'], lr=conf['lr'],
          warmup=conf['warmup'], grad_clip=conf['grad_clip'],
          temperature=conf['temperature'],
          bidirectional=conf['bidirectional'],
          num_negatives=conf['num_negatives']))
      cmd = [sys.executable, '-m', 'benchmarks.retrieval_peer', cfg_path]
    children[key] = [cmd, os.path.join(out, 'logs', f'{key}_train.log'),
                     env, None]
  cores = sorted(os.sched_getaffinity(0))
  if (args.pin and not args.sequential and args.threads == 1
      and len(children) == 2 and len(cores) >= 2):
    for (key, child), core in zip(sorted(children.items()), cores):
      child[3] = core            # one core each: the same hardware
  for key, res in run_children(children, args.sequential, out, log).items():
    if res['returncode'] != 0:
      raise SystemExit(f'{key} training failed; see '
                       f'{children[key][1]}')
    path = run_dir if key == 'rosetta' else st_dir
    if key == 'rosetta':
      res.update(rosetta_train_log(path))
      with open(children[key][1], errors='replace') as f:
        res.update(rosetta_loop_clock(f.read()))
      res['examples'] = res['steps'] * conf['batch_size']
    else:
      with open(os.path.join(path, 'train_log.json')) as f:
        st_log = json.load(f)
      res.update({k: st_log[k] for k in ('steps', 'examples', 'loss_first',
                                         'loss_last')})
      res.update(train_cpu_s=st_log['train_cpu_s'],
                 train_wall_s=st_log['loop_s'])
    res['budget_s'] = budget_s
    write_json(os.path.join(path, 'train_result.json'), res)
    training[key] = res
  for key, res in training.items():
    log(f"{key}: {res['steps']} steps ({res['examples']:,} examples) in "
        f"{res['train_cpu_s']:.1f} CPU s, {res['train_wall_s']:.0f} s wall "
        f"(process: {res['cpu_s']:.0f} CPU s, {res['wall_s']:.0f} s wall)")

  log('evaluation sets ...')
  sets = eval_sets(args)
  sample = sorted({t for _, rs, _, _ in sets.values()
                   for t in rs.docs[:200] + rs.queries[:200]})
  parity = retrieval_peer.tokenizer_parity(spm_path, tok, sample)
  log(f"tokenizers: {parity['different']} of {parity['texts']} evaluation "
      'texts tokenized differently by the peer')
  max_len = conf['lengths']['positives']
  systems = {}
  if 'bm25' in args.systems:
    systems['bm25'] = None
  step = None
  if 'init' in args.systems:
    systems['init'] = st_system(init_dir, max_len, args.eval_batch_size,
                                tok_dir=tok_dir, key='init')
  if 'rosetta' in args.systems:
    systems['rosetta'], step = rosetta_system(run_dir, max_len,
                                              args.eval_batch_size)
  if 'st' in args.systems:
    systems['st'] = st_system(os.path.join(st_dir, 'model'), max_len,
                              args.eval_batch_size)
  metrics, skew = evaluate_all(
      systems, sets, out, 1.0 / conf['temperature'], log,
      passage_vocab=spm_path, passage_tokens=max_len - 1 if args.passages
      else None)   # the encoders append EOS: max_len - 1 pieces + EOS
  summary = summarise(metrics, sets)
  text = markdown_table(summary)
  if training:
    text += '\n\n' + training_table(training)
  files = recall_curves(summary, out)
  load_end = os.getloadavg()
  import jax
  import sentence_transformers
  import transformers
  meta = dict(
      date=str(datetime.date.today()), cpu=cpu_model(), cores=os.cpu_count(),
      load_average_start=load_start, load_average_end=load_end,
      command=' '.join([os.path.relpath(__file__, REPO)] + list(
          argv if argv is not None else sys.argv[1:])),
      jax=jax.__version__, torch=torch.__version__,
      transformers=transformers.__version__,
      sentence_transformers=sentence_transformers.__version__,
      pinned_cores={k: c[3] for k, c in children.items()
                    if c[3] is not None},
      args=vars(args),
      config={k: v for k, v in conf.items() if k != 't5_config'},
      rosetta_step=step, mixture_counts_for_peer=counts,
      tokenizer_parity=parity, total_s=time.time() - started)
  encode = {k: dict(texts=s.encoded, seconds=s.encode_s)
            for k, s in systems.items() if s is not None}
  write_json(os.path.join(out, 'retrieval_quality.json'), dict(
      meta=meta, training=training, encoding=encode, summary=summary,
      metrics=metrics, k_occurrence_skewness_at_10=skew,
      sets={n: dict(family=f, queries=len(rs.queries), docs=len(rs.docs),
                    query_bank=len(qb), corpus_language=cl)
            for n, (f, rs, qb, cl) in sets.items()},
      recall_files={f: list(v) for f, v in files.items()}))
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(text + '\n')
  print('\n' + text + '\n')
  for key, res in training.items():
    wall = res['train_wall_s']
    print(f"{DENSE_LABEL[key]}: {res['steps']} steps, {res['examples']:,} "
          f"examples in {res['train_cpu_s']:.1f} CPU s ({wall:.0f} s wall) "
          f"for a {res['budget_s']:.0f} CPU s budget; load average during "
          f"training {res['load_average_during']['mean']:.1f}")
  print(f'load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} '
        f'at the end; {time.time() - started:.0f}s in all; results in {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
