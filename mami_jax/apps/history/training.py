"""Training and applying the diagnosis classifiers (full-batch AdamW, cross-entropy).

The current-only classifier is trained first; the history model then starts from it
with its ``current`` branch frozen, so only the history term learns, and an image with
no accepted history gets the current-only prediction exactly. During that training each
history image is dropped with probability ``history_dropout`` (a new draw every step),
so the model also sees short and empty histories. Features are standardised per
modality with the training split's mean and standard deviation (stored with the
parameters) and carry a one-hot of their modality.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mami_jax.apps.history.diagnosis import CurrentOnly, WithHistory
from mami_jax.data.manifest import MODALITIES
from mami_jax.runtime.atomic_files import write_bytes_atomic
from mami_jax.runtime.progress import progress_bar


@dataclasses.dataclass
class Histories:
    """Per image: up to k history features, their similarities and validity mask, (when
    the history model compares token maps) the history images' maps, and (when it reads
    the archive's records) the diagnoses recorded for the history images."""

    features: np.ndarray   # (n, k, D)
    scores: np.ndarray     # (n, k)
    mask: np.ndarray       # (n, k) bool
    maps: np.ndarray | None = None      # (n, k, P, C)
    records: np.ndarray | None = None   # (n, k, classes) one-hot

    def take(self, idx) -> "Histories":
        return Histories(*(None if a is None else a[idx] for a in dataclasses.astuple(self)))

    @classmethod
    def concat(cls, parts: Sequence["Histories"]) -> "Histories":
        """The histories of ``parts`` one after the other (the same k)."""
        fields = zip(*(dataclasses.astuple(p) for p in parts))
        return cls(*(None if any(a is None for a in f) else np.concatenate(f) for f in fields))

    @classmethod
    def gather(cls, features: np.ndarray, lists, scores, k: int,
               maps: np.ndarray | None = None,
               records: np.ndarray | None = None) -> "Histories":
        """``lists[i]``: row indices into ``features`` (and ``maps``, (N, P, C), and
        ``records``, (N, classes)) of image i's history (<= k), ``scores[i]`` their
        similarities."""
        n, dim = len(lists), features.shape[1]
        h = np.zeros((n, k, dim), np.float32)
        s = np.zeros((n, k), np.float32)
        m = np.zeros((n, k), bool)
        hm = None if maps is None else np.zeros((n, k) + maps.shape[1:], np.float32)
        hr = None if records is None else np.zeros((n, k) + records.shape[1:], np.float32)
        for i, (rows, sc) in enumerate(zip(lists, scores)):
            rows, sc = list(rows)[:k], list(sc)[:k]
            if rows:
                h[i, :len(rows)] = features[rows]
                s[i, :len(rows)] = sc
                m[i, :len(rows)] = True
                if hm is not None:
                    hm[i, :len(rows)] = maps[rows]
                if hr is not None:
                    hr[i, :len(rows)] = records[rows]
        return cls(h, s, m, hm, hr)


def standardizer(x: np.ndarray, modalities: Sequence[str]) -> dict:
    """Per modality: the mean and standard deviation of each feature (training split). A
    feature constant over the training rows (one training image of a modality) is only
    centred: divided by its 1e-6 spread it scaled the evaluated images by about a million,
    every probability 0 or 1."""
    modalities = np.asarray(modalities)
    return {m: {"mean": x[modalities == m].mean(0).astype(np.float32),
                "std": _scale(x[modalities == m].std(0))}
            for m in sorted(set(modalities.tolist()))}


def _scale(std: np.ndarray) -> np.ndarray:
    """``std`` + 1e-6 where a feature varies, 1 where it does not."""
    return np.where(std < 1e-6, 1.0, std + 1e-6).astype(np.float32)


