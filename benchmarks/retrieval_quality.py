"""Retrieval quality: BM25, a Rosetta dual encoder, a sentence-transformers
peer of the same architecture; each dense system with and without hubness
correction.

    python benchmarks/retrieval_quality.py --quick       # ~10 min end to end
    python benchmarks/retrieval_quality.py               # 20 min per system
    python benchmarks/retrieval_quality.py --budget-minutes 10 --full \\
        --out runs/retrieval_quality_full

What is compared (the gin file, default
gin/retrieval/dual_encoder_small_cpu.gin, is the single source of both
systems' hyperparameters; `--gin.KEY=VALUE` overrides apply to both):

  data        the pair mixture of retrieval.pair_tasks.setup: Tatoeba
              translation pairs (English -> each language, the NMT hash
              split's train side) and the XQuAD training questions
              (xquad_split == 'train') -> their paragraph in the same language
              and in English, the first of the article's other paragraphs
              as a hard negative; tasks sampled with rate n^(1/T)
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
              clipping: optax in Rosetta, torch through the HF Trainer
  time        the same wall-clock budget (`--budget-minutes`) on this CPU,
              both trainings running AT THE SAME TIME with `--threads`
              threads each, so machine load hits both alike; each trainer's
              own clock (Rosetta: `train.time_budget_s`, which includes
              building the seqio pipeline and compiling; the peer: from
              the HF Trainer's train begin)

Rosetta trains through the real trainer (`python -m rosetta.main train`
with the gin file); the peer through `SentenceTransformerTrainer` in a
child process (this file with `--_st_train`).

Evaluation (retrieval.datasets), every set searched with Rosetta's exact
search (retrieval.search) for both dense systems, plus CSLS (k=10),
inverted softmax and DBNorm (beta = 1/temperature) from retrieval.hubness:

  FLORES-200  bitext mining, accuracy (= Hits@1) both directions against
              English; a handful of languages (all 29 with --full)
  XQuAD       test questions only (xquad_split == 'test'): same language
              (question lang == paragraph lang), cross-lingual to the
              English paragraphs, and to the pool of 2,880 paragraphs
  Cranfield   225 queries, 1,400 abstracts, graded (nDCG@10)

Hubness banks: the query bank is the query set itself for FLORES (as in
mining) and Cranfield, the TRAINING questions of the same language for
XQuAD; DBNorm's gallery bank is up to 500 LASER-Tatoeba sentences in the
corpus language (never a corpus of any evaluation here). Metrics by
pytrec_eval (retrieval.ir_metrics): MRR@10, nDCG@10, Recall@k, Hits@k.

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
import platform
import re
import resource
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The repository root is NOT put on sys.path (the editable install finds
# rosetta / retrieval / translation): gin resolves `include 'runs/...'` by
# first asking importlib for a package 'runs', and a `runs/` directory on
# sys.path (the README's run directories) is a namespace package without a
# file, on which gin 0.5 crashes (TypeError in _parse_config_path). For the
# same reason the children run in the output directory, which has no
# runs/, models/ or architectures/ folder.
DEFAULT_GIN = 'retrieval/dual_encoder_small_cpu.gin'
FLORES_DEFAULT = ('deu_Latn', 'fra_Latn', 'rus_Cyrl', 'zho_Hans', 'arb_Arab',
                  'hin_Deva')
FLORES_QUICK = ('deu_Latn', 'zho_Hans')
XQUAD_QUICK = ('en', 'de', 'zh', 'hi')
KS = (1, 5, 10, 20, 50, 100)
CORRECTIONS = (None, 'csls', 'inverted_softmax', 'dbnorm')
CORRECTION_LABEL = {None: '', 'csls': ' + CSLS',
                    'inverted_softmax': ' + inverted softmax',
                    'dbnorm': ' + DBNorm'}
DENSE_LABEL = {'init': 'untrained (the shared initial weights)',
               'rosetta': 'Rosetta', 'st': 'sentence-transformers'}
FAMILIES = {  # family -> (title, headline metric)
    'flores_x2en': ('FLORES x->en acc', 'Hits@1'),
    'flores_en2x': ('FLORES en->x acc', 'Hits@1'),
    'xquad_same': ('XQuAD same-lang MRR@10', 'MRR@10'),
    'xquad_en': ('XQuAD x->en MRR@10', 'MRR@10'),
    'xquad_pool': ('XQuAD x->pool MRR@10', 'MRR@10'),
    'cranfield': ('Cranfield nDCG@10', 'nDCG@10'),
}
LASER_CODES = {'zh': 'cmn', 'ro': 'ron', 'sw': 'swh', 'ar': 'ara'}
GALLERY_SIZE = 500


def parse_args(argv):
  p = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--budget-minutes', type=float, default=None,
                 help='training wall-clock per dense system (default 20; '
                 '2.5 with --quick)')
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
  p.add_argument('--systems', default='bm25,init,rosetta,st',
                 help='init: the untrained initial weights both dense '
                 'systems start from (no hubness rows)')
  p.add_argument('--reuse', action='store_true',
                 help='reuse trained models / vocabulary found in --out')
  p.add_argument('--vocab-size', type=int, default=8000)
  p.add_argument('--eval-batch-size', type=int, default=64)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--_st_train', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.budget_minutes is None:
    args.budget_minutes = 2.5 if args.quick else 20.0
  args.systems = [s.strip() for s in args.systems.split(',') if s.strip()]
  return args


def thread_env(threads: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
             TOKENIZERS_PARALLELISM='false')
  if threads == 1:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_'
                        'eigen=false intra_op_parallelism_threads=1').strip()
  return env


def write_json(path: str, payload) -> None:
  from retrieval.indexing import atomic_write
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  text = json.dumps(payload, indent=1, ensure_ascii=False)
  atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


# ------------------------------------------------------------- config ---


def read_config(gin_file: str, bindings, vocab_path: str) -> dict:
  """Both systems' hyperparameters, from the gin file (+ bindings)."""
  import gin
  from rosetta import gin_utils
  from rosetta.encoder_decoder import T5Config
  from retrieval import dual_encoder_model as dem
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
      mixture_temperature=q('pair_tasks.setup.temperature'))
  conf['t5']['mlp_activations'] = list(conf['t5']['mlp_activations'])
  conf['t5_config'] = T5Config(**{k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in conf['t5'].items()})
  if conf['weight_decay']:
    raise SystemExit('the peer mirrors weight_decay = 0 only')
  return conf


