"""`rosetta translate` on bad input: flags and output paths refused before
any work (exit 2), lines split on '\\n' only for files and stdin alike,
invalid UTF-8 named by file and line (exit 1), untrained target languages
refused unless --zero_shot; no traceback, nothing left behind."""

import io
import os
import sys

import gin
import pytest

from rosetta import cli
from translation import translate

TINY = ['encoder_decoder.T5Config.vocab_size = 512',
        'encoder_decoder.T5Config.emb_dim = 32',
        'encoder_decoder.T5Config.mlp_dim = 64',
        'encoder_decoder.T5Config.num_heads = 2',
        'encoder_decoder.T5Config.head_dim = 16',
        'encoder_decoder.T5Config.num_encoder_layers = 1',
        'encoder_decoder.T5Config.num_decoder_layers = 1',
        'nmt.setup.vocab_size = 400',
        "nmt.setup.corpus = 'django'",
        "nmt.setup.languages = ['fr']",
        'nmt.setup.zero_shot = False',
        "train.task_feature_lengths = {'inputs': 24, 'targets': 24}",
        'train.total_steps = 1', 'train.batch_size = 8']
FAST = ['--beam_size', '1', '--max_length', '8', '--no_progress']


@pytest.mark.parametrize('flags,message', [
    (['--batch_size', '0'], '--batch_size 0: must be positive'),
    (['--max_length', '-1'], '--max_length -1: must be positive'),
    (['--output', '/nonexistent/dir/out.txt'],
     '--output /nonexistent/dir/out.txt: the folder /nonexistent/dir does '
     'not exist'),
    (['--input', '/nonexistent.txt'], '--input /nonexistent.txt: no such file'),
])
def test_flags_and_paths_are_refused_before_any_work(flags, message, capsys):
  with pytest.raises(SystemExit) as e:
    translate.main(['--checkpoint', '/nonexistent_run', '--target_lang', 'fr',
                    *flags])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().endswith(message)


def test_an_output_folder_is_refused(tmp_path, capsys):
  with pytest.raises(SystemExit):
    translate.main(['--checkpoint', 'x', '--target_lang', 'fr', '--output',
                    str(tmp_path)])
  assert 'is a folder; name a file' in capsys.readouterr().err


def test_lines_split_on_newline_only():
  data = b'one\rtwo\r\nthree\xe2\x80\xa8four\nfive'
  assert translate.read_input_lines(io.BytesIO(data), 'in.txt') == [
      'one\rtwo', 'three\u2028four', 'five']
  with pytest.raises(ValueError, match=r"in.txt:2: not valid UTF-8"):
    translate.read_input_lines(io.BytesIO(b'ok\n\xff\n'), 'in.txt')


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  d = tmp_path_factory.mktemp('faults')
  path = str(d / 'run')
  try:
    assert cli.main(
        ['train', '--gin_file=experiments/nmt_cpu_small.gin',
         f"--gin.train.model_dir='{path}'",
         f"--gin.nmt.setup.vocab_path='{d}/spm.model'",
         *[f'--gin_bindings={b}' for b in TINY]]) == 0
  finally:
    gin.clear_config()
  return path


@pytest.mark.slow
def test_file_and_stdin_give_one_output_line_per_input_line(run, tmp_path,
                                                            monkeypatch):
  src = tmp_path / 'in.txt'
  src.write_bytes(b'Save\rand continue.\nDelete\n')
  out = tmp_path / 'out.txt'
  assert translate.main(['--checkpoint', run, '--target_lang', 'fr',
                         '--input', str(src), '--output', str(out),
                         *FAST]) == 0
  from_file = out.read_text(encoding='utf-8')
  assert from_file.count('\n') == 2
  monkeypatch.setattr(sys, 'stdin', io.TextIOWrapper(io.BytesIO(
      src.read_bytes())))
  out2 = tmp_path / 'out2.txt'
  assert translate.main(['--checkpoint', run, '--target_lang', 'fr',
                         '--output', str(out2), *FAST]) == 0
  assert out2.read_text(encoding='utf-8') == from_file
  assert sorted(os.listdir(tmp_path)) == ['in.txt', 'out.txt', 'out2.txt']


@pytest.mark.slow
def test_untrained_targets_and_bad_utf8_get_one_line(run, tmp_path, capsys):
  src = tmp_path / 'in.txt'
  src.write_text('Delete\n', encoding='utf-8')
  args = ['--checkpoint', run, '--input', str(src), *FAST]
  assert translate.main([*args, '--target_lang', 'ja']) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      'rosetta translate: --target_lang ja: the run was trained into en, fr '
      'only; pass --zero_shot to translate into another language anyway')
  assert translate.main([*args, '--target_lang', 'ja', '--zero_shot']) == 0
  assert translate.main([*args, '--target_lang', 'xx']) == 2
  assert 'xx' in capsys.readouterr().err
  bad = tmp_path / 'bad.txt'
  bad.write_bytes(b'Delete\nSave \xff\n')
  out = tmp_path / 'out.txt'
  assert cli.main(['translate', '--checkpoint', run, '--target_lang', 'fr',
                   '--input', str(bad), '--output', str(out), *FAST]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith(f'rosetta translate: {bad}:2: not valid UTF-8')
  assert 'Traceback' not in '\n'.join(err)
  assert not out.exists()
