"""rosetta/run/plots.py and `rosetta plot`: figures from a real short run of the
NMT main job (tiny model, Django strings, 20 steps, evaluation at 10 and
20), checked against the run's own logs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from rosetta.run import plots  # noqa: E402
TINY = ['encoder_decoder.T5Config.vocab_size = 1024',
        'encoder_decoder.T5Config.emb_dim = 64',
        'encoder_decoder.T5Config.mlp_dim = 128',
        'encoder_decoder.T5Config.num_heads = 2',
        'encoder_decoder.T5Config.head_dim = 32',
        'encoder_decoder.T5Config.num_encoder_layers = 2',
        'encoder_decoder.T5Config.num_decoder_layers = 2',
        'nmt.setup.vocab_size = 1000',
        "train.task_feature_lengths = {'inputs': 32, 'targets': 32}",
        'train.batch_size = 8', 'train.total_steps = 20',
        'train.log_period = 5', 'train.eval_period = 10',
        "train.eval_tasks = ['django_translate_en_de']",
        'train.eval_num_examples = 8',
        'encoder_decoder_model.EncoderDecoderModel.max_decode_length = 16']
EVAL_TASK = 'django_translate_en_de'


def env():
  e = dict(os.environ)
  e['PYTHONPATH'] = REPO + os.pathsep + e.get('PYTHONPATH', '')
  e['JAX_PLATFORMS'] = 'cpu'
  e['TF_CPP_MIN_LOG_LEVEL'] = '3'
  e.pop('XLA_FLAGS', None)  # one CPU device: the quickest compile
  return e


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('plots') / 'run')
  cmd = [sys.executable, '-m', 'translation.main_job', '--minutes', '10',
         '--run_dir', d, '--languages', 'de,fr', '--corpus', 'django',
         '--eval_sentences', '3', '--beam_size', '1']
  for b in TINY:
    cmd += ['--gin', b]
  p = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  return d


def assert_png(path, min_width=300):
  with open(path, 'rb') as f:
    assert f.read(8) == plots.PNG_MAGIC
  assert os.path.getsize(path) > 10_000
  import matplotlib.image
  img = matplotlib.image.imread(path)
  assert img.shape[1] >= min_width and img.shape[0] >= 200
  assert img[..., :3].std() > 0.05  # not a blank canvas
  leftovers = [n for n in os.listdir(os.path.dirname(path)) if '.tmp' in n]
  assert not leftovers


def logged(run_dir):
  """{step: record} of train_metrics.jsonl (every step)."""
  with open(os.path.join(run_dir, 'train_metrics.jsonl')) as f:
    return {r['step']: r for r in map(json.loads, f) if r}


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_training_curves_from_the_run(run_dir, tmp_path):
  out = str(tmp_path / 'curves.png')
  result = plots.training_curves(run_dir, out)
  assert result.path == out
  assert_png(out, min_width=800)
  s = result.series
  assert set(s) == {'loss', 'accuracy', 'learning rate', 'tokens/s', 'BLEU',
                    'chrF', 'off-target %'}
  steps, losses = s['loss']['train']
  assert steps == [5, 10, 15, 20]
  # TensorBoard's train loss at step k is the step-k loss of the JSONL log.
  records = logged(run_dir)
  np.testing.assert_allclose(losses, [records[k]['loss'] for k in steps],
                             rtol=1e-6)
  np.testing.assert_allclose(s['learning rate']['train'][1],
                             [records[k]['learning_rate'] for k in steps],
                             rtol=1e-6)
  assert s['loss']['validation'][0] == [10, 20]
  assert s['tokens/s']['train'][0] == steps
  assert all(v > 0 for v in s['tokens/s']['train'][1])
  for title in ('BLEU', 'chrF', 'off-target %'):
    assert list(s[title]) == [EVAL_TASK]
    assert s[title][EVAL_TASK][0] == [10, 20]
  assert all(0 <= v <= 100 for v in s['off-target %'][EVAL_TASK][1])


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_translation_bars_from_the_run(run_dir):
  table = os.path.join(run_dir, 'translation_table.json')
  rows = {r['direction']: r for r in json.load(open(table))}
  result = plots.translation_bars(table)
  assert result.path == os.path.join(run_dir, 'translation_table.png')
  assert_png(result.path)
  s = result.series
  supervised = ['de-en', 'en-de', 'en-fr', 'fr-en']
  assert s['directions'][:4] == supervised
  assert set(s['directions']) == set(rows)
  for i, d in enumerate(s['directions']):
    assert s['chrF'][i] == pytest.approx(rows[d]['chrf'])
    assert s['BLEU'][i] == pytest.approx(rows[d]['bleu'])
    assert s['off-target %'][i] == pytest.approx(100 * rows[d]['off_target'])
    assert s['zero_shot'][i] == rows[d]['zero_shot']


def test_recall_curves_from_trec_eval(tmp_path):
  """Recall@k of two rankings measured by pytrec_eval, in the documented
  {system: {k: recall}} format."""
  import pytrec_eval
  qrels = {f'q{i}': {f'd{i}': 1, f'd{i + 1}': 1} for i in range(20)}
  docs = [f'd{i}' for i in range(40)]
  rng = np.random.default_rng(0)
  runs = {
      'exact': {q: {d: float(d in rel) + rng.random() * 0.1 for d in docs}
                for q, rel in qrels.items()},
      'random': {q: {d: float(rng.random()) for d in docs} for q in qrels}}
  ks = (1, 5, 10, 20)
  evaluator = pytrec_eval.RelevanceEvaluator(
      qrels, {'recall.' + ','.join(map(str, ks))})
  recall = {}
  for system, run in runs.items():
    per_query = evaluator.evaluate(run).values()
    recall[system] = {str(k): float(np.mean([m[f'recall_{k}']
                                             for m in per_query]))
                      for k in ks}
  path = tmp_path / 'recall_at_k.json'
  path.write_text(json.dumps(recall))
  result = plots.recall_curves(str(path))
  assert result.path == str(tmp_path / 'recall_at_k.png')
  assert_png(result.path)
  assert set(result.series) == {'exact', 'random'}
  assert result.series['exact'] == (list(ks), [0.5, 1.0, 1.0, 1.0])
  assert result.series['random'][0] == list(ks)
  assert result.series['random'][1][0] < 0.5


@pytest.mark.parametrize('bad,message', [
    ({}, 'expected {system'),
    ({'bm25': {'ten': 0.5}}, "k='ten' is not an integer"),
    ({'bm25': {'0': 0.5}}, 'must be a positive integer'),
    ({'bm25': {'10': 55.0}}, 'is not a fraction in [0, 1]'),
    ({'bm25': [0.1, 0.2]}, 'must map k to recall'),
])
def test_recall_format_errors(bad, message, tmp_path):
  path = tmp_path / 'r.json'
  path.write_text(json.dumps(bad))
  with pytest.raises(ValueError) as e:
    plots.recall_curves(str(path))
  assert message in str(e.value) and str(path) in str(e.value)
  assert not list(tmp_path.glob('*.png'))


def test_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match='no such run directory'):
    plots.training_curves(str(tmp_path / 'missing'))
  with pytest.raises(FileNotFoundError, match='no TensorBoard event files'):
    plots.training_curves(str(tmp_path))
  bad = tmp_path / 'table.json'
  bad.write_text(json.dumps([{'direction': 'en-de', 'bleu': 1.0}]))
  with pytest.raises(ValueError, match=r"row 0 lacks \['chrf', 'off_target'\]"):
    plots.translation_bars(str(bad))


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_rosetta_plot_cli(run_dir, tmp_path, monkeypatch, capsys):
  """`rosetta plot` (the console script's entry point) from another
  directory: rosetta/run/plots.py is found by path, not by the cwd."""
  from rosetta import cli
  monkeypatch.chdir(tmp_path)
  out = str(tmp_path / 'cli' / 'curves.png')
  assert cli.main(['plot', 'curves', run_dir, '--out', out]) == 0
  assert capsys.readouterr().out.strip() == out
  assert_png(out, min_width=800)
  assert cli.main(['plot', 'table', 'nope.json']) == 2
  err = capsys.readouterr().err
  assert 'rosetta plot: error:' in err and 'nope.json' in err
  with pytest.raises(SystemExit):
    cli.main(['plot', 'histogram', run_dir])
  assert "invalid choice: 'histogram'" in capsys.readouterr().err


def quality_rows():
  """Rows in benchmarks/nmt_quality.py's format: two systems, two budgets,
  Tatoeba and FLORES both ways for de and fr; the peer's 30-minute FLORES
  de-en is missing (so that budget drops out of the peer's FLORES xx->en
  and 'all' lines)."""
  rows = []
  for system, base in (('rosetta', 20.0), ('peer', 15.0)):
    for budget in (15, 30):
      for corpus in ('tatoeba', 'flores'):
        for i, direction in enumerate(('de-en', 'fr-en', 'en-de', 'en-fr')):
          if (system, budget, corpus, direction) == ('peer', 30, 'flores',
                                                     'de-en'):
            continue
          chrf = base + budget / 3 + i + (10 if corpus == 'tatoeba' else 0)
          rows.append(dict(system=system, budget_min=budget, corpus=corpus,
                           direction=direction, n=100, chrf=chrf,
                           bleu=chrf / 3, sample='x'))
  return rows


def test_quality_curves_match_the_benchmark_table(tmp_path):
  from benchmarks import nmt_quality
  rows = quality_rows()
  path = tmp_path / 'results.json'
  path.write_text(json.dumps({'results': rows}))
  result = plots.quality_curves(str(path))
  assert result.path == str(tmp_path / 'results.png')
  assert_png(result.path)
  s = result.series
  assert set(s) == {'all', 'tatoeba xx->en', 'tatoeba en->xx',
                    'flores xx->en', 'flores en->xx'}
  # Rosetta Tatoeba xx->en at 15 min: de-en 35, fr-en 36.
  assert s['tatoeba xx->en']['rosetta'] == ([15.0, 30.0], [35.5, 40.5])
  assert s['flores xx->en']['peer'] == ([15.0], [20.5])   # 30 incomplete
  assert s['all']['peer'][0] == [15.0]
  # The same averages as the benchmark's own markdown table.
  snaps = {k: [] for k in ('rosetta', 'peer')}
  text = nmt_quality.table(rows, snaps, ['rosetta', 'peer'])
  compared = 0
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip('|').split('|')]
    if cells[0].startswith('**avg ') and 'all**' not in cells[0]:
      group = cells[0][len('**avg '):-2]
      budget = float(cells[2])
      xs, ys = s[group]['rosetta']
      assert ys[xs.index(budget)] == pytest.approx(float(cells[3]), abs=0.05)
      compared += 1
  assert compared == 8  # 4 groups x 2 budgets


@pytest.mark.parametrize('bad,message', [
    ([], 'expected {"results": [rows]}'),
    ({'results': [{'system': 'rosetta', 'budget_min': 15}]},
     "results[0] lacks ['chrf', 'corpus', 'direction']"),
    ({'results': [dict(system='rosetta', budget_min=15, corpus='flores',
                       direction='deen', chrf=1.0)]},
     "results[0]: direction 'deen' is not"),
])
def test_quality_format_errors(bad, message, tmp_path):
  path = tmp_path / 'q.json'
  path.write_text(json.dumps(bad))
  with pytest.raises(ValueError) as e:
    plots.quality_curves(str(path))
  assert message in str(e.value) and str(path) in str(e.value)
  assert not list(tmp_path.glob('*.png'))
