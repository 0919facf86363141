"""Rerank tasks (`retrieval.rerank.rerank_tasks`): the pair format cut the
same in the TF pipeline and in Python, feature shapes through the
converter, negatives never relevant and deterministic by seed, the
development split disjoint from train and test, first-stage and teacher
run files (values and errors naming the file and line), queries without a
relevant document skipped and counted, and every gin/rerank file
registering its tasks and giving a finite loss."""

from __future__ import annotations

import json
import os
import random

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf
from flax import nnx

from retrieval import datasets
from retrieval.rerank import rerank_tasks
from retrieval.search import ir_metrics
from rosetta import gin_utils
from rosetta import vocab as vocab_lib
from rosetta.model.encoder_decoder import T5Config
from rosetta.run import run_dir, runs
from tests import retrieval_cli_helpers as helpers

needs = {name: pytest.mark.skipif(not datasets.available(name),
                                  reason=f'no {name} under '
                                         f'{datasets.data_root()}')
         for name in ('xquad', 'cranfield')}
BYTES = seqio.ByteVocabulary()


def preprocessed(pair_format, vocab, rows, length):
  """The task preprocessor's 'pairs' of (query, documents) rows."""
  ds = tf.data.Dataset.from_generator(
      lambda: ({'query': q, 'documents': docs,
                'labels': np.zeros(len(docs), np.float32),
                'teacher_scores': np.zeros(len(docs), np.float32)}
               for q, docs in rows),
      output_signature={'query': tf.TensorSpec([], tf.string),
                        'documents': tf.TensorSpec([None], tf.string),
                        'labels': tf.TensorSpec([None], tf.float32),
                        'teacher_scores': tf.TensorSpec([None], tf.float32)})
  fn = rerank_tasks.pair_preprocessor(pair_format)
  out = fn(ds, {'pairs': seqio.Feature(vocab, rank=2)},
           None if length is None else {'pairs': length})
  return [ex['pairs'].to_list() for ex in out]


@pytest.fixture(scope='module')
def spm(tmp_path_factory):
  rng = random.Random(0)
  sentences = [' '.join(rng.choice(helpers.WORDS) for _ in range(8))
               for _ in range(400)]
  path = str(tmp_path_factory.mktemp('spm') / 'spm.model')
  return vocab_lib.train_sentencepiece(sentences, path, vocab_size=300,
                                       fit_vocab_size=True)


@pytest.mark.parametrize('vocab_name', ['bytes', 'sentencepiece'])
def test_training_and_scoring_cut_pairs_identically(vocab_name, spm):
  vocab = BYTES if vocab_name == 'bytes' else vocab_lib.load_vocabulary(spm)
  rng = random.Random(1)

  def text(n):
    return ' '.join(rng.choice(helpers.WORDS) for _ in range(n))
  rows = [(text(rng.randint(1, 12)), [text(rng.randint(0, 30))
                                      for _ in range(rng.randint(1, 4))])
          for _ in range(12)]
  for template in (rerank_tasks.MONO_TEMPLATE, rerank_tasks.RANKT5_TEMPLATE):
    fmt = rerank_tasks.PairFormat(template)
    for length in (None, 24, 64):
      got = preprocessed(fmt, vocab, rows, length)
      want = [[fmt.tokens(vocab, q, d, length) for d in docs]
              for q, docs in rows]
      assert got == want, (template, length)
  # What a cut row is: EOS last, the suffix before it, within the length.
  fmt = rerank_tasks.PairFormat()
  row = fmt.tokens(BYTES, 'a ' * 20, 'b ' * 40, 48)
  assert len(row) == 48 and row[-1] == 1
  text = BYTES.decode(row[:-1])
  assert text.startswith('Query: a a') and text.endswith('b b Relevant:')
  assert fmt.tokens(BYTES, 'q', 'short doc', 48) == list(
      BYTES.encode('Query: q Document: short doc Relevant:')) + [1]


