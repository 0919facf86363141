"""IR metrics: pytrec_eval-backed `evaluate`, its on-device JAX twin (checked
against pytrec_eval per query on random and real runs), TREC files."""

import os

import jax
import numpy as np
import pytest
import pytrec_eval

from retrieval import datasets
from retrieval.search import bm25
from retrieval.search import ir_metrics

KS = (1, 3, 10, 20)


def labels(qrels, query_ids, doc_ids):
  """qrels -> sparse ([q, R] rows, -1 padded; grades) and dense [q, n]."""
  row = {d: i for i, d in enumerate(doc_ids)}
  width = max(1, max(len(qrels.get(q, {})) for q in query_ids))
  ids = -np.ones((len(query_ids), width), np.int32)
  grades = np.zeros((len(query_ids), width), np.float32)
  dense = np.zeros((len(query_ids), len(doc_ids)), np.float32)
  for i, q in enumerate(query_ids):
    for j, (d, g) in enumerate(qrels.get(q, {}).items()):
      ids[i, j], grades[i, j] = row[d], g
      dense[i, row[d]] = g
  return ids, grades, dense


def check_device_equals_pytrec(indices, query_ids, doc_ids, qrels):
  run = ir_metrics.run_from_topk(indices, query_ids, doc_ids)
  means, table = ir_metrics.evaluate(run, qrels, ks=KS, per_query=True)
  ids, grades, dense = labels(qrels, query_ids, doc_ids)
  fn = jax.jit(ir_metrics.device_metrics,
               static_argnames=('ks', 'per_query'))
  sparse = fn(indices, relevant_ids=ids, relevant_grades=grades, ks=KS,
              per_query=True)
  full = fn(indices, relevance=dense, ks=KS, per_query=True)
  for dev_means, per_q, mask in (sparse, full):
    mask = np.asarray(mask)
    assert sorted(np.asarray(query_ids)[mask]) == sorted(table)
    for name in ir_metrics.metric_names(KS):
      want = np.array([table[q][name] for q in np.asarray(query_ids)[mask]])
      np.testing.assert_allclose(np.asarray(per_q[name])[mask], want,
                                 atol=1e-6, err_msg=name)
      np.testing.assert_allclose(float(dev_means[name]), means[name],
                                 atol=1e-6, err_msg=name)
  return means


def test_device_metrics_equal_pytrec_eval_on_random_runs():
  rng = np.random.default_rng(0)
  n_q, n_docs, k = 60, 50, 20
  doc_ids = [f'd{i}' for i in range(n_docs)]
  query_ids = [f'q{i}' for i in range(n_q)]
  indices = np.stack([rng.permutation(n_docs)[:k] for _ in range(n_q)])
  qrels = {}
  for i, q in enumerate(query_ids):
    judged = rng.choice(n_docs, size=rng.integers(1, 15), replace=False)
    qrels[q] = {doc_ids[d]: int(rng.integers(0, 4)) for d in judged}
  qrels['q0'] = {doc_ids[d]: 0 for d in indices[0][:3]}   # nothing relevant
  means = check_device_equals_pytrec(indices, query_ids, doc_ids, qrels)
  assert 0 < means['nDCG@10'] < 1 and 0 < means['Recall@20'] < 1


@pytest.mark.skipif(not datasets.available('cranfield'),
                    reason='no Cranfield under $ROSETTA_DATA_DIR')
def test_device_metrics_equal_pytrec_eval_on_cranfield_bm25():
  c = datasets.cranfield()               # graded qrels, up to 40 per query
  result = bm25.BM25Index(c.docs, lang='en').search(c.queries, k=20)
  means = check_device_equals_pytrec(result.indices, c.query_ids, c.doc_ids,
                                     c.qrels)
  assert means['nDCG@10'] > 0.25


@pytest.mark.skipif(not datasets.available('xquad'),
                    reason='no XQuAD under $ROSETTA_DATA_DIR')
def test_device_metrics_equal_pytrec_eval_on_xquad_pool():
  x = datasets.xquad('de', corpus='pool', split='test')  # 12 relevant each
  result = bm25.BM25Index(x.docs).search(x.queries, k=20)
  means = check_device_equals_pytrec(result.indices, x.query_ids, x.doc_ids,
                                     x.qrels)
  assert means['Hits@20'] > 0.5 and means['Recall@20'] < means['Hits@20']


