"""The `translate` endpoint of `rosetta serve` (rosetta/serving/).

    POST /v1/translate  {"text": "Save and continue.", "target_lang": "fr"}
    -> {"translation": "Enregistrer et continuer.", "target_lang": "fr"}
    POST /v1/translate  {"text": "...", "target_lang": "fr", "nbest": 3}
    -> {"nbest": [{"text": "...", "score": -1.2}, ...], "target_lang": "fr"}

The decoding options are the server's (--beam_size, --alpha, --beta,
--length_penalty, --max_length, --max_input_length), so an answer equals
`rosetta translate` with the same options on the same line. Requests for
the same target language (and n-best size) are decoded as one batch.
"""

from __future__ import annotations

from rosetta.serving.endpoints import Endpoint, Field


def add_arguments(group) -> None:
  group.add_argument('--beam_size', type=int, default=4,
                     help='translate: beams (1 = greedy)')
  group.add_argument('--alpha', type=float, default=0.6,
                     help='translate: length penalty exponent')
  group.add_argument('--beta', type=float, default=0.0,
                     help='translate: GNMT coverage penalty weight')
  group.add_argument('--length_penalty', choices=('gnmt', 'hf'),
                     default='gnmt')
  group.add_argument('--max_length', type=int, default=128,
                     help='translate: maximum output tokens')
  group.add_argument('--max_input_length', type=int, default=256,
                     help='translate: longer inputs are truncated')
  group.add_argument('--zero_shot', action='store_true',
                     help='translate: allow target languages the run was '
                     'not trained into')


def is_translation_run(model_dir: str) -> bool:
  """Whether the run trains an encoder-decoder on an `nmt.setup` task."""
  import gin  # pylint: disable=import-outside-toplevel
  from rosetta.run.run_dir import RunDir  # pylint: disable=import-outside-toplevel
  from translation import translate  # pylint: disable=import-outside-toplevel
  RunDir(model_dir).require().parse_config()
  model = gin.query_parameter('train.model')
  if 'EncoderDecoderModel' not in getattr(model, 'selector', str(model)):
    return False
  return translate.trained_targets(gin.query_parameter('train.task')) is not None


def endpoints(args) -> list[Endpoint]:
  """[the translate endpoint] when --model_dir is a translation run."""
  if args.model_dir is None or not is_translation_run(args.model_dir):
    return []
  from rosetta.decoding.algorithms import DecodeOptions  # pylint: disable=import-outside-toplevel
  from translation import translate  # pylint: disable=import-outside-toplevel
  options = DecodeOptions(
      num_beams=args.beam_size, max_decode_length=args.max_length,
      alpha=args.alpha, beta=args.beta, length_penalty=args.length_penalty)
  translator = translate.Translator(args.model_dir, args.step)
  max_nbest = args.beam_size

  def check(request: dict) -> str | None:
    refusal = translator.target_refusal(request['target_lang'],
                                        args.zero_shot)
    if refusal:
      return f'target_lang {request["target_lang"]!r}: {refusal}'
    nbest = request['nbest']
    if nbest is not None and not 1 <= nbest <= max_nbest:
      return (f'nbest {nbest}: must be 1..{max_nbest} (the server\'s '
              '--beam_size)')
    return None

  def run_batch(requests: list[dict]) -> list[dict]:
    lang, nbest = requests[0]['target_lang'], requests[0]['nbest']
    texts = [r['text'] for r in requests]
    common = dict(options=options, batch_size=args.max_batch,
                  max_input_length=args.max_input_length)
    if nbest is None:
      return [{'translation': t, 'target_lang': lang}
              for t in translator.translate(texts, lang, **common)]
    return [{'nbest': [{'text': t, 'score': s} for t, s in best],
             'target_lang': lang}
            for best in translator.translate_nbest(texts, lang, nbest,
                                                   **common)]

  return [Endpoint(
      name='translate',
      summary='translate one text into target_lang with the served run',
      fields={'text': Field(str, required=True, help='the source text'),
              'target_lang': Field(str, required=True,
                                   help="target language code, e.g. 'fr'"),
              'nbest': Field(int, help='return the N best beams with their '
                             'scores instead of one translation')},
      run_batch=run_batch, check=check,
      batch_key=lambda r: (r['target_lang'], r['nbest']))]
