"""`rosetta dsi-retrieve`: a DSI run ranks documents from the command line.

Fast: usage and bad-input errors, exit statuses and messages. Slow: a tiny
DSI run trained a few steps on a BEIR collection written here, ranked by
the command (a subprocess) and by the Python API
(`retrieval.dsi.evaluation.rank_docids`) on the same model: the TREC run
holds the same documents in the same order with the same beam scores, and
pytrec_eval scores it identically. The run keeps its docids in assets/."""

import json
import os
import subprocess
import sys

import gin
import pytest

from retrieval.dsi import docids as docids_lib
from retrieval.dsi import dsi_tasks
from retrieval.dsi import evaluation as dsi_eval
from retrieval.search import ir_metrics
from rosetta import cli, gin_utils
from rosetta.run import run_dir, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = {f'd{i}': f'document {i} is about {w}' for i, w in enumerate(
    ['cats', 'dogs', 'rivers', 'mountains', 'trains', 'music', 'bread',
     'stars', 'ships', 'rain', 'chess', 'honey'])}
QUERIES = {f'q{i}': f'what about {w}?' for i, w in enumerate(
    ['cats', 'dogs', 'rivers', 'mountains', 'trains', 'music', 'bread',
     'stars', 'ships', 'rain', 'chess', 'honey'])}
TRAIN = [f'q{i}' for i in range(8)]
TEST = [f'q{i}' for i in range(8, 12)]


def write_beir(root, docs=DOCS, queries=QUERIES):
  os.makedirs(os.path.join(root, 'qrels'), exist_ok=True)
  with open(os.path.join(root, 'corpus.jsonl'), 'w') as f:
    for k, t in docs.items():
      f.write(json.dumps({'_id': k, 'title': '', 'text': t}) + '\n')
  with open(os.path.join(root, 'queries.jsonl'), 'w') as f:
    for k, t in queries.items():
      f.write(json.dumps({'_id': k, 'text': t}) + '\n')
  for split, qids in (('train', TRAIN), ('test', TEST)):
    with open(os.path.join(root, 'qrels', f'{split}.tsv'), 'w') as f:
      f.write('query-id\tcorpus-id\tscore\n')
      for q in qids:
        f.write(f'{q}\td{q[1:]}\t1\n')
  return root


def run_cli(argv, capsys):
  """(exit status, stderr) of the command in this process (argparse exits
  with SystemExit(2) on a usage error, as the console script does)."""
  try:
    code = cli.main(['dsi-retrieve', *argv])
  except SystemExit as e:
    code = e.code
  return code, capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path, capsys):
  code, err = run_cli(['--model_dir', str(tmp_path), '--queries', 'q.tsv',
                       '--output', str(tmp_path / 'no' / 'run.trec')],
                      capsys)
  assert code == 2 and f'folder {tmp_path}/no does not exist' in err
  code, err = run_cli(['--model_dir', str(tmp_path), '--queries', 'q.tsv',
                       '--output', str(tmp_path / 'r.trec'), '--k', '0'],
                      capsys)
  assert code == 2 and '--k must be >= 1, got 0' in err


def test_bad_queries_and_missing_run_exit_1(tmp_path, capsys):
  queries = tmp_path / 'queries.tsv'
  queries.write_text('q1\twhat about cats?\nq1\tand dogs?\n')
  out = str(tmp_path / 'run.trec')
  code, err = run_cli(['--model_dir', str(tmp_path), '--queries',
                       str(queries), '--output', out], capsys)
  assert code == 1
  assert f"{queries}:2: duplicate query id 'q1' (first on line 1)" in err
  queries.write_text('q1\twhat about cats?\n')
  code, err = run_cli(['--model_dir', str(tmp_path / 'nowhere'), '--queries',
                       str(queries), '--output', out], capsys)
  assert code == 1
  assert f'{tmp_path}/nowhere/config.gin: not a run directory' in err
  code, err = run_cli(['--model_dir', str(tmp_path), '--queries',
                       str(tmp_path / 'queries.txt'), '--output', out],
                      capsys)
  assert code == 1 and 'unknown format of queries' in err
  assert not os.path.exists(out)


# ------------------------------------------------------------ end to end ---

STEPS = 6
LENGTHS = {'inputs': 32, 'targets': 4}


@pytest.fixture(scope='module')
def dsi_run(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('dsi_cmd'))
  beir = write_beir(os.path.join(d, 'animals'))
  model_dir = os.path.join(d, 'run')
  gin_utils.parse(['dsi/xquad_atomic_tiny.gin'], [
      f'dsi_tasks.setup.corpus = "beir:{beir}"', 'VOCAB = 384',
      f'train.model_dir = "{model_dir}"',
      "train.task = 'beir_animals_dsi'",
      "dsi_tasks.processors_for.mixture = 'beir_animals_dsi'",
      f'train.task_feature_lengths = {LENGTHS}', 'train.batch_size = 8',
      f'train.total_steps = {STEPS}', 'train.eval_period = 0',
      'train.eval_tasks = []',
      f'train.checkpoint_period = {STEPS}'], finalize=False)
  gin.finalize()
  try:
    runs.train(config_text=run_dir.run_config_text())
  finally:
    gin.clear_config()
  return dict(dir=model_dir, beir=beir)


@pytest.mark.slow
def test_command_equals_the_python_api(dsi_run, tmp_path):
  model_dir, beir = dsi_run['dir'], dsi_run['beir']
  # The docids travel with the run, so the command needs only its folder.
  index = json.load(open(os.path.join(model_dir, 'assets.json')))
  assert index == {dsi_tasks.MAPPING_ASSET:
                   f'assets/{dsi_tasks.MAPPING_ASSET}.json'}
  saved = docids_lib.DocidMapping.load(
      os.path.join(model_dir, index[dsi_tasks.MAPPING_ASSET]))
  assert saved.kind == 'atomic' and set(saved.ids) == set(DOCS)

  out = str(tmp_path / 'dsi.trec')
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  p = subprocess.run(
      [sys.executable, '-m', 'rosetta', 'dsi-retrieve', '--model_dir',
       model_dir, '--queries', f'beir:{beir}', '--output', out, '--k', '5'],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  assert f'{out}: 12 queries, 60 documents (k=5, step {STEPS}, atomic' in (
      p.stderr)
  got = ir_metrics.read_run(out)
  lines = open(out).read().splitlines()
  assert lines[0].split()[:4] == ['q0', 'Q0', lines[0].split()[2], '1']
  assert all(l.endswith(' dsi') for l in lines)

  # The Python API on the same checkpoint, same mesh shape (8 devices).
  run = run_dir.RunDir(model_dir).load()
  try:
    setup = dsi_tasks.last_setup(run.task)
    ranked = dsi_eval.rank_docids(
        run.network, setup, list(QUERIES.values()),
        input_length=LENGTHS['inputs'], num_beams=5, batch_size=32,
        partitioner=run.trainer.partitioner)
  finally:
    gin.clear_config()
  want = {q: dict(r) for q, r in zip(QUERIES, ranked)}
  assert list(got) == list(QUERIES)
  for q in QUERIES:
    assert list(got[q]) == [d for d, _ in ranked[list(QUERIES).index(q)]]
    assert got[q] == pytest.approx(want[q], rel=1e-6), q
    assert all(len(got[q]) == 5 for q in got)
  qrels = {q: {f'd{q[1:]}': 1} for q in TEST}
  assert ir_metrics.evaluate(got, qrels, ks=(1, 5)) == (
      ir_metrics.evaluate(want, qrels, ks=(1, 5)))
