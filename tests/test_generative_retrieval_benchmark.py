"""benchmarks/generative_retrieval.py's bookkeeping, without training: the
order systems run in, the --stop-at clock and the table's row order."""

import os
import sys
import time

import gin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import generative_retrieval as gr  # noqa: E402


def test_systems_order_and_kinds():
  args = gr.parse_args(['--quick'])
  # The key rows run first, so a --stop-at cut drops the others.
  assert args.systems[:2] == ['semantic+syn', 'atomic']
  assert set(args.kinds) == set(gr.KINDS)
  args = gr.parse_args(['--systems', 'atomic+syn', 'atomic'])
  assert args.kinds == ['atomic']
  assert args.budget_minutes == 10.0 and args.query_length == 24


def test_paths_are_absolute():
  """Orbax refuses relative checkpoint paths: the default --out
  (runs/generative_retrieval) failed at the dual encoder's first save."""
  args = gr.parse_args([])
  assert args.out == os.path.join(os.getcwd(), 'runs/generative_retrieval')
  args = gr.parse_args(['--out', 'x/y', '--dual-encoder', 'runs/de'])
  assert os.path.isabs(args.out) and os.path.isabs(args.dual_encoder)
  assert args.dual_encoder.endswith('runs/de')


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


def test_cranfield_only_table_has_no_xquad_columns():
  """`--corpora cranfield`: the table had an empty XQuAD 'avg' column
  (and an empty bold cell in every row) before the Cranfield one."""
  m = {'Hits@1': 0.25, 'Hits@10': 0.5, 'MRR@10': 0.375, 'queries': 65}
  res = {'cranfield': {'BM25': {'en': m, 'average': m},
                       'DSI naive': {'en': m, 'average': m}}}
  lines = gr.table(res, []).splitlines()
  assert lines[0] == '| system | metric | Cranfield |'
  assert lines[1] == '|---|---|---:|'
  assert lines[2] == '| BM25 | Hits@1 | 0.250 |'
  assert lines[-1] == '| DSI naive | MRR@10 | 0.375 |'


def test_learning_rate_default_and_binding(monkeypatch, tmp_path):
  """AdamW at 3e-3 (the old hard-coded rate) left DSI at chance; the
  default is 1e-3 and --lr reaches the trainer's schedule."""
  assert gr.parse_args([]).lr == 1e-3
  assert gr.parse_args(['--lr', '5e-4']).lr == 5e-4
  seen = {}

  def fake_train(config_text=''):
    del config_text
    seen['lr'] = gin.query_parameter('optimizers.learning_rate_schedule.base')
    seen['steps'] = gin.query_parameter('train.total_steps')
  monkeypatch.setattr(gr.runs, 'train', fake_train)
  gr.train('dsi/xquad_atomic_tiny.gin', [], str(tmp_path / 'm'), 1.0, 32,
           steps=7, lr=5e-4)
  assert seen == {'lr': 5e-4, 'steps': 7}
