"""A run directory carries its vocabulary: moved elsewhere, with the
original vocabulary file and the data folder gone, it translates
identically; with its own
copy gone too, loading it is an error naming the file, never a retrain."""

import os
import shutil

import gin
import pytest

from rosetta import cli
from rosetta.decoding.algorithms import DecodeOptions
from translation.translate import Translator

TINY = ['encoder_decoder.T5Config.vocab_size = 512',
        'encoder_decoder.T5Config.emb_dim = 32',
        'encoder_decoder.T5Config.mlp_dim = 64',
        'encoder_decoder.T5Config.num_heads = 2',
        'encoder_decoder.T5Config.head_dim = 16',
        'encoder_decoder.T5Config.num_encoder_layers = 1',
        'encoder_decoder.T5Config.num_decoder_layers = 1',
        'nmt.setup.vocab_size = 400',
        "nmt.setup.corpus = 'tatoeba'",
        "nmt.setup.languages = ['fr']",
        'nmt.setup.zero_shot = False',
        "train.task_feature_lengths = {'inputs': 24, 'targets': 24}",
        'train.total_steps = 2', 'train.batch_size = 8']


@pytest.mark.slow  # a training run and three restores
def test_a_moved_run_translates_identically_and_never_retrains(
    tmp_path, monkeypatch):
  from rosetta.data import corpora
  if not corpora.available('tatoeba'):
    pytest.skip('Tatoeba not in the data directory')
  vocab = str(tmp_path / 'shared_vocab' / 'spm.model')
  run = str(tmp_path / 'run')
  try:
    assert cli.main(
        ['train', '--gin_file=experiments/nmt_cpu_small.gin',
         f"--gin.train.model_dir='{run}'", f"--gin.nmt.setup.vocab_path='{vocab}'",
         *[f'--gin_bindings={b}' for b in TINY]]) == 0
  finally:
    gin.clear_config()
  assert os.path.exists(os.path.join(run, 'assets',
                                     'nmt.setup.vocab_path.model'))
  options = DecodeOptions(num_beams=1, max_decode_length=12)
  lines = ['I like tea.', 'Where is the station?']
  before = Translator(run).translate(lines, 'fr', options=options)
  moved = str(tmp_path / 'elsewhere' / 'run')
  shutil.copytree(run, moved)
  shutil.rmtree(run)
  os.remove(vocab)  # the file config.gin names is gone, and so is the data
  monkeypatch.setenv('ROSETTA_DATA_DIR', str(tmp_path / 'no_data_here'))
  assert Translator(moved).translate(lines, 'fr', options=options) == before
  assert not os.path.exists(vocab)
  copy = os.path.join(moved, 'assets', 'nmt.setup.vocab_path.model')
  os.remove(copy)
  with pytest.raises(FileNotFoundError, match=f'{copy}: the run needs this '
                     r'file \(nmt.setup.vocab_path\) to decode'):
    Translator(moved)
  os.remove(os.path.join(moved, 'assets.json'))  # a run without the index
  with pytest.raises(FileNotFoundError, match=f'{vocab}: the vocabulary of '
                     'this run is missing'):
    Translator(moved)
  assert not os.path.exists(vocab)
