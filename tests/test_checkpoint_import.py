"""Checkpoint import/export without torch: errors name the file and tensor,
sharded safetensors indexes load, bfloat16 files load."""

import json
import os

import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from rosetta.checkpoint import hf as checkpoint_import
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config

CFG = T5Config(vocab_size=64, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
               num_encoder_layers=1, num_decoder_layers=2, dropout_rate=0.0)


@pytest.fixture
def exported(tmp_path):
  model = EncoderDecoder(CFG, rngs=nnx.Rngs(0))
  return model, checkpoint_import.export_hf_checkpoint(model,
                                                       str(tmp_path / 'ckpt'))


def params(model):
  return {p: np.asarray(v.get_value())
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_export_writes_hf_layout(exported):
  model, path = exported
  cfg = json.load(open(os.path.join(path, 'config.json')))
  assert cfg['feed_forward_proj'] == 'gated-gelu'
  assert cfg['num_decoder_layers'] == 2
  tensors = load_file(os.path.join(path, 'model.safetensors'))
  q = tensors['encoder.block.0.layer.0.SelfAttention.q.weight']
  assert q.shape == (16, 16)  # (heads * head_dim, d_model)
  np.testing.assert_array_equal(
      q.T.reshape(16, 2, 8),
      np.asarray(model.encoder.layers[0].attention.query[...]))
  assert not [n for n in os.listdir(os.path.dirname(path))
              if n.startswith('.export-')]  # no temp dir left behind


def test_sharded_index_and_bfloat16(exported, tmp_path):
  model, path = exported
  tensors = load_file(os.path.join(path, 'model.safetensors'))
  names = sorted(tensors)
  half = len(names) // 2
  out = tmp_path / 'sharded'
  out.mkdir()
  shards = {'model-00001-of-00002.safetensors': names[:half],
            'model-00002-of-00002.safetensors': names[half:]}
  for fname, keys in shards.items():
    save_file({k: tensors[k].astype(ml_dtypes.bfloat16) for k in keys},
              str(out / fname))
  json.dump({'weight_map': {k: f for f, ks in shards.items() for k in ks}},
            open(out / 'model.safetensors.index.json', 'w'))
  (out / 'config.json').write_text(open(os.path.join(path,
                                                     'config.json')).read())
  loaded = checkpoint_import.import_hf_checkpoint(str(out))
  ref = params(model)
  for p, value in params(loaded).items():
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, ref[p], rtol=1e-2, atol=1e-2)


def test_missing_tensor_is_named(exported):
  _, path = exported
  f = os.path.join(path, 'model.safetensors')
  tensors = load_file(f)
  del tensors['decoder.block.1.layer.2.DenseReluDense.wo.weight']
  save_file(tensors, f)
  with pytest.raises(KeyError, match='decoder.block.1.layer.2.DenseReluDense'
                     '.wo.weight'):
    checkpoint_import.import_hf_checkpoint(path)


def test_shape_mismatch_names_file_and_tensor(exported):
  _, path = exported
  cfg_path = os.path.join(path, 'config.json')
  cfg = json.load(open(cfg_path))
  cfg['d_ff'] = 48
  json.dump(cfg, open(cfg_path, 'w'))
  with pytest.raises(ValueError, match=r'model.safetensors: tensor '
                     r"'encoder.block.0.layer.1.DenseReluDense.wi_0.weight'"):
    checkpoint_import.import_hf_checkpoint(path)


def test_unexpected_layers_are_reported(exported):
  _, path = exported
  cfg_path = os.path.join(path, 'config.json')
  cfg = json.load(open(cfg_path))
  cfg['num_decoder_layers'] = 1
  json.dump(cfg, open(cfg_path, 'w'))
  with pytest.raises(ValueError, match='does not use.*decoder.block.1'):
    checkpoint_import.import_hf_checkpoint(path)


def test_bad_config_and_missing_files(tmp_path, exported):
  _, path = exported
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write('{"d_model": 16,\n "num_layers": }')
  with pytest.raises(ValueError, match='config.json: invalid JSON at line 2'):
    checkpoint_import.import_hf_checkpoint(path)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='no config.json'):
    checkpoint_import.import_hf_checkpoint(str(tmp_path / 'empty'))
  with pytest.raises(FileNotFoundError, match='Pickled'):
    checkpoint_import.read_safetensors(str(tmp_path / 'empty'))
  hf = checkpoint_import.config_to_hf(CFG)
  del hf['d_kv']
  with pytest.raises(ValueError, match="missing field 'd_kv'"):
    checkpoint_import.config_from_hf(hf)
  hf = checkpoint_import.config_to_hf(CFG)
  hf['feed_forward_proj'] = 'gated-swish'
  with pytest.raises(ValueError, match="'gated-swish' is not supported"):
    checkpoint_import.config_from_hf(hf)
