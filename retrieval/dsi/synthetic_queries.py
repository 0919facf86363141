"""Synthetic queries for DSI indexing (Pradeep et al. 2023; DSI-QG).

A query generator (document -> query, a seq2seq task on the TRAINING
questions) is trained with the ordinary trainer, then samples n queries per
document; each (synthetic query -> docid of its document) becomes an extra
indexing example in the DSI mixture. Pradeep et al. found this the most
important ingredient at scale: the model learns the docids from text that
looks like the queries it will see, not only from the documents' first
tokens.

    1. rosetta train --gin_file=dsi/qgen_xquad_tiny.gin \\
           --gin.train.model_dir="'runs/qgen_xquad'"
    2. gen = QueryGenerator.from_run('runs/qgen_xquad')
       records = generate(gen, dsi_tasks.xquad_corpus(), n=5)
       query_files.write_queries('runs/xquad_queries.jsonl', records)
    3. rosetta train --gin_file=dsi/xquad_semantic_tiny.gin \\
           --gin.dsi_tasks.setup.synthetic_queries="'runs/xquad_queries.jsonl'"

Task `{corpus}_qgen{sfx}` (gin `qgen_setup`): inputs = the text of a
relevant document in the query's language (its first `doc_length` tokens),
targets = the query; 'train' from the training queries, 'test' from the
held-out ones (for the eval loss only: test queries are never generated
from or trained on). XQuAD: a question in language l is paired with its
paragraph in l, so the generator writes questions in the document's
language.

The queries file format (JSONL, checked on write and read) lives in
`retrieval.dsi.query_files`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from retrieval import datasets
from retrieval.dsi import dsi_tasks
from retrieval.dsi.evaluation import data_parallel_size, encode_texts, place_batch
from rosetta import partitioning
from rosetta.decoding import algorithms as decoding
from rosetta.decoding.processors import BanTokens, MinLength
from rosetta.model import encoder_decoder_model
from rosetta.run import run_dir
from rosetta.run.run_dir import RunDir

# ----------------------------------------------------------------- task ---

def qgen_rows(corpus: dsi_tasks.DsiCorpus, split: str
              ) -> list[tuple[str, str]]:
  """(document text, query) for every (query, relevant document) of the
  split whose language the corpus indexes."""
  row_of = {k: i for i, k in enumerate(corpus.doc_keys)}
  rows = []
  for q in corpus.queries.get(split, ()):
    texts = corpus.doc_texts.get(q.language)
    if texts is None:
      continue
    rows += [(texts[row_of[d]], q.text) for d, _ in q.relevant]
  return rows


def register_qgen_task(corpus: dsi_tasks.DsiCorpus,
                       vocabulary: seqio.Vocabulary, *, doc_length: int = 128,
                       suffix: str = '') -> str:
  """Registers `{corpus}_qgen{suffix}` (module doc); returns its name."""
  name = f'{corpus.name}_qgen{suffix}'
  rows = {split: [(d, q, '') for d, q in qgen_rows(corpus, split)]
          for split in corpus.queries}
  if not rows.get('train'):
    raise ValueError(f'register_qgen_task: {corpus.name} has no training '
                     'queries in an indexed language')
  features = {'inputs': seqio.Feature(vocabulary, add_eos=True),
              'targets': seqio.Feature(vocabulary, add_eos=True)}
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=dsi_tasks.ExampleSource(rows, name),
      output_features=features,
      preprocessors=[seqio.preprocessors.tokenize,
                     lambda ds: dsi_tasks.truncate_inputs(ds, doc_length),
                     seqio.preprocessors.append_eos_after_trim],
      metric_fns=[])
  return name


@gin.configurable
def qgen_setup(corpus: str = 'xquad', vocabulary: str = 'bytes',
               languages: Sequence[str] = datasets.XQUAD_LANGUAGES,
               min_grade: int = 1, doc_length: int = 128,
               suffix: str = '') -> str:
  """gin `task_setup` hook: reads the corpus and registers its query
  generation task (`languages`: XQuAD's documents and queries; corpus
  may also be a collection spec, `dsi_tasks.read_corpus`)."""
  c = dsi_tasks.read_corpus(corpus, index_languages=languages,
                            query_languages=languages, min_grade=min_grade,
                            field='synthetic_queries.qgen_setup.corpus')
  if vocabulary != 'bytes':   # travels with the run (run_dir.register_asset)
    run_dir.register_asset('synthetic_queries.qgen_setup.vocabulary',
                           vocabulary)
  return register_qgen_task(c, dsi_tasks.text_vocabulary(vocabulary),
                            doc_length=doc_length, suffix=suffix)


# ----------------------------------------------------------- generation ---

@dataclasses.dataclass
class QueryGenerator:
  """A trained document -> query model, ready to sample."""
  network: object                       # EncoderDecoder
  vocabulary: seqio.Vocabulary
  input_length: int
  partitioner: partitioning.Partitioner | None = None

  @classmethod
  def from_run(cls, model_dir: str, *, mesh=None, step: int | None = None
               ) -> 'QueryGenerator':
    """Restores a run of `qgen_setup` from its config.gin. This REPLACES
    the global gin config: call it between runs, not inside one."""
    run = RunDir(model_dir)
    run.parse_config()
    task = seqio.get_mixture_or_task(gin.query_parameter('train.task'))
    length = gin.query_parameter('train.task_feature_lengths')['inputs']
    trainer, state, _ = run.restore_for_inference(
        encoder_decoder_model.EncoderDecoderModel(), mesh, step)
    return cls(trainer.network(state['params']),
               task.output_features['inputs'].vocabulary, length,
               trainer.partitioner)

  def sample(self, texts: Sequence[str], n: int, *, seed: int = 0,
             top_k: int = 10, top_p: float = 0.95, temperature: float = 1.0,
             max_length: int = 64, batch_size: int = 64,
             progress: Callable[[int], None] | None = None
             ) -> list[list[tuple[str, float]]]:
    """n sampled queries per text: [[(query, log_prob)] * n]. Batches hold
    batch_size // n texts (each repeated n times; rows draw independently)
    and are padded to one shape; batch b uses fold_in(key(seed), b), so a
    seed gives the same queries again. EOS is banned at the first step and
    ids past the vocabulary (the model's padded rows) always; a sample can
    still decode to whitespace only (a lone '▁' piece): `generate` drops
    those. `progress(texts_done_in_this_batch)` after each batch (a bar)."""
    if n < 1 or batch_size < n:
      raise ValueError(f'QueryGenerator.sample: need 1 <= n <= batch_size, '
                       f'got n={n}, batch_size={batch_size}')
    per_batch = batch_size // n
    dp = data_parallel_size(self.partitioner)
    rows_total = -(-per_batch * n // dp) * dp   # shards evenly
    procs = [MinLength(1, eos_id=self.vocabulary.eos_id)]
    model_vocab = self.network.cfg.vocab_size
    if model_vocab > self.vocabulary.vocab_size:
      procs.append(BanTokens(jnp.arange(self.vocabulary.vocab_size,
                                        model_vocab)))
    procs = tuple(procs)
    out = []
    for b, start in enumerate(range(0, len(texts), per_batch)):
      chunk = encode_texts(texts[start:start + per_batch], self.vocabulary,
                           self.input_length)
      m = len(chunk)
      rows = np.zeros((rows_total, self.input_length), np.int32)
      rows[:m * n] = np.repeat(chunk, n, axis=0)
      ctx = (self.partitioner.activate() if self.partitioner else
             contextlib.nullcontext())
      with ctx:
        tokens, logp = decoding.sample(
            self.network, place_batch(rows, self.partitioner),
            rng=jax.random.fold_in(jax.random.key(seed), b),
            max_decode_length=max_length, temperature=temperature,
            top_k=top_k, top_p=top_p, processors=procs)
      tokens, logp = np.asarray(tokens), np.asarray(logp)
      for i in range(m):
        out.append([(self.vocabulary.decode(tokens[i * n + j].tolist()),
                     float(logp[i * n + j])) for j in range(n)])
      if progress is not None:
        progress(m)
    return out


def generate(generator: QueryGenerator, corpus: dsi_tasks.DsiCorpus, n: int,
             *, languages: Sequence[str] | None = None,
             doc_keys: Sequence[str] | None = None, **sample_kw
             ) -> list[dict]:
  """Records (module doc) of n queries per document and language (default:
  every language the corpus indexes; `doc_keys` to restrict). A sample
  that decodes to whitespace only is dropped (its 'sample' number is
  missing), so a document can have fewer than n."""
  languages = list(languages or corpus.doc_texts)
  missing = [l for l in languages if l not in corpus.doc_texts]
  if missing:
    raise ValueError(f'generate: {corpus.name} has no documents in '
                     f'{missing}; it has {sorted(corpus.doc_texts)}')
  keys = list(doc_keys) if doc_keys is not None else list(corpus.doc_keys)
  row_of = {k: i for i, k in enumerate(corpus.doc_keys)}
  unknown = [k for k in keys if k not in row_of]
  if unknown:
    raise ValueError(f'generate: {corpus.name} has no document {unknown[0]!r}')
  records = []
  for lang in languages:
    texts = [corpus.doc_texts[lang][row_of[k]] for k in keys]
    for key, samples in zip(keys, generator.sample(texts, n, **sample_kw)):
      records += [dict(doc=key, language=lang, sample=j, query=q.strip(),
                       log_prob=round(lp, 4))
                  for j, (q, lp) in enumerate(samples) if q.strip()]
  return records
