"""Translation tasks (language token, metrics, names) and mixtures (fixed and
annealed temperature: formula, observed frequencies, determinism, resume).

The SentencePiece vocabulary is a tiny one trained here on Django strings;
tasks on Django run everywhere, Tatoeba/FLORES ones skip without the data.
"""

import numpy as np
import pytest
import seqio

from rosetta.data import evaluation
from rosetta.data import pipeline
from rosetta.data import text_pairs
from rosetta import vocab as vocab_lib
from rosetta.data import mixtures
from rosetta.data import corpora as sources
from translation import tasks

BYTES = seqio.ByteVocabulary()
TOKEN_LANGS = [l.code for l in sources.LANGUAGES]


@pytest.fixture(scope='module')
def spm(tmp_path_factory):
  texts = sources.training_texts('django', ['en', 'de', 'fr'])
  path = str(tmp_path_factory.mktemp('vocab') / 'spm.model')
  vocab_lib.train_sentencepiece(
      vocab_lib.balanced_sample(texts, per_language=500), path,
      vocab_size=500, language_tokens=TOKEN_LANGS)
  return vocab_lib.load_vocabulary(path, languages=TOKEN_LANGS)


def examples(name, split, lengths=None, n=None):
  ds = seqio.get_mixture_or_task(name).get_dataset(
      lengths, split=split, shuffle=False)
  if n:
    ds = ds.take(n)
  return list(ds.as_numpy_iterator())


# ---------------------------------------------------------------- names ---

def test_names_and_directions():
  assert tasks.task_name('tatoeba', 'eng', 'deu') == 'tatoeba_translate_en_de'
  assert tasks.parse_directions('en-de, deu-eng') == [('en', 'de'),
                                                      ('de', 'en')]
  assert tasks.english_centric(['de', 'en', 'fr']) == [
      ('en', 'de'), ('de', 'en'), ('en', 'fr'), ('fr', 'en')]
  assert tasks.zero_shot_directions(
      ['en', 'de', 'fr'], tasks.english_centric(['de', 'fr'])) == [
          ('de', 'fr'), ('fr', 'de')]
  with pytest.raises(ValueError, match='expected "src-tgt"'):
    tasks.parse_directions('en_de')
  with pytest.raises(ValueError, match='into itself'):
    tasks.parse_directions('de-deu')
  with pytest.raises(ValueError, match='unknown corpus'):
    tasks.task_name('wmt', 'en', 'de')


# ---------------------------------------------------------------- tasks ---

def test_language_token_is_first_input_token(spm):
  names = tasks.register_translation_tasks(spm, 'django', 'en-fr,fr-en')
  assert names == ['django_translate_en_fr', 'django_translate_fr_en']
  for name, tgt in zip(names, ('fr', 'en')):
    token = vocab_lib.language_token_id(spm, tgt)
    exs = examples(name, 'validation')
    assert len(exs) > 20
    for ex in exs:
      assert ex['inputs'][0] == token and ex['inputs'][-1] == 1
      assert token not in ex['inputs'][1:]
      assert ex['inputs_pretokenized'].decode().startswith(f'<2{tgt}> ')
      src = ex['inputs_pretokenized'].decode()[len(f'<2{tgt}> '):]
      assert list(ex['inputs'][:-1]) == tasks.encode_source(spm, src, tgt)
    # truncation keeps the tag first and EOS last
    for ex in examples(name, 'train', {'inputs': 4, 'targets': 4}, n=50):
      assert ex['inputs'][0] == token and ex['inputs'][-1] == 1
      assert len(ex['inputs']) <= 4
  # idempotent: registering again (another vocabulary) replaces
  assert tasks.register_translation_tasks(
      BYTES, 'django', [('en', 'fr')]) == ['django_translate_en_fr']
  ex = examples('django_translate_en_fr', 'validation', n=1)[0]
  assert bytes((ex['inputs'][:6] - 3).tolist()) == b'<2fr> '  # tag as text
  assert tasks.encode_source(BYTES, 'Hi', 'fr') == [b + 3 for b in
                                                     b'<2fr> Hi']


def test_metrics_through_seqio_evaluator(spm):
  """Perfect predictions score 100: the metric fns plug into seqio, and
  decoding reproduces the raw references exactly (identity normalization)."""
  (name,) = tasks.register_translation_tasks(spm, 'django', 'en-de')
  evaluator = evaluation.make_evaluator(name, 'test', async_compute_metrics=False)

  def predict_fn(ds, model_feature_shapes=None):
    return [(int(i), f['decoder_target_tokens'].tolist())
            for i, f in ds.as_numpy_iterator()]
  metrics, _ = evaluator.evaluate(compute_metrics=True, step=0,
                                  predict_fn=predict_fn,
                                  score_fn=lambda ds, **kw: [])
  result = metrics.result()[name]
  assert (result['bleu'], result['chrf']) == pytest.approx((100, 100))
  assert 'off_target' in result


