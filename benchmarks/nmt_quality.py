"""Translation quality against training time: Rosetta vs HF transformers.

Both systems train the same multilingual T5.1.1 (the model of
gin/experiments/nmt_cpu_small.gin unless `--gin` overrides it) on the same
Tatoeba directions English <-> each of `--languages`, with:

  data        the same seqio mixture (temperature T=5 over directions, the
              target-language token <2xx> prepended as an id, EOS appended)
              from translation.nmt.setup; the same SentencePiece vocabulary
              (trained on a language-balanced sample of the train splits)
  objective   token cross-entropy, mean over target tokens; no label
              smoothing, no z-loss, dropout as configured
  optimizer   the experiment's: AdamW (betas 0.9/0.999, eps 1e-8, no
              weight decay) or Adafactor (parameter-scaled updates, decay
              0.8, update clipping 1), no gradient clipping, its learning
              rate with linear warmup then constant (optax in Rosetta; torch
              AdamW / transformers' Adafactor in the peer)
  precision   parameters float32; bfloat16 activations in Rosetta if the
              experiment says so, torch bfloat16 autocast in the peer then
  batches     Rosetta: `batch_size` packed rows of `length` tokens (seqio
              packing); the peer (no packing in HF T5): length-bucketed
              batches padded to their longest, with the same number of
              padded positions per step (benchmarks/hf_t5_peer.py)
  time        the same wall-clock budget on the same CPU, interleaved in
              chunks (`--chunk_s`) so machine load hits both alike;
              Rosetta's compile time counts against its budget
  decoding    greedy by default (or `--beam N`, HF length penalty in both,
              which give identical outputs on identical weights)

Each system's parameters are snapshotted when its training clock passes
each budget mark (`--budgets 15,30,60,120` minutes: one run gives the whole
curve), and every snapshot is evaluated afterwards on held-out Tatoeba (the
hash-split test side, never trained on) and FLORES-200 devtest (the test
slice, not the validation documents), xx->en and en->xx per language, with
sacreBLEU BLEU / chrF (translation.metrics). One table is printed
(direction x budget, both systems, chrF ratio Rosetta/peer) and the results
are written to `--output` (JSON, atomically).

    python benchmarks/nmt_quality.py --quick          # ~5 min smoke test
    python benchmarks/nmt_quality.py                  # 15/30/60/120 min each
    python benchmarks/nmt_quality.py --languages de,fr --budgets 5,10 \\
        --gin 'encoder_decoder.T5Config.num_encoder_layers = 4'

Outside CI: it measures, it asserts nothing. The full default run trains
each system for 120 minutes (4 hours in all) plus evaluation; run it on a
quiet machine (the 'cores busy' column shows what each system really got).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SYSTEMS = ('rosetta', 'peer')
LABEL = {'rosetta': 'Rosetta', 'peer': 'HF'}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--languages', default='de,fr,es,ru',
                 help='paired with English, both directions')
  p.add_argument('--budgets', default='15,30,60,120',
                 help='training minutes per system at which to evaluate')
  p.add_argument('--quick', action='store_true',
                 help='smoke test: budgets 0.5,1 min, 8 sentences per '
                 'direction and corpus, short decodes')
  p.add_argument('--experiment', default='experiments/nmt_cpu_small.gin')
  p.add_argument('--gin', action='append', default=[], metavar='BINDING',
                 help="override, e.g. 'train.batch_size = 64' (both systems)")
  p.add_argument('--systems', default='rosetta,peer')
  p.add_argument('--eval_sentences', type=int, default=200,
                 help='per direction and corpus (hash-chosen, fixed)')
  p.add_argument('--beam', type=int, default=1, help='1 = greedy')
  p.add_argument('--alpha', type=float, default=1.0,
                 help='HF length penalty for beams (both systems)')
  p.add_argument('--max_decode', default='64,128',
                 help='max new tokens: Tatoeba,FLORES')
  p.add_argument('--chunk_s', type=float, default=60.0,
                 help='seconds one system trains before the other takes over')
  p.add_argument('--peer_init', choices=('hf', 'rosetta'), default='hf',
                 help="peer's initial weights: its own init, or Rosetta's")
  p.add_argument('--threads', type=int, default=os.cpu_count(),
                 help='torch threads (XLA uses all cores)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--workdir', default='runs/nmt_quality',
                 help='vocabulary and results go here')
  p.add_argument('--output', default=None,
                 help='JSON results (default: WORKDIR/results.json)')
  args = p.parse_args(argv)
  if args.quick:
    args.budgets, args.eval_sentences, args.chunk_s = '0.5,1', 8, 15.0
    args.max_decode = '24,32'
  args.budget_s = sorted(60.0 * float(b) for b in args.budgets.split(','))
  args.max_tatoeba, args.max_flores = (int(x) for x in
                                       args.max_decode.split(','))
  args.languages = [l.strip() for l in args.languages.split(',') if l.strip()]
  args.systems = [s.strip() for s in args.systems.split(',')]
  bad = set(args.systems) - set(SYSTEMS)
  if bad or not args.systems:
    p.error(f'--systems: {sorted(bad)} not in {SYSTEMS}')
  args.output = args.output or os.path.join(args.workdir, 'results.json')
  return args


# ---------------------------------------------------------------- setup ---
def load_config(args):
  """The experiment's model, batch, lengths and learning rate (gin)."""
  import gin
  from rosetta import gin_utils
  from rosetta.encoder_decoder import T5Config
  gin_utils.parse([args.experiment], args.gin, finalize=False)
  q = gin.query_parameter
  optimizer = q('optimizers.make_optimizer.name')
  if optimizer not in ('adamw', 'adafactor'):
    raise ValueError(f'{args.experiment}: optimizer {optimizer!r}; the peer '
                     'has adamw and adafactor')
  if q('optimizers.learning_rate_schedule.kind') != 'constant':
    raise ValueError('both systems use warmup + constant learning rate')
  return dict(model=T5Config(), batch_size=q('train.batch_size'),
              optimizer=optimizer,
              lengths=dict(q('train.task_feature_lengths')),
              lr=q('optimizers.learning_rate_schedule.base'),
              warmup=q('optimizers.learning_rate_schedule.warmup_steps'),
              vocab_size=q('nmt.setup.vocab_size'))


