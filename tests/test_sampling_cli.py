"""Sampling and n-best from `rosetta translate` and `rosetta infer`.

On a tiny run (an HF checkpoint made by the test, `rosetta import`ed): the
n-best JSONL holds beam search's n best with their scores (with alpha = 0,
each score is the sequence's teacher-forced log-likelihood), the first is
the 1-best output; samples are reproducible from the seed, sample 0 is the
1-best sample, top-k = 1 sampling is greedy search; bad combinations are
refused before any work.
"""

import json
import os

import gin
import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from rosetta import cli  # noqa: E402
from rosetta.decoding import algorithms as decoding  # noqa: E402
from rosetta.decoding.algorithms import DecodeOptions  # noqa: E402
from translation import translate  # noqa: E402

pytestmark = pytest.mark.peers

LINES = ['Save and continue', 'Delete', '', 'Add another one']
GIN = ['--gin_file', 'experiments/tiny_django_en_fr.gin']
FAST = ['--max_length', '8', '--no_progress', '--target_lang', 'fr']


def cli_main(argv):
  try:
    return cli.main(argv)
  finally:
    gin.clear_config()


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  d = tmp_path_factory.mktemp('sampling')
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2,
      num_heads=4, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
      dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
      decoder_start_token_id=0)
  transformers.T5ForConditionalGeneration(config).save_pretrained(
      str(d / 'hf'))
  assert cli_main(['import', '--hf', str(d / 'hf'), '--output',
                   str(d / 'run'), *GIN]) == 0
  (d / 'in.txt').write_text('\n'.join(LINES) + '\n', encoding='utf-8')
  return str(d / 'run'), d


def translate_to(run, d, name, *flags):
  out = d / name
  assert translate.main(['--checkpoint', run, '--input', str(d / 'in.txt'),
                         '--output', str(out), *FAST, *flags]) == 0
  text = out.read_text(encoding='utf-8')
  if '--nbest' in flags:
    return [json.loads(line) for line in text.splitlines()]
  return text.splitlines()


@pytest.fixture(scope='module')
def translator(run):
  try:
    return translate.Translator(run[0])
  finally:
    gin.clear_config()


