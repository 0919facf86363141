"""Run-directory files: atomic writes and durable JSONL appends."""

import json
import os

import pytest

from rosetta.run import files as run_files


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
  path = tmp_path / 'sub' / 'eval.json'
  run_files.atomic_write_text(path, 'old')
  run_files.atomic_write_text(path, 'new text')
  assert path.read_text() == 'new text'
  assert sorted(os.listdir(path.parent)) == ['eval.json']


def test_write_jsonl_atomically(tmp_path):
  path = tmp_path / 'preds.jsonl'
  run_files.write_jsonl_atomically(path, [{'a': 'é'}, {'b': 2}])
  assert [json.loads(x) for x in path.read_text('utf-8').splitlines()] == [
      {'a': 'é'}, {'b': 2}]


@pytest.mark.parametrize('rewrite', [False, True])
def test_jsonl_appender_keeps_earlier_lines(tmp_path, rewrite):
  """rewrite=True is the object-store mode (no append there): a resumed run
  must still keep the lines of the run before it."""
  path = tmp_path / 'train_metrics.jsonl'
  first = run_files.JsonlAppender(path, rewrite=rewrite)
  first.append({'step': 1})
  first.append({'step': 2})
  resumed = run_files.JsonlAppender(path, rewrite=rewrite)
  resumed.append({'step': 3})
  steps = [json.loads(x)['step'] for x in path.read_text().splitlines()]
  assert steps == [1, 2, 3]


@pytest.mark.parametrize('rewrite', [False, True])
def test_a_resume_keeps_only_rows_up_to_its_step(tmp_path, rewrite):
  path = tmp_path / 'train_metrics.jsonl'
  path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste',
                  encoding='utf-8')  # killed mid-line after step 3
  resumed = run_files.JsonlAppender(path, rewrite=rewrite)
  assert resumed.keep(lambda r: r['step'] <= 2) == 2
  resumed.append({'step': 3})
  assert [json.loads(x)['step'] for x in path.read_text().splitlines()] == [
      1, 2, 3]
  assert resumed.keep(lambda r: True) == 0


def test_remote_paths_are_recognised():
  assert run_files.is_remote('gs://bucket/run')
  assert not run_files.is_remote('/tmp/run')
