"""Ahead-of-time compilation for TPU slices from this CPU machine
(`rosetta compile`, rosetta/aot/): libtpu describes the slice, the real
train step compiles for it, and the memory the compiler reports per device
is checked against golden numbers (libtpu 0.0.42.1: a libtpu upgrade may
move them; re-derive with `rosetta compile ... --json`)."""

import json
import os
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import pytest

from rosetta import cli, gin_utils, partitioning
from rosetta.aot import command, compiler, topologies
from rosetta.run import device_peak
from retrieval.search import exact

TINY = ['models/tiny.gin', 'runs/train.gin']
# One layer each way: the TPU compiler's time grows with the layers.
TINY_BINDINGS = ["train.task_feature_lengths = {'inputs': 32, 'targets': 32}",
                 'train.batch_size = 16', 'train.mesh = None',
                 'encoder_decoder.T5Config.num_encoder_layers = 1',
                 'encoder_decoder.T5Config.num_decoder_layers = 1']


@pytest.fixture(autouse=True)
def clear_gin():
  yield
  gin.clear_config()


def _tiny_spec(*extra):
  gin_utils.parse(TINY, [*TINY_BINDINGS, *extra], finalize=False)
  return compiler.run_spec_from_gin()


def test_targets_name_libtpu_topologies():
  t = topologies.parse_target('v5p-128')
  assert (t.topology, t.chip_config, t.num_devices, t.hbm_bytes) == (
      'v5:4x4x4', 'megacore', 64, 95 * 2 ** 30)
  t = topologies.parse_target('2xv5e-256')
  assert (t.topology, t.num_slices, t.num_devices) == ('v5e:16x16', 2, 512)
  assert topologies.parse_target('v4-8').topology == 'v4:2x2x1'
  assert topologies.parse_target('v6e-8').topology == 'v6e:2x4'
  devices = topologies.parse_target('v4-8').devices()
  assert len(devices) == 4 and {d.device_kind for d in devices} == {'TPU v4'}
  assert {d.platform for d in topologies.parse_target('v6e-8').devices()} == {
      'tpu'}
  assert jax.default_backend() == 'cpu'   # libtpu present, JAX still on CPU
  for name in ('v4-8', 'v5e-4', 'v5p-8', 'v6e-8'):
    t = topologies.parse_target(name)
    kind = t.devices()[0].device_kind
    assert device_peak.accelerator_peak(kind) == t.peak_flops, (name, kind)


def test_float32_search_scores_at_highest_precision_on_tpu():
  """A float32 search is float32-exact on TPU only at HIGHEST precision
  (the default rounds float32 inputs to bfloat16 passes)."""
  devices = topologies.parse_target('v5e-4').devices()
  mesh = partitioning.make_mesh(data=4, devices=devices)
  q = jax.ShapeDtypeStruct((4, 8), jnp.float32)
  for dtype, expected in ((jnp.float32, True), (jnp.bfloat16, False)):
    rows = jax.ShapeDtypeStruct((16, 8), dtype)
    with partitioning.activate(mesh):
      text = jax.jit(exact.local_scores).lower(q, rows).as_text()
    assert ('HIGHEST' in text) == expected, dtype


@pytest.mark.parametrize('name, message', [
    ('v5e-12', r"no standard v5e slice of that size; sizes: 1, 4, 8, 16"),
    ('v5p-7', r'count TensorCores \(two per chip\)'),
    ('tpu-8', r'expected GEN-SIZE or NxGEN-SIZE'),
])
def test_bad_targets_are_named(name, message):
  with pytest.raises(ValueError, match=message):
    topologies.parse_target(name)


def test_bad_target_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as stop:   # argparse: status 2
    cli.main(['compile', '--gin_file=models/tiny.gin', '--target', 'v5e-12'])
  assert stop.value.code == 2
  err = capsys.readouterr().err
  assert "target 'v5e-12': no standard v5e slice" in err


