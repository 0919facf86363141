"""retrieval.search.fusion: reciprocal rank fusion and normalised score sums on
hand-computed cases, weight tuning, the `rosetta fuse` CLI, and fusion of
real BM25 runs on Cranfield."""

import pytest

from retrieval import datasets
from retrieval.search import fusion
from retrieval.search import ir_metrics

A = {'q1': {'d1': 3.0, 'd2': 2.0, 'd3': 1.0},
     'q2': {'d4': 9.0, 'd5': 1.0}}
B = {'q1': {'d3': 0.9, 'd1': 0.5, 'd9': 0.1},
     'q3': {'d7': 0.2}}


def test_rrf_hand_computed():
  out = fusion.rrf([A, B], rrf_k=60)
  assert out['q1'] == pytest.approx({
      'd1': 1 / 61 + 1 / 62, 'd2': 1 / 62, 'd3': 1 / 63 + 1 / 61,
      'd9': 1 / 63})
  assert list(out['q1']) == ['d1', 'd3', 'd2', 'd9']   # best first
  assert out['q2'] == pytest.approx({'d4': 1 / 61, 'd5': 1 / 62})
  assert out['q3'] == pytest.approx({'d7': 1 / 61})   # only one run has q3
  weighted = fusion.rrf([A, B], weights=(2, 1), rrf_k=0)
  assert weighted['q1'] == pytest.approx({
      'd1': 2 + 1 / 2, 'd2': 1.0, 'd3': 2 / 3 + 1, 'd9': 1 / 3})


def test_rrf_ranks_follow_trec_order_on_ties():
  # trec_eval ranks equal scores by doc id descending: 'b' before 'a'.
  out = fusion.rrf([{'q': {'a': 1.0, 'b': 1.0}}], rrf_k=0)
  assert out['q'] == {'b': 1.0, 'a': 0.5}


def test_combsum_minmax_and_missing_documents():
  out = fusion.combsum([A, B], weights=(0.5, 0.5), norm='minmax')
  # A q1 -> d1 1, d2 .5, d3 0; B q1 -> d3 1, d1 .5, d9 0; a document a run
  # does not list gets that run's lowest (0).
  assert out['q1'] == pytest.approx({'d1': 0.75, 'd3': 0.5, 'd2': 0.25,
                                     'd9': 0.0})
  assert out['q2'] == pytest.approx({'d4': 0.5, 'd5': 0.0})
  assert out['q3'] == pytest.approx({'d7': 0.0})   # one document: span 0


def test_combsum_zscore_none_depth_and_k():
  z = fusion.combsum([A], norm='zscore')
  assert z['q1'] == pytest.approx({'d1': 1.224744871, 'd2': 0.0,
                                   'd3': -1.224744871})
  raw = fusion.combsum([A, B], weights=(1, 10), norm='none')
  # d2 is missing from B: it gets B's lowest raw score (0.1).
  assert raw['q1'] == pytest.approx({'d1': 8.0, 'd3': 10.0, 'd2': 3.0,
                                     'd9': 1.0 + 1.0})
  # depth 1: only each run's best document is read; k 1 keeps one.
  assert fusion.rrf([A, B], rrf_k=0, depth=1)['q1'] == {'d1': 1.0, 'd3': 1.0}
  assert fusion.rrf([A, B], rrf_k=0, k=1)['q1'] == pytest.approx(
      {'d1': 1.5})


def test_fusion_can_beat_both_runs():
  # A finds the answer of q1, B that of q2: the fused run finds both.
  qrels = {'q1': {'d1': 1}, 'q2': {'d5': 1}}
  # A is sure of d1 and nearly of d5; B the other way round.
  a = {'q1': {'d1': 2.0, 'd2': 1.0, 'd3': 0.0},
       'q2': {'d6': 2.0, 'd5': 1.9, 'd7': 0.0}}
  b = {'q1': {'d2': 2.0, 'd1': 1.9, 'd3': 0.0},
       'q2': {'d5': 2.0, 'd6': 1.0, 'd7': 0.0}}
  hits = lambda run: ir_metrics.evaluate(run, qrels, ks=(1,))['Hits@1']
  assert hits(a) == hits(b) == 0.5
  assert hits(fusion.combsum([a, b])) == 1.0


def test_bad_inputs_name_the_field():
  with pytest.raises(ValueError, match='2 value.*3 runs'):
    fusion.rrf([A, B, A], weights=(1, 1))
  with pytest.raises(ValueError, match='not all 0'):
    fusion.combsum([A, B], weights=(0, 0))
  with pytest.raises(ValueError, match=r'runs\[1\]: score of q/d is nan'):
    fusion.rrf([A, {'q': {'d': float('nan')}}])
  with pytest.raises(ValueError, match='norm must be one of'):
    fusion.combsum([A], norm='softmax')
  with pytest.raises(ValueError, match='depth must be a positive integer'):
    fusion.rrf([A], depth=0)
  with pytest.raises(ValueError, match='method must be one of'):
    fusion.fuse([A], 'borda')
  with pytest.raises(ValueError, match='step must divide 1'):
    fusion.weight_grid(2, 0.3)


