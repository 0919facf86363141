"""cache tasks' preprocessed examples with Apache Beam, in source order

    rosetta cache --gin_file experiments/nmt_cpu_small.gin \\
        --gin "nmt.setup.vocab_path='runs/vocab/spm.model'" \\
        --tasks nmt_mixture --splits train --output_cache_dir cache/

and training reads it back through seqio::

    seqio.add_global_cache_dirs(['cache/'])
    pipe = InputPipeline('nmt_mixture', ..., use_cached=True)

Everything after `--` goes to Beam as pipeline options (default
`--runner DirectRunner`, in this process); at scale, e.g. on Dataflow:

    rosetta cache --gin_file ... --tasks nmt_mixture \\
        --output_cache_dir gs://BUCKET/cache -- --runner DataflowRunner \\
        --project P --region R --temp_location gs://BUCKET/tmp \\
        --setup_file ./setup.py --num_workers 32

(FlinkRunner / SparkRunner options work the same way.) Workers register
the tasks by parsing the same gin files, so paths in them (corpus,
vocabulary) must be readable there (`gs://...`).

The layout is seqio's own (`seqio_cache_tasks`): per task a folder
`{output_cache_dir}/{task}/` with `{split}.tfrecord-0000i-of-0000F`
(tf.train.Example protos), `info.{split}.json` (features, number of files),
`stats.{split}.json` (examples, tokens per feature) and `COMPLETED`, which
`Task.get_dataset(use_cached=True)` looks for. Unlike seqio's script,
nothing is reshuffled: each output file is written, in order, by one worker
that reads its source shards (`source.list_shards(split)`) with
shuffle=False and runs `Task.preprocess_precache` (what comes before the
task's `seqio.CacheDatasetPlaceholder`) with a seed fixed per shard. A file
appears whole or not at all (written beside it, then renamed); the JSON
files and then COMPLETED are written only after every file of every split:
a run that fails leaves no COMPLETED, and the next run starts the task's
folder afresh. A task already COMPLETED is skipped (`--overwrite` redoes
it).

Files and hosts. By default each source shard becomes one file (F = the
number of source shards): the most parallel build, and seqio's reader
shuffles files (then records in its shuffle buffer) when training
shuffles. Reading the files one by one, in order, gives the raw stream
example for example; but seqio's cached reader interleaves files 16
records at a time, so an unshuffled read of several files is another
(fixed) order. `--hosts H` lays the files out for H training hosts
instead: F = H files, file h holding source shards h, h+H, ... in order
(F = 1 when there are fewer shards than hosts), so that every host's
unshuffled cached stream equals what it reads from the raw files. Hosts
read disjoint files when F >= hosts; with fewer files every host reads
them all and keeps every H-th example (H times the reading): cache a big
corpus from at least as many source files as training hosts.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import uuid
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import numpy as np
import seqio
import tensorflow as tf

from rosetta.data import bad_input
from rosetta.data import record_files

COMPLETED = 'COMPLETED'
_INT64_MAX = 2**63 - 1
# Preprocessed examples per progress log line of one file.
_LOG_EVERY = 100_000
# Examples per Python call when writing (see `unbatched`).
_BATCH = 256


def expand_tasks(names: Sequence[str]) -> list[str]:
  """Task names of `names` (tasks or mixtures; mixtures become their
  tasks), each once, in order."""
  out: list[str] = []
  for name in names:
    provider = seqio.get_mixture_or_task(name)
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [
        provider]
    out += [t.name for t in tasks if t.name not in out]
  return out


def task_dir(output_cache_dir: str, task_name: str) -> str:
  return os.path.join(output_cache_dir,
                      seqio.get_task_dir_from_name(task_name))


def shard_seed(task_name: str, shard: int, base_seed: int = 0) -> int:
  """The preprocessors' seed of one source shard (seqio's PreprocessTask
  scheme: md5 of task and shard, plus the base seed), the same on every
  run and worker."""
  digest = hashlib.md5(f'{task_name}shard{shard}'.encode()).digest()[:7]
  return (int.from_bytes(digest, 'little') + base_seed) % _INT64_MAX


def file_layout(num_source_shards: int,
                hosts: int | None = None) -> list[list[int]]:
  """Source shards of each output file: one file per shard, or (`hosts`)
  file h = shards h, h+H, ... (one file when shards < hosts)."""
  if num_source_shards < 1:
    raise ValueError('no source shards to cache')
  if hosts is None:
    return [[i] for i in range(num_source_shards)]
  if hosts < 1:
    raise ValueError(f'hosts={hosts}: expected >= 1')
  files = hosts if num_source_shards >= hosts else 1
  return [list(range(f, num_source_shards, files)) for f in range(files)]


def file_path(output_dir: str, split: str, index: int, count: int) -> str:
  return (f'{seqio.get_cached_tfrecord_prefix(output_dir, split)}-'
          f'{index:05d}-of-{count:05d}')


def serialize(ex: Mapping[str, Any]) -> bytes:
  """A tf.train.Example of a numpy example, as seqio.dict_to_tfexample
  writes it (the same bytes) but ~40x faster for 1-D arrays and scalars,
  which is all translation tasks hold; anything else goes to seqio's."""
  features = {}
  for key, value in ex.items():
    if isinstance(value, bytes):
      features[key] = tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[value]))
    elif isinstance(value, np.ndarray) and value.ndim <= 1 and (
        value.dtype.kind in 'iub'):
      features[key] = tf.train.Feature(int64_list=tf.train.Int64List(
          value=value.reshape(-1).astype(np.int64).tolist()))
    elif isinstance(value, np.ndarray) and value.ndim <= 1 and (
        value.dtype.kind == 'f'):
      features[key] = tf.train.Feature(float_list=tf.train.FloatList(
          value=value.reshape(-1).tolist()))
    else:
      return seqio.dict_to_tfexample(dict(ex)).SerializeToString()
  return tf.train.Example(
      features=tf.train.Features(feature=features)).SerializeToString()