# --------------------------------------------------------- vocabulary ---


def _sentences(text: str) -> list[str]:
  out = []
  for s in re.split(r'(?<=[.!?\u0964\u061f])\s+|(?<=[\u3002\uff01\uff1f])',
                    text):
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
  from translation import sources
  from retrieval import pair_tasks
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


def build_hf_tokenizer(spm_path: str, out_dir: str):
  """The same SentencePiece model as a `tokenizers` tokenizer (+ EOS)."""
  from tokenizers import processors
  from transformers import PreTrainedTokenizerFast
  from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf
  proto = import_protobuf().ModelProto()
  with open(spm_path, 'rb') as f:
    proto.ParseFromString(f.read())
  tk = SpmConverter.build_tokenizer_from_spm_proto(
      proto, [(p.piece, p.score) for p in proto.pieces])
  tk.post_processor = processors.TemplateProcessing(
      single=['$A', '</s>'], special_tokens=[('</s>', 1)])
  tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token='</s>',
                                pad_token='<pad>', unk_token='<unk>',
                                model_max_length=1 << 20)
  tok.save_pretrained(out_dir)
  return tok


def tokenizer_parity(spm_path: str, tok, texts) -> dict:
  """How many texts the two tokenizers encode differently."""
  import seqio
  v = seqio.SentencePieceVocabulary(spm_path)
  bad = [t for t in texts
         if list(v.encode(t)) + [1] != tok(t)['input_ids']]
  return {'texts': len(texts), 'different': len(bad),
          'examples': [t[:80] for t in bad[:3]]}


