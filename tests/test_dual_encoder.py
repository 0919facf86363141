"""The dual encoder network and its model wrapper: tower == EncoderDecoder's
encoder, mask-aware pooling, projection and normalisation, logical axes on
a mesh, the same loss on 1 and 8 devices, the feature converter's literal
features, make_encode_fn, and import from HF T5 checkpoints."""

import functools
import json
import os
import shutil
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rosetta import optimizers, partitioning, trainer
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config
from retrieval.dense import dual_encoder as de
from retrieval.dense import dual_encoder_model as dem
from retrieval.dense import pair_tasks

# One layer: compiling is most of these tests' time (the HF checkpoints
# below have two).
T5 = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
              num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)


def cfg(**kw):
  return de.DualEncoderConfig(encoder=T5, **kw)


# Jitted forwards: eager NNX compiles every op for every new shape, which
# costs seconds each on a loaded 2-core machine.
@functools.partial(nnx.jit, static_argnums=2)
def encode(net, x, tower='query'):
  return net.encode(x, tower)


@nnx.jit
def both_towers(net, x):
  return net.encode(x, 'query'), net.encode(x, 'doc')


def tokens(rows, length):
  out = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return jnp.asarray(out)


def test_tower_is_the_encoder_decoder_encoder():
  # An EncoderDecoder holding the tower's weights (its decoder, unused by
  # `encode`, is zeros: no init to compile).
  net = de.DualEncoder(cfg(), rngs=nnx.Rngs(2))
  tower = net.tower('query')
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: EncoderDecoder(T5, rngs=nnx.Rngs(1))))
  mine = dict(nnx.to_flat_state(nnx.state(tower)))
  state = nnx.map_state(lambda path, v: v.replace(
      mine[path].get_value() if path in mine
      else jnp.asarray(np.zeros(v.shape, v.dtype))), state)
  ed = nnx.merge(graphdef, state)
  x = tokens([[5, 6, 7, 8, 1], [9, 1], [4, 4, 4, 1]], 6)
  got = nnx.jit(lambda t, x: t.hidden_states(x))(tower, x)
  want = nnx.jit(lambda m, x: m.encode(x))(ed, x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_pooling_by_hand():
  hidden = jnp.asarray([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]],
                        [[7.0, 8.0], [50.0, 50.0], [60.0, 60.0]],
                        [[9.0, 9.0], [9.0, 9.0], [9.0, 9.0]]])
  valid = jnp.asarray([[1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
  np.testing.assert_allclose(de.pool(hidden, valid, 'mean'),
                             [[2.0, 3.0], [7.0, 8.0], [0.0, 0.0]])
  np.testing.assert_allclose(de.pool(hidden, valid, 'first'),
                             [[1.0, 2.0], [7.0, 8.0], [9.0, 9.0]])
  # A zero row (an all-padding hard negative) normalises to zero with a
  # finite gradient (sqrt at 0 would make it NaN and poison training).
  g = jax.grad(lambda x: de.l2_normalize(x).sum())(jnp.zeros((1, 3)))
  assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(de.l2_normalize(jnp.asarray([[3.0, 4.0]])),
                             [[0.6, 0.8]], rtol=1e-6)


@pytest.mark.parametrize('pooling', ['mean', 'first'])
def test_padding_does_not_change_the_embedding(pooling):
  net = de.DualEncoder(cfg(pooling=pooling, projection_dim=12),
                       rngs=nnx.Rngs(0))
  short = encode(net, tokens([[5, 6, 7, 1]], 4))
  padded = encode(net, tokens([[5, 6, 7, 1], [9, 9, 1]], 9))
  np.testing.assert_allclose(np.asarray(padded[0]), np.asarray(short[0]),
                             atol=1e-5)
  assert padded.shape == (2, 12)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(padded), axis=-1),
                             1.0, rtol=1e-5)


def test_towers_projection_and_normalisation():
  x = tokens([[5, 6, 7, 1], [8, 1]], 5)
  shared = de.DualEncoder(cfg(), rngs=nnx.Rngs(0))
  q, d = both_towers(shared, x)
  np.testing.assert_array_equal(np.asarray(q), np.asarray(d))
  two = de.DualEncoder(cfg(shared_towers=False), rngs=nnx.Rngs(0))
  q, d = both_towers(two, x)
  assert not np.allclose(np.asarray(q), np.asarray(d))
  raw = de.DualEncoder(cfg(l2_normalize=False), rngs=nnx.Rngs(0))
  raw_emb = np.asarray(encode(raw, x))
  assert raw_emb.shape == (2, T5.emb_dim)
  assert not np.allclose(np.linalg.norm(raw_emb, axis=-1), 1.0, rtol=1e-2)
  # (b, k, l) hard negatives keep their leading shape.
  assert jax.eval_shape(lambda x: shared.encode(x, 'doc'),
                        jnp.stack([x, x])).shape == (2, 2, 16)
  with pytest.raises(ValueError, match="tower must be one of"):
    shared.tower('passage')


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match='DualEncoderConfig.pooling'):
    cfg(pooling='max')
  with pytest.raises(ValueError, match='DualEncoderConfig.projection_dim'):
    cfg(projection_dim=0)
  with pytest.raises(ValueError, match='DualEncoderConfig.temperature'):
    cfg(temperature=0.0)
  with pytest.raises(ValueError, match='DualEncoderModel.mode'):
    dem.DualEncoderModel(cfg(), mode='softmax')


