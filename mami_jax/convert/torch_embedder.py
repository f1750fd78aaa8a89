"""An exported MaMI in PyTorch, with the preprocessing of the run it came from: the
embeddings the JAX ``Embedder`` makes, where only torch and NumPy are installed.

    from mami_jax.convert.torch_embedder import TorchEmbedder
    model = TorchEmbedder.from_export("mami.safetensors")      # or .pth; device="cuda"
    E = model.embed_files(["a.png", "b.dcm"], modality="xray")   # (N, C) float32
    x = model.preprocess(row)                                    # (T, H, W, 3) of a manifest row
    e = model.embed(x[None])                                     # (1, C)

A model trained with mami_jax usually goes to a hospital's PyTorch service, which has no
JAX. This needs ``pip install --no-deps`` of mami_jax with torch, numpy, ml_collections,
tqdm, safetensors and the image readers (pillow, pydicom, nibabel): nothing it imports pulls
in JAX, flax, orbax or grain (a test imports it with those blocked).

What makes the numbers the JAX side's:
- the weights go through the same import as every JAX command (``official.load_official``:
  data only, the embedded model config, the feature-shift check, finite values) into
  ``MaMITorch`` with ``strict=True``;
- the preprocessing is the experiment config the file carries (``export-torch`` of a
  training run embeds it) read by the same ``ExampleReader``; a file that carries none (the
  authors' release) gets the paper's, as ``Embedder.from_export`` does;
- modalities evaluated as the mean over the symmetries of the square
  (``data.modalities.<m>.eval_symmetry``) are embedded that way here too.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from mami_jax.config import base_config
from mami_jax.config_files import json_config
from mami_jax.convert import to_torch_state_dict
from mami_jax.convert.official import embedded_experiment, load_official
from mami_jax.convert.torch_model import MaMITorch
from mami_jax.data.config import symmetric_modalities
from mami_jax.data.example_reader import read_example
from mami_jax.data.file_rows import embeddable_rows, file_rows, manifest_row
from mami_jax.data.manifest import ManifestRow
from mami_jax.data.transforms import symmetry_mean
from mami_jax.image_batch import checked_batch
from mami_jax.runtime.progress import progress_bar


class TorchEmbedder:
    """``MaMITorch`` in evaluation mode with the data config its images are read with."""

    def __init__(self, module: MaMITorch, data_cfg, source: str = "", batch_size: int = 16):
        self.module = module.eval()
        self.data_cfg = data_cfg
        self.source = source
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._symmetric = symmetric_modalities(data_cfg)

    @classmethod
    def from_export(cls, path: str, device: str | torch.device = "cpu", batch_size: int = 16,
                    allow_non_released_shift: bool = False) -> "TorchEmbedder":
        """A ``.pth``/``.safetensors`` file written by ``python -m mami_jax.convert
        export-torch``, or the authors' released file (read with the paper's
        preprocessing). A folder (a workdir, a converter folder) is refused: reading
        those needs JAX's checkpoint library, so export it first."""
        path = os.path.expanduser(os.fspath(path))
        if os.path.isdir(path):
            raise IsADirectoryError(
                f"{path}: a folder; TorchEmbedder reads one exported file: python -m "
                f"mami_jax.convert export-torch --checkpoint {path} --out mami.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        imported = load_official(path, allow_non_released_shift=allow_non_released_shift)
        module = MaMITorch(imported.cfg)
        module.load_state_dict(to_torch_state_dict(imported.params, imported.cfg,
                                                   as_tensors=True), strict=True)
        text = embedded_experiment(path)
        data_cfg = (json_config(text, f"the experiment config in {path}").data
                    if text is not None else base_config().data)
        return cls(module.to(device), data_cfg, source=path, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def preprocess(self, row: ManifestRow) -> np.ndarray:
        """The evaluation view of one manifest row, (T, H, W, 3) float32. Anything but a
        ``ManifestRow`` (a path) is a TypeError naming ``row``, as in the JAX
        ``Embedder.preprocess``, not an AttributeError inside the reader."""
        manifest_row(row)
        return read_example(row, self.data_cfg)

    @torch.no_grad()
    def embed(self, images) -> np.ndarray:
        """(B, T, H, W, 3) preprocessed images -> (B, C) float32 embeddings (not
        normalised), the output ``embedding`` of the model."""
        images = checked_batch(images, self.module.cfg.patch_size)
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        return self.module(x)["embedding"].float().cpu().numpy()

    def embed_rows(self, rows: Sequence[ManifestRow], progress: str | None = None
                   ) -> np.ndarray:
        """(N, C) embeddings of manifest rows as evaluation makes them: the evaluation view,
        batched by modality, the symmetry mean where the data config asks for it.
        ``progress``: the label of a progress bar over the images (None: none)."""
        rows = embeddable_rows(rows)
        out: list[np.ndarray | None] = [None] * len(rows)
        by_modality: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_modality.setdefault(r.modality, []).append(i)
        with progress_bar(len(rows), progress or "", disable=progress is None) as bar:
            for modality, members in by_modality.items():
                for s in range(0, len(members), self.batch_size):
                    batch = members[s:s + self.batch_size]
                    images = np.stack([self.preprocess(rows[i]) for i in batch])
                    emb = symmetry_mean(self.embed, images, modality in self._symmetric)
                    for i, e in zip(batch, emb):
                        out[i] = e
                    bar.update(len(batch))
        return np.stack(out).astype(np.float32)

    def embed_files(self, paths: Sequence[str], modality: str,
                    progress: str | None = None) -> np.ndarray:
        """(N, C) embeddings of image files of one ``modality`` (image files, DICOM files or
        series folders, NIfTI volumes, slice folders), as ``embed_rows`` makes a manifest's."""
        return self.embed_rows(file_rows(paths, modality), progress=progress)
