"""Beam evaluation of generative retrieval: Hits@1, Hits@10, MRR@10.

A DSI model ranks documents by decoding: constrained beam search
(`DsiSetup.constraint()`, so every beam is a docid) with num_beams =
num_decodes = 10 returns the 10 best docids per query, best first; they
become a TREC run and pytrec_eval scores it (`retrieval.search.ir_metrics`).
The same scoring serves any ranker (BM25, a dual encoder) through
`evaluate_rankings`, so every system of a table is judged identically.

    s = dsi_tasks.last_setup('xquad_dsi')
    per_lang = evaluate_dsi(wrapper, network, s, input_length=128,
                            run_dir='runs/dsi/trec', tag='dsi_atomic')
    per_lang['en']      # {'Hits@1': .., 'Hits@10': .., 'MRR@10': .., ...}
    per_lang['average'] # macro average over the query languages

XQuAD: queries are grouped by language (the qids repeat across languages)
and each language gets its own run file `<tag>.<lang>.trec`; Cranfield
has one group, 'en'. Relevance: the query's relevant documents with their
grades (`dsi_tasks.Query.relevant`, already filtered by `min_grade`).

Beams are ranked by log-probability (alpha = 0: no length penalty, as DSI
scores docids). A beam that found no id (score at the NEG_INF floor, only
possible when fewer ids than beams exist) is dropped.
"""

from __future__ import annotations

import collections
import contextlib
import os
from typing import Mapping, Sequence

import jax
import numpy as np

from retrieval.search import ir_metrics
from rosetta import partitioning
from rosetta.decoding import algorithms as decoding

METRICS = ('Hits@1', 'Hits@10', 'MRR@10')
_DEAD = -5e8   # beam scores below this never reached a docid


def encode_texts(texts: Sequence[str], vocabulary, length: int) -> np.ndarray:
  """(n, length) int32: tokens trimmed to length - 1, EOS, 0-padding (what
  seqio's tokenize + append_eos_after_trim give the tasks)."""
  out = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    ids = list(vocabulary.encode(text))[:length - 1] + [vocabulary.eos_id]
    out[i, :len(ids)] = ids
  return out


def data_parallel_size(partitioner) -> int:
  """Rows a global batch is split into (data x fsdp; 1 without a mesh)."""
  if partitioner is None:
    return 1
  sizes = dict(zip(partitioner.mesh.axis_names, partitioner.mesh.axis_sizes))
  return sizes.get('data', 1) * sizes.get('fsdp', 1)


def place_batch(batch: np.ndarray, partitioner):
  """A host batch as a global array sharded over the data axes (as is
  without a partitioner)."""
  if partitioner is None:
    return batch
  sharding = partitioner.sharding(partitioning.BATCH_AXES, batch.shape)
  return jax.make_array_from_callback(batch.shape, sharding,
                                      lambda i: batch[i])


def rank_docids(network, setup, texts: Sequence[str], *, input_length: int,
                num_beams: int = 10, num_decodes: int | None = None,
                alpha: float = 0.0, batch_size: int = 32,
                partitioner: partitioning.Partitioner | None = None
                ) -> list[list[tuple[str, float]]]:
  """Per text, the decoded documents [(doc key, beam score)], best first.

  network: a trained `EncoderDecoder`; setup: the `dsi_tasks.DsiSetup`
  whose docids it learnt. Batches are padded to `batch_size` (one
  compilation); with a partitioner they are sharded over its data axes.
  """
  num_decodes = num_decodes or num_beams
  dp = data_parallel_size(partitioner)
  if batch_size % dp:
    raise ValueError(f'rank_docids: batch_size={batch_size} must be a '
                     f'multiple of the data-parallel size {dp}')
  vocab = setup.vocabulary
  key_of = setup.mapping.inverse()
  procs = (setup.constraint(),)
  out = []
  for start in range(0, len(texts), batch_size):
    chunk = encode_texts(texts[start:start + batch_size],
                         vocab.text_vocabulary, input_length)
    n = len(chunk)
    chunk = np.concatenate([chunk, np.zeros((batch_size - n, input_length),
                                            np.int32)])
    ctx = (partitioner.activate() if partitioner else
           contextlib.nullcontext())
    with ctx:
      tokens, scores = decoding.beam_search(
          network, place_batch(chunk, partitioner), num_beams=num_beams,
          num_decodes=num_decodes, max_decode_length=setup.trie.max_length,
          alpha=alpha, processors=procs)
    tokens, scores = np.asarray(tokens)[:n], np.asarray(scores)[:n]
    for row_tokens, row_scores in zip(tokens, scores):
      ranked, seen = [], set()
      for t, s in zip(row_tokens, row_scores):
        docid = vocab.decode(t.tolist()) if s > _DEAD else ''
        if docid and docid not in seen:
          seen.add(docid)
          ranked.append((key_of[docid], float(s)))
      out.append(ranked)
  return out


