"""Parallel corpora of your own from gin: Moses pairs, TSV, JSONL and a
local TFDS dataset give the exact pairs per direction; configuration
mistakes are named; nmt.setup trains its vocabulary on them and registers
streamed tasks; `rosetta vocab` reads files, gin corpora and tasks; a bad
line surfaces from the training input as its own error."""

import gzip
import os

import gin
import jax
import pytest
import seqio

from rosetta import vocab_command
from rosetta.data import bad_input
from rosetta.data import parallel_corpus as pc
from rosetta.data import pipeline
from rosetta.data import record_files


def write(path, lines):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, 'wt', encoding='utf-8') as f:
    f.write(''.join(l + '\n' for l in lines))
  return str(path)


EN = ['Hello.', 'Thank you.', 'Good night.', 'See you soon.']
FR = ['Bonjour.', 'Merci.', 'Bonne nuit.', 'À bientôt.']
DE = ['Hallo.', 'Danke.', 'Gute Nacht.', 'Bis bald.']


def pairs(source, split='train'):
  return [(r['source'].decode(), r['target'].decode()) for r in
          record_files.rows(source.get_dataset(split, shuffle=False))]


def test_moses_pairs_with_pair_and_globs(tmp_path):
  for part, (lo, hi) in {'p1': (0, 3), 'p2': (3, 4)}.items():
    write(tmp_path / part / 'train.en-fr.en.gz', EN[lo:hi])
    write(tmp_path / part / 'train.en-fr.fr.gz', FR[lo:hi])
  write(tmp_path / 'dev.en', EN[:1])
  write(tmp_path / 'dev.fr', FR[:1])
  corpus = pc.ParallelCorpus(
      'mine', {'train': str(tmp_path / '*' / 'train.{pair}.{lang}.gz'),
               'validation': str(tmp_path / 'dev.{lang}')}, 'moses')
  assert pairs(corpus.source('en', 'fr')) == list(zip(EN, FR))
  assert pairs(corpus.source('fr', 'en')) == list(zip(FR, EN))
  assert pairs(corpus.source('fr', 'en'), 'validation') == [(FR[0], EN[0])]
  write(tmp_path / 'lonely' / 'x.de', DE)
  lonely = pc.ParallelCorpus('l', {'train': str(tmp_path / '*' / 'x.{lang}')},
                             'moses')
  with pytest.raises(FileNotFoundError,
                     match=r'x.de has no aligned en file .*lonely/x.en'):
    lonely.source('de', 'en')


def test_tsv_by_position_header_and_per_pair_files(tmp_path):
  # Column order follows the pair name: 'de-en' holds German first.
  write(tmp_path / 'de-en.tsv', [f'{d}\t{e}' for d, e in zip(DE, EN)])
  by_pos = pc.ParallelCorpus('t', {'train': str(tmp_path / '{pair}.tsv')})
  assert pairs(by_pos.source('en', 'de')) == list(zip(EN, DE))
  write(tmp_path / 'h.tsv', ['id\ttext_fr\ttext_en'] +
        [f'{i}\t{f}\t{e}' for i, (f, e) in enumerate(zip(FR, EN))])
  by_name = pc.ParallelCorpus('h', {'train': {'fr-en': str(tmp_path / 'h.tsv')}},
                              columns='text_{lang}', header=True)
  assert pairs(by_name.source('en', 'fr')) == list(zip(EN, FR))
  with pytest.raises(ValueError, match=r'no files for the pair en-de; '
                     r"pairs: \['fr-en'\]"):
    by_name.source('en', 'de')


def test_jsonl_in_the_hugging_face_translation_layout(tmp_path):
  import json
  write(tmp_path / 'train.jsonl', [json.dumps(
      {'translation': {'de': d, 'en': e}}, ensure_ascii=False)
                                   for d, e in zip(DE, EN)])
  corpus = pc.ParallelCorpus('j', {'train': str(tmp_path / '*.jsonl')},
                             'jsonl', fields='translation.{lang}')
  assert pairs(corpus.source('de', 'en')) == list(zip(DE, EN))


