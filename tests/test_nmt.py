"""The multilingual NMT application end to end: the main job on a tiny
budget, and a trained model beating an untrained one through the
`rosetta translate` CLI."""

import json
import os
import subprocess
import sys

import pytest
import sacrebleu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['encoder_decoder.T5Config.vocab_size = 1024',
        'encoder_decoder.T5Config.emb_dim = 64',
        'encoder_decoder.T5Config.mlp_dim = 128',
        'encoder_decoder.T5Config.num_heads = 2',
        'encoder_decoder.T5Config.head_dim = 32',
        'encoder_decoder.T5Config.num_encoder_layers = 2',
        'encoder_decoder.T5Config.num_decoder_layers = 2',
        'nmt.setup.vocab_size = 1000',
        "train.task_feature_lengths = {'inputs': 32, 'targets': 32}"]


def env():
  e = dict(os.environ)
  e['PYTHONPATH'] = REPO + os.pathsep + e.get('PYTHONPATH', '')
  e['JAX_PLATFORMS'] = 'cpu'
  e['TF_CPP_MIN_LOG_LEVEL'] = '3'
  e.pop('XLA_FLAGS', None)  # one CPU device, as a user's machine has
  return e


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_main_job_prints_the_table(tmp_path):
  run_dir = str(tmp_path / 'main')
  cmd = [sys.executable, '-m', 'translation.main_job', '--minutes', '0.1',
         '--run_dir', run_dir, '--languages', 'de', '--corpus', 'django',
         '--eval_sentences', '3', '--beam_size', '2']
  for b in TINY:
    cmd += ['--gin', b]
  p = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True,
                     text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  assert '| en-de | supervised |' in p.stdout
  assert '| de-en | supervised |' in p.stdout
  assert 'sample translations:' in p.stdout
  rows = json.load(open(os.path.join(run_dir, 'translation_table.json')))
  assert {r['direction'] for r in rows} >= {'en-de', 'de-en'}


@pytest.mark.slow
def test_main_job_default_recipe_runs_without_a_data_folder(tmp_path):
  """The README's main command on a machine without ../shared/data: the
  default recipe (8k pieces requested) on Django's .po strings, which hold
  fewer; the vocabulary shrinks to fit instead of failing."""
  run_dir = str(tmp_path / 'main')
  e = dict(env(), ROSETTA_DATA_DIR=str(tmp_path / 'nonexistent'))
  p = subprocess.run(
      [sys.executable, '-m', 'translation.main_job', '--minutes', '0.1',
       '--run_dir', run_dir, '--eval_sentences', '2', '--beam_size', '2'],
      env=e, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  assert 'corpus: django' in p.stdout
  assert '| **average** | supervised |' in p.stdout
  assert 'not 8000' in p.stderr                 # the shrink is logged


def _translate(run_dir, sentences, tmp_path, name):
  src = tmp_path / f'{name}.in'
  src.write_text('\n'.join(sentences) + '\n', encoding='utf-8')
  out = tmp_path / f'{name}.out'
  p = subprocess.run(
      [sys.executable, '-m', 'rosetta', 'translate', '--checkpoint',
       run_dir, '--target_lang', 'de', '--input', str(src), '--output',
       str(out), '--beam_size', '2', '--max_length', '32', '--no_progress'],
      env=env(), cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  lines = out.read_text(encoding='utf-8').split('\n')[:-1]
  assert len(lines) == len(sentences)
  return lines


SMALL = [b.replace('emb_dim = 64', 'emb_dim = 128').replace(
    'mlp_dim = 128', 'mlp_dim = 256').replace('head_dim = 32', 'head_dim = 64')
         for b in TINY]


def _train(run_dir, steps, lr):
  cmd = [sys.executable, '-m', 'rosetta', 'train',
         '--gin_file=experiments/nmt_cpu_small.gin',
         f"--gin.train.model_dir='{run_dir}'",
         f'--gin.train.total_steps={steps}',
         f"--gin.nmt.setup.vocab_path='{run_dir}/../spm.model'",
         "--gin.nmt.setup.languages=['de']",
         "--gin.nmt.setup.corpus='tatoeba'",
         "--gin.optimizers.make_optimizer.name='adamw'",
         f'--gin.optimizers.learning_rate_schedule.base={lr}',
         '--gin.optimizers.learning_rate_schedule.warmup_steps=20',
         '--gin.train.log_period=100', '--gin.train.checkpoint_period=500']
  cmd += [f'--gin_bindings={b}' for b in SMALL]
  p = subprocess.run(cmd, env=env(), cwd=REPO, capture_output=True,
                     text=True, timeout=1200)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


@pytest.mark.slow
def test_trained_beats_untrained_through_translate_cli(tmp_path):
  from rosetta.data import corpora as sources
  if not sources.available('tatoeba'):
    pytest.skip('Tatoeba not in the data directory')
  # Short held-out sentences: where a model this small and this briefly
  # trained is already measurably better than chance.
  test = [p for p in sources.tatoeba_splits('de')['test']
          if len(p[0].split()) <= 6][:80]
  english = [en for en, _ in test]
  refs = [de for _, de in test]
  untrained = str(tmp_path / 'untrained')
  trained = str(tmp_path / 'trained')
  _train(untrained, 1, 0.0)      # AdamW with lr 0: the initial weights
  _train(trained, 1500, 1e-3)  # 2-3 minutes on 2 cores
  before = sacrebleu.corpus_chrf(_translate(untrained, english, tmp_path,
                                            'untrained'), [refs]).score
  after = sacrebleu.corpus_chrf(_translate(trained, english, tmp_path,
                                           'trained'), [refs]).score
  # Measured here: about 10 (untrained) vs 15 (trained).
  assert after > before + 2.0, (before, after)
