"""compile a run's steps for a TPU slice from this machine: memory fit and cost

    rosetta compile --gin_file=models/mt5_xxl.gin --gin_file=runs/train.gin \\
        --gin.train.batch_size=256 \\
        --gin.train.task_feature_lengths="{'inputs': 512, 'targets': 128}" \\
        --gin.partitioning.make_mesh.fsdp=64 --target v5p-128
    rosetta compile --gin_file=retrieval/gtr_base.gin --target v5e-16 --target v6e-8

Takes the gin files and bindings of `rosetta train` (the model, optimizer,
batch size, feature lengths, microbatches and the `partitioning.make_mesh`
axes) and one or more targets (v4-8, v5e-16/64/256, v5p-8/128/..., v6e-8/
256, NxNAME for N slices). For each target it builds the model abstractly
(no weights, no data), lowers and compiles the real train step (and, for a
seq2seq model, its decoding with `--decode`) for that slice's devices
through libtpu, and prints per device: parameter, optimizer-state and
temporary memory against the chip's HBM, compiled FLOPs per step and over
6·N·tokens, the compiler's estimated step time (a cost-model bound, not a
measurement) and the MFU it implies. A step that does not fit (or fits with
under 10% headroom) comes with the knobs that would change it. Exit status
0 when every train step fits, 1 when one does not ("does not fit" and the
numbers), 2 for a usage error.
`--json FILE` writes the reports. Needs libtpu (`pip install
'rosetta[tpu]'`); JAX still runs on this machine's CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

NOT_FIT_STATUS = 1


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='rosetta compile', description=__doc__.splitlines()[0],
      epilog='Bindings: --gin.KEY=VALUE as for rosetta train.')
  parser.add_argument('--gin_file', action='append', default=[],
                      help='gin file (repeatable), as for rosetta train')
  parser.add_argument('--gin_bindings', action='append', default=[],
                      help='a binding, e.g. "train.batch_size = 256"')
  parser.add_argument('--target', action='append', default=[], required=True,
                      help='TPU slice: v4-8, v5e-16, v5p-128, v6e-256, '
                      '2xv5e-256 (repeatable)')
  parser.add_argument('--decode', action='store_true',
                      help="also compile the model's decoding (seq2seq "
                      'models): batch train.batch_size, inputs of the '
                      "'inputs' feature length")
  parser.add_argument('--json', metavar='FILE',
                      help='write every report as JSON (atomically)')
  return parser


def parse_args(argv):
  parser = _parser()
  known, rest = parser.parse_known_args(argv)
  for arg in rest:
    if arg.startswith('--gin.') and '=' in arg:
      key, value = arg[len('--gin.'):].split('=', 1)
      known.gin_bindings.append(f'{key} = {value}')
    else:
      parser.error(f'unrecognised argument {arg!r} (bindings are '
                   '--gin.KEY=VALUE, e.g. --gin.train.batch_size=256)')
  from rosetta.aot import topologies  # pylint: disable=import-outside-toplevel
  try:
    known.targets = [topologies.parse_target(t) for t in known.target]
  except ValueError as e:
    parser.error(str(e))
  if known.json and not os.path.isdir(os.path.dirname(
      os.path.abspath(known.json))):
    parser.error(f'--json {known.json}: the folder does not exist')
  return parser, known


def _remat_of(model) -> str | None:
  config = getattr(model, 'config', None)
  config = getattr(config, 'encoder', config)   # a dual encoder's T5Config
  return getattr(config, 'remat', None)


def compile_target(spec, target, *, decode: bool = False, log=print):
  """[(StepReport, tips)] for one target: the train step, then decoding."""
  from rosetta import native_logs  # pylint: disable=import-outside-toplevel
  from rosetta.aot import compiler, report  # pylint: disable=import-outside-toplevel
  from rosetta.model import layer_stack  # pylint: disable=import-outside-toplevel
  with native_logs.quiet_native_stderr():   # libtpu's off-TPU-VM warnings
    devices = target.devices()
  trainer = compiler.build_trainer(spec, devices)
  mesh = trainer.partitioner.mesh
  shapes = compiler.batch_shapes(spec.model, spec.task_feature_lengths,
                                 spec.batch_size, spec.pack)
  model_flops = 6.0 * compiler.num_params(trainer) * \
      compiler.tokens_per_step(shapes)
  layer_facts = dict(
      scanned_layers=bool(layer_stack.stack_depths(trainer.abstract_params)),
      traced_flops=compiler.traced_matmul_flops(trainer, shapes))
  # One XLA call with no progress to report: say what it is doing.
  log(f'[{target.name}] compiling the train step on mesh '
      f'{dict(mesh.shape)} (minutes for XL / XXL sizes) ...')
  t0 = time.perf_counter()
  state_bytes = compiler.state_bytes_per_device(trainer)
  try:
    compiled = compiler.compile_train_step(trainer, shapes)
  except Exception as e:  # pylint: disable=broad-except
    if not report.is_refusal(e):
      raise
    log(f'[{target.name}] the compiler refused the train step (HBM)')
    train = report.StepReport.from_refusal(
        str(e), step='train', target=target, mesh=mesh,
        state_bytes=state_bytes, model_flops=model_flops)
    train = dataclasses.replace(train, **layer_facts)
  else:
    log(f'[{target.name}] train step compiled in '
        f'{time.perf_counter() - t0:.1f} s')
    train = report.StepReport.from_compiled(
        compiled, step='train', target=target, mesh=mesh,
        state_bytes=state_bytes, model_flops=model_flops)
    train = dataclasses.replace(train, **layer_facts)
  tips = report.advice(train, remat=_remat_of(spec.model),
                       num_microbatches=spec.num_microbatches,
                       batch_size=spec.batch_size)
  out = [(train, tips)]
  if decode:
    length = spec.task_feature_lengths.get('inputs')
    t0 = time.perf_counter()
    compiled = (compiler.compile_decode(trainer, spec.batch_size, length)
                if length else None)
    if compiled is not None:
      log(f'[{target.name}] decoding compiled in '
          f'{time.perf_counter() - t0:.1f} s')
      out.append((report.StepReport.from_compiled(
          compiled, step='decode', target=target, mesh=mesh,
          state_bytes={'params': train.params_bytes}), []))
  return out


def main(argv) -> int:
  parser, args = parse_args(argv)
  import gin  # pylint: disable=import-outside-toplevel
  from rosetta import gin_utils  # pylint: disable=import-outside-toplevel
  from rosetta.aot import compiler, report  # pylint: disable=import-outside-toplevel
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  try:
    import rosetta.run.runs  # noqa: F401  pylint: disable=import-outside-toplevel
    # The mesh is built here over the target's devices, never this host's.
    gin_utils.parse(args.gin_file, args.gin_bindings + ['train.mesh = None'],
                    finalize=False)
    gin.finalize()
    spec = compiler.run_spec_from_gin()
  except Exception as e:  # a typo, a missing file: the invocation's fault
    parser.error(str(e).splitlines()[0] if str(e) else repr(e))
  log = lambda m: print(m, file=sys.stderr, flush=True)
  results = []
  for target in args.targets:
    for step_report, tips in compile_target(spec, target, decode=args.decode,
                                            log=log):
      print(report.format_report(step_report, tips), flush=True)
      results.append(dict(step_report.as_dict(), advice=tips))
  if args.json:
    files.atomic_write_json(args.json, results, indent=1)
  fits = all(r['fits'] for r in results if r['step'] == 'train')
  return 0 if fits else NOT_FIT_STATUS