def build_init(conf, out_dir: str, seed: int) -> int:
  """HF T5EncoderModel with HF's T5 initialisation: both systems' start."""
  import torch
  import transformers
  from rosetta.checkpoint_import import config_to_hf
  hf = config_to_hf(conf['t5_config'])
  hf['architectures'] = ['T5EncoderModel']
  torch.manual_seed(seed)
  model = transformers.T5EncoderModel(transformers.T5Config(**hf))
  model.save_pretrained(out_dir)
  return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------- training ---


def st_training_data(conf, path: str, seed: int, size: int = 50_000) -> dict:
  """The mixture as a finite stream for the peer: task i contributes
  round(size * r_i / sum r) examples (its shuffled epochs, cycled), in the
  Rosetta mixture's rates; JSON lines {q, p, n}."""
  import numpy as np
  import seqio
  from rosetta import runs
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
  cmd = [sys.executable, '-m', 'rosetta.main', 'train',
         f'--gin_file={args.gin_file}',
         f"--gin.train.model_dir='{run_dir}'",
         f"--gin.pair_tasks.setup.vocabulary='{vocab_path}'",
         f"--gin.train.init_from_hf='{init_dir}'",
         f'--gin.train.time_budget_s={budget_s}',
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
      cmd, path, env = children[name]
      log(f'{name}: ' + ' '.join(cmd[1:4]) + ' ...  (log: ' + path + ')')
      f = open(path, 'w')
      procs[name] = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                      env=env, cwd=cwd), f, time.time())
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


def no_duplicate_batches(rows, batch_size: int, rng):
  """Endless batches of `rows` (reshuffled every epoch) in which no text
  appears twice (sentence-transformers' NO_DUPLICATES batch sampler: an
  example that repeats a text of the batch waits for the next batch)."""
  import collections
  while True:
    pending = collections.deque(rows[i] for i in rng.permutation(len(rows)))
    while len(pending) >= batch_size:
      batch, seen, deferred = [], set(), []
      while pending and len(batch) < batch_size:
        r = pending.popleft()
        texts = [r['q'], r['p']] + r['n']
        if seen.intersection(texts):
          deferred.append(r)
        else:
          batch.append(r)
          seen.update(texts)
      pending.extendleft(reversed(deferred))
      if len(batch) < batch_size:
        break
      yield batch


