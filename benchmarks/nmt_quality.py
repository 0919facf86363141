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
  time        the same budget of process CPU seconds spent in training
              steps (all threads; waiting for a core held by other jobs does
              not count, so machine load hits both alike). Both train at
              once, Rosetta on core 0 (one XLA thread) and the peer on core
              1 (one torch thread), synchronised every `--chunk_s` CPU
              seconds; Rosetta's compile time counts against its budget
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

    python -m benchmarks.nmt_quality --quick          # ~5 min smoke test
    python -m benchmarks.nmt_quality                  # 15/30/60/120 CPU min
    python -m benchmarks.nmt_quality --budgets 5,10,20,40 --deadline HH:MM
    python -m benchmarks.nmt_quality --languages de,fr --budgets 5,10 \\
        --gin 'encoder_decoder.T5Config.num_encoder_layers = 4'

Outside CI: it measures, it asserts nothing. The full default run trains
each system for 120 CPU minutes (2 hours on an idle 2-core machine) plus
evaluation; the 'CPU s per wall s' column shows the share of its core each
system really got.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from benchmarks.cpu_budget import cpu_model, one_thread_xla_flags  # noqa: E402,F401
from rosetta.run import files

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
                 help='CPU seconds per round (systems synchronise after '
                 'each round)')
  p.add_argument('--deadline', default=None, metavar='HH:MM',
                 help='UTC time by which training must stop (then one more '
                 'common mark at the last round all systems finished)')
  p.add_argument('--no_pin', dest='pin', action='store_false',
                 help='do not pin Rosetta to core 0 and the peer to core 1 '
                 '(one thread each); both then use --threads')
  p.add_argument('--peer_init', choices=('hf', 'rosetta'), default='hf',
                 help="peer's initial weights: its own init, or Rosetta's")
  p.add_argument('--threads', type=int, default=os.cpu_count(),
                 help='torch threads with --no_pin (XLA uses all cores)')
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
  args.pin = args.pin and len(os.sched_getaffinity(0)) >= 2
  if args.pin:
    args.rosetta_core, args.peer_core = sorted(os.sched_getaffinity(0))[:2]
    args.threads = 1
  else:
    args.rosetta_core = args.peer_core = None
  if args.deadline:
    now = datetime.datetime.now(datetime.timezone.utc)
    hh, mm = (int(x) for x in args.deadline.split(':'))
    deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if deadline <= now:  # HH:MM already passed today: it means tomorrow's
      deadline += datetime.timedelta(days=1)
    args.deadline = deadline.timestamp()
  return args


