"""The larger NMT gin experiments build: Tatoeba 21 languages <-> English
(42 directions, T=5 mixture, shared vocabulary, zero-shot FLORES tasks) and
mT5-initialised fine-tuning (HF checkpoint + mT5's own SentencePiece model
with <2xx> appended), the latter trained for two steps from a tiny random
MT5 saved by transformers (the real import path, tiny weights)."""

import json
import os

import gin
import jax
import numpy as np
import pytest
import seqio
from flax import nnx

from rosetta import gin_utils, optimizers
from rosetta.checkpoint import hf as checkpoint_import
from rosetta.data import pipeline
from rosetta.model import encoder_decoder_model
from rosetta import cli
from rosetta.decoding.algorithms import DecodeOptions
from rosetta import partitioning
from rosetta.run import runs
from rosetta import trainer as trainer_lib
from rosetta import vocab as vocab_lib
from rosetta.model.encoder_decoder import T5Config
from translation import nmt, translate
from rosetta.data import mixtures
from rosetta.data import corpora as sources

# A tiny network for the "build it" checks; every dim divides the 8 devices.
TINY = ['encoder_decoder.T5Config.emb_dim = 32',
        'encoder_decoder.T5Config.num_heads = 4',
        'encoder_decoder.T5Config.head_dim = 8',
        'encoder_decoder.T5Config.mlp_dim = 64',
        'encoder_decoder.T5Config.num_encoder_layers = 2',
        'encoder_decoder.T5Config.num_decoder_layers = 2',
        "encoder_decoder.T5Config.dtype = 'float32'"]

@pytest.fixture(autouse=True)
def _clear_gin():
  """These tests parse whole experiments; their bindings (T5Config sizes,
  loss settings) must not reach tests that run later in the same process
  (HF parity imported checkpoints with the experiments' T5Config)."""
  yield
  gin.clear_config()


needs_tatoeba = pytest.mark.skipif(
    not (sources.available('tatoeba') and sources.available('flores')),
    reason='Tatoeba / FLORES not in the data directory')


# ----------------------------------------------------------- tatoeba 21 ---