def st_train_child(config_path: str) -> int:
  """The peer's training (a child process: its own threads and clock).

  sentence-transformers 6.2's `SentenceTransformerTrainer` needs the
  `datasets` and `accelerate` packages, which this environment does not
  have; this is the library's own pre-v3 `fit` loop (`old_fit`: its
  `smart_batching_collate`, the loss module, torch AdamW, its
  'warmupconstant' scheduler, `clip_grad_norm_`) with a wall-clock stop,
  NO_DUPLICATES batches and, when hard negatives are on, PROPORTIONAL
  sampling between the pairs-only and the triples dataset (one source per
  batch, as the library's trainer does)."""
  with open(config_path) as f:
    c = json.load(f)
  import numpy as np
  import torch
  torch.set_num_threads(c['threads'])
  from sentence_transformers import InputExample, SentenceTransformer
  from sentence_transformers.sentence_transformer import losses, modules
  torch.manual_seed(c['seed'])
  tr = modules.Transformer(c['init_dir'], tokenizer_name_or_path=c['tok_dir'],
                           max_seq_length=c['max_seq_length'])
  model = SentenceTransformer(modules=[
      tr, modules.Pooling(tr.get_embedding_dimension(), 'mean'),
      modules.Normalize()], device='cpu')
  rows = [json.loads(l) for l in open(c['data'], encoding='utf-8')]
  k = c['num_negatives']
  triples = [dict(r, n=r['n'][:k]) for r in rows if k and len(r['n']) >= k]
  pairs = [dict(r, n=[]) for r in rows if not k or len(r['n']) < k]
  sources = [s for s in (pairs, triples) if s]
  sizes = np.asarray([len(s) for s in sources], np.float64)
  rng = np.random.default_rng(c['seed'])
  streams = [no_duplicate_batches(s, c['batch_size'], rng) for s in sources]
  loss = losses.MultipleNegativesRankingLoss(
      model, scale=1.0 / c['temperature'],
      directions=(('query_to_doc', 'doc_to_query') if c['bidirectional']
                  else ('query_to_doc',)),
      partition_mode='per_direction')
  opt = torch.optim.AdamW(model.parameters(), lr=c['lr'], betas=(0.9, 0.999),
                          eps=1e-8, weight_decay=0.0)
  sched = SentenceTransformer._get_scheduler(  # pylint: disable=protected-access
      opt, 'warmupconstant', warmup_steps=c['warmup'], t_total=0)
  model.train()
  hist, step, start = [], 0, time.time()
  while time.time() - start < c['budget_s']:
    batch = next(streams[rng.choice(len(streams), p=sizes / sizes.sum())])
    features, labels = model.smart_batching_collate(
        [InputExample(texts=[r['q'], r['p']] + r['n']) for r in batch])
    value = loss(features, labels)
    value.backward()
    if c['grad_clip']:
      torch.nn.utils.clip_grad_norm_(model.parameters(), c['grad_clip'])
    opt.step()
    opt.zero_grad()
    sched.step()
    step += 1
    hist.append(float(value))
    if step % 10 == 0:
      print(f'step {step} loss {np.mean(hist[-10:]):.4f} '
            f'{step / (time.time() - start):.2f} steps/s', flush=True)
  loop_s = time.time() - start
  model.save(os.path.join(c['out_dir'], 'model'))
  write_json(os.path.join(c['out_dir'], 'train_log.json'), dict(
      steps=step, loop_s=loop_s, examples=step * c['batch_size'],
      source_rows=[len(s) for s in sources],
      loss_first=float(np.mean(hist[:10])),
      loss_last=float(np.mean(hist[-20:])), loss=hist))
  return 0


def rosetta_train_log(run_dir: str) -> dict:
  import numpy as np
  rows = [json.loads(l) for l in open(os.path.join(run_dir,
                                                   'train_metrics.jsonl'))]
  last = rows[-20:]
  return dict(steps=rows[-1]['step'],
              loss_first=float(np.mean([r['loss'] for r in rows[:10]])),
              loss_last=float(np.mean([r['loss'] for r in last])),
              accuracy_last=float(np.mean([r['accuracy'] for r in last])))


# --------------------------------------------------------- evaluation ---


def eval_sets(args) -> dict:
  """{name: (family, RetrievalSet, query-bank texts, corpus language)}."""
  from retrieval import datasets
  from translation import sources
  flores = (datasets.flores_languages() if args.full
            else FLORES_QUICK if args.quick else FLORES_DEFAULT)
  flores = [l for l in flores if l != datasets.FLORES_PIVOT]
  xq = XQUAD_QUICK if args.quick else datasets.XQUAD_LANGUAGES
  out = {}
  for lang in flores:
    code = sources.language(lang).code
    for src, tgt, fam, corpus_lang in (
        (lang, datasets.FLORES_PIVOT, 'flores_x2en', 'en'),
        (datasets.FLORES_PIVOT, lang, 'flores_en2x', code)):
      rs = datasets.flores_mining(src, tgt)
      out[f'flores_{src}-{tgt}'] = (fam, rs, rs.queries, corpus_lang)
  for lang in xq:
    bank = datasets.xquad(lang, corpus=lang, split='train').queries
    out[f'xquad_{lang}-{lang}'] = (
        'xquad_same', datasets.xquad(lang, corpus=lang, split='test'), bank,
        lang)
    if lang != 'en':
      out[f'xquad_{lang}-en'] = (
          'xquad_en', datasets.xquad(lang, corpus='en', split='test'), bank,
          'en')
    out[f'xquad_{lang}-pool'] = (
        'xquad_pool', datasets.xquad(lang, corpus='pool', split='test'), bank,
        'pool')
  cran = datasets.cranfield()
  out['cranfield'] = ('cranfield', cran, cran.queries, 'en')
  return out


