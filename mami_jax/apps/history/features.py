"""The trained re-ID model and the two features it gives each image.

- the **embedding** (``Embedder.embed_rows``' output): what the archive searches;
- the **backbone feature**: the frozen backbone's patch tokens averaged over positions
  and slices, the head's input (docs/design.md, "Head"). The re-ID head is trained to
  forget what varies between visits of a patient, disease included, so the diagnosis
  reads the features before it (``features = "backbone"``, configurable).

Both come from one forward pass, batched and symmetry-averaged exactly as
``mami_jax.inference.Embedder.embed_rows`` (the evaluator's ``embed_rows``). The model
is identified by a fingerprint of its parameters, which an archive records.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from typing import Sequence

import jax
import numpy as np
from tqdm import tqdm

from mami_jax.data.manifest import ManifestRow
from mami_jax.evaluate.evaluator import embed_rows
from mami_jax.inference import Embedder
from mami_jax.models.embed import make_embedding_and_pooled_fn
from mami_jax.train import sharding

FEATURE_KINDS = ("backbone", "embedding", "both")


def load_experiment_config(spec: str):
    """``path/to/config.py[:arg]`` -> that file's ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found (from {spec!r})")
    module_spec = importlib.util.spec_from_file_location(
        "history_experiment_" + os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def fingerprint(params) -> str:
    """sha256 over every parameter's path, dtype, shape and bytes (in path order)."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.asarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


class TrainedModel:
    """A training workdir's latest checkpoint, for the experiment config ``spec``."""

    def __init__(self, workdir: str, spec: str, embedder: Embedder | None = None):
        self.workdir, self.spec = os.path.abspath(workdir), spec
        config = load_experiment_config(spec)
        self.embedder = embedder or Embedder.from_workdir(self.workdir, config, action="use")
        self.fingerprint = fingerprint(self.embedder.params)
        self._features = make_embedding_and_pooled_fn(self.embedder.model_cfg)

    @property
    def info(self) -> dict:
        return {"workdir": self.workdir, "config": self.spec, "step": self.embedder.step,
                "fingerprint": self.fingerprint, "source": self.embedder.source}

    def features(self, rows: Sequence[ManifestRow], progress: bool = True):
        """(embeddings, backbone features) of every row, each (n, C) float32."""
        e = self.embedder
        both = _chunked(lambda batch: self._features(e.params, batch), rows, e, progress)
        width = both.shape[1] // 2
        return both[:, :width], both[:, width:]

    def embeddings(self, rows: Sequence[ManifestRow], progress: bool = True) -> np.ndarray:
        """``Embedder.embed_rows`` of every row (n, C), in chunks under a progress bar."""
        return _chunked(self.embedder.embed_batch, rows, self.embedder, progress)


def _chunked(fn, rows, embedder: Embedder, progress: bool) -> np.ndarray:
    """The evaluator's ``embed_rows`` over chunks of 8 batches (one progress-bar tick each)."""
    mesh = sharding.make_mesh(-1, 1)
    chunk = 8 * int(embedder.batch_size)
    parts = []
    with tqdm(total=len(rows), unit="img", desc="embedding", disable=not progress) as bar:
        for start in range(0, len(rows), chunk):
            indices = list(range(start, min(len(rows), start + chunk)))
            parts.append(embed_rows(fn, rows, indices, embedder.data_cfg, mesh,
                                    embedder.batch_size))
            bar.update(len(indices))
    if not parts:
        raise ValueError("no images to embed")
    return np.concatenate(parts)


def diagnosis_features(embedding: np.ndarray, backbone: np.ndarray, kind: str) -> np.ndarray:
    if kind == "backbone":
        return backbone
    if kind == "embedding":
        return embedding
    if kind == "both":
        return np.concatenate([embedding, backbone], axis=1)
    raise ValueError(f"features={kind!r} unknown; expected one of {', '.join(FEATURE_KINDS)}")