# ---------------------------------------------------------------- setup ---
def load_config(args):
  """The experiment's model, batch, lengths and learning rate (gin)."""
  import gin
  from rosetta import gin_utils
  from rosetta.model.encoder_decoder import T5Config
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
  from rosetta.data import corpora as sources
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
  """Rosetta's Trainer and InputPipeline (packed seqio batches), in this
  process."""

  def __init__(self, cfg, setup, conf, args):
    import jax
    from benchmarks import hf_t5_peer
    from rosetta import optimizers, partitioning, trainer
    from rosetta.data import pipeline
    from rosetta.model import encoder_decoder_model
    sched = optimizers.learning_rate_schedule('constant', conf['lr'],
                                              conf['warmup'])
    self.wrapper = encoder_decoder_model.EncoderDecoderModel(cfg, z_loss=0.0,
                                              label_smoothing=0.0)
    part = partitioning.Partitioner(partitioning.make_mesh(
        data=1, devices=jax.devices()[:1]))
    self.trainer = trainer.Trainer(
        self.wrapper, part, optimizers.make_optimizer(
            conf['optimizer'], sched, grad_clip_norm=None, weight_decay=0.0,
            b1=0.9, b2=0.999, adafactor_decay_rate=0.8,
            adafactor_clipping_threshold=1.0, adafactor_momentum=None),
        sched, seed=args.seed)
    self.state = self.trainer.init_state()
    self.pipeline = pipeline.InputPipeline(
        setup.mixture, split='train', task_feature_lengths=conf['lengths'],
        global_batch_size=conf['batch_size'], partitioner=part,
        seed=args.seed, feature_converter_cls=getattr(
            self.wrapper, 'FEATURE_CONVERTER_CLS', None))
    self.num_params = int(sum(x.size for x in
                              jax.tree.leaves(self.state['params'])))
    self.vocabulary = setup.vocabulary
    self.clock = hf_t5_peer.BudgetClock(args.budget_s)
    self.until = 0.0

  def initial_hf_weights(self) -> dict:
    import jax
    from rosetta.checkpoint import hf as checkpoint_import
    return checkpoint_import.rosetta_to_hf(
        self.trainer.network(jax.device_get(self.state['params'])))

  def _step(self):
    import jax
    self.state, m = self.trainer.train_step(self.state, next(self.pipeline))
    m = jax.device_get(m)   # blocks: the clock sees the finished step
    return float(m['loss']), int(m['num_tokens'])

  def _snapshot(self):
    import jax
    return jax.device_get(self.state['params'])

  def start(self, until_s):
    self.until = until_s

  def finish(self):
    self.clock.run(self._step, self._snapshot, self.until)
    return self.clock.state()

  def mark(self, budget_s):
    self.clock.mark(budget_s, self._snapshot)
    return self.clock.state()

  def translate_start(self, *a, **kw):
    self.pending = self.translate(*a, **kw)

  def translate_finish(self):
    return self.pending

  def translate(self, snap, lines, tgt, *, beam, alpha, max_length):
    import jax
    from translation import translate
    params = jax.device_put(self.clock.payloads[snap],
                            self.trainer.param_shardings)
    tr = translate.Translator.from_params(self.trainer, self.wrapper, params,
                                          self.vocabulary)
    from rosetta.decoding.algorithms import DecodeOptions
    options = DecodeOptions(num_beams=beam, alpha=alpha, length_penalty='hf',
                            max_decode_length=max_length)
    return tr.translate(lines, tgt, options=options)

  def close(self):
    pass


class PeerSystem:
  """HF transformers T5.1.1 in a child process (hf_t5_peer.serve), fed the
  same mixture's examples; only one system computes at a time."""

  POOL = 4096

  def __init__(self, cfg, setup, conf, args, init_from=None):
    import multiprocessing
    import dataclasses
    import seqio
    from benchmarks import hf_t5_peer
    ds = seqio.get_mixture_or_task(setup.mixture).get_dataset(
        conf['lengths'], split='train', shuffle=True, seed=args.seed,
        num_epochs=None)
    self.examples = ((e['inputs'], e['targets'])
                     for e in ds.as_numpy_iterator())
    self.vocabulary = setup.vocabulary
    self.eos = cfg.eos_token_id
    init = dict(cfg=dataclasses.asdict(cfg), lr=conf['lr'],
                warmup_steps=conf['warmup'], threads=args.threads,
                optimizer=conf['optimizer'], seed=args.seed,
                init_from=init_from)
    ctx = multiprocessing.get_context('spawn')   # no TF / JAX in the child
    self.conn, child = ctx.Pipe()
    self.proc = ctx.Process(
        target=hf_t5_peer.serve, daemon=True,
        args=(child, init, args.budget_s,
              conf['batch_size'] * max(conf['lengths'].values()),
              args.seed, args.peer_core))
    self.proc.start()
    info = self._reply()
    self.num_params, self.untied = info['num_params'], info['untied']
    self.buffered, self.consumed = 0, 0
    self.state = dict(clock=0.0, wall=0.0, steps=0, snaps=[])

  def _reply(self):
    status, value = self.conn.recv()
    if status == 'error':
      raise RuntimeError(f'peer process: {value}')
    return value

  def _call(self, cmd, arg=None):
    self.conn.send((cmd, arg))
    return self._reply()

  def _feed(self, n):
    """Sends n more examples (tokenised here, where TF lives)."""
    self.buffered = self._call('feed', [next(self.examples)
                                        for _ in range(n)])

  def start(self, until_s):
    """Tops up the child's examples (1.5 rounds' worth), then lets it train
    until its clock reaches `until_s` while this process trains Rosetta."""
    want = max(2 * self.POOL, int(1.5 * self.consumed))
    if self.buffered < want:
      self._feed(want - self.buffered)
    self.until, self.before = until_s, self.buffered
    self.conn.send(('train', until_s))

  def finish(self):
    while True:
      starved, self.state = self._reply()
      self.buffered = self.state['buffered']
      if not starved:
        break
      self.before += self.POOL
      self._feed(self.POOL)
      self.conn.send(('train', self.until))
    self.consumed = self.before - self.buffered
    return self.state

  def mark(self, budget_s):
    self.state = self._call('mark', budget_s)
    return self.state

  def translate_start(self, snap, lines, tgt, *, beam, alpha, max_length):
    from translation import tasks
    encoded = [tasks.encode_source(self.vocabulary, s, tgt)[:255] + [self.eos]
               for s in lines]   # as Translator.encode (max_input_length 256)
    self.conn.send(('generate', (snap, encoded, dict(
        beam_size=beam, alpha=alpha, max_length=max_length))))

  def translate_finish(self):
    return [self.vocabulary.decode(x) for x in self._reply()]

  def close(self):
    if self.proc.is_alive():
      try:
        self.conn.send(('close', None))
        if self.conn.poll(60):
          self.conn.recv()
      except (OSError, EOFError):
        pass   # the child is gone already
      self.proc.join(timeout=10)
    if self.proc.is_alive():
      self.proc.terminate()   # our own child, by handle