def unbatched(batches: Iterator[Mapping[str, Any]]
              ) -> Iterator[dict[str, Any]]:
  """Numpy examples of `ragged_batch`ed ones (one ragged dimension at
  most): a Python call per batch, not per example, halves the cost."""
  for batch in batches:
    columns = {}
    for k, v in batch.items():
      if hasattr(v, 'row_splits'):   # a RaggedTensorValue
        if hasattr(v.values, 'row_splits'):
          raise ValueError(f'feature {k!r}: more than one ragged dimension')
        columns[k] = np.split(v.values, v.row_splits[1:-1])
      else:
        columns[k] = list(v)
    for i in range(len(next(iter(columns.values())))):
      yield {k: c[i] for k, c in columns.items()}


def features_info(element_spec: Mapping[str, Any]) -> dict[str, Any]:
  """seqio's info.{split}.json 'features' entry from a dataset's spec: the
  first dimension of a sequence is variable."""
  out = {}
  for key, spec in element_spec.items():
    shape = spec.shape.as_list()
    out[key] = {'shape': [None] + shape[1:] if shape else [],
                'dtype': spec.dtype.name}
  return out


@dataclasses.dataclass(frozen=True)
class TaskSetup:
  """Registers tasks on a worker that lacks them: parses the gin files
  and bindings and runs their `task_setup` (rosetta.run.run_dir)."""
  gin_files: tuple[str, ...] = ()
  gin_bindings: tuple[str, ...] = ()

  def __call__(self) -> None:
    # Imported when called: they pull in the model and trainer code.
    from rosetta import gin_utils  # pylint: disable=import-outside-toplevel
    from rosetta.run import run_dir  # pylint: disable=import-outside-toplevel
    gin_utils.parse(self.gin_files, self.gin_bindings, finalize=False)
    run_dir.task_setup()


