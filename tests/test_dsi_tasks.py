"""DSI seqio tasks on real XQuAD and Cranfield: what each task holds, the
indexing:retrieval proportion of the mixture, the metrics through a seqio
Evaluator with constrained decoding, setup errors, and every gin/dsi file
(parse, register, one batch, a forward pass of the gin model)."""

import collections
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from flax import nnx

from retrieval import datasets
from retrieval.dsi import docids
from retrieval.dsi import dsi_tasks
from rosetta import gin_utils, partitioning
from rosetta.data import evaluation
from rosetta.run import runs
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config
from rosetta.model.encoder_decoder_model import EncoderDecoderModel

LENGTHS = {'inputs': 96, 'targets': 8}


def examples(name, split, **kw):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False, **kw)
  return list(ds.as_numpy_iterator())


@pytest.fixture(scope='module')
def xquad_setup():
  return dsi_tasks.setup(corpus='xquad', docid_kind='atomic',
                         index_languages=('en', 'de', 'zh'),
                         query_languages=('en', 'de', 'th'), index_length=32,
                         indexing_ratio=3.0, suffix='_t')


def test_xquad_tasks_map_every_language_to_the_paragraph_id(xquad_setup):
  s = xquad_setup
  assert s.tasks.mixture == 'xquad_dsi_t'
  assert sorted(s.tasks.per_language) == ['de', 'en', 'th']
  assert s.vocabulary.vocab_size == 259 + 240
  index = examples(s.tasks.indexing, 'train')
  assert len(index) == 3 * 240
  # The first 32 bytes of the paragraph, then EOS; target = its docid.
  en = datasets.xquad_paragraphs('en')
  assert all(len(ex['inputs']) == 33 and ex['inputs'][-1] == 1
             for ex in index)
  assert index[0]['inputs_pretokenized'].decode() == en[0].context
  np.testing.assert_array_equal(index[0]['inputs'][:32],
                                np.frombuffer(en[0].context.encode()[:32],
                                              np.uint8) + 3)
  np.testing.assert_array_equal(index[0]['targets'], [259 + 0, 1])
  # Every language's copy of a paragraph has the same target.
  by_doc = collections.defaultdict(set)
  for ex in index:
    by_doc[ex['targets'].tobytes()].add(ex['inputs_pretokenized'])
  assert len(by_doc) == 240 and all(len(v) == 3 for v in by_doc.values())

  # Retrieval: question i of XQuAD is the same question in every language
  # and maps to the same paragraph id; test questions are never trained on.
  rows = {l: examples(s.tasks.per_language[l], 'test') for l in
          ('en', 'de', 'th')}
  # XQuAD repeats a few questions under ids of both splits: dropped (in
  # every language: 4 of 368 for en/de/th).
  assert len(datasets.xquad('en', split='test').queries) - len(
      rows['en']) == 4
  for l in ('de', 'th'):
    assert [r['targets_pretokenized'] for r in rows[l]] == [
        r['targets_pretokenized'] for r in rows['en']]
  train_q = {r['inputs_pretokenized'] for r in
             examples(s.tasks.retrieval, 'train')}
  assert not train_q & {r['inputs_pretokenized'] for l in rows
                        for r in rows[l]}
  assert len(train_q) == len({(l, t) for l in ('en', 'de', 'th') for t in
                              datasets.xquad(l, split='train').queries})
  q = datasets.xquad('de', split='test')
  for ex in rows['de'][:20]:
    i = q.queries.index(ex['inputs_pretokenized'].decode())
    pid = next(iter(q.qrels[q.query_ids[i]])).split(':', 1)[1]
    assert ex['targets_pretokenized'].decode() == s.mapping.ids[pid]


def test_mixture_has_the_indexing_to_retrieval_ratio(xquad_setup):
  s = xquad_setup
  texts = {t for ts in s.corpus.doc_texts.values() for t in ts}

  def fraction(mixture, n=3000):
    ds = seqio.get_mixture_or_task(mixture).get_dataset(
        LENGTHS, split='train', shuffle=True, seed=3, copy_pretokenized=True)
    got = [ex['inputs_pretokenized'].decode() in texts
           for ex in ds.take(n).as_numpy_iterator()]
    return np.mean(got)

  # rate 3 : 1 -> 3/4 indexing; binomial std over 3,000 draws is 0.008.
  assert abs(fraction(s.tasks.mixture) - 0.75) < 0.03
  other = dsi_tasks.register_dsi_tasks(s.corpus, s.vocabulary,
                                       indexing_ratio=0.5, suffix='_half')
  assert abs(fraction(other.mixture) - 1 / 3) < 0.03


