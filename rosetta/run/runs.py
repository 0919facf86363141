"""The three run types: train / evaluate / infer (gin-configurable).

They are started by `rosetta.cli` (the CLI); this module holds the
configurables so that `python -m rosetta` does not register them twice.


See `rosetta/cli.py` for the command line.
"""

from __future__ import annotations

import functools
import json
import os
import time

# Before JAX starts: multi-host runs on CPU need gloo collectives.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

# Imported up front: gin locks its registry once parsing is finalised, and
# these modules register configurables.
from rosetta import optimizers, partitioning  # noqa: E402
from rosetta.checkpoint import manager as checkpoints  # noqa: E402
from rosetta.data import bad_input  # noqa: E402
from rosetta.data import corpora  # noqa: E402
from rosetta.data import evaluation
from rosetta.data import pipeline  # noqa: E402
from rosetta import allocator  # noqa: E402
from rosetta.run import device_peak  # noqa: E402
from rosetta.run import files as run_files  # noqa: E402
from rosetta.run import param_sources  # noqa: E402
from rosetta.run import run_dir as run_dir_lib  # noqa: E402
from rosetta.run.run_dir import RunDir, task_setup  # noqa: E402
from rosetta.run import progress as run_logging  # noqa: E402
from rosetta import trainable_params  # noqa: E402
from rosetta import trainer as trainer_lib  # noqa: E402


@gin.configurable
def distributed(coordinator_address: str | None = None,
                num_processes: int | None = None,
                process_id: int | None = None,
                cpu_collectives: str = 'gloo'):
  """Initialises JAX's multi-controller runtime when configured.

  On TPU pods and most GPU clusters `jax.distributed.initialize()` finds
  everything itself: set `distributed.coordinator_address = 'auto'`. For
  CPU hosts (and tests), name the coordinator, process count and id.
  """
  if coordinator_address is None:
    return
  if cpu_collectives:
    jax.config.update('jax_cpu_collectives_implementation', cpu_collectives)
  if coordinator_address == 'auto':
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  # Not in config.gin (main.run_config_text leaves the topology out): log it.
  _log(f'jax.distributed: coordinator {coordinator_address}, '
       f'{jax.process_count()} process(es)')


def _peak_flops(peak_flops, model) -> float | None:
  """`train.peak_flops`: a number, None (no MFU), or 'auto' (measured on
  CPU, from the chip table on TPU/GPU, in the model's compute dtype)."""
  if peak_flops != 'auto':
    return peak_flops
  dtype = getattr(getattr(model, 'config', None), 'dtype', 'float32')
  return device_peak.peak_flops(dtype)


def _feature_converter_cls(model):
  """The model wrapper's feature converter class (t5x's
  FEATURE_CONVERTER_CLS), or None for seqio's EncDecFeatureConverter."""
  return getattr(model, 'FEATURE_CONVERTER_CLS', None)


def _eval_converter(model):
  cls = _feature_converter_cls(model)
  return None if cls is None else cls(pack=False)


def _log_metrics(appender: run_files.JsonlAppender, record: dict):
  if jax.process_index() == 0:
    appender.append(record)


def _log(msg: str):
  if jax.process_index() == 0:
    print(msg, flush=True)


def _host_scalars(metrics) -> dict[str, float]:
  return {k: float(v) for k, v in metrics.items()}


def _run_evaluators(evaluators, trainer, state, batch_size, step, logger):
  """seqio Evaluator per task: predictions (decoding) + scores -> metrics."""
  if not evaluators:
    return {}
  network = trainer.network(state['params'])
  part = trainer.partitioner

  def predict_batch(features):
    with part.activate():
      return trainer.model.predict_batch(network, features)

  def score_batch(features):
    with part.activate():
      return trainer.model.score_batch(network, features)

  results = {}
  for evaluator in evaluators:
    metrics, _ = evaluator.evaluate(
        compute_metrics=True, step=step,
        predict_fn=evaluation.make_predict_fn(predict_batch,
                                        global_batch_size=batch_size,
                                        partitioner=part),
        score_fn=evaluation.make_score_fn(score_batch, global_batch_size=batch_size,
                                    partitioner=part))
    for task, values in metrics.result().items():
      flat = {k: float(getattr(v, 'value', v)) for k, v in values.items()}
      results[task] = flat
      logger.eval_report(step, f'eval/{task}', flat)
  return results