def test_every_param_is_sharded_by_name(mesh_data2_fsdp2_model2):
  # Every parameter has logical axes; the rules table turns them into
  # shardings (checked abstractly: what create_sharded would place).
  mesh = mesh_data2_fsdp2_model2
  c = cfg(shared_towers=False, projection_dim=8, learn_temperature=True)
  abstract = nnx.eval_shape(
      lambda: dem.DualEncoderModel(c).make_network(nnx.Rngs(0)))
  shardings = {'/'.join(map(str, p)): v for p, v in
               nnx.to_flat_state(partitioning.Partitioner(mesh)
                                 .state_shardings(nnx.state(abstract)))}
  want = lambda *spec: NamedSharding(mesh, P(*spec))
  for tower in ('query_tower', 'doc_tower'):
    for path, spec in [('projection', ('fsdp', 'model')),
                       ('shared_embedding/embedding', ('model', 'fsdp')),
                       ('encoder/layers/0/mlp/wi_0', ('fsdp', 'model')),
                       ('encoder/layers/0/attention/query',
                        ('fsdp', 'model', None)),
                       ('encoder/relpos_bias/embedding', (None, 'model'))]:
      assert shardings[f'{tower}/{path}'] == want(*spec), path
  assert shardings['logit_scale/log_scale'] == want()
  assert len(shardings) == 2 * 13 + 1   # 13 per tower, the scale


