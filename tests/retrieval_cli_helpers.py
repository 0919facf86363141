"""Shared by the retrieval command tests: a tiny BEIR collection, a tiny
dual encoder trained on it, and the `rosetta` CLI run in-process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random

import gin

from rosetta import cli, gin_utils
from rosetta.run import run_dir, runs

WORDS = ('cat dog fish bird tree river stone cloud sun moon star rain wind '
         'fire snow leaf seed wolf bear frog').split()


def write_beir(root, n_docs: int = 48, seed: int = 0) -> str:
  """corpus.jsonl (titled documents over a 20-word vocabulary, two topic
  words each), queries.jsonl (two per document: its topic words and one
  more) and qrels/{train,test}.tsv (one query of each document each)."""
  rng = random.Random(seed)
  root = str(root)
  os.makedirs(os.path.join(root, 'qrels'), exist_ok=True)
  docs, queries, train, test = [], [], [], []
  for i in range(n_docs):
    topic = [WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]]
    text = ' '.join(topic + [rng.choice(WORDS) for _ in range(12)])
    docs.append({'_id': f'd{i}', 'title': f'doc {i}', 'text': text})
    for j in range(2):
      qid = f'q{i}_{j}'
      queries.append({'_id': qid,
                      'text': ' '.join(topic + [rng.choice(WORDS)])})
      (train if j == 0 else test).append((qid, f'd{i}'))
  for name, rows in (('corpus.jsonl', docs), ('queries.jsonl', queries)):
    with open(os.path.join(root, name), 'w', encoding='utf-8') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
  for name, rows in (('train', train), ('test', test)):
    with open(os.path.join(root, 'qrels', f'{name}.tsv'), 'w',
              encoding='utf-8') as f:
      f.write('query-id\tcorpus-id\tscore\n')
      f.writelines(f'{q}\t{d}\t1\n' for q, d in rows)
  return root


def write_word_collection(root, words, splits: dict,
                          query: str = '{}?') -> str:
  """A BEIR folder with one document ('all about <word>') and one query
  (`query` with the word) per word; `splits` = {name: range of word
  numbers}, each a qrels/<name>.tsv pairing query i with document i."""
  root = str(root)
  os.makedirs(os.path.join(root, 'qrels'))
  with open(os.path.join(root, 'corpus.jsonl'), 'w', encoding='utf-8') as f:
    for i, w in enumerate(words):
      f.write(json.dumps({'_id': f'd{i}', 'text': f'all about {w}'}) + '\n')
  with open(os.path.join(root, 'queries.jsonl'), 'w', encoding='utf-8') as f:
    for i, w in enumerate(words):
      f.write(json.dumps({'_id': f'q{i}', 'text': query.format(w)}) + '\n')
  for split, rows in splits.items():
    with open(os.path.join(root, 'qrels', f'{split}.tsv'), 'w',
              encoding='utf-8') as f:
      f.write('query-id\tcorpus-id\tscore\n')
      f.writelines(f'q{i}\td{i}\t1\n' for i in rows)
  return root


def train_dual_encoder(model_dir, collection, mesh, steps: int = 2,
                       checkpoint_period: int | None = None) -> str:
  """`gin/retrieval/dual_encoder_beir_tiny.gin` on `collection` for a few
  steps, in-process; a checkpoint every `checkpoint_period` (default: at
  the end)."""
  model_dir = str(model_dir)
  gin_utils.parse(['retrieval/dual_encoder_beir_tiny.gin'], [
      f'train.model_dir = "{model_dir}"',
      f"pair_tasks.setup.collections = ['beir:{collection}']",
      "train.task_feature_lengths = {'queries': 32, 'positives': 64, "
      "'negatives': 64}", 'train.batch_size = 8',
      f'train.total_steps = {steps}', 'train.eval_period = 0',
      f'train.checkpoint_period = {checkpoint_period or steps}'],
      finalize=False)
  gin.finalize()
  try:
    runs.train(mesh=mesh, config_text=run_dir.run_config_text())
  finally:
    gin.clear_config()
  return model_dir


def rosetta(*argv) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of `rosetta ARGV` run in-process."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      code = cli.main([str(a) for a in argv])
    except SystemExit as e:          # argparse: usage errors exit 2
      code = e.code
    finally:
      gin.clear_config()
  return code, out.getvalue(), err.getvalue()


_TRAINED: dict = {}


def trained_run(tmp_path_factory) -> tuple[str, str]:
  """(collection, model dir) of a dual encoder trained for 2 steps (a
  checkpoint at each) on `write_beir`'s collection: once per session,
  shared by the command tests (training is most of their time)."""
  base = str(tmp_path_factory.getbasetemp())
  if base not in _TRAINED:
    import jax  # pylint: disable=import-outside-toplevel
    from rosetta import partitioning  # pylint: disable=import-outside-toplevel
    root = tmp_path_factory.mktemp('retrieval_cli')
    coll = write_beir(root / 'coll')
    one = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
    _TRAINED[base] = (coll, train_dual_encoder(root / 'de', coll, one,
                                               checkpoint_period=1))
  return _TRAINED[base]
