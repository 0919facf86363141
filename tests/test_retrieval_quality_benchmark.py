"""benchmarks/retrieval_quality.py's bookkeeping, without training: the
peer's NO_DUPLICATES batches, the SentencePiece -> `tokenizers` conversion
(token-for-token parity with seqio), the per-family summary and table."""

import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import retrieval_eval  # noqa: E402
import retrieval_peer  # noqa: E402
import retrieval_quality  # noqa: E402


def test_no_duplicate_batches_never_repeat_a_text():
  rows = [{'q': f'q{i % 7}', 'p': f'p{i}', 'n': []} for i in range(40)]
  gen = retrieval_peer.no_duplicate_batches(rows, 5, np.random.default_rng(0))
  seen_rows = set()
  for _ in range(40):
    batch = next(gen)
    assert len(batch) == 5
    texts = [t for r in batch for t in [r['q'], r['p']] + r['n']]
    assert len(texts) == len(set(texts))
    seen_rows.update(r['p'] for r in batch)
  assert len(seen_rows) == 40       # every row comes round (reshuffled)


def test_hf_tokenizer_matches_seqio(tmp_path):
  from rosetta import vocab as vocab_lib
  words = ['alpha', 'beta', 'gamma', 'Haus', 'Katze', 'über', '猫', 'кошка']
  text = [' '.join(words[(i + j) % len(words)] for j in range(i % 5 + 1))
          for i in range(300)]
  path = vocab_lib.train_sentencepiece(text, str(tmp_path / 'spm.model'),
                                       vocab_size=288)
  tok = retrieval_peer.build_hf_tokenizer(path, str(tmp_path / 'hf'))
  sample = text[:50] + ['Katze über 猫', 'unseen ÿ word', '  two  spaces']
  parity = retrieval_peer.tokenizer_parity(path, tok, sample)
  assert parity['different'] == 0, parity['examples']


def test_summary_and_table():
  m = lambda x: {'Hits@1': x, 'MRR@10': x, 'nDCG@10': x, 'Recall@10': x}
  sets = {'a': ('flores_x2en', None, None, 'en'),
          'b': ('flores_x2en', None, None, 'en'),
          'c': ('cranfield', None, None, 'en')}
  metrics = {'BM25': {'a': m(0.2), 'b': m(0.4), 'c': m(0.3)},
             'Rosetta': {'a': m(0.1), 'b': m(0.3), 'c': m(0.5)}}
  summary = retrieval_eval.summarise(metrics, sets)
  assert np.isclose(summary['BM25']['flores_x2en']['Hits@1'], 0.3)
  table = retrieval_eval.markdown_table(summary).split('\n')
  assert table[0] == '| system | FLORES x->en acc | Cranfield nDCG@10 |'
  assert table[3] == '| Rosetta | 0.200 | 0.500 |'


def test_defaults_and_thread_env():
  args = retrieval_quality.parse_args(['--quick'])
  assert args.budget_minutes == 2.5 and args.pin
  assert args.systems == ['bm25', 'init', 'rosetta', 'st']
  env = retrieval_quality.thread_env(1)
  assert env['OMP_NUM_THREADS'] == '1'
  assert 'intra_op_parallelism_threads=1' in env['XLA_FLAGS']