def model_batch(b=16, k=1, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.integers(3, 64, (b, 6)).astype(np.int32)
  q[:, -1] = 1
  p = rng.integers(3, 64, (b, 8)).astype(np.int32)
  p[:, -1] = 1
  p[11] = p[2]                 # the same document on two devices
  n = rng.integers(3, 64, (b, k, 8)).astype(np.int32)
  n[::3] = 0                   # rows without a hard negative
  ids = lambda x: np.asarray([zlib.crc32(r.tobytes()) % 2**31 for r in
                              x.reshape(-1, x.shape[-1])],
                             np.int32).reshape(x.shape[:-1])
  return {'query_tokens': q, 'positive_tokens': p, 'negative_tokens': n,
          'query_ids': ids(q), 'positive_ids': ids(p), 'negative_ids': ids(n)}


def test_model_loss_is_global_on_1_and_8_devices(mesh_data8):
  # The trainer's eval step on one device and on eight (rows sharded, the
  # duplicate document of rows 2 and 11 on different devices): same loss.
  model = dem.DualEncoderModel(cfg(learn_temperature=True), num_negatives=1)
  net = model.make_network(nnx.Rngs(0))
  one = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
  metrics = []
  for mesh in (one, mesh_data8):
    tr = trainer.Trainer(model, partitioning.Partitioner(mesh),
                         optimizers.make_optimizer('sgd', 1.0))
    batch = model_batch()
    batch = jax.device_put(batch, tr.batch_shardings(batch))
    assert batch['negative_tokens'].sharding.is_equivalent_to(
        NamedSharding(mesh, P('data')), 3)
    state = tr.state_from_network(net)
    metrics.append(tr.eval_step(state, batch))
  m1, m8 = metrics
  assert float(m1['num_tokens']) == float(m8['num_tokens']) == 16.0
  np.testing.assert_allclose(float(m8['loss_sum']), float(m1['loss_sum']),
                             rtol=1e-5)
  assert float(m8['correct']) == float(m1['correct'])
  # Rows 2 and 11 share a document: masked, the loss is lower than with
  # distinct ids (which make it a false negative).
  batch = model_batch()
  batch['positive_ids'][11] = 12345
  plain = tr.eval_step(state, jax.device_put(batch,
                                             tr.batch_shardings(batch)))
  assert float(plain['loss_sum']) > float(m8['loss_sum']) + 1e-3


def test_loss_fn_masks_padding_rows_and_scores():
  model = dem.DualEncoderModel(cfg(), num_negatives=1)
  net = model.make_network(nnx.Rngs(0))

  @nnx.jit
  def run(net, batch):
    return (model.loss_fn(net, batch), model.score_batch(net, batch),
            net.encode(batch['query_tokens'], 'query'),
            net.encode(batch['positive_tokens'], 'doc'))
  batch = {k: jnp.asarray(v[:4]) for k, v in model_batch().items()}
  padded = {k: jnp.concatenate([v, jnp.zeros_like(v[:2])])
            for k, v in batch.items()}
  (loss, _), s, q, p = run(net, batch)
  (loss_p, m_p), s_p, _, _ = run(net, padded)
  assert float(m_p['num_tokens']) == 4.0
  np.testing.assert_allclose(float(loss_p), float(loss), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(s), np.sum(q * p, -1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(s_p[:4]), np.asarray(s), rtol=1e-5)
  with pytest.raises(KeyError, match='negative_tokens'):
    model.loss_fn(net, {k: v for k, v in batch.items()
                        if k != 'negative_tokens'})


def test_feature_converter_literal_features():
  vocab = seqio.ByteVocabulary()   # id = byte + 3, EOS = 1
  src = pair_tasks.PairSource({'train': lambda: [
      ('hi', 'de', ('a', 'bbbbbbb', 'c')),
      ('xy', 'de', ()),
  ]})
  pair_tasks.register_pair_task('test_de_pairs_literal', src, vocab)
  lengths = {'queries': 6, 'positives': 5, 'negatives': 5}
  ds = seqio.get_dataset(
      'test_de_pairs_literal', task_feature_lengths=lengths,
      dataset_split='train', shuffle=False, num_epochs=1,
      feature_converter=dem.DualEncoderFeatureConverter(num_negatives=2))
  a, b = list(ds.as_numpy_iterator())
  assert a['query_tokens'].tolist() == [107, 108, 1, 0, 0, 0]
  assert a['positive_tokens'].tolist() == [103, 104, 1, 0, 0]
  # Trimmed to 4 tokens + EOS; only the first 2 negatives kept.
  assert a['negative_tokens'].tolist() == [[100, 1, 0, 0, 0],
                                           [101, 101, 101, 101, 1]]
  assert b['negative_tokens'].tolist() == [[0] * 5, [0] * 5]
  assert a['positive_ids'] == b['positive_ids']      # identical documents
  assert a['query_ids'] != b['query_ids']
  assert a['negative_ids'].shape == (2,)
  with pytest.raises(ValueError, match='train.pack = False'):
    dem.DualEncoderFeatureConverter(pack=True)
  with pytest.raises(ValueError, match='negatives'):
    seqio.get_dataset('test_de_pairs_literal',
                      task_feature_lengths={'queries': 6, 'positives': 5},
                      dataset_split='train',
                      feature_converter=dem.DualEncoderFeatureConverter(
                          num_negatives=2))


def test_sentencepiece_negatives_and_no_shuffle_buffer(tmp_path):
  """SentencePiece negatives are tokenized in one ragged call, equal to
  one-by-one encoding; the task has no post-tokenization shuffle buffer
  (the source reshuffles the whole split every epoch)."""
  from rosetta import vocab as vocab_lib
  words = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'Haus', 'Katze']
  text = [' '.join(words[(i + j) % 7] for j in range(i % 5 + 1))
          for i in range(200)]
  path = vocab_lib.train_sentencepiece(text, str(tmp_path / 'spm.model'),
                                       vocab_size=280)
  vocab = seqio.SentencePieceVocabulary(path)
  rows = [('alpha beta', 'gamma', ('delta epsilon Haus', 'Katze', 'beta')),
          ('Haus', 'Katze alpha', ())]
  src = pair_tasks.PairSource({'train': lambda: rows})
  task = pair_tasks.register_pair_task('test_de_pairs_spm', src, vocab)
  assert task.shuffle_buffer_size is None
  assert src.performs_internal_shuffling
  lengths = {'queries': 8, 'positives': 8, 'negatives': 6}
  got = list(task.get_dataset(lengths, split='train', shuffle=False,
                              num_epochs=1).as_numpy_iterator())
  for ex, (q, p, negs) in zip(got, rows):
    assert ex['queries'].tolist() == list(vocab.encode(q)) + [1]
    # Trimmed to 5 tokens, then EOS (append_eos_after_trim).
    want = [list(vocab.encode(n))[:5] + [1] for n in negs]
    assert [list(r) for r in ex['negatives']] == want
  # Shuffled training input still sees every example (no buffer needed).
  shuffled = list(task.get_dataset(lengths, split='train', shuffle=True,
                                   seed=1, num_epochs=1).as_numpy_iterator())
  assert sorted(e['queries'].tolist() for e in shuffled) == sorted(
      e['queries'].tolist() for e in got)


def test_make_encode_fn(mesh_data8):
  model = dem.DualEncoderModel(cfg(shared_towers=False, projection_dim=8))
  net = model.make_network(nnx.Rngs(0))
  state = {'params': nnx.to_pure_dict(nnx.state(net, nnx.Param)),
           'step': 0}     # a train state, as the trainer saves it
  vocab = seqio.ByteVocabulary()
  texts = [chr(ord('a') + i) * (i + 1) for i in range(11)]  # 2 batches
  texts[4] = 'a long text that is longer than the maximum length'
  encode_docs = dem.make_encode_fn(model, state, vocab, 12, 8, mesh_data8,
                                   'doc')
  got = encode_docs(texts)
  assert got.shape == (11, 8) and got.dtype == np.float32
  toks = dem.tokenize(texts, vocab, 12)
  assert toks[4].tolist()[-1] == 1 and toks[0].tolist()[:3] == [100, 1, 0]
  want = np.asarray(encode(net, jnp.asarray(toks), 'doc'))
  np.testing.assert_allclose(got, want, atol=1e-5)
  query = dem.make_encode_fn(model, net, vocab, 12, 8, mesh_data8, 'query')
  assert not np.allclose(query(texts[:3]), got[:3])
  # A parameters-only restore ({'params': ...}, no step) works the same.
  params_only = dem.make_encode_fn(model, {'params': state['params']}, vocab,
                                   12, 8, mesh_data8, 'doc')
  np.testing.assert_array_equal(params_only(texts), got)
  assert encode_docs([]).shape == (0, 8)
  with pytest.raises(ValueError, match='multiple of the data-parallel'):
    dem.make_encode_fn(model, state, vocab, 12, 4, mesh_data8)


# ------------------------------------------------------------ HF import ---

HF = dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2,
          num_decoder_layers=1, num_heads=4, feed_forward_proj='gated-gelu',
          tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=0,
          eos_token_id=1, decoder_start_token_id=0)


