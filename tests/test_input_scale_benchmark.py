"""benchmarks/input_scale.py end to end on tiny corpora: every system runs
in its own process and the tables hold measured numbers."""

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import input_scale
from rosetta.data import corpora

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = r'[0-9][0-9,]*(\.[0-9]+)?'


def test_sizes():
  assert [input_scale.parse_size(s) for s in ('10k', '1M', '2500', '0.5k')
          ] == [10_000, 1_000_000, 2500, 500]
  assert [input_scale.size_name(n) for n in (10_000, 10**7, 2500)] == [
      '10k', '10M', '2500']


@pytest.mark.slow  # five child processes, a train step measured too
@pytest.mark.skipif(not corpora.available('tatoeba'),
                    reason='no Tatoeba Challenge files in the data dir')
def test_quick_run_prints_measured_tables(tmp_path):
  out = tmp_path / 'rows.json'
  cmd = [sys.executable, '-m', 'benchmarks.input_scale', '--quick',
         '--sizes', '1k', '2k', '--systems', 'streaming', 'beam cache',
         '--cache_max_lines', '1k', '--seconds', '1', '--train_steps', '1',
         '--vocab_size', '500',
         '--work_dir', str(tmp_path / 'work'), '--json', str(out)]
  done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  text = done.stdout
  rows = [l for l in text.splitlines() if re.match(r'\| [0-9,]+ \| ', l)]
  systems = [(r.split('|')[1].strip(), r.split('|')[2].strip())
             for r in rows if len(r.split('|')) == 10]
  assert systems == [('1,000', 'streaming'), ('1,000', 'beam cache'),
                     ('2,000', 'streaming'), ('2,000', 'beam cache')]
  assert 'not cached (> --cache_max_lines)' in rows[3]
  for r in rows[:3] + rows[4:]:
    cells = [c.strip() for c in r.split('|')[1:-1]]
    numbers = cells[2:] if len(cells) == 8 else cells[1:]
    for c in numbers:
      assert re.fullmatch(NUMBER + 'x?', c), (c, r)
  assert re.search(r'streaming peak RSS 1k -> 2k lines: \*\*' + NUMBER
                   + r'x\*\* \(target <= 1.2x\)', text), text
  assert re.search(r'train step \(nmt_cpu_small\): ' + NUMBER
                   + r' steps/s = ' + NUMBER + r' examples/s', text), text
  assert 'malloc: ' in text and 'cores' in text
  result = json.loads(out.read_text())
  for r in result['rows']:
    if r.get('skipped'):
      continue
    assert r['examples_per_s'] > 0 and r['peak_rss_mib'] > 100
    assert r['examples_per_batch'] >= 16   # packed: >= 1 example a row
  assert result['train']['steps_per_s'] > 0
  assert [c['built'] for c in result['caches']] == [True]
