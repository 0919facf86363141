"""Retrieval evaluation during dual-encoder training (`train.eval_fns` with
`retrieval.dense.training_eval.RetrievalEval`): a tiny dual encoder trained
a few steps on a BEIR folder written here reports MRR@10 / nDCG@10 /
Recall@k on its dev split at every eval point, in TensorBoard and in that
step's train_metrics.jsonl row, and the last numbers equal the Python
API's (`retrieval.dense.evaluation.evaluate_set`) on the saved checkpoint."""

import json
import os

import gin
import pytest

from retrieval import collection_files
from retrieval.dense import evaluation
from retrieval.dense import training_eval
from retrieval.dsi import embeddings
from rosetta import gin_utils
from rosetta.run import plots, run_dir, runs
from tests.retrieval_cli_helpers import write_word_collection

WORDS = ['cats', 'dogs', 'rivers', 'mountains', 'trains', 'music', 'bread',
         'stars', 'ships', 'rain', 'chess', 'honey']
STEPS, EVERY = 4, 2
SET = 'retrieval_beir_toy_dev'


def write_beir(root):
  return write_word_collection(root, WORDS, {'train': range(0, 8),
                                            'dev': range(8, 12)})


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('de_eval'))
  root = write_beir(os.path.join(d, 'toy'))
  model_dir = os.path.join(d, 'run')
  gin_utils.parse(['retrieval/dual_encoder_beir_tiny.gin'], [
      f"pair_tasks.setup.collections = ['beir:{root}']",
      f'train.model_dir = "{model_dir}"', 'train.batch_size = 8',
      "train.task_feature_lengths = {'queries': 16, 'positives': 24, "
      "'negatives': 24}",
      f'train.total_steps = {STEPS}', f'train.eval_period = {EVERY}',
      'train.log_period = 1', 'train.eval_loss_batches = 1',
      f'train.checkpoint_period = {STEPS}',
      'training_eval.RetrievalEval.ks = (1, 3, 10)'], finalize=False)
  gin.finalize()
  try:
    runs.train(config_text=run_dir.run_config_text())
  finally:
    gin.clear_config()
  return dict(dir=model_dir, spec=f'beir:{root}')


def test_metrics_in_train_metrics_jsonl_and_tensorboard(trained):
  rows = [json.loads(l) for l in open(
      os.path.join(trained['dir'], 'train_metrics.jsonl'))]
  assert [r['step'] for r in rows] == [1, 2, 3, 4]
  names = ['MRR@10', 'nDCG@10', 'Recall@1', 'Recall@3', 'Recall@10',
           'Hits@1', 'Hits@3', 'Hits@10', 'queries']
  for r in rows:   # every row keeps the training metrics
    assert 'loss' in r and 'accuracy' in r
    evaluated = {k for k in r if k.startswith('eval/')}
    assert evaluated == ({f'eval/{SET}/{m}' for m in names}
                         if r['step'] % EVERY == 0 else set())
  last = rows[-1]
  assert last[f'eval/{SET}/queries'] == 4
  # 12 documents: every dev query's document is in the top 12.
  assert last[f'eval/{SET}/Recall@10'] <= 1.0
  assert 0 < last[f'eval/{SET}/MRR@10'] <= 1.0
  scalars = plots.read_scalars(trained['dir'])
  steps, values = scalars[f'eval/{SET}']['MRR@10']
  assert steps == [2, 4]
  assert values == pytest.approx([rows[1][f'eval/{SET}/MRR@10'],
                                  last[f'eval/{SET}/MRR@10']])


def test_equals_the_python_api_on_the_checkpoint(trained):
  run = embeddings.load_dual_encoder(trained['dir'])
  try:
    rs = collection_files.read_split(trained['spec'], 'dev')
    want = evaluation.evaluate_set(
        embeddings.encoder(run, 'query'), embeddings.encoder(run, 'doc'),
        rs, k=10, ks=(1, 3, 10), mesh=run.mesh)
  finally:
    gin.clear_config()
  last = [json.loads(l) for l in open(
      os.path.join(trained['dir'], 'train_metrics.jsonl'))][-1]
  got = {k.split('/')[-1]: v for k, v in last.items()
         if k.startswith(f'eval/{SET}/') and not k.endswith('queries')}
  assert got == pytest.approx(want, abs=1e-9)


def test_rosetta_evaluate_runs_the_same_eval_fns(trained):
  """`rosetta evaluate` with `evaluate.eval_fns` (and no seqio tasks)
  reports the same numbers for the last checkpoint."""
  from rosetta import cli
  try:
    code = cli.main([
        'evaluate', '--gin_file=retrieval/dual_encoder_beir_tiny.gin',
        '--gin_file=runs/evaluate.gin',
        f"--gin_bindings=pair_tasks.setup.collections = ['{trained['spec']}']",
        "--gin_bindings=train.task_feature_lengths = {'queries': 16, "
        "'positives': 24, 'negatives': 24}",
        '--gin_bindings=training_eval.RetrievalEval.ks = (1, 3, 10)',
        '--gin.evaluate.model=@dual_encoder_model.DualEncoderModel()',
        f"--gin.evaluate.model_dir='{trained['dir']}'",
        '--gin.evaluate.tasks=[]',
        '--gin.evaluate.eval_fns=[@training_eval.RetrievalEval()]'])
  finally:
    gin.clear_config()
  assert code == 0
  saved = json.load(open(os.path.join(trained['dir'],
                                      f'eval_validation_{STEPS}.json')))
  last = [json.loads(l) for l in open(
      os.path.join(trained['dir'], 'train_metrics.jsonl'))][-1]
  assert saved['metrics'][SET] == pytest.approx(
      {k.split('/')[-1]: v for k, v in last.items()
       if k.startswith(f'eval/{SET}/')}, abs=1e-9)


def test_pair_task_split_as_a_set(trained):
  """Tatoeba-style sets: a pair task's split, each query's positive its one
  relevant document among the distinct positives."""
  gin_utils.parse([os.path.join(trained['dir'], 'config.gin')],
                  finalize=False)
  try:
    run_dir.task_setup()
    rs = training_eval.task_set('beir_pairs_toy', 'validation')
  finally:
    gin.clear_config()
  assert rs.queries == ('ships?', 'rain?', 'chess?', 'honey?')
  assert rs.docs == ('all about ships', 'all about rain', 'all about chess',
                     'all about honey')
  assert rs.qrels == {'q0': {'d0': 1}, 'q1': {'d1': 1}, 'q2': {'d2': 1},
                      'q3': {'d3': 1}}
  short = training_eval.first_queries(rs, 2)
  assert short.query_ids == ('q0', 'q1') and short.docs == rs.docs


def test_no_development_set_is_an_error():
  with pytest.raises(ValueError, match='no development set'):
    training_eval.RetrievalEval(collections=[]).sets