def gallery_bank(lang: str) -> tuple[str, ...]:
  """Up to GALLERY_SIZE LASER-Tatoeba sentences in `lang` (DBNorm's gallery:
  text in the corpus language that is in no corpus here); 'pool' or a
  language LASER lacks: an even mix of the XQuAD languages."""
  from rosetta import data
  from retrieval import datasets
  from translation import sources
  root = os.path.join(data.data_dir(), 'laser_tatoeba', 'data', 'tatoeba',
                      'v1')

  def read(code2, n):
    if code2 == 'en':
      path = os.path.join(root, 'tatoeba.deu-eng.eng')
    else:
      try:
        code3 = LASER_CODES.get(code2) or sources.language(code2).iso3
      except ValueError:
        return ()
      path = os.path.join(root, f'tatoeba.{code3}-eng.{code3}')
    if not os.path.exists(path):
      return ()
    with open(path, encoding='utf-8') as f:
      lines = [l.strip() for l in f if l.strip()]
    return tuple(lines[:n])
  own = () if lang == 'pool' else read(lang, GALLERY_SIZE)
  if own:
    return own
  per = GALLERY_SIZE // len(datasets.XQUAD_LANGUAGES) + 1
  return tuple(s for l in datasets.XQUAD_LANGUAGES for s in read(l, per))


class DenseSystem:
  """Encodes texts (cached) with a trained dual encoder."""

  def __init__(self, name: str, encode_fns: dict):
    self.name, self._fns, self._cache = name, encode_fns, {}
    self.encode_s, self.encoded = 0.0, 0

  def embed(self, texts, tower: str):
    key = (tower, texts)
    if key not in self._cache:
      t = time.time()
      self._cache[key] = self._fns[tower](list(texts))
      self.encode_s += time.time() - t
      self.encoded += len(texts)
    return self._cache[key]


def rosetta_system(run_dir: str, max_length: int, batch_size: int):
  import gin
  import jax
  import seqio
  from rosetta import gin_utils, partitioning, runs
  from retrieval import dual_encoder_model as dem
  gin.clear_config()
  gin_utils.parse([os.path.join(run_dir, 'config.gin')], finalize=False)
  model = dem.DualEncoderModel()
  vocab = seqio.SentencePieceVocabulary(
      gin.query_parameter('pair_tasks.setup.vocabulary'))
  mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
  _, state, step = runs._restore_for_inference(  # pylint: disable=protected-access
      run_dir, model, mesh)
  fns = {t: dem.make_encode_fn(model, state, vocab, max_length, batch_size,
                               mesh, t) for t in ('query', 'doc')}
  return DenseSystem('rosetta', fns), step


def st_system(model_dir: str, max_length: int, batch_size: int,
              tok_dir: str | None = None, key: str = 'st'):
  """A saved sentence-transformers model, or (with `tok_dir`) a bare HF
  encoder directory + mean pooling + Normalize (the untrained init)."""
  from sentence_transformers import SentenceTransformer
  if tok_dir is None:
    model = SentenceTransformer(model_dir, device='cpu')
  else:
    from sentence_transformers.sentence_transformer import modules
    tr = modules.Transformer(model_dir, tokenizer_name_or_path=tok_dir)
    model = SentenceTransformer(modules=[
        tr, modules.Pooling(tr.get_embedding_dimension(), 'mean'),
        modules.Normalize()], device='cpu')
  model.max_seq_length = max_length

  def fn(texts):
    return model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                        show_progress_bar=False).astype('float32')
  return DenseSystem(key, {'query': fn, 'doc': fn})


def correction_for(kind, corpus, qbank, gbank, beta):
  from retrieval import hubness
  if kind == 'csls':
    return hubness.csls(corpus, qbank, k=10)
  if kind == 'inverted_softmax':
    return hubness.inverted_softmax(corpus, qbank, beta=beta)
  return hubness.dbnorm(corpus, qbank, gbank, beta1=beta, beta2=beta)


