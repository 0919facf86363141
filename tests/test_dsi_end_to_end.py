"""Generative retrieval end to end on real text: a tiny DSI model trained by
the ordinary trainer (gin/dsi/xquad_atomic_tiny.gin, XQuAD English, 240
paragraphs, atomic ids, a SentencePiece vocabulary of the corpus) ranks
held-out questions' paragraphs with constrained beam search far above a
random ranking; the gin-bound processors make evaluation decode only
docids; TREC run files round-trip through pytrec_eval."""

import os

import gin
import jax
import numpy as np
import pytest

from retrieval import datasets
from retrieval.dsi import evaluation as dsi_eval
from retrieval.dsi import dsi_tasks
from retrieval.search import ir_metrics
from rosetta import gin_utils, partitioning
from rosetta.run import plots
from rosetta.run import run_dir
from rosetta.model import encoder_decoder_model
from rosetta.run import runs

STEPS = 400
LENGTHS = {'inputs': 64, 'targets': 4}


@pytest.fixture(scope='module')
def one_device():
  return partitioning.make_mesh(data=1, devices=jax.devices()[:1])


@pytest.fixture(scope='module')
def dsi_run(tmp_path_factory, one_device):
  if not datasets.available('xquad'):
    pytest.skip('no XQuAD under the data directory')
  d = str(tmp_path_factory.mktemp('dsi'))
  corpus = dsi_tasks.xquad_corpus(['en'], ['en'])
  spm = dsi_tasks.corpus_vocabulary(corpus, os.path.join(d, 'en.model'),
                                    vocab_size=1000)
  gin_utils.parse(['dsi/xquad_atomic_tiny.gin'], [
      f'train.model_dir = "{d}"', f'dsi_tasks.setup.vocabulary = "{spm}"',
      'VOCAB = 1280',                       # 1,000 pieces + 240 docids
      "dsi_tasks.setup.index_languages = ['en']",
      "dsi_tasks.setup.query_languages = ['en']",
      f'dsi_tasks.setup.mapping_path = "{d}/docids.json"',
      f'train.task_feature_lengths = {LENGTHS}',
      f'train.total_steps = {STEPS}', f'train.eval_period = {STEPS}',
      'train.eval_num_examples = 64',
      f'train.checkpoint_period = {STEPS}',
      'encoder_decoder.T5Config.emb_dim = 64',
      'encoder_decoder.T5Config.mlp_dim = 128',
      'optimizers.learning_rate_schedule.base = 3e-3'], finalize=False)
  gin.finalize()
  try:
    runs.train(mesh=one_device, config_text=run_dir.run_config_text())
    setup = dsi_tasks.last_setup('xquad_dsi')
    wrapper = encoder_decoder_model.EncoderDecoderModel()    # with the gin processors
    tr, state, step = run_dir.RunDir(d).restore_for_inference(
        wrapper, one_device)
    yield dict(dir=d, setup=setup, wrapper=wrapper, trainer=tr,
               network=tr.network(state['params']), step=step)
  finally:
    gin.clear_config()


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_beats_random_ranking_by_a_wide_margin(dsi_run):
  s, d = dsi_run['setup'], dsi_run['dir']
  assert dsi_run['step'] == STEPS
  queries = s.corpus.queries['test']
  assert len(queries) >= 300 and {q.language for q in queries} == {'en'}
  result = dsi_eval.evaluate_dsi(dsi_run['network'], s,
                                 input_length=LENGTHS['inputs'],
                                 run_dir=os.path.join(d, 'trec'), tag='dsi')
  en = result['en']
  random_hits10 = 10 / len(s.corpus.doc_keys)          # 0.042
  # With 366 queries a random ranking's Hits@10 has std ~0.01.
  assert en['Hits@10'] >= 3 * random_hits10, en
  assert en['Hits@1'] <= en['MRR@10'] <= en['Hits@10']
  assert result['average'] == {m: en[m] for m in dsi_eval.METRICS}
  # The run file holds 10 distinct docids per query (the beams) and
  # pytrec_eval reads back the same numbers.
  run = ir_metrics.read_run(os.path.join(d, 'trec', 'dsi.en.trec'))
  assert len(run) == len(queries)
  assert all(len(docs) == 10 for docs in run.values())
  assert set().union(*run.values()) <= set(s.corpus.doc_keys)
  again = ir_metrics.evaluate(run, dsi_eval.qrels_of(queries), ks=(1, 10))
  assert {m: again[m] for m in dsi_eval.METRICS} == {
      m: en[m] for m in dsi_eval.METRICS}
  # Training questions are memorised: far better than held-out ones.
  train = dsi_eval.evaluate_dsi(dsi_run['network'], s,
                                queries=s.corpus.queries['train'][:128],
                                input_length=LENGTHS['inputs'])
  print(f'DSI test {en}; train {train["en"]}')
  assert train['en']['Hits@10'] > en['Hits@10']


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_gin_processors_constrain_evaluation(dsi_run, one_device):
  """The gin file binds `EncoderDecoderModel.processors` to
  `dsi_tasks.processors_for`: predict_batch, hence the trainer's periodic
  evaluation and `rosetta evaluate` (both `runs._run_evaluators`), decodes
  only docids, even from an untrained model that, unconstrained, does
  not."""
  s, wrapper = dsi_run['setup'], dsi_run['wrapper']
  (proc,) = wrapper.processors()
  assert proc is s.constraint()
  scalars = plots.read_scalars(dsi_run['dir'])
  assert scalars['eval/xquad_dsi_retrieval']['valid_docid_rate'] == (
      [STEPS], [100.0])
  cfg = wrapper.config
  untrained = wrapper.get_initial_variables(
      1, partitioning.Partitioner(one_device))
  texts = [q.text for q in s.corpus.queries['test'][:16]]  # eval's shape
  batch = {'encoder_input_tokens': dsi_eval.encode_texts(
      texts, s.vocabulary.text_vocabulary, LENGTHS['inputs'])}
  free = encoder_decoder_model.EncoderDecoderModel(cfg, max_decode_length=4,
                                    processors=None)
  valid = lambda toks: [s.trie.contains(list(t)) for t in np.asarray(toks)]
  assert all(valid(wrapper.predict_batch(untrained, batch)))
  assert not all(valid(free.predict_batch(untrained, batch)))