@pytest.fixture(scope='module')
def hf_checkpoints(tmp_path_factory):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp('hf')
  full = transformers.T5ForConditionalGeneration(
      transformers.T5Config(**HF)).eval()
  full.save_pretrained(root / 't5')
  # GTR as Sentence-Transformers ships it: encoder only, then its own
  # Dense module (no bias, identity) saved by the library in 2_Dense/.
  st = pytest.importorskip('sentence_transformers.sentence_transformer.'
                           'modules')
  enc = transformers.T5EncoderModel(transformers.T5Config(**HF)).eval()
  enc.save_pretrained(root / 'gtr')
  dense = st.Dense(32, 24, bias=False,
                   activation_function=torch.nn.Identity())
  (root / 'gtr' / '2_Dense').mkdir()
  dense.save(str(root / 'gtr' / '2_Dense'))
  x = tokens([[5, 6, 7, 8, 9, 1], [11, 12, 1], [20, 1], [30, 31, 1]], 7)
  ids = torch.tensor(np.asarray(x), dtype=torch.long)
  mask = torch.tensor(np.asarray(x) != 0, dtype=torch.long)
  with torch.no_grad():
    hidden = {'t5': full.encoder(input_ids=ids, attention_mask=mask
                                 ).last_hidden_state.numpy()}
    # Sentence-Transformers' own GTR head: mean pooling, Dense, Normalize.
    tokens_out = enc(input_ids=ids, attention_mask=mask).last_hidden_state
    feats = {'token_embeddings': tokens_out, 'attention_mask': mask}
    gtr = st.Normalize()(dense(st.Pooling(32, 'mean')(feats)))
  return root, x, hidden, gtr['sentence_embedding'].numpy()


