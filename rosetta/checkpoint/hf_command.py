"""export a run to an HF T5 / mT5 folder (safetensors); import one as a run

    rosetta export --model_dir runs/nmt --format hf --output exported/nmt
    rosetta export --model_dir runs/nmt --format hf --output exported/nmt \\
        --step 2000 --overwrite
    rosetta import --hf /data/mt5-small --output runs/mt5 \\
        --gin_file experiments/mt5_finetune_tatoeba.gin \\
        --gin.MT5_DIR="'/data/mt5-small'"

Export writes a run's checkpoint (the newest good one, or --step) as
`config.json` + `model.safetensors`, which
`transformers.T5ForConditionalGeneration.from_pretrained` (or
`MT5ForConditionalGeneration` with --model_type mt5) loads, plus the run's
vocabulary for `AutoTokenizer`: `spiece.model` and a `tokenizer_config.json`
naming T5Tokenizer for a SentencePiece vocabulary, ByT5Tokenizer for a byte
one. The folder appears whole or not at all (built beside it, renamed at
the end); an existing non-empty one is refused unless --overwrite.

Import makes a run directory from an HF T5 / mT5 folder (config.json and
safetensors): the gin files and bindings are those of the `rosetta train`
run it stands for (task, vocabulary, optimizer, model size), written to
`config.gin` exactly as `rosetta train` would; the architecture they set
must be the checkpoint's (a mismatch is listed with the bindings that fix
it). Step 0 holds the HF weights and a fresh optimizer state, so
`rosetta translate --checkpoint RUN`, `rosetta evaluate` / `infer` (with
`--gin.*.model_dir=RUN`) decode with the pretrained model, and the same
`rosetta train` command as the import's, with
`--gin.train.model_dir="'RUN'"`, fine-tunes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from rosetta.checkpoint import hf

FORMATS = ('hf',)
MODEL_TYPES = ('t5', 'mt5')
# Recorded by `rosetta import` in the run: where the weights came from.
IMPORTED_FROM = 'imported_from.json'
# T5Config fields the checkpoint's weights fix; the rest (dropout, dtypes)
# are the run's choice.
ARCHITECTURE = ('vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
                'num_encoder_layers', 'num_decoder_layers', 'mlp_activations',
                'relative_attention_num_buckets',
                'relative_attention_max_distance', 'layer_norm_epsilon',
                'tie_word_embeddings', 'pad_token_id', 'eos_token_id',
                'decoder_start_token_id')


# --------------------------------------------------------------- export ---

def tokenizer_files(vocabulary) -> dict[str, bytes]:
  """{file name: content} that let HF's AutoTokenizer read `vocabulary`
  (a seqio vocabulary) as the run does; {} when there is no HF equivalent."""
  import seqio  # pylint: disable=import-outside-toplevel
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    # extra_ids as the run's: HF's default (100) would append sentinels.
    config = {'tokenizer_class': 'T5Tokenizer',
              'extra_ids': vocabulary.extra_ids}
    return {'spiece.model': vocabulary.sp_model,
            'tokenizer_config.json': _json_bytes(config)}
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return {'tokenizer_config.json': _json_bytes(
        {'tokenizer_class': 'ByT5Tokenizer', 'extra_ids': 0})}
  return {}


def _json_bytes(value) -> bytes:
  return (json.dumps(value, indent=2) + '\n').encode('utf-8')


def _output_in_the_way(output: str, overwrite: bool) -> str | None:
  if os.path.exists(output) and not os.path.isdir(output):
    return f'{output}: is a file; name a folder for the checkpoint'
  if os.path.isdir(output) and os.listdir(output) and not overwrite:
    return (f'{output}: exists and is not empty; choose a new folder or '
            'pass --overwrite to replace it')
  return None


def export_run(model_dir: str, output: str, *, step: int | None = None,
               overwrite: bool = False, model_type: str | None = None,
               register_fns=()) -> dict:
  """Writes the run's checkpoint as an HF folder (see the module
  docstring); returns {'output', 'step', 'model_type', 'files'}. Leaves
  gin configured with the run's config."""
  from rosetta.model.encoder_decoder import EncoderDecoder  # pylint: disable=import-outside-toplevel
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  from rosetta.run.run_dir import RunDir  # pylint: disable=import-outside-toplevel
  if files.is_remote(output):
    raise ValueError(f'{output}: the export is written to a local folder; '
                     'copy it to remote storage afterwards')
  output = os.path.abspath(output)
  refusal = _output_in_the_way(output, overwrite)
  if refusal:
    raise FileExistsError(refusal)
  run = RunDir(model_dir).require()
  if model_type is None:
    model_type = _imported_model_type(run) or 't5'
  loaded = run.load(step, register_fns=register_fns)
  if not isinstance(loaded.network, EncoderDecoder):
    raise ValueError(
        f'{run.config_path}: train.model is a '
        f'{type(loaded.model).__name__}; --format hf exports encoder-decoder '
        '(T5) runs only')
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.export-', dir=parent)
  try:
    hf.export_hf_checkpoint(loaded.network, staging, model_type=model_type)
    for name, content in tokenizer_files(loaded.vocabulary).items():
      with open(os.path.join(staging, name), 'wb') as f:
        f.write(content)
    _readable_as_umask_allows(staging)
    _move_into_place(staging, output)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return {'output': output, 'step': loaded.step, 'model_type': model_type,
          'files': sorted(os.listdir(output))}


