"""benchmarks/rerank_quality.py's harness: options, the job runner (order,
one child per core, --reuse, failures), the peer's tokenizer and list
sampling, the gin of every Rosetta system, the evaluation rows against a
NumPy reference, the targets and tables; and (slow) the whole benchmark on
a tiny budget."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

from benchmarks import rerank_quality as rq
from retrieval import datasets

WORDS = ['alpha', 'beta', 'gamma', 'Haus', 'Katze', 'über', '猫', 'кошка',
         'delta', 'Hund', 'Maus', 'query', 'document']


def tiny_vocabulary(path) -> str:
  from rosetta import vocab
  text = [' '.join(WORDS[(i + j) % len(WORDS)] for j in range(i % 5 + 1))
          for i in range(400)]
  return vocab.train_sentencepiece(text, str(path), vocab_size=300)


# ------------------------------------------------------------- options ---


def test_quick_defaults_and_bad_options():
  args = rq.parse_args(['--quick'])
  assert args.languages == ['en', 'ar', 'de']      # English first
  assert (args.budget_s, args.depth, args.dim, args.length) == (
      90.0, 10, 64, 192)
  assert args.systems == list(rq.SYSTEMS)
  assert os.path.isabs(args.output_dir)
  full = rq.parse_args(['--languages', 'de', '--budget_s', '30'])
  assert full.languages == ['en', 'de'] and full.budget_s == 30.0
  assert full.depth == 100
  for bad in (['--languages', 'en,xx'], ['--systems', 'full,bert'],
              ['--train_sets', 'xquad:de-en'], ['--budget_s', '0'],
              ['--vocab_size', '500'], ['--dim', '60']):
    with pytest.raises(SystemExit):
      rq.parse_args(bad)


def test_children_see_one_cpu_device_with_one_thread(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                     '--xla_dump_to=/tmp/x')
  env = rq.child_env()
  assert 'device_count' not in env['XLA_FLAGS']
  assert '--xla_dump_to=/tmp/x' in env['XLA_FLAGS']
  assert 'intra_op_parallelism_threads=1' in env['XLA_FLAGS']
  assert env['OMP_NUM_THREADS'] == '1'
  assert rq.REPO in env['PYTHONPATH'].split(os.pathsep)


def test_sets_families_and_languages():
  specs = rq.eval_specs(['en', 'ar', 'de'], ['xquad', 'cranfield'])
  assert specs == ['xquad:en-en', 'xquad:ar-ar', 'xquad:de-de',
                   'xquad:ar-en', 'xquad:de-en', 'cranfield']
  assert [rq.family(s) for s in specs] == ['same'] * 3 + ['x2en'] * 2 + [
      'cranfield']
  assert [rq.query_language(s) for s in specs] == [
      'en', 'ar', 'de', 'ar', 'de', 'en']
  assert rq.eval_specs(['en'], ['cranfield']) == ['cranfield']
  assert rq.model_vocab_size(4000) == 4224    # + 100 sentinels, 128s
  args = rq.parse_args(['--systems', 'full,peer', '--first_stages', 'bm25'])
  assert not rq.needs_teacher(args) and rq.adapter_languages(args) == []
  args = rq.parse_args(['--systems', 'adapters', '--languages', 'en,hi',
                        '--first_stages', 'bm25'])
  assert rq.adapter_languages(args) == ['en', 'hi']


# ------------------------------------------------------------ job runner ---


def _py(code: str) -> list[str]:
  return [sys.executable, '-c', code]


def test_jobs_run_in_dependency_order_and_reuse(tmp_path):
  work_dir, logs, done = tmp_path / 'w', tmp_path / 'logs', tmp_path / 'done'
  work_dir.mkdir()
  calls = []

  def jobs(a_text='a'):
    return [
        rq.Job('b', _py("import os; assert os.path.exists('from_work.txt'); "
                        "open('b.txt', 'w').write('b')"), deps=('w',)),
        rq.Job('w', work=lambda: calls.append('w') or {
            'read': (work_dir / 'a.txt').read_text()}, deps=('a',)),
        rq.Job('a', _py(f"open('a.txt', 'w').write({a_text!r}); "
                        "open('from_work.txt', 'w').write('x')")),
        rq.Job('c', _py("print('independent')"))]

  def run(job_list, reuse):
    return rq.run_jobs(job_list, cores=[None, None], cwd=str(work_dir),
                       log_dir=str(logs), done_dir=str(done), reuse=reuse,
                       log=lambda msg: None, poll_s=0.05)
  out = run(jobs(), reuse=False)
  assert set(out) == {'a', 'b', 'c', 'w'}
  assert out['w']['read'] == 'a' and (work_dir / 'b.txt').read_text() == 'b'
  assert not any(r['reused'] for r in out.values())
  assert (logs / 'c.log').read_text().strip() == 'independent'
  # Reused: nothing runs again.
  (work_dir / 'b.txt').unlink()
  out = run(jobs(), reuse=True)
  assert all(r['reused'] for r in out.values()) and calls == ['w']
  assert not (work_dir / 'b.txt').exists()
  # A changed job reruns with everything after it, not its neighbours.
  out = run(jobs(a_text='A'), reuse=True)
  assert {n for n, r in out.items() if not r['reused']} == {'a', 'w', 'b'}
  assert out['w']['read'] == 'A' and calls == ['w', 'w']


def test_one_child_per_core_and_fresh_folders(tmp_path):
  stale = tmp_path / 'run'
  stale.mkdir()
  (stale / 'old_checkpoint').write_text('x')
  stamp = ("import time, sys; t0 = time.time(); time.sleep(0.3); "
           "open(sys.argv[1], 'w').write(f'{t0} {time.time()}')")
  jobs = [rq.Job('x', _py(stamp) + [str(tmp_path / 'x')],
                 fresh=(str(stale),)),
          rq.Job('y', _py(stamp) + [str(tmp_path / 'y')])]
  rq.run_jobs(jobs, cores=[None], cwd=str(tmp_path),
              log_dir=str(tmp_path / 'logs'), done_dir=str(tmp_path / 'done'),
              reuse=False, log=lambda msg: None, poll_s=0.05)
  x0, x1 = map(float, (tmp_path / 'x').read_text().split())
  y0, y1 = map(float, (tmp_path / 'y').read_text().split())
  assert y0 >= x1 or x0 >= y1          # one slot: never at once
  assert not stale.exists()            # a training run starts clean


def test_failing_job_names_its_log_and_stops(tmp_path):
  jobs = [rq.Job('bad', _py("import sys; print('boom: no such file'); "
                            "sys.exit(3)")),
          rq.Job('after', _py('pass'), deps=('bad',))]
  with pytest.raises(SystemExit) as e:
    rq.run_jobs(jobs, cores=[None], cwd=str(tmp_path),
                log_dir=str(tmp_path / 'logs'),
                done_dir=str(tmp_path / 'done'), reuse=False,
                log=lambda msg: None, poll_s=0.05)
  message = str(e.value)
  assert 'job bad failed (exit 3)' in message
  assert str(tmp_path / 'logs' / 'bad.log') in message
  assert 'boom: no such file' in message
  with pytest.raises(ValueError, match='unknown jobs'):
    rq.run_jobs([rq.Job('a', _py('pass'), deps=('nope',))], cores=[None],
                cwd=str(tmp_path), log_dir=str(tmp_path / 'l'),
                done_dir=str(tmp_path / 'd'), reuse=False,
                log=lambda msg: None)
  with pytest.raises(ValueError, match='command or work'):
    rq.Job('both', _py('pass'), work=lambda: None)


# ------------------------------------------------------------------ peer ---


def test_peer_tokenizer_is_seqio_with_t5_pairs(tmp_path):
  from rosetta import vocab
  paths = rq.Paths(str(tmp_path))
  os.makedirs(os.path.dirname(paths.vocab))
  tiny_vocabulary(paths.vocab)
  tok = rq.build_peer_tokenizer(paths.vocab, paths.peer_init)
  v = vocab.load_vocabulary(paths.vocab, extra_ids=rq.SENTINELS)
  texts = ['Katze über 猫 Hund', 'unseen ÿ wörd', 'alpha  beta', 'кошка']
  parity = rq.tokenizer_parity(paths, texts)
  assert parity == {'texts': 4, 'different': 0, 'examples': []}
  pair = tok('Katze Hund?', 'Maus über alpha')['input_ids']
  assert pair == (list(v.encode('Katze Hund?')) + [1]
                  + list(v.encode('Maus über alpha')) + [1])
  # Pretraining chunks: the text cut into 100-piece windows (at piece
  # boundaries, as T5 splits C4), nothing lost but the spaces.
  text = ' '.join(WORDS[i % len(WORDS)] for i in range(260))
  n = len(v.encode(text))
  parts = rq.chunks(v, text)
  assert len(parts) == math.ceil(n / rq.CHUNK_PIECES)
  assert ''.join(''.join(parts).split()) == ''.join(text.split())
  assert all(len(v.encode(p)) <= rq.CHUNK_PIECES + 1 for p in parts)


def test_list_sampler_follows_the_mixture_rates():
  rows = ([{'task': 'a', 'query': f'a{i}'} for i in range(3)]
          + [{'task': 'b', 'query': 'b0'}])
  rates = rq.mixture_rates({'a': 16, 'b': 1})
  assert rates == {'a': 4.0, 'b': 1.0}        # n ** (1 / 2)
  sampler = rq.ListSampler(rows, rates, seed=0)
  drawn = [sampler.next_list() for _ in range(4000)]
  share = np.mean([r['task'] == 'a' for r in drawn])
  assert abs(share - 0.8) < 0.03
  a = [r['query'] for r in drawn if r['task'] == 'a']
  for epoch in range(len(a) // 3):             # every list once an epoch
    assert sorted(a[3 * epoch:3 * epoch + 3]) == ['a0', 'a1', 'a2']
  with pytest.raises(ValueError, match='task c has no training list'):
    rq.ListSampler(rows, {'a': 1.0, 'c': 1.0}, seed=0)


# ------------------------------------------------------------------- gin ---


def _parse_command(cmd):
  """The gin files and bindings a `rosetta train` command line passes."""
  from rosetta import gin_utils
  files = [a.split('=', 1)[1] for a in cmd if a.startswith('--gin_file=')]
  bindings = []
  for a in cmd:
    if a.startswith('--gin_bindings='):
      bindings += a.split('=', 1)[1].splitlines()
    elif a.startswith('--gin.'):
      key, value = a[len('--gin.'):].split('=', 1)
      bindings.append(f'{key} = {value}')
  gin_utils.parse(files, bindings, finalize=False)


def test_every_training_command_is_valid_gin(tmp_path):
  import gin
  args = rq.parse_args(['--quick', '--output_dir', str(tmp_path)])
  paths = rq.Paths(args.output_dir)
  q = gin.query_parameter
  try:
    _parse_command(rq.base_command(args, paths))
    assert q('train.task') == 'span_corruption_all'
    assert q('encoder_decoder.T5Config.vocab_size') == 4224
    assert q('train.cpu_budget_s') == args.base_budget_s
    _parse_command(rq.language_adapter_command(args, paths, 'ar'))
    assert q('train.init_from') == [paths.run('base')]
    assert q('train.trainable') == ['(^|/)adapters/language/']
    _parse_command(rq.reranker_command(args, paths, 'full'))
    assert q('reranker_model.RerankerModel.head') == 'rank_encdec'
    assert q('rerank_tasks.setup.sets') == ['xquad:en-en', 'cranfield']
    assert q('reranker_model.RerankerModel.num_candidates') == 8
    assert q('train.cpu_budget_s') == args.budget_s
    _parse_command(rq.reranker_command(args, paths, 'lora+distill'))
    assert q('train.trainable') == ['(^|/)lora/']
    assert q('reranker_model.RerankerModel.distill_weight') == 1.0
    assert q('rerank_tasks.setup.teacher_runs') == {
        'rerank_xquad_en_en': paths.teacher_run('rerank_xquad_en_en'),
        'rerank_cranfield': paths.teacher_run('rerank_cranfield')}
    _parse_command(rq.reranker_command(args, paths, 'adapters'))
    assert q('train.init_from') == [paths.run('base'), paths.lang_run('en')]
    assert q('encoder_decoder.T5Config.adapters') == ['language', 'task']
    args.head = 'rank_encoder'
    _parse_command(rq.reranker_command(args, paths, 'lora'))
    assert q('train.trainable') == ['(^|/)lora/', '(^|/)score_head/']
  finally:
    gin.clear_config()


# ------------------------------------------------------------ evaluation ---


def _reciprocal_rank(scores: dict, relevant: set) -> float:
  docs = sorted(scores, key=lambda d: (-scores[d], d))   # no ties below
  for rank, d in enumerate(docs[:10], 1):
    if d in relevant:
      return 1.0 / rank
  return 0.0


def _minmax(x: dict) -> dict:
  v = np.array(list(x.values()))
  span = v.max() - v.min()
  return {d: (s - v.min()) / span if span > 0 else 0.0 for d, s in x.items()}


def _toy_set():
  first = {'test': {'q1': {'d1': 3.0, 'd2': 2.0, 'd3': 1.0},
                    'q2': {'d1': 3.5, 'd2': 2.5, 'd3': 0.5}},
           'validation': {'v1': {'d1': 3.0, 'd2': 2.9, 'd3': 1.0}}}
  ours = {'test': {'q1': {'d1': 0.1, 'd2': 0.9, 'd3': 0.4},
                   'q2': {'d1': 0.2, 'd2': 0.3, 'd3': 2.0}},
          'validation': {'v1': {'d1': 0.0, 'd2': 1.0, 'd3': 0.5}}}
  peer = {'test': {'q1': {'d1': 1.0, 'd2': 0.0, 'd3': 0.5},
                   'q2': {'d1': 1.0, 'd2': 0.0, 'd3': 0.5}},
          'validation': {'v1': {'d1': 1.0, 'd2': 0.0, 'd3': 0.5}}}
  qrels = {'test': {'q1': {'d1': 1}, 'q2': {'d3': 1}},
           'validation': {'v1': {'d2': 1}}}
  entry = {'query_lang': 'de', 'qrels': qrels,
           'runs': {s: {'bm25': r} for s, r in first.items()}}
  return entry, first, ours, peer, qrels


def test_rows_match_a_numpy_reference():
  entry, first, ours, peer, qrels = _toy_set()
  metrics = rq.evaluate_sets({'xquad:de-de': entry},
                             {'full': {'xquad:de-de': ours},
                              'peer': {'xquad:de-de': peer}}, ['bm25'])
  rows = metrics['xquad:de-de']['bm25']

  def mrr(run):
    return np.mean([_reciprocal_rank(run[q], set(qrels['test'][q]))
                    for q in qrels['test']])
  assert rows['first_stage']['MRR@10'] == pytest.approx(mrr(first['test']))
  assert rows['full']['MRR@10'] == pytest.approx(mrr(ours['test']))
  assert rows['peer']['MRR@10'] == pytest.approx(mrr(peer['test']))
  # The weight is tuned on the development query alone, then applied.
  def mixed(split, w):
    return {q: {d: w * _minmax(ours[split][q])[d]
                + (1 - w) * _minmax(first[split][q])[d]
                for d in first[split][q]} for q in first[split]}
  grid = np.round(np.linspace(0, 1, 21), 2)
  dev = [_reciprocal_rank(mixed('validation', w)['v1'], {'d2'})
         for w in grid]
  best = max(range(len(grid)), key=lambda i: (dev[i], grid[i]))
  row = rows['full|interpolated']
  assert row['weight'] == pytest.approx(grid[best])
  assert row['MRR@10'] == pytest.approx(mrr(mixed('test', grid[best])))
  with pytest.raises(ValueError, match="no reranker score for document 'd3'"):
    rq.restricted(first['test'], {'q1': {'d1': 0.0, 'd2': 1.0}})


def test_targets_and_tables():
  entry, _, ours, peer, _ = _toy_set()
  sets = {'xquad:de-de': entry, 'xquad:de-en': entry,
          'xquad:en-en': dict(entry, query_lang='en')}
  scores = {'full': {s: ours for s in sets}, 'peer': {s: peer for s in sets}}
  metrics = rq.evaluate_sets(sets, scores, ['bm25'])
  t = rq.targets(metrics, ['full', 'peer'], ['bm25'])
  p = t['peer']
  assert t['system'] == 'full' and p['of'] == 3
  r, pe = (metrics['xquad:de-de']['bm25'][k]['MRR@10'] for k in ('full',
                                                                  'peer'))
  assert p['pairs'][0]['gap'] == pytest.approx(r - pe)
  assert p['all_met'] == (r >= pe)
  beats = t['beats_bm25']['same']
  bm25 = metrics['xquad:de-de']['bm25']['first_stage']['MRR@10']
  assert beats['bm25'] == pytest.approx(bm25)
  assert beats['met'] == (beats['value'] > bm25)
  assert 'cranfield' not in t['beats_bm25']
  text = rq.targets_text(t)
  assert 'Rosetta full >= CrossEncoder on every (set, first stage)' in text
  table = rq.family_table(metrics, 'same', ['bm25'], ['full', 'peer'],
                          ['en', 'de']).split('\n')
  assert table[0] == ('| first stage | reranker | de | en | mean | '
                      'mean zero-shot |')
  assert table[2].startswith(f'| BM25 | alone | {bm25:.3f} |')
  assert len(table) == 2 + 1 + 2 * 2
  assert rq.family_table(metrics, 'cranfield', ['bm25'], ['full'],
                         ['en']) == ''
  summary = rq.summary_table(metrics, 'same', ['bm25'],
                             ['full', 'peer']).split('\n')
  assert summary[0] == '| reranker | BM25 reranked | BM25 interpolated |'
  full_mean = np.mean([metrics[s]['bm25']['full']['MRR@10']
                       for s in ('xquad:de-de', 'xquad:en-en')])
  assert summary[3].startswith(f'| Rosetta full | {full_mean:.3f} |')
  assert rq.summary_table(metrics, 'same', ['bm25'], ['full'], ['hi']) == ''
  peer_lines = rq.peer_table(t, ['bm25']).split('\n')
  assert peer_lines[2].startswith(f'| xquad:de-de | MRR@10 | {r:.3f} / '
                                  f'{pe:.3f}')


def test_training_stats_from_a_run(tmp_path):
  log = tmp_path / 'train_full.log'
  log.write_text('training rerank for 100000000 steps on mesh {} (1 '
                 'process(es)); 0.77M parameters; malloc: glibc\n'
                 'CPU budget of 90 CPU s reached at step 500\n'
                 'done: step 500 (training loop: 91.2 CPU s, 95.0 s wall)\n')
  (tmp_path / 'train_metrics.jsonl').write_text(''.join(
      json.dumps({'step': s, 'loss': 2.0 - s / 1000}) + '\n'
      for s in range(10, 510, 10)))
  stats = rq.rosetta_training(str(tmp_path), str(log), lists_per_step=4)
  assert stats['steps'] == 500 and stats['lists'] == 2000
  assert (stats['train_cpu_s'], stats['train_wall_s']) == (91.2, 95.0)
  assert stats['trained_parameters'] == stats['parameters'] == 0.77e6
  assert stats['loss_first'] == pytest.approx(2.0 - 0.055)
  log.write_text(log.read_text().replace(
      'done: step', 'training 0.017M of 0.77M parameters (2.20%)\ndone: step'))
  stats = rq.rosetta_training(str(tmp_path), str(log), lists_per_step=4)
  assert stats['trained_parameters'] == pytest.approx(0.017e6)
  log.write_text('step 10\n')
  with pytest.raises(ValueError, match='did the run finish'):
    rq.rosetta_training(str(tmp_path), str(log), lists_per_step=4)


# ------------------------------------------------------- the whole thing ---


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.skipif(not datasets.available('xquad'), reason='needs XQuAD')
def test_tiny_benchmark_end_to_end(tmp_path):
  """Every kind of job on a tiny budget (~5 min on 2 cores): base, export,
  language adapters (German's swapped in for German questions), full /
  LoRA / adapters training, the peer, scoring, the report."""
  out = tmp_path / 'out'
  assert rq.main(['--languages', 'en,de', '--sets', 'xquad',
                  '--first_stages', 'bm25', '--systems',
                  'full,lora,adapters,peer', '--budget_s', '10',
                  '--base_budget_s', '10', '--adapter_budget_s', '5',
                  '--depth', '5', '--max_queries', '8', '--dim', '32',
                  '--length', '96', '--vocab_size', '3000',
                  '--output_dir', str(out)]) == 0
  with open(out / 'results.json') as f:
    results = json.load(f)
  assert set(results['metrics']) == {'xquad:en-en', 'xquad:de-de',
                                     'xquad:de-en'}
  for by_stage in results['metrics'].values():
    rows = by_stage['bm25']
    assert set(rows) == {'first_stage', 'full', 'full|interpolated', 'lora',
                         'lora|interpolated', 'adapters',
                         'adapters|interpolated', 'peer',
                         'peer|interpolated'}
    for row in rows.values():
      assert 0.0 <= row['MRR@10'] <= 1.0
  with open(out / 'configs' / 'score_adapters.json') as f:
    assert json.load(f)['overlays'] == {'de': str(out / 'train' / 'lang_de')}
  for system in ('full', 'lora', 'adapters', 'peer'):
    assert results['training'][system]['steps'] > 0
  lora = results['training']['lora']
  assert lora['trained_parameters'] < 0.1 * lora['parameters']
  assert results['meta']['tokenizer_parity']['different'] == 0
  tables = (out / 'tables.md').read_text()
  assert tables.count('| BM25 |') == 2 * 9      # same language, x->en
  assert '### Summary: XQuAD same language, MRR@10, mean over the zero-shot' \
      in tables