def _run_eval_fns(eval_fns, trainer, state, step, logger
                  ) -> dict[str, dict[str, float]]:
  """Runs each of `eval_fns` (see `train`) on the state's parameters and
  reports each result to TensorBoard; returns {name: metrics}. Their time
  is left out of the throughput."""
  started = time.time()
  network = trainer.network(state['params'])
  out = {}
  for fn in eval_fns:
    results = fn(model=trainer.model, network=network,
                 partitioner=trainer.partitioner, step=step)
    for name, metrics in results.items():
      out[name] = {k: float(v) for k, v in metrics.items()}
      logger.eval_report(step, f'eval/{name}', out[name])
  logger.exclude(time.time() - started)
  return out


def _flat(results: dict[str, dict[str, float]]) -> dict[str, float]:
  """{name: metrics} as the `eval/<name>/<metric>` keys of a jsonl row."""
  return {f'eval/{name}/{k}': v for name, metrics in results.items()
          for k, v in metrics.items()}


@gin.configurable(denylist=['config_text'])
def train(*, model_dir: str = gin.REQUIRED, task: str = gin.REQUIRED,
          task_feature_lengths: dict = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, total_steps: int = gin.REQUIRED,
          model=gin.REQUIRED, optimizer=gin.REQUIRED, schedule=None,
          mesh=None, split: str = 'train', seed: int = 0, pack: bool = True,
          shuffle: bool = True, length_buckets: list | None = None,
          num_microbatches: int = 1,
          checkpoint_period: int = 1000, keep_last: int | None = 3,
          keep_every: int | None = None, async_checkpoint: bool = True,
          log_period: int = 10, eval_period: int = 0,
          eval_tasks: list | None = None, eval_split: str = 'validation',
          eval_batch_size: int | None = None,
          eval_num_examples: int | None = None,
          eval_loss_batches: int = 2, eval_fns: list | None = None,
          peak_flops: float | str | None = 'auto',
          init_from_hf: str | None = None, init_from: list | None = None,
          trainable: list | None = None,
          stop_after_steps: int | None = None,
          allow_config_change: bool = False,
          time_budget_s: float | None = None,
          cpu_budget_s: float | None = None,
          checkpoint_input_iterator: bool = True,
          cache_dirs: list | None = None, config_text: str = ''):
  """Trains `model` on a seqio task or mixture until `total_steps`.

  Resumes from the newest good checkpoint in `model_dir` (parameters,
  optimizer, step and the input pipeline's position), so a killed or
  preempted run continues exactly where it stopped. Per-step metrics go to
  `model_dir/train_metrics.jsonl` and TensorBoard (`model_dir/tb`).
  `stop_after_steps` ends this invocation early (for staged runs);
  `time_budget_s` ends it after that many seconds of this invocation
  (checked at log steps; all processes follow process 0's clock), with a
  checkpoint, so the same command continues later. `cpu_budget_s` does the
  same after that many process CPU seconds (`time.process_time()`: every
  thread of this process, XLA's, tf.data's and checkpointing included;
  time spent waiting for a core held by other jobs, or stopped, does not
  count) since this invocation's training loop began (compiling included).
  The resolved gin config is written to `model_dir/config.gin`; resuming
  with a different config is refused (with a diff) unless
  `allow_config_change` (then the old file is kept with a timestamp).
  `checkpoint_input_iterator` writes each process's tf.data iterator state
  into every checkpoint, so a resume deep into a run does not replay the
  stream (`rosetta/data/iterator_state.py`; a few MB per process with
  seqio's shuffle buffers). `length_buckets` (`rosetta/data/length_buckets.py`),
  e.g. `[{'positive_tokens': 32}]`: training batches of a few shapes,
  padded to their bucket's lengths (unpacked data of mixed lengths).
  `cache_dirs`: folders written by `rosetta cache`; the training input then
  reads every task's tokenized shards from there (seqio's `use_cached`),
  and a task missing from them is an error.
  `eval_fns`: an application's own evaluations (gin, e.g. the dual
  encoder's `[@training_eval.RetrievalEval()]`), run at every eval point
  (`eval_period` and the last step) as `fn(model=, network=, partitioner=,
  step=) -> {name: {metric: value}}` on every process; each name goes to
  TensorBoard as `eval/<name>` and into that step's `train_metrics.jsonl`
  row as `eval/<name>/<metric>` keys (`_run_eval_fns`).
  `init_from`: run folders whose parameters a fresh run starts from (every
  path they hold; later runs win; `rosetta.run.param_sources`).
  `trainable`: regular expressions over parameter paths, e.g.
  `[r'(^|/)lora/']`; the rest is frozen, comes from `init_from` and is not
  saved in this run's checkpoints (`rosetta.trainable_params`).
  """
  task_setup()
  _check_registered([task, *(eval_tasks or [])])  # before the run folder
  if cache_dirs:  # `rosetta cache` output: training reads the cached shards
    import seqio  # pylint: disable=import-outside-toplevel
    seqio.add_global_cache_dirs(list(cache_dirs))
    for name in _task_names(task):
      seqio.get_mixture_or_task(name).assert_cached()
  run = RunDir(model_dir).create()
  if config_text:  # every process compares, process 0 writes
    run.write_config(config_text, allow_change=allow_config_change)
  run.save_assets()   # the vocabulary travels with the run
  mesh = mesh if mesh is not None else partitioning.make_mesh()
  part = partitioning.Partitioner(mesh)
  converter_cls = _feature_converter_cls(model)
  tr = trainer_lib.Trainer(model, part, optimizer, schedule,
                           num_microbatches=num_microbatches, seed=seed,
                           trainable=trainable)
  ckpt = run.checkpointer(
      save_interval_steps=checkpoint_period, keep_last=keep_last,
      keep_every=keep_every, async_save=async_checkpoint)
  restored = ckpt.restore(tr.abstract_state)
  if restored is not None:
    start_step, state, data_state = restored
    iterator_state = ckpt.iterator_checkpoint(start_step)
    _log(f'resumed from step {start_step} in {model_dir}')
    if tr.trainable_paths:
      record = param_sources.read(run.path)
      _load_frozen(tr, [] if record is None else record['sources'],
                   run.file(param_sources.SOURCES_FILE))
  else:
    data_state = iterator_state = None
    if init_from_hf and trainable:
      raise ValueError(
          'train.trainable with train.init_from_hf: the frozen parameters '
          'must come from a run; make one with `rosetta import` and name it '
          'in train.init_from')
    if init_from_hf:
      from rosetta.checkpoint import hf as checkpoint_import
      # A wrapper whose network is not an EncoderDecoder (a dual encoder)
      # names its own importer.
      importer = getattr(model, 'import_hf_checkpoint', None)
      if importer is None:
        # HF's config has no layer layout: the run's decides it.
        importer = functools.partial(
            checkpoint_import.import_hf_checkpoint,
            scan_layers=model.config.scan_layers)
      state = tr.state_from_network(importer(init_from_hf, partitioner=part))
    else:
      state = tr.init_state()
    start_step = 0
    if init_from or trainable:
      sources = param_sources.resolve(init_from or [])
      state = _start_from_sources(tr, state, sources)
      param_sources.write(run.path, trainable, sources)
  train_input = pipeline.InputPipeline(
      task, split=split, task_feature_lengths=task_feature_lengths,
      global_batch_size=batch_size, partitioner=part, seed=seed,
      shuffle=shuffle, pack=pack, state=data_state,
      feature_converter_cls=converter_cls, iterator_checkpoint=iterator_state,
      length_buckets=length_buckets, use_cached=bool(cache_dirs))
  saver = train_input.save_iterator if checkpoint_input_iterator else None
  if length_buckets is not None:
    shares = train_input.bucket_shares
    _log(f'input: length buckets {length_buckets} + the full lengths, '
         + ('each batch as its bucket fills' if shares is None else
            f'shares of steps {np.round(shares, 3).tolist()}'))
  if start_step:
    t0 = time.time()
    how = train_input.start()
    _log(f'input: resumed after batch '
         f'{train_input.state()["batches_consumed"]} by {how} '
         f'({time.time() - t0:.2f} s)')

  def save(force=False):
    return ckpt.save(step, state, train_input.state(), force=force,
                     iterator_saver=saver)

  eval_names = list(eval_tasks) if eval_tasks is not None else (
      [task] if eval_period else [])
  evaluators = [evaluation.make_evaluator(
      name, eval_split, num_examples=eval_num_examples,
      task_feature_lengths=task_feature_lengths,
      feature_converter=_eval_converter(model),
      async_compute_metrics=False) for name in eval_names]
  eval_bs = eval_batch_size or batch_size
  flops = trainer_lib.FlopsCounter.for_params(tr.full_params(state['params']))
  if tr.trainable_paths:
    trained = sum(x.size for x in jax.tree.leaves(state['params']))
    _log(f'training {trained / 1e6:.3f}M of {flops.num_params / 1e6:.2f}M '
         f'parameters ({100 * trained / flops.num_params:.2f}%); the rest '
         f'is frozen')
  logger = run_logging.RunLogger(
      run.tensorboard_path, total_steps, start_step,
      peak_flops=_peak_flops(peak_flops, model),
      flops_per_token=flops.flops(1.0),
      deadline=None if time_budget_s is None else time.time() + time_budget_s)
  metrics_log = run_files.JsonlAppender(run.train_metrics_path)
  if jax.process_index() == 0:
    dropped = metrics_log.keep(lambda r: r.get('step', 0) <= start_step)
    if dropped:  # logged after the checkpoint, about to be logged again
      _log(f'{run.train_metrics_path}: dropped {dropped} rows past the '
           f'restored step {start_step}')
  _log(f'training {task} for {total_steps} steps on mesh '
       f'{dict(mesh.shape)} ({jax.process_count()} process(es)); '
       f'{flops.num_params / 1e6:.2f}M parameters; malloc: '
       f'{allocator.loaded()}')

  def eval_loss(state):
    pipe = pipeline.InputPipeline(
        task, split=eval_split, task_feature_lengths=task_feature_lengths,
        global_batch_size=eval_bs, partitioner=part, seed=seed,
        shuffle=False, pack=pack, feature_converter_cls=converter_cls)
    sums = None
    for _ in range(eval_loss_batches):
      m = tr.eval_step(state, next(pipe))
      sums = m if sums is None else jax.tree.map(lambda a, b: a + b, sums, m)
    tokens = max(float(sums['num_tokens']), 1.0)
    return {'loss': float(sums['loss_sum']) / tokens,
            'accuracy': float(sums['correct']) / tokens}

  step = start_step
  eval_rows = {}  # step -> eval_fns' metrics, merged into its jsonl row
  eval_fns_step = None  # the last step eval_fns ran at
  skipped = 0  # bad input lines skipped so far (on_bad_line='skip')
  end = total_steps if stop_after_steps is None else min(
      total_steps, start_step + stop_after_steps)
  tokens_since = 0.0
  pending = []
  started, cpu_started = time.time(), time.process_time()

  def over_budget() -> tuple[bool, bool]:
    """(wall budget passed, CPU budget passed), process 0's verdict."""
    if time_budget_s is None and cpu_budget_s is None:
      return False, False
    over = np.array([
        time_budget_s is not None and time.time() - started > time_budget_s,
        cpu_budget_s is not None
        and time.process_time() - cpu_started > cpu_budget_s])
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      over = multihost_utils.broadcast_one_to_all(over)
    return bool(over[0]), bool(over[1])

  with checkpoints.PreemptionGuard() as guard:
    while step < end:
      batch = next(train_input)
      state, metrics = tr.train_step(state, batch)
      step += 1
      pending.append((step, metrics))
      if eval_fns and eval_period and (step % eval_period == 0
                                       or step == end):
        eval_rows[step] = _flat(_run_eval_fns(eval_fns, tr, state, step,
                                              logger))
        eval_fns_step = step
      if step % log_period == 0 or step == end:
        for s, m in pending:  # host transfer only here, not every step
          host = _host_scalars(m)
          tokens_since += host['num_tokens']
          _log_metrics(metrics_log, {'step': s, **host,
                                     **eval_rows.pop(s, {})})
        logger.train_report(step, host, tokens_since)
        tokens_since, pending = 0.0, []
        skipped = _report_skipped_input(run, skipped)
        over_wall, over_cpu = over_budget()
        if over_wall:
          _log(f'time budget of {time_budget_s:.0f}s reached at step {step}')
        if over_cpu:
          _log(f'CPU budget of {cpu_budget_s:g} CPU s reached at step {step} '
               f'({time.process_time() - cpu_started:.1f} CPU s, '
               f'{time.time() - started:.1f} s wall)')
        if over_wall or over_cpu:
          end = step
      save()
      if eval_period and step % eval_period == 0:
        logger.eval_report(step, 'validation', eval_loss(state))
        _run_evaluators(evaluators, tr, state, eval_bs, step, logger)
        logger.reset_timer(step)
      if guard.should_stop(step):
        for s, m in pending:
          _log_metrics(metrics_log, {'step': s, **_host_scalars(m),
                                     **eval_rows.pop(s, {})})
        pending = []
        save(force=True)
        ckpt.wait()
        _log(f'preempted: saved step {step}, exiting')
        ckpt.close()
        logger.close()
        return state
  loop_cpu, loop_wall = time.process_time() - cpu_started, time.time() - started
  save(force=True)
  ckpt.wait()
  ckpt.close()
  if eval_period and step % eval_period != 0:
    logger.eval_report(step, 'validation', eval_loss(state))
    _run_evaluators(evaluators, tr, state, eval_bs, step, logger)
    if eval_fns and eval_fns_step != step:  # a budget ended the run after
      _run_eval_fns(eval_fns, tr, state, step, logger)  # its row: TB only
  logger.close()
  _log(f'done: step {step} (training loop: {loop_cpu:.1f} CPU s, '
       f'{loop_wall:.1f} s wall)')
  return state


