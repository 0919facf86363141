"""The dual encoder's model wrapper (what the trainer calls), its feature
converter, and `make_encode_fn` for indexing.

Task features (see `retrieval.dense.pair_tasks`) -> model features, unpacked, one
example per row. Worked example, byte vocabulary (id = byte + 3, EOS 1),
task_feature_lengths={'queries': 6, 'positives': 5, 'negatives': 5} and
`DualEncoderFeatureConverter(num_negatives=2)`::

    {'queries': [107, 108, 1], 'positives': [103, 104, 1],
     'negatives': [[100, 1], [101, 101, 101, 101, 1], [102, 1]]}   # ragged
  ->
    query_tokens    = [107, 108, 1, 0, 0, 0]
    positive_tokens = [103, 104, 1, 0, 0]
    negative_tokens = [[100, 1, 0, 0, 0], [101, 101, 101, 101, 1]]  # first 2
    query_ids, positive_ids, negative_ids: 31-bit fingerprints of the padded
      token rows (equal tokens <=> equal id, up to hash collisions), which
      the loss uses to mask duplicates (false negatives)

Rows with fewer hard negatives are padded with all-zero rows (masked out).

With teacher distillation (`DualEncoderModel(distillation=...)`,
`retrieval.dense.distillation`) the converter also passes the pair tasks'
teacher features through: `teacher_query_embeddings` and
`teacher_positive_embeddings` (float32 [dim], 'embedding') or
`teacher_scores` (float32 [1 + num_negatives]: the teacher's score of the
positive, then of each kept hard negative, padded with 0; 'margin_mse').

The trainer's metrics are per token for NMT; here they are per QUERY:
`num_tokens` counts queries, `loss` is the mean loss (contrastive, plus the
weighted distillation term when there is one) and `accuracy` the in-batch
top-1 retrieval accuracy (own positive above every non-relevant candidate
of the global batch).
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, Mapping, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio
import tensorflow as tf
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from rosetta import partitioning
from rosetta.checkpoint import hf as checkpoint_import
from rosetta import trainer as trainer_lib
from rosetta.partitioning import Partitioner
from rosetta.run import files
from retrieval.dense import contrastive
from retrieval.dense import distillation as distillation_lib
from retrieval.dense.dual_encoder import (DualEncoder, DualEncoderConfig,
                                    import_hf_encoder)

_Spec = seqio.FeatureConverter.FeatureSpec
# tower -> (task feature, model feature) it embeds.
TOWER_FEATURES = {'query': ('queries', 'query_tokens'),
                  'doc': ('positives', 'positive_tokens')}
ID_BUCKETS = 2**31 - 1
# T5Config fields that decide parameter shapes and the computation.
_ARCHITECTURE_FIELDS = (
    'vocab_size', 'emb_dim', 'num_heads', 'head_dim', 'mlp_dim',
    'num_encoder_layers', 'mlp_activations', 'relative_attention_num_buckets',
    'relative_attention_max_distance', 'layer_norm_epsilon', 'pad_token_id')


def fingerprint(tokens: tf.Tensor) -> tf.Tensor:
  """int32 id of each token row (last axis): equal rows, equal ids."""
  text = tf.strings.reduce_join(tf.strings.as_string(tokens), axis=-1,
                                separator=' ')
  return tf.cast(tf.strings.to_hash_bucket_fast(text, ID_BUCKETS), tf.int32)


def _pad_1d(x: tf.Tensor, length: int) -> tf.Tensor:
  x = x[:length]
  x = tf.pad(x, [[0, length - tf.shape(x)[0]]])
  x.set_shape([length])
  return x


class DualEncoderFeatureConverter(seqio.FeatureConverter):
  """(queries, positives[, negatives]) -> fixed-length model features.

  Task features: 'queries', 'positives' (int32 [None]) and, when
  `num_negatives` > 0, 'negatives' (int32 [None, None], ragged: a row per
  hard negative). Packing is not supported: a row is one query with its
  documents.

  teacher: a distillation mode (`retrieval.dense.distillation.MODES`) whose
  teacher features the examples must carry (the pair tasks add them with
  `pair_tasks.setup.teacher_embeddings`); they are not task features, so
  the task feature lengths do not name them. teacher_dim: the length of
  the teacher embeddings ('embedding'): the student's embedding dim.
  """

  TASK_FEATURES = {'queries': _Spec(tf.int32), 'positives': _Spec(tf.int32)}
  MODEL_FEATURES = {
      'query_tokens': _Spec(tf.int32), 'positive_tokens': _Spec(tf.int32),
      'query_ids': _Spec(tf.int32, rank=0),
      'positive_ids': _Spec(tf.int32, rank=0)}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = False, num_negatives: int = 0,
               teacher: str = 'none', teacher_dim: int | None = None,
               **kwargs):
    if pack:
      raise ValueError(
          'DualEncoderFeatureConverter: packing is not supported (a row is '
          'one query with its documents); set train.pack = False')
    if num_negatives < 0:
      raise ValueError(f'num_negatives must be >= 0, got {num_negatives}')
    self.num_negatives = num_negatives
    if num_negatives:
      self.TASK_FEATURES = dict(
          self.TASK_FEATURES, negatives=_Spec(tf.int32, rank=2,
                                              sequence_dim=1))
      self.MODEL_FEATURES = dict(
          self.MODEL_FEATURES,
          negative_tokens=_Spec(tf.int32, rank=2, sequence_dim=1),
          negative_ids=_Spec(tf.int32, rank=1))
    distillation_lib.check_mode(teacher, 'DualEncoderFeatureConverter.teacher')
    if teacher == 'embedding' and not (teacher_dim or 0) > 0:
      raise ValueError("DualEncoderFeatureConverter(teacher='embedding') "
                       f'needs teacher_dim (the embedding dim), got '
                       f'{teacher_dim!r}')
    self.teacher, self.teacher_dim = teacher, teacher_dim
    self.teacher_features = distillation_lib.TEACHER_FEATURES[teacher]
    if self.teacher_features:
      self.MODEL_FEATURES = dict(
          self.MODEL_FEATURES,
          **{f: _Spec(tf.float32, rank=1) for f in self.teacher_features})
    super().__init__(pack=False, **kwargs)

  def extra_example_features(self) -> dict[str, tf.TensorSpec]:
    """Features an example carries beyond TASK_FEATURES (the teacher's,
    which the task feature lengths do not name): `rosetta compile` builds
    its sample example from them."""
    return {f: tf.TensorSpec([self._teacher_length(f)], tf.float32)
            for f in self.teacher_features}

  def _check_teacher_features(self, element_spec) -> None:
    missing = [f for f in self.teacher_features if f not in element_spec]
    if missing:
      raise ValueError(
          f'DualEncoderModel.distillation={self.teacher!r} needs the teacher '
          f'features {missing} in every example; the dataset has '
          f'{sorted(element_spec)}. Set pair_tasks.setup.teacher_embeddings '
          '(retrieval.teacher: `rosetta teacher embeddings`)')
    for f in self.teacher_features:
      spec = element_spec[f]
      if spec.dtype != tf.float32 or spec.shape.rank != 1:
        raise ValueError(f'teacher feature {f!r} must be float32 [n], got '
                         f'{spec.dtype.name} {spec.shape}')
      if self.teacher == 'embedding':
        distillation_lib.check_dims(self.teacher_dim, spec.shape[0],
                                    f"the pair tasks' {f}")

  def _convert_features(self, ds, task_feature_lengths):
    k = self.num_negatives
    self._check_teacher_features(ds.element_spec)

    def convert(ex):
      q = _pad_1d(ex['queries'], task_feature_lengths['queries'])
      p = _pad_1d(ex['positives'], task_feature_lengths['positives'])
      out = {'query_tokens': q, 'positive_tokens': p,
             'query_ids': fingerprint(q), 'positive_ids': fingerprint(p)}
      if k:
        n = ex['negatives']
        if not isinstance(n, tf.RaggedTensor):
          n = tf.RaggedTensor.from_tensor(n)
        n = n.to_tensor(default_value=0,
                        shape=[k, task_feature_lengths['negatives']])
        out['negative_tokens'] = n
        out['negative_ids'] = fingerprint(n)
      for f in self.teacher_features:
        # teacher_scores: the positive's, then the first k negatives' (the
        # ones kept above), padded with 0 (masked as padding negatives).
        out[f] = _pad_1d(ex[f], self._teacher_length(f))
      return out
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    out = {'query_tokens': task_feature_lengths['queries'],
           'positive_tokens': task_feature_lengths['positives'],
           'query_ids': 1, 'positive_ids': 1}  # rank 0: lengths unchecked
    if self.num_negatives:
      out['negative_tokens'] = task_feature_lengths['negatives']
      out['negative_ids'] = self.num_negatives
    for f in self.teacher_features:
      out[f] = self._teacher_length(f)
    return out

  def _teacher_length(self, feature: str) -> int:
    return (1 + self.num_negatives if feature == 'teacher_scores'
            else self.teacher_dim)


@gin.configurable
class DualEncoderModel:
  """Wrapper for dual encoders, with EncoderDecoderModel's interface:
  make_network, get_initial_variables, loss_weights, loss_fn, score_batch
  (and FEATURE_CONVERTER_CLS for the input pipeline).

  bidirectional: add the document->query softmax (GTR). mode: 'mask'
  (duplicates of the positive are neither positives nor negatives) or
  'dexml' (they are all positives, decoupled softmax). num_negatives: hard
  negatives per query in each batch (the task must provide 'negatives').
  infer_tower: what `rosetta infer` embeds ('query': a split's queries
  with the query tower, 'doc': its positives with the document tower).

  distillation: 'none', 'embedding' or 'margin_mse' (see
  `retrieval.dense.distillation`; margin_mse needs num_negatives >= 1). The
  per-query loss is contrastive_weight * contrastive + distillation_weight
  * distillation; contrastive_weight = 0 trains on the teacher alone (the
  in-batch accuracy is still reported). The batch must then carry the
  teacher features (the converter requires them from the pair tasks).
  """

  FEATURES = ('query_tokens', 'positive_tokens')

  def __init__(self, config: DualEncoderConfig | None = None, *,
               bidirectional: bool = True, mode: str = 'mask',
               num_negatives: int = 0, infer_tower: str = 'query',
               distillation: str = 'none', distillation_weight: float = 1.0,
               contrastive_weight: float = 1.0):
    self.config = config if config is not None else DualEncoderConfig()
    if mode not in contrastive.MODES:
      raise ValueError(f'DualEncoderModel.mode must be one of '
                       f'{contrastive.MODES}, got {mode!r}')
    if num_negatives < 0:
      raise ValueError(f'DualEncoderModel.num_negatives must be >= 0, got '
                       f'{num_negatives}')
    if infer_tower not in TOWER_FEATURES:
      raise ValueError(f'DualEncoderModel.infer_tower must be one of '
                       f'{tuple(TOWER_FEATURES)}, got {infer_tower!r}')
    distillation_lib.check_mode(distillation, 'DualEncoderModel.distillation')
    for name, value in (('distillation_weight', distillation_weight),
                        ('contrastive_weight', contrastive_weight)):
      if not (isinstance(value, (int, float)) and 0 <= value < float('inf')):
        raise ValueError(f'DualEncoderModel.{name} must be a finite number '
                         f'>= 0, got {value!r}')
    if distillation == 'margin_mse' and not num_negatives:
      raise ValueError("DualEncoderModel.distillation='margin_mse' compares "
                       'margins over hard negatives: set num_negatives >= 1')
    if not contrastive_weight and (distillation == 'none'
                                   or not distillation_weight):
      raise ValueError('DualEncoderModel: contrastive_weight and the '
                       'distillation weight are both 0: nothing to learn')
    self.bidirectional, self.mode = bidirectional, mode
    self.infer_tower = infer_tower
    self.num_negatives = num_negatives
    self.distillation = distillation
    self.distillation_weight = float(distillation_weight)
    self.contrastive_weight = float(contrastive_weight)
    self.teacher_features = distillation_lib.TEACHER_FEATURES[distillation]
    # The input pipeline builds this model's features with it (t5x's name);
    # the teacher arguments only when distilling, so a plain model's
    # converter (and the pipeline state that names it) stays as it was.
    teacher = ({} if distillation == 'none' else
               {'teacher': distillation,
                'teacher_dim': self.config.embedding_dim})
    self.FEATURE_CONVERTER_CLS = functools.partial(
        DualEncoderFeatureConverter, num_negatives=num_negatives, **teacher)

  # ------------------------------------------------------------- network ---
  def make_network(self, rngs: nnx.Rngs) -> DualEncoder:
    return DualEncoder(self.config, rngs=rngs)

  def get_initial_variables(self, seed: int,
                            partitioner: Partitioner) -> DualEncoder:
    return partitioner.create_sharded(
        lambda: self.make_network(nnx.Rngs(params=seed)))

  def import_hf_checkpoint(self, directory: str,
                           partitioner: Partitioner | None = None
                           ) -> DualEncoder:
    """This model's network with the encoder weights of an HF T5-family
    checkpoint (`train.init_from_hf` calls it). The checkpoint must have
    this config's architecture; dropout and dtypes stay this config's."""
    mine = self.config.encoder
    theirs = checkpoint_import.load_hf_config(directory)
    differ = [f for f in _ARCHITECTURE_FIELDS
              if getattr(mine, f) != getattr(theirs, f)]
    if differ:
      raise ValueError(
          f'{directory}: the checkpoint does not fit DualEncoderConfig.'
          f'encoder: ' + ', '.join(f'{f}={getattr(theirs, f)!r} (config: '
                                   f'{getattr(mine, f)!r})' for f in differ))
    return import_hf_encoder(
        directory, self.config, partitioner=partitioner,
        dropout_rate=mine.dropout_rate, dtype=mine.dtype,
        param_dtype=mine.param_dtype, scan_layers=mine.scan_layers)

  def check_batch(self, batch):
    want = list(self.FEATURES) + (['negative_tokens'] if self.num_negatives
                                  else [])
    missing = [f for f in want if f not in batch]
    if missing:
      raise KeyError(f'batch is missing features {missing}; got '
                     f'{sorted(batch)} (use DualEncoderFeatureConverter)')
    if self.num_negatives:
      shape = tuple(batch['negative_tokens'].shape)
      if len(shape) != 3 or shape[1] != self.num_negatives:
        raise ValueError(f'negative_tokens has shape {shape}; expected '
                         f'(batch, num_negatives={self.num_negatives}, len)')
    self.check_teacher_features(batch)

  def check_teacher_features(self, batch):
    """The teacher features `distillation` reads, with their shapes."""
    missing = [f for f in self.teacher_features if f not in batch]
    if missing:
      raise KeyError(
          f'DualEncoderModel.distillation={self.distillation!r}: the batch '
          f'has no {missing} (got {sorted(batch)}); the pair tasks add them '
          'with pair_tasks.setup.teacher_embeddings')
    b = batch['query_tokens'].shape[0]
    for f in self.teacher_features:
      shape = tuple(batch[f].shape)
      if f == 'teacher_scores':
        if shape != (b, 1 + self.num_negatives):
          raise ValueError(f'teacher_scores has shape {shape}; expected '
                           f'(batch, 1 + num_negatives) = '
                           f'({b}, {1 + self.num_negatives})')
        continue
      if len(shape) != 2 or shape[0] != b:
        raise ValueError(f'{f} has shape {shape}; expected (batch={b}, dim)')
      distillation_lib.check_dims(self.config.embedding_dim, shape[1], f)

  @staticmethod
  def loss_weights(batch):
    """(B,) 1 for real rows, 0 for all-padding rows (padded eval batches):
    the trainer's normaliser counts queries."""
    return jnp.any(batch['query_tokens'] != 0, axis=-1).astype(jnp.float32)

  # ---------------------------------------------------------------- loss ---
  def embed(self, network: DualEncoder, batch, dropout_rng=None):
    """(queries, positives, negatives or None) embeddings of a batch."""
    self.check_batch(batch)
    deterministic = dropout_rng is None
    rngs = None if deterministic else nnx.Rngs(dropout=dropout_rng)
    kw = dict(deterministic=deterministic, rngs=rngs)
    q = network.encode(batch['query_tokens'], 'query', **kw)
    p = network.encode(batch['positive_tokens'], 'doc', **kw)
    n = (network.encode(batch['negative_tokens'], 'doc', **kw)
         if self.num_negatives else None)
    return q, p, n

  def contrastive_output(self, network: DualEncoder, batch,
                         dropout_rng=None) -> contrastive.ContrastiveOutput:
    return self.output_from_embeddings(
        network, batch, *self.embed(network, batch, dropout_rng))

  def output_from_embeddings(self, network: DualEncoder, batch, q, p, n
                             ) -> contrastive.ContrastiveOutput:
    neg_ids = neg_valid = None
    if self.num_negatives:
      neg_valid = jnp.any(batch['negative_tokens'] != 0, axis=-1)
      neg_ids = batch.get('negative_ids')
    return contrastive.in_batch_softmax(
        q, p, n, scale=network.logit_scale(),
        query_ids=batch.get('query_ids'),
        positive_ids=batch.get('positive_ids'), negative_ids=neg_ids,
        row_valid=self.loss_weights(batch) > 0, negative_valid=neg_valid,
        bidirectional=self.bidirectional, mode=self.mode)

  def loss_fn(self, network: DualEncoder, batch, dropout_rng=None,
              normalizer=None):
    """Summed per-query loss / normalizer (default: this batch's queries).

    The in-batch negatives are the whole global batch; with microbatches
    the trainer calls `accumulated_grads`, which keeps them so.
    """
    embeddings = self.embed(network, batch, dropout_rng)
    return self._loss_and_metrics(
        batch, self.output_from_embeddings(network, batch, *embeddings),
        normalizer, embeddings)

  def distillation_output(self, batch, q, p, n):
    """(B,) the distillation term of each query row (0 for padded rows
    and rows without a teacher)."""
    neg_valid = (jnp.any(batch['negative_tokens'] != 0, axis=-1)
                 if self.num_negatives else None)
    return distillation_lib.distillation_loss(
        self.distillation, batch, q, p, n, self.loss_weights(batch) > 0,
        neg_valid)

  def _loss_and_metrics(self, batch, out, normalizer, embeddings):
    num_queries = self.loss_weights(batch).sum()
    normalizer = num_queries if normalizer is None else normalizer
    per_query = out.loss
    distill = None
    if self.distillation != 'none':
      distill = self.distillation_output(batch, *embeddings)
      per_query = (self.contrastive_weight * per_query
                   + self.distillation_weight * distill)
    loss_sum = per_query.sum()
    metrics = {
        'loss_sum': loss_sum,
        'z_loss_sum': jnp.zeros((), jnp.float32),
        'correct': out.correct.sum(),
        'num_tokens': num_queries,   # the trainer's name; here: queries
    }
    if distill is not None:   # unweighted, for logs
      metrics['distill_sum'] = distill.sum()
    return loss_sum / jnp.maximum(normalizer, 1.0), metrics

  def accumulated_grads(self, network_fn, params, micro, rng, normalizer,
                        constrain_rows):
    """Gradient accumulation that keeps the whole batch's negatives
    (GradCache, Gao et al. 2021): embed every microbatch without keeping
    activations, take the loss over all embeddings and its gradient with
    respect to them, then re-run each microbatch's towers and backpropagate
    its slice of that gradient. Equal to the one-batch gradient (same
    dropout keys in both passes), at the memory of one microbatch.

    micro: the batch split by `trainer.split_microbatches`; returns
    (grads, metrics) as the trainer's own accumulation does.
    """
    m = jax.tree.leaves(micro)[0].shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(m))

    def embed(p, mb, key):
      return self.embed(network_fn(p), constrain_rows(mb), key)

    def embed_one(_, xs):
      mb, key = xs
      return None, jax.lax.stop_gradient(embed(params, mb, key))
    _, stacked = jax.lax.scan(embed_one, None, (micro, keys))
    batch = trainer_lib.merge_microbatches(micro)
    full = trainer_lib.merge_microbatches(stacked)

    def loss_of(p, embeddings):
      network = network_fn(p)
      out = self.output_from_embeddings(network, batch, *embeddings)
      # The distillation term depends on the embeddings only: its
      # gradient reaches the towers through the same cotangents.
      return self._loss_and_metrics(batch, out, normalizer, embeddings)
    (_, metrics), (grads, d_full) = jax.value_and_grad(
        loss_of, argnums=(0, 1), has_aux=True)(params, full)
    d_micro = trainer_lib.split_microbatches(d_full, m)

    def backprop_one(acc, xs):
      mb, key, cotangent = xs
      _, vjp = jax.vjp(lambda p: embed(p, mb, key), params)
      return jax.tree.map(jnp.add, acc, vjp(cotangent)[0]), None
    grads, _ = jax.lax.scan(backprop_one, grads, (micro, keys, d_micro))
    return grads, metrics

  # ----------------------------------------------------------- inference ---
  def score_batch(self, network: DualEncoder, batch):
    """(B,) similarity of each query with its own positive (cosine when
    L2-normalised; not scaled by the temperature)."""
    q = network.encode(batch['query_tokens'], 'query')
    p = network.encode(batch['positive_tokens'], 'doc')
    return jnp.sum(q * p, axis=-1)

  def predict_batch(self, network, batch, tower: str | None = None,
                    **unused):
    """(B, dim) embeddings of the batch's `query_tokens` ('query' tower)
    or `positive_tokens` ('doc'); default `infer_tower`. A dual encoder
    does not decode: search an index of these (retrieval.dense.indexing)."""
    tower = tower or self.infer_tower
    return network.encode(batch[TOWER_FEATURES[tower][1]], tower)

  def write_inference(self, network, *, task: str, split: str,
                      output_path: str, batch_size: int = 32,
                      task_feature_lengths=None,
                      num_examples: int | None = None,
                      partitioner: Partitioner) -> str:
    """`rosetta infer` on a dual encoder (`runs.infer` calls it): embeds
    the `infer_tower` texts of a task split, in dataset order, with the
    tokenization of the pair tasks and `make_encode_fn`. Writes, atomically,
    JSONL `{"index", "text", "embedding": [...]}` per example, or for an
    `output_path` ending in .npy the (n, dim) float32 array there and
    `{"index", "text"}` lines in `<output_path minus .npy>.ids.jsonl`.
    Texts are cut to `task_feature_lengths['queries' / 'positives']`
    tokens (default: the longest text's, nothing cut)."""
    feature, _ = TOWER_FEATURES[self.infer_tower]
    task_obj = seqio.get_mixture_or_task(task)
    if feature not in task_obj.output_features:
      raise ValueError(f'infer: task {task!r} has no {feature!r} feature '
                       f'(features: {sorted(task_obj.output_features)}); '
                       'a dual encoder embeds a pair task '
                       '(retrieval.dense.pair_tasks)')
    vocab = task_obj.output_features[feature].vocabulary
    ds = task_obj.get_dataset(sequence_length=None, split=split,
                              shuffle=False, num_epochs=1)
    if num_examples is not None:
      ds = ds.take(num_examples)
    texts = [ex[f'{feature}_pretokenized'].decode('utf-8')
             for ex in ds.as_numpy_iterator()]
    if not texts:
      raise ValueError(f'infer: task {task!r} has no {split!r} examples')
    length = (task_feature_lengths or {}).get(feature) or max(
        len(vocab.encode(t)) for t in texts) + 1
    sizes = dict(zip(partitioner.mesh.axis_names, partitioner.mesh.axis_sizes))
    dp = sizes.get('data', 1) * sizes.get('fsdp', 1)
    encode = make_encode_fn(self, network, vocab, max(length, 2),
                            -(-batch_size // dp) * dp, partitioner.mesh,
                            tower=self.infer_tower)
    chunk = 16 * batch_size
    parts = []
    for start in tqdm(range(0, len(texts), chunk), unit='chunk',
                      desc=f'infer ({self.infer_tower} tower)', disable=None,
                      file=sys.stderr):
      parts.append(encode(texts[start:start + chunk]))
    embeddings = np.concatenate(parts)
    if jax.process_index():   # every process encodes; process 0 writes
      return output_path
    if output_path.endswith('.npy'):
      ids_path = output_path[:-len('.npy')] + '.ids.jsonl'
      with files.atomic_path(output_path, suffix='.npy') as tmp:
        np.save(tmp, embeddings)
      files.write_jsonl_atomically(ids_path, (
          {'index': i, 'text': t} for i, t in enumerate(texts)))
      return output_path
    return files.write_jsonl_atomically(output_path, (
        {'index': i, 'text': t, 'embedding': row.tolist()}
        for i, (t, row) in enumerate(zip(texts, embeddings))))


# ---------------------------------------------------------- encode texts ---


def tokenize(texts: Sequence[str], vocabulary: seqio.Vocabulary,
             max_length: int) -> np.ndarray:
  """(n, max_length) int32 as the pair tasks build them: the text's tokens
  trimmed to max_length - 1, then EOS, then padding."""
  out = np.zeros((len(texts), max_length), np.int32)
  eos = vocabulary.eos_id
  for i, text in enumerate(texts):
    ids = list(vocabulary.encode(text))[:max_length - 1] + [eos]
    out[i, :len(ids)] = ids
  return out




@functools.lru_cache(maxsize=8)
def _embed_fn(graphdef, tower: str, replicated: NamedSharding):
  """The jitted tower of a network structure, one per (structure, tower):
  a new `make_encode_fn` on new parameters of the same network (the
  trainer's evaluation, every eval point) reuses its executables. The
  parameters and the tokens come already placed (`partitioning.placed_network`, `rows`)."""
  @functools.partial(jax.jit, out_shardings=replicated)
  def embed(state, tokens):
    return nnx.merge(graphdef, state).encode(tokens, tower)
  return embed


def make_encode_fn(model: DualEncoderModel, network_or_state,
                   vocabulary: seqio.Vocabulary, max_length: int,
                   batch_size: int, mesh: Mesh, tower: str = 'query'
                   ) -> Callable[[Sequence[str]], np.ndarray]:
  """texts -> (n, dim) float32 embeddings, batched and jitted on `mesh`.

  `batch_size` is global: a multiple of the mesh's data-parallel size
  (data x fsdp). The last batch is padded with empty rows and trimmed, so
  one executable serves every call. Multi-host: every process must call it
  with the same texts (each places only the rows its devices hold).

      encode = make_encode_fn(model, state, vocab, 128, 64, mesh, 'doc')
      doc_vectors = encode(['first passage', 'second passage'])  # (2, dim)
  """
  if tower not in ('query', 'doc'):
    raise ValueError(f"tower must be 'query' or 'doc', got {tower!r}")
  if max_length < 2:
    raise ValueError(f'max_length must be >= 2 (a token and EOS), got '
                     f'{max_length}')
  part = Partitioner(mesh)
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  dp = sizes.get('data', 1) * sizes.get('fsdp', 1)
  if batch_size <= 0 or batch_size % dp:
    raise ValueError(f'batch_size={batch_size} must be a positive multiple '
                     f'of the data-parallel size {dp} (mesh {sizes})')
  network = partitioning.placed_network(model, network_or_state, part)
  graphdef, state = nnx.split(network)
  dim = network.cfg.embedding_dim
  rows = part.sharding(partitioning.BATCH_AXES, (batch_size, max_length))
  embed = _embed_fn(graphdef, tower, NamedSharding(mesh, PartitionSpec()))

  def encode(texts: Sequence[str]) -> np.ndarray:
    if isinstance(texts, str):
      raise TypeError('encode takes a list of texts, not one string')
    texts = list(texts)
    out = np.zeros((len(texts), dim), np.float32)
    for start in range(0, len(texts), batch_size):
      chunk = tokenize(texts[start:start + batch_size], vocabulary,
                       max_length)
      n = len(chunk)
      if n < batch_size:
        chunk = np.concatenate(
            [chunk, np.zeros((batch_size - n, max_length), np.int32)])
      tokens = jax.make_array_from_callback(chunk.shape, rows,
                                            lambda i, c=chunk: c[i])
      with part.activate():
        out[start:start + n] = np.asarray(embed(state, tokens))[:n]
    return out
  return encode