# ------------------------------------------------------------- training ---
def train(systems, args, log):
  """Rounds in which all systems train at once (the peer in its process,
  Rosetta in this one) until each clock reaches the round's target, `chunk_s`
  CPU seconds further; stops at the last mark, or at `--deadline` with one
  more common mark at the last target all systems reached. Returns
  {system: [metadata per budget mark]}."""
  end = args.budget_s[-1]
  target, last_round = 0.0, 0.0
  state = {k: dict(clock=0.0, wall=0.0, steps=0, snaps=[]) for k in systems}
  while target < end:
    if args.deadline and time.time() + last_round > args.deadline:
      log(f'deadline: stopping at {target / 60:.1f} CPU min')
      for k, system in systems.items():
        marks = [round(s['budget_min'], 6) for s in state[k]['snaps']]
        if target > 0 and round(target / 60, 6) not in marks:
          state[k] = system.mark(target)
      break
    target = min(end, target + args.chunk_s)
    t0 = time.time()
    for system in systems.values():
      system.start(target)
    for k, system in systems.items():
      seen = len(state[k]['snaps'])
      state[k] = system.finish()
      for snap in state[k]['snaps'][seen:]:
        log(f'{LABEL[k]}: {snap["budget_min"]:g} min mark at step '
            f'{snap["step"]}, loss {snap["loss"]:.3f}')
    last_round = time.time() - t0
    log('clock ' + ', '.join(
        f'{LABEL[k]} {state[k]["clock"]:.0f} CPU s ({state[k]["wall"]:.0f} '
        f'wall s)/{state[k]["steps"]} steps' for k in systems)
        + f'; load {os.getloadavg()[0]:.1f}')
  # Keep the marks every system reached.
  common = set.intersection(*({round(s['budget_min'], 6)
                               for s in state[k]['snaps']} for k in systems))
  snaps = {}
  for k in systems:
    share = state[k]['clock'] / max(state[k]['wall'], 1e-9)
    snaps[k] = [dict(s, index=i, cpu_s_per_wall_s=share)
                for i, s in enumerate(state[k]['snaps'])
                if round(s['budget_min'], 6) in common]
  return snaps