def _start_from_sources(tr, state, sources):
  """The fresh state with every parameter the source runs hold."""
  wanted = trainable_params.flatten(tr.abstract_full_params)
  found = param_sources.load(sources, wanted)
  if sources and not found:
    raise ValueError(f'train.init_from: {[s["run"] for s in sources]} hold '
                     'none of this network\'s parameters')
  if tr.trainable_paths:
    frozen = {p: w for p, w in wanted.items()
              if p not in tr.trainable_paths}
    param_sources.missing(frozen, found, 'train.trainable')
  full = trainable_params.flatten(tr.full_params(state['params']))
  full.update(found)
  params, frozen_params = tr.split(trainable_params.unflatten(full))
  _log(f'initialised {len(found)} of {len(wanted)} parameter arrays from '
       f'{", ".join(s["run"] + "@" + str(s["step"]) for s in sources)}'
       if sources else 'no train.init_from: frozen parameters are fresh')
  tr.set_frozen(frozen_params)
  return {**state, 'params': jax.device_put(params, tr.param_shardings)}


def _load_frozen(tr, sources, where: str) -> None:
  wanted = trainable_params.flatten(tr.abstract_frozen)
  found = param_sources.load(sources, wanted)
  param_sources.missing(wanted, found, where)
  tr.set_frozen(trainable_params.unflatten(found))


