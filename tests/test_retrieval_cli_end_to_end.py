"""Retrieval from the command line, end to end (slow): `rosetta train` a
tiny dual encoder on a BEIR collection this test writes -> `rosetta
index` -> `rosetta search` -> `rosetta score`, scores equal to the Python
API's; the same for `rosetta bm25`; `rosetta index` killed with SIGKILL
half way and re-run equals an uninterrupted build; 2 processes x 4 devices
index and search equal 1 process x 8 devices."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from retrieval import collection_files
from retrieval.dense import evaluation
from retrieval.dsi import embeddings
from retrieval.search import bm25, ir_metrics
from tests.retrieval_cli_helpers import write_beir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def env(devices=8):
  return dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
              PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))


def rosetta(*argv, devices=8, wait=True):
  cmd = [sys.executable, '-m', 'rosetta', *[str(a) for a in argv]]
  if not wait:
    return subprocess.Popen(cmd, env=env(devices), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  p = subprocess.run(cmd, env=env(devices), cwd=REPO, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
  return p.stdout


def two_processes(*argv):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = [rosetta(*argv, '--coordinator_address', f'127.0.0.1:{port}',
                   '--num_processes', 2, '--process_id', i, devices=4,
                   wait=False) for i in range(2)]
  for p in procs:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, (out + err)[-3000:]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp('cli_e2e')
  coll = write_beir(root / 'coll')
  model = root / 'de'
  rosetta('train', '--gin_file=retrieval/dual_encoder_beir_tiny.gin',
          f"--gin.pair_tasks.setup.collections=['beir:{coll}']",
          f"--gin.train.model_dir='{model}'", '--gin.train.total_steps=6',
          '--gin.train.batch_size=8', '--gin.train.eval_period=0')
  rosetta('index', '--model_dir', model, '--corpus', f'beir:{coll}',
          '--output', root / 'idx', '--shard_size', 4, '--batch_size', 8)
  return root, coll, str(model)


def scores(path):
  return json.loads(open(path).read())['runs']


def test_index_search_score_equal_the_python_api(trained):
  root, coll, model = trained
  rosetta('search', '--index', root / 'idx', '--queries', f'beir:{coll}',
          '--output', root / 'dense.trec', '--k', 100)
  qrels = os.path.join(coll, 'qrels', 'test.tsv')
  rosetta('score', '--qrels', qrels, root / 'dense.trec', '--json',
          root / 'dense.json')
  got = scores(root / 'dense.json')[str(root / 'dense.trec')]['mean']
  de = embeddings.load_dual_encoder(model)
  rs = collection_files.read_split(f'beir:{coll}', 'test')
  want = evaluation.evaluate_set(
      embeddings.encoder(de, 'query'), embeddings.encoder(de, 'doc'), rs,
      k=100, mesh=de.mesh, out_dir=str(root / 'api'), tag='dense')
  api_run = ir_metrics.read_run(str(root / 'api' / 'run.trec'))
  api_map = ir_metrics.average_precision(api_run, rs.qrels)
  # (evaluate_set leaves out Recall@k for k above the corpus size)
  recall = ir_metrics.evaluate(api_run, rs.qrels, ks=(100,))['Recall@100']
  for m in ('MRR@10', 'nDCG@10'):
    assert got[m] == pytest.approx(want[m], abs=1e-12), m
  assert got['Recall@100'] == pytest.approx(recall, abs=1e-12)
  assert got['MAP'] == pytest.approx(np.mean(list(api_map.values())),
                                     abs=1e-12)
  assert got['MRR@10'] > 1 / 48         # better than chance after training
  # the same documents in the same order; scores to float32 rounding
  cli_run = ir_metrics.read_run(str(root / 'dense.trec'))
  for q, docs in api_run.items():
    assert list(cli_run[q]) == list(docs)


def test_bm25_equals_the_python_api(trained):
  root, coll, _ = trained
  rosetta('bm25', '--corpus', f'beir:{coll}', '--queries',
          os.path.join(coll, 'queries.jsonl'), '--output',
          root / 'bm25.trec', '--k', 100)
  qrels = os.path.join(coll, 'qrels', 'test.tsv')
  rosetta('score', '--qrels', qrels, root / 'bm25.trec', '--json',
          root / 'bm25.json')
  got = scores(root / 'bm25.json')[str(root / 'bm25.trec')]['mean']
  rs = collection_files.read_split(f'beir:{coll}', 'test')
  result = bm25.BM25Index(rs.docs).search(rs.queries, 48)
  run = ir_metrics.run_from_topk(result.indices, rs.query_ids, rs.doc_ids,
                                 scores=result.scores)
  want = ir_metrics.evaluate(run, rs.qrels, ks=(100,))
  for m in ('MRR@10', 'nDCG@10', 'Recall@100'):
    assert got[m] == pytest.approx(want[m], abs=1e-12), m
  assert got['MRR@10'] > 0.2


def test_sigkill_half_way_then_rerun_equals_an_uninterrupted_build(trained):
  root, coll, model = trained
  out = root / 'killed'
  args = ('index', '--model_dir', model, '--corpus', f'beir:{coll}',
          '--output', out, '--shard_size', 4, '--batch_size', 8)
  p = rosetta(*args, wait=False)
  deadline = time.time() + 300
  while not (out / 'shard-00004.npy').exists():
    assert p.poll() is None, p.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.005)
  os.kill(p.pid, signal.SIGKILL)
  p.communicate()
  manifest = json.loads((out / 'manifest.json').read_text())
  assert not manifest['complete']                 # killed half way
  assert not (out / 'shard-00011.npy').exists()
  rosetta(*args)
  names = sorted(os.listdir(root / 'idx'))
  assert sorted(os.listdir(out)) == names
  for name in names:
    assert (out / name).read_bytes() == (root / 'idx' / name).read_bytes(), (
        name)


def test_two_processes_equal_one(trained):
  root, coll, model = trained
  rosetta('search', '--index', root / 'idx', '--queries', f'beir:{coll}',
          '--output', root / 'one.trec', '--k', 20, '--mode', 'verified')
  two_processes('index', '--model_dir', model, '--corpus', f'beir:{coll}',
                '--output', root / 'idx2', '--shard_size', 4,
                '--batch_size', 8, '--no_progress')
  m = json.loads((root / 'idx2' / 'manifest.json').read_text())
  assert m['complete'] and m['num_shards'] == 12
  for name in sorted(os.listdir(root / 'idx')):
    assert ((root / 'idx2' / name).read_bytes() ==
            (root / 'idx' / name).read_bytes()), name
  two_processes('search', '--index', root / 'idx2', '--queries',
                f'beir:{coll}', '--output', root / 'two.trec', '--k', 20,
                '--mode', 'verified', '--no_progress')
  assert (root / 'two.trec').read_text() == (root / 'one.trec').read_text()
