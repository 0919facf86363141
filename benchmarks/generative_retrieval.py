"""Generative retrieval (DSI) against BM25 and a dual encoder.

One table on XQuAD (held-out questions in each of its 12 languages, the
240 paragraphs indexed) and Cranfield (held-out queries, 1,400 abstracts,
relevant = grade >= 2): Hits@1, Hits@10 and MRR@10 of

  BM25             bm25s over each language's paragraphs (retrieval.search.bm25)
  dual encoder     a tiny shared-tower T5 encoder trained here on the XQuAD
                   training questions of all 12 languages
                   (gin/retrieval/dual_encoder_tiny_cpu.gin), or a
                   checkpoint given by --dual-encoder; Cranfield zero-shot
  DSI atomic / naive / semantic, each without and with synthetic queries:
                   a tiny T5.1.1 trained by `rosetta train`
                   (gin/dsi/{xquad_atomic,cranfield_naive}_tiny.gin with
                   the docid kind switched) for --budget-minutes each;
                   semantic ids = hierarchical k-means (k=10, c=10) of the
                   dual encoder's document embeddings (averaged over the
                   12 languages); synthetic queries = n per document and
                   language sampled (top-k 10; no top-p, which sorts
                   the whole vocabulary every step) from a query
                   generator trained on the training questions
                   (gin/dsi/qgen_*_tiny.gin), added to the DSI mixture

All systems share one SentencePiece vocabulary per corpus, trained on its
documents and training queries (`dsi_tasks.corpus_vocabulary`). DSI ranks
by constrained beam search (10 beams = the top 10 docids); everything is
scored by the same code (`retrieval.dsi.evaluation`: pytrec_eval on the top 10)
on the same queries, with TREC run files under <out>/trec/. Then it reruns
benchmarks/constrained_decoding.py (10k and 1M random ids).

    python -m benchmarks.generative_retrieval --quick
    python -m benchmarks.generative_retrieval --budget-minutes 10 \\
        --dual-encoder runs/de_xquad --out runs/generative_retrieval
    # equal work per system on a shared machine, with a deadline (HH:MM):
    python -m benchmarks.generative_retrieval --steps 1000 \\
        --aux-steps 250 --budget-minutes 5 --queries-per-doc 1 --dim 64 \\
        --corpora xquad --timing skip --stop-at HH:MM

Systems run in --systems order (the issue's key rows first); with
--stop-at, one that would not finish in time is skipped and logged.

Prints Markdown tables and writes <out>/results.json. It measures; it does
not assert. Runs are in-process, one after another (gin is global).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin  # noqa: E402
import numpy as np  # noqa: E402

from retrieval import datasets  # noqa: E402
from retrieval.search import bm25  # noqa: E402
from retrieval.dsi import embeddings as dsi_embeddings  # noqa: E402
from retrieval.dsi import evaluation as dsi_eval  # noqa: E402
from retrieval.dsi import dsi_tasks  # noqa: E402
from retrieval.dsi import synthetic_queries as sq  # noqa: E402
from retrieval.dsi import query_files  # noqa: E402
from retrieval.dsi.docids import padded_vocab_size  # noqa: E402
from rosetta import gin_utils  # noqa: E402
from rosetta.run import run_dir  # noqa: E402
from rosetta.model import encoder_decoder_model  # noqa: E402
from rosetta.run import runs  # noqa: E402
from rosetta.run.run_dir import RunDir  # noqa: E402
from rosetta.run import files

KINDS = ('atomic', 'naive', 'semantic')
SYSTEMS = ('semantic+syn', 'atomic', 'semantic', 'atomic+syn', 'naive',
           'naive+syn')
DSI_GIN = {'xquad': 'dsi/xquad_atomic_tiny.gin',
           'cranfield': 'dsi/cranfield_naive_tiny.gin'}
QGEN_GIN = {'xquad': 'dsi/qgen_xquad_tiny.gin',
            'cranfield': 'dsi/qgen_cranfield_tiny.gin'}
SP_SIZE = {'xquad': 8000, 'cranfield': 2000}
CRANFIELD_MIN_GRADE = 2
K, C = 10, 10


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--quick', action='store_true',
                 help='0.5 minutes per trained system, 2 synthetic queries '
                 'per document and language, the quick timing table')
  p.add_argument('--budget-minutes', type=float, default=None,
                 help='training time per DSI system (default 10; quick 0.5)')
  p.add_argument('--aux-budget-minutes', type=float, default=None,
                 help='training time of the dual encoder and of each query '
                 'generator (default: --budget-minutes)')
  p.add_argument('--steps', type=int, default=None,
                 help='train each DSI system for this many steps instead '
                 'of --budget-minutes of wall time (fair when other jobs '
                 'stop or slow this one; --budget-minutes then only '
                 'estimates a system for --stop-at)')
  p.add_argument('--aux-steps', type=int, default=None,
                 help='the same for the dual encoder and query generators')
  p.add_argument('--corpora', nargs='+', default=['xquad', 'cranfield'],
                 choices=['xquad', 'cranfield'])
  p.add_argument('--systems', nargs='+', default=list(SYSTEMS),
                 choices=SYSTEMS, help='DSI systems in the order they run '
                 '(KIND or KIND+syn: with synthetic queries); the most '
                 'important first, so a --stop-at cut drops the least')
  p.add_argument('--stop-at', default=None,
                 help='UTC HH:MM: start no DSI system (nor corpus) that '
                 'would not finish by then (budget + 3 min to evaluate)')
  p.add_argument('--dual-encoder', default=None,
                 help='run directory of a trained dual encoder to reuse')
  p.add_argument('--queries-per-doc', type=int, default=None,
                 help='synthetic queries per document and language '
                 '(default 5; quick 2)')
  p.add_argument('--dim', type=int, default=None,
                 help='d_model of the trained models (default 128; quick 64)')
  p.add_argument('--query-length', type=int, default=24,
                 help='longest synthetic query in tokens (a sampled batch '
                 'runs until its longest row ends)')
  p.add_argument('--index-windows', action='store_true',
                 help='index every 64-piece window of a document (stride '
                 '32; dsi_tasks.setup.index_windows), not its first 64 '
                 'tokens only')
  p.add_argument('--batch-size', type=int, default=32)
  p.add_argument('--lr', type=float, default=1e-3,
                 help='AdamW learning rate of every trained model (after '
                 'a 20-step warmup); 3e-3 left DSI at chance '
                 '(BUILD_NOTES.md, generative retrieval)')
  p.add_argument('--out', default='runs/generative_retrieval')
  p.add_argument('--timing', choices=['quick', 'full', 'skip'], default=None,
                 help='constrained_decoding.py table (default: quick with '
                 '--quick, else full)')
  args = p.parse_args(argv)
  # Orbax refuses relative checkpoint paths ("Checkpoint path should be
  # absolute"): the default --out used to fail at the first checkpoint.
  args.out = os.path.abspath(args.out)
  if args.dual_encoder:
    args.dual_encoder = os.path.abspath(args.dual_encoder)
  quick = args.quick
  args.budget_minutes = args.budget_minutes or (0.5 if quick else 10.0)
  args.aux_budget_minutes = args.aux_budget_minutes or args.budget_minutes
  args.queries_per_doc = args.queries_per_doc or (2 if quick else 5)
  args.dim = args.dim or (64 if quick else 128)
  args.timing = args.timing or ('quick' if quick else 'full')
  args.kinds = list(dict.fromkeys(s.split('+')[0] for s in args.systems))
  return args


def cap_s(args) -> float:
  """Wall-clock cap of a step-budgeted run: --stop-at less 4 minutes
  (to evaluate), at least one minute."""
  return max(60.0, time_left_s(args) - 240)


def time_left_s(args) -> float:
  """Seconds until --stop-at (UTC HH:MM today), inf without it."""
  if not args.stop_at:
    return float('inf')
  h, m = map(int, args.stop_at.split(':'))
  now = time.gmtime()
  return (h * 60 + m) * 60 - (now.tm_hour * 3600 + now.tm_min * 60
                              + now.tm_sec)


def log(msg: str):
  print(f'[{time.strftime("%H:%M:%S")}] {msg}', flush=True)


# ------------------------------------------------------------ training ---

def model_bindings(dim: int, vocab: int) -> list[str]:
  return [f'encoder_decoder.T5Config.vocab_size = {vocab}',
          f'encoder_decoder.T5Config.emb_dim = {dim}',
          f'encoder_decoder.T5Config.mlp_dim = {2 * dim}',
          'encoder_decoder.T5Config.num_heads = 4',
          f'encoder_decoder.T5Config.head_dim = {dim // 4}']


def train(gin_file: str, bindings: list[str], model_dir: str,
          minutes: float, batch_size: int, steps: int | None = None,
          cap_s: float = float('inf'), lr: float = 1e-3) -> float:
  """`rosetta train` in this process, from scratch, for `minutes` of wall
  time, or for `steps` steps (then at most `cap_s` seconds)."""
  shutil.rmtree(model_dir, ignore_errors=True)
  budget_s = minutes * 60 if steps is None else cap_s
  gin_utils.parse([gin_file], [
      f'train.model_dir = "{model_dir}"',
      f'train.time_budget_s = {budget_s if budget_s < 1e9 else None}',
      f'train.batch_size = {batch_size}',
      f'train.total_steps = {steps or 10000000}', 'train.eval_period = 0',
      'train.eval_tasks = []',
      'train.checkpoint_period = 10000000', 'train.log_period = 50',
      f'optimizers.learning_rate_schedule.base = {lr}', *bindings],
                  finalize=False)
  gin.finalize()
  start = time.time()
  try:
    runs.train(config_text=run_dir.run_config_text())
  finally:
    gin.clear_config()
  return time.time() - start


def last_step(model_dir: str) -> int:
  with open(RunDir(model_dir).train_metrics_path) as f:
    return json.loads(f.readlines()[-1])['step']


# ------------------------------------------------------------- rankers ---

def bm25_ranker(corpus):
  cache = {}

  def rank(lang, queries):
    if lang not in cache:
      cache[lang] = bm25.BM25Index(corpus.doc_texts[lang], lang=lang)
    top = cache[lang].search([q.text for q in queries], k=10).indices
    return [[corpus.doc_keys[i] for i in row] for row in top]
  return rank


def dense_ranker(run, corpus):
  docs, query_enc = {}, dsi_embeddings.encoder(run, 'query')
  doc_enc = dsi_embeddings.encoder(run, 'doc')

  def rank(lang, queries):
    texts = corpus.doc_texts.get(lang) or corpus.doc_texts['en']
    if lang not in docs:
      docs[lang] = doc_enc(list(texts))
    scores = query_enc([q.text for q in queries]) @ docs[lang].T
    top = np.argsort(-scores, axis=1, kind='stable')[:, :10]  # ties: low row
    return [[corpus.doc_keys[i] for i in row] for row in top]
  return rank


def restore_dsi(model_dir: str):
  """(setup, network, input length, step) of a finished DSI run."""
  run = RunDir(model_dir)
  try:
    run.parse_config()
    setup = dsi_tasks.last_setup(gin.query_parameter('train.task'))
    length = gin.query_parameter('train.task_feature_lengths')['inputs']
    tr, state, step = run.restore_for_inference(
        encoder_decoder_model.EncoderDecoderModel(), None)
  finally:
    gin.clear_config()
  return setup, tr.network(state['params']), length, step


# -------------------------------------------------------------- stages ---

def load_corpus(name: str):
  if name == 'xquad':
    return dsi_tasks.xquad_corpus()
  return dsi_tasks.cranfield_corpus(CRANFIELD_MIN_GRADE)


def dual_encoder(args, xquad_sp: str) -> str:
  if args.dual_encoder:
    return args.dual_encoder
  d = os.path.join(args.out, 'dual_encoder')
  pairs = [f'{l}-{l}' for l in datasets.XQUAD_LANGUAGES]
  secs = train('retrieval/dual_encoder_tiny_cpu.gin', [
      'pair_tasks.setup.tatoeba_languages = []',
      f'pair_tasks.setup.xquad_pairs = {pairs}',
      f'pair_tasks.setup.vocabulary = "{xquad_sp}"',
      "train.task_feature_lengths = {'queries': 32, 'positives': 128, "
      "'negatives': 128}",
      *model_bindings(args.dim, padded_vocab_size(SP_SIZE['xquad']))],
               d, args.aux_budget_minutes, args.batch_size, args.aux_steps,
               cap_s(args), args.lr)
  log(f'dual encoder: {last_step(d)} steps in {secs:.0f} s')
  return d


def synthetic(args, name: str, corpus, sp: str) -> str:
  d = os.path.join(args.out, f'qgen_{name}')
  bindings = [f'synthetic_queries.qgen_setup.vocabulary = "{sp}"',
              "train.task_feature_lengths = {'inputs': 128, 'targets': 32}",
              'synthetic_queries.qgen_setup.doc_length = 128',
              *model_bindings(args.dim, padded_vocab_size(SP_SIZE[name]))]
  secs = train(QGEN_GIN[name], bindings, d, args.aux_budget_minutes,
               args.batch_size, args.aux_steps, cap_s(args), args.lr)
  gen = sq.QueryGenerator.from_run(d)
  gin.clear_config()
  start = time.time()
  records = sq.generate(gen, corpus, args.queries_per_doc, seed=0,
                        top_p=1.0, max_length=args.query_length,
                        batch_size=256)
  path = query_files.write_queries(os.path.join(args.out, f'{name}_synthetic.jsonl'),
                          records)
  log(f'{name} query generator: {last_step(d)} steps in {secs:.0f} s; '
      f'{len(records)} queries in {time.time() - start:.0f} s -> {path}')
  for r in records[:len(records):max(1, len(records) // 4)][:4]:
    log(f'  e.g. {r["language"]} {r["doc"]}: {r["query"]!r}')
  return path


def dsi_system(args, name: str, kind: str, sp: str, emb: str | None,
               queries: str | None, tag: str):
  d = os.path.join(args.out, tag)
  extra = {'atomic': None, 'naive': 0, 'semantic': max(K, C)}[kind]
  ndocs = 240 if name == 'xquad' else 1400
  vocab = padded_vocab_size(SP_SIZE[name] + (ndocs if extra is None
                                              else extra))
  bindings = [f'dsi_tasks.setup.docid_kind = "{kind}"',
              f'dsi_tasks.setup.vocabulary = "{sp}"', f'VOCAB = {vocab}',
              f'dsi_tasks.setup.mapping_path = "{d}/docids.json"',
              f'dsi_tasks.setup.k = {K}', f'dsi_tasks.setup.c = {C}',
              "train.task_feature_lengths = {'inputs': 64, 'targets': 8}",
              'encoder_decoder_model.EncoderDecoderModel.max_decode_length = 8',
              *model_bindings(args.dim, vocab)[1:]]
  if kind == 'semantic':
    bindings.append(f'dsi_tasks.setup.embeddings = "{emb}"')
  if args.index_windows:
    bindings.append('dsi_tasks.setup.index_windows = True')
  if queries:
    bindings += [f'dsi_tasks.setup.synthetic_queries = "{queries}"',
                 'dsi_tasks.setup.synthetic_ratio = 1.0']
  secs = train(DSI_GIN[name], bindings, d, args.budget_minutes,
               args.batch_size, args.steps, cap_s(args), args.lr)
  setup, network, length, step = restore_dsi(d)
  start = time.time()
  result = dsi_eval.evaluate_dsi(network, setup, input_length=length,
                                 run_dir=os.path.join(args.out, 'trec'),
                                 tag=tag, batch_size=64)
  log(f'{tag}: {step} steps in {secs:.0f} s; evaluated in '
      f'{time.time() - start:.0f} s: {fmt(result["average"])}')
  return result


def fmt(m) -> str:
  return ' / '.join(f'{m[k]:.3f}' for k in dsi_eval.METRICS)


# --------------------------------------------------------------- table ---

def table(results: dict, languages: list[str]) -> str:
  """Rows: system x metric; columns: XQuAD languages, average, Cranfield."""
  cran, xq = 'cranfield' in results, 'xquad' in results
  # A Cranfield-only run has no XQuAD columns (not even an empty 'avg').
  cols = (languages + ['avg'] if xq else []) + (['Cranfield'] if cran else [])
  lines = ['| system | metric | ' + ' | '.join(cols) + ' |',
           '|---|---|' + '---:|' * len(cols)]
  order = ['BM25', 'dual encoder'] + [
      f'DSI {k}{s}' for k in KINDS for s in ('', ' + synthetic')]
  systems = sorted(dict.fromkeys(s for c in results.values() for s in c),
                   key=lambda s: order.index(s) if s in order else 99)
  for system in systems:
    for metric in dsi_eval.METRICS:
      cells = []
      x = results.get('xquad', {}).get(system)
      if xq:
        for lang in languages:
          cells.append(f'{x[lang][metric]:.3f}' if x and lang in x else '')
        cells.append(f'**{x["average"][metric]:.3f}**' if x else '')
      c = results.get('cranfield', {}).get(system)
      if cran:
        cells.append(f'{c["average"][metric]:.3f}' if c else '')
      lines.append(f'| {system} | {metric} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def run_corpus(args, name: str, de_dir: str | None, sps: dict) -> dict:
  corpus = load_corpus(name)
  test = corpus.queries['test']
  trec = os.path.join(args.out, 'trec')
  log(f'{name}: {len(corpus.doc_keys)} documents, {len(test)} test queries '
      f'in {len({q.language for q in test})} language(s)')
  out = {'BM25': dsi_eval.evaluate_grouped(
      test, bm25_ranker(corpus), run_dir=trec, tag=f'{name}_bm25')}
  log(f'{name} BM25: {fmt(out["BM25"]["average"])}')
  run = dsi_embeddings.load_dual_encoder(de_dir)
  gin.clear_config()
  out['dual encoder'] = dsi_eval.evaluate_grouped(
      test, dense_ranker(run, corpus), run_dir=trec, tag=f'{name}_dual')
  log(f'{name} dual encoder: {fmt(out["dual encoder"]["average"])}')
  emb = None
  if 'semantic' in args.kinds:
    emb = dsi_embeddings.save_embeddings(
        os.path.join(args.out, f'{name}_doc_embeddings.npy'),
        dsi_embeddings.doc_embeddings(run, corpus.doc_texts))
  queries = None
  if any(s.endswith('+syn') for s in args.systems):
    queries = synthetic(args, name, corpus, sps[name])
  for system in args.systems:
    kind, synth = system.split('+')[0], system.endswith('+syn')
    label = f'DSI {kind}' + (' + synthetic' if synth else '')
    tag = f'{name}_dsi_{kind}' + ('_synthetic' if synth else '')
    if time_left_s(args) < args.budget_minutes * 60 + 180:
      log(f'{name} {label}: skipped (--stop-at {args.stop_at})')
      continue
    try:
      out[label] = dsi_system(args, name, kind, sps[name], emb,
                              queries if synth else None, tag)
    except Exception:  # pylint: disable=broad-except
      # One broken system must not lose the others' rows.
      log(f'{name} {label} FAILED:\n{traceback.format_exc()}')
      gin.clear_config()
      continue
    save(args, name, out)
  return out


_ALL: dict = {}


def save(args, name, out):
  _ALL[name] = out
  path = os.path.join(args.out, 'results.json')
  files.atomic_write_json(path, {'args': vars(args), 'results': _ALL},
                          indent=1)


def main_(argv=None):
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  import jax
  log(f'jax {jax.__version__} on {jax.devices()[0].platform} '
      f'({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}); '
      f'{args.steps or 0} steps / {args.budget_minutes} min per DSI system, '
      f'{args.aux_steps or 0} steps / {args.aux_budget_minutes} min per '
      'auxiliary model (0 steps: the minutes bound), d_model '
      f'{args.dim}, {args.queries_per_doc} synthetic queries per document')
  sps = {}
  for name in args.corpora + (['xquad'] if 'xquad' not in args.corpora
                              else []):
    path = os.path.join(args.out, f'{name}_spm.model')
    sps[name] = dsi_tasks.corpus_vocabulary(load_corpus(name), path,
                                            SP_SIZE[name])
  de_dir = dual_encoder(args, sps['xquad'])
  for name in args.corpora:
    if time_left_s(args) < args.budget_minutes * 60 + 300:
      log(f'{name}: skipped (--stop-at {args.stop_at})')
      continue
    save(args, name, run_corpus(args, name, de_dir, sps))
  languages = list(datasets.XQUAD_LANGUAGES)
  print('\n' + table(_ALL, languages if 'xquad' in _ALL else []))
  print(f'\n(random ranking: Hits@10 = {10 / 240:.3f} on XQuAD, '
        f'{10 / 1400:.4f} on Cranfield; results in '
        f'{os.path.join(args.out, "results.json")})')
  if args.timing != 'skip':
    from benchmarks import constrained_decoding  # pylint: disable=g-import-not-at-top
    log('constrained vs unconstrained beam search (random ids)')
    constrained_decoding.main(['--quick'] if args.timing == 'quick' else [])


if __name__ == '__main__':
  main_()