def _task_names(name: str) -> list[str]:
  import seqio  # pylint: disable=import-outside-toplevel
  provider = seqio.get_mixture_or_task(name)
  if isinstance(provider, seqio.Mixture):
    return [t.name for t in provider.tasks]
  return [provider.name]


def _check_registered(names) -> None:
  """A task or mixture that is not registered stops the run before its
  folder is made, naming what is registered instead."""
  import seqio  # pylint: disable=import-outside-toplevel
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  for name in names:
    if name not in known:
      prefix = name.split('_')[0]
      near = sorted(k for k in known if k.startswith(prefix))[:8]
      raise ValueError(
          f'no task or mixture named {name!r} is registered'
          + (f' (registered: {", ".join(near)}, ...)' if near else '')
          + '. Tasks of a built-in corpus exist only when its files are in '
          f'the data folder ({corpora.data_dir()}); your own files: see '
          'rosetta/data/parallel_corpus.py')


def _report_skipped_input(run: RunDir, reported: int) -> int:
  """Writes what the input skipped (`bad_input.SKIPPED`) into the run
  directory when it grew; returns the new total."""
  total = bad_input.SKIPPED.total()
  if total != reported:
    name = run_dir_lib.SKIPPED_INPUT if jax.process_count() == 1 else (
        f'skipped_input.process_{jax.process_index()}.json')
    run_files.atomic_write_json(run.file(name), bad_input.SKIPPED.report())
    if not reported:
      _log(f'the input skipped bad lines (on_bad_line=skip): see '
           f'{run.file(name)}')
  return total


