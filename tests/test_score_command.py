"""`rosetta score`: pytrec_eval measures of TREC runs, golden values."""

import json

import pytest

from retrieval.search import fusion, ir_metrics
from tests.retrieval_cli_helpers import rosetta

TREC_QRELS = 'q1 0 d1 1\nq1 0 d2 1\nq1 0 d9 0\nq2 0 d3 2\nq3 0 d4 1\n'
BEIR_QRELS = ('query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t1\nq1\td9\t0\n'
              'q2\td3\t2\nq3\td4\t1\n')
# q1: d1 at rank 1, d2 at rank 3; q2: d3 at rank 2; q3 is not in the run.
RUN = ('q1 Q0 d1 1 3.0 a\nq1 Q0 d7 2 2.0 a\nq1 Q0 d2 3 1.0 a\n'
       'q2 Q0 d8 1 5.0 a\nq2 Q0 d3 2 4.0 a\n')
# By hand: MRR (1 + 1/2 + 0) / 3; AP q1 (1 + 2/3) / 2, q2 1/2;
# nDCG q1 (1 + 1/log2 4) / (1 + 1/log2 3), q2 (2/log2 3) / 2.
GOLDEN = {'MRR@10': 0.5, 'nDCG@10': (0.9197207891481876 + 0.6309297535714575)
          / 3, 'Recall@100': 2 / 3, 'MAP': (5 / 6 + 0.5) / 3}


@pytest.fixture
def files(tmp_path):
  (tmp_path / 'qrels.txt').write_text(TREC_QRELS)
  (tmp_path / 'test.tsv').write_text(BEIR_QRELS)
  (tmp_path / 'a.trec').write_text(RUN)
  return tmp_path


@pytest.mark.parametrize('qrels', ['qrels.txt', 'test.tsv'])
def test_golden_means_table_and_json(files, qrels):
  code, out, err = rosetta('score', '--qrels', files / qrels,
                           files / 'a.trec', '--json', files / 's.json',
                           '--per_query')
  assert code == 0, err
  got = json.loads((files / 's.json').read_text())
  run = got['runs'][str(files / 'a.trec')]
  assert run['queries'] == 3
  assert run['mean'] == pytest.approx(GOLDEN, abs=1e-9)
  assert run['per_query']['q3'] == dict.fromkeys(GOLDEN, 0.0)
  assert run['per_query']['q1']['MAP'] == pytest.approx(5 / 6)
  header, row = out.splitlines()[:2]
  assert header.split()[1:] == ['MRR@10', 'nDCG@10', 'Recall@100', 'MAP',
                                'queries']
  assert [float(x) for x in row.split()[1:5]] == pytest.approx(
      [GOLDEN[m] for m in ('MRR@10', 'nDCG@10', 'Recall@100', 'MAP')],
      abs=5e-5)
  assert out.splitlines()[2].split()[0] == 'q1'     # --per_query rows


def test_several_runs_and_fuse_takes_them(files):
  (files / 'b.trec').write_text('q1 Q0 d2 1 9.0 b\nq2 Q0 d3 1 9.0 b\n')
  code, out, err = rosetta('fuse', '--out', files / 'f.trec',
                           files / 'a.trec', files / 'b.trec')
  assert code == 0, err
  fused = ir_metrics.read_run(str(files / 'f.trec'))
  assert fused == fusion.fuse([ir_metrics.read_run(str(files / 'a.trec')),
                               ir_metrics.read_run(str(files / 'b.trec'))])
  code, out, err = rosetta('score', '--qrels', files / 'qrels.txt',
                           files / 'a.trec', files / 'b.trec',
                           files / 'f.trec')
  assert code == 0, err
  assert [l.split()[0] for l in out.splitlines()[1:]] == [
      str(files / n) for n in ('a.trec', 'b.trec', 'f.trec')]
  b = out.splitlines()[2].split()
  assert float(b[1]) == pytest.approx(2 / 3, abs=5e-5)    # MRR: 1, 1, 0


@pytest.mark.parametrize('content,args,message', [
    (None, ['missing.trec'], 'missing.trec: no such run file'),
    ('q1 Q0 d1 1 x a\n', ['bad.trec'], 'bad.trec:1: score \'x\' is not a'),
    ('q9 Q0 d1 1 1.0 a\n', ['bad.trec'], 'no query of the run is in'),
])
def test_bad_runs_name_the_file(files, content, args, message):
  if content is not None:
    (files / 'bad.trec').write_text(content)
  code, _, err = rosetta('score', '--qrels', files / 'qrels.txt',
                         *[files / a for a in args])
  assert code == 1 and message in err, err


def test_bad_qrels_name_the_line(files):
  (files / 'q.txt').write_text('q1 0 d1 1\nq2 0 d3 high\n')
  code, _, err = rosetta('score', '--qrels', files / 'q.txt',
                         files / 'a.trec')
  assert code == 1 and "q.txt:2: score 'high' is not an integer" in err, err
  code, _, err = rosetta('score', files / 'a.trec')
  assert code == 2 and '--qrels' in err
