"""`rosetta translate`: translate a file or stdin with a trained run.

    rosetta translate --checkpoint runs/nmt --target_lang fr < in.txt > out.txt
    rosetta translate --checkpoint runs/nmt --target_lang de \\
        --input in.txt --output out.txt --beam_size 4 --alpha 0.6 --beta 0.2
    rosetta translate --checkpoint runs/nmt --target_lang fr --sampling \\
        --temperature 0.7 --top_p 0.9 --seed 1 < in.txt     # sampling
    rosetta translate --checkpoint runs/nmt --target_lang fr --beam_size 8 \\
        --nbest 4 < in.txt > nbest.jsonl                   # n-best, JSONL

The run directory's `config.gin` (written by `rosetta train`) rebuilds the
model and names its task, whose vocabulary encodes the input; the newest
checkpoint's parameters are restored onto all devices. Each line gets the
target-language token (`<2fr>`) exactly as in training. Lines are batched
by length for speed; the output keeps the input order, one line per line
(an empty input line gives an empty output line).

Output: plain text, the best translation of each line, by default.
`--nbest N` writes JSONL instead, one object per input line, in order:
  {"input": "...", "nbest": [{"text": "...", "score": -1.23}, ...]}
holding the N best beams (best first; score = the beam score, the summed
log-probability divided by the length penalty) or, with --sampling, N
samples (in draw order; score = the summed log-probability of the sample).
An empty input line gets "nbest": []. Sampling is reproducible: the same
--seed, input and --batch_size give the same output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import numpy as np
from rosetta.decoding.algorithms import DecodeOptions
from rosetta.run import files


def parse_args(argv):
  p = argparse.ArgumentParser(
      prog='rosetta translate', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n\n', 1)[1])
  p.add_argument('--checkpoint', required=True,
                 help='run directory of `rosetta train` (holds config.gin '
                 'and checkpoints/)')
  p.add_argument('--target_lang', required=True,
                 help="target language code, e.g. 'fr'")
  p.add_argument('--input', default='-', help="input file, '-' = stdin")
  p.add_argument('--output', default='-', help="output file, '-' = stdout "
                 '(a file is written atomically)')
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--beam_size', type=int, default=4,
                 help='1 = greedy decoding')
  p.add_argument('--alpha', type=float, default=0.6,
                 help='length penalty exponent')
  p.add_argument('--beta', type=float, default=0.0,
                 help='GNMT coverage penalty weight')
  p.add_argument('--length_penalty', choices=('gnmt', 'hf'), default='gnmt')
  p.add_argument('--sampling', action='store_true',
                 help='sample instead of searching (beam size 1; '
                 'temperature 1 unless --temperature is given)')
  p.add_argument('--temperature', type=float, default=None,
                 help='> 0 samples instead of searching (with --beam_size 1 '
                 'or --sampling)')
  p.add_argument('--top_k', type=int, default=0,
                 help='sample among the k most likely tokens (0 = off)')
  p.add_argument('--top_p', type=float, default=1.0,
                 help='nucleus sampling mass (1 = off)')
  p.add_argument('--seed', type=int, default=0, help='sampling seed')
  p.add_argument('--nbest', type=int, default=None, metavar='N',
                 help='write N outputs per line as JSONL (see above): the N '
                 'best beams (N <= --beam_size) or N samples')
  p.add_argument('--max_length', type=int, default=128,
                 help='maximum output tokens')
  p.add_argument('--max_input_length', type=int, default=256,
                 help='longer inputs are truncated (counted on stderr)')
  p.add_argument('--step', type=int, default=None,
                 help='checkpoint step (default: newest good one)')
  p.add_argument('--zero_shot', action='store_true',
                 help='allow a target language the run was not trained '
                 'into (its <2xx> token must be in the vocabulary)')
  p.add_argument('--no_progress', action='store_true')
  args = p.parse_args(argv)
  for flag in ('batch_size', 'max_length', 'max_input_length', 'nbest'):
    if getattr(args, flag) is not None and getattr(args, flag) <= 0:
      p.error(f'--{flag} {getattr(args, flag)}: must be positive')
  if args.sampling:
    if args.temperature == 0:
      p.error('--sampling --temperature 0: sampling needs a temperature > 0')
    args.beam_size = 1
    args.temperature = 1.0 if args.temperature is None else args.temperature
  elif args.temperature is None:
    args.temperature = 0.0
  if args.nbest is not None and args.nbest > 1:
    if args.beam_size == 1 and not args.temperature:
      p.error(f'--nbest {args.nbest}: greedy search has one output; use '
              f'--beam_size {args.nbest} or more, or --sampling')
    if args.beam_size > 1 and args.nbest > args.beam_size:
      p.error(f'--nbest {args.nbest}: more outputs than beams; use '
              f'--beam_size {args.nbest} or more')
  if args.output != '-':
    folder = os.path.dirname(os.path.abspath(args.output))
    if os.path.isdir(args.output):
      p.error(f'--output {args.output}: is a folder; name a file')
    if not os.path.isdir(folder):
      p.error(f'--output {args.output}: the folder {folder} does not exist')
    if not os.access(folder, os.W_OK):
      p.error(f'--output {args.output}: the folder {folder} is not writable')
  if args.input != '-' and not os.path.isfile(args.input):
    p.error(f'--input {args.input}: no such file')
  return args


def read_input_lines(stream, name: str) -> list[str]:
  """Lines split on '\\n' only, for a file and stdin alike (a lone '\\r'
  or U+2028 inside a line stays in it: splitting there would shift every
  later output line); a trailing '\\r' (CRLF) is dropped; invalid UTF-8 is
  an error naming the line."""
  from rosetta.data import bad_input
  from rosetta.data import text_pairs
  return [bad_input.decode(name, i, line)
          for i, line in enumerate(text_pairs.split_lines(stream.read()), 1)]


def _bucket(n: int, size: int = 16) -> int:
  """Pad lengths to multiples of 16 so a few shapes are compiled, not one
  per batch."""
  return max(size, -(-n // size) * size)


class Translator:
  """A restored run, ready to translate lists of sentences."""

  def __init__(self, run_dir: str, step: int | None = None):
    import gin
    import seqio
    from rosetta.model import encoder_decoder_model
    from rosetta.run.run_dir import RunDir
    run = RunDir(run_dir)
    run.parse_config()
    task = gin.query_parameter('train.task')
    self.vocabulary = (seqio.get_mixture_or_task(task)
                       .output_features['inputs'].vocabulary)
    self.trained_targets = trained_targets(task)
    wrapper = encoder_decoder_model.EncoderDecoderModel()
    trainer, state, step = run.restore_for_inference(wrapper, None, step)
    self._attach(trainer, wrapper, state['params'], step)

  def target_refusal(self, lang: str, zero_shot: bool = False) -> str | None:
    """Why translating into `lang` is refused, or None. Targets the run was
    not trained into need `zero_shot` and their token in the vocabulary;
    an unknown code is always refused."""
    import seqio
    from rosetta import vocab as vocab_lib
    from rosetta.data.languages import language
    try:
      code = language(lang).code
    except (KeyError, ValueError) as e:
      return str(e)
    if self.trained_targets is None or code in self.trained_targets:
      return None
    trained = ', '.join(sorted(self.trained_targets))
    if not zero_shot:
      return (f'the run was trained into {trained} only; pass --zero_shot '
              'to translate into another language anyway')
    if (vocab_lib.language_token_id(self.vocabulary, code) is None
        and not isinstance(self.vocabulary, seqio.ByteVocabulary)):
      return f'the vocabulary has no <2{code}> token'
    return None

  def _attach(self, trainer, wrapper, params, step):
    self.wrapper, self.trainer, self.step = wrapper, trainer, step
    self.network = trainer.network(params)
    self.pad_id = wrapper.config.pad_token_id
    self.eos_id = wrapper.config.eos_token_id

  @classmethod
  def from_params(cls, trainer, wrapper, params, vocabulary,
                  step: int = 0) -> 'Translator':
    """A Translator for parameters in memory (e.g. a benchmark's
    snapshot of a `rosetta.trainer.Trainer` state), no run directory."""
    self = cls.__new__(cls)
    self.vocabulary = vocabulary
    self._attach(trainer, wrapper, params, step)
    return self

  def encode(self, text: str, target_lang: str, max_len: int) -> list[int]:
    from translation import tasks
    ids = tasks.encode_source(self.vocabulary, text, target_lang)
    return ids[:max_len - 1] + [self.eos_id]

  def translate(self, lines: Sequence[str], target_lang: str, *,
                options: DecodeOptions | None = None, batch_size: int = 32,
                max_input_length: int = 256,
                progress: bool = False) -> list[str]:
    """`options` default: 4-beam GNMT search, up to 128 tokens."""
    return [best[0][0] if best else '' for best in self._decode_lines(
        lines, target_lang, options, None, batch_size, max_input_length,
        progress)]

  def translate_nbest(self, lines: Sequence[str], target_lang: str,
                      num_decodes: int, *,
                      options: DecodeOptions | None = None,
                      batch_size: int = 32, max_input_length: int = 256,
                      progress: bool = False
                      ) -> list[list[tuple[str, float]]]:
    """[(text, score), ...] per line: the `num_decodes` best beams (best
    first, beam scores) or `num_decodes` samples (draw order, summed
    log-probabilities), as `rosetta.decoding.algorithms.decode_nbest`; an
    empty line gets []."""
    return self._decode_lines(lines, target_lang, options, num_decodes,
                              batch_size, max_input_length, progress)

  def _decode_lines(self, lines, target_lang, options, num_decodes,
                    batch_size, max_input_length, progress):
    import jax
    from tqdm import tqdm
    options = options if options is not None else DecodeOptions(
        num_beams=4, max_decode_length=128)
    part = self.trainer.partitioner
    dp = int(np.prod([dict(part.mesh.shape)[a] for a in ('data', 'fsdp')]))
    batch_size = -(-batch_size // dp) * dp  # a multiple of the data axes
    encoded = [self.encode(t, target_lang, max_input_length) if t.strip()
               else None for t in lines]
    truncated = sum(1 for t in lines if t.strip() and len(
        self.encode(t, target_lang, 10**9)) > max_input_length)
    if truncated:
      print(f'{truncated} input line(s) longer than {max_input_length} '
            'tokens were truncated', file=sys.stderr)
    order = sorted((i for i, e in enumerate(encoded) if e is not None),
                   key=lambda i: len(encoded[i]))
    out = [[] for _ in lines]
    batches = [order[i:i + batch_size]
               for i in range(0, len(order), batch_size)]
    sharding = self.trainer.batch_sharding()
    for idx in tqdm(batches, disable=not progress, unit='batch',
                    file=sys.stderr):
      width = _bucket(max(len(encoded[i]) for i in idx))
      x = np.full((batch_size, width), self.pad_id, np.int32)
      for row, i in enumerate(idx):
        x[row, :len(encoded[i])] = encoded[i]
      with part.activate():
        tokens, scores = self.wrapper.predict_batch(
            self.network, {'encoder_input_tokens': jax.device_put(x,
                                                                  sharding)},
            options=options, return_scores=True, num_decodes=num_decodes)
      tokens, scores = (np.asarray(jax.device_get(a)) for a in (tokens,
                                                                 scores))
      if num_decodes is None:  # (b, L), (b,): one output per row
        tokens, scores = tokens[:, None], scores[:, None]
      for row, i in enumerate(idx):
        out[i] = [(self._text(t), float(score))
                  for t, score in zip(tokens[row], scores[row])]
    return out

  def _text(self, tokens) -> str:
    ids = tokens.tolist()
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.vocabulary.decode([t for t in ids if t != self.pad_id])


def trained_targets(task: str) -> set[str] | None:
  """Target languages of an `nmt.setup` mixture or task (None: unknown,
  e.g. a task registered some other way)."""
  from translation import nmt
  try:
    setup = nmt.last_setup(task)
  except KeyError:
    return None
  return {tgt for _, tgt in setup.directions}


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if args.input == '-':
    lines = read_input_lines(sys.stdin.buffer, '<stdin>')
  else:
    with open(args.input, 'rb') as f:
      lines = read_input_lines(f, args.input)
  try:   # checked before the model loads, not after the first batch
    options = DecodeOptions(
        num_beams=args.beam_size, max_decode_length=args.max_length,
        alpha=args.alpha, beta=args.beta, length_penalty=args.length_penalty,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed)
  except ValueError as e:
    print(f'rosetta translate: {e}', file=sys.stderr)
    return 2
  translator = Translator(args.checkpoint, args.step)
  refusal = translator.target_refusal(args.target_lang, args.zero_shot)
  if refusal:
    print(f'rosetta translate: --target_lang {args.target_lang}: {refusal}',
          file=sys.stderr)
    return 2
  common = dict(options=options, batch_size=args.batch_size,
                max_input_length=args.max_input_length,
                progress=not args.no_progress)
  if args.nbest is None:
    outputs = translator.translate(lines, args.target_lang, **common)
    # One line per input line: any line break a model emits (\r, U+2028,
    # ... byte-fallback pieces can decode to them) becomes a space.
    text = ''.join(' '.join(o.splitlines()) + '\n' for o in outputs)
  else:
    nbest = translator.translate_nbest(lines, args.target_lang, args.nbest,
                                       **common)
    text = ''.join(json.dumps(
        {'input': line, 'nbest': [{'text': t, 'score': score}
                                  for t, score in outputs]},
        ensure_ascii=False) + '\n' for line, outputs in zip(lines, nbest))
  if args.output == '-':
    sys.stdout.write(text)
    sys.stdout.flush()
  else:
    with files.atomic_open(args.output, 'w') as f:
      f.write(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