def eval_sets(languages, n):
  """{(corpus, 'src-tgt'): [(source, reference)]}, n hash-chosen pairs each
  (the files are sorted; a prefix would be biased)."""
  from translation import sources
  out = {}
  for lang in languages:
    for src, tgt in (('en', lang), (lang, 'en')):
      for corpus, pairs in (
          ('tatoeba', sources.direction_splits('tatoeba', src, tgt)()['test']),
          ('flores', sources.flores_splits(src, tgt)['test'])):
        chosen = sorted(pairs, key=lambda p: sources.hash_unit(p[0]))[:n]
        out[(corpus, f'{src}-{tgt}')] = chosen
  return out


class RosettaSystem:
  """Rosetta's Trainer and InputPipeline (packed seqio batches)."""

  def __init__(self, cfg, setup, conf, seed):
    from rosetta import data, models, optimizers, partitioning, trainer
    import jax
    sched = optimizers.learning_rate_schedule('constant', conf['lr'],
                                              conf['warmup'])
    self.wrapper = models.EncoderDecoderModel(cfg, z_loss=0.0,
                                              label_smoothing=0.0)
    part = partitioning.Partitioner(partitioning.make_mesh(
        data=1, devices=jax.devices()[:1]))
    self.trainer = trainer.Trainer(
        self.wrapper, part, optimizers.make_optimizer(
            conf['optimizer'], sched, grad_clip_norm=None, weight_decay=0.0,
            b1=0.9, b2=0.999, adafactor_decay_rate=0.8,
            adafactor_clipping_threshold=1.0, adafactor_momentum=None),
        sched, seed=seed)
    self.state = self.trainer.init_state()
    self.pipeline = data.InputPipeline(
        setup.mixture, split='train', task_feature_lengths=conf['lengths'],
        global_batch_size=conf['batch_size'], partitioner=part, seed=seed)
    self.num_params = int(sum(x.size for x in
                              jax.tree.leaves(self.state['params'])))
    self.vocabulary = setup.vocabulary

  def initial_hf_weights(self) -> dict:
    from rosetta import checkpoint_import
    import jax
    return checkpoint_import.rosetta_to_hf(
        self.trainer.network(jax.device_get(self.state['params'])))

  def step(self) -> tuple[float, int]:
    import jax
    self.state, m = self.trainer.train_step(self.state, next(self.pipeline))
    m = jax.device_get(m)   # blocks: the clock sees the finished step
    return float(m['loss']), int(m['num_tokens'])

  def snapshot(self):
    import jax
    return jax.device_get(self.state['params'])

  def translator(self, params, step):
    import jax
    from translation import translate
    params = jax.device_put(params, self.trainer.param_shardings)
    return translate.Translator.from_params(self.trainer, self.wrapper,
                                            params, self.vocabulary, step)


