"""`rosetta import` / `rosetta export` through the CLI: an HF T5 folder
becomes a run that decodes with HF's logits; the run exported again is the
same checkpoint (tensor for tensor) that transformers loads, with the same
logits and a tokenizer that encodes as the run does; bad inputs stop with
one message naming the file."""

import functools
import json
import os

import gin
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from rosetta import cli  # noqa: E402
from rosetta.run.run_dir import RunDir  # noqa: E402

pytestmark = pytest.mark.peers

# gin/models/tiny.gin, as an HF config (T5.1.1: gated GELU, untied).
TINY_HF = dict(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2,
               num_decoder_layers=2, num_heads=4,
               feed_forward_proj='gated-gelu', tie_word_embeddings=False,
               dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
               decoder_start_token_id=0)
GIN = ['--gin_file', 'experiments/tiny_django_en_fr.gin',
       '--gin.train.total_steps=2', '--gin.train.eval_period=0']


def make_hf(directory, seed=0, model_type='t5', **changes):
  """A random HF checkpoint whose output projection is not the embedding
  (as a trained T5.1.1 / mT5: transformers 5 ties the two in a fresh model,
  and unties them on load only when the file holds both)."""
  from safetensors.torch import load_file, save_file
  torch.manual_seed(seed)
  cls = {'t5': transformers.T5ForConditionalGeneration,
         'mt5': transformers.MT5ForConditionalGeneration}[model_type]
  config_cls = {'t5': transformers.T5Config,
                'mt5': transformers.MT5Config}[model_type]
  cls(config_cls(**{**TINY_HF, **changes})).save_pretrained(str(directory))
  path = os.path.join(directory, 'model.safetensors')
  tensors = load_file(path)
  tensors['lm_head.weight'] = torch.randn_like(tensors['shared.weight'])
  save_file(tensors, path, metadata={'format': 'pt'})
  return cls.from_pretrained(str(directory)).eval()


def cli_main(argv):
  try:
    return cli.main(argv)
  finally:
    gin.clear_config()


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  d = tmp_path_factory.mktemp('hf_commands')
  hf_model = make_hf(d / 'hf', model_type='mt5')
  run = str(d / 'run')
  assert cli_main(['import', '--hf', str(d / 'hf'), '--output', run,
                   *GIN]) == 0
  return hf_model, run, d


def batch():
  enc = np.array([[72, 104, 108, 1, 0, 0], [40, 50, 60, 70, 80, 1]], np.int32)
  dec_in = np.array([[0, 75, 99, 1], [0, 33, 1, 0]], np.int32)
  tgt = np.array([[75, 99, 1, 0], [33, 1, 0, 0]], np.int32)
  return enc, dec_in, tgt


def hf_logits(model, enc, dec_in):
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc, dtype=torch.long),
                 attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                 decoder_input_ids=torch.tensor(dec_in, dtype=torch.long)
                 ).logits.numpy()


@functools.lru_cache()
def rosetta_logits(run_dir, step=None):
  try:
    network = RunDir(run_dir).load(step).network
  finally:
    gin.clear_config()
  enc, dec_in, tgt = batch()
  return np.asarray(nnx.jit(lambda m, a, b, c: m(a, b, c))(
      network, jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(tgt)))


def test_import_decodes_with_the_checkpoints_logits(imported):
  hf_model, run, _ = imported
  # (A byte vocabulary has no file to keep in assets/.)
  assert sorted(os.listdir(run)) == ['checkpoints', 'config.gin',
                                     'imported_from.json']
  assert os.listdir(os.path.join(run, 'checkpoints')) == ['0']
  config = open(os.path.join(run, 'config.gin')).read()
  assert f"train.model_dir = '{run}'" in config
  assert 'train.total_steps = 2' in config
  enc, dec_in, tgt = batch()
  ours, theirs = rosetta_logits(run), hf_logits(hf_model, enc, dec_in)
  valid = tgt != 0
  assert np.abs(ours - theirs)[valid].max() < 1e-4