def _readable_as_umask_allows(folder: str) -> None:
  """mkdtemp makes 0700 folders (and some writers 0600 files): give the
  result the modes a plain mkdir / open would have had."""
  os.chmod(folder, 0o777 & ~_umask())
  for name in os.listdir(folder):
    os.chmod(os.path.join(folder, name), 0o666 & ~_umask())


def _umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


def _move_into_place(staging: str, output: str) -> None:
  """`staging` becomes `output`; an existing `output` (--overwrite) is
  moved aside first and deleted only once the new folder is in place."""
  if not os.path.isdir(output) or not os.listdir(output):
    os.replace(staging, output)   # onto nothing or an empty folder
    return
  aside = tempfile.mkdtemp(prefix='.replaced-', dir=os.path.dirname(output))
  os.rmdir(aside)
  os.replace(output, aside)
  os.replace(staging, output)
  shutil.rmtree(aside, ignore_errors=True)


def _imported_model_type(run) -> str | None:
  path = run.file(IMPORTED_FROM)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f).get('model_type')


def export_main(argv=None) -> int:
  """export a run as an HF T5 / mT5 folder (safetensors, config, tokenizer)"""
  p = argparse.ArgumentParser(
      prog='rosetta export', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--model_dir', required=True,
                 help='run directory of `rosetta train` (or import/average)')
  p.add_argument('--format', required=True, choices=FORMATS,
                 help='hf: safetensors + config.json for transformers')
  p.add_argument('--output', required=True, help='the folder to write')
  p.add_argument('--step', type=int, default=None,
                 help='checkpoint step (default: the newest good one)')
  p.add_argument('--model_type', choices=MODEL_TYPES, default=None,
                 help="config.json's model_type (default: the imported "
                 "checkpoint's for an imported run, else t5)")
  p.add_argument('--overwrite', action='store_true',
                 help='replace an existing non-empty output folder')
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  refusal = _output_in_the_way(os.path.abspath(args.output), args.overwrite)
  if refusal:
    p.error(f'--output {refusal}')
  if '://' not in args.model_dir and not os.path.isdir(args.model_dir):
    p.error(f'--model_dir {args.model_dir}: no such folder')
  result = export_run(args.model_dir, args.output, step=args.step,
                      overwrite=args.overwrite, model_type=args.model_type)
  print(f'exported step {result["step"]} of {args.model_dir} to '
        f'{result["output"]} ({result["model_type"]}: '
        f'{", ".join(result["files"])})')
  return 0


# --------------------------------------------------------------- import ---

def read_hf_config(directory: str) -> dict:
  """config.json of an HF T5 / mT5 folder, checked to be one."""
  path = os.path.join(directory, 'config.json')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'{directory}: no such folder')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: missing; an HF checkpoint folder has '
                            'config.json beside its safetensors')
  try:
    with open(path, encoding='utf-8') as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}: not valid JSON ({e.msg})') from e
  model_type = config.get('model_type') if isinstance(config, dict) else None
  if model_type not in MODEL_TYPES:
    raise ValueError(
        f'{path}: model_type {model_type!r} is not a T5 encoder-decoder; '
        f'rosetta import reads {" and ".join(MODEL_TYPES)} checkpoints')
  return config