def test_tpu_path_is_taken_when_compiling_for_tpu():
  """layers.materialized_transpose (an XLA:CPU speed-up: a 3-D transpose
  with dims [1, 2, 0]) is keyed on the mesh's devices: the CPU lowering has
  it, the TPU lowering of the same train step does not."""
  spec = _tiny_spec()
  shapes = compiler.batch_shapes(spec.model, spec.task_feature_lengths,
                                 spec.batch_size, spec.pack)
  texts = {}
  for platform, devices in [
      ('cpu', jax.devices()[:4]),
      ('tpu', topologies.parse_target('v5e-4').devices())]:
    trainer = compiler.build_trainer(spec, devices)
    with trainer.partitioner.activate():
      assert partitioning.target_platform() == platform
    texts[platform] = trainer.lower_train_step(shapes).as_text()
  pattern = 'stablehlo.transpose %'
  cpu_3d = [l for l in texts['cpu'].splitlines()
            if pattern in l and 'dims = [1, 2, 0]' in l]
  tpu_3d = [l for l in texts['tpu'].splitlines()
            if pattern in l and 'dims = [1, 2, 0]' in l]
  assert len(cpu_3d) >= 10       # every dense kernel gradient
  assert tpu_3d == []


def test_tiny_train_step_memory_on_v5e_matches_golden():
  spec = _tiny_spec()
  (train, tips), = command.compile_target(
      spec, topologies.parse_target('v5e-4'), log=lambda m: None)
  assert train.mesh == {'data': 4, 'fsdp': 1, 'model': 1}
  # tiny (one layer each way), float32 parameters replicated, Adafactor's
  # factored state; the arguments are larger than the state's bytes: TPU
  # layouts pad small arrays to (8, 128) tiles.
  assert (train.params_bytes, train.opt_state_bytes) == GOLDEN_STATE
  assert (train.argument_bytes, train.output_bytes, train.alias_bytes,
          train.temp_bytes) == GOLDEN_MEMORY
  assert train.fits and train.headroom > 0.99 and tips == []
  assert 1.0 < train.flops_ratio < 2.5
  assert train.optimal_seconds > 0 and 0 < train.mfu_bound < 1


def test_scanned_layers_compile_smaller_with_the_same_traced_flops():
  """Scanned layers: the same state, a smaller program, and the same matmul
  FLOPs as traced (XLA's own count sees the loop body once)."""
  depth = ['encoder_decoder.T5Config.num_encoder_layers = 3',
           'encoder_decoder.T5Config.num_decoder_layers = 3',
           'encoder_decoder.T5Config.dropout_rate = 0.0']
  target = topologies.parse_target('v5e-4')
  reports = {}
  for scan in (False, True):
    spec = _tiny_spec(*depth, f'encoder_decoder.T5Config.scan_layers = {scan}')
    (reports[scan], _), = command.compile_target(spec, target,
                                                 log=lambda m: None)
  unrolled, scanned = reports[False], reports[True]
  assert scanned.scanned_layers and not unrolled.scanned_layers
  assert scanned.params_bytes == unrolled.params_bytes
  assert scanned.traced_flops == unrolled.traced_flops
  assert 1.0 < scanned.traced_ratio < 1.5
  assert scanned.flops < 0.6 * unrolled.flops   # the loop body counted once
  assert scanned.code_bytes < unrolled.code_bytes
  assert scanned.mfu_bound is None and unrolled.mfu_bound is not None
  assert scanned.fits and scanned.headroom > 0.99


