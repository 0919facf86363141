"""The reranker's model wrapper (what the trainer calls) and its import.

Batches (`rerank_tasks.RerankFeatureConverter`): b lists of n candidates,

    pair_tokens     int32 (b, n, L)   candidate 0 is the positive when
                                      training; padding candidates all 0
    labels          float32 (b, n)    relevance grades (> 0 relevant)
    teacher_scores  float32 (b, n)    a teacher's scores (NaN: no teacher)

flattened to (b * n, L) rows for the network (`reranker.Reranker`). The
trainer shards axis 0 (the lists) over the data axes.

Losses (`loss`): 'mono_ce' (monoT5: cross-entropy over the whole
vocabulary of the first decoder step's target token, true for a relevant
candidate and false otherwise, averaged over a list's candidates; mono
head only), or a ranking loss of `retrieval.rerank.losses` on the scores:
'pointwise', 'pairwise' (RankNet), 'listwise' (RankT5's softmax
cross-entropy). `distill_weight` > 0 adds that times Margin-MSE against
the batch's `teacher_scores` for lists that have them (finite on every
real candidate).

The trainer's metrics are per LIST here: `num_tokens` counts lists (rows
whose candidate 0 is real), `loss` is the mean per-list loss and
`accuracy` the share of lists whose positive scores above every other
candidate.

Initialisation: `train.init_from = [run]` (a Rosetta NMT run, a `rosetta
import`ed HF T5 / mT5, another reranker; `rosetta.run.param_sources`)
or `train.init_from_hf` (an HF folder, through `import_hf_checkpoint`):
the T5's parameters come from there, parameters the T5 does not have (the
score head; LoRA / adapters when the config adds them) start fresh.
"""

from __future__ import annotations

import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio
from flax import nnx

from retrieval.rerank import losses as rank_losses
from retrieval.rerank import rerank_tasks
from retrieval.rerank.reranker import HEADS, HeadConfig, Reranker, token_id
from rosetta import partitioning
from rosetta.checkpoint import hf as checkpoint_import
from rosetta.checkpoint import hf_command
from rosetta.model.encoder_decoder import T5Config
from rosetta.model.losses import cross_entropy_with_logits
from rosetta.partitioning import Partitioner

LOSSES = ('mono_ce', 'pointwise', 'pairwise', 'listwise')
# T5Config fields a PEFT config adds on top of a T5 (absent in older cores):
# an initialising checkpoint holds the T5 without them.

