"""Dual encoder training on real data: the pair tasks keep held-out text
held out, the gin configs build, the trainer learns Tatoeba translation
pairs (loss down, held-out in-batch retrieval accuracy far above chance),
and (slow) `rosetta train` runs the tiny gin experiment end to end."""

import json
import os
import subprocess
import sys

import gin
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax import nnx

from rosetta import gin_utils, optimizers, partitioning, trainer
from rosetta.data import corpora
from rosetta.data import pipeline
from rosetta.model.encoder_decoder import T5Config
from retrieval import datasets
from retrieval.dense import dual_encoder as de
from retrieval.dense import dual_encoder_model as dem
from retrieval.dense import pair_tasks
from rosetta.data import corpora as sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def need(corpus_dir):
  if not os.path.isdir(os.path.join(corpora.data_dir(), corpus_dir)):
    pytest.skip(f'no {corpus_dir} under {corpora.data_dir()}')


def test_tatoeba_pairs_keep_the_nmt_split():
  need('tatoeba_v2021')
  name = pair_tasks.register_tatoeba_pair_task(seqio.ByteVocabulary(), 'de')
  src = seqio.get_mixture_or_task(name).source
  nmt = sources.tatoeba_splits('de')
  for split in ('train', 'validation', 'test'):
    assert [(q, p) for q, p, _ in src.pairs(split)] == nmt[split]
    assert all(negs == () for _, _, negs in src.pairs(split))
  # An English sentence held out for French is not trained on here either.
  held_out = {e for s in ('validation', 'test')
              for e, _ in sources.tatoeba_splits('fr')[s]}
  train = {q for q, _, _ in src.pairs('train')}
  assert held_out and not train & held_out


def test_xquad_pairs_split_by_question_and_article_negatives():
  need('xquad')
  name = pair_tasks.register_xquad_pair_task(seqio.ByteVocabulary(), 'de',
                                             'en')
  src = seqio.get_mixture_or_task(name).source
  rs = {s: datasets.xquad('de', corpus='en', split=s)
        for s in ('train', 'test')}
  pid_of = dict(zip(rs['train'].docs, rs['train'].doc_ids))
  for split in ('train', 'test'):
    rows = src.pairs(split)
    assert sorted(q for q, _, _ in rows) == sorted(rs[split].queries)
  # (XQuAD repeats a few question texts under different ids: match ids.)
  qids_of = {}
  for qid, q in zip(rs['train'].query_ids, rs['train'].queries):
    qids_of.setdefault(q, []).append(qid)
  for question, positive, negatives in src.pairs('train'):
    assert any(datasets.xquad_split(qid) == 'train' and
               rs['train'].qrels[qid] == {pid_of[positive]: 1}
               for qid in qids_of[question])
    article = pid_of[positive].rsplit('_p', 1)[0]
    assert len(negatives) == 4      # XQuAD articles have 5 paragraphs
    assert all(pid_of[n].rsplit('_p', 1)[0] == article and n != positive
               for n in negatives)


def test_negatives_are_tokenized_only_when_the_lengths_name_them():
  need('xquad')
  name = pair_tasks.register_xquad_pair_task(seqio.ByteVocabulary(), 'de',
                                             'en')
  task = seqio.get_mixture_or_task(name)

  def rows(lengths):
    ds = task.get_dataset(lengths, 'train', shuffle=False)
    return list(ds.take(6).as_numpy_iterator())
  lean = rows({'queries': 32, 'positives': 64})
  full = rows({'queries': 32, 'positives': 64, 'negatives': 64})
  assert [r['negatives'].shape[0] for r in lean] == [0] * 6
  assert [r['negatives'].shape[0] for r in full] == [4] * 6
  assert all(r['negatives'][0][-1] == 1 for r in full)     # EOS
  for a, b in zip(lean, full):
    for key in ('queries', 'positives', 'queries_pretokenized'):
      np.testing.assert_array_equal(a[key], b[key])
  # the model features without hard negatives are the same either way
  conv = dem.DualEncoderFeatureConverter()
  for lengths in ({'queries': 32, 'positives': 64},
                  {'queries': 32, 'positives': 64, 'negatives': 64}):
    ex = next(conv(task.get_dataset(lengths, 'train', shuffle=False),
                   {'queries': 32, 'positives': 64}).as_numpy_iterator())
    assert sorted(ex) == ['positive_ids', 'positive_tokens', 'query_ids',
                          'query_tokens']
    np.testing.assert_array_equal(ex['positive_tokens'][:len(
        full[0]['positives'])], full[0]['positives'])


