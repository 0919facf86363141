"""Foundation demo: the smallest real end-to-end job the core package runs.

On 8 devices (simulated on CPU when there is no accelerator) it:
1. reads English->X pairs from Django's .po files (real UI strings, shipped
   with the package registry's Django, so no data download is needed);
2. builds a small byte-level T5.1.1 (ByT5-style vocabulary from seqio) with
   every parameter created already sharded over a (data=4, model=2) mesh;
3. trains it for a bounded time with AdamW under jit, batch sharded over
   `data`, and prints loss and tokens/s;
4. greedy-decodes a few training sentences;
5. exports the weights as an HF safetensors checkpoint, re-imports them
   (exact round trip) and, when transformers is installed, checks that HF's
   PyTorch T5 gives the same logits.

    python -m rosetta.demo --seconds 120

It is superseded as the README's main job by the multilingual NMT trainer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _ensure_devices(n: int = 8):
  """Simulate n CPU devices when running on a plain CPU machine."""
  if 'jax' in sys.modules:
    return
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_force_host_platform_device_count' not in flags:
    os.environ['XLA_FLAGS'] = (
        flags + f' --xla_force_host_platform_device_count={n}')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=120.0,
                      help='training time budget (default 120)')
  parser.add_argument('--languages', default='fr,de,es',
                      help='target languages (Django locale codes)')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--max_length', type=int, default=48)
  parser.add_argument('--output_dir', default='outputs/demo')
  args = parser.parse_args(argv)
  _ensure_devices()

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from rosetta import checkpoint_import, partitioning
  from rosetta.encoder_decoder import EncoderDecoder, T5Config
  from translation import django_po

  # Byte vocabulary as in ByT5/seqio.ByteVocabulary: id = byte + 3, 1 = EOS.
  def encode(text):
    return [b + 3 for b in text.encode('utf-8')][:args.max_length - 1] + [1]

  def decode(ids):
    out = []
    for i in ids:
      if i == 1:
        break
      if i >= 3:
        out.append(i - 3)
    return bytes(out).decode('utf-8', errors='replace')

  print(f'devices: {len(jax.devices())} x {jax.devices()[0].platform}')
  langs = args.languages.split(',')
  pairs = django_po.django_pairs(langs)
  examples = [(f'<2{lang}> {en}', x) for lang in langs
              for en, x in pairs.get(lang, [])
              if len(en.encode()) < args.max_length - 8 and
              len(x.encode()) < args.max_length - 1]
  if not examples:
    raise SystemExit(f'no Django pairs for languages {langs}')
  print(f'data: {len(examples)} Django .po pairs, English -> {langs}')

  def pad(seqs):
    out = np.zeros((len(seqs), args.max_length), np.int32)
    for i, s in enumerate(seqs):
      out[i, :len(s)] = s
    return out

  rng = np.random.default_rng(0)
  mesh = partitioning.make_mesh(data=4, model=2)
  part = partitioning.Partitioner(mesh)
  cfg = T5Config(vocab_size=384, emb_dim=128, num_heads=4, head_dim=32,
                 mlp_dim=256, num_encoder_layers=3, num_decoder_layers=3,
                 dropout_rate=0.0)
  model = part.create_sharded(lambda: EncoderDecoder(cfg, rngs=nnx.Rngs(0)))
  n_params = sum(v.get_value().size for _, v in
                 nnx.to_flat_state(nnx.state(model, nnx.Param)))
  print(f'model: {n_params / 1e6:.2f}M parameters, mesh '
        f'{dict(mesh.shape)}; e.g. query kernel sharded as '
        f'{model.encoder.layers[0].attention.query[...].sharding.spec}')
  optimizer = nnx.Optimizer(model, optax.adamw(3e-3), wrt=nnx.Param)
  batch_sharding = part.sharding(('activation_batch', 'activation_length'))

  def make_batch(idx):
    src = pad([encode(examples[i][0]) for i in idx])
    tgt = pad([encode(examples[i][1]) for i in idx])
    dec_in = np.concatenate([np.zeros_like(tgt[:, :1]), tgt[:, :-1]], 1)
    return [jax.device_put(a, batch_sharding) for a in (src, dec_in, tgt)]

  with part.activate():
    @nnx.jit(donate_argnums=(0, 1))
    def train_step(model, optimizer, src, dec_in, tgt):
      def loss_fn(model):
        logits = model(src, dec_in, tgt)
        mask = tgt > 0
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
        return (ce * mask).sum() / mask.sum()
      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    start, step, tokens = time.time(), 0, 0
    while time.time() - start < args.seconds:
      idx = rng.choice(len(examples), args.batch_size, replace=False)
      src, dec_in, tgt = make_batch(idx)
      loss = train_step(model, optimizer, src, dec_in, tgt)
      step += 1
      tokens += int((np.asarray(tgt) > 0).sum())
      if step % 50 == 0 or step == 1:
        elapsed = time.time() - start
        print(f'step {step:5d}  loss {float(loss):.3f}  '
              f'{tokens / elapsed:,.0f} target tokens/s')

    # Greedy decoding with the KV cache, one token at a time.
    @nnx.jit
    def greedy(model, src):
      model.init_cache(model.encode(src), src, args.max_length)
      tok = jnp.zeros((src.shape[0], 1), jnp.int32)
      out = []
      for _ in range(args.max_length):
        logits, _ = model.decode_step(tok)
        tok = jnp.argmax(logits, -1).astype(jnp.int32)
        out.append(tok)
      return jnp.concatenate(out, 1)

    sample = [examples[i] for i in rng.choice(len(examples), 8,
                                              replace=False)]
    src = jax.device_put(pad([encode(s) for s, _ in sample]), batch_sharding)
    decoded = np.asarray(greedy(model, src))
  print('\nsamples (greedy, training sentences):')
  for (s, ref), ids in list(zip(sample, decoded))[:4]:
    print(f'  {s}\n    -> {decode(ids)}\n    ref {ref}')

  out = os.path.abspath(os.path.join(args.output_dir, f'hf-{int(time.time())}'))
  checkpoint_import.export_hf_checkpoint(model, out)
  again = checkpoint_import.import_hf_checkpoint(out, partitioner=part)
  a = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  exact = all(np.array_equal(np.asarray(v.get_value()),
                             np.asarray(a[p].get_value()))
              for p, v in nnx.to_flat_state(nnx.state(again, nnx.Param)))
  print(f'\nexported HF checkpoint to {out}; re-import exact: {exact}')
  try:
    import torch
    import transformers
  except ImportError:
    print('transformers not installed: skipping the HF cross-check')
    return 0 if exact else 1
  hf = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  src_np, dec_np, tgt_np = (np.asarray(x) for x in make_batch(range(8)))
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(src_np, dtype=torch.long),
             attention_mask=torch.tensor(src_np > 0, dtype=torch.long),
             decoder_input_ids=torch.tensor(dec_np, dtype=torch.long)
             ).logits.numpy()
  ours = np.asarray(model(jnp.asarray(src_np), jnp.asarray(dec_np),
                          jnp.asarray(tgt_np)))
  diff = np.abs(ours - ref)[tgt_np > 0].max()
  print(f'HF transformers T5 on the exported weights: max |logit diff| '
        f'{diff:.2e}')
  return 0 if exact and diff < 1e-3 else 1


if __name__ == '__main__':
  sys.exit(main())
