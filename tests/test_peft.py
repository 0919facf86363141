"""LoRA and bottleneck adapters (`rosetta.model.peft`), frozen parameters in
the trainer and parameters taken from other runs (`train.init_from`,
`rosetta.run.param_sources`): identity at init, merged == unmerged, base
bit-identical after training, small adapter checkpoints, and MAD-X
composition (language + task adapters loaded from separate runs equal the
stacked module; another language's adapter swapped in at load time)."""

import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rosetta import gin_utils, partitioning, trainable_params
from rosetta.model import peft
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config
from rosetta.run import param_sources, run_dir, runs

TINY = T5Config(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8,
                mlp_dim=64, num_encoder_layers=2, num_decoder_layers=2,
                dropout_rate=0.0)


def _params(net):
  return nnx.to_pure_dict(nnx.state(net, nnx.Param))


def _with(net, params):
  state = nnx.state(net, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(net, state)
  return net


def _logits(net):
  rng = np.random.default_rng(0)
  enc = jnp.asarray(rng.integers(2, 64, (3, 7)), jnp.int32)
  dec = jnp.asarray(rng.integers(2, 64, (3, 5)), jnp.int32)
  return np.asarray(net(enc, dec))


def _peft_net(cfg, base):
  """A PEFT network holding `base`'s parameters at every base path."""
  net = EncoderDecoder(cfg, rngs=nnx.Rngs(params=1))
  flat = trainable_params.flatten(_params(net))
  flat.update(trainable_params.flatten(_params(base)))
  return _with(net, trainable_params.unflatten(flat))


def _randomise(net, pattern, seed=3):
  flat = trainable_params.flatten(_params(net))
  rng = np.random.default_rng(seed)
  for path in trainable_params.select(_params(net), [pattern]):
    flat[path] = jnp.asarray(0.1 * rng.standard_normal(flat[path].shape),
                             flat[path].dtype)
  return _with(net, trainable_params.unflatten(flat))


def test_fresh_lora_and_adapters_compute_the_base_network():
  base = EncoderDecoder(TINY, rngs=nnx.Rngs(params=0))
  cfg = TINY.replace(lora_rank=4, lora_targets=('query', 'value', 'out',
                                                'mlp'),
                     adapters=('language', 'task'), adapter_dim=8)
  net = _peft_net(cfg, base)
  names = [trainable_params.path_name(p)
           for p in trainable_params.flatten(_params(net))]
  assert 'encoder/layers/0/attention/lora/query/a' in names
  assert 'decoder/layers/1/cross_attention/lora/out/b' in names
  assert 'encoder/layers/1/mlp/lora/wi_0/a' in names
  assert 'decoder/layers/0/adapters/task/up' in names
  assert not any('lora/key' in n for n in names)
  np.testing.assert_array_equal(_logits(net), _logits(base))


def test_merged_lora_equals_unmerged():
  base = EncoderDecoder(TINY, rngs=nnx.Rngs(params=0))
  cfg = TINY.replace(lora_rank=4, lora_alpha=8.0,
                     lora_targets=('query', 'key', 'value', 'out', 'mlp'))
  net = _randomise(_peft_net(cfg, base), r'lora/.*/b$')
  unmerged = _logits(net)
  assert not np.allclose(unmerged, _logits(base), atol=1e-3)
  merged = peft.merge_lora(_params(net), cfg.lora_scale)
  plain = _with(EncoderDecoder(TINY, rngs=nnx.Rngs(params=5)), merged)
  np.testing.assert_allclose(_logits(plain), unmerged, rtol=2e-5, atol=2e-5)


def test_bad_peft_config_names_the_field():
  with pytest.raises(ValueError, match='lora_targets'):
    TINY.replace(lora_rank=2, lora_targets=('qeury',))
  with pytest.raises(ValueError, match='adapters names an adapter twice'):
    TINY.replace(adapters=('task', 'task'))
  with pytest.raises(ValueError, match='lora_rank'):
    TINY.replace(lora_rank=-1)


def test_trainable_pattern_that_matches_nothing_is_an_error():
  params = _params(EncoderDecoder(TINY, rngs=nnx.Rngs(params=0)))
  with pytest.raises(ValueError, match="pattern '.*lora/' matches no"):
    trainable_params.select(params, peft.PEFT_TRAINABLE['lora'])


def test_adapter_checkpoint_is_small_for_t5_small():
  """LoRA rank 8 on q/v of T5.1.1 small, and a 64-wide adapter: the share
  of the full model each run's checkpoint holds (the issue's target is at
  most 5%), as exact parameter counts."""
  small = T5Config(vocab_size=32128, emb_dim=512, num_heads=6, head_dim=64,
                   mlp_dim=1024, num_encoder_layers=8, num_decoder_layers=8)
  for cfg, pattern, golden in [
      (small.replace(lora_rank=8), peft.PEFT_TRAINABLE['lora'][0],
       344_064),
      (small.replace(adapters=('task',)), peft.adapter_pattern('task'),
       1_056_768)]:
    shapes = nnx.eval_shape(lambda c=cfg: EncoderDecoder(c, rngs=nnx.Rngs(0)))
    params = _params(shapes)
    flat = trainable_params.flatten(params)
    chosen = trainable_params.select(params, [pattern])
    trained = sum(int(np.prod(flat[p].shape)) for p in chosen)
    total = sum(int(np.prod(v.shape)) for v in flat.values())
    assert trained == golden, (pattern, trained, trained / total)
    assert trained / total <= 0.05


# ------------------------------------------------------------ runs ---

BASE_BINDINGS = [
    "train.task_feature_lengths = {'inputs': 24, 'targets': 24}",
    'train.batch_size = 8', 'train.log_period = 1', 'train.eval_period = 0',
    'train.peak_flops = None',
]


def _train(model_dir, steps, *bindings,
           gin_files=('experiments/tiny_django_en_fr.gin',)):
  gin_utils.parse(list(gin_files), [
      *BASE_BINDINGS, f"train.model_dir = '{model_dir}'",
      f'train.total_steps = {steps}', f'train.checkpoint_period = {steps}',
      *bindings], finalize=False)
  gin.finalize()
  try:
    runs.train(mesh=partitioning.make_mesh(data=2, fsdp=2, model=2),
               config_text=run_dir.run_config_text())
  finally:
    gin.clear_config()
  return str(model_dir)


LANGUAGE_ADAPTER = ('models/tiny.gin', 'runs/train.gin', 'runs/local_tiny.gin',
                    'peft/language_adapter.gin')


def _french_text(path):
  """Monolingual French: the French side of Django's UI strings."""
  from rosetta.data import corpora
  lines = [fr for _, fr in corpora.django_splits('fr')['train']]
  path.write_text('\n'.join(l.replace('\n', ' ') for l in lines),
                  encoding='utf-8')
  return str(path)


def _saved(model_dir):
  step = param_sources.newest_step(model_dir)
  from rosetta.checkpoint import manager as checkpoints
  ckpt = checkpoints.Checkpointer(os.path.join(model_dir, 'checkpoints'),
                                  save_interval_steps=1, read_only=True)
  try:
    return {k[len('params/'):]: v for k, v in ckpt.saved_arrays(step).items()
            if k.startswith('params/')}
  finally:
    ckpt.close()


def _load(model_dir, overlays=()):
  loaded = run_dir.load_run(model_dir, overlays=overlays)
  params = trainable_params.flatten(_params(loaded.network))
  gin.clear_config()
  return {trainable_params.path_name(p): np.asarray(v)
          for p, v in params.items()}


@pytest.fixture(scope='module')
def base_run(tmp_path_factory):
  return _train(tmp_path_factory.mktemp('base'), 2)


@pytest.fixture(scope='module')
def lora_run(base_run, tmp_path_factory):
  return _train(tmp_path_factory.mktemp('lora'), 3,
                'encoder_decoder.T5Config.lora_rank = 4',
                f"train.init_from = ['{base_run}']",
                gin_files=('experiments/tiny_django_en_fr.gin',
                           'peft/lora.gin'))


def test_lora_run_trains_only_lora_and_leaves_the_base_bit_identical(
    base_run, lora_run):
  lora = lora_run
  saved = _saved(lora)
  assert saved and all('/lora/' in name for name in saved), sorted(saved)[:5]
  base = _load(base_run)
  tuned = _load(lora)
  for name, value in base.items():
    np.testing.assert_array_equal(tuned[name], value, err_msg=name)
  moved = [n for n in tuned if n.endswith('lora/query/b')
           and np.abs(tuned[n]).max() > 0]
  assert moved, 'LoRA B stayed zero: nothing trained'
  record = param_sources.read(lora)
  assert record['sources'] == [{'run': os.path.abspath(base_run), 'step': 2}]


def _run_logits(model_dir):
  network = run_dir.load_run(model_dir).network
  gin.clear_config()
  return _logits(network)


def test_merge_lora_gives_a_standalone_run_with_the_same_outputs(
    lora_run, tmp_path):
  from rosetta.checkpoint import merge_command
  merged = str(tmp_path / 'merged')
  assert merge_command.main(['--model_dir', lora_run, '--output', merged]) == 0
  assert param_sources.read(merged) is None
  assert not any('lora' in n for n in _saved(merged))
  assert 'T5Config.lora_rank = 0' in open(
      os.path.join(merged, 'config.gin')).read()
  merged_params, lora_params = _load(merged), _load(lora_run)
  assert set(merged_params) == {n for n in lora_params if '/lora/' not in n}
  np.testing.assert_allclose(_run_logits(merged), _run_logits(lora_run),
                             rtol=1e-4, atol=1e-4)
  assert merge_command.main(['--model_dir', merged,
                             '--output', str(tmp_path / 'again')]) == 1


def test_frozen_parameters_without_a_source_are_refused(tmp_path):
  with pytest.raises(ValueError, match='frozen parameters come from no '
                     'source run'):
    _train(tmp_path / 'orphan', 1,
           'encoder_decoder.T5Config.lora_rank = 4',
           "train.trainable = ['(^|/)lora/']")


@pytest.mark.slow   # five short runs: ~2 minutes on 2 cores
def test_language_and_task_adapters_compose_across_runs(base_run, tmp_path):
  """Two French language adapters (span corruption on French text, two
  seeds), a task adapter trained above the first, then loaded with the
  second swapped in."""
  language = [
      "span_corruption.setup.texts = {'fr': '%s'}" % _french_text(
          tmp_path / 'fr.txt'),
      'span_corruption.setup.sentinel_start = 383',
      "train.task = 'span_corruption_fr'", 'train.pack = False',
      'encoder_decoder.T5Config.adapter_dim = 8',
      f"train.init_from = ['{base_run}']"]
  lang_a = _train(tmp_path / 'lang_a', 2, *language,
                  gin_files=LANGUAGE_ADAPTER)
  lang_b = _train(tmp_path / 'lang_b', 2, *language, 'train.seed = 7',
                  gin_files=LANGUAGE_ADAPTER)
  assert all('/adapters/language/' in n for n in _saved(lang_a))
  task = _train(tmp_path / 'task', 2,
                'encoder_decoder.T5Config.adapter_dim = 8',
                f"train.init_from = ['{base_run}', '{lang_a}']",
                gin_files=('experiments/tiny_django_en_fr.gin',
                           'peft/task_adapter.gin'))
  assert all('/adapters/task/' in n for n in _saved(task))
  base, a, b = _load(base_run), _load(lang_a), _load(lang_b)
  stacked = _load(task)
  for name, value in stacked.items():
    if '/adapters/language/' in name:
      np.testing.assert_array_equal(value, a[name], err_msg=name)
    elif '/adapters/task/' not in name:
      np.testing.assert_array_equal(value, base[name], err_msg=name)
  swapped = _load(task, overlays=[lang_b])
  for name, value in swapped.items():
    if '/adapters/language/' in name:
      np.testing.assert_array_equal(value, b[name], err_msg=name)
    else:
      np.testing.assert_array_equal(value, stacked[name], err_msg=name)
  assert any(not np.array_equal(a[n], b[n]) for n in a
             if '/adapters/language/up' in n)


# ------------------------------------------------ every family ---


@pytest.mark.parametrize('microbatches', [1, 2])
def test_lora_fine_tunes_a_dual_encoder_with_the_base_frozen(
    mesh_data4_model2, microbatches):
  """The same LoRA path on a dual encoder's towers: the optimizer holds
  only LoRA parameters, the step changes only them (GradCache
  microbatches included), and the loss moves."""
  from rosetta import optimizers, trainer
  from retrieval.dense import dual_encoder_model as dem
  from tests.test_dual_encoder import cfg, model_batch
  config = cfg()
  config = config.replace(encoder=config.encoder.replace(
      lora_rank=4, lora_targets=('query', 'value', 'mlp')))
  model = dem.DualEncoderModel(config)
  tr = trainer.Trainer(model, partitioning.Partitioner(mesh_data4_model2),
                       optimizers.make_optimizer('adamw', 1e-2),
                       num_microbatches=microbatches,
                       trainable=peft.PEFT_TRAINABLE['lora'])
  state = tr.state_from_network(model.make_network(nnx.Rngs(0)))
  names = {trainable_params.path_name(p)
           for p in trainable_params.flatten(state['params'])}
  assert names and all('/lora/' in n for n in names)
  opt_leaves = jax.tree.leaves(state['opt_state'])
  assert sum(x.size for x in opt_leaves) <= 3 * sum(
      x.size for x in jax.tree.leaves(state['params']))
  frozen_before = jax.tree.map(np.asarray, tr.frozen)
  batch = model_batch(b=16, k=1)
  batch = jax.device_put(batch, tr.batch_shardings(batch))
  losses = []
  for _ in range(3):
    state, metrics = tr.train_step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < losses[0]
  for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(tr.frozen)):
    np.testing.assert_array_equal(a, np.asarray(b))
