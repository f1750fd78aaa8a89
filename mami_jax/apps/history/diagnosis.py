"""The diagnosis classifiers on frozen re-ID features (Flax).

``CurrentOnly``: standardised feature -> Dense(hidden) -> GELU -> Dense(classes).

``WithHistory``: the same classifier (its parameters under ``current``) plus a history
term. Each history image j (feature h_j, similarity s_j to the current image x) becomes a
token from [h_j, x - h_j, p(h_j), s_j] (the earlier state, the change since, and the
current-only classifier's probabilities for the earlier image: a disease seen before
is likely still there); the current
image queries these tokens and a learned "no history" token with single-head attention.
The "no history" token has a learned key and a value fixed at zero, and the history term
is bias-free (Dense -> GELU -> Dense, no biases, GELU(0) = 0), so

    logits = CurrentOnly(x) + W2 GELU(W1 sum_j a_j v_j)

is exactly ``CurrentOnly(x)`` when no history is given (all of the attention on the
token, whose value is 0), and the model can fall back to it when the retrieved history
looks unreliable (attention moves to the token). Training the history term with the
current branch frozen (mami_jax/apps/history/training.py) keeps that fallback equal to
the trained current-only classifier.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class CurrentOnly(nn.Module):
    hidden: int
    num_classes: int

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.hidden, name="hidden")(x))
        return nn.Dense(self.num_classes, name="logits")(h)


class WithHistory(nn.Module):
    """``__call__(x (B, D), history (B, k, D), scores (B, k), mask (B, k) bool)``."""

    hidden: int
    num_classes: int
    attention_dim: int

    @nn.compact
    def __call__(self, x, history, scores, mask):
        classify = CurrentOnly(self.hidden, self.num_classes, name="current")
        current = classify(x)
        d = self.attention_dim
        xb = jnp.broadcast_to(x[:, None, :], history.shape)
        earlier = nn.softmax(classify(history), axis=-1)  # the classifier's view of each
        tokens = jnp.concatenate([history, xb - history, earlier, scores[..., None]], axis=-1)
        tokens = nn.gelu(nn.Dense(d, name="token")(tokens))
        keys = nn.Dense(d, name="key")(tokens)                      # (B, k, d)
        values = nn.Dense(d, name="value")(tokens)                  # (B, k, d)
        query = nn.Dense(d, name="query")(x)                        # (B, d)
        null_key = self.param("no_history_key", nn.initializers.normal(0.02), (d,))
        logit_hist = jnp.einsum("bd,bkd->bk", query, keys) / jnp.sqrt(d)
        logit_null = (query @ null_key)[:, None] / jnp.sqrt(d)
        logits = jnp.concatenate([logit_null, jnp.where(mask, logit_hist, -jnp.inf)], axis=1)
        weights = nn.softmax(logits, axis=-1)[:, 1:]                # the token's value is 0
        pooled = jnp.einsum("bk,bkd->bd", jnp.where(mask, weights, 0.0),
                            jnp.where(mask[..., None], values, 0.0))
        delta = nn.Dense(d, use_bias=False, name="history_hidden")(pooled)
        delta = nn.Dense(self.num_classes, use_bias=False, name="history_logits")(nn.gelu(delta))
        return current + delta
