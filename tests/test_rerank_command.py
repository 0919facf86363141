"""`rosetta rerank` (`retrieval.rerank.command`): a tiny monoT5 run trained
a few steps on a BEIR collection written here (gin/rerank/monot5_beir_
tiny.gin, through `rosetta.run.runs.train`, its development metrics
logged by `training_eval.RerankEval`), BM25's run of the collection
reranked from the command line: a valid TREC run holding the same
candidates re-ordered, with the scores of the in-process API; weight 0
keeps the first stage's order, weight 1 the reranker's, the tuned weight
is printed; bad inputs stop with the file and line, usage errors with
exit status 2. The command is run through `rosetta.cli.main`, as the
console script runs it (its entry point added to the registry here, as
setup.py's line would)."""

from __future__ import annotations

import json
import os

import gin
import jax
import pytest

from retrieval import collection_files
from retrieval.rerank import scoring
from retrieval.search import ir_metrics
from rosetta import cli, gin_utils, partitioning
from rosetta.run import run_dir, runs
from tests import retrieval_cli_helpers as helpers

DEPTH = 10


@pytest.fixture
def rerank(monkeypatch, capsys):
  """`rosetta rerank ARGV` in this process: (exit status, stdout, stderr)."""
  registered = cli.application_commands
  monkeypatch.setattr(cli, 'application_commands', lambda: {
      **registered(), 'rerank': 'retrieval.rerank.command:main'})

  def run(*argv):
    try:
      code = cli.main(['rerank', *map(str, argv)])
    except SystemExit as e:      # argparse: usage errors exit 2
      code = e.code
    finally:
      gin.clear_config()
    out = capsys.readouterr()
    return code, out.out, out.err
  return run


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """{coll, model_dir, run (BM25's TREC file), first (its top DEPTH)}."""
  root = tmp_path_factory.mktemp('rerank_cli')
  coll = helpers.write_beir(root / 'coll')
  model_dir = str(root / 'monot5')
  gin_utils.parse(['rerank/monot5_beir_tiny.gin'], [
      f'train.model_dir = "{model_dir}"',
      f"rerank_tasks.setup.sets = ['beir:{coll}']",
      "train.task_feature_lengths = {'pairs': 96}",
      'train.batch_size = 8', 'train.total_steps = 2',
      'train.eval_period = 2', 'train.eval_loss_batches = 1',
      'train.checkpoint_period = 2'], finalize=False)
  gin.finalize()
  one = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
  try:
    runs.train(mesh=one, config_text=run_dir.run_config_text())
  finally:
    gin.clear_config()
  code, _, err = helpers.rosetta('bm25', '--corpus', f'beir:{coll}',
                                 '--queries', f'beir:{coll}', '--output',
                                 root / 'bm25.trec', '--k', 20)
  assert code == 0, err
  run = str(root / 'bm25.trec')
  first = {q: dict(ir_metrics.trec_order(d)[:DEPTH])
           for q, d in ir_metrics.read_run(run).items()}
  return {'root': root, 'coll': coll, 'model_dir': model_dir, 'run': run,
          'first': first}


def args(t, output, *extra):
  return ('--model_dir', t['model_dir'], '--run', t['run'], '--corpus',
          f'beir:{t["coll"]}', '--queries', f'beir:{t["coll"]}', '--depth',
          DEPTH, '--batch_size', 16, '--output', output, *extra)


def order(run):
  return {q: [d for d, _ in ir_metrics.trec_order(docs)]
          for q, docs in run.items()}


def test_usage_errors_exit_2(rerank, tmp_path):
  base = ('--model_dir', tmp_path, '--run', 'r.trec', '--corpus', 'c.jsonl',
          '--queries', 'q.jsonl')
  for extra, message in (
      (('--output', tmp_path / 'no' / 'x.trec'),
       f'folder {tmp_path}/no does not exist'),
      (('--output', tmp_path / 'x.trec', '--depth', 0),
       '--depth must be >= 1, got 0'),
      (('--output', tmp_path / 'x.trec', '--interpolate', 1.5),
       '--interpolate must be in [0, 1], got 1.5'),
      (('--output', tmp_path / 'x.trec', '--tune_interpolation'),
       '--tune_interpolation needs --dev_qrels'),
      (('--output', tmp_path / 'x.trec', '--dev_qrels', 'd.tsv'),
       '--dev_qrels is only read with --tune_interpolation'),
      (('--output', tmp_path / 'x.trec', '--interpolate', 0.5,
        '--tune_interpolation', '--dev_qrels', 'd.tsv'),
       '--interpolate and --tune_interpolation exclude each other')):
    code, _, err = rerank(*base, *extra)
    assert code == 2 and message in err, err