def test_export_round_trip_loads_in_transformers(imported, capsys):
  hf_model, run, d = imported
  out = str(d / 'exported')
  assert cli_main(['export', '--model_dir', run, '--format', 'hf',
                   '--output', out]) == 0
  assert f'exported step 0 of {run} to {out} (mt5:' in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors',
                                     'tokenizer_config.json']
  assert json.load(open(os.path.join(out, 'config.json')))['model_type'] == (
      'mt5')
  assert not [n for n in os.listdir(d) if n.startswith('.')]  # no temp left
  reloaded = transformers.MT5ForConditionalGeneration.from_pretrained(out)
  # Import then export gives back the very tensors.
  for name, tensor in hf_model.state_dict().items():
    np.testing.assert_array_equal(tensor.numpy(),
                                  reloaded.state_dict()[name].numpy(), name)
  enc, dec_in, tgt = batch()
  valid = tgt != 0
  assert np.abs(hf_logits(reloaded, enc, dec_in)
                - rosetta_logits(run))[valid].max() < 1e-4
  # The byte vocabulary travels as HF's ByT5 tokenizer: same ids.
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert type(tokenizer).__name__ == 'ByT5Tokenizer'
  assert tokenizer('Ça va').input_ids == [b + 3 for b in 'Ça va'.encode()] + [1]


def test_export_as_t5_keeps_the_untied_output_projection(imported,
                                                         tmp_path):
  """The output projection stays apart from the embedding (transformers 5
  would tie them if the file let it), for T5ForConditionalGeneration too."""
  _, run, _ = imported
  out = str(tmp_path / 'as_t5')
  assert cli_main(['export', '--model_dir', run, '--format', 'hf',
                   '--output', out, '--model_type', 't5', '--step', '0']) == 0
  model = transformers.T5ForConditionalGeneration.from_pretrained(out)
  assert not torch.equal(model.lm_head.weight, model.shared.weight)
  enc, dec_in, tgt = batch()
  assert np.abs(hf_logits(model, enc, dec_in)
                - rosetta_logits(run))[tgt != 0].max() < 1e-4


def test_export_refuses_an_output_in_the_way(imported, tmp_path, capsys):
  _, run, _ = imported
  out = tmp_path / 'taken'
  out.mkdir()
  (out / 'notes.txt').write_text('mine')
  argv = ['export', '--model_dir', run, '--format', 'hf', '--output',
          str(out)]
  with pytest.raises(SystemExit) as e:
    cli_main(argv)
  assert e.value.code == 2
  assert (f'--output {out}: exists and is not empty; choose a new folder or '
          'pass --overwrite to replace it') in capsys.readouterr().err
  assert (out / 'notes.txt').read_text() == 'mine'
  assert cli_main([*argv, '--overwrite']) == 0
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors',
                                     'tokenizer_config.json']
  assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]
  with pytest.raises(SystemExit):
    cli_main(['export', '--model_dir', run, '--format', 'onnx', '--output',
              str(tmp_path / 'x')])
  assert "invalid choice: 'onnx'" in capsys.readouterr().err


def test_export_of_a_run_without_checkpoints_names_them(imported, tmp_path,
                                                       capsys):
  _, run, _ = imported
  empty = tmp_path / 'empty_run'
  empty.mkdir()
  (empty / 'config.gin').write_text(open(os.path.join(run,
                                                      'config.gin')).read())
  assert cli_main(['export', '--model_dir', str(empty), '--format', 'hf',
                   '--output', str(tmp_path / 'out')]) == 1
  err = capsys.readouterr().err
  assert f'{empty}/checkpoints: no checkpoint to restore' in err
  assert not (tmp_path / 'out').exists()
  assert cli_main(['export', '--model_dir', str(tmp_path), '--format', 'hf',
                   '--output', str(tmp_path / 'out')]) == 1
  assert (f'{tmp_path}/config.gin: not a run directory of `rosetta train`'
          in capsys.readouterr().err)


def test_import_bad_inputs_name_the_file(imported, tmp_path, capsys):
  _, run, d = imported
  hf_dir = d / 'hf'

  def fails(argv, status=1):
    assert cli_main(['import', *argv, *GIN]) == status
    return capsys.readouterr().err

  missing = tmp_path / 'no_config'
  missing.mkdir()
  err = fails(['--hf', str(missing), '--output', str(tmp_path / 'r1')])
  assert f'rosetta import: {missing}/config.json: missing' in err

  bart = tmp_path / 'bart'
  bart.mkdir()
  (bart / 'config.json').write_text(json.dumps({'model_type': 'bart'}))
  err = fails(['--hf', str(bart), '--output', str(tmp_path / 'r2')])
  assert (f"{bart}/config.json: model_type 'bart' is not a T5 "
          'encoder-decoder; rosetta import reads t5 and mt5 checkpoints'
          in err)

  no_weights = tmp_path / 'no_weights'
  no_weights.mkdir()
  (no_weights / 'config.json').write_text((hf_dir / 'config.json')
                                          .read_text())
  err = fails(['--hf', str(no_weights), '--output', str(tmp_path / 'r3')])
  assert f'{no_weights}/model.safetensors: missing' in err

  with pytest.raises(SystemExit) as e:
    cli_main(['import', '--hf', str(hf_dir), '--output', run, *GIN])
  assert e.value.code == 2
  assert (f'--output {run}: exists and is not empty; rosetta import writes '
          'a new run directory') in capsys.readouterr().err

  wide = tmp_path / 'wide'
  make_hf(wide, d_model=48)
  err = fails(['--hf', str(wide), '--output', str(tmp_path / 'r4')])
  assert (f'{wide}/config.json: the gin files configure another '
          'architecture than the checkpoint' in err)
  assert 'encoder_decoder.T5Config.emb_dim = 48' in err
  assert not [p for p in os.listdir(tmp_path) if p.startswith(('r', '.'))]


