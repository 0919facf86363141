"""Teacher distillation terms of the dual encoder's loss (JAX, float32).

`DualEncoderModel(distillation=...)` adds one of them to the contrastive
loss, per query row (`total = contrastive_weight * contrastive +
distillation_weight * distillation`):

'embedding'   multilingual knowledge distillation (Reimers & Gurevych
              2020): the student's query tower output is pulled toward the
              teacher's vector of the query text, its document tower output
              toward the teacher's vector of the positive text; per row the
              mean of the two MSEs (each a mean over dimensions). The
              student's embedding dim (`DualEncoderConfig.projection_dim`,
              else the encoder's emb_dim) must equal the teacher's. With
              unit vectors on both sides MSE = 2 (1 - cos) / dim, small
              numbers: a `distillation_weight` of the order of dim puts it
              on the contrastive loss's scale.
'margin_mse'  Margin-MSE (Hofstaetter et al. 2020) over each row's own
              candidates (its positive, then its hard negatives): the
              student's margins q.p - q.n_j (unscaled dot products, cosines
              when L2-normalised) against the teacher's (`retrieval.rerank.
              losses.margin_mse_loss`). Needs hard negatives.

Batch features (the pair tasks add them: `pair_tasks.setup.
teacher_embeddings`): `teacher_query_embeddings`, `teacher_positive_
embeddings` (b, d) and `teacher_scores` (b, 1 + num_negatives). A
non-finite teacher value means "no teacher for this text" (a text missing
from the teacher file under `teacher_missing='skip'`): that term is left
out, and a row with no term left gives 0.
"""

from __future__ import annotations

import jax.numpy as jnp

from retrieval.rerank import losses

MODES = ('none', 'margin_mse', 'embedding')
EMBEDDING_FEATURES = ('teacher_query_embeddings',
                      'teacher_positive_embeddings')
SCORE_FEATURES = ('teacher_scores',)
# distillation mode -> the batch features it reads
TEACHER_FEATURES = {'none': (), 'margin_mse': SCORE_FEATURES,
                    'embedding': EMBEDDING_FEATURES}


def check_mode(mode: str, field: str = 'distillation') -> str:
  if mode not in MODES:
    raise ValueError(f'{field} must be one of {MODES}, got {mode!r}')
  return mode


def check_dims(student_dim: int, teacher_dim: int, what: str = 'teacher'
               ) -> None:
  if student_dim != teacher_dim:
    raise ValueError(
        f'{what} embeddings have dim {teacher_dim} but the student embeds in '
        f'dim {student_dim} (DualEncoderConfig.projection_dim, else the '
        "encoder's emb_dim): set projection_dim = "
        f'{teacher_dim} to distil this teacher')


def teacher_rows(teacher, mask=None):
  """(b,) bool: rows with a finite teacher vector (and `mask`)."""
  valid = jnp.all(jnp.isfinite(teacher), axis=-1)
  return valid if mask is None else valid & jnp.asarray(mask, bool)


def embedding_match_loss(student, teacher, mask=None):
  """(b,) mean squared difference of each student row (b, d) from its
  teacher row (b, d); 0 where `mask` (b,) is False or the teacher row is
  not finite."""
  if student.shape[-1] != teacher.shape[-1]:
    check_dims(student.shape[-1], teacher.shape[-1])
  if student.shape != teacher.shape or student.ndim != 2:
    raise ValueError(f'student {student.shape} and teacher {teacher.shape} '
                     'must both be (rows, dim)')
  valid = teacher_rows(teacher, mask)
  t = jnp.where(valid[:, None], teacher.astype(jnp.float32), 0.0)
  s = jnp.where(valid[:, None], student.astype(jnp.float32), 0.0)
  return jnp.mean(jnp.square(s - t), axis=-1)


def embedding_distillation(queries, positives, teacher_queries,
                           teacher_positives, row_valid):
  """(b,) the 'embedding' term: the mean of the query and the positive
  MSEs over those the teacher has."""
  vq = teacher_rows(teacher_queries, row_valid).astype(jnp.float32)
  vp = teacher_rows(teacher_positives, row_valid).astype(jnp.float32)
  total = (embedding_match_loss(queries, teacher_queries, row_valid)
           + embedding_match_loss(positives, teacher_positives, row_valid))
  return total / jnp.maximum(vq + vp, 1.0)


def candidate_scores(queries, positives, negatives):
  """(b, 1 + k): each query's dot product with its own positive, then with
  its own hard negatives (b, k, d)."""
  q = queries.astype(jnp.float32)
  own = jnp.sum(q * positives.astype(jnp.float32), axis=-1)[:, None]
  hard = jnp.einsum('bd,bkd->bk', q, negatives.astype(jnp.float32))
  return jnp.concatenate([own, hard], axis=1)


def margin_mse_distillation(queries, positives, negatives, teacher_scores,
                            row_valid, negative_valid):
  """(b,) the 'margin_mse' term over each row's (positive, hard
  negatives)."""
  k = negatives.shape[1]
  if teacher_scores.shape != (queries.shape[0], 1 + k):
    raise ValueError(f'teacher_scores has shape {teacher_scores.shape}; '
                     f'expected (batch, 1 + num_negatives) = '
                     f'({queries.shape[0]}, {1 + k})')
  row_valid = jnp.asarray(row_valid, bool)
  mask = jnp.concatenate(
      [row_valid[:, None], jnp.asarray(negative_valid, bool)
       & row_valid[:, None]], axis=1)
  mask &= jnp.isfinite(teacher_scores)
  return losses.margin_mse_loss(
      candidate_scores(queries, positives, negatives), teacher_scores, mask)


def distillation_loss(mode: str, batch, queries, positives, negatives,
                      row_valid, negative_valid):
  """(b,) the distillation term of `mode` ('margin_mse' / 'embedding')
  from a batch's teacher features and the student's embeddings."""
  if mode == 'embedding':
    return embedding_distillation(
        queries, positives, batch['teacher_query_embeddings'],
        batch['teacher_positive_embeddings'], row_valid)
  if mode == 'margin_mse':
    if negatives is None:
      raise ValueError("distillation='margin_mse' needs hard negatives "
                       '(num_negatives >= 1)')
    return margin_mse_distillation(queries, positives, negatives,
                                   batch['teacher_scores'], row_valid,
                                   negative_valid)
  raise ValueError(f'distillation_loss: mode must be one of {MODES[1:]}, '
                   f'got {mode!r}')