def test_reranks_the_same_candidates_as_the_api(rerank, trained, tmp_path):
  out = tmp_path / 'reranked.trec'
  code, _, err = rerank(*args(trained, out))
  assert code == 0, err
  assert f'{out}: 96 queries x top {DEPTH}' in err
  lines = out.read_text().splitlines()
  by_query = {}
  for line in lines:   # a valid TREC run: ranks 1.. per query, one tag
    qid, q0, doc, rank, score, tag = line.split()
    assert (q0, tag) == ('Q0', 'rerank')
    by_query.setdefault(qid, []).append((int(rank), doc, float(score)))
  for rows in by_query.values():
    assert [r for r, _, _ in rows] == list(range(1, len(rows) + 1))
    assert [s for _, _, s in rows] == sorted((s for _, _, s in rows),
                                             reverse=True)
  got = ir_metrics.read_run(str(out))
  first = trained['first']
  assert {q: set(d) for q, d in got.items()} == {
      q: set(d) for q, d in first.items()}      # the same candidates
  assert order(got) != order(first)             # ... re-ordered
  # The in-process API scores the same.
  coll = trained['coll']
  texts = {what: dict(zip(f.ids, f.texts)) for what, f in (
      (w, collection_files.read_texts(f'beir:{coll}', w))
      for w in ('queries', 'documents'))}
  scorer = scoring.RerankScorer.from_run(trained['model_dir'])
  gin.clear_config()
  api = scorer.rerank(ir_metrics.read_run(trained['run']),
                      texts['queries'], texts['documents'], DEPTH)
  assert order(api) == order(got)
  for q, docs in api.items():
    for d, s in docs.items():
      assert got[q][d] == pytest.approx(s, abs=1e-5)
  # Training logged the development metrics of `RerankEval`.
  rows = [json.loads(l) for l in open(os.path.join(
      trained['model_dir'], 'train_metrics.jsonl'))]
  assert any('eval/rerank_beir_coll_validation/MRR@10' in r for r in rows)


def test_interpolation_weights_and_tuning(rerank, trained, tmp_path):
  keep = tmp_path / 'w0.trec'
  code, _, err = rerank(*args(trained, keep, '--interpolate', 0))
  assert code == 0, err
  assert order(ir_metrics.read_run(str(keep))) == order(trained['first'])
  plain, full = tmp_path / 'plain.trec', tmp_path / 'w1.trec'
  assert rerank(*args(trained, plain))[0] == 0
  assert rerank(*args(trained, full, '--interpolate', 1))[0] == 0
  assert order(ir_metrics.read_run(str(full))) == order(
      ir_metrics.read_run(str(plain)))
  dev = os.path.join(trained['coll'], 'qrels', 'train.tsv')
  code, out, err = rerank(*args(trained, tmp_path / 'tuned.trec',
                                '--tune_interpolation', '--dev_qrels', dev))
  assert code == 0, err
  assert out.startswith('interpolation weight ')
  weight = float(out.split()[2].rstrip(':'))
  assert 0.0 <= weight <= 1.0
  assert f'of {dev})' in out and 'interpolated with the first stage' in err


def test_bad_inputs_name_the_file_and_line(rerank, trained, tmp_path):
  lines = open(trained['run']).read().splitlines()
  missing = tmp_path / 'missing_doc.trec'
  edited = lines[:]
  edited[6] = edited[6].replace(edited[6].split()[2], 'nonexistent')
  missing.write_text('\n'.join(edited) + '\n')
  code, _, err = rerank(*args(trained, tmp_path / 'o.trec')[:2], '--run',
                        missing, *args(trained, tmp_path / 'o.trec')[4:])
  assert code == 1
  assert (f"{missing}:7: document 'nonexistent' is not in the corpus "
          f"{trained['coll']}/corpus.jsonl") in err
  malformed = tmp_path / 'malformed.trec'
  malformed.write_text('\n'.join(lines[:2] + ['q0_0 Q0 d1 3'] + lines[2:]))
  code, _, err = rerank(*args(trained, tmp_path / 'o.trec')[:2], '--run',
                        malformed, *args(trained, tmp_path / 'o.trec')[4:])
  assert code == 1
  assert f'{malformed}:3: expected 6 fields' in err
  stranger = tmp_path / 'stranger.trec'
  stranger.write_text('\n'.join(lines + ['who Q0 d1 1 3.0 x']) + '\n')
  code, _, err = rerank(*args(trained, tmp_path / 'o.trec')[:2], '--run',
                        stranger, *args(trained, tmp_path / 'o.trec')[4:])
  assert code == 1
  assert (f"{stranger}:{len(lines) + 1}: query 'who' is not in the queries "
          f"{trained['coll']}/queries.jsonl") in err
  assert not (tmp_path / 'o.trec').exists()     # nothing half-written
  not_a_run = tmp_path / 'empty_dir'
  not_a_run.mkdir()
  code, _, err = rerank('--model_dir', not_a_run,
                        *args(trained, tmp_path / 'o.trec')[2:])
  assert code == 1 and f'{not_a_run}/config.gin: not a run directory' in err
