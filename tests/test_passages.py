"""Long documents as token windows (retrieval/search/passages.py): the windows
cover every piece, re-tokenise to their own pieces, the answer window
holds the answer, and passage search ranks documents exactly as a
brute-force max over each document's windows."""

import json

import numpy as np
import pytest
import seqio

from retrieval import datasets
from retrieval.dense import pair_tasks
from retrieval.search import passages
from retrieval.search import exact as search

WORDS = ('alpha beta gamma delta Haus Katze über 猫 кошка 北京 首都 '
         'retrieval window passage').split()


@pytest.fixture(scope='module')
def spm_path(tmp_path_factory):
  from rosetta import vocab as vocab_lib
  text = [' '.join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(i % 9 + 1))
          for i in range(400)]
  return vocab_lib.train_sentencepiece(
      text, str(tmp_path_factory.mktemp('vocab') / 'spm.model'),
      vocab_size=300)


@pytest.mark.parametrize('n,length,stride,starts', [
    (0, 4, 2, None), (3, 4, 2, [0]), (4, 4, 2, [0]), (5, 4, 2, [0, 1]),
    (10, 4, 3, [0, 3, 6]), (11, 4, 3, [0, 3, 6, 7]), (9, 4, 4, [0, 4, 5])])
def test_window_spans_cover_every_piece(n, length, stride, starts):
  pieces = [(2 * i, 2 * i + 2) for i in range(n)]      # 2 bytes a piece
  got = passages.window_spans(pieces, length, stride)
  if n == 0:
    assert got == [(0, 0)]
    return
  assert got == [(2 * s, 2 * min(s + length, n)) for s in starts]
  covered = {i for s in starts for i in range(s, min(s + length, n))}
  assert covered == set(range(n))


@pytest.mark.parametrize('length,stride', [(0, None), (4, 0), (4, 5)])
def test_bad_window_is_refused(length, stride):
  with pytest.raises(ValueError, match='passage'):
    passages.window_spans([(0, 1)], length, stride)


def test_windows_retokenise_to_their_pieces(spm_path):
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=spm_path)
  rng = np.random.default_rng(0)
  doc = ' '.join(rng.choice(WORDS, 200)) + ' ÿ😀 unseen'   # byte fallback
  ids = sp.encode(doc)
  wins = passages.windows(doc, spm_path, 16, 8)
  assert len(wins) > 20
  for b, e, text in wins:
    assert doc[b:e] == text
    assert 1 <= len(sp.encode(text)) <= 17    # a leading space may join
  assert wins[0][0] == 0 and wins[-1][1] == len(doc)
  # consecutive windows overlap: every character lies in some window
  assert all(b2 <= e1 for (_, e1, _), (b2, _, _) in zip(wins, wins[1:]))
  assert sp.encode(wins[0][2]) == ids[:16]


def test_window_holding_the_answer(spm_path):
  rng = np.random.default_rng(2)
  doc = ' '.join(rng.choice(WORDS, 60)) + ' Zebra ' + ' '.join(
      rng.choice(WORDS, 60))
  start = doc.index('Zebra')
  win = passages.window_holding(doc, start, start + 5, spm_path, 12)
  (b, e), = [(b, e) for b, e, t in passages.windows(doc, spm_path, 12)
             if t == win]
  assert b <= start and start + 5 <= e
  # of the windows holding it, the one where it is most central
  centres = [abs((b2 + e2) / 2 - start - 2.5)
             for b2, e2, _ in passages.windows(doc, spm_path, 12)
             if b2 <= start and start + 5 <= e2]
  assert abs((b + e) / 2 - start - 2.5) == min(centres)
  with pytest.raises(ValueError, match='outside'):
    passages.window_holding(doc, 5, len(doc) + 1, spm_path, 12)


def test_split_and_doc_search_match_brute_force(spm_path, mesh_data8):
  rng = np.random.default_rng(1)
  docs = [' '.join(rng.choice(WORDS, int(n))) for n in
          rng.integers(1, 80, size=37)]
  ps = passages.split(docs, spm_path, 10)
  assert sorted(set(ps.owner.tolist())) == list(range(len(docs)))
  assert np.all(np.diff(ps.owner) >= 0) and ps.max_per_doc > 3
  emb = rng.normal(size=(len(ps.texts), 16)).astype(np.float32)
  q = rng.normal(size=(9, 16)).astype(np.float32)
  full = q @ emb.T
  best = np.full((9, len(docs)), -np.inf, np.float32)
  for p, d in enumerate(ps.owner):
    best[:, d] = np.maximum(best[:, d], full[:, p])
  want = np.argsort(-best, axis=1, kind='stable')[:, :7]
  for mesh in (None, mesh_data8):
    corpus = search.shard_corpus(emb, mesh)
    res = passages.search(corpus, q, 7, ps)
    np.testing.assert_array_equal(res.indices, want)
    np.testing.assert_allclose(
        res.scores, np.take_along_axis(best, want, 1), rtol=1e-5)
  with pytest.raises(ValueError, match='passages'):
    passages.search(search.shard_corpus(emb[:-1]), q, 7, ps)


def test_doc_topk_pads_rows_with_few_documents():
  scores = np.array([[3.0, 2.0, 1.0]], np.float32)
  s, i = passages.doc_topk(scores, np.array([[0, 1, 2]]),
                           np.array([5, 5, 2]), 3)
  np.testing.assert_array_equal(i, [[5, 2, -1]])
  np.testing.assert_array_equal(s, [[3.0, 1.0, -np.inf]])


def test_xquad_answers_point_into_their_context():
  for lang in ('en', 'zh', 'hi'):
    pars = datasets.xquad_paragraphs(lang)
    for p in pars:
      assert len(p.answers) == len(p.question_ids)
      for start, text in p.answers:
        assert p.context[start:start + len(text)] == text


def test_xquad_bad_answer_offset_names_the_file(tmp_path):
  doc = {'data': [{'title': 'T', 'paragraphs': [{
      'context': 'Paris is in France.',
      'qas': [{'id': 'q1', 'question': 'Where?',
               'answers': [{'text': 'France', 'answer_start': 3}]}]}]}]}
  (tmp_path / 'xquad').mkdir()
  path = tmp_path / 'xquad' / 'xquad.en.json'
  path.write_text(json.dumps(doc))
  with pytest.raises(ValueError, match=r'xquad\.en\.json.*answer_start'):
    datasets._xquad_paragraphs(str(tmp_path / 'xquad'), 'en')


def test_xquad_pairs_with_answer_windows(spm_path):
  vocab = seqio.SentencePieceVocabulary(spm_path)
  whole = pair_tasks.xquad_examples('de', 'en', 'train')
  wins = pair_tasks.xquad_examples('de', 'en', 'train', (vocab, 120))
  assert [q for q, _, _ in wins] == [q for q, _, _ in whole]
  answers = {qid: a for par in datasets.xquad_paragraphs('en')
             for qid, a in zip(par.question_ids, par.answers)}
  qids = datasets.xquad('de', corpus='en', split='train').query_ids
  held = 0
  for qid, (_, para, _), (_, win, negs) in zip(qids, whole, wins):
    assert win in para and len(vocab.encode(win)) <= 121
    held += answers[qid][1] in win
    assert negs                          # negatives are unchanged
  assert held >= 0.95 * len(wins)        # all but answers longer than a window
  with pytest.raises(ValueError, match='SentencePiece'):
    pair_tasks.register_xquad_pair_task(seqio.ByteVocabulary(), 'de', 'en',
                                        passage_tokens=120)