class PeerSystem:
  """HF transformers T5.1.1 on length-bucketed batches of the same mixture."""

  def __init__(self, cfg, setup, conf, seed, threads, init_from=None):
    import seqio
    import hf_t5_peer
    self.peer = hf_t5_peer.HFPeer(cfg, lr=conf['lr'],
                                  warmup_steps=conf['warmup'],
                                  optimizer=conf['optimizer'],
                                  threads=threads, seed=seed,
                                  init_from=init_from)
    ds = seqio.get_mixture_or_task(setup.mixture).get_dataset(
        conf['lengths'], split='train', shuffle=True, seed=seed,
        num_epochs=None)
    examples = ({'inputs': e['inputs'], 'targets': e['targets']}
                for e in ds.as_numpy_iterator())
    max_tokens = conf['batch_size'] * max(conf['lengths'].values())
    self.batches = hf_t5_peer.token_batches(examples, max_tokens, seed=seed)
    self.num_params = self.peer.num_params
    self.vocabulary = setup.vocabulary

  def step(self) -> tuple[float, int]:
    batch = next(self.batches)
    return self.peer.train_step(batch), batch.target_tokens

  def snapshot(self):
    return self.peer.snapshot()

  def translator(self, params, step):
    self.peer.load(params)
    return self


# ------------------------------------------------------------- training ---
def train(systems, args, log):
  """Interleaved training; returns {system: [snapshot record per budget]}."""
  clock = {k: 0.0 for k in systems}
  cpu = {k: 0.0 for k in systems}
  steps = {k: 0 for k in systems}
  tokens = {k: 0 for k in systems}
  recent = {k: [] for k in systems}
  snaps = {k: [] for k in systems}
  end = args.budget_s[-1]
  while any(clock[k] < end for k in systems):
    for k, system in systems.items():
      if clock[k] >= end:
        continue
      chunk_start = time.perf_counter()
      c0 = time.process_time()
      while clock[k] < end and time.perf_counter() - chunk_start < args.chunk_s:
        t = time.perf_counter()
        loss, n = system.step()
        clock[k] += time.perf_counter() - t
        steps[k] += 1
        tokens[k] += n
        recent[k] = (recent[k] + [loss])[-50:]
        mark = args.budget_s[len(snaps[k])] if len(snaps[k]) < len(
            args.budget_s) else None
        if mark is not None and clock[k] >= mark:
          snaps[k].append(dict(
              budget_min=mark / 60, step=steps[k], train_s=clock[k],
              target_tokens=tokens[k], loss=sum(recent[k]) / len(recent[k]),
              params=system.snapshot()))
          log(f'{LABEL[k]}: {mark / 60:g} min mark at step {steps[k]}, '
              f'loss {snaps[k][-1]["loss"]:.3f}')
      cpu[k] += time.process_time() - c0
    log('clock ' + ', '.join(f'{LABEL[k]} {clock[k]:.0f}s/{steps[k]} steps'
                             for k in systems)
        + f'; load {os.getloadavg()[0]:.1f}')
  for k in systems:
    for s in snaps[k]:
      s['cpu_s_per_train_s'] = cpu[k] / clock[k]   # whole run: cores busy
  return snaps