# ----------------------------------------------------------- evaluation ---
def evaluate(systems, snaps, sets, args, log):
  from translation import metrics
  rows = []
  first = next(iter(systems))
  for j in range(len(snaps[first])):    # the same marks in every system
    t0 = time.time()
    for (corpus, direction), pairs in sets.items():
      tgt = direction.split('-')[1]
      max_len = args.max_tatoeba if corpus == 'tatoeba' else args.max_flores
      # The peer decodes in its process while Rosetta decodes in this one.
      for k in sorted(systems, key=lambda k: k != 'peer'):
        systems[k].translate_start(snaps[k][j]['index'],
                                   [s for s, _ in pairs], tgt,
                                   beam=args.beam, alpha=args.alpha,
                                   max_length=max_len)
      for k, system in systems.items():
        hyps = system.translate_finish()
        s = metrics.corpus_scores(hyps, [r for _, r in pairs], tgt)
        rows.append(dict(system=k, budget_min=snaps[k][j]['budget_min'],
                         corpus=corpus, direction=direction, n=len(pairs),
                         chrf=s['chrf'], bleu=s['bleu'], sample=hyps[0]))
    log(f'evaluated the {snaps[first][j]["budget_min"]:g} min snapshots '
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
  out.append('| system | CPU min | steps | target tokens | tokens per '
             'CPU s | train loss (last 50 steps) | wall min | CPU s per '
             'wall s |')
  out.append('|---|---:|---:|---:|---:|---:|---:|---:|')
  for k in systems:
    for s in snaps[k]:
      out.append(f'| {LABEL[k]} | {s["budget_min"]:g} | {s["step"]} | '
                 f'{s["target_tokens"]:,} | '
                 f'{s["target_tokens"] / s["train_s"]:,.0f} | '
                 f'{s["loss"]:.3f} | {s["wall_s"] / 60:.1f} | '
                 f'{s["cpu_s_per_wall_s"]:.2f} |')
  return '\n'.join(out)


def write_json(path, payload):
  files.atomic_write_json(path, payload, indent=1, ensure_ascii=False)


def main(argv=None) -> int:
  args = parse_args(argv)
  started = time.time()
  if args.pin:   # before JAX starts: one core, one XLA thread
    from benchmarks import hf_t5_peer
    hf_t5_peer.pin(args.rosetta_core)
    os.environ['XLA_FLAGS'] = one_thread_xla_flags(
        os.environ.get('XLA_FLAGS', ''))

  def log(msg):
    print(f'[{time.time() - started:6.0f}s] {msg}', flush=True)

  from translation import nmt
  from rosetta.data import corpora as sources
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
  try:
    if 'rosetta' in args.systems:
      systems['rosetta'] = RosettaSystem(cfg, setup, conf, args)
      if args.peer_init == 'rosetta':
        init_from = systems['rosetta'].initial_hf_weights()
    if 'peer' in args.systems:
      systems['peer'] = PeerSystem(cfg, setup, conf, args, init_from)
      if not systems['peer'].untied:
        raise RuntimeError('peer lm_head is still tied to the embedding')
    log('parameters: ' + ', '.join(f'{LABEL[k]} {s.num_params:,}'
                                   for k, s in systems.items()))
    load_start = os.getloadavg()[0]
    snaps = train(systems, args, log)
    rows = evaluate(systems, snaps, sets, args, log)
  finally:
    for system in systems.values():
      system.close()
  text = table(rows, snaps, list(systems))
  print('\n' + text + '\n')
  from importlib import metadata
  meta = dict(
      date=str(datetime.date.today()), cpu=cpu_model(), cores=os.cpu_count(),
      load_average_start=load_start, load_average_end=os.getloadavg()[0],
      versions={p: metadata.version(p) for p in ('jax', 'torch',
                                                 'transformers')},
      args=vars(args),
      model={k: getattr(cfg, k) for k in (
          'vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
          'num_encoder_layers', 'num_decoder_layers', 'dropout_rate',
          'dtype')},
      batch_size=conf['batch_size'], lengths=conf['lengths'],
      optimizer=conf['optimizer'], lr=conf['lr'],
      warmup=conf['warmup'], vocabulary=vocab_path,
      params={k: s.num_params for k, s in systems.items()})
  write_json(args.output, dict(meta=meta, training=snaps, results=rows,
                               table=text))
  log(f'results written to {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