def test_pair_format_errors():
  with pytest.raises(ValueError, match=r'needs \{query\} once, then '
                     r'\{document\} once'):
    rerank_tasks.PairFormat('Document: {document} Query: {query}')
  with pytest.raises(ValueError, match='pair length 12 leaves 1 tokens'):
    rerank_tasks.PairFormat().tokens(BYTES, 'q', 'd', 12)
  with pytest.raises(ValueError, match="'xquad:<q>-<d>' with languages"):
    rerank_tasks.task_name('xquad:en-xx')
  with pytest.raises(ValueError, match="'flores' is not a set"):
    rerank_tasks.setup(sets=['flores'])


def batches(task, length, n, *, split='train', batch_size=4):
  conv = rerank_tasks.RerankFeatureConverter(num_candidates=n)
  ds = seqio.get_dataset(task, task_feature_lengths={'pairs': length},
                         dataset_split=split, shuffle=False,
                         feature_converter=conv)
  return ds.batch(batch_size).as_numpy_iterator()


@needs['xquad']
def test_xquad_features_through_the_converter():
  rerank_tasks.setup(sets=['xquad:en-en'], num_negatives=3,
                     negative_depth=10, mixture='rerank_test_xquad')
  batch = next(batches('rerank_test_xquad', 96, 5))
  assert batch['pair_tokens'].shape == (4, 5, 96)
  assert batch['pair_tokens'].dtype == np.int32
  assert batch['labels'].shape == batch['teacher_scores'].shape == (4, 5)
  # positive first (grade 1), 3 negatives, one padding candidate
  np.testing.assert_array_equal(batch['labels'], [[1, 0, 0, 0, 0]] * 4)
  assert (batch['pair_tokens'][:, 4] == 0).all()
  assert (batch['pair_tokens'][:, :4, 0] != 0).all()
  assert np.isnan(batch['teacher_scores'][:, :4]).all()   # no teacher
  row = [t for t in batch['pair_tokens'][0, 0].tolist() if t]
  assert row[-1] == 1
  text = BYTES.decode(row[:-1])
  assert text.startswith('Query: ') and text.endswith(' Relevant:')


def check_negatives(data: rerank_tasks.RerankTaskData, split: str):
  qrels = {q.qid: q.qrels for q in data.set.queries[split]}
  examples = data.examples(split)
  assert examples
  for ex in examples:
    assert qrels[ex.qid][ex.doc_ids[0]] >= data.options.min_grade
    assert ex.labels[0] == qrels[ex.qid][ex.doc_ids[0]]
    assert all(qrels[ex.qid].get(d, 0) < 1 for d in ex.doc_ids[1:])
    assert all(label == 0 for label in ex.labels[1:])
    assert len(ex.doc_ids) == len(set(ex.doc_ids))
    ranked = data.ranking(split, data.options.negative_depth)[ex.qid]
    assert all(d in ranked for d in ex.doc_ids[1:])
  return examples


@needs['cranfield']
def test_negatives_are_never_relevant_and_fixed_by_the_seed():
  options = rerank_tasks.MiningOptions(num_negatives=3, negative_depth=20,
                                       min_grade=2)
  data = rerank_tasks.RerankTaskData('rerank_cranfield', 'cranfield',
                                     options)
  for split in rerank_tasks.SPLITS:
    examples = check_negatives(data, split)
  # Cranfield judges several documents per query: a list per positive.
  assert len(examples) > len(data.set.queries['test'])
  again = rerank_tasks.RerankTaskData('rerank_cranfield', 'cranfield',
                                      options).examples('train')
  assert again == data.examples('train')
  other = rerank_tasks.RerankTaskData(
      'rerank_cranfield', 'cranfield',
      rerank_tasks.MiningOptions(num_negatives=3, negative_depth=20,
                                 min_grade=2, seed=1)).examples('train')
  assert [e.doc_ids[0] for e in other] == [e.doc_ids[0] for e in again]
  assert [e.doc_ids for e in other] != [e.doc_ids for e in again]