def apply_standardizer(norm: dict, x: np.ndarray, modalities: Sequence[str]) -> np.ndarray:
    """Each row standardised with its modality's statistics, then the modality one-hot
    (over ``MODALITIES``) appended, so one classifier serves every modality."""
    modalities = np.asarray(modalities)
    unknown = sorted(set(modalities.tolist()) - set(norm))
    if unknown:
        raise ValueError(f"no training images of modality {unknown}: the classifiers "
                         f"cannot read its features")
    z = np.zeros((len(x), x.shape[1] + len(MODALITIES)), np.float32)
    for m, stats in norm.items():
        rows = modalities == m
        z[rows, :x.shape[1]] = (x[rows] - stats["mean"]) / stats["std"]
        z[rows, x.shape[1] + MODALITIES.index(m)] = 1.0
    return z


def map_standardizer(maps: np.ndarray, modalities: Sequence[str]) -> dict:
    """Per modality: each channel's mean and standard deviation over the images and
    positions of token maps (n, P, C) (training split)."""
    p = maps.shape[1]
    return standardizer(maps.reshape(-1, maps.shape[2]), np.repeat(np.asarray(modalities), p))


def apply_map_standardizer(norm: dict, maps: np.ndarray, modalities: Sequence[str]) -> np.ndarray:
    modalities = np.asarray(modalities)
    unknown = sorted(set(modalities.tolist()) - set(norm))
    if unknown:
        raise ValueError(f"no training images of modality {unknown}: the classifiers "
                         f"cannot read its token maps")
    z = np.zeros(maps.shape, np.float32)
    for m, stats in norm.items():
        rows = modalities == m
        z[rows] = (maps[rows] - stats["mean"]) / stats["std"]
    return z


def _optimizer(cfg):
    return optax.adamw(float(cfg.learning_rate), weight_decay=float(cfg.weight_decay))


def _fit(loss_fn, params, steps: int, cfg, rng, data, desc: str = "classifier"):
    """``steps`` AdamW steps of ``loss_fn(params, key, data)`` under a progress bar
    (``desc``; full-batch steps over a large training split take a while each); the data
    go in as arguments of the compiled step (as closure constants XLA would fold them)."""
    opt = _optimizer(cfg)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key, data):
        loss, grads = jax.value_and_grad(loss_fn)(params, key, data)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    loss = jnp.nan
    with progress_bar(int(steps), desc, unit="step") as bar:
        for key in jax.random.split(rng, int(steps)):
            params, state, loss = step(params, state, key, data)
            bar.update(1)
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"diagnosis classifier training diverged (loss {float(loss)})")
    return params


def _xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train_current(x: np.ndarray, y: np.ndarray, num_classes: int, cfg) -> dict:
    model = CurrentOnly(int(cfg.hidden), num_classes)
    rng = jax.random.key(int(cfg.seed))
    params = jax.jit(model.init)(rng, x[:1])["params"]
    return _fit(lambda p, _, d: _xent(model.apply({"params": p}, d[0]), d[1]), params,
                cfg.steps, cfg, jax.random.fold_in(rng, 1), (jnp.asarray(x), jnp.asarray(y)),
                "current-only classifier")


def fused_model(num_classes: int, cfg) -> WithHistory:
    return WithHistory(int(cfg.hidden), num_classes, int(cfg.attention_dim),
                       int(cfg.get("map_dim", 0)), bool(cfg.get("zero_init", False)),
                       bool(cfg.get("records", False)))


def _records(model: WithHistory, hist: Histories):
    """The ``history_records`` argument of ``model``: None unless it reads records."""
    if not model.records:
        return None
    if hist.records is None:
        raise ValueError("records=True: the diagnoses recorded for the history images are "
                         "needed")
    return jnp.asarray(hist.records)


def _maps(model: WithHistory, x_map, hist: Histories):
    """The (x_map, history_maps) arguments of ``model``: None unless it compares maps."""
    if not model.map_dim:
        return None, None
    if x_map is None or hist.maps is None:
        raise ValueError(f"map_dim={model.map_dim}: token maps of the images and of their "
                         f"history are needed")
    return jnp.asarray(x_map), jnp.asarray(hist.maps)