@gin.configurable
def evaluate(*, model_dir: str = gin.REQUIRED, tasks: list = gin.REQUIRED,
             model=gin.REQUIRED, split: str = 'validation',
             batch_size: int = 32, task_feature_lengths: dict | None = None,
             num_examples: int | None = None, mesh=None,
             step: int | None = None, eval_fns: list | None = None):
  """Runs each task's seqio metrics, and each of `eval_fns` (as
  `train.eval_fns`, e.g. a dual encoder's retrieval metrics with
  `tasks = []`), on a saved checkpoint; writes
  `model_dir/eval_<split>_<step>.json` atomically and returns the metrics."""
  task_setup()
  run = RunDir(model_dir)
  tr, state, step = run.restore_for_inference(model, mesh, step)
  evaluators = [evaluation.make_evaluator(
      t, split, task_feature_lengths=task_feature_lengths,
      feature_converter=_eval_converter(model),
      num_examples=num_examples, async_compute_metrics=False) for t in tasks]
  logger = run_logging.RunLogger(run.tensorboard_path, step, step,
                                 progress_bar=False)
  results = _run_evaluators(evaluators, tr, state, batch_size, step, logger)
  if eval_fns:
    results.update(_run_eval_fns(eval_fns, tr, state, step, logger))
  logger.close()
  run_files.atomic_write_text(
      run.file(f'eval_{split}_{step}.json'),
      json.dumps({'step': step, 'split': split, 'metrics': results},
                 indent=1))
  return results


