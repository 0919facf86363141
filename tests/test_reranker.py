"""The reranker network and its wrapper (`retrieval.rerank.reranker`,
`reranker_model`): each head's score against a NumPy computation from the
EncoderDecoder's own outputs, the T5's parameters under the T5's paths,
the score head's sharding on 8 devices, token lookup errors, the loss and
metrics against NumPy, initialisation from an HF folder and from a run
directory, and a tiny reranker trained on a planted task."""

from __future__ import annotations

import random

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio
from flax import nnx
from jax.sharding import PartitionSpec

from retrieval.rerank import rerank_tasks
from retrieval.rerank.reranker import token_id
from retrieval.rerank.reranker_model import RerankerModel
from rosetta import gin_utils, partitioning, trainable_params
from rosetta import trainer as trainer_lib
from rosetta.checkpoint import hf
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config
from rosetta.model.encoder_decoder_model import EncoderDecoderModel
from rosetta.run import param_sources
from rosetta.run.run_dir import RunDir

BYTES = seqio.ByteVocabulary()
T_ID, F_ID, SCORE_ID = BYTES.encode('t')[0], BYTES.encode('f')[0], 259
HEADS = {'mono': dict(true_token='t', false_token='f'),
         'rank_encdec': dict(score_token=SCORE_ID),
         'rank_encoder': dict(pooling='mean')}
MONO = rerank_tasks.PairFormat()
PAIRS = [('what do cats eat', 'cats eat fish and mice'),
         ('what do cats eat', 'the river runs to the sea'),
         ('who wrote it', 'a long document about nothing in particular'),
         ('who wrote it', 'it was written by her')]


@pytest.fixture(scope='module')
def cfg():
  gin_utils.parse(['models/tiny.gin'], ['T5Config.dropout_rate = 0.0'])
  return T5Config()


def model_for(cfg, head, **kw):
  return RerankerModel(cfg, head=head, vocabulary=BYTES, **HEADS[head], **kw)


def tokens(n_rows=4, length=48):
  return jnp.asarray(MONO.batch(BYTES, (PAIRS * 4)[:n_rows], length))


