"""Scanned layers (T5Config.scan_layers, `rosetta.model.layer_stack`)
compute what the unrolled layers compute: same initial parameters (stacked),
same logits and gradients, same decoded tokens, same sharded train steps;
and the two parameter layouts convert into each other (HF files, LoRA
merging)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rosetta import optimizers, partitioning, trainable_params, trainer
from rosetta.checkpoint import hf
from rosetta.decoding import algorithms
from rosetta.model import layer_stack, peft
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config
from rosetta.model.encoder_decoder_model import EncoderDecoderModel

CFG = T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
               num_encoder_layers=3, num_decoder_layers=2, dropout_rate=0.0)


def _flat(module_or_state):
  state = (module_or_state if isinstance(module_or_state, nnx.State)
           else nnx.state(module_or_state, nnx.Param))
  return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _batch(seed=0, b=4):
  rng = np.random.default_rng(seed)
  tgt = rng.integers(2, 64, (b, 6)).astype(np.int32)
  tgt[:, -1] = 1
  tgt[1, 3:] = 0
  enc = rng.integers(2, 64, (b, 7)).astype(np.int32)
  enc[2, 5:] = 0
  return {'encoder_input_tokens': enc, 'decoder_target_tokens': tgt,
          'decoder_input_tokens': np.concatenate(
              [np.zeros((b, 1), np.int32), tgt[:, :-1]], 1)}


@functools.cache
def _pair(seed=0, **overrides):
  cfg = CFG.replace(**overrides)
  return (EncoderDecoder(cfg, rngs=nnx.Rngs(seed)),
          EncoderDecoder(cfg.replace(scan_layers=True), rngs=nnx.Rngs(seed)))


def test_scanned_init_is_the_unrolled_init_stacked():
  unrolled, scanned = _pair()
  stacked = layer_stack.stack_paths(_flat(unrolled))
  got = _flat(scanned)
  assert sorted(got) == sorted(stacked)
  for path, value in got.items():
    np.testing.assert_array_equal(value, stacked[path], err_msg=str(path))
  kernel = got[('encoder', 'layers', 'mlp', 'wi_0')]
  assert kernel.shape == (3, 32, 64)
  axes = dict(nnx.to_flat_state(partitioning.state_logical_axes(
      nnx.state(scanned, nnx.Param))))
  assert axes[('encoder', 'layers', 'mlp', 'wi_0')] == (
      'layers', 'embed', 'mlp')


@pytest.mark.parametrize('remat', [
    'none', pytest.param('full', marks=pytest.mark.slow),
    pytest.param('dots_saveable', marks=pytest.mark.slow)])
def test_same_logits_and_gradients_as_unrolled(remat):
  unrolled, scanned = _pair()
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  model = EncoderDecoderModel(CFG)

  def loss_and_grads(network):
    graphdef, params, rest = nnx.split(network, nnx.Param, ...)

    def loss(params):
      net = nnx.merge(graphdef, params, rest)
      return model.loss_fn(net, batch, jax.random.key(1))[0]
    return jax.jit(jax.value_and_grad(loss))(params)

  want_loss, want_grads = loss_and_grads(unrolled)
  if remat != 'none':
    scanned = EncoderDecoder(CFG.replace(scan_layers=True, remat=remat),
                             rngs=nnx.Rngs(0))
  loss, grads = loss_and_grads(scanned)
  assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
  assert float(want_loss) > 1.0
  want = layer_stack.stack_paths(_flat(want_grads))
  got = _flat(grads)
  assert sorted(got) == sorted(want)
  for path in got:
    np.testing.assert_allclose(got[path], want[path], rtol=1e-5, atol=1e-6,
                               err_msg=str(path))


def test_dropout_draws_per_layer_keys():
  _, scanned = _pair(dropout_rate=0.3)
  graphdef, state = nnx.split(scanned)
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}

  @jax.jit
  def run(state, key):
    network = nnx.merge(graphdef, state)
    return network(batch['encoder_input_tokens'],
                   batch['decoder_input_tokens'],
                   batch['decoder_target_tokens'],
                   deterministic=key is None,
                   rngs=None if key is None else nnx.Rngs(dropout=key))
  a, b, c = (np.asarray(run(state, jax.random.key(k))) for k in (0, 0, 1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert not np.allclose(a, np.asarray(run(state, None)))


def test_decoding_gives_the_unrolled_tokens():
  unrolled, scanned = _pair(seed=1)
  tokens = jnp.asarray(_batch(seed=2)['encoder_input_tokens'])
  greedy = [np.asarray(algorithms.greedy(m, tokens, max_decode_length=6)[0])
            for m in (unrolled, scanned)]
  np.testing.assert_array_equal(greedy[0], greedy[1])
  beams = [algorithms.beam_search(m, tokens, num_beams=3, num_decodes=2,
                                  max_decode_length=6)
           for m in (unrolled, scanned)]
  np.testing.assert_array_equal(np.asarray(beams[0][0]),
                                np.asarray(beams[1][0]))
  np.testing.assert_allclose(np.asarray(beams[0][1]), np.asarray(beams[1][1]),
                             rtol=1e-5)
  targets = jnp.asarray(_batch(seed=2)['decoder_target_tokens'])
  np.testing.assert_allclose(
      np.asarray(algorithms.score_sequences(unrolled, tokens, targets)),
      np.asarray(algorithms.score_sequences(scanned, tokens, targets)),
      rtol=1e-5)


def test_sharded_train_steps_match_unrolled(mesh_data2_fsdp2_model2):
  sched = optimizers.learning_rate_schedule('constant', 1e-2, 0)
  losses = {}
  for scan in (False, True):
    tr = trainer.Trainer(
        EncoderDecoderModel(CFG.replace(scan_layers=scan)),
        partitioning.Partitioner(mesh_data2_fsdp2_model2),
        optimizers.make_optimizer('adafactor', sched, grad_clip_norm=1.0),
        sched, seed=3)
    state = tr.init_state()
    batch = _batch(b=8)
    batch = jax.device_put(batch, tr.batch_shardings(batch))
    out = []
    for _ in range(3):
      state, metrics = tr.train_step(state, batch)
      out.append(float(metrics['loss']))
    losses[scan] = out
    if scan:
      wi = state['params']['encoder']['layers']['mlp']['wi_0']
      assert wi.shape == (3, 32, 64)
      assert wi.sharding.is_equivalent_to(
          NamedSharding(mesh_data2_fsdp2_model2, P(None, 'fsdp', 'model')), 3)
  np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
  assert losses[True][-1] < losses[True][0]


def test_layouts_convert_both_ways():
  unrolled, scanned = _pair()
  flat = _flat(unrolled)
  stacked = layer_stack.stack_paths(flat)
  back = layer_stack.unstack_paths(stacked)
  assert sorted(back) == sorted(flat)
  for path in flat:
    np.testing.assert_array_equal(back[path], flat[path])
  assert layer_stack.unstack_paths(flat).keys() == flat.keys()  # no-op
  gap = {p: v for p, v in flat.items()
         if p[:3] != ('encoder', 'layers', 1)}
  with pytest.raises(ValueError, match=r'encoder/layers/attention/key: '
                     r'layers \[0, 2\] are not 0..L-1'):
    layer_stack.stack_paths(gap)


def test_merge_lora_of_stacked_layers_equals_unrolled():
  cfg = CFG.replace(lora_rank=4, lora_targets=('query', 'out', 'mlp'))
  unrolled = EncoderDecoder(cfg, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype),
      params)   # B starts at zero: make the update non-trivial
  flat = trainable_params.flatten(params)
  merged_unrolled = trainable_params.flatten(
      peft.merge_lora(params, cfg.lora_scale))
  stacked = trainable_params.unflatten(layer_stack.stack_paths(flat))
  merged_stacked = trainable_params.flatten(
      peft.merge_lora(stacked, cfg.lora_scale))
  want = layer_stack.stack_paths(merged_unrolled)
  assert sorted(merged_stacked) == sorted(want)
  assert not any('lora' in p for p in want)
  for path in want:
    np.testing.assert_allclose(np.asarray(merged_stacked[path]), want[path],
                               rtol=1e-6, atol=1e-6, err_msg=str(path))


def test_hf_files_round_trip_through_a_scanned_model(tmp_path):
  unrolled, scanned = _pair(seed=4)
  hf.export_hf_checkpoint(scanned, str(tmp_path / 'from_scanned'))
  hf.export_hf_checkpoint(unrolled, str(tmp_path / 'from_unrolled'))
  a = hf.read_safetensors(str(tmp_path / 'from_scanned'))
  b = hf.read_safetensors(str(tmp_path / 'from_unrolled'))
  assert sorted(a) == sorted(b)
  for name in a:
    np.testing.assert_array_equal(a[name][0], b[name][0], err_msg=name)
  back = hf.import_hf_checkpoint(str(tmp_path / 'from_unrolled'),
                                 scan_layers=True, dropout_rate=0.0)
  assert back.cfg.scan_layers
  got, want = _flat(back), _flat(scanned)
  assert sorted(got) == sorted(want)
  for path in got:
    np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))


def test_dual_encoder_imports_hf_files_into_scanned_towers(tmp_path):
  from retrieval.dense import dual_encoder   # pylint: disable=import-outside-toplevel
  unrolled, _ = _pair(seed=5)
  hf.export_hf_checkpoint(unrolled, str(tmp_path / 't5'))
  towers = {scan: dual_encoder.import_hf_encoder(
      str(tmp_path / 't5'), scan_layers=scan, dropout_rate=0.0)
            for scan in (False, True)}
  want = layer_stack.stack_paths(_flat(towers[False]))
  got = _flat(towers[True])
  assert sorted(got) == sorted(want)
  assert got[('shared_tower', 'encoder', 'layers', 'mlp', 'wi_0')].shape == (
      3, 32, 64)
  for path in got:
    np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))


def test_dual_encoder_and_reranker_towers_scan_too():
  """Every family's T5 stack scans: a dual encoder's embeddings and a
  reranker's scores equal their unrolled networks' (same seed)."""
  from retrieval.dense import dual_encoder   # pylint: disable=import-outside-toplevel
  from retrieval.rerank import reranker   # pylint: disable=import-outside-toplevel
  tokens = jnp.asarray(_batch(seed=6)['encoder_input_tokens'])
  out = {}
  for scan in (False, True):
    cfg = CFG.replace(scan_layers=scan)
    towers = dual_encoder.DualEncoder(
        dual_encoder.DualEncoderConfig(encoder=cfg), rngs=nnx.Rngs(7))
    ranker = reranker.Reranker(cfg, reranker.HeadConfig(kind='rank_encoder'),
                               rngs=nnx.Rngs(7))
    out[scan] = (np.asarray(towers.encode(tokens)),
                 np.asarray(ranker.score(tokens)))
  for unrolled, scanned in zip(out[False], out[True]):
    np.testing.assert_allclose(scanned, unrolled, rtol=1e-5, atol=1e-6)


def test_a_run_of_the_other_layout_is_named():
  from rosetta.run import param_sources   # pylint: disable=import-outside-toplevel
  stacked = {('encoder', 'layers', 'mlp', 'wi_0'): None,
             ('shared_embedding', 'embedding'): None}
  unrolled_saved = {'params/encoder/layers/0/mlp/wi_0': ((32, 64), 'f'),
                    'params/shared_embedding/embedding': ((64, 32), 'f')}
  with pytest.raises(ValueError, match=r'runs/base step 7: its layers are '
                     r'unrolled \(T5Config.scan_layers = False\); this '
                     r'network wants them scanned'):
    param_sources.check_layer_layout('runs/base', 7, stacked, unrolled_saved)
  param_sources.check_layer_layout(   # same layout: fine
      'runs/base', 7, {('encoder', 'layers', 0, 'mlp', 'wi_0'): None},
      unrolled_saved)