def test_vocabulary_without_language_tokens_is_refused(tmp_path):
  texts = sources.training_texts('django', ['en', 'de'])
  path = str(tmp_path / 'plain.model')
  vocab_lib.train_sentencepiece(vocab_lib.balanced_sample(texts), path,
                                vocab_size=400)
  plain = seqio.SentencePieceVocabulary(path)
  with pytest.raises(ValueError, match="no piece '<2de>'.*rosetta vocab"):
    tasks.register_translation_tasks(plain, 'django', 'en-de')


@pytest.mark.skipif(not sources.available('tatoeba'),
                    reason='no Tatoeba Challenge files in the data dir')
def test_tatoeba_tasks(spm):
  names = tasks.register_translation_tasks(spm, 'tatoeba', 'en-de,de-en',
                                           suffix='_spm')
  assert names == ['tatoeba_translate_en_de_spm', 'tatoeba_translate_de_en_spm']
  task = seqio.get_mixture_or_task(names[1])
  assert set(task.splits) == {'train', 'validation', 'test'}
  en = vocab_lib.language_token_id(spm, 'en')
  exs = examples(names[1], 'test')
  assert len(exs) == len(sources.tatoeba_splits('de')['test'])
  assert all(ex['inputs'][0] == en for ex in exs)
  assert task.metric_fns[0].__name__ == 'translation_metrics_en'


@pytest.mark.skipif(not sources.available('flores'),
                    reason='no FLORES-200 devtest in the data dir')
def test_zero_shot_flores_tasks(spm):
  names = tasks.register_zero_shot_eval_tasks(
      spm, ['en', 'de', 'fr'], tasks.english_centric(['de', 'fr']))
  assert names == ['flores_translate_de_fr', 'flores_translate_fr_de']
  task = seqio.get_mixture_or_task(names[0])
  assert set(task.splits) == {'validation', 'test'}
  exs = examples(names[0], 'validation')
  assert len(exs) == len(sources.flores_validation_lines())
  assert all(ex['inputs'][0] == vocab_lib.language_token_id(spm, 'fr')
             for ex in exs)


def test_metrics_per_target_language():
  """translation.metrics' fns: BLEU tokenised for the target language."""
  (de,) = tasks.metric_fns('deu')
  assert de.__name__ == 'translation_metrics_de'
  assert de(['Das ist gut.'], ['Das ist gut.'])['bleu'] == pytest.approx(100)
  # unsegmented Chinese: 13a sees one "word" and scores 0; 'zh' splits CJK
  ref, hyp = ['我们现在有四个月大的老鼠。'], ['我们现在有三个月大的老鼠。']
  assert de(ref, hyp)['bleu'] == 0.0
  assert tasks.metric_fns('zh')[0](ref, hyp)['bleu'] > 40


# ------------------------------------------------------------- mixtures ---

COUNTS = {'mix_a': 4000, 'mix_b': 400, 'mix_c': 40}


@pytest.fixture(scope='module')
def toy_tasks():
  """Three byte tasks whose inputs start with their letter (a, b, c)."""
  for name, n in COUNTS.items():
    letter = name[-1]
    text_pairs.register_text_pair_task(
        name, text_pairs.pairs_source({'train': [(f'{letter}{i}', f'{i}')
                                           for i in range(n)]}),
        BYTES, replace=True)
  return sorted(COUNTS)


def which_task(ex):
  return 'abc'.index(chr(int(ex['inputs'][0]) - 3))


def test_temperature_rates_formula():
  p = mixtures.temperature_rates([10000, 1000, 100], 5.0)
  np.testing.assert_allclose(p, [0.493, 0.311, 0.196], atol=1e-3)
  np.testing.assert_allclose(mixtures.temperature_rates([10000, 1000, 100], 1),
                             [10000 / 11100, 1000 / 11100, 100 / 11100])
  assert mixtures.temperature_rates({'x': 4, 'y': 1}, 2) == pytest.approx(
      {'x': 2 / 3, 'y': 1 / 3})
  np.testing.assert_allclose(
      mixtures.choice_probabilities([4, 1], [0, 50, 100, 200], 1, 2, 100),
      [[.8, .2], [4**(1/1.5) / (4**(1/1.5) + 1), 1 / (4**(1/1.5) + 1)],
       [2 / 3, 1 / 3], [2 / 3, 1 / 3]])