def test_cranfield_tasks_keep_every_relevant_document():
  s = dsi_tasks.setup(corpus='cranfield', docid_kind='naive', min_grade=3,
                      suffix='_t')
  rs = datasets.cranfield()
  assert s.mapping.ids['67'] == '67'          # Cranfield's own numbers
  train = examples(s.tasks.retrieval, 'train')
  test = examples(s.tasks.retrieval, 'test')
  relevant = lambda q: sorted(d for d, g in rs.qrels[q].items() if g >= 3)
  train_q = [q for q in rs.query_ids
             if datasets.xquad_split(f'cranfield:{q}') == 'train'
             and relevant(q)]
  assert len(train) == sum(len(relevant(q)) for q in train_q)
  test_q = [q for q in rs.query_ids
            if datasets.xquad_split(f'cranfield:{q}') == 'test'
            and relevant(q)]
  assert len(test) == len(test_q)
  for ex, q in zip(test, test_q):
    assert ex['inputs_pretokenized'].decode() == rs.queries[int(q) - 1]
    assert sorted(ex['relevant_docids'].decode().split()) == relevant(q)
    best = max(rs.qrels[q].values())
    assert rs.qrels[q][ex['targets_pretokenized'].decode()] == best
    # naive ids are the number's bytes + EOS
    assert list(ex['targets']) == [b + 3 for b in
                                   ex['targets_pretokenized']] + [1]


def test_metrics_through_a_seqio_evaluator_with_the_trie():
  """Constrained decoding by an untrained model: every decode is a docid
  (valid rate 100; test_trie.py shows the same logits leave the id set
  unconstrained). A perfect predictor scores hits@1 = 100."""
  s = dsi_tasks.setup(corpus='cranfield', docid_kind='naive', min_grade=3,
                      suffix='_ev', model_vocab_size=384)
  cfg = T5Config(vocab_size=384, emb_dim=32, num_heads=2, head_dim=8,
                 mlp_dim=48, num_encoder_layers=1, num_decoder_layers=1,
                 dropout_rate=0.0)
  net = EncoderDecoder(cfg, rngs=nnx.Rngs(0))
  # Greedy: beam search with the trie is tested in test_trie.py.
  model = EncoderDecoderModel(cfg, max_decode_length=s.trie.max_length,
                              num_beams=1)
  part = partitioning.Partitioner(partitioning.make_mesh(data=-1))
  evaluator = evaluation.make_evaluator(s.tasks.retrieval, 'test',
                                  num_examples=16,
                                  async_compute_metrics=False)
  proc = s.constraint()

  def metrics(predict_batch):
    fn = evaluation.make_predict_fn(predict_batch, global_batch_size=8,
                              partitioner=part)
    m, _ = evaluator.evaluate(compute_metrics=True, predict_fn=fn)
    return {k: float(getattr(v, 'value', v))
            for k, v in m.result()[s.tasks.retrieval].items()}

  constrained = metrics(lambda f: model.predict_batch(net, f,
                                                      processors=(proc,)))
  assert constrained['valid_docid_rate'] == 100.0
  assert 0.0 <= constrained['hits@1'] < 50.0      # an untrained model
  perfect = metrics(lambda f: f['decoder_target_tokens'])
  assert perfect == {'hits@1': 100.0, 'valid_docid_rate': 100.0}


def test_setup_errors_name_the_setting(tmp_path):
  with pytest.raises(ValueError, match=r'model_vocab_size \(T5Config.'
                     r'vocab_size\) = 384 is too small .* need 1659 '
                     r'\(padded: 1664\)'):
    dsi_tasks.setup(corpus='cranfield', docid_kind='atomic',
                    model_vocab_size=384, suffix='_x')
  with pytest.raises(ValueError, match='corpus must be one of'):
    dsi_tasks.setup(corpus='msmarco')
  with pytest.raises(ValueError, match='semantic docids need embeddings'):
    dsi_tasks.setup(corpus='cranfield', docid_kind='semantic', suffix='_x')
  # The mapping is saved once and reused; a run asking for another kind
  # with the same file is refused.
  path = str(tmp_path / 'docids.json')
  a = dsi_tasks.setup(corpus='cranfield', docid_kind='semantic',
                      embeddings='lexical', mapping_path=path, suffix='_m')
  b = dsi_tasks.setup(corpus='cranfield', docid_kind='semantic',
                      embeddings='lexical', mapping_path=path, suffix='_m')
  assert a.mapping == b.mapping == docids.DocidMapping.load(path)
  with pytest.raises(ValueError, match=f'{path}: a semantic mapping of 1400 '
                     'documents, but the run asks for atomic ids'):
    dsi_tasks.setup(corpus='cranfield', docid_kind='atomic',
                    mapping_path=path, suffix='_m')


