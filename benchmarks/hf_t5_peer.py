"""The peer of benchmarks/nmt_quality.py: HF transformers' T5.1.1 in PyTorch.

`HFPeer` trains `transformers.MT5ForConditionalGeneration` (mT5 is exactly
the T5.1.1 architecture: gated-GELU, untied output projection, no logit
rescaling) with the dimensions of a Rosetta `T5Config`, with the same
optimizer (torch AdamW, or transformers' Adafactor with parameter-scaled
updates as optax's) and warmup-then-constant learning rate, bfloat16
autocast when Rosetta computes in bfloat16, on the SAME seqio examples
Rosetta trains on (the mixture's tokenised `inputs` / `targets`, `<2xx>`
first, EOS last), and decodes with `generate` (greedy or beam search with
HF's length penalty, which Rosetta reproduces exactly).

It runs in its own process (`serve`, multiprocessing 'spawn'), which
imports torch and transformers but never TensorFlow or JAX: measured here,
importing either into the same process made a torch training step ~2x
slower (2.2 s -> 4.8-5.1 s wall for the same batch). The parent feeds it
tokenised examples and token ids, and decodes its output ids. It trains
while the parent trains Rosetta, each pinned to its own core, and its
budget is the process CPU time of its steps (`BudgetClock`).

Batches: HF T5 has no packing (no segment ids), so the peer batches the way
HF / fairseq users do: a pool of examples is sorted by length, cut into
batches of at most `max_tokens` padded positions per side (the budget of
Rosetta's packed `batch_size x length` rows) and the batches shuffled.

transformers 5 ties lm_head to the embedding even with
tie_word_embeddings=False; the peer unties it by hand (a fresh Parameter,
std d_model**-0.5, as Rosetta initialises its output projection).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Sequence

import numpy as np


@dataclasses.dataclass
class PeerBatch:
  input_ids: np.ndarray       # (b, Li) int64, 0-padded
  labels: np.ndarray          # (b, Lt) int64, -100-padded (HF's ignore index)

  @property
  def target_tokens(self) -> int:
    return int((self.labels >= 0).sum())


class TokenBatcher:
  """Length-bucketed batches from fed (inputs, targets) id arrays."""

  def __init__(self, max_tokens: int, pool_examples: int = 4096,
               seed: int = 0):
    self.max_tokens, self.pool = max_tokens, pool_examples
    self.rng = np.random.default_rng(seed)
    self.buffer: collections.deque = collections.deque()
    self.ready: list[list] = []

  def add(self, examples):
    self.buffer.extend(examples)

  def next(self) -> PeerBatch | None:
    """The next batch, or None when a new pool needs more examples."""
    if not self.ready:
      if len(self.buffer) < self.pool:
        return None
      pool = sorted((self.buffer.popleft() for _ in range(self.pool)),
                    key=lambda e: (max(len(e[0]), len(e[1])), len(e[0])))
      batches, cur, width = [], [], 0
      for ex in pool:
        w = max(width, len(ex[0]), len(ex[1]))
        if cur and w * (len(cur) + 1) > self.max_tokens:
          batches.append(cur)
          cur, w = [], max(len(ex[0]), len(ex[1]))
        cur.append(ex)
        width = w
      batches.append(cur)
      self.ready = [batches[i] for i in self.rng.permutation(len(batches))]
    return _pad(self.ready.pop())


def _pad(examples: Sequence[tuple]) -> PeerBatch:
  x = np.zeros((len(examples), max(len(e[0]) for e in examples)), np.int64)
  y = np.full((len(examples), max(len(e[1]) for e in examples)), -100,
              np.int64)
  for r, (a, b) in enumerate(examples):
    x[r, :len(a)], y[r, :len(b)] = a, b
  return PeerBatch(x, y)


class BudgetClock:
  """One system's training clock: the process CPU seconds its own steps
  used (every thread of the process, so XLA's and torch's pools count; time
  spent waiting for a core taken by other jobs does not), with a snapshot
  when the clock passes each budget mark."""

  def __init__(self, marks_s: Sequence[float]):
    self.marks = sorted(marks_s)
    self.clock = self.wall = 0.0
    self.steps = self.tokens = 0
    self.recent: list[float] = []
    self.snaps: list[dict] = []       # metadata per mark
    self.payloads: list = []          # parameters per mark

  @property
  def done(self) -> bool:
    return self.clock >= self.marks[-1]

  def mark(self, budget_s: float, snapshot_fn):
    self.snaps.append(dict(
        budget_min=budget_s / 60, step=self.steps, train_s=self.clock,
        wall_s=self.wall, target_tokens=self.tokens,
        loss=sum(self.recent) / max(1, len(self.recent))))
    self.payloads.append(snapshot_fn())

  def run(self, step_fn, snapshot_fn, until_s: float) -> bool:
    """Steps until the clock reaches `until_s` (or the last mark); False if
    `step_fn` returned None (out of input) before that."""
    while not self.done and self.clock < until_s:
      t, c = time.perf_counter(), time.process_time()
      out = step_fn()
      if out is None:
        return False
      self.clock += time.process_time() - c
      self.wall += time.perf_counter() - t
      loss, n = out
      self.steps, self.tokens = self.steps + 1, self.tokens + n
      self.recent = (self.recent + [loss])[-50:]
      if (len(self.snaps) < len(self.marks)
          and self.clock >= self.marks[len(self.snaps)]):
        self.mark(self.marks[len(self.snaps)], snapshot_fn)
    return True

  def state(self) -> dict:
    return dict(clock=self.clock, wall=self.wall, steps=self.steps,
                snaps=list(self.snaps))


def pin(core: int | None):
  """This process (and the threads it starts later) on one core."""
  if core is not None and hasattr(os, 'sched_setaffinity'):
    os.sched_setaffinity(0, {core})


class HFPeer:
  """T5.1.1 in PyTorch, trained and decoded like Rosetta's model. `cfg` is a
  dict of Rosetta T5Config fields (no JAX in this process)."""

  def __init__(self, cfg: dict, *, lr: float, warmup_steps: int,
               threads: int, optimizer: str = 'adamw', seed: int = 0,
               init_from: dict | None = None):
    import torch
    import transformers
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if tuple(cfg['mlp_activations']) != ('gelu', 'linear') or cfg[
        'tie_word_embeddings']:
      raise ValueError('the peer is T5.1.1 (gated-GELU, untied); got '
                       f'{cfg["mlp_activations"]}, tied='
                       f'{cfg["tie_word_embeddings"]}')
    hf_cfg = transformers.MT5Config(
        vocab_size=cfg['vocab_size'], d_model=cfg['emb_dim'],
        d_kv=cfg['head_dim'], num_heads=cfg['num_heads'],
        d_ff=cfg['mlp_dim'], num_layers=cfg['num_encoder_layers'],
        num_decoder_layers=cfg['num_decoder_layers'],
        feed_forward_proj='gated-gelu', tie_word_embeddings=False,
        dropout_rate=cfg['dropout_rate'],
        relative_attention_num_buckets=cfg['relative_attention_num_buckets'],
        relative_attention_max_distance=cfg[
            'relative_attention_max_distance'],
        layer_norm_epsilon=cfg['layer_norm_epsilon'],
        decoder_start_token_id=cfg['decoder_start_token_id'],
        pad_token_id=cfg['pad_token_id'], eos_token_id=cfg['eos_token_id'])
    model = transformers.MT5ForConditionalGeneration(hf_cfg)
    if model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr():
      model.lm_head.weight = torch.nn.Parameter(
          torch.randn_like(model.shared.weight) * cfg['emb_dim'] ** -0.5)
      model.config.tie_word_embeddings = False
    if init_from is not None:   # e.g. Rosetta's initial weights, HF names
      state = {k: torch.from_numpy(np.array(v)) for k, v in init_from.items()}
      missing, unexpected = model.load_state_dict(state, strict=False)
      tied = {'encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'}
      if set(missing) - tied or unexpected:
        raise ValueError(f'peer init: missing {sorted(set(missing) - tied)}, '
                         f'unexpected {sorted(unexpected)}')
    model.train()
    self.torch, self.model = torch, model
    self.eos, self.pad = cfg['eos_token_id'], cfg['pad_token_id']
    if optimizer == 'adamw':
      self.opt = torch.optim.AdamW(model.parameters(), lr=lr,
                                   betas=(0.9, 0.999), eps=1e-8,
                                   weight_decay=0.0)
    elif optimizer == 'adafactor':
      # As optax.adafactor in rosetta.optimizers: updates scaled by the
      # parameter's RMS, decay 0.8, update clipping 1.0, no momentum; the
      # external schedule sets group['lr'].
      from transformers.optimization import Adafactor
      self.opt = Adafactor(
          model.parameters(), lr=lr, scale_parameter=True,
          relative_step=False, warmup_init=False, decay_rate=-0.8,
          clip_threshold=1.0, beta1=None, weight_decay=0.0)
    else:
      raise ValueError(f'peer optimizer {optimizer!r}: adamw or adafactor')
    # Mixed precision like Rosetta's bfloat16 activations (params float32).
    self.autocast = cfg['dtype'] == 'bfloat16'
    # Linear warmup from 0, then constant (optax: linear -> constant).
    self.sched = torch.optim.lr_scheduler.LambdaLR(
        self.opt, lambda s: min(1.0, s / warmup_steps) if warmup_steps
        else 1.0)
    self.num_params = sum(p.numel() for p in
                          {id(p): p for p in model.parameters()}.values())
    self.untied = (model.lm_head.weight.data_ptr()
                   != model.shared.weight.data_ptr())

  def train_step(self, batch: PeerBatch) -> float:
    t = self.torch
    x = t.from_numpy(batch.input_ids)
    with t.autocast('cpu', dtype=t.bfloat16, enabled=self.autocast):
      out = self.model(input_ids=x, attention_mask=(x != 0).long(),
                       labels=t.from_numpy(batch.labels))
    out.loss.backward()
    self.opt.step()
    self.sched.step()
    self.opt.zero_grad(set_to_none=True)
    return float(out.loss.detach())

  def snapshot(self) -> dict:
    return {k: v.detach().clone() for k, v in
            self.model.state_dict().items()}

  def generate(self, params: dict, encoded: Sequence[Sequence[int]], *,
               batch_size: int = 32, beam_size: int = 1, alpha: float = 1.0,
               max_length: int = 64) -> list[list[int]]:
    """Output ids (up to EOS) for encoded sources, in length-sorted batches
    as `translation.translate.Translator` makes them; HF's length penalty
    `alpha` for beams."""
    t = self.torch
    live = self.snapshot()
    self.model.load_state_dict(params)
    self.model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[list[int]] = [[] for _ in encoded]
    try:
      for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        x = np.full((len(idx), max(len(encoded[i]) for i in idx)), self.pad,
                    np.int64)
        for r, i in enumerate(idx):
          x[r, :len(encoded[i])] = encoded[i]
        x = t.from_numpy(x)
        kw = dict(num_beams=beam_size, do_sample=False,
                  max_new_tokens=max_length)
        if beam_size > 1:
          kw.update(length_penalty=alpha, early_stopping='never')
        with t.no_grad(), t.autocast('cpu', dtype=t.bfloat16,
                                     enabled=self.autocast):
          ys = self.model.generate(input_ids=x,
                                   attention_mask=(x != self.pad).long(), **kw)
        for r, i in enumerate(idx):
          ids = ys[r, 1:].tolist()     # drop the decoder start token
          if self.eos in ids:
            ids = ids[:ids.index(self.eos)]
          out[i] = [k for k in ids if k != self.pad]
    finally:
      self.model.load_state_dict(live)
      self.model.train()
    return out


# --------------------------------------------------- the peer's process ---
def serve(conn, init: dict, marks_s: Sequence[float], max_tokens: int,
          seed: int, core: int | None = None):
  """The child process: (command, args) in, one reply out per command.

    ('feed', examples)            -> buffered example count
    ('train', until_s)            -> (ran_out_of_input, clock state)
    ('mark', budget_s)            -> clock state, after a snapshot now
    ('generate', (snap, ids, kw)) -> output id lists
    ('close', None)               -> None, and the process ends
  """
  try:
    pin(core)
    peer = HFPeer(**init)
    batcher = TokenBatcher(max_tokens, seed=seed)
    clock = BudgetClock(marks_s)
    conn.send(('ready', dict(num_params=peer.num_params,
                             untied=peer.untied)))
  except Exception as e:  # the parent re-raises it
    conn.send(('error', repr(e)))
    return

  def step():
    batch = batcher.next()
    if batch is None:
      return None
    return peer.train_step(batch), batch.target_tokens

  while True:
    cmd, arg = conn.recv()
    try:
      if cmd == 'feed':
        batcher.add(arg)
        reply = len(batcher.buffer)
      elif cmd == 'train':
        fed = clock.run(step, peer.snapshot, arg)
        reply = (not fed, dict(clock.state(), buffered=len(batcher.buffer)))
      elif cmd == 'mark':
        clock.mark(arg, peer.snapshot)
        reply = dict(clock.state(), buffered=len(batcher.buffer))
      elif cmd == 'generate':
        snap, encoded, kw = arg
        reply = peer.generate(clock.payloads[snap], encoded, **kw)
      elif cmd == 'close':
        conn.send(('ok', None))
        return
      else:
        raise ValueError(f'unknown command {cmd!r}')
      conn.send(('ok', reply))
    except Exception as e:
      conn.send(('error', repr(e)))
