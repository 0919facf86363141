"""`rosetta merge-lora`: a LoRA run folded into a standalone run.

    rosetta merge-lora --model_dir runs/lora --output runs/merged

reads the run's whole network (its frozen base from `train.init_from`, its
own LoRA parameters), adds each scale * A B to the kernel it updates
(`rosetta.model.peft.merge_lora`) and writes a new run with the same
config but `lora_rank = 0`, no frozen parameters and no sources: the
network computes the same outputs at the cost of the base alone, and every
command reads it like any run. Bottleneck adapters, which are not linear,
are kept as ordinary parameters of the new run. The output is staged and
renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import jax

LORA_OFF = """
# rosetta merge-lora: the LoRA updates of {source} (step {step}) are folded
# into the kernels; the run holds every parameter itself.
encoder_decoder.T5Config.lora_rank = 0
train.trainable = None
train.init_from = None
"""


def t5_config_of(model):
  """The T5Config inside a model wrapper (the wrapper's own, or its
  towers' for a dual encoder)."""
  from rosetta.model.encoder_decoder import T5Config  # pylint: disable=import-outside-toplevel
  config = getattr(model, 'config', None)
  for candidate in (config, getattr(config, 'encoder', None)):
    if isinstance(candidate, T5Config):
      return candidate
  raise ValueError(f'{type(model).__name__} has no T5Config to read the '
                   'LoRA settings from')


def merge_run(model_dir: str, output: str, step: int | None = None) -> dict:
  """Writes the merged run to `output`; returns what it did."""
  import gin  # pylint: disable=import-outside-toplevel
  from rosetta import partitioning  # pylint: disable=import-outside-toplevel
  from rosetta import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
  from rosetta.model import peft  # pylint: disable=import-outside-toplevel
  from rosetta.run import run_dir as run_dir_lib  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  source = run_dir_lib.RunDir(model_dir).require()
  loaded = source.load(step)
  cfg = t5_config_of(loaded.model)
  if not cfg.lora_rank:
    raise ValueError(f'{model_dir}: the run has no LoRA (T5Config.lora_rank '
                     'is 0); nothing to merge')
  params = nnx.to_pure_dict(nnx.state(loaded.network, nnx.Param))
  merged = jax.device_get(peft.merge_lora(params, cfg.lora_scale))
  config_text = source.read_config() + LORA_OFF.format(
      source=os.path.abspath(model_dir), step=loaded.step)
  gin.clear_config()

  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.merge-', dir=parent)
  try:
    run = run_dir_lib.RunDir(staging)
    for name in (run_dir_lib.ASSETS, run_dir_lib.ASSETS_INDEX):
      path = source.file(name)
      if os.path.isdir(path):
        shutil.copytree(path, run.file(name))
      elif os.path.exists(path):
        shutil.copy2(path, run.file(name))
    run.write_config(config_text)
    run.parse_config()
    model = run_dir_lib.configured('train.model', run.config_path)
    optimizer = run_dir_lib.configured('train.optimizer', run.config_path)
    tr = trainer_lib.Trainer(model, partitioning.Partitioner(
        partitioning.make_mesh()), optimizer)
    state = tr.state_from_network(tr.network(merged))
    ckpt = run.checkpointer(save_interval_steps=1, keep_last=None,
                            async_save=False)
    try:
      ckpt.save(loaded.step, state, None, force=True)
      ckpt.wait()
    finally:
      ckpt.close()
    os.replace(staging, output)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  finally:
    gin.clear_config()
  return {'output': output, 'step': loaded.step,
          'parameters': sum(x.size for x in jax.tree.leaves(merged))}


def main(argv=None) -> int:
  """fold a LoRA run's updates into its kernels: a standalone run"""
  p = argparse.ArgumentParser(
      prog='rosetta merge-lora', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--model_dir', required=True, metavar='RUN',
                 help='the LoRA run')
  p.add_argument('--output', required=True, metavar='RUN',
                 help='the run directory to create')
  p.add_argument('--step', type=int, default=None,
                 help='checkpoint step (default: the newest good one)')
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  if os.path.exists(args.output) and (not os.path.isdir(args.output)
                                      or os.listdir(args.output)):
    p.error(f'--output {args.output}: exists and is not empty')
  if os.path.exists(args.output):
    os.rmdir(args.output)
  try:
    result = merge_run(args.model_dir, args.output, args.step)
  except (OSError, ValueError) as e:
    print(f'rosetta merge-lora: {e}', file=sys.stderr)
    return 1
  print(f'merged {args.model_dir} (step {result["step"]}) into '
        f'{result["output"]}: {result["parameters"] / 1e6:.2f}M parameters')
  return 0