@pytest.mark.parametrize('gin_file, bindings, float_features', [
    ('rerank/rankt5_encdec_xquad_tiny.gin', [], ['labels', 'teacher_scores']),
    pytest.param(
        'retrieval/dual_encoder_tiny_cpu.gin',
        ["DualEncoderModel.distillation = 'margin_mse'",
         'DualEncoderModel.num_negatives = 1',
         "train.task_feature_lengths = {'queries': 16, 'positives': 32, "
         "'negatives': 32}"], ['teacher_scores'], marks=pytest.mark.slow),
])
def test_float_features_compile_as_floats(gin_file, bindings,
                                          float_features):
  """A reranker's labels and a teacher's scores are float features: the
  compiled step takes them as floats (the converter names them beyond its
  task features)."""
  gin_utils.parse([gin_file], [*bindings, 'train.mesh = None'],
                  finalize=False)
  spec = compiler.run_spec_from_gin()
  shapes = compiler.batch_shapes(spec.model, spec.task_feature_lengths,
                                 spec.batch_size, spec.pack)
  for name in float_features:
    assert shapes[name].dtype == jnp.float32, name
  (train, _), = command.compile_target(
      spec, topologies.parse_target('v5e-4'), log=lambda m: None)
  assert train.fits and train.traced_flops > 0


def test_gpu_targets_name_hosts_of_eight():
  t = topologies.parse_target('h100-16')
  assert (t.platform, t.topology, t.num_devices) == ('cuda', '1x2x8', 16)
  assert t.hbm_bytes == 84929347584 and t.peak_flops == 989e12
  assert topologies.parse_target('a100-4').topology == '1x1x4'
  with pytest.raises(ValueError, match=r'whole hosts of 8 \(e.g. h100-16\)'):
    topologies.parse_target('h100-12')


@pytest.mark.slow
def test_gpu_train_step_compiles_without_a_gpu(tmp_path):
  """`rosetta compile --target h100-2` on this CPU host: JAX's CUDA PJRT
  plugin (installed beside the venv, as the `gpu_compile` extra would)
  compiles the tiny train step for two H100s from their target config."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  plugin = tmp_path / 'plugin'
  subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
       '--target', str(plugin), '-c', os.path.join(root, 'constraints.txt'),
       'jax-cuda12-pjrt', 'jax-cuda12-plugin'], check=True, timeout=600)
  out = tmp_path / 'gpu.json'
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(plugin), root, os.environ.get('PYTHONPATH', '')]))
  run = subprocess.run(
      [sys.executable, '-m', 'rosetta', 'compile',
       *[f'--gin_file={f}' for f in TINY],
       "--gin.train.task_feature_lengths={'inputs': 32, 'targets': 32}",
       '--gin.train.batch_size=16', '--target', 'h100-2', '--json', str(out)],
      env=env, capture_output=True, text=True, timeout=900, cwd=root)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'train step on h100-2: 2 devices, mesh data=2' in run.stdout
  assert 'no cost analysis: XLA:GPU' in run.stdout
  (row,) = json.loads(out.read_text())
  assert row['hbm_bytes'] == 84929347584 and row['fits']
  assert row['temp_bytes'] > 0 and row['argument_bytes'] > 0
  assert 0.8 < row['traced_ratio'] < 1.5


def test_compile_command_reports_does_not_fit(tmp_path, capsys):
  out = tmp_path / 'report.json'
  status = cli.main(
      ['compile', *[f'--gin_file={f}' for f in TINY],
       "--gin.train.task_feature_lengths={'inputs': 1024, 'targets': 1024}",
       '--gin.train.batch_size=16384', '--target', 'v5e-4',
       '--json', str(out)])
  text = capsys.readouterr().out
  assert status == 1
  assert 'train step on v5e-4: 4 devices, mesh data=4 fsdp=1 model=1' in text
  assert 'does not fit:' in text and 'what would change it:' in text
  assert '--gin.train.num_microbatches=' in text
  (row,) = json.loads(out.read_text())
  assert not row['fits'] and row['total_bytes'] > 16 * 2 ** 30
  assert row['advice'] and row['hbm_bytes'] == 16 * 2 ** 30


GOLDEN_STATE = (198528, 198768)
GOLDEN_MEMORY = (815616, 837120, 803328, 0)
