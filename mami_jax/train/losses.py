"""Re-identification losses: identity cross-entropy, batch-hard soft-margin triplet,
the difference-alignment InfoNCE, and the weighted sum the trainer logs.

Every function here is a pure function of arrays, so it can be called inside
``jax.jit`` with sharded inputs: the batch axis may be split over a mesh and XLA
inserts whatever collectives the global reductions need. Rows that are padding
(the last, partial batch of an epoch, or examples dropped by the pipeline) are
removed with a ``mask`` instead of by slicing, which would change shapes and
force a recompile.

Conventions shared by all losses:

* computations are done in float32 whatever the input dtype (bfloat16
  activations on TPU lose too much in ``log_softmax`` and in distances);
* the mean is over *valid* rows; when no row is valid the loss is 0 (not NaN),
  so an all-padding batch contributes nothing instead of poisoning the step;
* invalid *values* that cannot raise under ``jit`` (an out-of-range label on a
  valid row) make the loss NaN on purpose, so the trainer's NaN guard stops and
  names the step instead of training on a silently wrong target.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

__all__ = [
    "identity_cross_entropy",
    "pairwise_euclidean_distances",
    "batch_hard_soft_margin_triplet",
    "triplet_anchors",
    "all_pair_differences",
    "difference_alignment_infonce",
    "total_loss",
]

# Below this squared distance a distance is treated as exactly zero. Float32
# cancellation in |a|^2 + |b|^2 - 2 a.b leaves errors of about 1e-7 * |a|^2 for
# identical points; the threshold only has to keep sqrt away from 0.
_SQ_DIST_EPS = 1e-12


def _valid_mask(mask, n: int) -> jax.Array:
    if mask is None:
        return jnp.ones((n,), dtype=bool)
    mask = jnp.asarray(mask)
    if mask.shape != (n,):
        raise ValueError(f"mask has shape {mask.shape}, expected ({n},) to match the batch")
    return mask.astype(bool)


def _masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    count = jnp.sum(valid.astype(jnp.float32))
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(count, 1.0)


def batch_standardize(features, mask=None, eps: float = 1e-5) -> jax.Array:
    """Each feature column minus its batch mean, over its batch standard deviation.

    The parameter-free "BNNeck" (Luo et al., 2019) put in front of the identity
    classifier: (x - mean) / sqrt(var + eps) with mean and (biased) variance over the
    valid rows of the batch (``mask``; padded rows get the same transform but do not
    count). Triplet distances are blind to a shift shared by every embedding but a
    linear classifier is not; without it a ViT trained from scratch leaves the
    identity loss at chance while all embeddings share one large common component.
    There are no running statistics: the classifier is only used in training.
    """
    features = jnp.asarray(features, jnp.float32)
    valid = _valid_mask(mask, features.shape[0])[:, None]
    count = jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)
    mean = jnp.sum(jnp.where(valid, features, 0.0), axis=0) / count
    centred = features - mean
    var = jnp.sum(jnp.where(valid, centred * centred, 0.0), axis=0) / count
    return centred * jax.lax.rsqrt(var + eps)


def identity_cross_entropy(logits, labels, label_smoothing: float = 0.0, mask=None) -> jax.Array:
    """Softmax cross-entropy of a classifier over the training patients.

    For row ``i`` with ``C`` classes and smoothing ``e``, the target is
    ``q = (1 - e) * onehot(labels[i]) + e / C`` and the loss is
    ``-sum_c q_c * log_softmax(logits[i])_c``. The result is the mean over rows
    where ``mask`` is true (all rows when ``mask`` is None); 0 when no row is valid.

    Args:
      logits: (B, C) float.
      labels: (B,) int in [0, C). A valid row with a label outside that range
        makes the loss NaN (it cannot raise under ``jit``); padding rows may hold
        any label.
      label_smoothing: e in [0, 1).
      mask: optional (B,) bool; False rows are ignored.

    Example (two classes, equal logits: the loss is log 2):
      >>> float(identity_cross_entropy(jnp.zeros((1, 2)), jnp.array([1])))  # doctest: +ELLIPSIS
      0.693...
    """
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {logits.shape}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels shape {labels.shape} does not match logits {logits.shape}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    num_classes = logits.shape[1]
    valid = _valid_mask(mask, logits.shape[0])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    target = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    target = target * (1.0 - label_smoothing) + label_smoothing / num_classes
    per_row = -jnp.sum(target * log_probs, axis=-1)
    out_of_range = (labels < 0) | (labels >= num_classes)
    per_row = jnp.where(valid & out_of_range, jnp.nan, per_row)
    return _masked_mean(per_row, valid)


def _safe_l2_normalize(x: jax.Array) -> jax.Array:
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, _SQ_DIST_EPS))


def pairwise_euclidean_distances(x, valid=None) -> jax.Array:
    """(B, B) Euclidean distances with a gradient that stays finite at distance 0.

    Uses ``d2_ij = |x_i|^2 + |x_j|^2 - 2 x_i.x_j`` (one matmul, no (B, B, D)
    tensor), clamps it at 0, and takes ``sqrt`` only where ``d2 > 1e-12``;
    elsewhere the distance is 0 and so is its gradient (the "double where": the
    unused branch sees 1.0, so no inf*0 = NaN reaches the backward pass).

    The rows are first moved by the mean of the ``valid`` ones (all when None), which
    changes no distance: un-normalised embeddings that share one large component (a
    from-scratch ViT's, see ``heads``) would otherwise lose the distances to float32
    cancellation in that formula (a common component 100 times the distances put errors
    of 9 % on them). The mean carries no gradient: distances do not depend on it, and
    padding rows stay without one.
    """
    x = jnp.asarray(x, jnp.float32)
    weights = (jnp.ones(x.shape[:1], jnp.float32) if valid is None
               else jnp.asarray(valid, jnp.float32))
    center = jnp.sum(x * weights[:, None], axis=0) / jnp.maximum(jnp.sum(weights), 1.0)
    x = x - jax.lax.stop_gradient(center)
    sq = jnp.sum(x * x, axis=-1)
    gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    positive = d2 > _SQ_DIST_EPS
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def batch_hard_soft_margin_triplet(embeddings, labels, mask=None,
                                   normalize: bool = False) -> jax.Array:
    """Batch-hard triplet loss with a soft margin (Hermans et al., 2017).

    With ``d`` the Euclidean distance between embeddings, for every anchor ``a``:

      P(a) = {p != a : labels[p] == labels[a], p valid}   (positives)
      N(a) = {n : labels[n] != labels[a], n valid}          (negatives)
      l(a) = softplus(max_{p in P(a)} d(a, p) - min_{n in N(a)} d(a, n))
           = log(1 + exp(d_ap - d_an))

    The loss is the mean of ``l(a)`` over valid anchors with a non-empty P(a)
    and a non-empty N(a); anchors without both are excluded (they have no
    triplet), and the loss is 0 when no anchor qualifies. Padding rows
    (``mask`` False) are neither anchors, positives nor negatives.

    ``normalize=False`` (default) uses the raw embeddings, as the common
    re-ID recipes with the soft margin do; ``normalize=True`` L2-normalises
    first, which bounds distances to [0, 2] (and the loss to
    [softplus(-2), softplus(2)]).

    Distances go through :func:`pairwise_euclidean_distances`, so duplicate
    embeddings (distance 0) give finite gradients.

    Args:
      embeddings: (B, D) float.
      labels: (B,) int patient labels.
      mask: optional (B,) bool.
      normalize: L2-normalise embeddings first.
    """
    emb = jnp.asarray(embeddings, jnp.float32)
    labels = jnp.asarray(labels)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (batch, dim), got shape {emb.shape}")
    if labels.shape != emb.shape[:1]:
        raise ValueError(f"labels shape {labels.shape} does not match embeddings {emb.shape}")
    n = emb.shape[0]
    valid = _valid_mask(mask, n)
    if normalize:
        emb = _safe_l2_normalize(emb)
    dist = pairwise_euclidean_distances(emb, valid)
    pos, neg = _positive_negative_pairs(labels, valid)
    # Sentinels that are never selected when a real candidate exists: distances
    # are >= 0, so 0 cannot beat a positive; max(dist) + 1 cannot beat a negative.
    # The sentinel branch is a constant, so it carries no gradient.
    hardest_pos = jnp.max(jnp.where(pos, dist, 0.0), axis=1)
    big = jax.lax.stop_gradient(jnp.max(dist)) + 1.0
    hardest_neg = jnp.min(jnp.where(neg, dist, big), axis=1)
    per_anchor = jax.nn.softplus(hardest_pos - hardest_neg)
    return _masked_mean(per_anchor, triplet_anchors(labels, valid))


def _positive_negative_pairs(labels, valid):
    """(B, B) bool: (i, j) is a positive (same label, i != j), and is a negative (other
    label); both rows valid in either."""
    n = labels.shape[0]
    both_valid = valid[:, None] & valid[None, :]
    same = labels[:, None] == labels[None, :]
    not_self = ~jnp.eye(n, dtype=bool)
    return same & not_self & both_valid, ~same & both_valid


def triplet_anchors(labels, mask=None) -> jax.Array:
    """(B,) bool: the anchors :func:`batch_hard_soft_margin_triplet` averages over, the
    valid rows with a valid positive and a valid negative in the batch. It depends on the
    labels and mask alone, so gradient accumulation can weight a microbatch's triplet
    mean by its number of anchors before computing it."""
    labels = jnp.asarray(labels)
    valid = _valid_mask(mask, labels.shape[0])
    pos, neg = _positive_negative_pairs(labels, valid)
    return valid & jnp.any(pos, axis=1) & jnp.any(neg, axis=1)


def all_pair_differences(features, valid=None):
    """Differences ``f_i - f_j`` for every pair ``i < j`` of a batch.

    Returns ``(diffs, pair_valid)`` with shapes (B(B-1)/2, D) and (B(B-1)/2,);
    a pair is valid when both rows are valid. Only ``i < j`` is used because
    ``f_j - f_i = -(f_i - f_j)`` adds no information. The pair order is the
    row-major upper triangle, identical for student and teacher features of
    the same batch, which is what :func:`difference_alignment_infonce` needs.
    """
    features = jnp.asarray(features, jnp.float32)
    b = features.shape[0]
    ii, jj = jnp.triu_indices(b, k=1)
    diffs = features[ii] - features[jj]
    row_valid = _valid_mask(valid, b)
    return diffs, row_valid[ii] & row_valid[jj]


def difference_alignment_infonce(student_diffs, teacher_diffs, pair_mask,
                                 temperature: float) -> jax.Array:
    """InfoNCE of pair differences, student against teacher (docs/design.md#difference-alignment).

    With ``u_k`` and ``v_k`` the L2-normalised student and teacher differences
    of pair ``k`` (same feature size: the student side is already projected to
    the teacher's space) and ``V`` the valid pairs:

      s_kl = u_k . v_l / temperature
      loss = mean_{k in V} [ -s_kk + log sum_{l in V} exp(s_kl) ]

    i.e. pair k's student difference must pick its own teacher difference
    among the batch's valid pairs. Pairs where the teacher does not apply to
    both images are invalid: neither anchors nor candidates. 0 when no pair is
    valid. A zero difference (identical images) normalises to the zero vector
    and scores 0 against everything, without NaN.
    """
    u = jnp.asarray(student_diffs, jnp.float32)
    v = jnp.asarray(teacher_diffs, jnp.float32)
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(f"student_diffs {u.shape} and teacher_diffs {v.shape} must both be "
                         "(pairs, dim) with the same shape")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    valid = _valid_mask(pair_mask, u.shape[0])
    u = _safe_l2_normalize(u)
    v = _safe_l2_normalize(v)
    logits = jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST) / temperature
    logits = jnp.where(valid[None, :], logits, -jnp.inf)
    # Rows of invalid anchors are all -inf; give them a finite dummy row so the
    # log-sum-exp is finite, then drop them in the masked mean.
    logits = jnp.where(valid[:, None], logits, 0.0)
    per_pair = jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits)
    return _masked_mean(per_pair, valid)


def total_loss(terms: Mapping[str, jax.Array], weights: Mapping[str, float]):
    """Weighted sum of loss terms, plus the values to log.

    ``total = sum_k weights[k] * terms[k]``. Every term needs a weight and every
    weight a term: a mismatch is a configuration error (a misspelt key, or an
    alignment weight set while no teacher features are loaded), raised here at
    trace time with the offending names. A term that is switched off should be
    given weight 0.0, not left out.

    Returns:
      ``(total, logs)`` where ``logs`` maps ``"total"`` and each term name to
      its unweighted value, and ``"<name>_weighted"`` to its contribution.
    """
    missing = sorted(set(terms) - set(weights))
    extra = sorted(set(weights) - set(terms))
    if missing or extra:
        raise KeyError(f"loss terms and weights disagree: terms without a weight {missing}, "
                       f"weights without a term {extra}")
    if not terms:
        raise ValueError("total_loss needs at least one term")
    logs = {}
    total = jnp.zeros((), jnp.float32)
    for name in sorted(terms):
        value = jnp.asarray(terms[name], jnp.float32)
        if value.shape != ():
            raise ValueError(f"loss term {name!r} must be a scalar, got shape {value.shape}")
        weighted = weights[name] * value
        total = total + weighted
        logs[name] = value
        logs[f"{name}_weighted"] = weighted
    logs["total"] = total
    return total, logs
