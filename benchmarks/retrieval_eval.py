"""Evaluation half of benchmarks/retrieval_quality.py: the sets (FLORES-200
mining, XQuAD same-language / to English / to the pool, Cranfield), the
dense systems' encoders, hubness corrections, pytrec_eval metrics, the
summary table and recall curves."""

from __future__ import annotations

import os
import re
import time

from benchmarks import retrieval_peer  # benchmarks/retrieval_peer.py (the script's folder)
from benchmarks.retrieval_peer import write_json

FLORES_DEFAULT = ('deu_Latn', 'fra_Latn', 'rus_Cyrl', 'zho_Hans', 'arb_Arab',
                  'hin_Deva')
FLORES_QUICK = ('deu_Latn', 'zho_Hans')
XQUAD_QUICK = ('en', 'de', 'zh', 'hi')
KS = (1, 5, 10, 20, 50, 100)
CORRECTIONS = (None, 'csls', 'inverted_softmax', 'dbnorm')
CORRECTION_LABEL = {None: '', 'csls': ' + CSLS',
                    'inverted_softmax': ' + inverted softmax',
                    'dbnorm': ' + DBNorm'}
FIRST_WINDOW = ' (first window only)'
DENSE_LABEL = {'init': 'untrained (the shared initial weights)',
               'rosetta': 'Rosetta', 'st': 'sentence-transformers'}
FAMILIES = {  # family -> (title, headline metric)
    'flores_x2en': ('FLORES x->en acc', 'Hits@1'),
    'flores_en2x': ('FLORES en->x acc', 'Hits@1'),
    'xquad_same': ('XQuAD same-lang MRR@10', 'MRR@10'),
    'xquad_en': ('XQuAD x->en MRR@10', 'MRR@10'),
    'xquad_pool': ('XQuAD x->pool MRR@10', 'MRR@10'),
    'cranfield': ('Cranfield nDCG@10', 'nDCG@10'),
}
LASER_CODES = {'zh': 'cmn', 'ro': 'ron', 'sw': 'swh', 'ar': 'ara'}
GALLERY_SIZE = 500
FUSED = ('rosetta', 'st')   # dense systems also fused with BM25
FUSION_STEP = 0.05          # the CombSUM weight grid

# --------------------------------------------------------- evaluation ---


def eval_sets(args) -> dict:
  """{name: (family, RetrievalSet, query-bank texts, corpus language)}."""
  from retrieval import datasets
  from rosetta.data import corpora as sources
  flores = (datasets.flores_languages() if args.full
            else FLORES_QUICK if args.quick else FLORES_DEFAULT)
  flores = [l for l in flores if l != datasets.FLORES_PIVOT]
  xq = XQUAD_QUICK if args.quick else datasets.XQUAD_LANGUAGES
  out = {}
  for lang in flores:
    code = sources.language(lang).code
    for src, tgt, fam, corpus_lang in (
        (lang, datasets.FLORES_PIVOT, 'flores_x2en', 'en'),
        (datasets.FLORES_PIVOT, lang, 'flores_en2x', code)):
      rs = datasets.flores_mining(src, tgt)
      out[f'flores_{src}-{tgt}'] = (fam, rs, rs.queries, corpus_lang)
  for lang in xq:
    bank = datasets.xquad(lang, corpus=lang, split='train').queries
    out[f'xquad_{lang}-{lang}'] = (
        'xquad_same', datasets.xquad(lang, corpus=lang, split='test'), bank,
        lang)
    if lang != 'en':
      out[f'xquad_{lang}-en'] = (
          'xquad_en', datasets.xquad(lang, corpus='en', split='test'), bank,
          'en')
    out[f'xquad_{lang}-pool'] = (
        'xquad_pool', datasets.xquad(lang, corpus='pool', split='test'), bank,
        'pool')
  cran = datasets.cranfield()
  out['cranfield'] = ('cranfield', cran, cran.queries, 'en')
  return out