@dataclasses.dataclass(frozen=True)
class CacheFile:
  """Beam FlatMap fn: writes one output file of (task, split) from its
  source shards, in order, and yields its stats and features."""
  task_name: str
  split: str
  output_dir: str
  layout: tuple[tuple[int, ...], ...]
  num_source_shards: int
  base_seed: int = 0
  setup: Callable[[], None] | None = None

  def _task(self) -> seqio.Task:
    if self.task_name not in seqio.TaskRegistry.names() and self.setup:
      self.setup()
    return seqio.TaskRegistry.get(self.task_name)

  def examples(self, task: seqio.Task, shard: int) -> tf.data.Dataset:
    seed = shard_seed(self.task_name, shard, self.base_seed)
    ds = task.source.get_dataset(
        split=self.split, shuffle=False, seed=seed,
        shard_info=seqio.ShardInfo(shard, self.num_source_shards))
    ds = task.preprocess_precache(ds, seed=seed)
    options = tf.data.Options()
    options.deterministic = True  # parallel maps keep the source order
    return ds.with_options(options)

  def __call__(self, index: int) -> Iterator[dict[str, Any]]:
    task = self._task()
    path = file_path(self.output_dir, self.split, index, len(self.layout))
    # Hidden name: seqio's reader globs `{split}.tfrecord-*-of-*F`.
    tmp = os.path.join(self.output_dir, f'.{os.path.basename(path)}.tmp-'
                       f'{uuid.uuid4().hex}')
    tokens = {k: 0 for k in task.output_features}
    longest = {k: 0 for k in task.output_features}
    examples, features = 0, None
    try:
      with tf.io.TFRecordWriter(tmp) as writer:
        for shard in self.layout[index]:
          ds = self.examples(task, shard)
          features = features_info(ds.element_spec)
          for ex in unbatched(record_files.rows(ds.ragged_batch(_BATCH))):
            writer.write(serialize(ex))
            examples += 1
            _count_tokens(task.output_features, ex, tokens, longest)
            if examples % _LOG_EVERY == 0:
              logging.info('%s: %d examples', path, examples)
      tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
      if tf.io.gfile.exists(tmp):
        tf.io.gfile.remove(tmp)
      raise
    stats = {'examples': examples}
    for k in tokens:
      if k in (features or {}) and features[k]['dtype'] in ('int32',
                                                             'int64'):
        stats[f'{k}_tokens'] = tokens[k]
        stats[f'{k}_max_tokens'] = longest[k]
    yield {'stats': stats, 'features': features}


def _count_tokens(output_features, ex, tokens, longest) -> None:
  """seqio's cache stats: tokens other than EOS and padding."""
  for k, feature in output_features.items():
    v = ex.get(k)
    if isinstance(v, np.ndarray) and v.dtype.kind in 'iu':
      keep = np.ones(v.shape, bool)
      for special in (feature.vocabulary.eos_id, feature.vocabulary.pad_id):
        if special is not None:
          keep &= v != special
      n = int(np.count_nonzero(keep))
      tokens[k] += n
      longest[k] = max(longest[k], n)


def merge_file_results(results: Sequence[Mapping[str, Any]]) -> dict:
  """One split's stats (sums, maxima) and features from its files'."""
  stats: dict[str, int] = {}
  features = None
  for r in results:
    for k, v in r['stats'].items():
      stats[k] = max(stats.get(k, 0), v) if k.endswith('_max_tokens') else (
          stats.get(k, 0) + v)
    if r['features'] is not None:
      if features is not None and features != r['features']:
        raise ValueError(f'files of one split have different features: '
                         f'{features} vs {r["features"]}')
      features = r['features']
  return {'stats': stats, 'features': features, 'files': len(results)}


def write_json(path: str, payload: Any) -> None:
  """JSON as seqio writes it (sorted, indented), whole or not at all."""
  tmp = os.path.join(os.path.dirname(path),
                     f'.{os.path.basename(path)}.tmp-{uuid.uuid4().hex}')
  with tf.io.gfile.GFile(tmp, 'w') as f:
    f.write(json.dumps(payload, sort_keys=True, indent=2))
  tf.io.gfile.rename(tmp, path, overwrite=True)


