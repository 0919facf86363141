"""Rosetta's main job (the README's first command).

Trains a small multilingual translation model English <-> {de, fr, es, it}
for a bounded time on this machine (Tatoeba when the data directory is
present, Django's .po strings otherwise), then prints the per-direction
table (sacreBLEU BLEU, chrF, off-target rate; supervised directions on the
held-out test split, zero-shot directions such as de->fr on FLORES devtest)
and a few sample translations, all decoded with beam search through
`rosetta translate`'s Translator.

    python -m translation.main_job --minutes 10 --run_dir runs/main

Re-running with the same --run_dir continues training where it stopped
(the trainer resumes from its last checkpoint) and evaluates again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv):
  p = argparse.ArgumentParser(prog='python -m translation.main_job',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--minutes', type=float, default=10.0,
                 help='training time budget for this invocation')
  p.add_argument('--run_dir', default='runs/main')
  p.add_argument('--languages', default='de,fr,es,it')
  p.add_argument('--corpus', default='auto',
                 choices=('auto', 'tatoeba', 'django'))
  p.add_argument('--eval_sentences', type=int, default=100,
                 help='test sentences per direction')
  p.add_argument('--beam_size', type=int, default=4)
  p.add_argument('--gin_file', action='append', default=[],
                 help='extra gin files (after the experiment)')
  p.add_argument('--gin', action='append', default=[], metavar='BINDING',
                 help="extra binding, e.g. 'train.batch_size = 16'")
  return p.parse_args(argv)


def eval_directions(setup, n: int):
  """{'src-tgt': [(source, reference)]} and the zero-shot direction set."""
  from rosetta.data import corpora as sources
  out, zero_shot = {}, set()
  for src, tgt in setup.directions:
    pairs = sources.direction_splits(setup.corpus, src, tgt)()['test']
    out[f'{src}-{tgt}'] = list(pairs)[:n]
  if sources.available('flores'):
    for src, tgt in zero_shot_directions(setup.languages):
      out[f'{src}-{tgt}'] = list(sources.flores_splits(src, tgt)['test'])[:n]
      zero_shot.add(f'{src}-{tgt}')
  return out, zero_shot


def zero_shot_directions(languages) -> list[tuple[str, str]]:
  """Non-English pairs never trained on, one per language in a ring
  (de-fr, fr-es, es-de); none with fewer than two non-English languages
  (a single language would give the meaningless de-de)."""
  langs = [lang for lang in dict.fromkeys(languages) if lang != 'en']
  if len(langs) < 2:
    return []
  if len(langs) == 2:
    return [(langs[0], langs[1]), (langs[1], langs[0])]
  return list(zip(langs, langs[1:] + langs[:1]))


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from rosetta import native_logs
  native_logs.import_tensorflow_quietly()
  run_dir = os.path.abspath(args.run_dir)
  langs = [l.strip() for l in args.languages.split(',') if l.strip()]
  bindings = [
      f"train.model_dir = '{run_dir}'",
      f'train.time_budget_s = {60.0 * args.minutes}',
      f"nmt.setup.vocab_path = '{run_dir}/spm.model'",
      f'nmt.setup.languages = {langs!r}',
      f"nmt.setup.corpus = '{args.corpus}'",
      'train.allow_config_change = True',  # a new budget is not a new run
      # bfloat16 activations (float32 parameters): 1.5x the steps of
      # float32 in the same minutes on a CPU with AVX-512 bf16.
      "encoder_decoder.T5Config.dtype = 'bfloat16'",
      *args.gin]
  from rosetta import cli
  train_argv = ['train', '--gin_file=experiments/nmt_cpu_small.gin']
  train_argv += [f'--gin_file={f}' for f in args.gin_file]
  train_argv += [f'--gin_bindings={b}' for b in bindings]
  t0 = time.time()
  rc = cli.main(train_argv)
  if rc:  # the error is printed; nothing to evaluate
    return rc
  print(f'\ntraining took {(time.time() - t0) / 60:.1f} min', flush=True)

  from rosetta.decoding.algorithms import DecodeOptions
  from translation import metrics, nmt, translate
  translator = translate.Translator(run_dir)
  setup = nmt.last_setup()
  print(f'corpus: {setup.corpus}; directions: '
        f'{", ".join(f"{s}-{t}" for s, t in setup.directions)}; '
        f'checkpoint step {translator.step}', flush=True)
  pairs, zero_shot = eval_directions(setup, args.eval_sentences)
  options = DecodeOptions(num_beams=args.beam_size, max_decode_length=64)
  outputs, t0 = {}, time.time()
  for direction, items in pairs.items():
    tgt = direction.split('-')[1]
    hyps = translator.translate([s for s, _ in items], tgt, options=options)
    outputs[direction] = (hyps, [r for _, r in items])
  results = metrics.evaluate_directions(outputs, zero_shot=zero_shot)
  print(f'\nper-direction results ({args.eval_sentences} test sentences '
        f'each, beam {args.beam_size}; decoding took '
        f'{time.time() - t0:.0f}s):\n')
  print(metrics.format_table(results))
  path = metrics.write_json(results, os.path.join(run_dir,
                                                  'translation_table.json'))
  print(f'\n(table written to {path})\n\nsample translations:')
  for direction in list(outputs)[:6]:
    hyps, refs = outputs[direction]
    src = pairs[direction][0][0]
    print(f'  [{direction}] {src}\n      -> {hyps[0]}\n      ref {refs[0]}')
  return 0


if __name__ == '__main__':
  from rosetta import allocator
  allocator.reexec()     # a retaining allocator (rosetta/allocator.py)
  sys.exit(main())