# ----------------------------------------------------------- evaluation ---
def evaluate(systems, snaps, sets, args, log):
  from translation import metrics
  rows = []
  for k, system in systems.items():
    for snap in snaps[k]:
      tr = system.translator(snap['params'], snap['step'])
      t0 = time.time()
      for (corpus, direction), pairs in sets.items():
        tgt = direction.split('-')[1]
        max_len = args.max_tatoeba if corpus == 'tatoeba' else args.max_flores
        src = [s for s, _ in pairs]
        if k == 'rosetta':
          hyps = tr.translate(src, tgt, beam_size=args.beam,
                              alpha=args.alpha, length_penalty='hf',
                              max_length=max_len)
        else:
          hyps = tr.peer.translate(src, tgt, system.vocabulary,
                                   beam_size=args.beam, alpha=args.alpha,
                                   max_length=max_len)
        s = metrics.corpus_scores(hyps, [r for _, r in pairs], tgt)
        rows.append(dict(system=k, budget_min=snap['budget_min'],
                         corpus=corpus, direction=direction, n=len(pairs),
                         chrf=s['chrf'], bleu=s['bleu'],
                         sample=hyps[0]))
      log(f'evaluated {LABEL[k]} at {snap["budget_min"]:g} min '
          f'({time.time() - t0:.0f}s)')
  return rows


def groups(direction, corpus):
  src, tgt = direction.split('-')
  kind = 'xx->en' if tgt == 'en' else 'en->xx'
  return [f'{corpus} {kind}', f'{corpus} all', 'all']


def table(rows, snaps, systems) -> str:
  """Markdown: one row per (corpus, direction, budget) and the averages."""
  by = {(r['system'], r['budget_min'], r['corpus'], r['direction']): r
        for r in rows}
  budgets = sorted({r['budget_min'] for r in rows})
  keys = sorted({(r['corpus'], r['direction']) for r in rows},
                key=lambda x: (x[0] != 'tatoeba', x[1].endswith('-en') is
                               False, x[1]))
  cols = [LABEL[k] for k in systems]
  head = ['corpus', 'direction', 'min']
  for c in cols:
    head += [f'{c} chrF', f'{c} BLEU']
  if len(systems) == 2:
    head.append('chrF R/HF')
  out = ['| ' + ' | '.join(head) + ' |',
         '|' + '---|' * 3 + '---:|' * (len(head) - 3)]

  def line(label_a, label_b, b, vals):
    cells = [label_a, label_b, f'{b:g}']
    for k in systems:
      cells += [f'{vals[k][0]:.1f}', f'{vals[k][1]:.1f}']
    if len(systems) == 2:
      r, h = vals['rosetta'][0], vals['peer'][0]
      cells.append(f'{r / h:.2f}x' if h > 0 else 'n/a')
    out.append('| ' + ' | '.join(cells) + ' |')

  for corpus, direction in keys:
    for b in budgets:
      if all((k, b, corpus, direction) in by for k in systems):
        line(corpus, direction, b, {
            k: (by[(k, b, corpus, direction)]['chrf'],
                by[(k, b, corpus, direction)]['bleu']) for k in systems})
  names = sorted({g for c, d in keys for g in groups(d, c)},
                 key=lambda g: (g == 'all', g))
  for g in names:
    for b in budgets:
      vals = {}
      for k in systems:
        sel = [r for r in rows if r['system'] == k and r['budget_min'] == b
               and g in groups(r['direction'], r['corpus'])]
        if not sel:
          break
        vals[k] = (sum(r['chrf'] for r in sel) / len(sel),
                   sum(r['bleu'] for r in sel) / len(sel))
      if len(vals) == len(systems):
        line(f'**avg {g}**', '', b, vals)
  out.append('')
  out.append('| system | min | steps | target tokens | tokens/s | train loss '
             '(last 50 steps) | cores busy |')
  out.append('|---|---:|---:|---:|---:|---:|---:|')
  for k in systems:
    for s in snaps[k]:
      out.append(f'| {LABEL[k]} | {s["budget_min"]:g} | {s["step"]} | '
                 f'{s["target_tokens"]:,} | '
                 f'{s["target_tokens"] / s["train_s"]:,.0f} | '
                 f'{s["loss"]:.3f} | {s["cpu_s_per_train_s"]:.2f} |')
  return '\n'.join(out)