def evaluate_all(systems: dict, sets: dict, out_dir: str, beta: float, log):
  """{system label: {set name: metrics}}; writes TREC runs and qrels."""
  import logging
  from retrieval import bm25, hubness, ir_metrics, search
  logging.getLogger('bm25s').setLevel(logging.WARNING)
  metrics, skew = {}, {}
  for name, (fam, rs, qbank, corpus_lang) in sets.items():
    ir_metrics.write_qrels(os.path.join(out_dir, 'qrels', f'{name}.qrels'),
                           rs.qrels)
    k = min(max(KS), len(rs.docs))
    results = {}
    if 'bm25' in systems:
      lang = None if corpus_lang == 'pool' else corpus_lang
      results['BM25'] = bm25.BM25Index(rs.docs, lang=lang).search(
          rs.queries, k)
    for key, sysm in systems.items():
      if key == 'bm25':
        continue
      docs = sysm.embed(rs.docs, 'doc')
      corpus = search.shard_corpus(docs)
      q = sysm.embed(rs.queries, 'query')
      for kind in (CORRECTIONS if key != 'init' else (None,)):
        corr = None
        if kind:
          gb = (sysm.embed(gallery_bank(corpus_lang), 'doc')
                if kind == 'dbnorm' else None)
          corr = correction_for(kind, corpus, sysm.embed(qbank, 'query'), gb,
                                beta)
        res = search.search(corpus, q, k, correction=corr)
        label = DENSE_LABEL[key] + CORRECTION_LABEL[kind]
        results[label] = res
        skew.setdefault(label, {})[name] = hubness.skewness(
            hubness.k_occurrence(res.indices, len(rs.docs), 10))
    for label, res in results.items():
      run = ir_metrics.run_from_topk(res.indices, rs.query_ids, rs.doc_ids)
      slug = re.sub(r'[^a-z0-9]+', '_', label.lower()).strip('_')
      ir_metrics.write_run(os.path.join(out_dir, 'trec', slug,
                                        f'{name}.trec'), run, tag=slug)
      metrics.setdefault(label, {})[name] = ir_metrics.evaluate(
          run, rs.qrels, ks=[x for x in KS if x <= len(rs.docs)])
    best = max(results, key=lambda l: metrics[l][name][FAMILIES[fam][1]])
    log(f'{name:28s} ({len(rs.queries)} q x {len(rs.docs)} docs) best: '
        f'{best} {FAMILIES[fam][1]} '
        f'{metrics[best][name][FAMILIES[fam][1]]:.3f}')
  return metrics, skew


def summarise(metrics: dict, sets: dict) -> dict:
  """{system: {family: {metric: mean over the family's sets}}}."""
  import numpy as np
  out = {}
  for label, per_set in metrics.items():
    for fam in FAMILIES:
      names = [n for n, s in sets.items() if s[0] == fam]
      if not names:
        continue
      keys = per_set[names[0]].keys()
      out.setdefault(label, {})[fam] = {
          m: float(np.mean([per_set[n][m] for n in names])) for m in keys}
  return out


def markdown_table(summary: dict) -> str:
  fams = [f for f in FAMILIES if any(f in v for v in summary.values())]
  head = '| system | ' + ' | '.join(FAMILIES[f][0] for f in fams) + ' |'
  rule = '|---|' + '---:|' * len(fams)
  rows = [head, rule]
  for label, per in summary.items():
    rows.append(f'| {label} | ' + ' | '.join(
        f'{per[f][FAMILIES[f][1]]:.3f}' if f in per else '' for f in fams)
        + ' |')
  return '\n'.join(rows)


def recall_curves(summary: dict, out_dir: str) -> dict:
  """recall_<family>.json ({system: {k: recall}}) + PNG per family."""
  from rosetta import main as rosetta_main
  plots = rosetta_main._plots_module()  # pylint: disable=protected-access
  files = {}
  for fam in FAMILIES:
    curves = {label: {str(k): per[fam][f'Recall@{k}'] for k in KS
                      if f'Recall@{k}' in per.get(fam, {})}
              for label, per in summary.items() if fam in per}
    if not curves:
      continue
    path = os.path.join(out_dir, f'recall_{fam}.json')
    write_json(path, curves)
    files[fam] = (path, plots.recall_curves(path).path)
  return files


