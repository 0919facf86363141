"""`rosetta generate-queries`: a query-generation run samples queries per
document into the JSONL file DSI indexing reads as it is.

Fast: usage errors (exit 2) and a run that is not a query generator (exit
1, naming its config). Slow: a tiny generator (`synthetic_queries.
qgen_setup` on a BEIR folder written here, a few steps) -> the command
twice with one seed (byte-identical files) -> the records equal the Python
API's (`synthetic_queries.generate`) -> `dsi_tasks.setup` takes the file
as its synthetic queries."""

import json
import os
import subprocess
import sys

import gin
import pytest
import seqio

from retrieval.dsi import dsi_tasks
from retrieval.dsi import query_files
from retrieval.dsi import synthetic_queries
from rosetta import cli, gin_utils
from rosetta.run import run_dir, runs
from tests.retrieval_cli_helpers import write_word_collection

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ['cats', 'dogs', 'rivers', 'mountains', 'trains', 'music']


def write_beir(root):
  return write_word_collection(root, WORDS, {'train': range(0, 4),
                                            'test': range(4, 6)},
                               query='what of {}?')


def run_cli(argv, capsys):
  try:
    code = cli.main(['generate-queries', *argv])
  except SystemExit as e:   # argparse: a usage error
    code = e.code
  return code, capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path, capsys):
  out = str(tmp_path / 'q.jsonl')
  code, err = run_cli(['--model_dir', str(tmp_path), '--output', out,
                       '--n', '4', '--batch_size', '2'], capsys)
  assert code == 2 and '--batch_size (2) must be >= --n (4)' in err
  code, err = run_cli(['--model_dir', str(tmp_path), '--output',
                       str(tmp_path / 'no' / 'q.jsonl')], capsys)
  assert code == 2 and f'folder {tmp_path}/no does not exist' in err


def test_not_a_query_generator_exits_1(tmp_path, capsys):
  (tmp_path / 'config.gin').write_text("train.task = 'xquad_dsi'\n")
  out = str(tmp_path / 'q.jsonl')
  code, err = run_cli(['--model_dir', str(tmp_path), '--output', out],
                      capsys)
  assert code == 1
  assert (f'{tmp_path}: not a query-generation run (its config.gin has no '
          'synthetic_queries.qgen_setup') in err
  assert not os.path.exists(out)


# ------------------------------------------------------------ end to end ---

@pytest.fixture(scope='module')
def qgen_run(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('qgen_cmd'))
  root = write_beir(os.path.join(d, 'toy'))
  model_dir = os.path.join(d, 'run')
  gin_utils.parse(['dsi/qgen_xquad_tiny.gin'], [
      f'synthetic_queries.qgen_setup.corpus = "beir:{root}"',
      "train.task = 'beir_toy_qgen'", f'train.model_dir = "{model_dir}"',
      "train.task_feature_lengths = {'inputs': 32, 'targets': 16}",
      'train.batch_size = 8', 'train.total_steps = 3',
      'train.eval_period = 0', 'train.checkpoint_period = 3'],
      finalize=False)
  gin.finalize()
  try:
    runs.train(config_text=run_dir.run_config_text())
  finally:
    gin.clear_config()
  return dict(dir=model_dir, root=root, d=d)


@pytest.mark.slow
def test_seeded_file_equals_the_python_api_and_feeds_dsi(qgen_run):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  outs = [os.path.join(qgen_run['d'], f'q{i}.jsonl') for i in (1, 2)]
  for out in outs:
    p = subprocess.run(
        [sys.executable, '-m', 'rosetta', 'generate-queries', '--model_dir',
         qgen_run['dir'], '--output', out, '--n', '3', '--seed', '7',
         '--max_length', '12', '--batch_size', '24'],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'for 6 beir_toy documents in und (n=3, seed 7)' in p.stderr
  assert open(outs[0], 'rb').read() == open(outs[1], 'rb').read()
  records = query_files.read_queries(outs[0])
  assert {r['doc'] for r in records} <= {f'd{i}' for i in range(6)}
  assert all(r['language'] == 'und' and 0 <= r['sample'] < 3
             for r in records)

  gen = synthetic_queries.QueryGenerator.from_run(qgen_run['dir'])
  try:
    corpus = dsi_tasks.read_corpus(f'beir:{qgen_run["root"]}')
    want = synthetic_queries.generate(gen, corpus, 3, seed=7, max_length=12,
                                      batch_size=24)
  finally:
    gin.clear_config()
  assert records == want

  # DSI indexing takes the file as it is.
  setup = dsi_tasks.setup(corpus=f'beir:{qgen_run["root"]}',
                          synthetic_queries=outs[0])
  assert setup.tasks.synthetic == 'beir_toy_dsi_synthetic'
  rows = list(seqio.get_mixture_or_task(setup.tasks.synthetic).get_dataset(
      sequence_length=None, split='train', shuffle=False).as_numpy_iterator())
  assert len(rows) == len(records)
  assert [r['inputs_pretokenized'].decode() for r in rows] == [
      r['query'] for r in records]
