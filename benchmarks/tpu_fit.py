"""Every gin model size, AOT-compiled for TPU slices from this CPU machine:
does its training step fit, what it needs per device, compiled FLOPs over
6·N·tokens, and the compiler's estimated step time (a cost-model bound).

    python -m benchmarks.tpu_fit                      # the full table
    python -m benchmarks.tpu_fit --only t5_1_1_small --targets v5e-16
    python -m benchmarks.tpu_fit --markdown_only      # the table of the JSON

Prints the markdown table of docs/results/tpu_compile.md (rows from
docs/results/tpu_compile.json, which each finished row is added to).

The workload of every row: T5's pretraining shape (inputs 512, targets 128
tokens; 4 sequences per device), bfloat16 activations, float32 parameters,
Adafactor (gin/runs/train.gin), scanned layers (`T5Config.scan_layers`:
the compiler sees one layer body, several times faster to compile). Mesh
and remat by size: small and base are data parallel; large, XL and XXL
shard parameters and optimizer state over every device (FSDP); the remat
policy is the first of dots_saveable / full whose step fits with 10% HBM
headroom (under a scan, 'none' keeps every intermediate of every layer;
dots_saveable keeps the matmul outputs, so it does the same matmuls).
Each row also has the step's matmul FLOPs as JAX traced them over
6·N·tokens: XLA's cost analysis counts a loop body once. The dual encoder (GTR-base) and the DSI configs run their
own gin files with the same per-device batch. Rows are appended to the
JSON as they finish, so an interrupted run keeps its rows and resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from rosetta import gin_utils  # noqa: E402
from rosetta.aot import command, compiler, report, topologies  # noqa: E402
from rosetta.run import files  # noqa: E402

SIZES = ['small', 'base', 'large', 'xl', 'xxl']
TARGETS = ['v5e-16', 'v5e-64', 'v5e-256', 'v5p-8', 'v5p-128', 'v6e-8',
           'v6e-256']
PER_DEVICE_BATCH = 4
LENGTHS = "{'inputs': 512, 'targets': 128}"
OUT = 'docs/results/tpu_compile.json'


def configs() -> list[dict]:
  rows = []
  for family in ('t5_1_1', 'mt5'):
    for size in SIZES:
      rows.append({'name': f'{family}_{size}',
                   'gin_files': [f'models/{family}_{size}.gin',
                                 'runs/train.gin'],
                   'bindings': [f'train.task_feature_lengths = {LENGTHS}',
                                "encoder_decoder.T5Config.dtype = 'bfloat16'"],
                   'fsdp': size in ('large', 'xl', 'xxl'),
                   'home': 'v5p-128' if size == 'xxl' else 'v5e-16',
                   'remats': ['dots_saveable', 'full']})
  rows.append({'name': 'gtr_base (dual encoder)',
               'gin_files': ['retrieval/gtr_base.gin'],
               'bindings': ["encoder_decoder.T5Config.dtype = 'bfloat16'"],
               'fsdp': False, 'home': 'v5e-16',
               'remats': ['dots_saveable', 'full']})
  for dsi in ('xquad_atomic_tiny', 'cranfield_naive_tiny'):
    rows.append({'name': f'dsi/{dsi}', 'gin_files': [f'dsi/{dsi}.gin'],
                 'bindings': [], 'fsdp': False, 'home': 'v5e-16',
                 'remats': ['dots_saveable']})
  return rows


def compile_row(cfg: dict, target: topologies.Target) -> dict:
  """The first remat policy that fits with headroom (or the last tried)."""
  attempts = []
  for remat in cfg['remats']:
    mesh = (f'partitioning.make_mesh.fsdp = {target.num_devices}',
            'partitioning.make_mesh.data = 1') if cfg['fsdp'] else ()
    bindings = [*cfg['bindings'], *mesh,
                f'train.batch_size = {PER_DEVICE_BATCH * target.num_devices}',
                f"encoder_decoder.T5Config.remat = '{remat}'",
                'encoder_decoder.T5Config.scan_layers = True',
                'train.mesh = None']
    gin_utils.parse(cfg['gin_files'], bindings, finalize=False)
    spec = compiler.run_spec_from_gin()
    t0 = time.perf_counter()
    (train, tips), = command.compile_target(spec, target, log=lambda m: None)
    row = dict(train.as_dict(), config=cfg['name'], remat=remat,
               batch_size=spec.batch_size, advice=tips,
               compile_seconds=time.perf_counter() - t0)
    attempts.append(remat)
    if train.headroom >= report.FIT_HEADROOM:
      break
  row['remats_tried'] = attempts
  return row


def compile_in_child(cfg: dict, target: str) -> dict:
  """`compile_row` in a process of its own: libtpu's compiler can die
  (a stack overflow in its codegen was seen for one config), and each
  compile leaves memory behind; a dead child costs one row, not the run."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'row.json')
    proc = subprocess.run(
        [sys.executable, '-m', 'benchmarks.tpu_fit', '--one',
         f"{cfg['name']}@{target}", '--row_out', out],
        capture_output=True, text=True, check=False)
    if proc.returncode == 0 and os.path.exists(out):
      with open(out) as f:
        return json.load(f)
  lines = [l for l in proc.stderr.splitlines()
           if 'Error' in l or 'SIGSEGV' in l or 'PC: @' in l]
  raise RuntimeError(f'the compiling process exited with {proc.returncode}'
                     + (f': {lines[-1].strip()[:300]}' if lines else ''))


