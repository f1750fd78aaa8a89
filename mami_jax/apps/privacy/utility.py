"""Does diagnosis survive protection? A diagnosis probe that never sees protected images.

The probe is a logistic regression per modality on frozen features of a trained MaMI
(its embedding and its mean-pooled local features, as the history application's
``features=both``), standardised with the training images' statistics and fitted on
ORIGINAL training images only (labels from the phantoms' labels.csv, ``disease_label``).
Its ROC AUC on the original test images against the same probe on their protected
copies measures the diagnostic content the protection removed.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mami_jax.data import labels
from mami_jax.data.manifest import ManifestRow
from mami_jax.evaluate.metrics import verification_metrics
from mami_jax.inference import embed_in_chunks
from mami_jax.models.embed import make_embedding_and_pooled_fn


def read_labels(path: str, column: str = "disease_label") -> dict[str, int]:
    """image_id -> 0/1 of a binary label column (``data.labels``: unknown values are an
    error naming the file, line and image)."""
    return labels.read_labels(path, column, ("0", "1"))


def features(embedder, rows: Sequence[ManifestRow], desc: str = "embedding",
             store=None) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, C), probe features (N, 2C): the embedding and the pooled local
    features) of ``rows``, one pass, as evaluation embeds them (batching, symmetry
    averaging), under a progress bar named ``desc``; its finished chunks kept in ``store``
    (``Embedder.chunk_store``) when given."""
    fn = make_embedding_and_pooled_fn(embedder.model_cfg)
    both = embed_in_chunks(lambda b: fn(embedder.params, b), rows, embedder, desc=desc,
                           store=store)
    return both[:, :both.shape[1] // 2], both


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 500,
                 lr: float = 0.1) -> dict:
    """Standardised L2-regularised logistic regression by full-batch gradient descent."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = jnp.asarray((x - mean) / std)
    t = jnp.asarray(y, jnp.float32)

    def loss(p):
        logits = z @ p["w"] + p["b"]
        return jnp.mean(jnp.logaddexp(0.0, logits) - t * logits) + l2 * jnp.sum(p["w"] ** 2)

    grad = jax.jit(jax.grad(loss))
    p = {"w": jnp.zeros(z.shape[1]), "b": jnp.zeros(())}
    for _ in range(steps):
        g = grad(p)
        p = {k: p[k] - lr * g[k] for k in p}
    return {"mean": mean, "std": std, "w": np.asarray(p["w"]), "b": float(p["b"])}


def predict(probe: dict, x: np.ndarray) -> np.ndarray:
    return ((x - probe["mean"]) / probe["std"]) @ probe["w"] + probe["b"]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    if len(set(np.asarray(labels).tolist())) < 2:
        return float("nan")
    return float(verification_metrics(np.asarray(scores, np.float64), np.asarray(labels, bool))["auc"])


def diagnosis_report(train_x, train_y, train_mod, test_x, test_prot_x, test_y, test_mod) -> dict:
    """Per modality (and mean): probe AUC on original and on protected test images."""
    out = {}
    for m in sorted(set(test_mod)):
        tr = np.asarray(train_mod) == m
        te = np.asarray(test_mod) == m
        probe = fit_logistic(train_x[tr], train_y[tr])
        out[m] = {"auc_original": auc(predict(probe, test_x[te]), test_y[te]),
                  "auc_protected": auc(predict(probe, test_prot_x[te]), test_y[te]),
                  "positives": int(test_y[te].sum()), "images": int(te.sum())}
    out["mean"] = {k: float(np.nanmean([v[k] for v in out.values()]))
                   for k in ("auc_original", "auc_protected")}
    return out