def queries_by_language(queries) -> dict[str, list]:
  """{language: [Query]} in the given order."""
  groups = collections.OrderedDict()
  for q in queries:
    groups.setdefault(q.language, []).append(q)
  return dict(groups)


def qrels_of(queries) -> dict[str, dict[str, int]]:
  """TREC qrels {qid: {doc key: grade}} of `dsi_tasks.Query`s (one
  language: qids must be unique)."""
  qrels = {}
  for q in queries:
    if q.qid in qrels:
      raise ValueError(f'qrels_of: query id {q.qid!r} appears twice; '
                       'group queries by language first')
    qrels[q.qid] = {d: max(int(g), 1) for d, g in q.relevant}
  return qrels


def evaluate_rankings(queries, rankings: Sequence[Sequence[str]], *,
                      run_path: str | None = None, tag: str = 'rosetta'
                      ) -> dict[str, float]:
  """Hits@1, Hits@10, MRR@10 (pytrec_eval) of ranked doc keys per query
  (best first; the first 10 count). Writes the TREC run to `run_path`."""
  if len(rankings) != len(queries):
    raise ValueError(f'evaluate_rankings: {len(rankings)} rankings for '
                     f'{len(queries)} queries')
  run = {}
  for q, ranked in zip(queries, rankings):
    top = list(dict.fromkeys(ranked))[:10]     # unique, order kept
    run[q.qid] = {d: float(10 - r) for r, d in enumerate(top)}
  if run_path:
    ir_metrics.write_run(run_path, run, tag=tag)
  means = ir_metrics.evaluate(run, qrels_of(queries), ks=(1, 10))
  return {**{m: means[m] for m in METRICS}, 'queries': len(queries)}


def average(per_group: Mapping[str, Mapping[str, float]]) -> dict:
  """Macro average of each metric over the groups (languages)."""
  return {m: float(np.mean([g[m] for g in per_group.values()]))
          for m in METRICS}


def evaluate_grouped(queries, rank_fn, *, run_dir: str | None = None,
                     tag: str = 'rosetta') -> dict[str, dict]:
  """{language: metrics, 'average': macro average} for a ranker
  `rank_fn(language, [Query]) -> [[doc key, ...]]`, one TREC run file
  `<run_dir>/<tag>.<language>.trec` per language."""
  results = {}
  for lang, group in queries_by_language(queries).items():
    path = os.path.join(run_dir, f'{tag}.{lang}.trec') if run_dir else None
    results[lang] = evaluate_rankings(group, rank_fn(lang, group),
                                      run_path=path, tag=tag)
  results['average'] = average(results)
  return results


def evaluate_dsi(network, setup, *, input_length: int, split: str = 'test',
                 queries=None, run_dir: str | None = None,
                 tag: str = 'dsi', num_beams: int = 10, alpha: float = 0.0,
                 batch_size: int = 32,
                 partitioner: partitioning.Partitioner | None = None
                 ) -> dict[str, dict]:
  """Constrained top-`num_beams` beam evaluation of a DSI model on the
  setup's `split` queries (or the given ones), per query language."""
  if queries is None:
    if split not in setup.corpus.queries:
      raise ValueError(f'evaluate_dsi: the {setup.corpus.name} corpus has '
                       f'no {split!r} queries '
                       f'({sorted(setup.corpus.queries)})')
    queries = setup.corpus.queries[split]

  def rank(_, group):
    ranked = rank_docids(network, setup, [q.text for q in group],
                         input_length=input_length, num_beams=num_beams,
                         alpha=alpha, batch_size=batch_size,
                         partitioner=partitioner)
    return [[d for d, _ in r] for r in ranked]
  return evaluate_grouped(queries, rank, run_dir=run_dir, tag=tag)