def write_json(path, payload):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(payload, f, indent=1, ensure_ascii=False)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main(argv=None) -> int:
  args = parse_args(argv)
  started = time.time()

  def log(msg):
    print(f'[{time.time() - started:6.0f}s] {msg}', flush=True)

  from translation import nmt, sources
  if not (sources.available('tatoeba') and sources.available('flores')):
    raise SystemExit('needs tatoeba_v2021 and flores200_devtest under '
                     '$ROSETTA_DATA_DIR (default ../shared/data)')
  conf = load_config(args)
  cfg = conf['model']
  langs = sorted(sources.language(l).code for l in args.languages)
  vocab_path = os.path.join(
      os.path.abspath(args.workdir),
      f'spm_tatoeba_{"_".join(langs)}_{conf["vocab_size"]}.model')
  setup = nmt.setup(corpus='tatoeba', languages=langs, vocab_path=vocab_path,
                    vocab_size=conf['vocab_size'], temperature=5.0,
                    zero_shot=False, mixture_name='nmt_quality_mixture')
  if setup.vocabulary.vocab_size > cfg.vocab_size:
    raise ValueError(f'vocabulary has {setup.vocabulary.vocab_size} ids; the '
                     f'model only {cfg.vocab_size} rows')
  log(f'vocabulary {vocab_path} ({setup.vocabulary.vocab_size} pieces); '
      f'{len(setup.directions)} directions; model d={cfg.emb_dim} '
      f'{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers, '
      f'{cfg.dtype}, batch {conf["batch_size"]} x {conf["lengths"]}, '
      f'{conf["optimizer"]} lr {conf["lr"]} (warmup {conf["warmup"]})')
  sets = eval_sets(langs, args.eval_sentences)

  systems = {}
  init_from = None
  if 'rosetta' in args.systems:
    systems['rosetta'] = RosettaSystem(cfg, setup, conf, args.seed)
    if args.peer_init == 'rosetta':
      init_from = systems['rosetta'].initial_hf_weights()
  if 'peer' in args.systems:
    systems['peer'] = PeerSystem(cfg, setup, conf, args.seed, args.threads,
                                 init_from)
    if not systems['peer'].peer.untied:
      raise RuntimeError('peer lm_head is still tied to the embedding')
  log('parameters: ' + ', '.join(f'{LABEL[k]} {s.num_params:,}'
                                 for k, s in systems.items()))
  load_start = os.getloadavg()[0]
  snaps = train(systems, args, log)
  rows = evaluate(systems, snaps, sets, args, log)
  text = table(rows, snaps, list(systems))
  print('\n' + text + '\n')
  import jax
  import torch
  import transformers
  meta = dict(
      date=str(datetime.date.today()), cpu=cpu_model(), cores=os.cpu_count(),
      load_average_start=load_start, load_average_end=os.getloadavg()[0],
      jax=jax.__version__, torch=torch.__version__,
      transformers=transformers.__version__, args=vars(args),
      model={k: getattr(cfg, k) for k in (
          'vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
          'num_encoder_layers', 'num_decoder_layers', 'dropout_rate',
          'dtype')},
      batch_size=conf['batch_size'], lengths=conf['lengths'],
      optimizer=conf['optimizer'], lr=conf['lr'],
      warmup=conf['warmup'], vocabulary=vocab_path,
      params={k: s.num_params for k, s in systems.items()})
  training = {k: [{f: v for f, v in s.items() if f != 'params'}
                  for s in snaps[k]] for k in systems}
  write_json(args.output, dict(meta=meta, training=training, results=rows,
                               table=text))
  log(f'results written to {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