def test_evaluate_matches_a_direct_pytrec_eval_call():
  qrels = {'a': {'x': 2, 'y': 1, 'z': 0}, 'b': {'x': 1}}
  run = {'a': {'z': 3.0, 'y': 2.0, 'w': 1.0, 'x': 0.5}, 'b': {'y': 1.0}}
  direct = pytrec_eval.RelevanceEvaluator(
      qrels, {'recip_rank', 'ndcg_cut.10', 'recall.1,3', 'success.1,3'}
  ).evaluate(run)
  _, table = ir_metrics.evaluate(run, qrels, ks=(1, 3), per_query=True)
  for q in qrels:
    assert table[q]['MRR@10'] == direct[q]['recip_rank']
    assert table[q]['nDCG@10'] == direct[q]['ndcg_cut_10']
    assert table[q]['Recall@3'] == direct[q]['recall_3']
    assert table[q]['Hits@1'] == direct[q]['success_1']
  # By hand, query a: y at rank 2 (gain 1), x at rank 4 (gain 2);
  # ideal: 2 then 1. Linear gains, 1/log2(rank + 1) discounts.
  dcg = 1 / np.log2(3) + 2 / np.log2(5)
  assert table['a']['nDCG@10'] == pytest.approx(dcg / (2 + 1 / np.log2(3)))
  assert table['a']['MRR@10'] == 0.5


def test_mrr_is_cut_at_10_and_missing_queries_count_zero():
  qrels = {'q': {'d10': 1}, 'missing': {'d0': 1}, 'no_rel': {'d1': 0}}
  ranked = [f'd{i}' for i in range(12)]          # relevant one at rank 11
  run = {'q': {d: float(12 - r) for r, d in enumerate(ranked)}}
  full = pytrec_eval.RelevanceEvaluator(qrels, {'recip_rank'}).evaluate(run)
  assert full['q']['recip_rank'] == pytest.approx(1 / 11)   # uncut
  means, table = ir_metrics.evaluate(run, qrels, ks=(20,), per_query=True)
  assert table['q']['MRR@10'] == 0.0 and table['q']['Recall@20'] == 1.0
  assert table['missing']['Recall@20'] == 0.0
  assert set(table) == {'q', 'missing'}        # no relevant doc: not counted
  assert means['Recall@20'] == 0.5
  with pytest.raises(ValueError, match='no query with a relevant'):
    ir_metrics.evaluate(run, {'no_rel': {'d1': 0}})


def test_run_from_topk_keeps_the_search_order_despite_tied_scores():
  doc_ids = ['a', 'b', 'c']
  indices = np.array([[0, 1, 2]])                # search order: a, b, c
  tied = np.array([[1.0, 1.0, 1.0]])
  qrels = {'q': {'a': 1}}
  by_rank = ir_metrics.run_from_topk(indices, ['q'], doc_ids)
  assert by_rank == {'q': {'a': 3.0, 'b': 2.0, 'c': 1.0}}
  assert ir_metrics.evaluate(by_rank, qrels)['MRR@10'] == 1.0
  # With the tied real scores trec_eval reorders by doc id, descending.
  with_scores = ir_metrics.run_from_topk(indices, ['q'], doc_ids, tied)
  assert ir_metrics.evaluate(with_scores, qrels)['MRR@10'] == pytest.approx(
      1 / 3)
  with pytest.raises(ValueError, match='out of range for 3 doc ids'):
    ir_metrics.run_from_topk(np.array([[3]]), ['q'], doc_ids)


def test_trec_files_round_trip_and_errors_name_the_line(tmp_path):
  run = {'q1': {'d1': 2.5, 'd2': 0.1}, 'q2': {'d3': -1.0}}
  path = str(tmp_path / 'runs' / 'x.run')
  ir_metrics.write_run(path, run, tag='bm25')
  lines = open(path).read().splitlines()
  assert lines[0] == 'q1 Q0 d1 1 2.5 bm25' and len(lines) == 3
  assert ir_metrics.read_run(path) == run
  assert os.listdir(tmp_path / 'runs') == ['x.run']   # no temp file left
  # numpy scores are written as numbers (their repr is 'np.float64(2.5)')
  ir_metrics.write_run(path, {'q1': {'d1': np.float64(2.5),
                                     'd2': np.float32(0.25)}}, tag='bm25')
  assert ir_metrics.read_run(path) == {'q1': {'d1': 2.5, 'd2': 0.25}}
  qrels = {'q1': {'d1': 3, 'd2': 0}}
  ir_metrics.write_qrels(str(tmp_path / 'q.qrels'), qrels)
  assert ir_metrics.read_qrels(str(tmp_path / 'q.qrels')) == qrels
  bad = tmp_path / 'bad.run'
  bad.write_text('q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 t\n')
  with pytest.raises(ValueError, match=r'bad.run:2: expected 6 fields'):
    ir_metrics.read_run(str(bad))
  bad.write_text('q1 Q0 d1 1 2.5 t\nq1 Q0 d1 2 2.0 t\n')
  with pytest.raises(ValueError, match=r'bad.run:2: document d1 listed twice'):
    ir_metrics.read_run(str(bad))
  with pytest.raises(ValueError, match="doc id 'a b'"):
    ir_metrics.write_run(str(tmp_path / 'y.run'), {'q': {'a b': 1.0}})
