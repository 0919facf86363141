"""benchmarks/nmt_quality.py's bookkeeping, without training anything: the
CPU-time budget clock, the peer's length-bucketed batches, the rounds (and
the deadline's extra common mark), and the results table."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import hf_t5_peer  # noqa: E402
from benchmarks import nmt_quality  # noqa: E402


def _burn(seconds):
  """Spends about `seconds` of CPU time."""
  end = time.process_time() + seconds
  x = 0
  while time.process_time() < end:
    x += 1
  return x


def test_budget_clock_counts_cpu_seconds_and_snapshots_at_marks():
  clock = hf_t5_peer.BudgetClock([0.05, 0.1])
  saved = []

  def step():
    _burn(0.01)
    return 1.0, 7

  def snapshot():
    saved.append(clock.steps)
    return {'step': clock.steps}

  assert clock.run(step, snapshot, until_s=0.06)
  assert 0.06 <= clock.clock < 0.1 and len(clock.snaps) == 1
  # Waiting (for a core, here for a timer) is not training: a step that
  # sleeps 20 ms and computes 5 ms adds ~5 ms to the clock, 25 to wall.
  sleepy = hf_t5_peer.BudgetClock([1.0])

  def sleepy_step():
    time.sleep(0.02)
    _burn(0.005)
    return 1.0, 1

  sleepy.run(sleepy_step, snapshot, until_s=0.02)
  assert sleepy.wall > 3 * sleepy.clock
  assert clock.run(step, snapshot, until_s=10.0)
  assert clock.done and len(clock.snaps) == 2
  assert [s['budget_min'] for s in clock.snaps] == [0.05 / 60, 0.1 / 60]
  assert clock.snaps[1]['target_tokens'] == 7 * clock.snaps[1]['step']
  assert clock.payloads == [{'step': s} for s in saved]
  # Out of input: run says so and keeps its state.
  clock2 = hf_t5_peer.BudgetClock([1.0])
  assert not clock2.run(lambda: None, snapshot, until_s=1.0)
  assert clock2.steps == 0


def test_token_batcher_respects_the_padded_budget():
  rng = np.random.default_rng(0)
  b = hf_t5_peer.TokenBatcher(max_tokens=64, pool_examples=50, seed=0)
  assert b.next() is None                 # needs a full pool first
  ex = [(list(range(1, 1 + rng.integers(1, 16))),
         list(range(1, 1 + rng.integers(1, 16)))) for _ in range(50)]
  b.add(ex)
  seen = 0
  while (batch := b.next()) is not None:
    n, w = batch.input_ids.shape
    assert n * max(w, batch.labels.shape[1]) <= 64 or n == 1
    assert (batch.labels[batch.labels < 0] == -100).all()
    seen += n
  assert seen == 50 and not b.buffer


class _FakeSystem:
  """start/finish/mark like nmt_quality's systems, on a simulated clock."""

  def __init__(self, marks, per_step):
    self.clock = hf_t5_peer.BudgetClock(marks)
    self.per_step = per_step

  def start(self, until_s):
    self.until = until_s

  def finish(self):
    while not self.clock.done and self.clock.clock < self.until:
      self.clock.clock += self.per_step       # simulated CPU seconds
      self.clock.wall += 2 * self.per_step
      self.clock.steps += 1
      self.clock.tokens += 10
      self.clock.recent = [2.0]
      marks = self.clock.marks
      if (len(self.clock.snaps) < len(marks)
          and self.clock.clock >= marks[len(self.clock.snaps)]):
        self.clock.mark(marks[len(self.clock.snaps)], lambda: None)
    return self.clock.state()

  def mark(self, budget_s):
    self.clock.mark(budget_s, lambda: None)
    return self.clock.state()


def _args(**kw):
  args = nmt_quality.parse_args(['--budgets', '1,2', '--chunk_s', '30'])
  for k, v in kw.items():
    setattr(args, k, v)
  return args


def test_rounds_reach_every_mark_on_both_systems():
  args = _args()
  systems = {'rosetta': _FakeSystem(args.budget_s, 1.0),
             'peer': _FakeSystem(args.budget_s, 0.7)}
  snaps = nmt_quality.train(systems, args, lambda m: None)
  for k in systems:
    assert [s['budget_min'] for s in snaps[k]] == [1.0, 2.0]
    assert abs(snaps[k][0]['cpu_s_per_wall_s'] - 0.5) < 1e-9


def test_deadline_adds_one_common_mark():
  args = _args(deadline=time.time() - 1)       # already passed
  systems = {'rosetta': _FakeSystem(args.budget_s, 1.0),
             'peer': _FakeSystem(args.budget_s, 0.7)}
  # Nothing trained yet: no marks at all.
  assert nmt_quality.train(systems, args, lambda m: None) == {
      'rosetta': [], 'peer': []}
  # After one round (30 s), the deadline leaves a 0.5 min mark on both.
  args = _args()
  systems = {'rosetta': _FakeSystem(args.budget_s, 1.0),
             'peer': _FakeSystem(args.budget_s, 0.7)}
  calls = []

  def log(msg):
    calls.append(msg)
    if msg.startswith('clock'):
      args.deadline = time.time() - 1
  snaps = nmt_quality.train(systems, args, log)
  assert [s['budget_min'] for s in snaps['rosetta']] == [0.5]
  assert [s['budget_min'] for s in snaps['peer']] == [0.5]
  assert any(m.startswith('deadline') for m in calls)


def test_table_has_ratio_and_averages():
  rows = []
  for k, chrf in (('rosetta', 30.0), ('peer', 20.0)):
    for d in ('de-en', 'en-de'):
      rows.append(dict(system=k, budget_min=5.0, corpus='tatoeba',
                       direction=d, n=10, chrf=chrf, bleu=chrf / 3,
                       sample='x'))
  snap = dict(budget_min=5.0, step=10, train_s=300.0, wall_s=600.0,
              target_tokens=3000, loss=2.0, cpu_s_per_wall_s=0.5)
  text = nmt_quality.table(rows, {'rosetta': [snap], 'peer': [snap]},
                           ['rosetta', 'peer'])
  assert '| tatoeba | de-en | 5 | 30.0 | 10.0 | 20.0 | 6.7 | 1.50x |' in text
  assert '| **avg tatoeba xx->en** |  | 5 | 30.0' in text
  assert '| Rosetta | 5 | 10 | 3,000 | 10 | 2.000 | 10.0 | 0.50 |' in text


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
  """Both systems train 0.5 and 1 CPU minute on Tatoeba de<->en and are
  scored on 8 sentences per direction and corpus (~5-7 min on 2 cores)."""
  from rosetta.data import corpora as sources
  if not (sources.available('tatoeba') and sources.available('flores')):
    pytest.skip('needs tatoeba_v2021 and flores200_devtest')
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  out = tmp_path / 'results.json'
  p = subprocess.run(
      [sys.executable, '-m', 'benchmarks.nmt_quality',
       '--quick', '--languages', 'de', '--workdir', str(tmp_path),
       '--output', str(out)],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  res = json.loads(out.read_text())
  assert {r['system'] for r in res['results']} == {'rosetta', 'peer'}
  assert {r['budget_min'] for r in res['results']} == {0.5, 1.0}
  assert len(res['results']) == 2 * 2 * 4     # systems x marks x sets
  assert '| **avg all** |' in res['table']