@gin.configurable
class RerankerModel:
  """Wrapper for rerankers, with EncoderDecoderModel's interface:
  make_network, get_initial_variables, check_batch, loss_weights, loss_fn,
  score_batch, import_hf_checkpoint and FEATURE_CONVERTER_CLS.

  head: 'mono' | 'rank_encdec' | 'rank_encoder' (`reranker`); pooling:
  'first' | 'mean' (rank_encoder). true_token / false_token (mono) and
  score_token (rank_encdec): a word that is one piece of the vocabulary
  or a token id. vocabulary: where words are looked up: 'bytes', a
  SentencePiece path, a seqio vocabulary, or None for the vocabulary
  `rerank_tasks.setup` registered (the run's). loss: see the module
  docstring; None takes 'mono_ce' for the mono head, 'listwise'
  otherwise. z_loss: mono_ce's log Z penalty. num_candidates: list size of
  the batches (positive + negatives; the converter pads or cuts to it).
  """

  FEATURES = ('pair_tokens', 'labels')

  def __init__(self, config: T5Config | None = None, *, head: str = 'mono',
               pooling: str = 'first', true_token: str | int = 'true',
               false_token: str | int = 'false',
               score_token: str | int = '<extra_id_10>',
               vocabulary: str | seqio.Vocabulary | None = None,
               loss: str | None = None, distill_weight: float = 0.0,
               z_loss: float = 1e-4, num_candidates: int = 8):
    self.config = config if config is not None else T5Config()
    if head not in HEADS:
      raise ValueError(f'RerankerModel.head must be one of {HEADS}, got '
                       f'{head!r}')
    loss = loss if loss is not None else (
        'mono_ce' if head == 'mono' else 'listwise')
    if loss not in LOSSES:
      raise ValueError(f'RerankerModel.loss must be one of {LOSSES}, got '
                       f'{loss!r}')
    if loss == 'mono_ce' and head != 'mono':
      raise ValueError(f"RerankerModel.loss = 'mono_ce' needs head = 'mono' "
                       f"(got head = {head!r}); use 'pointwise', 'pairwise' "
                       "or 'listwise'")
    if not distill_weight >= 0.0:
      raise ValueError(f'RerankerModel.distill_weight must be >= 0, got '
                       f'{distill_weight!r}')
    if isinstance(num_candidates, bool) or not isinstance(
        num_candidates, int) or num_candidates < 1:
      raise ValueError(f'RerankerModel.num_candidates must be a positive '
                       f'int, got {num_candidates!r}')
    self.head, self.pooling, self.loss = head, pooling, loss
    self.tokens = {'true_token': true_token, 'false_token': false_token,
                   'score_token': score_token}
    self.vocabulary = vocabulary
    self.distill_weight, self.z_loss = float(distill_weight), z_loss
    self.num_candidates = num_candidates
    # The input pipeline's converter (t5x's FEATURE_CONVERTER_CLS).
    self.FEATURE_CONVERTER_CLS = functools.partial(
        rerank_tasks.RerankFeatureConverter, num_candidates=num_candidates)
    if head == 'rank_encoder':   # fail at gin time, not at the first batch
      HeadConfig(head, pooling=pooling).check(self.config.vocab_size)

  # ------------------------------------------------------------- network ---
  def _vocabulary(self) -> seqio.Vocabulary | None:
    if self.vocabulary is None:
      return rerank_tasks.current_vocabulary()
    if isinstance(self.vocabulary, seqio.Vocabulary):
      return self.vocabulary
    return rerank_tasks.vocabulary_from(self.vocabulary)

  def head_config(self) -> HeadConfig:
    """The head with its token ids looked up (words need a vocabulary: the
    model's, or the one the rerank tasks registered)."""
    needed = {'mono': ('true_token', 'false_token'),
              'rank_encdec': ('score_token',), 'rank_encoder': ()}[self.head]
    vocab = None
    if any(isinstance(self.tokens[f], str) for f in needed):
      vocab = self._vocabulary()
    ids = {f: token_id(self.tokens[f], vocab, f'RerankerModel.{f}')
           for f in needed}
    head = HeadConfig(self.head, true_id=ids.get('true_token'),
                      false_id=ids.get('false_token'),
                      score_id=ids.get('score_token'), pooling=self.pooling)
    head.check(self.config.vocab_size)
    return head

  def make_network(self, rngs: nnx.Rngs) -> Reranker:
    return Reranker(self.config, self.head_config(), rngs=rngs)

  def get_initial_variables(self, seed: int,
                            partitioner: Partitioner) -> Reranker:
    return partitioner.create_sharded(
        lambda: self.make_network(nnx.Rngs(params=seed)))

  def check_batch(self, batch):
    want = list(self.FEATURES) + (['teacher_scores'] if self.distill_weight
                                  else [])
    missing = [f for f in want if f not in batch]
    if missing:
      raise KeyError(f'batch is missing features {missing}; got '
                     f'{sorted(batch)} (use rerank_tasks.'
                     'RerankFeatureConverter)')
    shape = tuple(batch['pair_tokens'].shape)
    if len(shape) != 3:
      raise ValueError(f'pair_tokens has shape {shape}; expected (lists, '
                       'candidates, tokens)')
    for name in ('labels', 'teacher_scores'):
      if name in batch and tuple(batch[name].shape) != shape[:2]:
        raise ValueError(f'{name} has shape {tuple(batch[name].shape)}; '
                         f'expected {shape[:2]} (lists, candidates)')

  @staticmethod
  def candidate_mask(batch):
    """(b, n) bool: real candidates (any non-padding token)."""
    return jnp.any(batch['pair_tokens'] != 0, axis=-1)

  @classmethod
  def loss_weights(cls, batch):
    """(b,) 1 for a real list (its candidate 0 is real), 0 for padding
    rows: the trainer's normaliser counts lists."""
    return cls.candidate_mask(batch)[:, 0].astype(jnp.float32)

  # ---------------------------------------------------------------- loss ---
  def scores_and_losses(self, network: Reranker, batch, dropout_rng=None):
    """((b, n) scores, (b,) per-list loss, (b,) per-list z-loss part)."""
    self.check_batch(batch)
    tokens = batch['pair_tokens']
    b, n, length = tokens.shape
    flat = tokens.reshape(b * n, length)
    mask = self.candidate_mask(batch)
    labels = batch['labels'].astype(jnp.float32)
    deterministic = dropout_rng is None
    rngs = None if deterministic else nnx.Rngs(dropout=dropout_rng)
    z_part = jnp.zeros((b,), jnp.float32)
    if self.loss == 'mono_ce':
      logits = network.first_step_logits(flat, deterministic=deterministic,
                                         rngs=rngs)
      head = network.head
      targets = jnp.where(labels.reshape(-1) > 0, head.true_id, head.false_id)
      weights = mask.reshape(-1, 1).astype(jnp.float32)
      ce, z = cross_entropy_with_logits(logits[:, None], targets[:, None],
                                        weights, z_loss=self.z_loss)
      count = jnp.maximum(mask.sum(-1), 1).astype(jnp.float32)
      per_list = ce.reshape(b, n).sum(-1) / count
      z_part = z.reshape(b, n).sum(-1) / count
      scores = network.score_from_logits(logits).reshape(b, n)
    else:
      scores = network.score(flat, deterministic=deterministic,
                             rngs=rngs).reshape(b, n)
      per_list = rank_losses.ranking_loss(self.loss, scores, labels, mask)
    if self.distill_weight:
      teacher = batch['teacher_scores'].astype(jnp.float32)
      finite = jnp.isfinite(teacher)
      known = jnp.all(finite | ~mask, axis=-1)
      margin = rank_losses.margin_mse_loss(
          scores, jnp.where(finite, teacher, 0.0), mask)
      per_list = per_list + self.distill_weight * jnp.where(known, margin,
                                                            0.0)
    return scores, per_list, z_part

  def loss_fn(self, network: Reranker, batch, dropout_rng=None,
              normalizer=None):
    """Summed per-list loss / normalizer (default: this batch's lists)."""
    scores, per_list, z_part = self.scores_and_losses(network, batch,
                                                      dropout_rng)
    rows = self.loss_weights(batch)
    mask = self.candidate_mask(batch)
    others = jnp.where(mask[:, 1:], scores[:, 1:], -jnp.inf)
    best_other = jnp.max(others, axis=-1, initial=-jnp.inf)
    correct = rows * (scores[:, 0] > best_other)
    num_lists = rows.sum()
    normalizer = num_lists if normalizer is None else normalizer
    loss_sum = jnp.sum(per_list * rows)
    metrics = {
        'loss_sum': loss_sum,
        'z_loss_sum': jnp.sum(z_part * rows),
        'correct': correct.sum(),
        'num_tokens': num_lists,   # the trainer's name; here: lists
    }
    return loss_sum / jnp.maximum(normalizer, 1.0), metrics

  # ----------------------------------------------------------- inference ---
  def score_batch(self, network: Reranker, batch):
    """(b, n) scores of the batch's candidates; -inf for padding ones."""
    tokens = batch['pair_tokens']
    b, n, length = tokens.shape
    scores = network.score(tokens.reshape(b * n, length)).reshape(b, n)
    return jnp.where(self.candidate_mask(batch), scores, -jnp.inf)

  # -------------------------------------------------------------- import ---
  def import_hf_checkpoint(self, directory: str,
                           partitioner: Partitioner | None = None
                           ) -> Reranker:
    """This model's network initialised from an HF T5 / mT5 folder
    (config.json + safetensors) of this config's architecture; the head's
    parameters fresh. `train.init_from_hf` and `rosetta import` call it.
    A Rosetta run (an NMT run, an imported one) is named in
    `train.init_from` instead: every T5 path is shared."""
    partitioner = partitioner or Partitioner(partitioning.make_mesh())
    with partitioner.activate():
      abstract = nnx.eval_shape(lambda: self.make_network(nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    values = self._hf_parameters(directory, abstract_state)
    return nnx.merge(graphdef, self._placed(values, abstract_state,
                                            partitioner))

  def _hf_parameters(self, directory: str, abstract_state):
    theirs = checkpoint_import.load_hf_config(directory)
    differ = [f for f in hf_command.ARCHITECTURE
              if getattr(theirs, f) != getattr(self.config, f)]
    if differ:
      raise ValueError(
          f'{directory}: the checkpoint does not fit RerankerModel.config: '
          + ', '.join(f'{f}={getattr(theirs, f)!r} (config: '
                      f'{getattr(self.config, f)!r})' for f in differ))
    return checkpoint_import.hf_to_rosetta(
        checkpoint_import.read_safetensors(directory), self.config,
        abstract_state)

  def _placed(self, values, abstract_state, partitioner: Partitioner):
    """`abstract_state` with `values` on their shards; the parameters
    `values` lacks (the head's) as a fresh network (seed 0) has them."""
    shardings = dict(nnx.to_flat_state(
        partitioner.state_shardings(abstract_state)))
    paths = [p for p, _ in nnx.to_flat_state(abstract_state)]
    missing = [p for p in paths if p not in values]
    fresh = {}
    if missing:
      def init():   # only the missing values survive XLA's dead-code pass
        flat = dict(nnx.to_flat_state(nnx.state(
            self.make_network(nnx.Rngs(params=0)))))
        return [flat[p].get_value() for p in missing]
      with partitioner.activate():
        fresh = dict(zip(missing, jax.jit(
            init, out_shardings=[shardings[p] for p in missing])()))

    def place(path, variable):
      if path in fresh:
        return variable.replace(fresh[path])
      value, dtype = values[path], variable.get_value().dtype
      value = (value.astype(dtype) if isinstance(value, jax.Array)
               else np.asarray(value, dtype))   # host -> its shards only
      return variable.replace(jax.device_put(value, shardings[path]))
    return nnx.map_state(place, abstract_state)
