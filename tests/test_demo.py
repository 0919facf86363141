"""The README's main command, on a short time budget."""

from rosetta import demo


def test_demo_runs_end_to_end(tmp_path, capsys, num_devices):
  rc = demo.main(['--seconds', '2', '--languages', 'fr', '--max_length',
                  '24',
                  '--output_dir', str(tmp_path)])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert 're-import exact: True' in out
  assert 'max |logit diff|' in out