def gallery_bank(lang: str) -> tuple[str, ...]:
  """Up to GALLERY_SIZE LASER-Tatoeba sentences in `lang` (DBNorm's gallery:
  text in the corpus language that is in no corpus here); 'pool' or a
  language LASER lacks: an even mix of the XQuAD languages."""
  from rosetta.data import corpora
  from retrieval import datasets
  from rosetta.data import corpora as sources
  root = os.path.join(corpora.data_dir(), 'laser_tatoeba', 'data', 'tatoeba',
                      'v1')

  def read(code2, n):
    if code2 == 'en':
      path = os.path.join(root, 'tatoeba.deu-eng.eng')
    else:
      try:
        code3 = LASER_CODES.get(code2) or sources.language(code2).iso3
      except ValueError:
        return ()
      path = os.path.join(root, f'tatoeba.{code3}-eng.{code3}')
    if not os.path.exists(path):
      return ()
    with open(path, encoding='utf-8') as f:
      lines = [l.strip() for l in f if l.strip()]
    return tuple(lines[:n])
  own = () if lang == 'pool' else read(lang, GALLERY_SIZE)
  if own:
    return own
  per = GALLERY_SIZE // len(datasets.XQUAD_LANGUAGES) + 1
  return tuple(s for l in datasets.XQUAD_LANGUAGES for s in read(l, per))


class DenseSystem:
  """Encodes texts with a trained dual encoder, each distinct text once
  per tower (a passage of the XQuAD pool is also one of its language's
  corpus)."""

  def __init__(self, name: str, encode_fns: dict):
    self.name, self._fns, self._cache = name, encode_fns, {}
    self.encode_s, self.encoded = 0.0, 0

  def embed(self, texts, tower: str):
    import numpy as np
    cache = self._cache.setdefault(tower, {})
    new = list(dict.fromkeys(t for t in texts if t not in cache))
    if new:
      t = time.time()
      for text, row in zip(new, self._fns[tower](new)):
        cache[text] = row
      self.encode_s += time.time() - t
      self.encoded += len(new)
    return np.stack([cache[t] for t in texts])


def rosetta_system(run_dir: str, max_length: int, batch_size: int):
  import gin
  import jax
  import seqio
  from rosetta import gin_utils, partitioning
  from rosetta.run.run_dir import RunDir
  from retrieval.dense import dual_encoder_model as dem
  gin.clear_config()
  run = RunDir(run_dir)
  gin_utils.parse([run.require().config_path], finalize=False)
  model = dem.DualEncoderModel()
  vocab = seqio.SentencePieceVocabulary(
      gin.query_parameter('pair_tasks.setup.vocabulary'))
  mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
  _, state, step = run.restore_for_inference(model, mesh)
  fns = {t: dem.make_encode_fn(model, state, vocab, max_length, batch_size,
                               mesh, t) for t in ('query', 'doc')}
  return DenseSystem('rosetta', fns), step


def st_system(model_dir: str, max_length: int, batch_size: int,
              tok_dir: str | None = None, key: str = 'st'):
  fn = retrieval_peer.encoder(model_dir, max_length, batch_size, tok_dir)
  return DenseSystem(key, {'query': fn, 'doc': fn})


def correction_for(kind, corpus, qbank, gbank, beta):
  from retrieval.search import hubness
  if kind == 'csls':
    return hubness.csls(corpus, qbank, k=10)
  if kind == 'inverted_softmax':
    return hubness.inverted_softmax(corpus, qbank, beta=beta)
  return hubness.dbnorm(corpus, qbank, gbank, beta1=beta, beta2=beta)


def _dense_search(sysm, rs, split, k, correction=None):
  from retrieval.search import passages
  from retrieval.search import exact as search
  q = sysm.embed(rs.queries, 'query')
  corpus = search.shard_corpus(sysm.embed(
      split.texts if split is not None else rs.docs, 'doc'))
  return ((passages.search(corpus, q, k, split, correction=correction)
           if split is not None else
           search.search(corpus, q, k, correction=correction)), corpus)


def _scored_run(res, rs, prefix=''):
  from retrieval.search import ir_metrics
  return ir_metrics.run_from_topk(res.indices, [prefix + q for q in
                                                rs.query_ids], rs.doc_ids,
                                  scores=res.scores)