@pytest.mark.slow
def test_rosetta_train_fine_tunes_an_imported_run(imported, capsys):
  """The import's own arguments, as `rosetta train`, resume from step 0."""
  _, run, d = imported
  # A copy, so the other tests keep a run at step 0.
  import shutil
  tuned = str(d / 'tuned')
  assert cli_main(['import', '--hf', str(d / 'hf'), '--output', tuned,
                   *GIN]) == 0
  assert cli_main(['train', *GIN, f"--gin.train.model_dir='{tuned}'"]) == 0
  out = capsys.readouterr().out
  assert f'resumed from step 0 in {tuned}' in out
  assert 'done: step 2' in out
  assert sorted(os.listdir(os.path.join(tuned, 'checkpoints'))) == ['0', '2']
  assert not np.allclose(rosetta_logits(tuned, 2), rosetta_logits(tuned, 0))
  shutil.rmtree(tuned)


def test_a_sentencepiece_run_exports_its_tokenizer(tmp_path):
  """A run with a SentencePiece vocabulary (<2xx> tokens included) exports
  spiece.model: HF's tokenizer encodes a source as `rosetta translate`."""
  make_hf(tmp_path / 'hf', vocab_size=512, d_ff=64, num_heads=2, d_kv=16,
          num_layers=1, num_decoder_layers=1)
  run, out = str(tmp_path / 'run'), str(tmp_path / 'out')
  nmt = ['--gin_file', 'experiments/nmt_cpu_small.gin',
         f"--gin.nmt.setup.vocab_path='{tmp_path}/spm.model'",
         '--gin.nmt.setup.vocab_size=400', "--gin.nmt.setup.corpus='django'",
         "--gin.nmt.setup.languages=['fr']", '--gin.nmt.setup.zero_shot=False',
         *[f'--gin.encoder_decoder.T5Config.{k}={v}' for k, v in dict(
             vocab_size=512, emb_dim=32, mlp_dim=64, num_heads=2, head_dim=16,
             num_encoder_layers=1, num_decoder_layers=1).items()]]
  assert cli_main(['import', '--hf', str(tmp_path / 'hf'), '--output', run,
                   *nmt]) == 0
  assert sorted(os.listdir(os.path.join(run, 'assets'))) == [
      'nmt.setup.vocab_path.model']
  assert cli_main(['export', '--model_dir', run, '--format', 'hf',
                   '--output', out]) == 0
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors',
                                     'spiece.model', 'tokenizer_config.json']
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert type(tokenizer).__name__ == 'T5Tokenizer' and len(tokenizer) == 400
  from translation import translate
  try:
    translator = translate.Translator(run)
  finally:
    gin.clear_config()
  text = 'save and continue editing'
  assert tokenizer(f'<2fr> {text}').input_ids == (
      translator.encode(text, 'fr', 256))
  # HF's T5Tokenizer has no byte fallback: a character outside the
  # vocabulary ('Q' in this 400-piece one) is <unk> (2) there, its UTF-8
  # bytes here.
  hf_ids = tokenizer('<2fr> Q').input_ids
  ours = translator.encode('Q', 'fr', 256)
  assert hf_ids[:2] == ours[:2] and hf_ids[2] == 2 != ours[2]


def test_import_needs_a_training_config(imported, tmp_path, capsys):
  _, _, d = imported
  assert cli_main(['import', '--hf', str(d / 'hf'), '--output',
                   str(tmp_path / 'run'), '--gin_file', 'models/tiny.gin']) == 1
  assert ('rosetta import: the gin files (models/tiny.gin) set no '
          'train.model: give the training config the run stands for'
          in capsys.readouterr().err)
  with pytest.raises(SystemExit) as e:
    cli_main(['import', '--hf', str(d / 'hf'), '--output',
              str(tmp_path / 'run')])
  assert e.value.code == 2
  assert '--gin_file: name the training config' in capsys.readouterr().err
  assert not (tmp_path / 'run').exists()