@dataclasses.dataclass(frozen=True)
class WriteSplitInfo:
  """Beam Map fn: writes info.{split}.json and stats.{split}.json."""
  output_dir: str
  split: str
  num_files: int
  layout: tuple[tuple[int, ...], ...]

  def __call__(self, merged: Mapping[str, Any]) -> str:
    if merged['files'] != self.num_files:
      raise RuntimeError(f'{self.output_dir} {self.split}: {merged["files"]}'
                         f' of {self.num_files} files written')
    if merged['features'] is None:
      raise ValueError(f'{self.output_dir} {self.split}: no source shard '
                       'to take the features from')
    write_json(seqio.get_cached_info_path(self.output_dir, self.split), {
        'num_shards': self.num_files, 'features': merged['features'],
        'seqio_version': seqio.__version__,
        'source_shards_per_file': [list(f) for f in self.layout]})
    write_json(seqio.get_cached_stats_path(self.output_dir, self.split),
               merged['stats'])
    return self.split


@dataclasses.dataclass(frozen=True)
class WriteCompleted:
  """Beam fn over all of a task's finished splits: writes COMPLETED."""
  output_dir: str
  splits: tuple[str, ...]

  def __call__(self, done: Sequence[str]) -> str:
    if sorted(done) != sorted(self.splits):
      raise RuntimeError(f'{self.output_dir}: splits {sorted(done)} done, '
                         f'expected {sorted(self.splits)}')
    write_json(os.path.join(self.output_dir, COMPLETED),
               {'splits': sorted(self.splits), 'ordered': True})
    return self.output_dir


@dataclasses.dataclass
class TaskPlan:
  task: str
  output_dir: str
  layouts: dict[str, list[list[int]]]   # split -> source shards per file
  num_source_shards: dict[str, int]


def plan(task_names: Sequence[str], output_cache_dir: str, *,
         splits: Sequence[str] | None = None, hosts: int | None = None,
         overwrite: bool = False) -> list[TaskPlan]:
  """What to cache (tasks not yet COMPLETED in `output_cache_dir`); clears
  the folder of a task left unfinished (or, `overwrite`, finished)."""
  plans = []
  for name in expand_tasks(task_names):
    task = seqio.get_mixture_or_task(name)
    if not task.supports_caching:
      raise ValueError(f'task {name} has no seqio.CacheDatasetPlaceholder '
                       'among its preprocessors: nothing to cache')
    out = task_dir(output_cache_dir, name)
    if tf.io.gfile.exists(os.path.join(out, COMPLETED)) and not overwrite:
      logging.info('%s: cached already at %s (--overwrite redoes it)', name,
                   out)
      print(f'{name}: cached already at {out}', flush=True)
      continue
    chosen = list(splits) if splits else list(task.splits)
    missing = [s for s in chosen if s not in task.splits]
    if missing:
      raise ValueError(f'task {name} has no split(s) {missing}; splits: '
                       f'{list(task.splits)}')
    if tf.io.gfile.exists(out):  # a failed or overwritten run's files
      tf.io.gfile.rmtree(out)
    tf.io.gfile.makedirs(out)
    counts = {s: len(task.source.list_shards(s)) for s in chosen}
    plans.append(TaskPlan(name, out, {
        s: file_layout(n, hosts) for s, n in counts.items()}, counts))
  return plans


