"""One manifest row as the model sees it: decoded, stain-normalised where configured, and
transformed for training (with an rng) or evaluation; NumPy only.

The grain pipeline (``pipeline``) reads every image through ``ExampleReader``; so does
anything that embeds single files outside it (``inference.Embedder.preprocess``, the
PyTorch ``TorchEmbedder``), which is why this lives apart from grain: the evaluation view
is the same function wherever a model is used, and importing it needs neither grain nor
JAX.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mami_jax.data import stain
from mami_jax.data.config import ModalitySettings, modality_settings
from mami_jax.data.decode import DecodeError, open_volume
from mami_jax.data.decoded_cache import DecodedCache
from mami_jax.data.manifest import ManifestRow, row_place
from mami_jax.data.transforms import check_normalization, eval_transform, slice_indices, train_transform


class DataError(RuntimeError):
    """An image of the manifest could not be used; the message names row, id and file."""


def jpeg_short_side_floor(configured: int | None, settings: ModalitySettings) -> int | None:
    """The short side a JPEG of a modality may be decoded down to: ``configured``
    (``data.jpeg_min_short_side``; None: full resolution), raised to what the modality's
    views need, its ``resize_size`` (the evaluation view and "shift" crops are cut from
    the image resized to it) and twice its crop side (a "random_resized" crop of half the
    area still above the model's resolution). The defaults (448 for 256 / 224) are
    unchanged; a modality trained at 512 / 448 would otherwise be decoded at 450 px and
    upsampled."""
    if not configured:
        return None
    return max(int(configured), settings.augment.resize_size, 2 * settings.augment.image_size)


class ExampleReader:
    """Decodes and transforms one manifest row (picklable: it runs in grain workers)."""

    def __init__(self, rows: Sequence[ManifestRow], cfg):
        self.rows = list(rows)
        self.settings: dict[str, ModalitySettings] = modality_settings(cfg)
        check_normalization(str(cfg.normalization))
        self.slice_jitter = bool(cfg.slice_jitter)
        self.skip_bad = bool(cfg.skip_bad_images)
        # JPEGs may decode at reduced scale down to this short side (0 = full resolution),
        # never below what a modality's views need (``jpeg_short_side_floor``)
        self.min_short_side = int(cfg.jpeg_min_short_side) or None
        self.cache = DecodedCache(int(float(cfg.decode_cache_mb) * 2 ** 20))
        self._num_slices: dict[int, int] = {}   # per row, filled only when caching

    def decoded(self, index: int, num_slices: int, rng: np.random.Generator | None) -> np.ndarray:
        """(T, H, W, C) float32 slices of row ``index`` before any transform (stain-normalised
        where configured), from the decode cache when enabled."""
        row = self.rows[index]
        volume = None
        total = self._num_slices.get(index)
        if total is None:
            volume = self._open(row)
            total = volume.num_slices
            if self.cache.max_bytes:
                self._num_slices[index] = total
        jitter = rng if (rng is not None and self.slice_jitter) else None
        idx = slice_indices(total, num_slices, jitter)

        def decode():
            x = (volume or self._open(row)).read(idx)
            return stain.normalize_slices(x) if self.settings[row.modality].stain_normalize else x

        return self.cache.get_or_compute((index, tuple(int(i) for i in idx)), decode)

    def _open(self, row: ManifestRow):
        settings = self.settings[row.modality]
        return open_volume(row.path, min_short_side=jpeg_short_side_floor(self.min_short_side,
                                                                          settings),
                           value_window=settings.value_window)

    def read(self, index: int, num_slices: int, rng: np.random.Generator | None) -> np.ndarray:
        """(T, H, W, 3) for row ``index``: training transform if ``rng`` else evaluation."""
        row = self.rows[index]
        x = self.decoded(index, num_slices, rng)
        s = self.settings[row.modality]
        if rng is None:
            return eval_transform(x, s.augment.resize_size, s.eval_image_size, s.augment.normalization)
        return train_transform(x, s.augment, rng, s.flip, s.rotate)

    def image_size(self, modality: str) -> int:
        """Side of the training crops of ``modality`` (``data.modalities.<m>.image_size``)."""
        return self.settings[modality].augment.image_size

    def eval_image_size(self, modality: str) -> int:
        """Side of the evaluation view: the crop, or the whole resized image
        (``data.modalities.<m>.eval_whole``)."""
        return self.settings[modality].eval_image_size

    def read_or_skip(self, index: int, num_slices: int, rng) -> tuple[np.ndarray, bool]:
        """Like ``read``; failures raise DataError naming the row. With ``skip_bad_images``
        an unreadable file (DecodeError) instead gives zeros and ok=False; any other error
        (a bug, not bad data) is never skipped."""
        try:
            return self.read(index, num_slices, rng), True
        except DecodeError as e:
            if not self.skip_bad:
                row = self.rows[index]
                every = (f"; python -m mami_jax.data.check_images --manifest {row.location[0]} "
                         "finds every unreadable image of the manifest" if row.location else "")
                raise DataError(f"{self._where(index)}: {e} (training and evaluation with "
                                "python -m mami_jax.main can skip unreadable images, counted: "
                                f"--config.data.skip_bad_images=True{every})") from e
            modality = self.rows[index].modality
            size = self.image_size(modality) if rng is not None else self.eval_image_size(modality)
            return np.zeros((num_slices, size, size, 3), np.float32), False
        except Exception as e:  # noqa: BLE001 - re-raised naming the row
            raise DataError(f"{self._where(index)}: {type(e).__name__}: {e}") from e

    def _where(self, index: int) -> str:
        """``FILE: line N (image_id=..., ...)`` for a row read from a manifest (as
        ``manifest.validate_rows`` names rows); ``manifest row INDEX (...)`` for one made
        in memory."""
        row = self.rows[index]
        return (f"{row_place(row) or f'manifest row {index}'} (image_id={row.image_id!r}, "
                f"patient {row.patient_key!r}, path {row.path!r})")


def read_example(row: ManifestRow, cfg, rng: np.random.Generator | None = None) -> np.ndarray:
    """One row as the model sees it, (T, H, W, 3): evaluation transform, or training if ``rng``."""
    reader = ExampleReader([row], cfg)
    return reader.read(0, reader.settings[row.modality].slices, rng)