def tune_fusion(systems: dict, sets: dict, out_dir: str, log,
                passage_vocab=None, passage_tokens: int | None = None,
                step: float = FUSION_STEP) -> dict:
  """{dense key: (BM25 weight, dense weight)} for min-max CombSUM, tuned
  (MRR@10, `retrieval.search.fusion.tune_weights`) on the TRAINING questions of
  the XQuAD same-language sets being evaluated, all languages pooled; the
  weights then serve every set. Writes fusion_weights.json. (The dense
  systems trained on those questions, so the weights lean their way; the
  benchmark has no development split yet.)"""
  from retrieval import datasets
  from retrieval.search import bm25
  from retrieval.search import fusion
  from retrieval.search import passages
  langs = [rs_lang for _, (fam, _, _, rs_lang) in sets.items()
           if fam == 'xquad_same']
  dense = [k for k in systems if k in FUSED and systems[k] is not None]
  if 'bm25' not in systems or not dense or not langs:
    return {}
  train_runs = {k: {} for k in ['bm25'] + dense}
  qrels = {}
  for lang in langs:
    rs = datasets.xquad(lang, corpus=lang, split='train')
    pre = f'{lang}/'   # question ids repeat across languages
    qrels.update({pre + q: d for q, d in rs.qrels.items()})
    k = min(max(KS), len(rs.docs))
    train_runs['bm25'].update(_scored_run(
        bm25.BM25Index(rs.docs, lang=lang).search(rs.queries, k), rs, pre))
    split = (passages.split(rs.docs, passage_vocab, passage_tokens)
             if passage_tokens else None)
    for key in dense:
      res, _ = _dense_search(systems[key], rs, split, k)
      train_runs[key].update(_scored_run(res, rs, pre))
  weights, record = {}, {}
  for key in dense:
    best, table = fusion.tune_weights(
        [train_runs['bm25'], train_runs[key]], qrels, 'combsum',
        metric='MRR@10', step=step, norm='minmax')
    weights[key] = best
    record[key] = dict(weights=best, queries=len(qrels), table=table)
    log(f'fusion: BM25 + {DENSE_LABEL[key]} CombSUM weights {best} '
        f'(MRR@10 {max(v for _, v in table):.3f} on {len(qrels)} training '
        f'questions; BM25 alone {table[-1][1]:.3f}, dense alone '
        f'{table[0][1]:.3f})')
  write_json(os.path.join(out_dir, 'fusion_weights.json'), record)
  return weights