@gin.configurable
def infer(*, model_dir: str = gin.REQUIRED, task: str = gin.REQUIRED,
          model=gin.REQUIRED, output_path: str = gin.REQUIRED,
          split: str = 'validation', batch_size: int = 32,
          task_feature_lengths: dict | None = None,
          num_examples: int | None = None, mesh=None,
          step: int | None = None, num_decodes: int | None = None):
  """Decodes a task split with a saved checkpoint; writes JSONL (input,
  prediction, target per line, in dataset order) atomically. A model
  wrapper with a `write_inference` method (one that does not decode, such
  as a dual encoder writing embeddings) writes its own output instead,
  called with the network and this function's arguments. Decoding is
  the model's (`EncoderDecoderModel.num_beams`, `.temperature`, `.top_k`,
  `.top_p`, `.seed`); `num_decodes` = n adds `predictions`, the n best
  beams or n samples as [{"text", "score"}, ...] (`prediction` is the
  first)."""
  task_setup()
  import seqio
  tr, state, step = RunDir(model_dir).restore_for_inference(
      model, mesh, step)
  writer = getattr(tr.model, 'write_inference', None)
  if writer is not None:  # a wrapper that does not decode writes its own
    return writer(tr.network(state['params']), task=task, split=split,
                  output_path=output_path, batch_size=batch_size,
                  task_feature_lengths=task_feature_lengths,
                  num_examples=num_examples, partitioner=tr.partitioner)
  task_obj = seqio.get_mixture_or_task(task)
  evaluator = evaluation.make_evaluator(task, split,
                                  task_feature_lengths=task_feature_lengths,
                                  feature_converter=_eval_converter(model),
                                  num_examples=num_examples,
                                  async_compute_metrics=False)
  network = tr.network(state['params'])

  def predict_batch(features):
    with tr.partitioner.activate():
      return tr.model.predict_batch(network, features)
  predict_fn = evaluation.make_predict_fn(predict_batch,
                                    global_batch_size=batch_size,
                                    partitioner=tr.partitioner)
  dataset = evaluator.cached_model_datasets[task_obj.name]  # (index, feats)
  vocab = task_obj.output_features['targets'].vocabulary
  if num_decodes is not None:
    def predict_nbest(features):
      with tr.partitioner.activate():
        return tr.model.predict_batch(network, features, return_scores=True,
                                      num_decodes=num_decodes)
    nbest = evaluation.predict_with_scores(
        predict_nbest, dataset, global_batch_size=batch_size,
        partitioner=tr.partitioner)
    predictions = {i: tokens[0] for i, (tokens, _) in nbest.items()}
  else:
    predictions = dict(predict_fn(dataset))
  examples = evaluator.cached_task_datasets[task_obj.name]
  records = []
  for i, ex in enumerate(examples.as_numpy_iterator()):
    records.append({
        'index': i,
        'input': ex.get('inputs_pretokenized', b'').decode('utf-8'),
        'target': ex.get('targets_pretokenized', b'').decode('utf-8'),
        'prediction': vocab.decode(list(predictions[i]))})
    if num_decodes is not None:
      records[-1]['predictions'] = [
          {'text': vocab.decode(t.tolist()), 'score': float(score)}
          for t, score in zip(*nbest[i])]
  return run_files.write_jsonl_atomically(output_path, records)