def build_pipeline(pipeline, plans: Sequence[TaskPlan], *,
                   base_seed: int = 0,
                   setup: Callable[[], None] | None = None) -> None:
  """Adds the caching of `plans` to a Beam pipeline."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  for p in plans:
    done = []
    for split, layout in p.layouts.items():
      label = f'{p.task}/{split}'
      frozen = tuple(tuple(f) for f in layout)
      fn = CacheFile(p.task, split, p.output_dir, frozen,
                     p.num_source_shards[split], base_seed, setup)
      done.append(
          pipeline
          | f'{label}/files' >> beam.Create(range(len(layout)))
          # Spreads the files over workers (Create alone fuses with them).
          | f'{label}/spread' >> beam.Reshuffle()
          | f'{label}/write' >> beam.FlatMap(fn)
          | f'{label}/gather' >> beam.combiners.ToList()
          | f'{label}/merge' >> beam.Map(merge_file_results)
          | f'{label}/info' >> beam.Map(WriteSplitInfo(
              p.output_dir, split, len(layout), frozen)))
    _ = (done
         | f'{p.task}/splits' >> beam.Flatten()
         | f'{p.task}/all' >> beam.combiners.ToList()
         | f'{p.task}/completed' >> beam.Map(WriteCompleted(
             p.output_dir, tuple(p.layouts))))


def cache_tasks(task_names: Sequence[str], output_cache_dir: str, *,
                splits: Sequence[str] | None = None,
                hosts: int | None = None, overwrite: bool = False,
                base_seed: int = 0, setup: Callable[[], None] | None = None,
                beam_options: Sequence[str] = ()) -> list[TaskPlan]:
  """Caches tasks (or mixtures' tasks) into `output_cache_dir` and waits;
  returns what was cached. `beam_options`: Beam pipeline options, default
  `--runner=DirectRunner`."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from apache_beam.options import pipeline_options  # pylint: disable=import-outside-toplevel
  plans = plan(task_names, output_cache_dir, splits=splits, hosts=hosts,
               overwrite=overwrite)
  if not plans:
    return plans
  options = list(beam_options)
  if not any(o == '--runner' or o.startswith('--runner=') for o in options):
    options.insert(0, '--runner=DirectRunner')
  with beam.Pipeline(
      options=pipeline_options.PipelineOptions(options)) as pipeline:
    build_pipeline(pipeline, plans, base_seed=base_seed, setup=setup)
  return plans


def parse_args(argv):
  argv = list(argv)
  beam_args = []
  if '--' in argv:
    cut = argv.index('--')
    argv, beam_args = argv[:cut], argv[cut + 1:]
  p = argparse.ArgumentParser(
      prog='rosetta cache', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog='Beam options go after --, e.g. -- --runner DirectRunner '
      '--direct_num_workers 2 --direct_running_mode multi_threading')
  p.add_argument('--gin_file', action='append', default=[],
                 help='gin files whose task_setup registers the tasks '
                 '(repeatable)')
  p.add_argument('--gin', dest='gin_bindings', action='append', default=[],
                 help="a gin binding, e.g. \"nmt.setup.vocab_path='v.model'\"")
  p.add_argument('--tasks', required=True,
                 help='comma-separated task or mixture names')
  p.add_argument('--splits', default='',
                 help='comma-separated splits (default: every split of '
                 'each task)')
  p.add_argument('--output_cache_dir', required=True)
  p.add_argument('--hosts', type=int, default=None,
                 help='lay files out for this many training hosts (see '
                 'above); default: one file per source shard')
  p.add_argument('--seed', type=int, default=0,
                 help="base seed of the preprocessors' per-shard seeds")
  p.add_argument('--overwrite', action='store_true',
                 help='redo tasks already COMPLETED in --output_cache_dir')
  args = p.parse_args(argv)
  args.beam_options = beam_args
  return p, args


def main(argv=None) -> int:
  p, args = parse_args(sys.argv[1:] if argv is None else argv)
  setup = TaskSetup(tuple(args.gin_file), tuple(args.gin_bindings))
  if args.gin_file or args.gin_bindings:
    setup()
  names = [t.strip() for t in args.tasks.split(',') if t.strip()]
  splits = [s.strip() for s in args.splits.split(',') if s.strip()]
  try:
    plans = cache_tasks(names, args.output_cache_dir, splits=splits or None,
                        hosts=args.hosts, overwrite=args.overwrite,
                        base_seed=args.seed, setup=setup,
                        beam_options=args.beam_options)
  except (ValueError, bad_input.BadInputError, FileNotFoundError) as e:
    p.exit(1, f'rosetta cache: {e}\n')
  for plan_ in plans:
    for split, layout in plan_.layouts.items():
      with tf.io.gfile.GFile(
          seqio.get_cached_stats_path(plan_.output_dir, split)) as f:
        stats = json.load(f)
      print(f'{plan_.task} {split}: {stats["examples"]:,} examples in '
            f'{len(layout)} file(s) from {plan_.num_source_shards[split]} '
            f'source shard(s) -> {plan_.output_dir}', flush=True)
  return 0