@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
@needs_tatoeba
def test_tatoeba_21_experiment(tmp_path, num_devices):
  vocab_path = str(tmp_path / 'spm32k.model')
  gin_utils.parse(['experiments/tatoeba_21.gin'],
                  [f"nmt.setup.vocab_path = '{vocab_path}'"], finalize=False)
  # The configured model: T5.1.1 base with the 32k vocabulary.
  cfg = T5Config()
  assert (cfg.emb_dim, cfg.num_encoder_layers, cfg.num_decoder_layers,
          cfg.mlp_dim, cfg.vocab_size) == (768, 12, 12, 2048, 32128)
  assert cfg.dtype == 'bfloat16' and cfg.dropout_rate == 0.1
  assert gin.query_parameter('train.task') == 'nmt_mixture'
  eval_tasks = gin.query_parameter('train.eval_tasks')

  setup = nmt.setup()        # trains the shared vocabulary (a few seconds)
  langs = sources.tatoeba_languages()
  assert len(langs) == 21 and setup.languages == langs
  assert len(setup.directions) == 42
  assert {('en', 'ko'), ('ko', 'en'), ('zh', 'en')} <= set(setup.directions)
  assert len(setup.zero_shot_tasks) == 21 * 20
  assert {'flores_translate_de_fr', 'flores_translate_ja_zh'} <= set(
      setup.zero_shot_tasks)
  registered = set(setup.task_names) | set(setup.zero_shot_tasks)
  assert set(eval_tasks) <= registered

  vocab = setup.vocabulary
  assert vocab.vocab_size == 32000 <= cfg.vocab_size
  # One <2xx> piece per language; the balanced sample covers every script.
  for lang in ('en', 'ko', 'zh', 'hi'):
    assert vocab_lib.language_token_id(vocab, lang) < 40
  assert vocab.decode(vocab.encode('Это кот. 这是猫。')) == 'Это кот. 这是猫。'

  # Mixture rates: n_i^(1/5) over the 42 train splits.
  mix = seqio.get_mixture_or_task('nmt_mixture')
  assert len(mix.tasks) == 42
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  n = {f'tatoeba_translate_{s}_{t}': len(
      sources.tatoeba_splits(t if s == 'en' else s)['train'])
       for s, t in setup.directions}
  want = mixtures.temperature_rates(n, 5.0)
  total = sum(rates.values())
  for name, p in want.items():
    assert rates[name] / total == pytest.approx(p, rel=1e-9)
  assert max(want.values()) / min(want.values()) < 1.7   # T=5 flattens 7.9x

  # Everything short of training, with a tiny network: a packed batch of
  # the 42-direction mixture (tasks registered above) as the trainer's
  # input pipeline builds it, and the train state on the 8-device mesh.
  gin_utils.parse(['experiments/tatoeba_21.gin'],
                  [f"nmt.setup.vocab_path = '{vocab_path}'", *TINY],
                  finalize=False)
  ds = pipeline.make_local_dataset(
      'nmt_mixture', split='train', task_feature_lengths={'inputs': 32,
                                                          'targets': 32},
      local_batch_size=8, seed=0)
  batch = next(ds.as_numpy_iterator())
  tags = {vocab_lib.language_token_id(vocab, l) for l in ['en', *langs]}
  enc, seg = batch['encoder_input_tokens'], batch['encoder_segment_ids']
  starts = enc[(seg > 0) & (batch['encoder_positions'] == 0)]
  assert len(starts) > 8 and set(starts.tolist()) <= tags   # packed, tagged
  part = partitioning.Partitioner(partitioning.make_mesh(data=-1))
  tr = trainer_lib.Trainer(encoder_decoder_model.EncoderDecoderModel(), part,
                           optimizers.make_optimizer(),
                           optimizers.learning_rate_schedule())
  params = tr.abstract_state['params']
  assert params['shared_embedding']['embedding'].shape == (32128, 32)


# ---------------------------------------------------- mT5 fine-tuning ---

ROWS = 896      # the stand-in's embedding rows (mT5: 250,112)
PIECES = 800    # the stand-in spiece.model (mT5: 250,100; 256 byte pieces)


