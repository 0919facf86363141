"""benchmarks/tpu_fit.py: a row compiled in a child process lands in the
JSON (resumable) and in the markdown table."""

import json

import pytest

from benchmarks import tpu_fit


@pytest.mark.slow
def test_one_row_compiles_in_a_child_and_is_tabled(tmp_path, capsys):
  out = tmp_path / 'fit.json'
  assert tpu_fit.main(['--only', 'dsi/xquad_atomic_tiny', '--targets',
                       'v5e-4', '--out', str(out)]) == 0
  (row,) = json.loads(out.read_text())
  assert row['config'] == 'dsi/xquad_atomic_tiny' and row['target'] == 'v5e-4'
  assert row['scanned_layers'] and row['fits'] and row['traced_ratio'] > 0.5
  table = capsys.readouterr().out
  assert '| dsi/xquad_atomic_tiny | v5e-4 | data=4 | scanned | ' in table
  # Resumed: the row is not compiled again.
  assert tpu_fit.main(['--only', 'dsi/xquad_atomic_tiny', '--targets',
                       'v5e-4', '--out', str(out)]) == 0
  assert '0 rows to compile' in capsys.readouterr().err


def test_a_dead_compiler_costs_one_row(monkeypatch):
  class Died:
    returncode = -11
    stderr = ('*** SIGSEGV STACK OVERFLOW (see go/cppstackoverflow) ***\n'
              'PC: @ 0x7f  xla::jellyfish::MakeConvWindows()\n')
  monkeypatch.setattr(tpu_fit.subprocess, 'run', lambda *a, **k: Died())
  with pytest.raises(RuntimeError, match=r'exited with -11: PC: @ 0x7f  '
                     r'xla::jellyfish::MakeConvWindows\(\)'):
    tpu_fit.compile_in_child(tpu_fit.configs()[0], 'v5e-16')
