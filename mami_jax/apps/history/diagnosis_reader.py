"""A diagnosis reader trained on the labels (``features = "reader"``), cross-fitted.

Neither the re-ID backbone (trained to overlook what changes between a patient's visits,
the disease included) nor a frozen ImageNet model reads the phantoms' disease well from
one image (docs/history.md), and a history is only worth what its images' readings are
worth. HIST-AID and BioViL-T train their image encoders on the diagnosis; this reader
does the same at small scale: one small CNN per modality (``ReaderNet``) trained on the
``train_split`` labels, reading the whole image (every slice of a series, as channels,
not the re-ID model's two), and its class logits are the features the current-only and
history classifiers read (the re-ID model still finds the history).

Why cross-fitted: the classifiers above are trained on the same training images; a
reader's logits on the images it was trained on are more confident than on any new image,
so a history model trained on them would learn to trust an earlier image's reading more
than it deserves. The training patients are split into ``folds``; each training image's
logits come from the reader that did not see its patient, every other image's are the
mean of the fold readers' logits (stacking). The fold readers are saved with their
input statistics in OUT/diagnosis_reader.msgpack and the logits in
OUT/diagnosis_reader.npz, reused for the same settings, images and training labels (an
unreadable cache is said and computed again, ``npz_files.read_cache``).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
from typing import Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image
from tqdm import tqdm

from mami_jax.apps.history.npz_files import read_cache
from mami_jax.data.config import windows_as_json, windows_from_json
from mami_jax.data.decode import DecodeError, open_volume
from mami_jax.data.image_signature import rows_signature
from mami_jax.data.manifest import ManifestRow
from mami_jax.runtime.atomic_files import write_atomic, write_bytes_atomic

KIND = "reader"
LOGITS = "diagnosis_reader.npz"
PARAMS = "diagnosis_reader.msgpack"
SETTINGS_KEY = "__settings__"


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) float -> (size, size, C), box-filtered per channel (no aliasing)."""
    if image.shape[:2] == (size, size):
        return image.astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F")
                                .resize((size, size), Image.BOX))
                     for c in range(image.shape[-1])], -1)


def read_view(row: ManifestRow, size: int, slices: int,
              value_window: tuple[float, float] | None = None) -> np.ndarray:
    """What the reader sees of one image: a 2-D image as (size, size, 3) (gray repeated
    into the three channels), a series as (size, size, ``slices``): that many slices,
    evenly spaced through it, as channels, read together (one intensity scale, or
    ``value_window``, the re-ID run's for the modality). An image that cannot be read is
    a ValueError naming its file and image id."""
    try:
        vol = open_volume(row.path, value_window=value_window)
        n = vol.num_slices
        if n == 1:
            img = vol.read([0])[0]
            if img.shape[-1] == 1:
                img = np.repeat(img, 3, -1)
            return _resize(img[..., :3], size)
        idx = np.linspace(0, n - 1, slices).round().astype(int).tolist()
        stack = vol.read(idx)[..., 0]                  # (slices, H, W), gray
    except DecodeError as e:
        raise ValueError(f"{e} (image {row.image_id})") from e
    return _resize(np.moveaxis(stack, 0, -1), size)


def modality_sizes(cfg) -> dict[str, int]:
    """The side each modality is read at: ``cfg.size``, or ``cfg.sizes[modality]`` where
    given (pathology's cells are a few pixels wide: halving a tile loses them)."""
    sizes = dict(cfg.get("sizes", {}) or {})
    return collections.defaultdict(lambda: int(cfg.size), {m: int(v) for m, v in sizes.items()})