def evaluate_all(systems: dict, sets: dict, out_dir: str, beta: float, log,
                 passage_vocab=None, passage_tokens: int | None = None):
  """{system label: {set name: metrics}}; writes TREC runs and qrels.

  passage_vocab / passage_tokens: dense systems index every window of
  `passage_tokens` SentencePiece pieces of a document (stride half of it)
  and score a document by its best window (`retrieval.search.passages`, MaxP);
  each dense system then also gets a row indexing only each document's
  first window, as encoding a whole document at the trained length does
  (label + FIRST_WINDOW). None: documents are encoded whole (truncated).

  Hybrid rows (FUSED systems, when BM25 runs too): BM25 + the dense
  system's uncorrected run fused by RRF (k=60, untuned) and by min-max
  CombSUM with weights from `tune_fusion` (training questions)."""
  import logging
  from retrieval.search import bm25
  from retrieval.search import fusion
  from retrieval.search import hubness
  from retrieval.search import ir_metrics
  from retrieval.search import passages
  from retrieval.search import exact as search
  logging.getLogger('bm25s').setLevel(logging.WARNING)
  metrics, skew = {}, {}
  weights = tune_fusion(systems, sets, out_dir, log, passage_vocab,
                        passage_tokens)
  for name, (fam, rs, qbank, corpus_lang) in sets.items():
    ir_metrics.write_qrels(os.path.join(out_dir, 'qrels', f'{name}.qrels'),
                           rs.qrels)
    k = min(max(KS), len(rs.docs))
    results = {}
    if 'bm25' in systems:
      lang = None if corpus_lang == 'pool' else corpus_lang
      results['BM25'] = bm25.BM25Index(rs.docs, lang=lang).search(
          rs.queries, k)
    split = (passages.split(rs.docs, passage_vocab, passage_tokens)
             if passage_tokens else None)
    for key, sysm in systems.items():
      if key == 'bm25':
        continue
      if split is not None:
        first = search.shard_corpus(sysm.embed(rs.docs, 'doc'))
        results[DENSE_LABEL[key] + FIRST_WINDOW] = search.search(
            first, sysm.embed(rs.queries, 'query'), k)
      res, corpus = _dense_search(sysm, rs, split, k)
      for kind in (CORRECTIONS if key != 'init' else (None,)):
        if kind:
          gb = (sysm.embed(gallery_bank(corpus_lang), 'doc')
                if kind == 'dbnorm' else None)
          res, _ = _dense_search(sysm, rs, split, k, correction_for(
              kind, corpus, sysm.embed(qbank, 'query'), gb, beta))
        label = DENSE_LABEL[key] + CORRECTION_LABEL[kind]
        results[label] = res
        skew.setdefault(label, {})[name] = hubness.skewness(
            hubness.k_occurrence(res.indices, len(rs.docs), 10))
    runs = {label: ir_metrics.run_from_topk(res.indices, rs.query_ids,
                                            rs.doc_ids)
            for label, res in results.items()}
    for key in (FUSED if 'BM25' in results else ()):
      if DENSE_LABEL[key] not in results:
        continue
      pair = [_scored_run(results['BM25'], rs),
              _scored_run(results[DENSE_LABEL[key]], rs)]
      runs[f'BM25 + {DENSE_LABEL[key]} (RRF)'] = fusion.rrf(pair, k=k)
      if key in weights:
        runs[f'BM25 + {DENSE_LABEL[key]} (CombSUM, tuned)'] = fusion.combsum(
            pair, weights[key], norm='minmax', k=k)
    for label, run in runs.items():
      slug = re.sub(r'[^a-z0-9]+', '_', label.lower()).strip('_')
      ir_metrics.write_run(os.path.join(out_dir, 'trec', slug,
                                        f'{name}.trec'), run, tag=slug)
      metrics.setdefault(label, {})[name] = ir_metrics.evaluate(
          run, rs.qrels, ks=[x for x in KS if x <= len(rs.docs)])
    best = max(runs, key=lambda l: metrics[l][name][FAMILIES[fam][1]])
    log(f'{name:28s} ({len(rs.queries)} q x {len(rs.docs)} docs'
        + (f', {len(split.texts)} passages' if split is not None else '')
        + f') best: {best} {FAMILIES[fam][1]} '
        f'{metrics[best][name][FAMILIES[fam][1]]:.3f}')
  return metrics, skew


def summarise(metrics: dict, sets: dict) -> dict:
  """{system: {family: {metric: mean over the family's sets}}}."""
  import numpy as np
  out = {}
  for label, per_set in metrics.items():
    for fam in FAMILIES:
      names = [n for n, s in sets.items() if s[0] == fam]
      if not names:
        continue
      keys = per_set[names[0]].keys()
      out.setdefault(label, {})[fam] = {
          m: float(np.mean([per_set[n][m] for n in names])) for m in keys}
  return out


def markdown_table(summary: dict) -> str:
  fams = [f for f in FAMILIES if any(f in v for v in summary.values())]
  head = '| system | ' + ' | '.join(FAMILIES[f][0] for f in fams) + ' |'
  rule = '|---|' + '---:|' * len(fams)
  rows = [head, rule]
  for label, per in summary.items():
    rows.append(f'| {label} | ' + ' | '.join(
        f'{per[f][FAMILIES[f][1]]:.3f}' if f in per else '' for f in fams)
        + ' |')
  return '\n'.join(rows)


def recall_curves(summary: dict, out_dir: str) -> dict:
  """recall_<family>.json ({system: {k: recall}}) + PNG per family."""
  from rosetta.run import plots
  files = {}
  for fam in FAMILIES:
    curves = {label: {str(k): per[fam][f'Recall@{k}'] for k in KS
                      if f'Recall@{k}' in per.get(fam, {})}
              for label, per in summary.items() if fam in per}
    if not curves:
      continue
    path = os.path.join(out_dir, f'recall_{fam}.json')
    write_json(path, curves)
    files[fam] = (path, plots.recall_curves(path).path)
  return files