@needs['xquad']
def test_development_split_is_disjoint_from_train_and_test():
  data = rerank_tasks.RerankTaskData('rerank_xquad_de_en', 'xquad:de-en',
                                     rerank_tasks.MiningOptions())
  s = data.set
  ids = {split: {q.qid for q in qs} for split, qs in s.queries.items()}
  assert not ids['train'] & ids['validation']
  assert not ids['train'] & ids['test']
  assert not ids['validation'] & ids['test']
  assert all(datasets.xquad_split(q) == 'train'
             for q in ids['train'] | ids['validation'])
  assert all(datasets.xquad_split(q) == 'test' for q in ids['test'])
  assert all(rerank_tasks.is_dev(q, 0.1) for q in ids['validation'])
  n = len(ids['train']) + len(ids['validation'])
  assert 0.06 < len(ids['validation']) / n < 0.14
  # the same questions in every language: de-en and en-en agree
  en = rerank_tasks.read_set('xquad:en-en')
  assert {q.qid for q in en.queries['validation']} == ids['validation']
  train_texts = {q.text for q in s.queries['train']}
  assert not any(q.text in train_texts for split in ('validation', 'test')
                 for q in s.queries[split])
  assert sum(s.repeated.values()) > 0        # XQuAD repeats a few
  check_negatives(data, 'validation')
  assert s.doc_ids[0].startswith('en:') and s.lang == 'en'


def write_collection(root):
  """`helpers.write_beir` plus a training query judged non-relevant only."""
  root = helpers.write_beir(root, n_docs=24)
  with open(os.path.join(root, 'queries.jsonl'), 'a', encoding='utf-8') as f:
    f.write(json.dumps({'_id': 'unjudged', 'text': 'cat dog'}) + '\n')
  with open(os.path.join(root, 'qrels', 'train.tsv'), 'a',
            encoding='utf-8') as f:
    f.write('unjudged\td3\t0\n')
  return root


def test_collection_lists_from_a_run_file_with_teacher_scores(tmp_path):
  coll = write_collection(tmp_path / 'coll')
  spec = f'beir:{coll}'
  task = rerank_tasks.task_name(spec)
  assert task == 'rerank_beir_coll'
  queries = {q['_id']: q['text'] for q in map(
      json.loads, open(os.path.join(coll, 'queries.jsonl')))}
  docs = [f'd{i}' for i in range(24)]
  rng = random.Random(0)
  first = {q: {d: float(rng.random()) for d in rng.sample(docs, 12)}
           for q in queries}
  for q in first:   # every query's relevant document is in its run
    first[q][f'd{q[1:].split("_")[0]}' if q != 'unjudged' else 'd3'] = 0.5
  run_path = str(tmp_path / 'first.trec')
  ir_metrics.write_run(run_path, first)
  teacher = {q: {d: 10.0 + i for i, d in enumerate(sorted(docs))}
             for q in queries}
  teacher_path = str(tmp_path / 'teacher.trec')
  ir_metrics.write_run(teacher_path, teacher)
  setup = rerank_tasks.setup(
      sets=[spec], num_negatives=2, negative_depth=6,
      first_stage_runs={task: run_path}, teacher_runs={task: teacher_path},
      mixture='rerank_test_coll')
  data = setup.tasks[task]
  assert data.set.skipped['train'] == 1      # 'unjudged': no relevant doc
  for split in rerank_tasks.SPLITS:
    for ex in check_negatives(data, split):
      top = [d for d, _ in ir_metrics.trec_order(first[ex.qid])][:6]
      assert set(ex.doc_ids[1:]) <= set(top)
      assert ex.teacher_scores == tuple(teacher[ex.qid][d]
                                        for d in ex.doc_ids)
  batch = next(batches(task, 64, 3))
  assert (batch['teacher_scores'] >= 10).all()

  # Errors name the file: a document the corpus lacks (with its line), a
  # query the run lacks, a candidate the teacher did not score.
  lines = open(run_path).read().splitlines()
  lines[4] = lines[4].replace(lines[4].split()[2], 'nonexistent')
  bad = tmp_path / 'bad.trec'
  bad.write_text('\n'.join(lines) + '\n')
  with pytest.raises(ValueError, match=f"{bad}:5: document 'nonexistent' is "
                     'not in the rerank_beir_coll documents'):
    rerank_tasks.setup(sets=[spec], first_stage_runs={task: str(bad)},
                       mixture='rerank_test_bad').tasks[task].examples(
                           'train')
  short = tmp_path / 'short.trec'
  ir_metrics.write_run(str(short), {'q0_0': first['q0_0']})
  with pytest.raises(ValueError, match=f"{short}: no line for query '"):
    rerank_tasks.setup(sets=[spec], first_stage_runs={task: str(short)},
                       mixture='rerank_test_bad').tasks[task].examples(
                           'train')
  partial = tmp_path / 'partial_teacher.trec'
  ir_metrics.write_run(str(partial), {q: dict(list(d.items())[:1])
                                      for q, d in teacher.items()})
  with pytest.raises(ValueError, match=f'{partial}: no teacher score for '
                     "query '.*' and document '.*' \\(a candidate of "
                     'rerank_beir_coll\\)'):
    rerank_tasks.setup(sets=[spec], teacher_runs={task: str(partial)},
                       mixture='rerank_test_bad').tasks[task].examples(
                           'train')
  with pytest.raises(ValueError, match="first_stage_runs: 'rerank_other' "
                     'is not a task of this setup'):
    rerank_tasks.setup(sets=[spec], first_stage_runs={
        'rerank_other': run_path})
  with pytest.raises(FileNotFoundError, match=r"teacher_runs\['rerank_beir"
                     r"_coll'\]: no such run file"):
    rerank_tasks.setup(sets=[spec], teacher_runs={task: 'missing.trec'})


