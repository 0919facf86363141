"""benchmarks/retrieval_quality.py's bookkeeping, without training: the
peer's NO_DUPLICATES batches, the SentencePiece -> `tokenizers` conversion
(token-for-token parity with seqio), the per-family summary and table,
the passage index and the hybrid (BM25 + dense) rows."""

import json
import os
import sys

import numpy as np
import pytest

from retrieval import datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import retrieval_eval  # noqa: E402
from benchmarks import retrieval_peer  # noqa: E402
from benchmarks import retrieval_quality  # noqa: E402


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


def test_vocabulary_text_holds_the_ict_corpora():
  from retrieval import datasets
  texts = retrieval_quality.training_texts(dict(
      tatoeba_languages=[], xquad_pairs=[], ict_corpora=['cranfield']))
  assert list(texts) == ['en']
  doc = datasets.cranfield().docs[0]
  assert retrieval_quality._sentences(doc)[0] in texts['en']


def test_cpu_budget_bookkeeping():
  """Rosetta's loop clock comes from `rosetta.run.runs.train`'s last line, and
  the training table shows each system's CPU s, wall s, steps, examples."""
  text = ('step 450/100000  loss 1.7\nCPU budget of 480 CPU s reached at '
          'step 450 (481.3 CPU s, 903.5 s wall)\n'
          'done: step 450 (training loop: 481.4 CPU s, 903.9 s wall)\n')
  clock = retrieval_quality.rosetta_loop_clock(text)
  assert clock == {'train_cpu_s': 481.4, 'train_wall_s': 903.9}
  res = dict(budget_s=480.0, steps=450, examples=14400, loss_first=4.3,
             loss_last=2.07, cpu_s=530.0, wall_s=990.0, **clock)
  table = retrieval_quality.training_table(
      {'rosetta': res, 'st': dict(res, train_cpu_s=480.2, steps=500,
                                  examples=16000)}).split('\n')
  assert len(table) == 4 and '| examples |' in table[0]
  assert table[2] == ('| Rosetta | 480 | 481.4 | 904 | 0.53 | 450 | 14,400 | '
                      '29.9 | 4.30 / 2.07 | 530 / 990 |')
  assert table[3].startswith('| sentence-transformers | 480 | 480.2 |')
  args = retrieval_quality.parse_args(['--budget-minutes', '8'])
  cmd = retrieval_quality.rosetta_command(args, '/r', '/v', '/i', 480.0)
  assert '--gin.train.cpu_budget_s=480.0' in cmd
  assert not any('time_budget_s' in c for c in cmd)


def test_passage_index_finds_what_the_first_window_cannot(tmp_path):
  """evaluate_all with passages: a document whose matching words lie past
  its first window is found by its best window (MaxP), not by the
  first-window row. The encoder is a hashed bag of words over the same
  SentencePiece pieces (an exact-match scorer, so the ranking is known)."""
  import sentencepiece as spm
  from rosetta import vocab as vocab_lib
  from retrieval import datasets
  from retrieval.search import passages
  filler = 'alpha beta gamma delta epsilon zeta eta theta'.split()
  text = [' '.join(filler[(i + j) % 8] for j in range(i % 6 + 2))
          for i in range(200)] + ['Katze Hund Maus'] * 5
  path = vocab_lib.train_sentencepiece(text, str(tmp_path / 'spm.model'),
                                       vocab_size=280)
  sp = spm.SentencePieceProcessor(model_file=path)

  def encode(texts):
    out = np.zeros((len(texts), 512), np.float32)
    for r, t in enumerate(texts):
      for i in sp.encode(t)[:16]:             # the encoder's length
        out[r, i] += 1.0
      out[r] /= max(np.linalg.norm(out[r]), 1e-6)
    return out
  docs = tuple(' '.join(filler * 4) + (' Katze Hund Maus' if d == 3 else '')
               for d in range(6))
  rs = datasets.RetrievalSet('toy', ('q',), ('Katze Hund Maus',),
                             tuple(f'd{i}' for i in range(6)), docs,
                             {'q': {'d3': 1}})
  system = retrieval_eval.DenseSystem('init', {'query': encode,
                                               'doc': encode})
  metrics, _ = retrieval_eval.evaluate_all(     # 'init': no hubness rows
      {'init': system}, {'toy': ('xquad_same', rs, rs.queries, 'en')},
      str(tmp_path / 'out'), 20.0, lambda msg: None,
      passage_vocab=path, passage_tokens=15)
  label = retrieval_eval.DENSE_LABEL['init']
  assert metrics[label]['toy']['Hits@1'] == 1.0
  assert metrics[label + retrieval_eval.FIRST_WINDOW]['toy']['Hits@1'] == 0.0
  windows = passages.split(docs, path, 15).texts
  assert len(windows) > 2 * len(docs)
  assert system.encoded == len(set(docs) | set(windows)) + 1  # each once