@pytest.mark.parametrize('gin_file', gin_utils.all_gin_files('retrieval'))
def test_gin_config_builds_and_runs(gin_file):
  gin_utils.parse([gin_file])
  try:
    model = dem.DualEncoderModel()    # every argument from the gin file
  finally:
    gin.clear_config()
  assert model.num_negatives in (0, 1)
  b, k = 8, model.num_negatives
  batch = {'query_tokens': jnp.ones((b, 16), jnp.int32),
           'positive_tokens': jnp.ones((b, 32), jnp.int32)}
  if k:
    batch['negative_tokens'] = jnp.ones((b, k, 32), jnp.int32)
  abstract = nnx.eval_shape(lambda: model.make_network(nnx.Rngs(0)))
  n = sum(int(np.prod(v.shape)) for _, v in
          nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  if 'gtr_base' in gin_file:
    # T5.1.1-base encoder + a 768x768 projection: GTR-base's 110M.
    assert model.config.projection_dim == 768
    assert 109e6 < n < 111e6, n
    loss = nnx.eval_shape(lambda net: model.loss_fn(net, batch)[0], abstract)
    assert loss.shape == ()
  else:
    net = model.make_network(nnx.Rngs(0))
    loss, m = nnx.jit(lambda net, b: model.loss_fn(net, b))(net, batch)
    assert np.isfinite(float(loss)) and float(m['num_tokens']) == b


def test_trainer_learns_tatoeba_pairs(mesh_data8):
  need('tatoeba_v2021')
  vocab = seqio.ByteVocabulary()
  name = pair_tasks.register_tatoeba_pair_task(vocab, 'de')
  cfg = de.DualEncoderConfig(
      encoder=T5Config(vocab_size=384, emb_dim=32, num_heads=4, head_dim=8,
                       mlp_dim=64, num_encoder_layers=2, num_decoder_layers=1,
                       dropout_rate=0.0),
      learn_temperature=True, temperature=0.1)
  model = dem.DualEncoderModel(cfg)
  part = partitioning.Partitioner(mesh_data8)
  sched = optimizers.learning_rate_schedule('constant', 3e-3, 5)
  tr = trainer.Trainer(model, part, optimizers.make_optimizer('adamw', sched),
                       sched)
  lengths = {'queries': 32, 'positives': 64}
  batch_size = 16
  pipe = pipeline.InputPipeline(
      name, split='train', task_feature_lengths=lengths,
      global_batch_size=batch_size, partitioner=part, seed=0, pack=False,
      feature_converter_cls=model.FEATURE_CONVERTER_CLS)
  state = tr.init_state()
  log = []
  for _ in range(120):
    state, m = tr.train_step(state, next(pipe))
    log.append((float(m['loss']), float(m['accuracy'])))
  log = np.asarray(log)
  first, last = log[:10].mean(0), log[-20:].mean(0)
  assert last[0] < 0.8 * first[0], (first, last)
  # Held-out English sentences against their German translations, 16 at a
  # time: chance is 1/16.
  val = pipeline.InputPipeline(
      name, split='validation', task_feature_lengths=lengths,
      global_batch_size=batch_size, partitioner=part, shuffle=False,
      pack=False, num_epochs=1,
      feature_converter_cls=model.FEATURE_CONVERTER_CLS)
  correct = total = 0.0
  for batch in val:
    m = tr.eval_step(state, batch)
    correct += float(m['correct'])
    total += float(m['num_tokens'])
  assert total >= 320
  assert correct / total > 3 / batch_size, correct / total


@pytest.mark.slow
def test_rosetta_train_runs_the_tiny_experiment(tmp_path):
  need('tatoeba_v2021')
  need('xquad')
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  d = str(tmp_path)
  p = subprocess.run(
      [sys.executable, '-m', 'rosetta', 'train',
       '--gin_file=retrieval/dual_encoder_tiny_cpu.gin',
       f"--gin.train.model_dir='{d}'", '--gin.train.total_steps=150',
       '--gin.train.eval_period=150', '--gin.train.log_period=10'],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
  out = p.stdout + p.stderr
  assert p.returncode == 0, out[-3000:]
  log = [json.loads(l) for l in open(os.path.join(d, 'train_metrics.jsonl'))]
  loss = np.asarray([r['loss'] for r in log])
  acc = np.asarray([r['accuracy'] for r in log])
  assert loss[-30:].mean() < 0.8 * loss[:10].mean()
  assert acc[-30:].mean() > 4 / 32          # chance: 1 in 32
  assert '[validation @ step 150] accuracy' in out
  assert "input: length buckets [{'positive_tokens': 64, " in out