def test_weight_grid_and_tuning():
  assert fusion.weight_grid(2, 0.5) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
  assert len(fusion.weight_grid(3, 0.25)) == 15      # C(4 + 2, 2)
  assert all(sum(w) == pytest.approx(1) for w in fusion.weight_grid(3, 0.1))
  # A ranks every answer first, B last: every weight that favours A is
  # perfect (at 0.5/0.5 the scores tie and trec_eval puts 'wrong' first);
  # the first perfect one in grid order wins the tie.
  qrels = {f'q{i}': {'good': 1} for i in range(4)}
  a = {q: {'good': 1.0, 'wrong': 0.0} for q in qrels}
  b = {q: {'good': 0.0, 'wrong': 1.0} for q in qrels}
  best, table = fusion.tune_weights([a, b], qrels, 'combsum',
                                    metric='MRR@10', step=0.1)
  assert best == pytest.approx((0.6, 0.4))
  assert len(table) == 11 and table[0][1] == 0.5 and table[-1][1] == 1.0
  with pytest.raises(ValueError, match="metric 'P@3'"):
    fusion.tune_weights([a, b], qrels, metric='P@3')


def _write(path, run):
  ir_metrics.write_run(str(path), run, tag='x')
  return str(path)


def test_cli_tunes_fuses_and_reports(tmp_path, capsys):
  from rosetta import cli
  qrels = {f'q{i}': {'good': 1} for i in range(4)}
  a = {q: {'good': 1.0, 'wrong': 0.0} for q in qrels}
  b = {q: {'good': 0.0, 'wrong': 1.0} for q in qrels}
  ir_metrics.write_qrels(str(tmp_path / 'train.qrels'), qrels)
  files = [_write(tmp_path / 'a.trec', a), _write(tmp_path / 'b.trec', b)]
  out = tmp_path / 'fused.trec'
  assert cli.main(
      ['fuse', *files, '--method', 'combsum', '--tune_runs', *files,
       '--tune_qrels', str(tmp_path / 'train.qrels'), '--qrels',
       str(tmp_path / 'train.qrels'), '--out', str(out)]) == 0
  printed = capsys.readouterr().out
  assert 'tuned weights: 0.6,0.4' in printed
  assert 'MRR@10       1.0000' in printed
  assert ir_metrics.read_run(str(out)) == fusion.combsum([a, b],
                                                         (0.6, 0.4))
  # a malformed file: the error names the file and line, nothing written
  bad = tmp_path / 'bad.trec'
  bad.write_text('q1 Q0 d1 1 0.5 x\nq1 Q0 d2 2\n')
  out2 = tmp_path / 'never.trec'
  assert cli.main(['fuse', files[0], str(bad), '--out',
                           str(out2)]) == 2
  assert f'{bad}:2: expected 6 fields' in capsys.readouterr().err
  assert not out2.exists()
  with pytest.raises(SystemExit):
    cli.main(['fuse', *files, '--tune_runs', files[0],
                      '--tune_qrels', 'x', '--out', str(out2)])
  assert 'one per run' in capsys.readouterr().err


def test_cli_refuses_empty_or_disjoint_runs_and_bad_qrels(tmp_path, capsys):
  from rosetta import cli
  a = _write(tmp_path / 'a.trec', {'q1': {'d1': 1.0}, 'q2': {'d2': 1.0}})
  other = _write(tmp_path / 'c.trec', {'x1': {'d1': 1.0}})
  empty = tmp_path / 'empty.trec'
  empty.write_text('')
  out = tmp_path / 'never.trec'
  assert cli.main(['fuse', a, str(empty), '--out', str(out)]) == 2
  assert f'{empty}: the run is empty' in capsys.readouterr().err
  assert cli.main(['fuse', a, other, '--out', str(out)]) == 2
  assert 'the runs have no query in common' in capsys.readouterr().err
  qrels = tmp_path / 'bad.qrels'
  qrels.write_text('q1 0 d1\n')
  assert cli.main(['fuse', a, a, '--qrels', str(qrels), '--out',
                   str(out)]) == 2
  assert f'{qrels}:1' in capsys.readouterr().err
  assert not out.exists()  # nothing written before the qrels were read
  partial = _write(tmp_path / 'p.trec', {'q1': {'d3': 1.0}})
  assert cli.main(['fuse', a, partial, '--out', str(out)]) == 0
  assert '1 of 2 queries are missing from some runs' in (
      capsys.readouterr().err)


@pytest.mark.skipif(not datasets.available('cranfield'),
                    reason='needs the Cranfield collection')
def test_real_bm25_runs_on_cranfield():
  from retrieval.search import bm25
  rs = datasets.cranfield()
  def run(index):
    res = index.search(rs.queries, 100)
    return ir_metrics.run_from_topk(res.indices, rs.query_ids, rs.doc_ids,
                                    scores=res.scores)
  stop, plain = run(bm25.BM25Index(rs.docs, lang='en')), run(
      bm25.BM25Index(rs.docs, lang=None))
  # fusing a run with itself changes no ranking
  same = fusion.rrf([stop, stop])
  assert all(list(same[q]) == [d for d, _ in ir_metrics.trec_order(stop[q])]
             for q in stop)
  ndcg = lambda r: ir_metrics.evaluate(r, rs.qrels)['nDCG@10']
  fused = ndcg(fusion.rrf([stop, plain]))
  # two views of the same words: the fusion lands between or above them
  assert fused >= min(ndcg(stop), ndcg(plain)) - 1e-9
  assert 0.2 < fused < 0.6