def assert_frequencies(choices, expected_counts):
  """Each observed count within 4.5 standard errors of its expectation."""
  choices = np.asarray(choices)
  observed = np.bincount(choices, minlength=len(expected_counts[0]))
  expected = expected_counts.sum(0)
  var = (expected_counts * (1 - expected_counts)).sum(0)
  z = (observed - expected) / np.sqrt(var)
  assert np.all(np.abs(z) < 4.5), (observed, expected, z)


def test_fixed_temperature_mixture_frequencies(toy_tasks):
  mixtures.register_temperature_mixture('mix_t5', toy_tasks, temperature=5)
  mix = seqio.get_mixture_or_task('mix_t5')
  p = mixtures.temperature_rates([COUNTS[t] for t in toy_tasks], 5)
  assert [mix.get_rate(t) / mix.total_rate for t in mix.tasks] == (
      pytest.approx(list(p)))
  ds = mix.get_dataset({'inputs': 8, 'targets': 8}, split='train', seed=3)
  draws = [which_task(ex) for ex in ds.take(20_000).as_numpy_iterator()]
  assert_frequencies(draws, np.tile(p, (20_000, 1)))


def test_annealed_choice_stream_frequencies():
  counts, t0, t1, k = [4000, 400, 40], 1.0, 5.0, 40_000
  stream = mixtures.choice_dataset(counts, seed=11, t0=t0, t1=t1,
                                   anneal_examples=k)
  draws = next(stream.take(60_000).batch(60_000).as_numpy_iterator())
  # start of the schedule (T rises from 1 to 1.5 over the window)
  idx = np.arange(20_000)
  assert_frequencies(draws[idx], mixtures.choice_probabilities(
      counts, idx, t0, t1, k))
  # after the schedule: constant T1 = 5
  assert_frequencies(draws[40_000:],
                     np.tile(mixtures.temperature_rates(counts, t1),
                             (20_000, 1)))
  # the two ends differ clearly: the schedule is doing something
  assert (draws[:5000] == 0).mean() > 0.8 > 0.6 > (draws[-5000:] == 0).mean()
  again = mixtures.choice_dataset(counts, seed=11, t0=t0, t1=t1,
                                  anneal_examples=k)
  assert next(again.skip(1234).batch(100).as_numpy_iterator()).tolist() == (
      draws[1234:1334].tolist())


def test_annealed_mixture_follows_stream_and_resumes(toy_tasks):
  mixtures.register_annealed_mixture('mix_annealed', toy_tasks, t0=1, t1=5,
                                     anneal_examples=2000)
  mix = seqio.get_mixture_or_task('mix_annealed')
  assert isinstance(mix, mixtures.AnnealedMixture)
  assert mix.temperature(1000) == 3.0
  ds = mix.get_dataset({'inputs': 8, 'targets': 8}, split='train', seed=7)
  got = [which_task(ex) for ex in ds.take(3000).as_numpy_iterator()]
  stream = mixtures.choice_dataset([COUNTS[t] for t in toy_tasks], seed=7,
                                   t0=1, t1=5, anneal_examples=2000)
  assert got == list(stream.take(3000).as_numpy_iterator())

  # the trainer's path: packed local batches, rebuilt and skipped on resume
  def batches(skip=0, n=8):
    ds = pipeline.make_local_dataset(
        'mix_annealed', split='train', task_feature_lengths={
            'inputs': 16, 'targets': 16}, local_batch_size=4, seed=5)
    return [{k: v.tolist() for k, v in b.items()}
            for b in ds.skip(skip).take(n).as_numpy_iterator()]
  first = batches()
  assert batches() == first                     # deterministic
  assert batches(skip=5, n=3) == first[5:]      # resume = rebuild + skip


def test_per_task_seeds_decorrelate_parallel_directions():
  """Two same-size, same-order sources: seqio alone would shuffle them with
  one seed into one order."""
  pairs = [(f's{i}', f't{i}') for i in range(200)]
  for name in ('par_x', 'par_y'):
    text_pairs.register_text_pair_task(name, text_pairs.pairs_source({'train': pairs}),
                                 BYTES, replace=True)
  mix = mixtures.register_temperature_mixture('par_mix', ['par_x', 'par_y'], 1)

  def order(task):
    ds = mix.get_task_dataset(task, {'targets'}, {'inputs': 8, 'targets': 8},
                              'train', False, True, 1)
    return [bytes((e['targets'][:-1] - 3).tolist()) for e in ds.take(20)
            .as_numpy_iterator()]
  x, y = order(mix.tasks[0]), order(mix.tasks[1])
  assert x != y and order(mix.tasks[0]) == x