@pytest.mark.skipif(not datasets.available('xquad'),
                    reason='needs XQuAD')
def test_hybrid_rows_tuned_on_training_questions(tmp_path):
  """BM25 + a dense system: the CombSUM weights come from the XQuAD
  TRAINING questions (fusion_weights.json), the hybrid rows' TREC runs are
  exactly retrieval.search.fusion over the two systems' test runs. The dense
  system is a hashed bag of words (real text, a known weak scorer)."""
  import zlib
  from retrieval.search import bm25
  from retrieval.search import fusion
  from retrieval.search import ir_metrics
  from retrieval.search import exact as search

  def encode(texts):
    out = np.zeros((len(texts), 256), np.float32)
    for r, t in enumerate(texts):
      for w in t.lower().split():
        out[r, zlib.crc32(w.encode()) % 256] += 1.0
      out[r] /= max(np.linalg.norm(out[r]), 1e-6)
    return out
  rs = datasets.xquad('en', corpus='en', split='test')
  bank = datasets.xquad('en', corpus='en', split='train').queries
  out = str(tmp_path / 'out')
  metrics, _ = retrieval_eval.evaluate_all(
      {'bm25': None, 'rosetta': retrieval_eval.DenseSystem(
          'rosetta', {'query': encode, 'doc': encode})},
      {'xquad_en-en': ('xquad_same', rs, bank, 'en')}, out, 20.0,
      lambda msg: None)
  with open(os.path.join(out, 'fusion_weights.json')) as f:
    record = json.load(f)['rosetta']
  assert record['queries'] == len(bank)
  w = record['weights']
  assert sum(w) == pytest.approx(1) and len(record['table']) == 21
  assert max(v for _, v in record['table']) >= record['table'][-1][1]
  # the hybrid TREC runs are retrieval.search.fusion over the scored test runs
  hits = bm25.BM25Index(rs.docs, lang='en').search(rs.queries, 100)
  dense = search.search(search.shard_corpus(encode(rs.docs)),
                        encode(rs.queries), 100)
  pair = [ir_metrics.run_from_topk(r.indices, rs.query_ids, rs.doc_ids,
                                   scores=r.scores) for r in (hits, dense)]
  for name, want in (('bm25_rosetta_rrf', fusion.rrf(pair, k=100)),
                     ('bm25_rosetta_combsum_tuned', fusion.combsum(
                         pair, w, norm='minmax', k=100))):
    got = ir_metrics.read_run(os.path.join(out, 'trec', name,
                                           'xquad_en-en.trec'))
    assert got.keys() == want.keys()
    for q in want:
      assert list(got[q]) == list(want[q])
      np.testing.assert_allclose(list(got[q].values()),
                                 list(want[q].values()), rtol=1e-6)
  for label in ('BM25', 'Rosetta', 'BM25 + Rosetta (RRF)',
                'BM25 + Rosetta (CombSUM, tuned)'):
    assert 0.0 < metrics[label]['xquad_en-en']['MRR@10'] <= 1.0
  hybrid = metrics['BM25 + Rosetta (CombSUM, tuned)']['xquad_en-en']
  assert hybrid['MRR@10'] > metrics['Rosetta']['xquad_en-en']['MRR@10']