def train_fused(current: dict, x: np.ndarray, hist: Histories, y: np.ndarray,
                num_classes: int, cfg, x_map: np.ndarray | None = None) -> dict:
    """The history model on top of the frozen ``current`` parameters; ``x_map`` (n, P, C)
    the images' token maps when ``cfg.map_dim`` > 0 (``hist.maps`` their history's)."""
    model = fused_model(num_classes, cfg)
    rng = jax.random.key(int(cfg.seed) + 1)
    xm, hm = _maps(model, x_map, hist)
    hr = _records(model, hist)
    init = jax.jit(model.init)(rng, x[:1], hist.features[:1], hist.scores[:1], hist.mask[:1],
                               None if xm is None else xm[:1],
                               None if hm is None else hm[:1],
                               None if hr is None else hr[:1])["params"]
    trainable = {k: v for k, v in init.items() if k != "current"}
    data = (jnp.asarray(x), jnp.asarray(y), jnp.asarray(hist.features), jnp.asarray(hist.scores),
            jnp.asarray(hist.mask), xm, hm, hr, current)
    keep = 1.0 - float(cfg.history_dropout)

    def loss(p, key, data):
        x, y, h, s, m, xm, hm, hr, current = data
        mask = m & jax.random.bernoulli(key, keep, m.shape)
        logits = model.apply({"params": {"current": current, **p}}, x, h, s, mask, xm, hm, hr)
        return _xent(logits, y)

    trained = _fit(loss, trainable, cfg.fused_steps, cfg, jax.random.fold_in(rng, 1), data,
                   "history model")
    return {"current": current, **trained}


def predict_current(params: dict, x: np.ndarray, num_classes: int, cfg) -> np.ndarray:
    logits = jax.jit(CurrentOnly(int(cfg.hidden), num_classes).apply)({"params": params}, x)
    return np.asarray(jax.nn.softmax(logits, -1))


def predict_fused(params: dict, x: np.ndarray, hist: Histories, num_classes: int,
                  cfg, x_map: np.ndarray | None = None) -> np.ndarray:
    model = fused_model(num_classes, cfg)
    xm, hm = _maps(model, x_map, hist)
    logits = jax.jit(model.apply)({"params": params}, x, hist.features, hist.scores, hist.mask,
                                  xm, hm, _records(model, hist))
    return np.asarray(jax.nn.softmax(logits, -1))


def parameter_shapes(num_classes: int, cfg, feature_width: int,
                     map_channels: int = 0) -> dict:
    """{"current": ..., "fused": ...}: the shape of every parameter the classifiers of
    settings ``cfg`` (``classifier``) have for ``feature_width``-wide features (and
    token maps of ``map_channels`` channels), as ``jax.ShapeDtypeStruct`` trees; traced,
    not run, so saved classifiers are checked against the settings before any work."""
    width = int(feature_width) + len(MODALITIES)
    x = jax.ShapeDtypeStruct((1, width), jnp.float32)
    key = jax.random.key(0)
    current = jax.eval_shape(CurrentOnly(int(cfg.hidden), num_classes).init, key, x)["params"]
    model = fused_model(num_classes, cfg)
    h = jax.ShapeDtypeStruct((1, 1, width), jnp.float32)
    s = jax.ShapeDtypeStruct((1, 1), jnp.float32)
    m = jax.ShapeDtypeStruct((1, 1), jnp.bool_)
    xm = hm = hr = None
    if model.map_dim:
        xm = jax.ShapeDtypeStruct((1, 1, int(map_channels)), jnp.float32)
        hm = jax.ShapeDtypeStruct((1, 1, 1, int(map_channels)), jnp.float32)
    if model.records:
        hr = jax.ShapeDtypeStruct((1, 1, num_classes), jnp.float32)
    fused = jax.eval_shape(model.init, key, x, h, s, m, xm, hm, hr)["params"]
    return {"current": current, "fused": fused}


def save_classifiers(path: str, payload: dict) -> str:
    """``payload``: {"norm", "current", "fused", "meta"} -> one msgpack file, atomically."""
    data = flax.serialization.msgpack_serialize(jax.tree_util.tree_map(np.asarray, payload))
    return write_bytes_atomic(path, data)


def load_classifiers(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return flax.serialization.msgpack_restore(f.read())
    except OSError as e:
        raise FileNotFoundError(f"classifiers {path} cannot be read ({e.strerror}); run "
                                f"`train` first") from e
