"""benchmarks/generative_retrieval.py's bookkeeping, without training: the
order systems run in, the --stop-at clock and the table's row order."""

import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'benchmarks'))

import generative_retrieval as gr  # noqa: E402


def test_systems_order_and_kinds():
  args = gr.parse_args(['--quick'])
  # The key rows run first, so a --stop-at cut drops the others.
  assert args.systems[:2] == ['semantic+syn', 'atomic']
  assert set(args.kinds) == set(gr.KINDS)
  args = gr.parse_args(['--systems', 'atomic+syn', 'atomic'])
  assert args.kinds == ['atomic']
  assert args.budget_minutes == 10.0 and args.query_length == 24


def test_time_left():
  args = gr.parse_args([])
  assert gr.time_left_s(args) == float('inf')
  now = time.gmtime(time.time() + 3600)
  args = gr.parse_args(['--stop-at', f'{now.tm_hour:02d}:{now.tm_min:02d}'])
  left = gr.time_left_s(args)
  if now.tm_hour >= time.gmtime().tm_hour:   # not across midnight
    assert 3540 <= left <= 3600


def test_table_rows_in_canonical_order():
  m = {'Hits@1': 0.5, 'Hits@10': 0.75, 'MRR@10': 0.6, 'queries': 3}
  res = {'xquad': {'DSI semantic + synthetic': {'en': m, 'average': m},
                   'BM25': {'en': m, 'average': m},
                   'DSI atomic': {'en': m, 'average': m}},
         'cranfield': {'BM25': {'en': m, 'average': m}}}
  lines = gr.table(res, ['en']).splitlines()
  rows = [l.split('|')[1].strip() for l in lines[2:]]
  assert rows == ['BM25'] * 3 + ['DSI atomic'] * 3 + [
      'DSI semantic + synthetic'] * 3
  assert lines[2] == '| BM25 | Hits@1 | 0.500 | **0.500** | 0.500 |'
  assert lines[5].endswith('| 0.500 | **0.500** |  |')
  # Without Cranfield results, no Cranfield column.
  del res['cranfield']
  assert gr.table(res, ['en']).splitlines()[0] == (
      '| system | metric | en | avg |')