def encoded_line(translator, text):
  ids = translator.encode(text, 'fr', 256)
  x = np.zeros((1, -(-len(ids) // 16) * 16), np.int32)  # as translate pads
  x[0, :len(ids)] = ids
  return x


def as_text(translator, tokens):
  ids = list(tokens)
  ids = ids[:ids.index(1)] if 1 in ids else ids
  return translator.vocabulary.decode([t for t in ids if t])


@pytest.mark.slow
def test_nbest_are_beam_searchs_best_with_their_scores(run, translator):
  path, d = run
  nbest = translate_to(path, d, 'nbest.jsonl', '--beam_size', '4',
                       '--alpha', '0', '--nbest', '3')
  best = translate_to(path, d, 'best.txt', '--beam_size', '4',
                      '--alpha', '0')
  assert [r['input'] for r in nbest] == LINES
  assert nbest[2]['nbest'] == []   # an empty line
  options = DecodeOptions(num_beams=4, alpha=0.0, max_decode_length=8)
  for record, one in zip(nbest, best):
    if not record['input']:
      assert one == ''
      continue
    scores = [h['score'] for h in record['nbest']]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert record['nbest'][0]['text'] == one
    x = encoded_line(translator, record['input'])
    tokens, api_scores = decoding.decode_nbest(translator.network, x,
                                               options, 3)
    assert [h['text'] for h in record['nbest']] == [
        as_text(translator, t) for t in np.asarray(tokens[0])]
    np.testing.assert_allclose(scores, np.asarray(api_scores[0]), rtol=1e-5)
    # alpha = 0: a beam's score is its log-likelihood under the model.
    likelihood = [float(decoding.score_sequences(
        translator.network, x, tokens[:, i])[0]) for i in range(3)]
    np.testing.assert_allclose(scores, likelihood, rtol=1e-4)


@pytest.mark.slow
def test_samples_follow_the_seed(run, translator):
  path, d = run
  sampling = ['--sampling', '--temperature', '0.8', '--top_p', '0.95']
  first = translate_to(path, d, 's1.jsonl', *sampling, '--seed', '3',
                       '--nbest', '3')
  again = translate_to(path, d, 's2.jsonl', *sampling, '--seed', '3',
                       '--nbest', '3')
  other = translate_to(path, d, 's3.jsonl', *sampling, '--seed', '4',
                       '--nbest', '3')
  one = translate_to(path, d, 's4.txt', *sampling, '--seed', '3')
  assert first == again
  assert first != other
  assert [len(r['nbest']) for r in first] == [3, 3, 0, 3]
  # Sample 0 is the 1-best sample; the others are other draws.
  assert [r['nbest'][0]['text'] if r['nbest'] else '' for r in first] == one
  assert any(len({h['text'] for h in r['nbest']}) > 1 for r in first)
  # Each sample's score is its log-probability under the model (temperature
  # and top-p choose the tokens, they do not rescale the score).
  x = encoded_line(translator, LINES[0])
  options = DecodeOptions(temperature=0.8, top_p=0.95, seed=3,
                          max_decode_length=8)
  tokens, scores = decoding.decode_nbest(translator.network, x, options, 3)
  likelihood = [float(decoding.score_sequences(
      translator.network, x, tokens[:, i])[0]) for i in range(3)]
  np.testing.assert_allclose(np.asarray(scores[0]), likelihood, rtol=1e-4)


def test_top_k_1_sampling_is_greedy_search(run):
  path, d = run
  greedy = translate_to(path, d, 'g.txt', '--beam_size', '1')
  assert translate_to(path, d, 'k1.txt', '--sampling', '--top_k', '1',
                      '--seed', '7') == greedy
  assert translate_to(path, d, 'g.jsonl', '--beam_size', '1',
                      '--nbest', '1')[0]['nbest'][0]['text'] == greedy[0]


@pytest.mark.parametrize('flags,message', [
    (['--beam_size', '1', '--nbest', '2'],
     '--nbest 2: greedy search has one output; use --beam_size 2 or more, '
     'or --sampling'),
    (['--beam_size', '4', '--nbest', '5'],
     '--nbest 5: more outputs than beams; use --beam_size 5 or more'),
    (['--nbest', '0'], '--nbest 0: must be positive'),
    (['--sampling', '--temperature', '0'],
     '--sampling --temperature 0: sampling needs a temperature > 0'),
])
def test_bad_combinations_are_refused_first(flags, message, capsys):
  with pytest.raises(SystemExit) as e:
    translate.main(['--checkpoint', '/nonexistent_run', '--target_lang',
                    'fr', *flags])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().endswith(message)


@pytest.mark.slow
def test_infer_writes_nbest_and_samples(run, tmp_path):
  path, _ = run
  common = ['infer', '--gin_file=models/tiny.gin',
            '--gin_file=runs/infer.gin',
            '--gin_bindings=import translation.example_tasks',
            f"--gin.infer.model_dir='{path}'",
            "--gin.infer.task='django_translate_en_fr_bytes'",
            '--gin.infer.num_examples=3', '--gin.infer.batch_size=8',
            '--gin.encoder_decoder_model.EncoderDecoderModel.'
            'max_decode_length=8']

  def infer(name, *bindings):
    out = tmp_path / name
    assert cli_main([*common, f"--gin.infer.output_path='{out}'",
                     *bindings]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]

  beams = infer('beams.jsonl', '--gin.infer.num_decodes=2',
                '--gin.encoder_decoder_model.EncoderDecoderModel.num_beams=4')
  assert len(beams) == 3
  for record in beams:
    scores = [p['score'] for p in record['predictions']]
    assert len(scores) == 2 and scores[0] >= scores[1]
    assert record['predictions'][0]['text'] == record['prediction']
  sample = ['--gin.infer.num_decodes=2',
            '--gin.encoder_decoder_model.EncoderDecoderModel.temperature=1.0']
  seeded = infer('s1.jsonl', *sample)
  assert infer('s2.jsonl', *sample) == seeded
  assert infer('s3.jsonl', *sample, '--gin.encoder_decoder_model.'
               'EncoderDecoderModel.seed=5') != seeded
