"""Training speed: Rosetta's train step vs HF transformers (PyTorch).

Both train the same T5.1.1 'small' network (d_model 512, 6+6 layers, 6 heads
x 64, d_ff 1024, gated-GELU, vocab 32,128, untied output projection, dropout
0) with AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8, no weight decay) on the
same random batch (16 x 128 inputs, 16 x 128 targets, no padding), on one
CPU device. Rows:

  HF transformers  T5ForConditionalGeneration, float32, torch threads = 2;
                   loss.backward(); opt.step(); opt.zero_grad()
  Rosetta f32      rosetta.trainer.Trainer.train_step (one jitted, donated
                   step), float32 activations and parameters
  Rosetta bf16     the same with dtype='bfloat16' (parameters float32)

Every system gets the same warm-up steps, then the timed steps run
round-robin (one step of each system in turn), so machine load hits all of
them alike; the median step time is reported. Rosetta's compile time (trace,
lower, XLA compile) is timed ahead of time with `Trainer.lower_train_step`,
apart from the steps. The matmul peak is measured in the same run, before
and after the steps: a jitted 2048 x 2048 x 2048 matmul, float32, and
bfloat16 inputs with float32 accumulation (best of N calls).

    MFU = 6 * N_params * target_tokens_per_step / step_time / peak

with N_params = every parameter (embedding table included) and target
tokens = batch * target length. An analytic count of the real matmul FLOPs
(no embedding lookup, attention scores included) is printed alongside.

    python -m benchmarks.train_step --quick      # tiny model, sanity check
    python -m benchmarks.train_step              # the 'small' comparison
    python -m benchmarks.train_step --steps 10 --warmup 3 --batch 8
    python -m benchmarks.train_step --systems hf f32 --order sequential
    python -m benchmarks.train_step --loss-chunk-length 32   # chunked loss
    # nmt_quality's model at one thread each, on one core:
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      taskset -c 1 python -m benchmarks.train_step --model nmt_small \
      --batch 16 --length 48 --threads 1 --systems hf f32

By default every system runs twice, under glibc malloc and under the
retaining allocator (rosetta/allocator.py), each in a child process of its
own (benchmarks/allocator_columns.py), and the two are printed side by
side; `--allocators retaining` runs one, in this process.

It measures, it does not assert; the numbers depend on the machine and on
whatever else runs on it. Only a quiet machine gives a fair ratio: under
load, torch's two OpenMP threads spin at every barrier while one of them is
descheduled, so HF slows down far more than XLA (seen here: HF 3.2 s/step
quiet, 14-17 s under a load average of 3-4; Rosetta 5.6 s and 9-10 s).
Interleaving does not cancel that. `--wait-for-load 0.6` waits for a quiet
moment; the 'cores busy' figure (process CPU seconds / wall seconds per
step, 2 = both cores) and the load average show what the run really had.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


from rosetta import optimizers, partitioning, trainer  # noqa: E402
from rosetta.model import encoder_decoder_model  # noqa: E402

from benchmarks import allocator_columns  # noqa: E402
from benchmarks.cpu_budget import cpu_model  # noqa: E402
from rosetta.model.encoder_decoder import T5Config  # noqa: E402

# Architecture in HF names; Rosetta's T5Config is built from the same dict.
SIZES = {
    'small': dict(vocab_size=32128, d_model=512, d_kv=64, num_heads=6,
                  d_ff=1024, num_layers=6, num_decoder_layers=6),
    # gin/experiments/nmt_cpu_small.gin, the model benchmarks/nmt_quality.py
    # trains (there: one thread each, batch 16 x 48).
    'nmt_small': dict(vocab_size=8064, d_model=256, d_kv=64, num_heads=4,
                      d_ff=1024, num_layers=3, num_decoder_layers=3),
    'tiny': dict(vocab_size=512, d_model=64, d_kv=16, num_heads=4,
                 d_ff=128, num_layers=2, num_decoder_layers=2),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--model', choices=list(SIZES), default='small')
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--length', type=int, default=128,
                 help='input length and target length (each)')
  p.add_argument('--steps', type=int, default=5, help='timed steps')
  p.add_argument('--warmup', type=int, default=2,
                 help='untimed steps first (the first compiles Rosetta)')
  p.add_argument('--lr', type=float, default=1e-4)
  p.add_argument('--threads', type=int, default=2, help='torch threads')
  p.add_argument('--peak-reps', type=int, default=10,
                 help='timed calls of the 2048 matmul per dtype')
  p.add_argument('--systems', nargs='+', default=['hf', 'hf_bf16', 'f32', 'bf16'],
                 choices=['hf', 'hf_bf16', 'f32', 'bf16'])
  p.add_argument('--order', choices=['interleave', 'sequential'],
                 default='interleave',
                 help='timed steps round-robin, or each system in one go')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--loss-chunk-length', type=int, default=None,
                 help="Rosetta's chunked output projection + loss "
                 '(EncoderDecoderModel.loss_chunk_length); default: whole')
  p.add_argument('--wait-for-load', type=float, default=None, metavar='L',
                 help='first wait (up to --max-wait s) until the 1-minute '
                      'load average is below L; for shared machines')
  p.add_argument('--max-wait', type=float, default=900)
  p.add_argument('--quick', action='store_true',
                 help='tiny model, batch 4 x 32, 1 warm-up + 2 timed steps, '
                      'small peak matmul')
  allocator_columns.add_arguments(p)
  args = p.parse_args(argv)
  args.peak_n = 2048
  if args.quick:
    args.model, args.batch, args.length = 'tiny', 4, 32
    args.steps, args.warmup, args.peak_reps, args.peak_n = 2, 1, 3, 512
  if args.steps < 1 or args.warmup < 1:
    p.error('--steps and --warmup must be >= 1 (the first warm-up step '
            'compiles)')
  return args


# ------------------------------------------------------------------ peak ---
def matmul_peak(dtype, n: int, reps: int) -> float:
  """GFLOP/s of the best of `reps` jitted n^3 matmuls (f32 accumulation)."""
  k1, k2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda a, b: jnp.matmul(a, b,
                                      preferred_element_type=jnp.float32))
  for _ in range(2):
    f(a, b).block_until_ready()
  best = float('inf')
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best / 1e9


# ------------------------------------------------------------------ data ---
def make_batch(batch: int, length: int, vocab: int, seed: int):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, size=(batch, length)).astype(np.int32)
  tgt = rng.integers(2, vocab, size=(batch, length)).astype(np.int32)
  dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], 1)
  return {'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in,
          'decoder_target_tokens': tgt}


def matmul_flops(size: dict, batch: int, length: int) -> float:
  """Forward+backward FLOPs of every matmul of one step (3x forward):
  projections, attention scores and context, MLP, output projection. Inputs
  and targets both have `length` tokens."""
  e, h, d, f, v = (size['d_model'], size['num_heads'], size['d_kv'],
                   size['d_ff'], size['vocab_size'])
  hd, t = h * d, batch * length
  proj = 2 * t * e * hd                     # one of q/k/v/o
  attn = 2 * 2 * batch * h * length * length * d  # scores + context
  mlp = 3 * 2 * t * e * f                   # wi_0, wi_1, wo
  enc = size['num_layers'] * (4 * proj + attn + mlp)
  dec = size['num_decoder_layers'] * (2 * (4 * proj + attn) + mlp)
  head = 2 * t * e * v
  return 3.0 * (enc + dec + head)


# ------------------------------------------------------------------- HF ---
class HFSystem:

  def __init__(self, size, batch_np, args, autocast: bool = False):
    import torch
    # autocast: bfloat16 matmuls with float32 parameters, torch's peer of
    # Rosetta's bfloat16 activations.
    self.autocast = autocast
    self.name = ('HF transformers (torch, bf16 autocast, f32 params)'
                 if autocast else 'HF transformers (torch, f32)')
    import transformers
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = transformers.T5Config(
        **size, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
        dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1)
    model = transformers.T5ForConditionalGeneration(cfg)
    self.notes = []
    # transformers 5 forces tie_word_embeddings=True for T5 (the v1.0 vs 1.1
    # difference lives in scale_decoder_outputs); untie by hand so both
    # systems have the same parameters and FLOPs.
    if model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr():
      # Initialised like Rosetta's logits_dense (std d_model**-0.5), so
      # both start near loss ln(vocab); speed does not depend on it.
      model.lm_head.weight = torch.nn.Parameter(
          torch.randn_like(model.shared.weight) * size['d_model'] ** -0.5)
      model.config.tie_word_embeddings = False
      self.notes.append('HF: transformers forced tie_word_embeddings=True; '
                        'lm_head was untied by hand (a fresh Parameter, '
                        'std d_model**-0.5).')
    if getattr(model.config, 'scale_decoder_outputs', False):
      self.notes.append('HF: scale_decoder_outputs=True (logits rescaled).')
    model.train()
    self.model, self.torch = model, torch
    self.opt = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                 betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0.0)
    self.enc = torch.from_numpy(batch_np['encoder_input_tokens']).long()
    self.dec = torch.from_numpy(batch_np['decoder_input_tokens']).long()
    self.tgt = torch.from_numpy(batch_np['decoder_target_tokens']).long()
    self.mask = (self.enc != 0).long()
    self.num_params = sum(p.numel() for p in
                          {id(p): p for p in model.parameters()}.values())
    self.losses = []

  def untied(self) -> bool:
    m = self.model
    return m.lm_head.weight.data_ptr() != m.shared.weight.data_ptr()

  def step(self):
    with self.torch.autocast('cpu', dtype=self.torch.bfloat16,
                             enabled=self.autocast):
      out = self.model(input_ids=self.enc, attention_mask=self.mask,
                       decoder_input_ids=self.dec, labels=self.tgt)
    out.loss.backward()
    self.opt.step()
    self.opt.zero_grad()
    self.losses.append(float(out.loss.detach()))


# -------------------------------------------------------------- Rosetta ---
class RosettaSystem:

  def __init__(self, size, batch_np, args, dtype: str):
    self.name = f'Rosetta ({dtype} activations, f32 params)'
    self.dtype = dtype
    cfg = T5Config(vocab_size=size['vocab_size'], emb_dim=size['d_model'],
                   num_heads=size['num_heads'], head_dim=size['d_kv'],
                   mlp_dim=size['d_ff'],
                   num_encoder_layers=size['num_layers'],
                   num_decoder_layers=size['num_decoder_layers'],
                   dropout_rate=0.0, tie_word_embeddings=False, dtype=dtype,
                   param_dtype='float32')
    sched = optimizers.learning_rate_schedule('constant', args.lr, 0)
    mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
    self.trainer = trainer.Trainer(
        encoder_decoder_model.EncoderDecoderModel(
            cfg, z_loss=0.0, loss_chunk_length=args.loss_chunk_length),
        partitioning.Partitioner(mesh),
        optimizers.make_optimizer('adamw', sched, b1=0.9, b2=0.999,
                                  weight_decay=0.0),
        sched, seed=args.seed)
    self.state = self.trainer.init_state()
    self.batch = jax.device_put(batch_np,
                                self.trainer.batch_shardings(batch_np))
    self.num_params = int(sum(np.prod(x.shape) for x in
                              jax.tree.leaves(self.state['params'])))
    self.notes = []
    self.losses = []

  def measure_compile(self, batch_np):
    """Seconds to trace+lower and to compile the train step (AOT, apart
    from the jit cache that `train_step` fills on its first call)."""
    t = time.perf_counter()
    lowered = self.trainer.lower_train_step(
        {k: v.shape for k, v in batch_np.items()})
    t_lower = time.perf_counter()
    lowered.compile()
    self.lower_s = t_lower - t
    self.compile_s = time.perf_counter() - t_lower

  def step(self):
    self.state, metrics = self.trainer.train_step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    self.losses.append(float(metrics['loss']))


# ----------------------------------------------------------------- main ---
def timed(system) -> float:
  """Wall seconds of one step; the process CPU seconds go to system.cpu."""
  c = time.process_time()
  t = time.perf_counter()
  system.step()
  wall = time.perf_counter() - t
  system.cpu.append(time.process_time() - c)
  return wall


def wait_for_quiet(threshold: float, max_wait: float):
  """Sleeps until the 1-minute load average is below `threshold`."""
  start = time.time()
  while os.getloadavg()[0] > threshold and time.time() - start < max_wait:
    time.sleep(10)
  waited = time.time() - start
  if waited > 1:
    print(f'waited {waited:.0f} s for load average < {threshold} '
          f'(now {os.getloadavg()[0]:.2f})')


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if len(args.allocators) > 1:
    return compare_allocators(args, argv)
  size = SIZES[args.model]
  import torch
  import transformers
  print(f'# train_step benchmark, {datetime.date.today()}, {cpu_model()}, '
        f'{os.cpu_count()} cores; jax {jax.__version__} '
        f'({jax.devices()[0].platform}, {len(jax.devices())} device), '
        f'torch {torch.__version__}, transformers {transformers.__version__}')
  if args.wait_for_load is not None:
    wait_for_quiet(args.wait_for_load, args.max_wait)
  load_start = os.getloadavg()[0]
  print(f'load average at start: {load_start:.2f}')
  # Every system runs in this process, so under the same malloc
  # (ROSETTA_ALLOCATOR / LD_PRELOAD decide which; rosetta/allocator.py).
  malloc = allocator_columns.check_child(args.allocators[0])
  print(f'malloc (all systems): {malloc}')

  # The peak is measured before and after the steps; the best counts.
  peaks = {'f32': [matmul_peak(jnp.float32, args.peak_n, args.peak_reps)],
           'bf16': [matmul_peak(jnp.bfloat16, args.peak_n, args.peak_reps)]}
  print(f'matmul peak before ({args.peak_n}^3, best of {args.peak_reps}): '
        f'float32 {peaks["f32"][0]:.1f} GFLOP/s, bfloat16 in / float32 acc '
        f'{peaks["bf16"][0]:.1f} GFLOP/s')

  batch_np = make_batch(args.batch, args.length, size['vocab_size'],
                        args.seed)
  systems = []
  for key in args.systems:
    t = time.perf_counter()
    if key in ('hf', 'hf_bf16'):
      s = HFSystem(size, batch_np, args, autocast=key == 'hf_bf16')
    else:
      s = RosettaSystem(size, batch_np, args,
                        'float32' if key == 'f32' else 'bfloat16')
    s.peak_key = 'bf16' if key in ('bf16', 'hf_bf16') else 'f32'
    s.key, s.init_s, s.times, s.cpu = key, time.perf_counter() - t, [], []
    systems.append(s)

  counts = {s.key: s.num_params for s in systems}
  print('parameters: ' + ', '.join(f'{s.name} {s.num_params:,}'
                                   for s in systems)
        + ('  (match)' if len(set(counts.values())) == 1 else
           '  (MISMATCH)'))
  n_params = counts.get('f32', counts.get('bf16', counts.get('hf')))

  for s in systems:
    if not s.key.startswith('hf'):
      s.measure_compile(batch_np)
  # Warm-up: the first step of each Rosetta system traces and compiles.
  for s in systems:
    s.first_s = timed(s)
    for _ in range(args.warmup - 1):
      timed(s)
  if args.order == 'interleave':
    for _ in range(args.steps):
      for s in systems:
        s.times.append(timed(s))
  else:
    for s in systems:
      s.cpu = []
      s.times = [timed(s) for _ in range(args.steps)]
  for s in systems:
    s.cpu = s.cpu[-args.steps:]
  peaks['f32'].append(matmul_peak(jnp.float32, args.peak_n, args.peak_reps))
  peaks['bf16'].append(matmul_peak(jnp.bfloat16, args.peak_n, args.peak_reps))
  peak = {k: max(v) for k, v in peaks.items()}

  tokens = args.batch * args.length
  model_flops = 6.0 * n_params * tokens
  exact_flops = matmul_flops(size, args.batch, args.length)
  hf = next((s for s in systems if s.key == 'hf'), None)
  hf_tps = tokens / statistics.median(hf.times) if hf else None

  print()
  print(f'model {args.model}: d_model {size["d_model"]}, '
        f'{size["num_layers"]}+{size["num_decoder_layers"]} layers, '
        f'{size["num_heads"]} heads x {size["d_kv"]}, d_ff {size["d_ff"]}, '
        f'vocab {size["vocab_size"]} (untied); batch {args.batch} x '
        f'{args.length} inputs, {args.length} targets; AdamW lr {args.lr}; '
        f'{args.warmup} warm-up + {args.steps} timed steps ({args.order})')
  print()
  print('| system | step time (s), median [min-max] | target tokens/s '
        '| ratio vs HF | MFU | compile (s) | CPU s/step (cores busy) |')
  print('|---|---|---|---|---|---|---|')
  for s in systems:
    med = statistics.median(s.times)
    tps = tokens / med
    ratio = f'{tps / hf_tps:.2f}x' if hf_tps else 'n/a'
    mfu = model_flops / med / (peak[s.peak_key] * 1e9)
    compile_s = ('n/a' if s.key.startswith('hf')
                 else f'{s.lower_s + s.compile_s:.1f}')
    busy = statistics.median(c / w for c, w in zip(s.cpu, s.times))
    print(f'| {s.name} | {med:.3f} [{min(s.times):.3f}-{max(s.times):.3f}] '
          f'| {tps:,.0f} | {ratio} | {100 * mfu:.1f}% of {s.peak_key} peak '
          f'| {compile_s} | {statistics.median(s.cpu):.2f} ({busy:.2f}) |')
  print()
  print(f'measured peak: float32 {peak["f32"]:.1f} GFLOP/s; bfloat16 inputs '
        f'with float32 accumulation {peak["bf16"]:.1f} GFLOP/s (jitted '
        f'{args.peak_n}^3 matmul, best of {args.peak_reps} calls, before '
        f'and after the steps: f32 '
        + '/'.join(f'{v:.0f}' for v in peaks['f32']) + ', bf16 '
        + '/'.join(f'{v:.0f}' for v in peaks['bf16']) + ')')
  print(f'MFU = 6 * N_params * target_tokens / step_time / peak, N_params = '
        f'{n_params:,}, target_tokens = {args.batch} * {args.length} = '
        f'{tokens:,} per step -> {model_flops / 1e9:.1f} GFLOP per step')
  print(f'analytic matmul FLOPs (no embedding lookup, attention included): '
        f'{exact_flops / 1e9:.1f} GFLOP per step '
        f'({exact_flops / model_flops:.2f}x the 6*N*T count); '
        + ', '.join(f'{s.key} {exact_flops / statistics.median(s.times) / 1e9:.0f}'
                    for s in systems) + ' GFLOP/s achieved')
  if hf and args.order == 'interleave':
    print('ratio vs HF, other estimates: ' + '; '.join(
        f'{s.key}: per-round paired median '
        f'{statistics.median(h / r for h, r in zip(hf.times, s.times)):.2f}x, '
        f'best step {min(hf.times) / min(s.times):.2f}x, CPU s '
        f'{statistics.median(hf.cpu) / statistics.median(s.cpu):.2f}x'
        for s in systems if s is not hf))
  peers = {'f32': 'hf', 'bf16': 'hf_bf16'}   # same activation precision
  by_key = {s.key: s for s in systems}
  pairs = [(by_key[r], by_key[h]) for r, h in peers.items()
           if r in by_key and h in by_key]
  if pairs:
    print('like for like (Rosetta / HF at the same activation precision): '
          + '; '.join(
              f'{r.key} / {h.key}: median step '
              f'{statistics.median(h.times) / statistics.median(r.times):.2f}x'
              + (f', per-round paired median '
                 f'{statistics.median(a / b for a, b in zip(h.times, r.times)):.2f}x'
                 if args.order == 'interleave' else '')
              + f', CPU s {statistics.median(h.cpu) / statistics.median(r.cpu):.2f}x'
              for r, h in pairs))
  if hf:
    print(f'HF lm_head untied from shared embedding: {hf.untied()}')
  for s in systems:
    for note in s.notes:
      print(note)
  print('loss first -> last step: ' + ', '.join(
      f'{s.key} {s.losses[0]:.3f} -> {s.losses[-1]:.3f}' for s in systems))
  print('Rosetta compile = trace+lower + XLA compile of the train step, '
        'timed ahead of time (' + ', '.join(
            f'{s.key} {s.lower_s:.1f} + {s.compile_s:.1f} s'
            for s in systems if not s.key.startswith('hf')) + '); first call (compile + '
        'step) ' + ', '.join(f'{s.key} {s.first_s:.1f} s' for s in systems
                             if not s.key.startswith('hf'))
        + '; setup (init) ' + ', '.join(f'{s.key} {s.init_s:.1f} s'
                                        for s in systems))
  print('CPU s/step = process CPU seconds per timed step (median); cores '
        'busy = CPU seconds / wall seconds (median; '
        f'{os.cpu_count()} = the whole machine); load average '
        f'start {load_start:.2f}, end {os.getloadavg()[0]:.2f}')
  allocator_columns.write_result(args.result_json, {
      'malloc': malloc, 'tokens': tokens,
      'load': [load_start, os.getloadavg()[0]],
      'peak': peak, 'model_flops': model_flops,
      'systems': {s.key: {'name': s.name, 'times': s.times, 'cpu': s.cpu,
                          'peak_key': s.peak_key} for s in systems}})


def compare_allocators(args, argv):
  """Every system under each malloc (a child process each), side by side:
  step time, the ratio against HF under the same malloc, and what the
  retaining allocator gains over glibc."""
  results = allocator_columns.run_each(
      'benchmarks.train_step',
      allocator_columns.without_allocator_options(argv), args.allocators)
  labels = list(results)
  names = {l: results[l]['malloc'] for l in labels}
  print('\n## side by side (each column one process; peers under the same '
        'malloc)\n')
  head = ' | '.join(f'{names[l]}: step (s) | {names[l]}: vs HF f32 | '
                    f'{names[l]}: MFU' for l in labels)
  print(f'| system | {head} | step speedup, {names[labels[-1]]} over '
        f'{names[labels[0]]} |')
  print('|---|' + '---:|' * (3 * len(labels) + 1))
  for key, system in results[labels[0]]['systems'].items():
    cells, medians = [], []
    for l in labels:
      r = results[l]
      med = statistics.median(r['systems'][key]['times'])
      hf = r['systems'].get('hf')
      vs_hf = (f'{statistics.median(hf["times"]) / med:.2f}x' if hf
               else 'n/a')
      mfu = r['model_flops'] / med / (
          r['peak'][r['systems'][key]['peak_key']] * 1e9)
      cells += [f'{med:.3f}', vs_hf, f'{100 * mfu:.1f}%']
      medians.append(med)
    print(f'| {system["name"]} | ' + ' | '.join(cells)
          + f' | {medians[0] / medians[-1]:.2f}x |')
  for l in labels:
    systems = results[l]['systems']
    pairs = [(r, h) for r, h in (('f32', 'hf'), ('bf16', 'hf_bf16'))
             if r in systems and h in systems]
    print(f'like for like under {names[l]}: ' + '; '.join(
        f'{r} / {h} {statistics.median(systems[h]["times"]) / statistics.median(systems[r]["times"]):.2f}x'
        for r, h in pairs) + f' (load average {results[l]["load"][0]:.2f} -> '
        f'{results[l]["load"][1]:.2f})')


if __name__ == '__main__':
  main()
