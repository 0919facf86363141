"""The per-direction evaluation table against sacreBLEU's own numbers."""

import json

import pytest
import sacrebleu

from translation import metrics

HYPS_DE = ['Das Haus ist klein.', 'Der Hund läuft schnell.',
           'Ich mag Äpfel.', 'This is English.']
REFS_DE = ['Das Haus ist sehr klein.', 'Der Hund rennt schnell.',
           'Ich mag Äpfel.', 'Das ist Deutsch.']
HYPS_ZH = ['今天天气很好。', '我喜欢猫。']
REFS_ZH = ['今天天气非常好。', '我喜欢猫。']


def test_scores_equal_sacrebleu():
  s = metrics.corpus_scores(HYPS_DE, REFS_DE, 'de')
  assert s['bleu'] == sacrebleu.corpus_bleu(HYPS_DE, [REFS_DE]).score
  assert s['chrf'] == sacrebleu.corpus_chrf(HYPS_DE, [REFS_DE]).score
  zh = metrics.corpus_scores(HYPS_ZH, REFS_ZH, 'zh')
  assert zh['bleu'] == sacrebleu.corpus_bleu(HYPS_ZH, [REFS_ZH],
                                             tokenize='zh').score
  # With the default tokenizer, unsegmented Chinese scores differently.
  assert zh['bleu'] != sacrebleu.corpus_bleu(HYPS_ZH, [REFS_ZH]).score
  assert metrics.bleu_tokenizer('ja') == 'ja-mecab'
  ja = metrics.corpus_scores(['猫が好きです。'], ['猫が大好きです。'], 'ja')
  assert ja['bleu'] == sacrebleu.corpus_bleu(
      ['猫が好きです。'], [['猫が大好きです。']], tokenize='ja-mecab').score
  with pytest.raises(ValueError, match='2 hypotheses but 1 references'):
    metrics.corpus_scores(['a', 'b'], ['a'], 'en')


def test_language_id_and_off_target():
  assert metrics.identify_language('Ceci est une phrase en français.')[0] == (
      'fr')
  assert metrics.identify_language('这是一个句子。')[0] == 'zh'
  assert metrics.identify_language('   ') == ('', 0.0)
  # One English output out of four German targets; an empty one is off.
  assert metrics.off_target_rate(HYPS_DE, 'de') == 0.25
  assert metrics.off_target_rate(['Das ist gut.', ''], 'de') == 0.5


def test_table_and_json(tmp_path):
  results = metrics.evaluate_directions(
      {'en-de': (HYPS_DE, REFS_DE), 'fr-zh': (HYPS_ZH, REFS_ZH)},
      zero_shot={'fr-zh'})
  table = metrics.format_table(results)
  en_de = next(r for r in results if r.direction == 'en-de')
  assert en_de.chrf == sacrebleu.corpus_chrf(HYPS_DE, [REFS_DE]).score
  assert f'| en-de | supervised | {en_de.bleu:.1f} | {en_de.chrf:.1f} | 25.0% | 4 |' in table
  assert '| fr-zh | zero-shot |' in table
  assert '| **average** | zero-shot |' in table
  path = metrics.write_json(results, str(tmp_path / 'table.json'))
  rows = json.load(open(path))
  assert {r['direction'] for r in rows} == {'en-de', 'fr-zh'}
  fn = metrics.metric_fn_for('de')
  out = fn(REFS_DE, HYPS_DE)
  assert out['off_target'] == 25.0 and out['bleu'] == en_de.bleu


def test_main_job_zero_shot_directions_are_real_pairs():
  """Non-English ring pairs only; never src == tgt (a one-language run
  used to evaluate a 'de-de' direction)."""
  from translation.main_job import zero_shot_directions
  assert zero_shot_directions(['de']) == []
  assert zero_shot_directions(['en', 'de']) == []
  assert zero_shot_directions(['de', 'fr']) == [('de', 'fr'), ('fr', 'de')]
  assert zero_shot_directions(['de', 'fr', 'es']) == [
      ('de', 'fr'), ('fr', 'es'), ('es', 'de')]