def architecture_mismatches(run_config, checkpoint_config) -> list[str]:
  """Bindings that would make the run's T5Config fit the checkpoint's
  architecture, e.g. ["encoder_decoder.T5Config.emb_dim = 512"]."""
  fixes = []
  for field in ARCHITECTURE:
    want = getattr(checkpoint_config, field)
    if getattr(run_config, field) != want:
      fixes.append(f'encoder_decoder.T5Config.{field} = {want!r}')
  return fixes


def import_run(hf_dir: str, output: str, gin_files, gin_bindings=()) -> dict:
  """Makes the run directory `output` from the HF folder `hf_dir` (see the
  module docstring). Returns {'output', 'task', 'parameters'}. Leaves gin
  configured with the run's config."""
  import gin  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from rosetta import gin_utils, partitioning  # pylint: disable=import-outside-toplevel
  from rosetta import trainer as trainer_lib  # pylint: disable=import-outside-toplevel
  from rosetta.run import files  # pylint: disable=import-outside-toplevel
  from rosetta.run import run_dir as run_dir_lib  # pylint: disable=import-outside-toplevel
  config_path = os.path.join(hf_dir, 'config.json')
  checkpoint_type = read_hf_config(hf_dir)['model_type']
  if not any(os.path.exists(os.path.join(hf_dir, name)) for name in (
      'model.safetensors', 'model.safetensors.index.json')):
    raise FileNotFoundError(
        f'{os.path.join(hf_dir, "model.safetensors")}: missing (nor a '
        'sharded model.safetensors.index.json); pickled pytorch_model.bin '
        'files are not read: save the model with safetensors first')
  if files.is_remote(output):
    raise ValueError(f'{output}: rosetta import writes a local run '
                     'directory; copy it to remote storage afterwards')
  if os.path.exists(output) and (not os.path.isdir(output)
                                 or os.listdir(output)):
    raise FileExistsError(f'{output}: exists and is not empty; rosetta import '
                          'writes a new run directory')
  gin_utils.parse(gin_files, [*gin_bindings,
                              f'train.model_dir = {output!r}'],
                  finalize=False)
  # What `rosetta train` with these files and bindings writes, taken
  # before task setup (which may bind more).
  config_text = run_dir_lib.run_config_text()
  for name in ('train.model', 'train.optimizer', 'train.task'):
    if not _bound(name):
      raise ValueError(
          f'the gin files ({", ".join(gin_files)}) set no {name}: give the '
          'training config the run stands for, as for `rosetta train`')
  model = run_dir_lib.configured('train.model', 'the gin files')
  run_cfg = getattr(model, 'config', None)
  checkpoint_cfg = hf.load_hf_config(hf_dir)
  if run_cfg is None or type(run_cfg) is not type(checkpoint_cfg):
    raise ValueError(f'train.model is a {type(model).__name__}; rosetta '
                     'import makes encoder-decoder (T5) runs')
  fixes = architecture_mismatches(run_cfg, checkpoint_cfg)
  if fixes:
    raise ValueError(
        f'{config_path}: the gin files configure another architecture than '
        'the checkpoint; use the matching model size file or add these '
        'bindings: ' + '; '.join(fixes))
  run_dir_lib.task_setup()
  task = gin.query_parameter('train.task')
  _check_vocabulary(task, run_cfg.vocab_size, config_path)
  mesh = (run_dir_lib.configured('train.mesh', 'the gin files')
          if _bound('train.mesh') else partitioning.make_mesh())
  part = partitioning.Partitioner(mesh)
  schedule = (run_dir_lib.configured('train.schedule', 'the gin files')
              if _bound('train.schedule') else None)
  tr = trainer_lib.Trainer(
      model, part, run_dir_lib.configured('train.optimizer', 'the gin files'),
      schedule)
  if hasattr(model, 'import_hf_checkpoint'):
    # A wrapper with parameters beyond the T5 (a reranker's score head)
    # imports its own way, as `train.init_from_hf` does.
    network = model.import_hf_checkpoint(hf_dir, partitioner=part)
  else:
    network = hf.import_hf_checkpoint(
        hf_dir, partitioner=part, dropout_rate=run_cfg.dropout_rate,
        dtype=run_cfg.dtype, param_dtype=run_cfg.param_dtype,
        scan_layers=run_cfg.scan_layers)
  state = tr.state_from_network(network)

  parent = os.path.dirname(os.path.abspath(output))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.import-', dir=parent)
  try:
    run = run_dir_lib.RunDir(staging)
    run.write_config(config_text)
    run.save_assets()
    files.atomic_write_json(run.file(IMPORTED_FROM), {
        'hf_dir': os.path.abspath(hf_dir), 'model_type': checkpoint_type})
    ckpt = run.checkpointer(save_interval_steps=1, keep_last=None,
                            async_save=False)
    try:
      ckpt.save(0, state, None, force=True)
      ckpt.wait()
    finally:
      ckpt.close()
    os.chmod(staging, 0o777 & ~_umask())
    os.replace(staging, output)   # onto nothing or an empty folder
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  num_params = sum(x.size for x in jax.tree.leaves(state['params']))
  return {'output': output, 'task': task, 'parameters': int(num_params)}