@pytest.mark.peers
def test_import_t5_encoder_matches_hf(hf_checkpoints, mesh_data4_model2):
  root, x, hidden, _ = hf_checkpoints
  part = partitioning.Partitioner(mesh_data4_model2)
  net = de.import_hf_encoder(str(root / 't5'), de.DualEncoderConfig(
      encoder=T5, shared_towers=False), partitioner=part)
  assert net.cfg.encoder.emb_dim == 32       # from config.json
  assert net.query_tower.encoder.layers[0].mlp.wi_0[...].sharding \
      .is_equivalent_to(NamedSharding(mesh_data4_model2, P('fsdp', 'model')),
                        2)
  valid = (np.asarray(x) != 0)[..., None]
  with part.activate():
    h = np.asarray(jax.jit(lambda t: net.tower('query').hidden_states(t))(x))
    emb = np.asarray(jax.jit(lambda t: net.encode(t, 'doc'))(x))
  # Real tokens only: padding positions' outputs differ (HF lets them
  # attend, Rosetta masks them) and pooling never reads them.
  np.testing.assert_allclose(h * valid, hidden['t5'] * valid, atol=1e-4)
  # Both towers start from the checkpoint.
  q_params = nnx.to_flat_state(nnx.state(net.query_tower, nnx.Param))
  d_params = dict(nnx.to_flat_state(nnx.state(net.doc_tower, nnx.Param)))
  for path, v in q_params:
    np.testing.assert_array_equal(np.asarray(v.get_value()),
                                  np.asarray(d_params[path].get_value()))
  mean = (hidden['t5'] * valid).sum(1) / valid.sum(1)
  np.testing.assert_allclose(
      emb, mean / np.linalg.norm(mean, axis=-1, keepdims=True), atol=1e-4)


@pytest.mark.peers
def test_import_gtr_matches_sentence_transformers(hf_checkpoints):
  root, x, _, gtr = hf_checkpoints
  model = dem.DualEncoderModel(de.DualEncoderConfig(
      encoder=T5.replace(vocab_size=96, emb_dim=32, num_heads=4, head_dim=8,
                         mlp_dim=48, num_encoder_layers=2),
      projection_dim=24))
  net = model.import_hf_checkpoint(str(root / 'gtr'))
  np.testing.assert_allclose(np.asarray(encode(net, x)), gtr, atol=1e-5)
  # A checkpoint of another size is refused, naming the field.
  small = dem.DualEncoderModel(de.DualEncoderConfig(encoder=T5))
  with pytest.raises(ValueError, match=r'emb_dim=32 \(config: 16\)'):
    small.import_hf_checkpoint(str(root / 'gtr'))
  # A projection of the wrong shape names the file.
  wrong = de.DualEncoderConfig(encoder=T5, projection_dim=8)
  with pytest.raises(ValueError, match='2_Dense/model.safetensors'):
    de.import_hf_encoder(str(root / 'gtr'), wrong)


@pytest.mark.peers
def test_import_reports_unused_tensors(hf_checkpoints, tmp_path):
  root, *_ = hf_checkpoints
  d = tmp_path / 'bad'
  d.mkdir()
  cfg_json = json.load(open(root / 't5' / 'config.json'))
  cfg_json['num_layers'] = 1
  json.dump(cfg_json, open(d / 'config.json', 'w'))
  os.symlink(root / 't5' / 'model.safetensors', d / 'model.safetensors')
  with pytest.raises(ValueError, match='encoder does not use.*encoder.block.1'):
    de.import_hf_encoder(str(d))
  # A Sentence-Transformers Dense with a Tanh is not a linear projection.
  g = tmp_path / 'tanh'
  shutil.copytree(root / 'gtr', g)
  dense = json.load(open(g / '2_Dense' / 'config.json'))
  dense['activation_function'] = 'torch.nn.modules.activation.Tanh'
  json.dump(dense, open(g / '2_Dense' / 'config.json', 'w'))
  with pytest.raises(ValueError, match='2_Dense/config.json: .*Tanh'):
    de.import_hf_encoder(str(g), de.DualEncoderConfig(encoder=T5,
                                                      projection_dim=24))