# ----------------------------------------------------------- gin files ---

GIN_FILES = gin_utils.all_gin_files('rerank')


def test_gin_files_exist():
  assert {os.path.basename(f) for f in GIN_FILES} >= {
      'monot5_xquad_tiny.gin', 'rankt5_encdec_xquad_tiny.gin',
      'rankt5_encoder_cranfield_tiny.gin', 'monot5_beir_tiny.gin'}


@pytest.mark.parametrize('gin_file', GIN_FILES)
def test_gin_file_registers_tasks_and_gives_a_finite_loss(gin_file,
                                                          tmp_path):
  bindings = ['train.model_dir = "/tmp/unused"']
  if 'beir' in gin_file:
    coll = helpers.write_beir(tmp_path / 'coll')
    bindings.append(f"rerank_tasks.setup.sets = ['beir:{coll}']")
  else:
    for name in ('xquad', 'cranfield'):
      if name in gin_file and not datasets.available(name):
        pytest.skip(f'no {name} under {datasets.data_root()}')
  gin_utils.parse([gin_file], bindings)
  try:
    runs.task_setup()
    task = gin.query_parameter('train.task')
    lengths = gin.query_parameter('train.task_feature_lengths')
    model = run_dir.configured('train.model', gin_file)
    assert not gin.query_parameter('train.pack')
    ds = seqio.get_dataset(task, task_feature_lengths=lengths,
                           dataset_split='train', shuffle=False,
                           feature_converter=model.FEATURE_CONVERTER_CLS(
                               pack=False))
    batch = next(ds.batch(2).as_numpy_iterator())
    assert batch['pair_tokens'].shape == (2, model.num_candidates,
                                          lengths['pairs'])
    assert batch['pair_tokens'].max() < T5Config().vocab_size
    net = model.make_network(nnx.Rngs(0))
    loss, metrics = nnx.jit(lambda n, b: model.loss_fn(n, b))(
        net, jax.tree.map(jnp.asarray, batch))
    assert np.isfinite(float(loss)) and float(metrics['num_tokens']) == 2
    for split in ('validation', 'test'):   # evaluation and reranking reads
      data = rerank_tasks.last_setup(task).tasks
      assert all(d.set.queries[split] for d in data.values())
  finally:
    gin.clear_config()
