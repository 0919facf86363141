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

Batches: HF T5 has no packing (no segment ids), so the peer batches the way
HF / fairseq users do: examples bucketed by length (a pool of examples is
sorted, cut into batches, and the batches shuffled) and each batch padded to
its longest example, with at most `max_tokens` padded positions per side,
the same budget as Rosetta's packed `batch_size x length` rows.

transformers 5 ties lm_head to the embedding even with
tie_word_embeddings=False; the peer unties it by hand (a fresh Parameter,
std d_model**-0.5, as Rosetta initialises its output projection).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np


@dataclasses.dataclass
class PeerBatch:
  input_ids: np.ndarray       # (b, Li) int64, 0-padded
  labels: np.ndarray          # (b, Lt) int64, -100-padded (HF's ignore index)

  @property
  def target_tokens(self) -> int:
    return int((self.labels >= 0).sum())


def token_batches(examples: Iterator[dict], max_tokens: int, *,
                  pool_examples: int = 4096, seed: int = 0
                  ) -> Iterator[PeerBatch]:
  """Length-bucketed, padded batches of at most `max_tokens` positions per
  side from an endless iterator of {'inputs', 'targets'} token arrays."""
  rng = np.random.default_rng(seed)
  while True:
    pool = [next(examples) for _ in range(pool_examples)]
    pool.sort(key=lambda e: (max(len(e['inputs']), len(e['targets'])),
                             len(e['inputs'])))
    batches, cur, width = [], [], 0
    for ex in pool:
      w = max(width, len(ex['inputs']), len(ex['targets']))
      if cur and w * (len(cur) + 1) > max_tokens:
        batches.append(cur)
        cur, w = [], max(len(ex['inputs']), len(ex['targets']))
      cur.append(ex)
      width = w
    if cur:
      batches.append(cur)
    for i in rng.permutation(len(batches)):
      yield _pad(batches[i])


def _pad(examples: Sequence[dict]) -> PeerBatch:
  li = max(len(e['inputs']) for e in examples)
  lt = max(len(e['targets']) for e in examples)
  x = np.zeros((len(examples), li), np.int64)
  y = np.full((len(examples), lt), -100, np.int64)
  for r, e in enumerate(examples):
    x[r, :len(e['inputs'])] = e['inputs']
    y[r, :len(e['targets'])] = e['targets']
  return PeerBatch(x, y)


class HFPeer:
  """T5.1.1 in PyTorch, trained and decoded like Rosetta's model."""

  name = 'HF transformers (torch)'

  def __init__(self, cfg, *, lr: float, warmup_steps: int, threads: int,
               optimizer: str = 'adamw', seed: int = 0,
               init_from: dict | None = None):
    import torch
    import transformers
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if cfg.mlp_activations != ('gelu', 'linear') or cfg.tie_word_embeddings:
      raise ValueError('the peer is T5.1.1 (gated-GELU, untied); got '
                       f'{cfg.mlp_activations}, tied={cfg.tie_word_embeddings}')
    hf_cfg = transformers.MT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim,
        num_heads=cfg.num_heads, d_ff=cfg.mlp_dim,
        num_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        feed_forward_proj='gated-gelu', tie_word_embeddings=False,
        dropout_rate=cfg.dropout_rate,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        decoder_start_token_id=cfg.decoder_start_token_id,
        pad_token_id=cfg.pad_token_id, eos_token_id=cfg.eos_token_id)
    model = transformers.MT5ForConditionalGeneration(hf_cfg)
    if model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr():
      model.lm_head.weight = torch.nn.Parameter(
          torch.randn_like(model.shared.weight) * cfg.emb_dim ** -0.5)
      model.config.tie_word_embeddings = False
    if init_from is not None:   # e.g. Rosetta's initial weights, HF names
      state = {k: torch.from_numpy(np.array(v)) for k, v in init_from.items()}
      missing, unexpected = model.load_state_dict(state, strict=False)
      tied = {'encoder.embed_tokens.weight', 'decoder.embed_tokens.weight'}
      if set(missing) - tied or unexpected:
        raise ValueError(f'peer init: missing {sorted(set(missing) - tied)}, '
                         f'unexpected {sorted(unexpected)}')
    model.train()
    self.torch, self.model, self.cfg = torch, model, cfg
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
    self.autocast = cfg.dtype == 'bfloat16'
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

  def load(self, snapshot: dict):
    self.model.load_state_dict(snapshot)

  def translate(self, lines: Sequence[str], target_lang: str, vocabulary, *,
                batch_size: int = 32, beam_size: int = 1, alpha: float = 1.0,
                max_length: int = 64, max_input_length: int = 256
                ) -> list[str]:
    """Decodes like `translation.translate.Translator` (same encoding, same
    length-sorted batches; HF's length penalty `alpha` for beams)."""
    from translation import tasks
    t = self.torch
    eos, pad = self.cfg.eos_token_id, self.cfg.pad_token_id
    enc = [tasks.encode_source(vocabulary, s, target_lang)[
        :max_input_length - 1] + [eos] for s in lines]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out = [''] * len(lines)
    self.model.eval()
    try:
      for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        x = np.full((len(idx), max(len(enc[i]) for i in idx)), pad, np.int64)
        for r, i in enumerate(idx):
          x[r, :len(enc[i])] = enc[i]
        x = t.from_numpy(x)
        kw = dict(num_beams=beam_size, do_sample=False,
                  max_new_tokens=max_length)
        if beam_size > 1:
          kw.update(length_penalty=alpha, early_stopping='never')
        with t.no_grad(), t.autocast('cpu', dtype=t.bfloat16,
                                     enabled=self.autocast):
          ys = self.model.generate(input_ids=x,
                                   attention_mask=(x != pad).long(), **kw)
        for r, i in enumerate(idx):
          ids = ys[r, 1:].tolist()     # drop the decoder start token
          if eos in ids:
            ids = ids[:ids.index(eos)]
          out[i] = vocabulary.decode([k for k in ids if k != pad])
    finally:
      self.model.train()
    return out