def _layers(row) -> str:
  return 'scanned' if row.get('scanned_layers') else 'unrolled'


def _key(row) -> str:
  return f"{row['config']}@{row['target']}@{_layers(row)}"


def _num(x, fmt: str) -> str:
  # '-': a step the compiler refused, or a negative optimal_seconds (its
  # cost model gave one for v5e programs).
  return fmt.format(x) if x and x > 0 else '-'


def scanned_dash(row, field, fmt) -> str:
  # XLA counts a scanned program's loop body once: its cost is not the step's.
  return '-' if row.get('scanned_layers') else _num(row[field], fmt)


def markdown(rows: list[dict], pending: list[str]) -> str:
  head = ('| config | target | mesh | layers | remat | fits | per device '
          '(params + opt + temp) | HBM free | matmul FLOPs traced / 6·N·T | '
          'compiled / 6·N·T | est. step (cost model) | implied MFU bound |\n'
          '|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|')
  lines = [head]
  for r in rows:
    gb = lambda n: f'{n / report.GiB:.1f}'
    mesh = ' '.join(f'{k}={v}' for k, v in r['mesh'].items() if v > 1) or '1'
    fits = 'yes' if r['headroom'] >= report.FIT_HEADROOM else (
        'tight' if r['fits'] else '**no**')
    temp = r['temp_bytes'] + r['output_bytes'] - r['alias_bytes']
    lines.append(
        f"| {r['config']} | {r['target']} | {mesh} | {_layers(r)} | "
        f"{r['remat']} | {fits} | "
        f"{gb(r['total_bytes'])} GiB ({gb(r['params_bytes'])} + "
        f"{gb(r['opt_state_bytes'])} + {gb(temp)}) | {r['headroom']:.0%} | "
        f"{_num(r.get('traced_ratio'), '{:.2f}x')} | "
        f"{scanned_dash(r, 'flops_ratio', '{:.2f}x')} | "
        f"{scanned_dash(r, 'optimal_seconds', '{:.3g} s')} | "
        f"{_num(r['mfu_bound'], '{:.0%}')} |")
  if pending:
    lines += ['', 'Not finished in this run: ' + ', '.join(pending) + '.']
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', nargs='*', help='config names to run')
  parser.add_argument('--targets', nargs='*', default=TARGETS)
  parser.add_argument('--out', default=OUT)
  parser.add_argument('--markdown_only', action='store_true')
  # One row in this process, written to --row_out (compile_in_child).
  parser.add_argument('--one', help=argparse.SUPPRESS)
  parser.add_argument('--row_out', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.one:
    name, target = args.one.rsplit('@', 1)
    cfg, = [c for c in configs() if c['name'] == name]
    row = compile_row(cfg, topologies.parse_target(target))
    files.atomic_write_json(args.row_out, row)
    return 0
  rows = json.load(open(args.out)) if os.path.exists(args.out) else []
  done = {_key(r) for r in rows}
  todo = [(c, t) for c in configs() for t in args.targets
          if (not args.only or c['name'] in args.only)
          and f"{c['name']}@{t}@scanned" not in done]
  # Every config on its home target first (one fitting row per size), then
  # the rest, cheapest sizes first.
  order = {n: i for i, n in enumerate(SIZES)}
  todo.sort(key=lambda ct: (ct[1] != ct[0]['home'],
                            order.get(ct[0]['name'].rsplit('_', 1)[-1], 0)))
  if not args.markdown_only:
    print(f'{len(todo)} rows to compile on {platform.node()} '
          f'({os.cpu_count()} CPUs)', file=sys.stderr)
    for i, (cfg, name) in enumerate(todo, 1):
      t0 = time.perf_counter()
      try:
        row = compile_in_child(cfg, name)
      except Exception as e:  # pylint: disable=broad-except
        print(f'[{i}/{len(todo)}] {cfg["name"]}@{name}: FAILED {e}',
              file=sys.stderr, flush=True)
        continue
      rows.append(row)
      files.atomic_write_json(args.out, rows, indent=1)
      print(f'[{i}/{len(todo)}] {_key(row)}: remat {row["remat"]}, '
            f'{row["total_bytes"] / report.GiB:.1f} GiB, '
            f'{_num(row["traced_ratio"], "{:.2f}x")} traced, '
            f'{time.perf_counter() - t0:.0f} s',
            file=sys.stderr, flush=True)
  keys = {_key(r) for r in rows}
  pending = [f"{c['name']}@{t}" for c in configs() for t in TARGETS
             if f"{c['name']}@{t}@scanned" not in keys]
  rank = {c['name']: i for i, c in enumerate(configs())}
  rows.sort(key=lambda r: (rank.get(r['config'], 99),
                           TARGETS.index(r['target'])
                           if r['target'] in TARGETS else 99))
  table = markdown(rows, pending)
  print(table)
  return 0


if __name__ == '__main__':
  sys.exit(main())
