"""The sentence-transformers peer of benchmarks/retrieval_quality.py.

The same T5.1.1 encoder as HF `T5EncoderModel` (+ sentence-transformers
mean Pooling and Normalize), the same SentencePiece vocabulary as a
`tokenizers` tokenizer, the same initial weights, trained with the
library's MultipleNegativesRankingLoss. Run as a child process by the
benchmark:

    python -m benchmarks.retrieval_peer CONFIG.json   # written by it
"""

from __future__ import annotations

import json
import os
import sys
import time

from benchmarks.hf_t5_peer import BudgetClock  # noqa: E402  (numpy only)


def write_json(path: str, payload) -> None:
  from rosetta.run import files
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  text = json.dumps(payload, indent=1, ensure_ascii=False)
  files.atomic_write_text(path, text)


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


def build_init(t5_config, out_dir: str, seed: int) -> int:
  """HF T5EncoderModel with HF's T5 initialisation: both systems' start
  (Rosetta loads it with `train.init_from_hf`)."""
  import torch
  import transformers
  from rosetta.checkpoint.hf import config_to_hf
  hf = config_to_hf(t5_config)
  hf['architectures'] = ['T5EncoderModel']
  torch.manual_seed(seed)
  model = transformers.T5EncoderModel(transformers.T5Config(**hf))
  model.save_pretrained(out_dir)
  return sum(p.numel() for p in model.parameters())


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


def train(config_path: str) -> int:
  """The peer's training (a child process: its own threads and clock).

  sentence-transformers 6.2's `SentenceTransformerTrainer` needs the
  `datasets` and `accelerate` packages, which this environment does not
  have; this is the library's own pre-v3 `fit` loop (`old_fit`: its
  `smart_batching_collate`, the loss module, torch AdamW, its
  'warmupconstant' scheduler, `clip_grad_norm_`) stopped by a budget of
  process CPU seconds (benchmarks/hf_t5_peer.py's `BudgetClock`, as in
  benchmarks/nmt_quality.py: waiting for a core does not count; collate
  and tokenisation do, being inside the step), NO_DUPLICATES batches and,
  when hard negatives are on, PROPORTIONAL sampling between the pairs-only
  and the triples dataset (one source per batch, as the library's trainer
  does)."""
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
  hist = []
  clock = BudgetClock([c['cpu_budget_s']])

  def step():
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
    hist.append(float(value))
    if len(hist) % 10 == 0:
      print(f'step {len(hist)} loss {np.mean(hist[-10:]):.4f} '
            f'{time.process_time() - cpu0:.1f} CPU s', flush=True)
    return hist[-1], len(batch)

  cpu0, start = time.process_time(), time.time()
  clock.run(step, lambda: None, until_s=c['cpu_budget_s'])
  loop_s = time.time() - start
  print(f'CPU budget of {c["cpu_budget_s"]:g} CPU s reached at step '
        f'{clock.steps} ({clock.clock:.1f} CPU s in steps, '
        f'{time.process_time() - cpu0:.1f} CPU s, {loop_s:.1f} s wall)',
        flush=True)
  model.save(os.path.join(c['out_dir'], 'model'))
  write_json(os.path.join(c['out_dir'], 'train_log.json'), dict(
      steps=clock.steps, loop_s=loop_s, examples=clock.tokens,
      train_cpu_s=clock.clock, loop_cpu_s=time.process_time() - cpu0,
      source_rows=[len(s) for s in sources],
      loss_first=float(np.mean(hist[:10])),
      loss_last=float(np.mean(hist[-20:])), loss=hist))
  return 0


def encoder(model_dir: str, max_length: int, batch_size: int,
            tok_dir: str | None = None):
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
  return fn


if __name__ == '__main__':
  sys.exit(train(sys.argv[1]))
