"""plot a run's curves and metrics, saved as PNG files.

    rosetta plot curves runs/main        # -> runs/main/plots/training_curves.png
    rosetta plot table runs/main/translation_table.json
    rosetta plot recall runs/retrieval/recall_at_k.json --out recall.png
    rosetta plot quality runs/nmt_quality/results.json

(`python rosetta/run/plots.py ...` is the same.) From Python:

    from rosetta.run import plots
    result = plots.training_curves('runs/main', 'curves.png')
    result.series['loss']['train']     # ([5, 10, ...], [7.31, 7.02, ...])

Four figures:

- `training_curves`: from the TensorBoard event files under `RUN_DIR/tb`
  (`rosetta train` writes `tb/train`, `tb/validation`, `tb/eval/<task>`):
  loss (train and validation), accuracy, learning rate, tokens/s, and one
  panel per evaluation metric (BLEU, chrF, off-target %, ...) with a line
  per task.
- `translation_bars`: per-direction chrF and BLEU bars with the off-target
  rate, from the JSON table `translation.metrics.write_json` writes (a list
  of {direction, bleu, chrf, off_target (fraction), n, zero_shot}).
- `recall_curves`: Recall@k per system from a JSON object
  ``{system: {k: recall}}``, k a positive integer (a string in JSON),
  recall a fraction in [0, 1], e.g.
  ``{"bm25": {"1": 0.31, "10": 0.62, "100": 0.85}, "dual_encoder": {...}}``.
- `quality_curves`: average chrF against training CPU minutes per system,
  overall and per corpus and direction kind, from the results JSON of
  `benchmarks/nmt_quality.py`.

Every function returns a `Plot` (the PNG path and the series it drew, so
tests and notebooks can check them). Figures are built on matplotlib's
object API with the Agg canvas (no pyplot: no global backend switch, so
this is safe inside notebooks), and written atomically (temp file in the
same directory, then rename).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Any, Mapping
from rosetta.run import files
from rosetta.run.run_dir import RunDir

Series = tuple[list[int], list[float]]
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@dataclasses.dataclass
class Plot:
  path: str
  series: dict[str, Any]


# ------------------------------------------------------------ reading ---


def _tb_root(run_dir: str) -> str:
  if not os.path.isdir(run_dir):
    raise FileNotFoundError(f'{run_dir}: no such run directory')
  tb = RunDir(run_dir).tensorboard_path
  return tb if os.path.isdir(tb) else run_dir


def read_scalars(run_dir: str) -> dict[str, dict[str, Series]]:
  """{split: {tag: (steps, values)}} from every event-file directory under
  `run_dir/tb` (or `run_dir` itself); split is the path below it, e.g.
  'train', 'validation', 'eval/django_translate_en_fr_bytes'.

  A resumed run can log a step twice: the last value written wins.
  """
  from tensorboard.backend.event_processing import event_accumulator as ea
  from tensorboard.util import tensor_util
  root = _tb_root(run_dir)
  out: dict[str, dict[str, Series]] = {}
  for dirpath, _, names in sorted(os.walk(root)):
    if not any(n.startswith('events.out.tfevents') for n in names):
      continue
    acc = ea.EventAccumulator(dirpath, size_guidance={ea.TENSORS: 0,
                                                      ea.SCALARS: 0})
    acc.Reload()
    split = os.path.relpath(dirpath, root).replace(os.sep, '/')
    tags = acc.Tags()
    by_tag: dict[str, dict[int, float]] = {}
    # tf.summary (TF2) stores scalars as tensors; older writers as scalars.
    for tag in tags.get('tensors', []):
      for e in acc.Tensors(tag):
        value = tensor_util.make_ndarray(e.tensor_proto)
        if value.size == 1:
          by_tag.setdefault(tag, {})[e.step] = float(value.reshape(()))
    for tag in tags.get('scalars', []):
      for e in acc.Scalars(tag):
        by_tag.setdefault(tag, {})[e.step] = float(e.value)
    out[split] = {tag: (sorted(v), [v[s] for s in sorted(v)])
                  for tag, v in by_tag.items()}
  if not out:
    raise FileNotFoundError(f'no TensorBoard event files under {root} (is '
                            f'{run_dir} a `rosetta train` run directory?)')
  return out


def _load_json(obj):
  if isinstance(obj, (str, os.PathLike)):
    with open(obj, encoding='utf-8') as f:
      try:
        return json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'{obj}: not valid JSON ({e})') from None
  return obj


# ------------------------------------------------------------ writing ---


def _figure(n_panels: int, ncols: int = 2, panel_size=(5.0, 3.4)):
  from matplotlib.figure import Figure
  ncols = min(ncols, n_panels)
  nrows = math.ceil(n_panels / ncols)
  fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
               layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax in axes[n_panels:]:
    ax.set_visible(False)
  return fig, axes[:n_panels]


def save_png(fig, path: str, dpi: int = 110) -> str:
  """Writes `fig` as PNG to `path` atomically (temp file + rename)."""
  path = os.fspath(path)
  with files.atomic_open(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=dpi)
  return path


# ---------------------------------------------------- training curves ---

_PANELS = (  # (title, tag, splits drawn in it)
    ('loss', 'loss', ('train', 'validation')),
    ('accuracy', 'accuracy', ('train', 'validation')),
    ('learning rate', 'learning_rate', ('train',)),
    ('tokens/s', 'tokens_per_s', ('train',)),
)
_EVAL_TITLES = {'bleu': 'BLEU', 'chrf': 'chrF', 'off_target': 'off-target %'}


def training_curves(run_dir: str, out_path: str | None = None) -> Plot:
  """Loss, accuracy, learning rate, tokens/s and evaluation metrics of a
  run, one panel each. Default output: RUN_DIR/plots/training_curves.png.
  `series` is {panel title: {line label: (steps, values)}}."""
  scalars = read_scalars(run_dir)
  if 'train' not in scalars:
    raise FileNotFoundError(f'{_tb_root(run_dir)}/train: no training '
                            f'scalars (found {sorted(scalars)})')
  panels: dict[str, dict[str, Series]] = {}
  for title, tag, splits in _PANELS:
    lines = {s: scalars[s][tag] for s in splits
             if tag in scalars.get(s, {})}
    if lines:
      panels[title] = lines
  # Evaluation metrics: a panel per metric, a line per task.
  evals = sorted(s for s in scalars if s.startswith('eval/'))
  metric_names = sorted({m for s in evals for m in scalars[s]})
  for m in metric_names:
    panels[_EVAL_TITLES.get(m, m)] = {s[len('eval/'):]: scalars[s][m]
                                      for s in evals if m in scalars[s]}
  fig, axes = _figure(len(panels))
  for ax, (title, lines) in zip(axes, panels.items()):
    for label, (steps, values) in lines.items():
      ax.plot(steps, values, marker='o' if len(steps) < 30 else None,
              markersize=3, label=label)
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    lo = min(min(v) for _, v in lines.values())
    hi = max(max(v) for _, v in lines.values())
    if title == 'loss' and lo > 0 and hi > 10 * lo:
      ax.set_yscale('log')  # long runs: losses fall by orders of magnitude
    if len(lines) > 1 or title in (_EVAL_TITLES.get(m, m)
                                   for m in metric_names):
      ax.legend(fontsize='small')
  fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
  out_path = out_path or os.path.join(run_dir, 'plots',
                                      'training_curves.png')
  return Plot(save_png(fig, out_path), panels)


# ------------------------------------------------ per-direction table ---


def _table_rows(table) -> list[dict]:
  rows = _load_json(table)
  if not isinstance(rows, list) or not rows:
    raise ValueError(f'{table}: expected a non-empty list of per-direction '
                     'results (translation.metrics.write_json)')
  out = []
  for i, r in enumerate(rows):
    r = dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r)
    missing = {'direction', 'bleu', 'chrf', 'off_target'} - set(r)
    if missing:
      raise ValueError(f'{table}: row {i} lacks {sorted(missing)}')
    out.append(r)
  return out


def translation_bars(table, out_path: str | None = None) -> Plot:
  """chrF and BLEU bars per direction (supervised first, then zero-shot,
  each sorted), with the off-target rate in % as red diamonds on a second
  axis. `table` is the JSON path or its rows (dicts or
  `metrics.DirectionResult`). Default output: beside the JSON, .png."""
  import numpy as np
  rows = sorted(_table_rows(table),
                key=lambda r: (bool(r.get('zero_shot')), r['direction']))
  labels = [r['direction'] + (' (zero-shot)' if r.get('zero_shot') else '')
            for r in rows]
  chrf = [float(r['chrf']) for r in rows]
  bleu = [float(r['bleu']) for r in rows]
  off = [100.0 * float(r['off_target']) for r in rows]
  fig, (ax,) = _figure(1, panel_size=(max(5.0, 0.9 * len(rows) + 2), 4.0))
  x = np.arange(len(rows))
  ax.bar(x - 0.2, chrf, 0.4, label='chrF')
  ax.bar(x + 0.2, bleu, 0.4, label='BLEU')
  ax.set_xticks(x, labels, rotation=30, ha='right')
  ax.set_ylabel('score')
  ax.grid(axis='y', alpha=0.3)
  ax.set_ylim(0, 1.3 * max(chrf + bleu + [1.0]))  # headroom for the legend
  ax2 = ax.twinx()
  ax2.plot(x, off, 'D', color='tab:red', label='off-target %')
  ax2.set_ylim(0, 130)
  ax2.set_yticks([0, 25, 50, 75, 100])
  ax2.set_ylabel('off-target %', color='tab:red')
  handles = ax.get_legend_handles_labels()
  handles2 = ax2.get_legend_handles_labels()
  ax.legend(handles[0] + handles2[0], handles[1] + handles2[1],
            fontsize='small', loc='upper left', ncols=3)
  ax.set_title('translation quality per direction')
  if out_path is None:
    if not isinstance(table, (str, os.PathLike)):
      raise ValueError('out_path is required when the table is not a file')
    out_path = os.path.splitext(os.fspath(table))[0] + '.png'
  series = {'directions': [r['direction'] for r in rows], 'chrF': chrf,
            'BLEU': bleu, 'off-target %': off,
            'zero_shot': [bool(r.get('zero_shot')) for r in rows]}
  return Plot(save_png(fig, out_path), series)


# ------------------------------------------------------------ Recall@k ---


def parse_recall(recall) -> dict[str, Series]:
  """{system: {k: recall}} (JSON path or dict) -> {system: (ks, recalls)}
  with ks sorted; checks k is a positive integer and recall in [0, 1]."""
  data = _load_json(recall)
  where = recall if isinstance(recall, (str, os.PathLike)) else 'recall'
  if not isinstance(data, Mapping) or not data:
    raise ValueError(f'{where}: expected {{system: {{k: recall}}}}, got '
                     f'{type(data).__name__}')
  out = {}
  for system, curve in data.items():
    if not isinstance(curve, Mapping) or not curve:
      raise ValueError(f'{where}: {system!r} must map k to recall')
    points = []
    for k, v in curve.items():
      try:
        k_int = int(k)
      except (TypeError, ValueError):
        raise ValueError(f'{where}: {system!r}: k={k!r} is not an integer'
                         ) from None
      if k_int <= 0 or str(k_int) != str(k).strip():
        raise ValueError(f'{where}: {system!r}: k={k!r} must be a positive '
                         'integer')
      if not 0.0 <= float(v) <= 1.0:
        raise ValueError(f'{where}: {system!r}: recall@{k} = {v} is not a '
                         'fraction in [0, 1]')
      points.append((k_int, float(v)))
    points.sort()
    out[str(system)] = ([k for k, _ in points], [v for _, v in points])
  return out


def recall_curves(recall, out_path: str | None = None) -> Plot:
  """Recall@k per system (one line each; log-scaled k when k spans a factor
  of 10 or more). `recall` is the JSON path or the dict. Default output:
  beside the JSON, .png."""
  curves = parse_recall(recall)
  fig, (ax,) = _figure(1, panel_size=(6.0, 4.2))
  all_k = [k for ks, _ in curves.values() for k in ks]
  for system, (ks, values) in curves.items():
    ax.plot(ks, values, marker='o', markersize=4, label=system)
  if max(all_k) >= 10 * min(all_k):
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    ax.set_xscale('log')
    ax.set_xticks(sorted(set(all_k)))  # the measured ks, as plain numbers
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
  ax.set_xlabel('k')
  ax.set_ylabel('Recall@k')
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small')
  ax.set_title('Recall@k')
  if out_path is None:
    if not isinstance(recall, (str, os.PathLike)):
      raise ValueError('out_path is required when recall is not a file')
    out_path = os.path.splitext(os.fspath(recall))[0] + '.png'
  return Plot(save_png(fig, out_path), curves)


# ------------------------------------------- quality vs training time ---

_SYSTEM_LABELS = {'rosetta': 'Rosetta', 'peer': 'HF transformers (peer)'}
_QUALITY_GROUPS = ('all', 'tatoeba xx->en', 'tatoeba en->xx', 'flores xx->en',
                   'flores en->xx')


def _quality_groups(corpus: str, direction: str) -> list[str]:
  """The averages a (corpus, 'src-tgt') row belongs to."""
  parts = direction.split('-')
  if len(parts) != 2 or not all(parts):
    raise ValueError(f'direction {direction!r} is not "src-tgt"')
  kind = 'xx->en' if parts[1] == 'en' else 'en->xx'
  return ['all', f'{corpus} {kind}']


def quality_series(results) -> dict[str, dict[str, Series]]:
  """`benchmarks/nmt_quality.py` results (JSON path or its dict) ->
  {group: {system: (budgets in CPU minutes, average chrF)}}, groups 'all'
  and '<corpus> xx->en' / '<corpus> en->xx'. A budget enters a system's
  line only when every direction of the group was evaluated at it."""
  data = _load_json(results)
  where = results if isinstance(results, (str, os.PathLike)) else 'results'
  rows = data.get('results') if isinstance(data, Mapping) else None
  if not isinstance(rows, list) or not rows:
    raise ValueError(f'{where}: expected {{"results": [rows]}} as written by '
                     'benchmarks/nmt_quality.py')
  cells: dict[tuple, dict[tuple, float]] = {}
  for i, r in enumerate(rows):
    missing = {'system', 'budget_min', 'corpus', 'direction', 'chrf'} - set(r)
    if missing:
      raise ValueError(f'{where}: results[{i}] lacks {sorted(missing)}')
    try:
      groups = _quality_groups(r['corpus'], r['direction'])
    except ValueError as e:
      raise ValueError(f'{where}: results[{i}]: {e}') from None
    for g in groups:
      cells.setdefault((g, r['system'], float(r['budget_min'])), {})[
          (r['corpus'], r['direction'])] = float(r['chrf'])
  members: dict[str, set] = {}  # every (corpus, direction) seen per group
  for (g, _, _), vals in cells.items():
    members.setdefault(g, set()).update(vals)
  out: dict[str, dict[str, Series]] = {}
  for (g, system, budget), vals in sorted(cells.items()):
    if set(vals) != members[g]:
      continue
    xs, ys = out.setdefault(g, {}).setdefault(system, ([], []))
    xs.append(budget)
    ys.append(sum(vals.values()) / len(vals))
  return out


def quality_curves(results, out_path: str | None = None,
                   target: float | None = 40.0) -> Plot:
  """Average chrF against training CPU minutes, one panel per group
  ('all', then each corpus and direction kind), a line per system, from
  `benchmarks/nmt_quality.py`'s JSON. `target` draws the Tatoeba xx->en
  goal (issue 5: chrF 40) as a dashed line; None leaves it out. Default
  output: beside the JSON, .png."""
  series = quality_series(results)
  names = [g for g in _QUALITY_GROUPS if g in series]
  names += sorted(set(series) - set(names))
  fig, axes = _figure(len(names), ncols=3, panel_size=(4.6, 3.3))
  for ax, g in zip(axes, names):
    for system, (xs, ys) in series[g].items():
      ax.plot(xs, ys, marker='o', markersize=4,
              label=_SYSTEM_LABELS.get(system, system))
    if target is not None and g == 'tatoeba xx->en':
      ax.axhline(target, color='gray', linestyle='--', linewidth=1,
                 label=f'target {target:g}')
    ax.set_xlabel('training CPU minutes')
    ax.set_ylabel('chrF')
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title('average chrF, ' + ('all directions' if g == 'all' else g))
    ax.legend(fontsize='small')
  if out_path is None:
    if not isinstance(results, (str, os.PathLike)):
      raise ValueError('out_path is required when results is not a file')
    out_path = os.path.splitext(os.fspath(results))[0] + '.png'
  return Plot(save_png(fig, out_path), series)


# ---------------------------------------------------------------- CLI ---


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog='rosetta plot', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1].split('\n\nEvery function')[0])
  sub = p.add_subparsers(dest='figure', required=True)
  c = sub.add_parser('curves', help='training curves of a run directory')
  c.add_argument('run_dir')
  t = sub.add_parser('table', help='per-direction chrF/BLEU/off-target bars '
                     'from translation_table.json')
  t.add_argument('table_json')
  r = sub.add_parser('recall', help='Recall@k per system from '
                     '{system: {k: recall}} JSON')
  r.add_argument('recall_json')
  q = sub.add_parser('quality', help='average chrF against training time '
                     'from benchmarks/nmt_quality.py results JSON')
  q.add_argument('results_json')
  for s in (c, t, r, q):
    s.add_argument('--out', default=None, help='PNG path (default: see '
                   '`rosetta plot --help`)')
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    if args.figure == 'curves':
      result = training_curves(args.run_dir, args.out)
    elif args.figure == 'table':
      result = translation_bars(args.table_json, args.out)
    elif args.figure == 'recall':
      result = recall_curves(args.recall_json, args.out)
    else:
      result = quality_curves(args.results_json, args.out)
  except (FileNotFoundError, ValueError) as e:
    print(f'rosetta plot: error: {e}', file=sys.stderr)
    return 2
  print(result.path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