def read_views(rows: Sequence[ManifestRow], size, slices: int,
               progress: bool = True, value_windows: Mapping | None = None
               ) -> dict[str, np.ndarray]:
    """Per modality, the views of its rows (in row order) at ``size`` (one side, or a
    mapping from modality to side as ``modality_sizes`` gives), read through
    ``value_windows[modality]`` where given, all in memory (float32:
    size x size x slices x 4 bytes each, 256 KB per series at 64 px and 16 slices, so a
    few tens of thousands of images). A modality whose images mix 2-D images and series
    is an error naming the first image of the minority kind, since one reader reads one
    layout."""
    out: dict[str, list] = {}
    side = size if isinstance(size, Mapping) else collections.defaultdict(lambda: int(size))
    windows = dict(value_windows or {})
    for r in tqdm(rows, unit="img", desc="reader views", disable=not progress):
        out.setdefault(r.modality, []).append(
            (r, read_view(r, side[r.modality], slices, windows.get(r.modality))))
    views = {}
    for m, items in out.items():
        widths = [v.shape[-1] for _, v in items]
        common = max(set(widths), key=widths.count)
        odd = [(r, v.shape[-1]) for r, v in items if v.shape[-1] != common]
        if odd:
            (r, width), = odd[:1]
            raise ValueError(f"{r.path} ({r.image_id}): {width} reader channels where the "
                             f"other {m} images have {common} (a 2-D image among series or "
                             f"the reverse); the reader reads one layout per modality")
        views[m] = np.stack([v for _, v in items]).astype(np.float32)
    return views


