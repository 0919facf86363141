"""Synthetic queries on real XQuAD: the query-generation task pairs training
questions with their paragraphs, a generator trained a few steps by the
ordinary trainer samples n queries per document (seeded, never empty), the
JSONL file is written all-or-nothing and checked on reading, and the
queries feed the DSI mixture as extra indexing examples. Plus semantic ids
from a (briefly) trained dual encoder's document tower."""

import json
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
from retrieval.dsi import embeddings as dsi_embeddings
from retrieval.dsi import dsi_tasks
from retrieval.dsi import query_files
from retrieval.dsi import synthetic_queries as sq
from rosetta import gin_utils, partitioning
from rosetta import cli
from rosetta.run import run_dir
from rosetta.run import runs
from rosetta.model.encoder_decoder import EncoderDecoder, T5Config
from rosetta.model.encoder_decoder_model import EncoderDecoderModel

pytestmark = pytest.mark.skipif(not datasets.available('xquad'),
                                reason='no XQuAD under the data directory')
STEPS = 30


@pytest.fixture(scope='module')
def one_device():
  return partitioning.make_mesh(data=1, devices=jax.devices()[:1])


@pytest.fixture(scope='module')
def corpus():
  return dsi_tasks.xquad_corpus(['en'], ['en'])


def train_run(gin_file, bindings, model_dir, mesh):
  gin_utils.parse([gin_file], [f'train.model_dir = "{model_dir}"',
                               *bindings], finalize=False)
  gin.finalize()
  try:
    runs.train(mesh=mesh, config_text=run_dir.run_config_text())
  finally:
    gin.clear_config()


@pytest.fixture(scope='module')
def generator(tmp_path_factory, one_device):
  d = str(tmp_path_factory.mktemp('qgen'))
  train_run('dsi/qgen_xquad_tiny.gin', [
      "synthetic_queries.qgen_setup.languages = ['en']",
      "train.task_feature_lengths = {'inputs': 128, 'targets': 64}",
      'synthetic_queries.qgen_setup.doc_length = 128',
      f'train.total_steps = {STEPS}', 'train.eval_period = 0',
      f'train.checkpoint_period = {STEPS}',
      'optimizers.learning_rate_schedule.base = 3e-3'], d, one_device)
  gen = sq.QueryGenerator.from_run(d, mesh=one_device)
  gin.clear_config()
  return d, gen


def test_qgen_task_pairs_training_questions_with_their_paragraph(corpus):
  name = sq.register_qgen_task(corpus, seqio.ByteVocabulary(),
                               doc_length=32, suffix='_t')
  task = seqio.get_mixture_or_task(name)
  lengths = {'inputs': 64, 'targets': 128}
  rows = list(task.get_dataset(lengths, split='train', shuffle=False)
              .as_numpy_iterator())
  train = corpus.queries['train']
  assert len(rows) == sum(len(q.relevant) for q in train) == len(train)
  text_of = dict(zip(corpus.doc_keys, corpus.doc_texts['en']))
  for ex, q in zip(rows, train):
    assert ex['targets_pretokenized'].decode() == q.text
    assert ex['inputs_pretokenized'].decode() == text_of[q.relevant[0][0]]
    assert len(ex['inputs']) == 33 and ex['inputs'][-1] == 1  # 32 + EOS
  test_q = {q.text for q in corpus.queries['test']}
  assert not test_q & {ex['targets_pretokenized'].decode() for ex in rows}


def test_generator_samples_n_queries_per_document(generator, corpus,
                                                  tmp_path):
  d, gen = generator
  losses = [json.loads(l)['loss'] for l in open(f'{d}/train_metrics.jsonl')]
  assert len(losses) == STEPS and losses[-1] < losses[0]
  keys = corpus.doc_keys[:10]
  kw = dict(n=3, doc_keys=keys, max_length=24, batch_size=16)
  records = sq.generate(gen, corpus, seed=0, **kw)
  # n per document, in order (a whitespace-only sample would be dropped).
  got = [(r['doc'], r['sample']) for r in records]
  assert got == [p for p in [(k, j) for k in keys for j in range(3)]
                 if p in got] and len(got) >= 27
  assert all(r['language'] == 'en' and r['query'].strip() for r in records)
  assert len({r['query'] for r in records}) > 15     # samples differ
  assert sq.generate(gen, corpus, seed=0, **kw) == records
  assert sq.generate(gen, corpus, seed=1, **kw) != records
  path = query_files.write_queries(str(tmp_path / 'q.jsonl'), records)
  assert query_files.read_queries(path) == records
  assert sorted(os.listdir(tmp_path)) == ['q.jsonl']
  with pytest.raises(ValueError, match='no documents in'):
    sq.generate(gen, corpus, languages=['de'], **kw)


def record(doc, query='what is it?', sample=0):
  return dict(doc=doc, language='en', sample=sample, query=query)


def test_write_is_all_or_nothing_and_read_checks_fields(tmp_path):
  path = str(tmp_path / 'q.jsonl')
  query_files.write_queries(path, [record('a'), record('b')])
  before = open(path).read()

  def failing():
    yield record('c')
    raise RuntimeError('generator died')
  with pytest.raises(RuntimeError, match='died'):
    query_files.write_queries(path, failing())
  with pytest.raises(ValueError, match='record 2: missing field .sample.'):
    query_files.write_queries(path, [record('c'), {'doc': 'd', 'language': 'en',
                                          'query': 'q'}])
  with pytest.raises(ValueError, match='field "query" is empty'):
    query_files.write_queries(path, [record('c', query='  ')])
  assert open(path).read() == before
  assert os.listdir(tmp_path) == ['q.jsonl']       # no temp file left
  with open(path, 'a') as f:
    f.write('{"doc": "x", "language": "en", "sample": "1", "query": "q"}\n')
  with pytest.raises(ValueError, match=f'{path}:3: field .sample. must be '
                     'int'):
    query_files.read_queries(path)
  with open(path, 'w') as f:
    f.write(json.dumps(record('a')) + '\n{"doc": \n')
  with pytest.raises(ValueError, match=f'{path}:2: not JSON'):
    query_files.read_queries(path)