@pytest.fixture(scope='module')
def mt5_dir(tmp_path_factory):
  """A tiny random MT5 saved by transformers, beside a tiny spiece.model
  with mT5's conventions (pad 0, eos 1, unk 2, no <2xx> pieces)."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  d = tmp_path_factory.mktemp('mt5')
  texts = sources.training_texts('django', ['en', 'de', 'fr'])
  vocab_lib.train_sentencepiece(
      vocab_lib.balanced_sample(texts, per_language=600),
      str(d / 'spiece.model'), vocab_size=PIECES)
  cfg = transformers.MT5Config(
      vocab_size=ROWS, d_model=32, d_kv=8, num_heads=4, d_ff=64,
      num_layers=2, num_decoder_layers=2, feed_forward_proj='gated-gelu',
      tie_word_embeddings=False, dropout_rate=0.1, decoder_start_token_id=0,
      pad_token_id=0, eos_token_id=1)
  torch.manual_seed(0)
  model = transformers.MT5ForConditionalGeneration(cfg)
  # transformers 5 ties lm_head to the embedding regardless: untie, as mT5.
  model.lm_head.weight = torch.nn.Parameter(
      torch.randn_like(model.shared.weight) * 32 ** -0.5)
  model.config.tie_word_embeddings = False
  model.save_pretrained(str(d))
  assert os.path.exists(d / 'model.safetensors')
  return str(d)


def mt5_bindings(mt5_dir, tmp_path, languages=('de', 'fr')):
  return [f"MT5_DIR = '{mt5_dir}'", f'VOCAB_ROWS = {ROWS}',
          f"nmt.setup.vocab_path = '{tmp_path}/vocab/mt5_2xx.model'",
          f'nmt.setup.languages = {list(languages)!r}',
          "nmt.setup.corpus = 'django'",   # installed everywhere
          *TINY[:-1]]   # the experiment's bfloat16 activations stay


@pytest.mark.peers
def test_mt5_finetune_experiment_parses(mt5_dir, tmp_path):
  gin_utils.parse(['experiments/mt5_finetune_tatoeba.gin'], finalize=False)
  assert gin.query_parameter('nmt.setup.corpus') == 'tatoeba'
  assert len(gin.query_parameter('nmt.setup.languages')) == 8
  assert T5Config().vocab_size == 250112   # mT5 small's table
  # The checkpoint directory is required: the run stops at start, naming it.
  with pytest.raises(ValueError, match='MT5_DIR'):
    gin_utils.parse(['experiments/mt5_finetune_tatoeba.gin'])
  # Too many languages for the rows left after the base pieces: an error.
  gin_utils.parse(['experiments/mt5_finetune_tatoeba.gin'],
                  mt5_bindings(mt5_dir, tmp_path) + [
                      f'VOCAB_ROWS = {PIECES + 2}'], finalize=False)
  with pytest.raises(ValueError, match='embedding rows'):
    runs.task_setup()


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
@pytest.mark.peers
def test_mt5_finetune_trains_from_hf_checkpoint(mt5_dir, tmp_path):
  run_dir = str(tmp_path / 'run')
  bindings = mt5_bindings(mt5_dir, tmp_path) + [
      f"train.model_dir = '{run_dir}'", 'train.total_steps = 2',
      'train.batch_size = 8', 'train.log_period = 1',
      "train.task_feature_lengths = {'inputs': 32, 'targets': 32}",
      'train.async_checkpoint = False', 'train.eval_tasks = []']
  assert cli.main(['train', '--gin_file=experiments/mt5_finetune_tatoeba.gin']
                  + [f'--gin_bindings={b}' for b in bindings]) == 0

  # The vocabulary is the stand-in spiece.model plus <2de>, <2en>, <2fr>
  # at the end: every base id is unchanged.
  setup = nmt.last_setup()
  vocab = setup.vocabulary
  assert vocab.vocab_size == PIECES + 3 <= ROWS
  assert [vocab_lib.language_token_id(vocab, l) for l in ('de', 'en', 'fr')
          ] == [PIECES, PIECES + 1, PIECES + 2]
  base = seqio.SentencePieceVocabulary(os.path.join(mt5_dir, 'spiece.model'))
  text = 'Save and continue editing'
  assert vocab.encode(text) == base.encode(text)

  # Two Adafactor steps at lr 1e-3 moved the imported weights a little: a
  # fresh random init would be ~1.4x their norm away.
  with open(os.path.join(run_dir, 'train_metrics.jsonl')) as f:
    losses = [json.loads(l)['loss'] for l in f]
  assert len(losses) == 2 and all(np.isfinite(losses))
  t = translate.Translator(run_dir)
  assert t.step == 2
  hf = nnx.to_pure_dict(nnx.state(
      checkpoint_import.import_hf_checkpoint(mt5_dir), nnx.Param))
  trained = jax.device_get(nnx.to_pure_dict(nnx.state(t.network, nnx.Param)))
  rel = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(a)),
      hf, trained))
  assert max(rel) < 0.05 and max(rel) > 0, max(rel)
  out = t.translate(['Save and continue editing'], 'de',
                    options=DecodeOptions(num_beams=1, max_decode_length=8))
  assert len(out) == 1 and isinstance(out[0], str)


def test_experiments_parse_beside_a_runs_folder(tmp_path, monkeypatch):
  """Run directories live in `runs/` (README); from that working directory
  (on sys.path under `python -m`), `include 'runs/train.gin'` made gin's
  package lookup crash on the namespace package `runs`."""
  import importlib
  (tmp_path / 'runs' / 'main').mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  importlib.invalidate_caches()
  for name in ('nmt_cpu_small', 'tatoeba_21', 'mt5_finetune_tatoeba'):
    gin_utils.parse([f'experiments/{name}.gin'], finalize=False)
