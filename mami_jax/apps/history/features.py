"""The trained re-ID model and the two features it gives each image.

- the **embedding** (``Embedder.embed_rows``' output): what the archive searches;
- the **backbone feature**: the frozen backbone's patch tokens averaged over positions
  and slices, the head's input (docs/design.md, "Head"). The re-ID head is trained to
  forget what varies between visits of a patient, disease included, so the diagnosis
  reads the features before it (``features = "backbone"``, configurable).

- the **token map** of one backbone layer (``map_layer``: ``patch_embed``, ``ln_pre`` or
  ``block_<i>``; the patch tokens averaged over slices, resized to ``map_grid`` x
  ``map_grid`` positions so every modality's map has one shape): what the history model
  compares position by position with the patient's earlier images, since the phantoms'
  disease is a local change of the patient's own anatomy.

All come from one forward pass, batched and symmetry-averaged exactly as
``mami_jax.inference.Embedder.embed_rows`` (the evaluator's ``embed_rows``; a modality
evaluated as the mean over the symmetries of the square gets the mean of its maps). The
model is identified by a fingerprint of its parameters, which an archive records with how
the model reads images (``reading_settings``): the same parameters reading an image at
another size give another embedding, of another patient as likely as of the same one.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mami_jax.data.config import value_windows
from mami_jax.data.manifest import ManifestRow
from mami_jax.data.reading_settings import reading_settings
from mami_jax.experiment_config import load_experiment
from mami_jax.inference import Embedder, embed_in_chunks
from mami_jax.models import layer_tokens
from mami_jax.models.embed import make_embedding_and_pooled_fn
from mami_jax.models.mami import MaMI
from mami_jax.runtime.chunk_store import ChunkStore, digest

FEATURE_KINDS = ("backbone", "embedding", "both")

class TrainedModel:
    """The re-ID model ``workdir`` names (a training workdir's latest checkpoint,
    ``WORKDIR@STEP``, a released or exported ``.pth``/``.safetensors`` file or a converter
    folder: ``Embedder.load``), for the experiment config ``spec``. ``role`` and ``action``
    word the error when it cannot be read (the flag that named it, what it was for)."""

    def __init__(self, workdir: str, spec: str, role: str = "--workdir", action: str = "use"):
        self.workdir, self.spec = os.path.abspath(workdir), spec
        config = load_experiment(spec)
        self.embedder = Embedder.load(self.workdir, config, action=action, role=role)
        self.fingerprint = self.embedder.fingerprint
        #: How the images are read (the experiment config's data settings): the same
        #: parameters read at another size, slice count or window give other features.
        self.reading = digest(self.embedder.data_cfg.to_json())
        #: The settings of them an archive records and compares (``reading_settings``).
        self.reading_settings = reading_settings(self.embedder.data_cfg)
        self._features = make_embedding_and_pooled_fn(self.embedder.model_cfg)

    @property
    def info(self) -> dict:
        return {"workdir": self.workdir, "config": self.spec, "step": self.embedder.step,
                "fingerprint": self.fingerprint, "source": self.embedder.source,
                "reading": self.reading_settings}

    @property
    def value_windows(self) -> dict[str, tuple[float, float]]:
        """{modality: (lo, hi)} of the modalities the model reads through a fixed window
        (``data.modalities.<m>.value_window``): the diagnosis reader reads them so too."""
        return value_windows(self.embedder.data_cfg)

    def chunk_store(self, out: str, images: str, what: str) -> ChunkStore:
        """``Embedder.chunk_store`` of this model."""
        return self.embedder.chunk_store(out, images, what)

    def features(self, rows: Sequence[ManifestRow], progress: bool = True, store=None):
        """(embeddings, backbone features) of every row, each (n, C) float32."""
        e = self.embedder
        both = embed_in_chunks(lambda batch: self._features(e.params, batch), rows, e, progress,
                               store=store)
        width = both.shape[1] // 2
        return both[:, :width], both[:, width:]

    def features_and_maps(self, rows: Sequence[ManifestRow], layer: str, grid: int,
                          progress: bool = True, store=None):
        """(embeddings (n, C), backbone features (n, C), token maps (n, grid*grid, D)) of
        every row, float32; the maps of ``layer`` (``token_map_fn``)."""
        e = self.embedder
        fn = token_map_fn(e.model_cfg, layer, grid)
        out = embed_in_chunks(lambda batch: fn(e.params, batch), rows, e, progress, store=store)
        c = int(e.model_cfg.width)
        return out[:, :c], out[:, c:2 * c], out[:, 2 * c:].reshape(len(rows), grid * grid, -1)

    def embeddings(self, rows: Sequence[ManifestRow], progress: bool = True,
                   store=None) -> np.ndarray:
        """``Embedder.embed_rows`` of every row (n, C), in chunks under a progress bar."""
        return embed_in_chunks(self.embedder.embed_batch, rows, self.embedder, progress,
                               store=store)


def resolve_layer(model_cfg, layer: str) -> str:
    """``layer``, with ``last_block`` meaning the model's last transformer block."""
    return layer_tokens.resolve_layer(model_cfg, layer, key="map_layer")


def token_map_fn(model_cfg, layer: str, grid: int):
    """(params, batch) -> (B, 2C + grid*grid*C): the embedding, the pooled last-block map
    (the ``backbone`` feature) and ``layer``'s (``resolve_layer``) patch tokens averaged over slices, resized
    (bilinear, antialiased) to ``grid`` x ``grid`` and flattened position-major."""
    layer = resolve_layer(model_cfg, layer)
    if int(grid) < 1:
        raise ValueError(f"map_grid must be at least 1, got {grid}")
    mami, grid = MaMI(model_cfg), int(grid)

    @jax.jit
    def fn(params, batch):
        images = batch["images"]
        b, t = images.shape[:2]
        out, tokens = layer_tokens.apply_with_tokens(mami, params, images, layer)
        tokens = layer_tokens.patch_tokens(tokens, layer)
        c = tokens.shape[-1]
        h = images.shape[2] // int(model_cfg.patch_size)
        w = images.shape[3] // int(model_cfg.patch_size)
        tokens = tokens.reshape(b, t, h, w, c).mean(1)
        tokens = jax.image.resize(tokens, (b, grid, grid, c), "linear")
        pooled = out.local_map.astype(jnp.float32).mean(axis=(1, 2))
        return jnp.concatenate([out.embedding.astype(jnp.float32), pooled,
                                tokens.reshape(b, grid * grid * c)], axis=-1)

    return fn


def diagnosis_features(embedding, backbone, kind: str):
    """What a diagnosis classifier of feature ``kind`` reads (numpy or jax arrays)."""
    if kind == "backbone":
        return backbone
    if kind == "embedding":
        return embedding
    if kind == "both":
        xp = np if isinstance(embedding, np.ndarray) else jnp
        return xp.concatenate([embedding, backbone], axis=1)
    raise ValueError(f"features={kind!r} unknown; expected one of {', '.join(FEATURE_KINDS)}, "
                     f"reader or teacher:NAME")
