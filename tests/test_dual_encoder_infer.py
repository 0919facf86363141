"""`rosetta infer` on a dual encoder: the wrapper's `write_inference` embeds a
pair task split with the chosen tower, as JSONL (index, text, embedding)
or .npy + ids, equal to the Python API's embeddings of the same texts."""

import json
import os

import gin
import numpy as np
import pytest

from retrieval.dense import dual_encoder_model
from retrieval.dsi import embeddings
from rosetta import cli, gin_utils
from rosetta.run import run_dir, runs
from tests.retrieval_cli_helpers import write_word_collection

WORDS = ['cats', 'dogs', 'rivers', 'mountains', 'trains', 'music']
LENGTHS = {'queries': 16, 'positives': 24, 'negatives': 24}


def write_beir(root):
  return write_word_collection(root, WORDS, {'train': range(0, 3),
                                            'dev': range(3, 6)})


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A run directory with the initial parameters as its step-0 checkpoint
  (total_steps = 0: no train step to compile; what is tested is inference)."""
  d = str(tmp_path_factory.mktemp('de_infer'))
  root = write_beir(os.path.join(d, 'toy'))
  model_dir = os.path.join(d, 'run')
  bindings = [f"pair_tasks.setup.collections = ['beir:{root}']",
              f'train.task_feature_lengths = {LENGTHS}']
  gin_utils.parse(['retrieval/dual_encoder_beir_tiny.gin'], [
      *bindings, f'train.model_dir = "{model_dir}"', 'train.batch_size = 8',
      'train.total_steps = 0', 'train.eval_period = 0'], finalize=False)
  gin.finalize()
  try:
    runs.train(config_text=run_dir.run_config_text())
  finally:
    gin.clear_config()
  return dict(dir=model_dir, bindings=bindings, d=d)


def infer(run, output, *extra):
  argv = ['infer', '--gin_file=retrieval/dual_encoder_beir_tiny.gin',
          '--gin_file=runs/infer.gin',
          *[f'--gin_bindings={b}' for b in run['bindings']],
          '--gin.infer.model=@dual_encoder_model.DualEncoderModel()',
          f"--gin.infer.model_dir='{run['dir']}'",
          "--gin.infer.task='beir_pairs_toy'",
          f'--gin.infer.task_feature_lengths={LENGTHS}',
          f"--gin.infer.output_path='{output}'", *extra]
  try:
    return cli.main(argv)
  finally:
    gin.clear_config()


def python_api(run, tower, texts):
  de = embeddings.load_dual_encoder(run['dir'])
  try:
    return embeddings.encoder(de, tower)(texts)
  finally:
    gin.clear_config()


def test_query_tower_jsonl_equals_the_python_api(run):
  out = os.path.join(run['d'], 'queries.jsonl')
  assert infer(run, out) == 0
  rows = [json.loads(l) for l in open(out)]
  assert [(r['index'], r['text']) for r in rows] == [
      (0, 'mountains?'), (1, 'trains?'), (2, 'music?')]   # qrels/dev order
  got = np.asarray([r['embedding'] for r in rows], np.float32)
  want = python_api(run, 'query', [r['text'] for r in rows])
  assert got.shape == (3, want.shape[1])
  np.testing.assert_array_equal(got, want)


def test_doc_tower_npy_with_ids(run):
  out = os.path.join(run['d'], 'docs.npy')
  assert infer(run, out, "--gin.dual_encoder_model.DualEncoderModel."
               "infer_tower='doc'", '--gin.infer.split=\'train\'') == 0
  ids = [json.loads(l) for l in open(os.path.join(run['d'], 'docs.ids.jsonl'))]
  assert [r['text'] for r in ids] == ['all about cats', 'all about dogs',
                                      'all about rivers']
  got = np.load(out)
  want = python_api(run, 'doc', [r['text'] for r in ids])
  np.testing.assert_array_equal(got, want)
  # The towers are shared here, but the doc texts are not the queries'.
  assert not np.allclose(got, python_api(run, 'query', ['cats?', 'dogs?',
                                                         'rivers?']))


def test_bad_tower_and_missing_feature():
  with pytest.raises(ValueError, match="infer_tower must be one of "
                     r"\('query', 'doc'\), got 'passage'"):
    dual_encoder_model.DualEncoderModel(infer_tower='passage')