def test_synthetic_queries_feed_the_mixture(corpus, tmp_path):
  keys = corpus.doc_keys
  recs = [record(keys[i % 40], f'synthetic question {i} zq', i // 40)
          for i in range(120)]
  path = query_files.write_queries(str(tmp_path / 'q.jsonl'), recs)
  s = dsi_tasks.setup(corpus='xquad', docid_kind='atomic',
                      index_languages=['en'], query_languages=['en'],
                      synthetic_queries=path, synthetic_ratio=2.0,
                      suffix='_sq')
  assert s.tasks.synthetic == 'xquad_dsi_synthetic_sq'
  lengths = {'inputs': 64, 'targets': 4}
  rows = list(seqio.get_mixture_or_task(s.tasks.synthetic).get_dataset(
      lengths, split='train', shuffle=False).as_numpy_iterator())
  assert [(r['inputs_pretokenized'].decode(),
           r['targets_pretokenized'].decode()) for r in rows] == [
               (r['query'], s.mapping.ids[r['doc']]) for r in recs]
  # Rates indexing 1 : retrieval 1 : synthetic 2 -> half synthetic.
  ds = seqio.get_mixture_or_task(s.tasks.mixture).get_dataset(
      lengths, split='train', shuffle=True, seed=1,
      copy_pretokenized=True)
  got = [ex['inputs_pretokenized'].decode().endswith(' zq')
         for ex in ds.take(2000).as_numpy_iterator()]
  assert abs(np.mean(got) - 0.5) < 0.04
  with open(path, 'a') as f:
    f.write(json.dumps(record('Not_A_Paragraph_p9')) + '\n')
  with pytest.raises(ValueError, match=f"{path}: record 121 is for "
                     "document 'Not_A_Paragraph_p9'"):
    dsi_tasks.setup(corpus='xquad', index_languages=['en'],
                    query_languages=['en'], synthetic_queries=path,
                    suffix='_sq')


@pytest.mark.parametrize('gin_file', ['dsi/qgen_xquad_tiny.gin',
                                      'dsi/qgen_cranfield_tiny.gin'])
def test_qgen_gin_files_register_and_run_a_forward_pass(gin_file):
  if 'cranfield' in gin_file and not datasets.available('cranfield'):
    pytest.skip('no Cranfield')
  gin_utils.parse([gin_file], ['train.model_dir = "/tmp/unused"'])
  try:
    runs.task_setup()
    task = seqio.get_mixture_or_task(gin.query_parameter('train.task'))
    lengths = gin.query_parameter('train.task_feature_lengths')
    assert {'train', 'test'} <= set(task.splits)
    ds = task.get_dataset(lengths, split='train', shuffle=False)
    batch = next(seqio.EncDecFeatureConverter(pack=True)(
        ds, lengths).batch(2).as_numpy_iterator())
    cfg = T5Config()
    net = EncoderDecoder(cfg, rngs=nnx.Rngs(0))
    loss, _ = nnx.jit(lambda n, b: EncoderDecoderModel(cfg).loss_fn(n, b))(
        net, jax.tree.map(jnp.asarray, batch))
    assert np.isfinite(float(loss))
  finally:
    gin.clear_config()


def test_semantic_ids_from_a_dual_encoder(tmp_path, one_device, corpus):
  """Two training steps are enough to exercise the path: restore from the
  run's config.gin, embed every document with the doc tower (averaged
  over languages), cluster, register the tasks from the saved .npy."""
  d = str(tmp_path / 'de')
  train_run('retrieval/dual_encoder_tiny_cpu.gin', [
      'pair_tasks.setup.tatoeba_languages = []',
      "pair_tasks.setup.xquad_pairs = ['en-en']",
      "train.task_feature_lengths = {'queries': 32, 'positives': 64, "
      "'negatives': 64}", 'train.batch_size = 8', 'train.total_steps = 2',
      'train.eval_period = 0', 'train.checkpoint_period = 2'], d, one_device)
  run = dsi_embeddings.load_dual_encoder(d, mesh=one_device)
  gin.clear_config()
  assert run.max_length == 64
  texts = corpus.doc_texts['en']
  emb = dsi_embeddings.doc_embeddings(run, {'en': texts})
  assert emb.shape[0] == 240 and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  direct = dsi_embeddings.encoder(run, 'doc')(list(texts[:5]))
  np.testing.assert_allclose(
      emb[:5], direct / np.linalg.norm(direct, axis=1, keepdims=True),
      rtol=1e-5, atol=1e-6)
  two = dsi_embeddings.doc_embeddings(run, {'en': texts, 'copy': texts})
  np.testing.assert_allclose(two, emb, rtol=1e-5, atol=1e-6)
  path = dsi_embeddings.save_embeddings(str(tmp_path / 'emb.npy'), emb)
  s = dsi_tasks.setup(corpus='xquad', docid_kind='semantic', embeddings=path,
                      k=10, c=10, index_languages=['en'],
                      query_languages=['en'], suffix='_de')
  assert s.mapping == docids.semantic_ids(corpus.doc_keys, emb, k=10, c=10)
  assert max(len(i.split('-')) for i in s.mapping.ids.values()) >= 3