def test_a_tfds_translation_dataset_from_a_local_data_dir(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  import tensorflow as tf
  splits = {'train': tf.data.Dataset.from_tensor_slices({'de': DE, 'en': EN})}
  tfds.dataset_builders.TfDataBuilder(
      name='tiny_translate', config='de-en', version='1.0.0',
      split_datasets=splits, data_dir=str(tmp_path),
      features=tfds.features.FeaturesDict({'de': tfds.features.Text(),
                                           'en': tfds.features.Text()}),
  ).download_and_prepare()
  corpus = pc.ParallelCorpus('wmt', format='tfds',
                             tfds_name='tiny_translate/{pair}:1.0.0',
                             tfds_data_dir=str(tmp_path),
                             pair_order='english_last')
  got = pairs(corpus.source('en', 'de'))
  assert sorted(got) == sorted(zip(EN, DE))
  with pytest.raises(ValueError, match='with its version'):
    pc.ParallelCorpus('wmt', format='tfds', tfds_name='wmt14_translate/de-en')


@pytest.mark.parametrize('kwargs,message', [
    (dict(name='my corpus', splits={'train': 'x'}), 'letters, digits and _'),
    (dict(name='c', splits={'train': 'x'}, format='csv'),
     r"format='csv': expected one of \('tsv', 'jsonl', 'moses', 'tfds'\)"),
    (dict(name='c', splits=None), 'give file patterns per split'),
    (dict(name='c', splits={'train': 'x'}, columns='{lang}'),
     'names header columns: set header=True'),
    (dict(name='c', splits={'train': 'x'}, pair_order='random'),
     "pair_order='random'"),
    (dict(name='c', splits={'train': 'x'}, on_bad_line='ignore'),
     r"ParallelCorpus\(c\).on_bad_line='ignore'"),
])
def test_configuration_mistakes_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    pc.ParallelCorpus(**kwargs)


def test_moses_pattern_needs_lang(tmp_path):
  corpus = pc.ParallelCorpus('m', {'train': str(tmp_path / 'train.txt')},
                             'moses')
  with pytest.raises(ValueError, match=r"moses pattern '.*train.txt' has no "
                     r'\{lang\}'):
    corpus.source('en', 'de')


@pytest.fixture
def corpus_files(tmp_path):
  from rosetta.data import django_po
  fr = [(e, f) for e, f in django_po.django_pairs(['fr'])['fr']
        if not any(c in e + f for c in '\n\r\t')]
  train, dev = fr[:-40], fr[-40:]
  for split, rows in (('train', train), ('dev', dev)):
    write(tmp_path / f'{split}.en', [e for e, _ in rows])
    write(tmp_path / f'{split}.fr', [f for _, f in rows])
  return tmp_path, train, dev


def test_nmt_setup_trains_the_vocabulary_on_the_corpus_and_streams_tasks(
    corpus_files):
  from translation import nmt
  root, train, _ = corpus_files
  corpus = pc.ParallelCorpus('po', {'train': str(root / 'train.{lang}'),
                                    'validation': str(root / 'dev.{lang}')},
                             'moses')
  setup = nmt.setup(corpus=corpus, languages=['fr'], zero_shot=False,
                    vocab_path=str(root / 'vocab' / 'spm.model'),
                    vocab_size=600, mixture_name='po_mixture')
  assert setup.task_names == ['po_translate_en_fr', 'po_translate_fr_en']
  task = seqio.get_mixture_or_task('po_translate_fr_en')
  ex = next(task.get_dataset(None, 'train', shuffle=False).as_numpy_iterator())
  assert ex['targets_pretokenized'].decode() == train[0][0]
  assert setup.vocabulary.decode(ex['targets'].tolist()) == train[0][0]
  assert ex['inputs_pretokenized'].decode() == '<2en> ' + train[0][1]
  from rosetta.data import mixtures
  assert mixtures.training_examples('po_translate_en_fr') == len(train)
  batch = next(seqio.get_mixture_or_task('po_mixture').get_dataset(
      {'inputs': 32, 'targets': 32}, 'train', seed=0).as_numpy_iterator())
  assert batch['targets'][-1] == 1  # EOS after trimming


def test_vocab_command_from_files_gin_corpus_and_task(corpus_files, tmp_path,
                                                      capsys):
  root, _, _ = corpus_files
  out = str(tmp_path / 'v1.model')
  assert vocab_command.main([
      '--files', f'en={root}/train.en', f'fr={root}/train.fr',
      '--vocab_size', '500', '--output', out]) == 0
  gin_file = tmp_path / 'corpus.gin'
  gin_file.write_text(
      'import rosetta.data.parallel_corpus\n'
      "parallel_corpus.ParallelCorpus.name = 'po'\n"
      "parallel_corpus.ParallelCorpus.format = 'moses'\n"
      f"parallel_corpus.ParallelCorpus.splits = {{'train': '{root}/train.{{lang}}'}}\n")
  out2 = str(tmp_path / 'v2.model')
  try:
    assert vocab_command.main([
        '--gin_file', str(gin_file), '--corpus', 'gin', '--languages', 'fr',
        '--vocab_size', '500', '--output', out2]) == 0
  finally:
    gin.clear_config()
  with open(out, 'rb') as a, open(out2, 'rb') as b:
    assert a.read() == b.read()  # the same sentences either way
  assert 'x 2 groups (en, fr)' in capsys.readouterr().out
  out3 = str(tmp_path / 'v3.model')
  try:
    assert vocab_command.main([
        '--gin_file', 'experiments/tiny_django_en_fr.gin', '--task',
        'django_translate_en_fr_bytes', '--vocab_size', '500',
        '--output', out3]) == 0
  finally:
    gin.clear_config()
  assert ('x 2 groups (django_translate_en_fr_bytes:source, '
          'django_translate_en_fr_bytes:target)') in capsys.readouterr().out
  with pytest.raises(SystemExit):
    vocab_command.main(['--files', f'en={root}/missing*', '--vocab_size',
                        '500', '--output', out])
  assert "no file matches" in capsys.readouterr().err


def test_a_bad_line_stops_training_input_with_its_own_error(tmp_path):
  write(tmp_path / 'train.tsv', ['Hello.\tBonjour.', 'Thank you.',
                                 'Good night.\tBonne nuit.'])
  name = 'badline_translate_en_fr'
  from rosetta.data import text_pairs
  text_pairs.register_text_pair_task(
      name, record_files.RecordFileSource(
          {'train': str(tmp_path / 'train.tsv')},
          record_files.Tsv({'source': 0, 'target': 1}, num_columns=2)),
      seqio.ByteVocabulary(), replace=True)
  mesh = jax.make_mesh((jax.device_count(), 1, 1), ('data', 'fsdp', 'model'))
  pipe = pipeline.InputPipeline(
      name, split='train', task_feature_lengths={'inputs': 16, 'targets': 16},
      global_batch_size=jax.device_count(), partitioner=mesh, shuffle=False)
  with pytest.raises(bad_input.BadInputError) as e:
    next(pipe)
  assert str(e.value) == (f'{tmp_path}/train.tsv:2: expected 2 tab-separated '
                          'columns, found 1')
