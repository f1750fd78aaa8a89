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
the trained current-only classifier. With ``zero_init`` the history term's last layer
starts at zero, so the untrained model *is* current-only for every input and the term only
grows where the training history moves it (a sparse retrieved history otherwise leaves a
random term that perturbs every image given a longer history at test time).

Local change (``map_dim`` > 0, with token maps of the current image (B, P, C) and of
each history image (B, k, P, C)): every position of both maps goes through one shared
bias-free projection to ``map_dim`` channels, the per-position difference current minus
earlier is taken, and it is pooled over positions (maximum of the increase, maximum of
the decrease, mean), so a token also says *where and how much the patient's own image
changed*, which a pooled global feature averages away (after BioViL-T). These inputs
only enter history tokens, so the no-history equality above still holds.

Records (``records``, with the history images' recorded diagnoses (B, k, classes)): a
hospital archive holds the earlier images together with what was diagnosed on them (the
prior reports HIST-AID reads beside the prior scans). Each token then also carries that
diagnosis, which tells the earlier state better than any reading of the earlier image
when the disease showed only to other tests. A retrieved image of another patient brings
that patient's diagnosis: the false-history rate is what it costs. Also only in the
history tokens.
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


def local_change(x_map, history_maps, proj):
    """(B, k, 3m): per history image, over positions, the maximum increase, maximum
    decrease and mean change of ``proj`` (per position) from the earlier map to the
    current one. ``x_map`` (B, P, C), ``history_maps`` (B, k, P, C)."""
    change = proj(x_map)[:, None] - proj(history_maps)           # (B, k, P, m)
    return jnp.concatenate([change.max(2), (-change).max(2), change.mean(2)], axis=-1)


class WithHistory(nn.Module):
    """``__call__(x (B, D), history (B, k, D), scores (B, k), mask (B, k) bool,
    x_map (B, P, C), history_maps (B, k, P, C), history_records (B, k, classes))``; the
    maps only when ``map_dim`` > 0, the records (the diagnoses the archive holds for the
    history images, as one-hot rows) only when ``records``."""

    hidden: int
    num_classes: int
    attention_dim: int
    map_dim: int = 0
    zero_init: bool = False
    records: bool = False

    @nn.compact
    def __call__(self, x, history, scores, mask, x_map=None, history_maps=None,
                 history_records=None):
        classify = CurrentOnly(self.hidden, self.num_classes, name="current")
        current = classify(x)
        d = self.attention_dim
        xb = jnp.broadcast_to(x[:, None, :], history.shape)
        earlier = nn.softmax(classify(history), axis=-1)  # the classifier's view of each
        parts = [history, xb - history, earlier, scores[..., None]]
        if self.map_dim:
            if x_map is None or history_maps is None:
                raise ValueError(f"map_dim={self.map_dim}: the history model needs the token "
                                 f"maps of the current and the history images")
            proj = nn.Dense(self.map_dim, use_bias=False, name="map_proj")
            parts.append(local_change(x_map, history_maps, proj))
        if self.records:
            if history_records is None:
                raise ValueError("records=True: the history model needs the recorded "
                                 "diagnoses of the history images")
            parts.append(history_records)
        tokens = jnp.concatenate(parts, axis=-1)
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
        delta = nn.Dense(self.num_classes, use_bias=False, name="history_logits",
                         kernel_init=(nn.initializers.zeros if self.zero_init
                                      else nn.initializers.lecun_normal()))(nn.gelu(delta))
        return current + delta