def flat_params(module):
  return {path: np.asarray(v.get_value())
          for path, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def log_softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  m = x.max(axis=axis, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


# ----------------------------------------------------------------- heads ---


@pytest.mark.parametrize('head', sorted(HEADS))
def test_parameters_are_the_t5s_under_its_paths(cfg, head):
  net = model_for(cfg, head).make_network(nnx.Rngs(params=0))
  t5 = flat_params(EncoderDecoder(cfg, rngs=nnx.Rngs(params=0)))
  mine = flat_params(net)
  assert set(t5) <= set(mine)
  extra = sorted('/'.join(map(str, p)) for p in set(mine) - set(t5))
  assert extra == (['score_head/bias', 'score_head/kernel']
                   if head == 'rank_encoder' else [])
  for path, value in t5.items():   # the same draws from the same seed
    np.testing.assert_array_equal(mine[path], value)


def test_mono_score_is_log_of_p_true_over_p_true_plus_p_false(cfg):
  net = model_for(cfg, 'mono').make_network(nnx.Rngs(params=1))
  x = tokens()
  scores = np.asarray(net.score(x))
  # By hand from the EncoderDecoder's logits of one decoder step.
  t5 = EncoderDecoder(cfg, rngs=nnx.Rngs(params=1))
  logits = np.asarray(t5(x, jnp.zeros((len(x), 1), jnp.int32)))[:, 0]
  p = np.exp(log_softmax(logits))
  want = np.log(p[:, T_ID] / (p[:, T_ID] + p[:, F_ID]))
  np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5)
  assert scores.shape == (4,) and (scores < 0).all()


def test_rank_encdec_score_is_the_designated_tokens_logit(cfg):
  net = model_for(cfg, 'rank_encdec').make_network(nnx.Rngs(params=2))
  x = tokens()
  t5 = EncoderDecoder(cfg, rngs=nnx.Rngs(params=2))
  logits = np.asarray(t5(x, jnp.zeros((len(x), 1), jnp.int32)))[:, 0]
  np.testing.assert_allclose(np.asarray(net.score(x)), logits[:, SCORE_ID],
                             rtol=1e-6, atol=1e-6)


def test_rank_encoder_head_shape_sharding_and_value_on_8_devices(
    cfg, mesh_data2_fsdp2_model2):
  model = model_for(cfg, 'rank_encoder')
  part = partitioning.Partitioner(mesh_data2_fsdp2_model2)
  net = model.get_initial_variables(3, part)
  kernel, bias = net.score_head.kernel[...], net.score_head.bias[...]
  assert kernel.shape == (cfg.emb_dim,) and bias.shape == ()
  assert kernel.sharding.spec == PartitionSpec('fsdp')
  assert bias.sharding.is_fully_replicated
  x = tokens(8)
  rows = jax.device_put(x, part.sharding(partitioning.BATCH_AXES, x.shape))
  with part.activate():
    scores = nnx.jit(lambda n, t: n.score(t))(net, rows)
  assert scores.shape == (8,)
  assert scores.sharding.spec[0] == ('data', 'fsdp')
  # NumPy: mean of the encoder outputs over the real tokens, . kernel + b.
  encoded = np.asarray(net.encode(x), np.float64)
  valid = np.asarray(x != 0, np.float64)[..., None]
  pooled = (encoded * valid).sum(1) / valid.sum(1)
  want = pooled @ np.asarray(kernel, np.float64) + float(bias)
  np.testing.assert_allclose(np.asarray(scores), want, rtol=1e-5, atol=1e-5)


def test_token_lookup_by_word_and_by_id():
  assert token_id('t', BYTES, 'f') == T_ID
  assert token_id(300, None, 'f') == 300
  with pytest.raises(ValueError, match=r"RerankerModel.true_token = 'true' "
                     r'is 4 pieces \[119, 117, 120, 104\] in the '
                     r'ByteVocabulary, not one'):
    token_id('true', BYTES, 'RerankerModel.true_token')
  with pytest.raises(ValueError, match="score_token = 'x' is a word, and no "
                     'vocabulary is known'):
    token_id('x', None, 'score_token')


def test_bad_head_settings_name_the_field(cfg):
  with pytest.raises(ValueError, match='true_token = .true. is 4 pieces'):
    RerankerModel(cfg, head='mono', vocabulary=BYTES).head_config()
  with pytest.raises(ValueError, match=r'score_id in \[0, 384\)'):
    RerankerModel(cfg, head='rank_encdec', score_token=384).head_config()
  with pytest.raises(ValueError, match='two different tokens'):
    RerankerModel(cfg, head='mono', true_token=5,
                  false_token=5).head_config()
  with pytest.raises(ValueError, match="loss = 'mono_ce' needs head = "
                     "'mono'"):
    RerankerModel(cfg, head='rank_encoder', loss='mono_ce')
  with pytest.raises(ValueError, match='pooling must be one of'):
    RerankerModel(cfg, head='rank_encoder', pooling='max')


# ------------------------------------------------------------------ loss ---


def list_batch(teacher=True):
  """2 real lists of 3 candidates (the second with a padding candidate)
  and a padding row (as in a padded evaluation batch)."""
  x = np.asarray(tokens(4, 48))
  pair = np.stack([x[[0, 1, 2]], np.stack([x[3], x[1], np.zeros_like(x[0])]),
                   np.zeros((3, 48), np.int32)])
  labels = np.array([[1, 0, 0], [2, 0, 0], [0, 0, 0]], np.float32)
  scores = np.array([[3.0, 1.0, 0.5], [0.0, 1.0, 0.0], [0, 0, 0]],
                    np.float32)
  teach = scores if teacher else np.full_like(scores, np.nan)
  teach = teach.copy()
  teach[1] = np.nan    # the second list has no teacher
  return {'pair_tokens': jnp.asarray(pair), 'labels': jnp.asarray(labels),
          'teacher_scores': jnp.asarray(teach)}


@pytest.mark.parametrize('loss', ['pointwise', 'pairwise', 'listwise'])
def test_ranking_losses_and_metrics_against_numpy(cfg, loss):
  model = model_for(cfg, 'rank_encoder', loss=loss, distill_weight=0.5)
  net = model.make_network(nnx.Rngs(params=4))
  batch = list_batch()
  value, metrics = model.loss_fn(net, batch)
  s = np.asarray(net.score(batch['pair_tokens'].reshape(9, 48)),
                 np.float64).reshape(3, 3)
  labels, t = np.asarray(batch['labels']), np.asarray(batch['teacher_scores'])
  valid = [[0, 1, 2], [0, 1]]
  per_list = []
  for i, idx in enumerate(valid):
    si, li = s[i, idx], labels[i, idx]
    if loss == 'pointwise':
      y = (li > 0).astype(float)
      v = np.mean(np.logaddexp(0, si) - y * si)
    elif loss == 'pairwise':
      v = np.mean([np.logaddexp(0, -(si[a] - si[c])) for a in range(len(idx))
                   for c in range(len(idx)) if li[a] > li[c]])
    else:
      v = -np.sum(li / li.sum() * log_softmax(si))
    if i == 0:   # Margin-MSE only where the teacher scored every candidate
      v += 0.5 * np.mean([((si[0] - si[j]) - (t[0, 0] - t[0, j])) ** 2
                          for j in (1, 2)])
    per_list.append(v)
  np.testing.assert_allclose(float(value), np.mean(per_list), rtol=1e-5)
  assert set(metrics) == {'loss_sum', 'z_loss_sum', 'correct', 'num_tokens'}
  assert float(metrics['num_tokens']) == 2.0   # lists, not the padding row
  np.testing.assert_allclose(float(metrics['loss_sum']), np.sum(per_list),
                             rtol=1e-5)
  correct = int(s[0, 0] > s[0, 1:].max()) + int(s[1, 0] > s[1, 1])
  assert float(metrics['correct']) == correct


def test_mono_cross_entropy_over_the_vocabulary_against_numpy(cfg):
  model = model_for(cfg, 'mono', z_loss=1e-3)
  net = model.make_network(nnx.Rngs(params=5))
  batch = list_batch()
  value, metrics = model.loss_fn(net, batch)
  x = np.asarray(batch['pair_tokens']).reshape(9, 48)
  logits = np.asarray(net.first_step_logits(jnp.asarray(x)),
                      np.float64).reshape(3, 3, -1)
  lsm = log_softmax(logits)
  log_z = np.log(np.exp(logits).sum(-1))
  per_list = []
  for i, idx in enumerate([[0, 1, 2], [0, 1]]):
    target = [T_ID if batch['labels'][i, j] > 0 else F_ID for j in idx]
    per_list.append(np.mean([-lsm[i, j, tk] + 1e-3 * log_z[i, j] ** 2
                             for j, tk in zip(idx, target)]))
  np.testing.assert_allclose(float(value), np.mean(per_list), rtol=1e-5)
  z = [np.mean([1e-3 * log_z[i, j] ** 2 for j in idx])
       for i, idx in enumerate([[0, 1, 2], [0, 1]])]
  np.testing.assert_allclose(float(metrics['z_loss_sum']), sum(z),
                             rtol=1e-4)
  scores = np.asarray(model.score_batch(net, batch))
  assert np.isneginf(scores[1, 2]) and np.isneginf(scores[2]).all()


def test_distillation_needs_teacher_scores(cfg):
  model = model_for(cfg, 'rank_encoder', distill_weight=1.0)
  batch = dict(list_batch())
  del batch['teacher_scores']
  with pytest.raises(KeyError, match=r"missing features \['teacher_scores'\]"):
    model.check_batch(batch)


# ----------------------------------------------------------- initialise ---


def test_initialised_from_an_hf_folder_and_from_a_run_directory(
    cfg, tmp_path):
  model = model_for(cfg, 'rank_encoder')
  mesh = partitioning.make_mesh(data=2, model=2, devices=jax.devices()[:4])
  part = partitioning.Partitioner(mesh)
  source = EncoderDecoder(cfg, rngs=nnx.Rngs(params=7))
  want = flat_params(source)
  fresh = flat_params(model.make_network(nnx.Rngs(params=0)))

  def check(net):
    got = flat_params(net)
    for path, value in want.items():
      np.testing.assert_allclose(got[path], value, rtol=1e-6, atol=1e-7)
    for name in ('kernel', 'bias'):   # not in the T5: a fresh (seed 0) head
      # (drawn under jit: ~1 ulp from the eager draw, BUILD_NOTES "Model")
      np.testing.assert_allclose(got[('score_head', name)],
                                 fresh[('score_head', name)], atol=1e-6)
    assert net.score_head.kernel[...].sharding.mesh == mesh

  hf_dir = hf.export_hf_checkpoint(source, str(tmp_path / 'hf'))
  check(model.import_hf_checkpoint(hf_dir, part))
  # A Rosetta run (here: an NMT run's checkpoint at step 0), as
  # `train.init_from` reads it: every T5 path, no score head.
  run = RunDir(str(tmp_path / 'nmt')).create()
  run.write_config('# an NMT run\n')
  tr = trainer_lib.Trainer(EncoderDecoderModel(cfg), part, optax.sgd(1.0))
  ckpt = run.checkpointer(save_interval_steps=1, async_save=False)
  ckpt.save(0, tr.state_from_network(source), None, force=True)
  ckpt.wait()
  ckpt.close()
  reranker = trainer_lib.Trainer(model, part, optax.sgd(1.0))
  wanted = trainable_params.flatten(reranker.abstract_full_params)
  found = param_sources.load([{'run': run.path, 'step': 0}], wanted)
  assert set(found) == set(want)
  for path, value in want.items():
    np.testing.assert_array_equal(np.asarray(found[path]), value)

  other = model_for(cfg.replace(emb_dim=64), 'rank_encoder')
  with pytest.raises(ValueError, match=r'hf: the checkpoint does not fit '
                     r'RerankerModel.config: emb_dim=32 \(config: 64\)'):
    other.import_hf_checkpoint(hf_dir, part)
  bigger = trainer_lib.Trainer(other, part, optax.sgd(1.0))
  with pytest.raises(ValueError, match=r'nmt step 0: parameter '
                     r'decoder/final_norm/scale has shape \(32,\); this '
                     r'network needs \(64,\)'):
    param_sources.load([{'run': run.path, 'step': 0}],
                       trainable_params.flatten(bigger.abstract_full_params))


# -------------------------------------------------------------- training ---

WORDS = ('cat dog fish bird tree river stone cloud sun moon star rain wind '
         'fire snow leaf seed wolf bear frog').split()
TOY_LENGTH, TOY_CANDIDATES = 48, 4


def planted_lists(rng: random.Random, n: int, pair_format):
  """n lists: a query of two words; the positive holds both (among 3
  others), each of the 3 negatives 5 words without them."""
  pairs = []
  for _ in range(n):
    query = rng.sample(WORDS, 2)
    rest = [w for w in WORDS if w not in query]
    positive = query + rng.sample(rest, 3)
    rng.shuffle(positive)
    docs = [' '.join(positive)] + [' '.join(rng.sample(rest, 5))
                                   for _ in range(TOY_CANDIDATES - 1)]
    pairs += [(' '.join(query), d) for d in docs]
  x = pair_format.batch(BYTES, pairs, TOY_LENGTH)
  labels = np.zeros((n, TOY_CANDIDATES), np.float32)
  labels[:, 0] = 1.0
  return {'pair_tokens': x.reshape(n, TOY_CANDIDATES, TOY_LENGTH),
          'labels': labels,
          'teacher_scores': np.zeros((n, TOY_CANDIDATES), np.float32)}


def test_a_tiny_reranker_learns_to_rank_the_planted_positive_first(cfg):
  fmt = rerank_tasks.PairFormat(rerank_tasks.RANKT5_TEMPLATE)
  model = RerankerModel(cfg, head='rank_encoder', pooling='mean',
                        loss='listwise', num_candidates=TOY_CANDIDATES)
  mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
  tr = trainer_lib.Trainer(model, partitioning.Partitioner(mesh),
                           optax.adamw(5e-3))
  state = tr.init_state()
  rng = random.Random(0)
  for _ in range(250):
    state, metrics = tr.train_step(state, planted_lists(rng, 16, fmt))
  assert float(metrics['accuracy']) >= 0.5
  test = planted_lists(random.Random(123), 64, fmt)
  net = tr.network(state['params'])
  scores = np.asarray(nnx.jit(lambda n, t: n.score(t))(
      net, jnp.asarray(test['pair_tokens'].reshape(-1, TOY_LENGTH))))
  first = np.mean(scores.reshape(64, -1).argmax(-1) == 0)
  assert first >= 0.6, f'planted positive first in {first:.0%} of lists'
