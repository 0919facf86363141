"""`rosetta serve`: the HTTP service answers every request of many threads,
batches those that arrive together, gives 4xx answers (naming the field)
to bad requests and keeps serving; over a trained translation run its
answers equal `rosetta translate`'s output (slow)."""

import concurrent.futures
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import gin
import pytest

from rosetta import cli
from rosetta.serving import http_service
from rosetta.serving.endpoints import Endpoint, Field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def post(port: int, path: str, body, timeout: float = 120.0):
  """(status, JSON answer) of one POST; `body` bytes are sent as they are."""
  conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
  data = body if isinstance(body, bytes) else json.dumps(body).encode()
  conn.request('POST', path, body=data,
               headers={'Content-Type': 'application/json'})
  response = conn.getresponse()
  answer = json.loads(response.read())
  conn.close()
  return response.status, answer


def get(port: int, path: str):
  conn = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
  conn.request('GET', path)
  response = conn.getresponse()
  answer = json.loads(response.read())
  conn.close()
  return response.status, answer


def shout_endpoint(calls: list) -> Endpoint:
  """A real endpoint without a model: upper-cases text, `repeat` times."""

  def run_batch(requests):
    calls.append(len(requests))
    time.sleep(0.02)    # like a device call: others arrive meanwhile
    if any(r['text'] == 'explode' for r in requests):
      raise RuntimeError('the batch failed')
    return [{'text': r['text'].upper() * r['repeat']} for r in requests]

  return Endpoint(
      name='shout', summary='upper-case',
      fields={'text': Field(str, required=True),
              'repeat': Field(int, default=1)},
      run_batch=run_batch,
      check=lambda r: None if r['repeat'] >= 1 else 'repeat must be >= 1')


@pytest.fixture(scope='module')
def server():
  import uvicorn
  calls = []
  app = http_service.make_app([shout_endpoint(calls)], max_batch=8,
                              max_wait_s=0.05, max_request_bytes=1000)
  sock = socket.create_server(('127.0.0.1', 0))
  srv = uvicorn.Server(uvicorn.Config(app, log_level='warning'))
  thread = threading.Thread(target=srv.run, kwargs={'sockets': [sock]},
                            daemon=True)
  thread.start()
  port = sock.getsockname()[1]
  for _ in range(200):
    if srv.started:
      break
    time.sleep(0.05)
  yield port, calls
  srv.should_exit = True
  thread.join(timeout=10)


def test_concurrent_requests_all_answered_in_batches(server):
  port, calls = server
  calls.clear()
  texts = [f'text {i}' for i in range(200)]
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    answers = list(pool.map(lambda t: post(port, '/v1/shout', {'text': t}),
                            texts))
  assert answers == [(200, {'text': t.upper()}) for t in texts]
  assert sum(calls) == 200
  assert max(calls) > 1 and max(calls) <= 8   # batched, within max_batch