def _bound(name: str) -> bool:
  import gin  # pylint: disable=import-outside-toplevel
  try:
    return gin.query_parameter(name) is not None
  except ValueError:
    return False


def _check_vocabulary(task: str, model_vocab_size: int, source: str) -> None:
  import seqio  # pylint: disable=import-outside-toplevel
  features = seqio.get_mixture_or_task(task).output_features
  for name, feature in features.items():
    size = feature.vocabulary.vocab_size
    if size > model_vocab_size:
      raise ValueError(
          f'{source}: vocab_size {model_vocab_size} is smaller than the '
          f'{name!r} vocabulary of task {task!r} ({size} pieces)')


def import_main(argv=None) -> int:
  """import an HF T5 / mT5 folder as a run (step 0, ready to fine-tune)"""
  p = argparse.ArgumentParser(
      prog='rosetta import', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--hf', required=True, metavar='DIR',
                 help='HF T5 / mT5 folder: config.json + model.safetensors '
                 '(or a sharded index)')
  p.add_argument('--output', required=True, metavar='RUN',
                 help='the run directory to create')
  p.add_argument('--gin_file', action='append', default=[],
                 help='the training run\'s gin file (repeatable; as for '
                 '`rosetta train`)')
  p.add_argument('--gin_bindings', action='append', default=[],
                 help='a binding, e.g. "train.batch_size = 16"; '
                 '--gin.KEY=VALUE also works')
  args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
  for arg in rest:
    if arg.startswith('--gin.') and '=' in arg:
      key, value = arg[len('--gin.'):].split('=', 1)
      args.gin_bindings.append(f'{key} = {value}')
    else:
      p.error(f'unrecognised argument {arg!r}')
  if not args.gin_file:
    p.error('--gin_file: name the training config the run stands for (its '
            'task, vocabulary, optimizer and model size), e.g. '
            '--gin_file experiments/mt5_finetune_tatoeba.gin')
  if os.path.exists(args.output) and (not os.path.isdir(args.output)
                                      or os.listdir(args.output)):
    p.error(f'--output {args.output}: exists and is not empty; rosetta '
            'import writes a new run directory')
  try:
    read_hf_config(args.hf)
  except (OSError, ValueError) as e:
    print(f'rosetta import: {e}', file=sys.stderr)
    return 1
  import gin  # pylint: disable=import-outside-toplevel
  from rosetta import gin_utils  # pylint: disable=import-outside-toplevel
  try:
    gin_utils.parse(args.gin_file, args.gin_bindings, finalize=False)
  except Exception as e:  # pylint: disable=broad-except  # a typo: usage
    p.error(str(e).splitlines()[0])
  gin.clear_config()
  result = import_run(args.hf, args.output, args.gin_file, args.gin_bindings)
  print(f'imported {args.hf} into {result["output"]} (step 0, '
        f'{result["parameters"] / 1e6:.2f}M parameters, task '
        f'{result["task"]})')
  return 0
