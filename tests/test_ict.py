"""Inverse cloze task pairs (retrieval/dense/ict.py) and their seqio tasks: the
query is a sentence of its document, cut out of its passage unless kept,
the passage is a window around where it was, and which pairs keep their
sentence is fixed."""

import gin
import pytest
import seqio

from retrieval import datasets
from retrieval.dense import ict
from retrieval.dense import pair_tasks

# the same tiny multilingual SentencePiece model as the passage tests
from test_passages import WORDS, spm_path  # noqa: E402,F401


@pytest.mark.parametrize('text,lang,want', [
    ('One two. Three four? Five!  Six', 'en',
     ['One two.', 'Three four?', 'Five!', 'Six']),
    ('  lead and trail.  ', 'en', ['lead and trail.']),
    ('e.g.there is no space', 'en', ['e.g.there is no space']),
    ('北京是首都。猫很好！好吗？', 'zh', ['北京是首都。', '猫很好！', '好吗？']),
    ('यह एक है। वह दो है।', 'hi', ['यह एक है।', 'वह दो है।']),
    ('หนึ่งสอง สามสี่  ห้า', 'th', ['หนึ่งสอง', 'สามสี่', 'ห้า']),
    ('', 'en', []),
])
def test_sentence_spans(text, lang, want):
  spans = ict.sentence_spans(text, lang)
  assert [text[s:t] for s, t in spans] == want
  assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def _doc(i, n):
  return ' '.join(' '.join(WORDS[(i + 3 * j + k) % len(WORDS)]
                           for k in range(6)) + '.' for j in range(n))


def test_cut_out_sentence_leaves_a_full_window(spm_path):
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=spm_path)
  docs = [_doc(i, 12) for i in range(5)] + ['Only one sentence here.']
  got = ict.examples(docs, spm_path, 40, keep_rate=0.0)
  # every sentence of the five long documents, none of the one-sentence one
  assert len(got) == 5 * 12
  for (query, positive, negs), (d, j) in zip(
      got, [(d, j) for d in range(5) for j in range(12)]):
    spans = ict.sentence_spans(docs[d])
    assert query == docs[d][slice(*spans[j])] and negs == ()
    # the positive is text of the document with the sentence removed
    rest = docs[d][:spans[j][0]].rstrip() + ' ' + \
        docs[d][spans[j][1]:].lstrip()
    assert positive in rest.strip()
    assert len(sp.encode(positive)) in (39, 40, 41)   # a full window
  # stride 10: some window holds each sentence of <= 31 pieces
  kept = ict.examples(docs, spm_path, 40, keep_rate=1.0, stride=10)
  assert [q for q, _, _ in kept] == [q for q, _, _ in got]
  fits = [q in p for q, p, _ in kept if len(sp.encode(q)) <= 31]
  assert all(fits) and len(fits) > 50


def test_keep_rate_is_fixed_and_about_right(spm_path):
  docs = [_doc(i, 12) for i in range(40)]
  a = ict.examples(docs, spm_path, 40, keep_rate=0.3, key='c', stride=10)
  assert a == ict.examples(docs, spm_path, 40, keep_rate=0.3, key='c',
                           stride=10)
  kept = sum(q in p for q, p, _ in a) / len(a)
  assert 0.2 < kept < 0.4, kept
  b = ict.examples(docs, spm_path, 40, keep_rate=0.3, key='other',
                   stride=10)
  assert [p for _, p, _ in a] != [p for _, p, _ in b]


@pytest.mark.parametrize('kwargs,match', [
    (dict(keep_rate=1.5), 'keep_rate'), (dict(min_query_chars=0),
                                         'min_query_chars')])
def test_bad_arguments(spm_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    ict.examples([_doc(0, 3)], spm_path, 20, **kwargs)


def test_short_sentences_are_not_queries(spm_path):
  doc = 'Yes. ' + _doc(1, 3)
  got = ict.examples([doc], spm_path, 20, keep_rate=0.0, min_query_chars=10)
  assert 'Yes.' not in [q for q, _, _ in got] and len(got) == 3


def test_ict_tasks_on_xquad_and_cranfield(spm_path):
  gin.clear_config()
  vocab = seqio.SentencePieceVocabulary(spm_path)
  names = pair_tasks.setup(vocab, tatoeba_languages=(), xquad_pairs=(),
                           ict_corpora=('xquad-de', 'cranfield'),
                           ict_passage_tokens=64, ict_keep_rate=0.0,
                           mixture='ict_test_mixture')
  assert names == ['ict_pairs_xquad_de', 'ict_pairs_cranfield']
  contexts = [p.context for p in datasets.xquad_paragraphs('de')]
  rows = seqio.get_mixture_or_task(names[0]).source.pairs('train')
  assert len(rows) > 4 * len(contexts)
  for q, p, _ in rows[:200]:
    assert any(q in c for c in contexts)
    assert q not in p
  cran = seqio.get_mixture_or_task(names[1]).source.pairs('train')
  assert len(cran) > 5 * len(datasets.cranfield().docs)
  ds = seqio.get_mixture_or_task('ict_test_mixture').get_dataset(
      {'queries': 32, 'positives': 65, 'negatives': 8}, split='train',
      shuffle=True, seed=0)
  ex = next(iter(ds))
  assert ex['positives'][-1] == 1 and len(ex['positives']) <= 65


@pytest.mark.parametrize('kwargs,match', [
    (dict(ict_corpora=('xquad-xx',)), 'xquad-<lang>'),
    (dict(ict_corpora=('msmarco',)), 'cranfield'),
    (dict(ict_corpora=('cranfield',)), 'ict_passage_tokens'),
    (dict(ict_corpora=('cranfield',), ict_keep_rate=-0.1), 'keep_rate'),
])
def test_ict_setup_errors(spm_path, kwargs, match):
  gin.clear_config()
  with pytest.raises(ValueError, match=match):
    pair_tasks.setup(seqio.SentencePieceVocabulary(spm_path),
                     tatoeba_languages=(), xquad_pairs=(), **kwargs,
                     **({} if 'ict_passage_tokens' in match
                        else dict(ict_passage_tokens=64)))


def test_ict_needs_sentencepiece():
  with pytest.raises(ValueError, match='SentencePiece'):
    pair_tasks.register_ict_task(seqio.ByteVocabulary(), 'cranfield', 64)