@pytest.mark.parametrize('body,status,message', [
    (b'{"text": ', 400, 'malformed JSON'),
    (b'\xff\xfe', 400, 'not UTF-8'),
    (b'[1, 2]', 400, 'must be a JSON object, got list'),
    ({'text': 'a', 'colour': 'red'}, 400,
     'unknown field(s) colour; /v1/shout takes text, repeat'),
    ({'repeat': 2}, 400, "missing field 'text' (string)"),
    ({'text': 3}, 400, "field 'text' must be a string, got integer"),
    ({'text': 'a', 'repeat': True}, 400,
     "field 'repeat' must be an integer, got boolean"),
    ({'text': 'a', 'repeat': 0}, 400, 'repeat must be >= 1'),
    ({'text': 'x' * 2000}, 413, 'the limit is 1000'),
    ({'text': 'explode'}, 500, 'RuntimeError: the batch failed'),
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(
    server, body, status, message):
  port, _ = server
  got_status, answer = post(port, '/v1/shout', body)
  assert got_status == status
  assert message in answer['error']
  assert post(port, '/v1/shout', {'text': 'ok', 'repeat': 2}) == (
      200, {'text': 'OKOK'})


def test_health_index_and_unknown_paths(server):
  port, _ = server
  status, health = get(port, '/health')
  assert status == 200 and health['status'] == 'ok'
  assert health['endpoints'] == ['shout']
  status, index = get(port, '/')
  assert index['endpoints'][0]['fields']['repeat'] == {
      'type': 'integer', 'required': False, 'default': 1, 'help': ''}
  status, answer = post(port, '/v1/nothing', {'text': 'a'})
  assert status == 404 and '/v1/shout' in answer['error']
  assert get(port, '/v1/shout')[0] == 405


def test_serve_refuses_nothing_to_serve(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(['serve'])
  assert e.value.code == 2
  assert 'nothing to serve' in capsys.readouterr().err


# ------------------------------------------------------ a translation run ---
TINY = ['encoder_decoder.T5Config.vocab_size = 512',
        'encoder_decoder.T5Config.emb_dim = 32',
        'encoder_decoder.T5Config.mlp_dim = 64',
        'encoder_decoder.T5Config.num_heads = 2',
        'encoder_decoder.T5Config.head_dim = 16',
        'encoder_decoder.T5Config.num_encoder_layers = 1',
        'encoder_decoder.T5Config.num_decoder_layers = 1',
        'nmt.setup.vocab_size = 400',
        "nmt.setup.corpus = 'django'",
        "nmt.setup.languages = ['fr', 'de']",
        "train.task_feature_lengths = {'inputs': 24, 'targets': 24}",
        'train.total_steps = 2', 'train.batch_size = 8']
DECODE = ['--beam_size', '2', '--max_length', '12']
LINES = ['Save and continue.', 'Delete', 'The password is too short.',
         'Add another', 'Change history', 'Filter by date', '',
         'Select all 3 objects', 'Log out', 'Home']


@pytest.fixture(scope='module')
def nmt_run(tmp_path_factory):
  d = tmp_path_factory.mktemp('serve')
  path = str(d / 'run')
  try:
    assert cli.main(
        ['train', '--gin_file=experiments/nmt_cpu_small.gin',
         f"--gin.train.model_dir='{path}'",
         f"--gin.nmt.setup.vocab_path='{d}/spm.model'",
         *[f'--gin_bindings={b}' for b in TINY]]) == 0
  finally:
    gin.clear_config()
  return path


def cli_translations(run: str, lang: str, tmp_path) -> list[str]:
  src, out = tmp_path / f'in.{lang}.txt', tmp_path / f'out.{lang}.txt'
  src.write_text('\n'.join(LINES) + '\n', encoding='utf-8')
  p = subprocess.run(
      [sys.executable, '-m', 'rosetta', 'translate', '--checkpoint', run,
       '--target_lang', lang, '--input', str(src), '--output', str(out),
       '--no_progress', *DECODE],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-2000:]
  return out.read_text(encoding='utf-8').split('\n')[:-1]


@pytest.mark.slow
def test_serve_a_translation_run_like_the_cli(nmt_run, tmp_path):
  expected = {lang: cli_translations(nmt_run, lang, tmp_path)
              for lang in ('fr', 'de')}
  proc = subprocess.Popen(
      [sys.executable, '-m', 'rosetta', 'serve', '--model_dir', nmt_run,
       '--port', '0', '--max_batch', '8', '--max_request_bytes', '4096',
       *DECODE], cwd=REPO, stderr=subprocess.PIPE, text=True)
  try:
    port = None
    for line in proc.stderr:
      found = re.search(r'http://127\.0\.0\.1:(\d+)/', line)
      if found:
        port = int(found.group(1))
        break
    assert port, 'the server did not say where it listens'
    jobs = [(LINES[i % len(LINES)], ('fr', 'de')[i % 2]) for i in range(200)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
      answers = list(pool.map(
          lambda job: post(port, '/v1/translate',
                           {'text': job[0], 'target_lang': job[1]}), jobs))
    for (text, lang), (status, answer) in zip(jobs, answers):
      assert status == 200, answer
      assert answer == {'translation': expected[lang][LINES.index(text)],
                        'target_lang': lang}
    status, answer = post(port, '/v1/translate',
                          {'text': 'Delete', 'target_lang': 'ja'})
    assert status == 400 and "target_lang 'ja'" in answer['error']
    status, answer = post(port, '/v1/translate', b'{"text": "Delete"')
    assert status == 400 and 'malformed JSON' in answer['error']
    status, answer = post(port, '/v1/translate',
                          {'text': 'a' * 5000, 'target_lang': 'fr'})
    assert status == 413
    status, answer = post(port, '/v1/translate',
                          {'text': 'Delete', 'target_lang': 'fr',
                           'nbest': 2})
    assert status == 200 and len(answer['nbest']) == 2
    assert answer['nbest'][0]['text'] == expected['fr'][LINES.index('Delete')]
    status, health = get(port, '/health')
    assert health['endpoints'] == ['translate']
    assert sum(health['batches_run'].values()) < 200   # batched
  finally:
    proc.terminate()
    proc.wait(timeout=60)


def rosetta_cli(*argv):
  p = subprocess.run([sys.executable, '-m', 'rosetta', *map(str, argv)],
                     cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]


def start_server(*argv):
  """(process, port) of `rosetta serve ARGV --port 0` once it listens."""
  proc = subprocess.Popen([sys.executable, '-m', 'rosetta', 'serve',
                           '--port', '0', *map(str, argv)],
                          cwd=REPO, stderr=subprocess.PIPE, text=True)
  for line in proc.stderr:
    found = re.search(r'http://127\.0\.0\.1:(\d+)/', line)
    if found:
      return proc, int(found.group(1))
  proc.wait(timeout=60)
  raise AssertionError('the server did not say where it listens')


@pytest.mark.slow
def test_serve_an_index_like_rosetta_search(tmp_path_factory, tmp_path):
  from retrieval.search import ir_metrics
  from tests.retrieval_cli_helpers import trained_run
  collection, model_dir = trained_run(tmp_path_factory)
  index = tmp_path / 'index'
  rosetta_cli('index', '--model_dir', model_dir, '--corpus',
              f'beir:{collection}', '--output', index)
  rosetta_cli('search', '--index', index, '--queries', f'beir:{collection}',
              '--output', tmp_path / 'run.trec', '--k', 5)
  expected = ir_metrics.read_run(str(tmp_path / 'run.trec'))
  queries = {}
  with open(os.path.join(collection, 'queries.jsonl'), encoding='utf-8') as f:
    for line in f:
      row = json.loads(line)
      if row['_id'] in expected:
        queries[row['_id']] = row['text']
  proc, port = start_server('--index', index, '--k', '5', '--max_batch', '8')
  try:
    ids = sorted(queries) * 3
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
      answers = list(pool.map(
          lambda q: post(port, '/v1/search', {'query': queries[q]}), ids))
    for qid, (status, answer) in zip(ids, answers):
      assert status == 200, answer
      got = [(r['doc_id'], r['score']) for r in answer['results']]
      want = list(expected[qid].items())       # rank order
      assert [d for d, _ in got] == [d for d, _ in want], qid
      assert [s for _, s in got] == pytest.approx([s for _, s in want],
                                                  abs=1e-5)
    assert post(port, '/v1/search', {'query': ' '})[0] == 400
    assert post(port, '/v1/search', {'query': 'cat', 'k': 0})[0] == 400
    status, answer = post(port, '/v1/search', {'query': 'cat', 'k': 2})
    assert status == 200 and len(answer['results']) == 2
  finally:
    proc.terminate()
    proc.wait(timeout=60)