# --------------------------------------------------------------- main ---


def main(argv=None) -> int:
  args = parse_args(argv)
  if args._st_train:
    return st_train_child(args._st_train)
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
    raise SystemExit(f'--vocab-size {args.vocab_size} exceeds the model\'s '
                     f'{conf["t5"]["vocab_size"]} rows')
  if not (args.reuse and os.path.exists(spm_path)):
    build_vocabulary(conf, spm_path, args.vocab_size, log)
  tok_dir = os.path.join(out, 'vocab', 'hf_tokenizer')
  tok = build_hf_tokenizer(spm_path, tok_dir)
  init_dir = os.path.join(out, 'init')
  if not (args.reuse and os.path.exists(os.path.join(init_dir,
                                                     'config.json'))):
    build_init(conf, init_dir, args.seed)
  import torch
  torch.set_num_threads(args.threads)
  t5 = conf['t5']
  log(f"model: T5.1.1 encoder d={t5['emb_dim']} x {t5['num_encoder_layers']}"
      f" layers, {t5['num_heads']} heads x {t5['head_dim']}, ff "
      f"{t5['mlp_dim']}, vocab {t5['vocab_size']}; batch "
      f"{conf['batch_size']}, lengths {conf['lengths']}, temperature "
      f"{conf['temperature']}, {conf['num_negatives']} hard negative(s), lr "
      f"{conf['lr']} (warmup {conf['warmup']}), budget "
      f'{args.budget_minutes} min, {args.threads} thread(s) each')
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
          tok_dir=tok_dir, data=st_data, out_dir=path, budget_s=budget_s,
          max_seq_length=conf['lengths']['positives'],
          batch_size=conf['batch_size'], lr=conf['lr'],
          warmup=conf['warmup'], grad_clip=conf['grad_clip'],
          temperature=conf['temperature'],
          bidirectional=conf['bidirectional'],
          num_negatives=conf['num_negatives']))
      cmd = [sys.executable, os.path.abspath(__file__), '--_st_train',
             cfg_path]
    children[key] = (cmd, os.path.join(out, 'logs', f'{key}_train.log'), env)
  for key, res in run_children(children, args.sequential, out, log).items():
    if res['returncode'] != 0:
      raise SystemExit(f'{key} training failed; see '
                       f'{children[key][1]}')
    path = run_dir if key == 'rosetta' else st_dir
    if key == 'rosetta':
      res.update(rosetta_train_log(path))
      res['examples'] = res['steps'] * conf['batch_size']
    else:
      with open(os.path.join(path, 'train_log.json')) as f:
        st_log = json.load(f)
      res.update({k: st_log[k] for k in ('steps', 'examples', 'loop_s',
                                         'loss_first', 'loss_last')})
    res['budget_s'] = budget_s
    write_json(os.path.join(path, 'train_result.json'), res)
    training[key] = res
  for key, res in training.items():
    log(f"{key}: {res['steps']} steps ({res['examples']:,} examples) in "
        f"{res['wall_s']:.0f}s wall, {res['cpu_s']:.0f} CPU-s")

  log('evaluation sets ...')
  sets = eval_sets(args)
  sample = sorted({t for _, rs, _, _ in sets.values()
                   for t in rs.docs[:200] + rs.queries[:200]})
  parity = tokenizer_parity(spm_path, tok, sample)
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
  metrics, skew = evaluate_all(systems, sets, out, 1.0 / conf['temperature'],
                               log)
  summary = summarise(metrics, sets)
  text = markdown_table(summary)
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
      args={k: v for k, v in vars(args).items() if k != '_st_train'},
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
    print(f"{DENSE_LABEL[key]}: {res['steps']} steps, {res['examples']:,} "
          f"examples, {res['wall_s']:.0f}s wall ({res['cpu_s']:.0f} CPU-s) "
          f"for a {res['budget_s']:.0f}s budget; load average during "
          f"training {res['load_average_during']['mean']:.1f}")
  print(f'load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} '
        f'at the end; {time.time() - started:.0f}s in all; results in {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
