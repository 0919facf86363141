"""Your own parallel corpus end to end, as a user drives it: Moses file
pairs written here -> `rosetta train` with experiments/own_corpus_tiny.gin
(one bad line skipped and reported) -> `rosetta evaluate` ->
`rosetta translate`; and the exact resume after kill -9 on this streamed
source."""

import json
import os
import signal
import subprocess
import sys

import pytest

from rosetta.data import django_po

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def env():
  e = dict(os.environ)
  e['PYTHONPATH'] = REPO + os.pathsep + e.get('PYTHONPATH', '')
  e['JAX_PLATFORMS'] = 'cpu'
  e['TF_CPP_MIN_LOG_LEVEL'] = '3'
  e['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
  return e


def write_corpus(root, bad_line: bool):
  """Django's English/French strings as Moses pairs: train + dev."""
  pairs = [(e, f) for e, f in django_po.django_pairs(['fr'])['fr']
           if not any(c in e + f for c in '\n\r\t') and e.strip()
           and f.strip()]
  train, dev = pairs[:-64], pairs[-64:]
  os.makedirs(root, exist_ok=True)
  for split, rows in (('train', train), ('dev', dev)):
    en = [e for e, _ in rows]
    fr = [f for _, f in rows]
    if bad_line and split == 'train':
      en.insert(3, 'An English line whose French side is empty.')
      fr.insert(3, '   ')
    for lang, lines in (('en', en), ('fr', fr)):
      with open(os.path.join(root, f'{split}.{lang}'), 'w',
                encoding='utf-8') as f:
        f.write(''.join(l + '\n' for l in lines))
  return dev


def experiment(root, model_dir, *extra):
  splits = {'train': f'{root}/train.{{lang}}',
            'validation': f'{root}/dev.{{lang}}'}
  return ['--gin_file=experiments/own_corpus_tiny.gin',
          f'--gin.parallel_corpus.ParallelCorpus.splits={splits!r}',
          f"--gin.train.model_dir='{model_dir}'", *extra]


def run(args, timeout=900):
  p = subprocess.run([PY, '-m', 'rosetta', *args], env=env(), cwd=REPO,
                     capture_output=True, text=True, timeout=timeout)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  return p.stdout + p.stderr


def losses(model_dir):
  out = {}
  with open(os.path.join(model_dir, 'train_metrics.jsonl')) as f:
    for line in f:
      if line.strip():
        r = json.loads(line)
        out[r['step']] = r['loss']
  return out


@pytest.mark.slow
def test_train_evaluate_translate_on_moses_files(tmp_path):
  root, model_dir = str(tmp_path / 'data'), str(tmp_path / 'run')
  dev = write_corpus(root, bad_line=True)
  bad = ['--gin.parallel_corpus.ParallelCorpus.on_bad_line=\'error\'',
         '--gin.train.total_steps=2']
  p = subprocess.run([PY, '-m', 'rosetta', 'train',
                      *experiment(root, str(tmp_path / 'strict'), *bad)],
                     env=env(), cwd=REPO, capture_output=True, text=True,
                     timeout=600)
  assert p.returncode == 1
  assert p.stderr.splitlines()[-1] == (
      f'rosetta train: {root}/train.fr:4: empty line')
  assert 'Traceback' not in p.stderr
  out = run(['train', *experiment(
      root, model_dir, "--gin.parallel_corpus.ParallelCorpus.on_bad_line="
      "'skip'", '--gin.train.total_steps=120', '--gin.train.eval_period=0',
      '--gin.train.log_period=10', '--gin.train.batch_size=16')])
  assert 'skipped bad lines' in out
  report = json.load(open(os.path.join(model_dir, 'skipped_input.json')))
  assert report['skipped'] == 1
  assert report['examples'] == [f"{root}/train.fr:4: empty line"]
  curve = losses(model_dir)
  assert curve[120] < 0.7 * curve[10], curve
  run(['evaluate', *experiment(root, model_dir),
       '--gin_file=runs/evaluate.gin',
       f"--gin.evaluate.model_dir='{model_dir}'",
       "--gin.evaluate.tasks=['own_translate_en_fr']",
       '--gin.evaluate.num_examples=16', '--gin.evaluate.batch_size=16',
       "--gin.evaluate.task_feature_lengths={'inputs': 64, 'targets': 64}",
       '--gin.encoder_decoder_model.EncoderDecoderModel.max_decode_length=64'])
  result = json.load(open(os.path.join(model_dir, 'eval_validation_120.json')))
  assert set(result['metrics']['own_translate_en_fr']) >= {'bleu', 'chrf'}
  src = tmp_path / 'in.txt'
  src.write_text(''.join(e + '\n' for e, _ in dev[:5]), encoding='utf-8')
  run(['translate', '--checkpoint', model_dir, '--target_lang', 'fr',
       '--input', str(src), '--output', str(tmp_path / 'out.txt'),
       '--beam_size', '2', '--max_length', '48', '--no_progress'])
  lines = (tmp_path / 'out.txt').read_text(encoding='utf-8').split('\n')
  assert len(lines) == 6 and lines[-1] == ''


@pytest.mark.slow
def test_exact_resume_after_kill_on_a_streamed_corpus(tmp_path):
  import time
  root = str(tmp_path / 'data')
  write_corpus(root, bad_line=False)
  args = ('--gin.train.total_steps=24', '--gin.train.checkpoint_period=4',
          '--gin.train.async_checkpoint=True', '--gin.train.log_period=1',
          '--gin.train.eval_period=0', '--gin.train.batch_size=8',
          "--gin.train.task_feature_lengths={'inputs': 32, 'targets': 32}")
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  run(['train', *experiment(root, straight, *args)])
  proc = subprocess.Popen([PY, '-m', 'rosetta', 'train',
                           *experiment(root, killed, *args)],
                          env=env(), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(killed, 'train_metrics.jsonl')
  ckpts = os.path.join(killed, 'checkpoints')
  start = time.time()
  while time.time() - start < 300:
    assert proc.poll() is None, 'training ended before it could be killed'
    if (os.path.exists(metrics) and max(losses(killed) or {0: 0}) >= 10
        and os.path.isdir(ckpts)
        and any(n.isdigit() for n in os.listdir(ckpts))):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=120)
  out = run(['train', *experiment(root, killed, *args)])
  assert 'resumed from step' in out
  assert 'by iterator state' in out, out[-3000:]
  want, got = losses(straight), losses(killed)
  assert sorted(got) == sorted(want) == list(range(1, 25))
  with open(metrics) as f:  # rows past the checkpoint were not kept twice
    assert [json.loads(l)['step'] for l in f] == list(range(1, 25))
  for step in want:
    assert got[step] == want[step], (step, got[step], want[step])


@pytest.mark.slow
def test_training_from_the_beam_cache_matches_the_raw_files(tmp_path):
  """`rosetta cache` then `rosetta train --gin.train.cache_dirs=[...]`:
  unshuffled, the cached run sees the same batches as the raw one, so its
  losses are the raw run's, step for step."""
  root = str(tmp_path / 'data')
  write_corpus(root, bad_line=False)
  splits = {'train': f'{root}/train.{{lang}}'}
  corpus = f'--gin.parallel_corpus.ParallelCorpus.splits={splits!r}'
  cache = str(tmp_path / 'cache')
  out = run(['cache', '--gin_file', 'experiments/own_corpus_tiny.gin',
             '--gin', f'parallel_corpus.ParallelCorpus.splits = {splits!r}',
             '--tasks', 'nmt_mixture', '--splits', 'train', '--hosts', '1',
             '--output_cache_dir', cache])
  assert 'own_translate_en_fr train' in out
  args = ['--gin_file=experiments/own_corpus_tiny.gin', corpus,
          '--gin.train.total_steps=6', '--gin.train.log_period=1',
          '--gin.train.eval_period=0', '--gin.train.eval_tasks=[]',
          '--gin.train.shuffle=False', '--gin.train.batch_size=8',
          "--gin.train.task_feature_lengths={'inputs': 32, 'targets': 32}"]
  raw, cached = str(tmp_path / 'raw'), str(tmp_path / 'cached')
  run(['train', *args, f"--gin.train.model_dir='{raw}'"])
  run(['train', *args, f"--gin.train.model_dir='{cached}'",
       f"--gin.train.cache_dirs=['{cache}']"])
  assert losses(cached) == losses(raw)
  assert sorted(losses(raw)) == list(range(1, 7))