class ReaderNet(nn.Module):
    """One block per width (default 16, 32, 64) of two 3x3 convolutions (ReLU) and 2x2
    max-pooling, then the mean and the maximum over positions (a lesion is small: the
    maximum keeps it), then the class logits."""

    widths: Sequence[int]
    num_classes: int

    @nn.compact
    def __call__(self, x):
        for w in self.widths:
            x = nn.relu(nn.Conv(int(w), (3, 3))(x))
            x = nn.relu(nn.Conv(int(w), (3, 3))(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(self.num_classes)(jnp.concatenate([x.mean((1, 2)), x.max((1, 2))], -1))


@functools.lru_cache(maxsize=16)
def _network(widths: tuple, num_classes: int):
    """(net, jitted init, jitted apply) of one reader shape, compiled once per process
    (every fold, modality and loaded reader of that shape reuses them)."""
    net = ReaderNet(widths, num_classes)
    return net, jax.jit(net.init), jax.jit(lambda p, xb: net.apply({"params": p}, xb))


@functools.lru_cache(maxsize=16)
def _training_step(widths: tuple, num_classes: int, learning_rate: float, weight_decay: float):
    """(optimizer, jitted AdamW step on the cross-entropy) of one reader shape, compiled once."""
    net = _network(widths, num_classes)[0]
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)

    def step(params, state, xb, yb):
        def loss_fn(p):
            logits = net.apply({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return opt, jax.jit(step)


def _shape(widths) -> tuple:
    return tuple(int(w) for w in widths)


def _batched_logits(net: ReaderNet, params, x: np.ndarray, batch: int = 256) -> np.ndarray:
    if not len(x):
        return np.zeros((0, net.num_classes), np.float32)
    apply = _network(_shape(net.widths), int(net.num_classes))[2]
    return np.concatenate([np.asarray(apply(params, x[i:i + batch]))
                           for i in range(0, len(x), batch)])


def train_reader(x: np.ndarray, y: np.ndarray, num_classes: int, cfg, seed: int,
                 bar=None) -> dict:
    """AdamW on mini-batches of (x, y) for ``cfg.epochs`` epochs, each batch mirrored
    left-right with probability 1/2 (a lesion's side is not the diagnosis). Returns the
    parameters; raises FloatingPointError when the loss is not finite."""
    init = _network(_shape(cfg.widths), int(num_classes))[1]
    opt, step = _training_step(_shape(cfg.widths), int(num_classes),
                               float(cfg.learning_rate), float(cfg.weight_decay))
    params = init(jax.random.key(seed), x[:1])["params"]
    state = opt.init(params)
    rng = np.random.default_rng(seed)
    b = min(int(cfg.batch_size), len(x))
    loss = jnp.nan
    for _ in range(int(cfg.epochs)):
        order = rng.permutation(len(x))
        for start in range(0, len(order) - b + 1, b):
            idx = order[start:start + b]
            xb = x[idx][:, :, ::-1] if rng.random() < 0.5 else x[idx]
            params, state, loss = step(params, state, jnp.asarray(xb), jnp.asarray(y[idx]))
        if bar is not None:
            bar.update(1)
    if not np.isfinite(float(loss)):
        raise FloatingPointError(f"diagnosis reader training diverged (loss {float(loss)})")
    return params


def patient_folds(patients: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold number of each entry: the distinct patients shuffled (seeded) and dealt
    round-robin into ``folds``, so a patient's images share a fold."""
    unique = sorted(set(patients))
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {unique[i]: k % folds for k, i in enumerate(order)}
    return np.asarray([fold_of[p] for p in patients], int)


def settings_key(cfg, rows: Sequence[ManifestRow], y: np.ndarray, train_split: str,
                 num_classes: int, files: str | None = None,
                 value_windows: Mapping | None = None) -> str:
    """sha256 of everything the reader's logits depend on: its settings, how the images
    are read (``value_windows``), the images (ids, files, modality, split, patient) and
    the training images' labels. ``files``: the rows' ``rows_signature`` where the
    caller has it already."""
    h = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    if value_windows:           # none: the key readers cached before windows existed
        h.update(json.dumps(windows_as_json(value_windows), sort_keys=True).encode())
    files = rows_signature(rows) if files is None else files
    h.update(f"{train_split}|{num_classes}|{files}".encode())
    for r, label in zip(rows, y):
        h.update(f"{r.image_id}|{r.modality}|{r.split}|{r.patient_key}|"
                 f"{int(label) if r.split == train_split else ''}\n".encode())
    return h.hexdigest()


def cross_fitted_logits(rows: Sequence[ManifestRow], y: np.ndarray, num_classes: int, cfg,
                        train_split: str, progress: bool = True,
                        value_windows: Mapping | None = None):
    """(logits (n, num_classes), {modality: {"mean", "std", "folds": [params]}}): per
    modality, ``cfg.folds`` readers each trained on the training patients of the other
    folds; training images get their fold's held-out logits, the rest the fold mean.
    ``value_windows``: as ``read_views``."""
    folds = int(cfg.folds)
    if folds < 2:
        raise ValueError(f"reader.folds={folds}: cross-fitting needs at least 2 folds")
    views = read_views(rows, modality_sizes(cfg), int(cfg.slices), progress, value_windows)
    modalities = np.asarray([r.modality for r in rows])
    is_train = np.asarray([r.split == train_split for r in rows])
    logits = np.zeros((len(rows), num_classes), np.float32)
    readers = {}
    with tqdm(total=len(views) * folds * int(cfg.epochs), unit="epoch", desc="reader training",
              disable=not progress) as bar:
        for m in sorted(views):
            where = np.flatnonzero(modalities == m)
            x, train = views[m], is_train[where]
            patients = [rows[i].patient_key for i in where]
            trained_on = sorted({p for p, t in zip(patients, train) if t})
            if len(trained_on) < folds:
                raise ValueError(f"features=reader: modality {m} has {len(trained_on)} "
                                 f"patients in split {train_split!r}; cross-fitting over "
                                 f"reader.folds={folds} folds needs at least that many, so "
                                 "that each fold's reader has patients to train on")
            mean = x[train].mean((0, 1, 2)).astype(np.float32)
            std = (x[train].std((0, 1, 2)) + 1e-6).astype(np.float32)
            x = (x - mean) / std
            # the training patients dealt into folds (all patients dealt could leave a
            # fold's reader none to train on); the others read with the folds' mean
            fold = np.full(len(where), -1)
            fold[train] = patient_folds([p for p, t in zip(patients, train) if t], folds,
                                        int(cfg.seed))
            net = ReaderNet(tuple(cfg.widths), num_classes)
            own = np.zeros((len(where), num_classes), np.float32)
            params_list = []
            for f in range(folds):
                fit = train & (fold != f)
                params = train_reader(x[fit], np.asarray(y)[where][fit], num_classes, cfg,
                                      int(cfg.seed) * 1000 + f, bar)
                params_list.append(params)
                out = _batched_logits(net, params, x)
                held = train & (fold == f)
                own[held] = out[held]
                own[~train] += out[~train] / folds
            logits[where] = own
            readers[m] = {"mean": mean, "std": std, "folds": params_list}
    return logits, readers


def reader_logits(rows: Sequence[ManifestRow], y: np.ndarray, num_classes: int, cfg,
                  train_split: str, out_dir: str, progress: bool = True,
                  files: str | None = None, value_windows: Mapping | None = None,
                  expected: str | None = None):
    """``cross_fitted_logits``, cached in OUT/diagnosis_reader.npz (and the readers in
    OUT/diagnosis_reader.msgpack, with the value windows they read through, so that
    ``TrainedReader`` reads new images so too) for the same ``settings_key`` (``files``,
    ``value_windows``: as there). Returns (logits, info). ``expected`` (``eval``: the key
    the classifiers were trained on): another key is a ValueError before any reader is
    trained, so the saved readers stay those of the classifiers (an eval refused after
    retraining them had replaced them, and the privacy app read the wrong ones)."""
    key = settings_key(cfg, rows, y, train_split, num_classes, files, value_windows)
    if expected is not None and key != expected:
        raise ValueError(f"the classifiers were trained on features='reader' of readers "
                         f"{expected[:12]}, this run's readers would be {key[:12]} (another "
                         "manifest, labels, images or reader settings change them): train "
                         "again, or evaluate with the manifest, labels and --app-config of "
                         "the training")
    path = os.path.join(out_dir, LOGITS)
    info = {"reader": KIND, "fingerprint": key, "feature_dim": num_classes}
    cached = read_cache(path, lambda f: f["logits"] if str(f["fingerprint"]) == key else None)
    if cached is not None:
        return cached, info
    logits, readers = cross_fitted_logits(rows, y, num_classes, cfg, train_split, progress,
                                          value_windows)
    payload = jax.tree_util.tree_map(np.asarray, {
        m: {"mean": r["mean"], "std": r["std"], "folds": {str(i): p for i, p in enumerate(r["folds"])}}
        for m, r in readers.items()})
    payload[SETTINGS_KEY] = json.dumps({"reader": cfg.to_dict(), "num_classes": num_classes,
                                        "fingerprint": key,
                                        "value_windows": windows_as_json(value_windows)},
                                       sort_keys=True, default=list)
    write_bytes_atomic(os.path.join(out_dir, PARAMS), flax.serialization.msgpack_serialize(payload))
    write_atomic(path, lambda tmp: np.savez(tmp, logits=logits, fingerprint=np.asarray(key),
                                            image_id=np.asarray([r.image_id for r in rows])))
    return logits, info


class TrainedReader:
    """The fold readers a ``train`` saved (OUT/diagnosis_reader.msgpack), reading new images:
    their logits are the mean of the fold readers' (what every image outside the training
    split got). For images the readers never saw, e.g. protected copies of test images."""

    def __init__(self, out_dir: str):
        path = os.path.join(out_dir, PARAMS)
        try:
            with open(path, "rb") as f:
                payload = flax.serialization.msgpack_restore(f.read())
        except OSError as e:
            raise FileNotFoundError(f"{path}: the readers cannot be read ({e.strerror}); run "
                                    f"the history `train` with features=reader first") from e
        except Exception as e:  # noqa: BLE001 - not a msgpack of readers
            raise ValueError(f"{path}: not a readers file ({type(e).__name__}: {e})") from e
        if SETTINGS_KEY not in payload:
            raise ValueError(f"{path}: no settings recorded (written by an older version); "
                             f"train again")
        settings = json.loads(str(payload.pop(SETTINGS_KEY)))
        self.path, self.settings = path, settings["reader"]
        # readers saved before windows existed read every modality by min-max
        self.value_windows = windows_from_json(settings.get("value_windows"))
        self.num_classes, self.fingerprint = int(settings["num_classes"]), settings["fingerprint"]
        self.readers = payload
        self.net = ReaderNet(tuple(self.settings["widths"]), self.num_classes)

    def features(self, rows: Sequence[ManifestRow], progress: bool = True) -> np.ndarray:
        """(n, num_classes) logits of ``rows``, in order; a modality without a reader is an
        error naming it."""
        missing = sorted({r.modality for r in rows} - set(self.readers))
        if missing:
            raise ValueError(f"{self.path}: no reader for modality {missing} (it has "
                             f"{', '.join(sorted(self.readers))})")
        views = read_views(rows, modality_sizes(ml_collections.ConfigDict(self.settings)),
                           int(self.settings["slices"]), progress, self.value_windows)
        modalities = np.asarray([r.modality for r in rows])
        out = np.zeros((len(rows), self.num_classes), np.float32)
        for m, x in views.items():
            r = self.readers[m]
            x = (x - r["mean"]) / r["std"]
            folds = [r["folds"][k] for k in sorted(r["folds"], key=int)]
            out[modalities == m] = np.mean([_batched_logits(self.net, p, x) for p in folds], 0)
        return out
