"""Numerical parity with HF transformers' PyTorch T5 on the same weights.

A small random HF model is saved as safetensors, imported into Rosetta, and
encoder outputs and decoder logits are compared on a padded batch, on one
device and on a (data=4, model=2) mesh with the parameters really sharded.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from rosetta import partitioning  # noqa: E402
from rosetta.checkpoint import hf as checkpoint_import  # noqa: E402

pytestmark = pytest.mark.peers

VARIANTS = {
    # T5.1.1: gated GELU, untied output projection.
    't5_1_1': dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                   num_decoder_layers=3, num_heads=4,
                   feed_forward_proj='gated-gelu', tie_word_embeddings=False),
    # mT5-configured: larger vocabulary, 250k-style, gated GELU, untied.
    'mt5': dict(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                num_heads=4, feed_forward_proj='gated-gelu',
                tie_word_embeddings=False, relative_attention_num_buckets=16,
                relative_attention_max_distance=32),
    # T5 v1.0: ReLU MLP, tied embeddings (logits rescaled by d_model**-0.5).
    't5_v1_0': dict(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                    num_heads=4, feed_forward_proj='relu',
                    tie_word_embeddings=True),
}


def make_hf_checkpoint(variant, directory, seed=0):
  torch.manual_seed(seed)
  config_cls = (transformers.MT5Config if variant == 'mt5'
                else transformers.T5Config)
  cfg = config_cls(
      **VARIANTS[variant], dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
      decoder_start_token_id=0)
  cls = (transformers.MT5ForConditionalGeneration if variant == 'mt5'
         else transformers.T5ForConditionalGeneration)
  model = cls(cfg).eval()
  model.save_pretrained(directory)
  return model


def padded_batch(vocab, seed=0):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, size=(4, 11))
  dec = rng.integers(2, vocab, size=(4, 7))
  for row, (le, ld) in enumerate([(11, 7), (6, 4), (3, 2), (9, 7)]):
    enc[row, le - 1] = 1
    enc[row, le:] = 0
    dec[row, ld - 1] = 1
    dec[row, ld:] = 0
  dec_in = np.concatenate([np.zeros((4, 1), int), dec[:, :-1]], axis=1)
  return enc.astype(np.int32), dec_in.astype(np.int32), dec.astype(np.int32)


def hf_outputs(model, enc, dec_in):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(dec_in, dtype=torch.long))
  return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


def rosetta_outputs(model, enc, dec_in, tgt):
  @nnx.jit
  def forward(model, enc, dec_in, tgt):
    return model.encode(enc), model(enc, dec_in, tgt)
  encoded, logits = forward(model, jnp.asarray(enc), jnp.asarray(dec_in),
                            jnp.asarray(tgt))
  return np.asarray(encoded), np.asarray(logits)


def assert_close_on_valid(ours, theirs, valid, atol=1e-4):
  diff = np.abs(ours - theirs)[valid]
  assert diff.max() <= atol, f'max abs difference {diff.max():.3g} > {atol}'


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_parity_single_device(variant, tmp_path):
  hf = make_hf_checkpoint(variant, tmp_path)
  model = checkpoint_import.import_hf_checkpoint(str(tmp_path))
  enc, dec_in, tgt = padded_batch(VARIANTS[variant]['vocab_size'])
  hf_enc, hf_logits = hf_outputs(hf, enc, dec_in)
  encoded, logits = rosetta_outputs(model, enc, dec_in, tgt)
  assert_close_on_valid(encoded, hf_enc, enc != 0)
  assert_close_on_valid(logits, hf_logits, tgt != 0)


@pytest.mark.parametrize('variant', ['t5_1_1', 'mt5'])
def test_parity_sharded_mesh(variant, tmp_path, mesh_data4_model2):
  mesh = mesh_data4_model2
  hf = make_hf_checkpoint(variant, tmp_path, seed=1)
  part = partitioning.Partitioner(mesh)
  model = checkpoint_import.import_hf_checkpoint(str(tmp_path),
                                                 partitioner=part)
  # The parameters really are split over the model axis.
  query = model.encoder.layers[0].attention.query[...]
  assert query.sharding.spec == P('fsdp', 'model', None)
  assert {s.data.shape for s in query.addressable_shards} == {(32, 2, 8)}
  emb = model.shared_embedding.embedding[...]
  assert emb.sharding.spec == P('model', 'fsdp')
  assert {s.data.shape[0] for s in emb.addressable_shards} == {
      VARIANTS[variant]['vocab_size'] // 2}
  wi = model.decoder.layers[1].mlp.wi_0[...]
  assert wi.sharding.spec == P('fsdp', 'model')

  enc, dec_in, tgt = padded_batch(VARIANTS[variant]['vocab_size'], seed=3)
  hf_enc, hf_logits = hf_outputs(hf, enc, dec_in)
  batch_sharding = part.sharding(('activation_batch', 'activation_length'))
  put = lambda x: jax.device_put(jnp.asarray(x), batch_sharding)
  with part.activate():
    @nnx.jit
    def forward(model, enc, dec_in, tgt):
      return model.encode(enc), model(enc, dec_in, tgt)
    encoded, logits = forward(model, put(enc), put(dec_in), put(tgt))
  # Outputs come back batch-sharded over data and vocab-sharded over model.
  want = jax.sharding.NamedSharding(mesh, P(('data', 'fsdp'), None, 'model'))
  assert logits.sharding.is_equivalent_to(want, logits.ndim), logits.sharding
  assert len({str(s.index) for s in logits.addressable_shards}) == 8
  assert_close_on_valid(np.asarray(encoded), hf_enc, enc != 0)
  assert_close_on_valid(np.asarray(logits), hf_logits, tgt != 0)


def test_export_import_roundtrip_is_exact(tmp_path):
  hf = make_hf_checkpoint('t5_1_1', tmp_path / 'hf')
  model = checkpoint_import.import_hf_checkpoint(str(tmp_path / 'hf'))
  out = checkpoint_import.export_hf_checkpoint(model, str(tmp_path / 'out'))
  again = checkpoint_import.import_hf_checkpoint(out)
  a = nnx.to_flat_state(nnx.state(model, nnx.Param))
  b = dict(nnx.to_flat_state(nnx.state(again, nnx.Param)))
  for path, v in a:
    np.testing.assert_array_equal(np.asarray(v.get_value()),
                                  np.asarray(b[path].get_value()))
  # The export is a checkpoint HF itself loads, with identical tensors.
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out)
  for name, tensor in hf.state_dict().items():
    np.testing.assert_array_equal(tensor.numpy(),
                                  reloaded.state_dict()[name].numpy(), name)
  with pytest.raises(FileExistsError, match='not empty'):
    checkpoint_import.export_hf_checkpoint(model, out)
