"""average a run's last N checkpoints into a new run (checkpoint averaging).

    rosetta average --model_dir runs/nmt --last 5 --output_dir runs/nmt_avg5
    rosetta average --model_dir runs/nmt --steps 8000,9000,10000 \\
        --output_dir runs/nmt_avg

Averaging the parameters of the last few checkpoints of one run is a
standard step before evaluating a translation model (Vaswani et al. 2017
averaged the last 5 or 20; fairseq's `average_checkpoints.py`, OpenNMT's
`average_models.py`, Marian's `--average`): it usually gains some BLEU for
free. The output is an ordinary run directory that every tool reads
(`rosetta evaluate|infer|translate`, `rosetta.run.run_dir.load_run`):

    OUTPUT_DIR/config.gin            the source run's config, unchanged
    OUTPUT_DIR/averaged_from.json    source directory and the steps averaged
    OUTPUT_DIR/checkpoints/<step>/   params = the mean, in float32, cast back
                                     to each parameter's dtype; optimizer
                                     state and input position = those of
                                     the newest averaged step (its number)

so `rosetta train` on OUTPUT_DIR fine-tunes on from the averaged weights.
The source run is only read. An output directory that already holds a
config or a checkpoint is refused: nothing already written is replaced.
Parameters are summed one checkpoint at a time, each restored straight
onto the run's shardings, so memory holds two copies of the parameters
(the running sum and one checkpoint), not N.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import jax
import jax.numpy as jnp

from rosetta import partitioning
from rosetta.run import files as run_files
from rosetta.run import run_dir as run_dir_lib
from rosetta.run.run_dir import RunDir, configured
from rosetta import trainer as trainer_lib


def choose_steps(available, last: int | None = None,
                 steps=None, where: str = '') -> list[int]:
  """The committed steps to average: the newest `last`, or exactly `steps`."""
  available = sorted(int(s) for s in available)
  if (last is None) == (steps is None):
    raise ValueError('give exactly one of last (the newest N checkpoints) '
                     'or steps (a list)')
  if not available:
    raise FileNotFoundError(f'{where}: no committed checkpoint to average')
  if last is not None:
    if last < 1:
      raise ValueError(f'last must be >= 1, got {last}')
    if last > len(available):
      raise ValueError(f'{where}: asked for the last {last} checkpoints but '
                       f'only steps {available} are there')
    return available[-last:]
  chosen = sorted({int(s) for s in steps})
  missing = [s for s in chosen if s not in available]
  if missing or not chosen:
    raise ValueError(f'{where}: steps {missing or chosen} are not committed '
                     f'checkpoints (there are {available})')
  return chosen


def _check_output(model_dir: str, output_dir: str) -> None:
  if not run_files.is_remote(output_dir) and (
      os.path.realpath(output_dir) == os.path.realpath(model_dir)):
    raise ValueError(f'output_dir {output_dir} is the source run: averaging '
                     'writes a new run directory and never changes the source')
  out = RunDir(output_dir)
  taken = [p for p in (run_dir_lib.CONFIG, 'averaged_from.json')
           if out.exists(p)]
  ckpts = run_files.epath.Path(out.checkpoints_path)
  if ckpts.exists() and any(True for _ in ckpts.iterdir()):
    taken.append('checkpoints/')
  if taken:
    raise FileExistsError(f'{output_dir} already holds {", ".join(taken)}; '
                          'choose a new output directory (nothing is '
                          'overwritten)')


def average_checkpoints(model_dir: str, output_dir: str, *,
                        last: int | None = None, steps=None, mesh=None,
                        register_fns=()) -> dict:
  """Writes the mean of `model_dir`'s checkpoints as a new run in
  `output_dir` (see the module docstring). Returns {'steps': averaged
  steps, 'step': the output checkpoint's step, 'output_dir': ...}.
  Leaves gin configured with the source run's config."""
  run = RunDir(model_dir).require()
  _check_output(model_dir, output_dir)
  source = run.checkpointer(save_interval_steps=1, read_only=True)
  try:
    chosen = choose_steps(source.all_steps(), last, steps,
                          where=run.checkpoints_path)
    config_text = run.read_config()
    config_path = run.parse_config(register_fns)
    # The optimizer fixes the structure of the optimizer state to restore.
    model = configured('train.model', config_path)
    optimizer = configured('train.optimizer', config_path)
    mesh = mesh if mesh is not None else partitioning.make_mesh()
    tr = trainer_lib.Trainer(model, partitioning.Partitioner(mesh), optimizer)
    target = {'params': tr.abstract_state['params']}
    add = jax.jit(
        lambda total, p: jax.tree.map(
            lambda t, x: t + x.astype(jnp.float32), total, p),
        out_shardings=tr.param_shardings, donate_argnums=(0,))
    total = None
    for s in chosen:
      _, restored, _ = source.restore(target, step=s, partial=True)
      params = restored['params']
      if total is None:
        total = jax.tree.map(lambda x: x.astype(jnp.float32), params)
      else:
        total = add(total, params)
      del restored, params
    newest = chosen[-1]
    # partial=True as above: one orbax manager takes one restore kind per
    # item; with the whole state as the target it restores all of it.
    _, state, data_state = source.restore(tr.abstract_state, step=newest,
                                          partial=True)
  finally:
    source.close()
  n = float(len(chosen))
  out_run = RunDir(output_dir)
  mean = jax.jit(
      lambda total, ref: jax.tree.map(
          lambda t, r: (t / n).astype(r.dtype), total, ref),
      out_shardings=tr.param_shardings, donate_argnums=(0,))
  state['params'] = mean(total, state['params'])

  if jax.process_index() == 0:
    out_run.create()
    run_files.atomic_write_text(out_run.config_path, config_text)
    run_files.atomic_write_text(
        out_run.file('averaged_from.json'),
        json.dumps({'source': os.path.abspath(model_dir)
                              if not run_files.is_remote(model_dir)
                              else model_dir,
                    'steps': chosen, 'step': newest,
                    'created': datetime.datetime.now(
                        datetime.timezone.utc).isoformat(timespec='seconds')},
                   indent=1) + '\n')
  out = out_run.checkpointer(save_interval_steps=1, keep_last=None,
                             async_save=False)
  try:
    out.save(newest, state, data_state, force=True)
    out.wait()
  finally:
    out.close()
  return {'steps': chosen, 'step': newest, 'output_dir': output_dir}


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog='rosetta average', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--model_dir', required=True, help='the run to average')
  which = p.add_mutually_exclusive_group(required=True)
  which.add_argument('--last', type=int, help='average the newest N '
                     'committed checkpoints')
  which.add_argument('--steps', help='comma-separated steps to average')
  p.add_argument('--output_dir', required=True,
                 help='a new run directory for the averaged checkpoint')
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    steps = None
    if args.steps is not None:
      try:
        steps = [int(s) for s in args.steps.split(',') if s.strip()]
      except ValueError:
        raise ValueError(f'--steps {args.steps!r}: expected comma-separated '
                         'integers, e.g. 800,900,1000') from None
    result = average_checkpoints(args.model_dir, args.output_dir,
                                 last=args.last, steps=steps)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f'rosetta average: error: {e}', file=sys.stderr)
    return 2
  print(f'averaged steps {result["steps"]} of {args.model_dir} into '
        f'{args.output_dir} (checkpoint step {result["step"]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