# The query generators' gin files (qgen_*) are tested in
# test_synthetic_queries.py.
GIN_FILES = [f for f in gin_utils.all_gin_files('dsi')
             if not os.path.basename(f).startswith('qgen_')]


def test_gin_files_exist():
  assert {os.path.basename(f) for f in GIN_FILES} >= {
      'xquad_atomic_tiny.gin', 'xquad_semantic_tiny.gin',
      'cranfield_naive_tiny.gin'}


@pytest.mark.parametrize('gin_file', GIN_FILES)
def test_gin_file_registers_tasks_and_runs_a_forward_pass(gin_file):
  gin_utils.parse([gin_file], ['train.model_dir = "/tmp/unused"'])
  runs.task_setup()
  task = gin.query_parameter('train.task')
  lengths = gin.query_parameter('train.task_feature_lengths')
  setup = dsi_tasks.last_setup(task)
  cfg = T5Config()
  assert cfg.vocab_size >= setup.vocabulary.vocab_size
  ds = seqio.get_mixture_or_task(task).get_dataset(
      lengths, split='train', shuffle=False, seed=0)   # no buffer to fill
  batch = next(seqio.EncDecFeatureConverter(pack=True)(
      ds, lengths).batch(4).as_numpy_iterator())
  assert batch['decoder_target_tokens'].max() < cfg.vocab_size
  net = EncoderDecoder(cfg, rngs=nnx.Rngs(0))
  loss, _ = nnx.jit(lambda n, b: EncoderDecoderModel(cfg).loss_fn(n, b))(
      net, jax.tree.map(jnp.asarray, batch))
  assert np.isfinite(float(loss))
  for name in gin.query_parameter('train.eval_tasks'):
    split = gin.query_parameter('train.eval_split')
    assert split in seqio.get_mixture_or_task(name).splits
  assert gin.query_parameter('encoder_decoder_model.EncoderDecoderModel.max_decode_length'
                             ) >= setup.trie.max_length
  # Evaluation in `rosetta train` / `evaluate` decodes under the trie.
  (proc,) = EncoderDecoderModel().processors()
  assert proc is setup.constraint()


def test_index_windows_index_every_part_of_a_document(tmp_path):
  from rosetta import vocab as vocab_lib
  rs = datasets.cranfield()
  spm_path = vocab_lib.train_sentencepiece(
      list(rs.docs[:300]), str(tmp_path / 'spm.model'), vocab_size=800)
  gin.clear_config()        # earlier tests' bindings (model_vocab_size ...)
  s = dsi_tasks.setup(corpus='cranfield', docid_kind='naive', min_grade=3,
                      vocabulary=spm_path, index_length=32,
                      index_windows=True, suffix='_w', model_vocab_size=None,
                      mapping_path=None, synthetic_queries=None)
  rows = examples(s.tasks.indexing, 'train')
  by_doc = collections.defaultdict(list)
  for ex in rows:
    assert len(ex['inputs']) <= 33                 # 32 pieces + EOS
    by_doc[ex['targets_pretokenized'].decode()].append(
        ex['inputs_pretokenized'].decode())
  assert len(by_doc) == len(rs.docs)
  text = dict(zip(rs.doc_ids, rs.docs))
  for doc, windows in by_doc.items():
    assert all(w in text[doc] for w in windows)
    assert text[doc].endswith(windows[-1])         # the tail is indexed
  assert np.mean([len(w) for w in by_doc.values()]) > 5
  with pytest.raises(ValueError, match='index_windows needs a SentencePiece'):
    dsi_tasks.setup(corpus='cranfield', docid_kind='naive',
                    index_windows=True, suffix='_w')
