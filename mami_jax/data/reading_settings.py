"""Which data settings decide the embedding an image gets, as opposed to which images are
read, how training samples and augments them, and how fast they are read.

A cache or archive of embeddings is keyed on these (``reading_settings``): the history
archive records them and refuses another config's reading (another resize gave another
patient's images as history, unsaid), and ``Embedder.chunk_store`` keys the kept chunks
of a stopped pass on them, so a run with more workers or a bigger decode cache goes on
from its chunks, and one with another window recomputes them.
"""

from __future__ import annotations

import json

#: ``config.data`` settings that do not change how an image is read for its embedding:
#: which images and splits, training batches, sampling and augmentations, input workers
#: and caches, the handling of unreadable files (whose rows an archive refuses anyway).
#: Every other setting counts (``reading_settings``), a new one included until it is named
#: here: an archive refuses too much rather than too little.
NOT_READING = frozenset({
    "manifest", "only_modalities", "patients_per_batch", "images_per_patient",
    "split_fractions", "split_seed", "source_weights", "identity_classes", "skip_bad_images",
    "teacher_features", "num_workers", "decode_cache_mb", "read_threads", "prefetch",
    "crop_mode", "crop_scale", "crop_ratio", "erase_prob", "erase_area", "erase_ratio",
    "brightness", "contrast", "slice_jitter"})
#: The same for a ``data.modalities.<m>`` block: training's flips, rotations and sampling.
NOT_READING_MODALITY = frozenset({"flip", "rotate", "source_weight"})


def reading_settings(data_cfg) -> dict:
    """{setting: value} of the data config ``data_cfg`` that decide how an image is read for
    its embedding (every modality's sizes, slices, window, evaluation view; the
    normalisation, the JPEG decoding size; not ``NOT_READING``), flat
    (``modalities.xray.resize_size``) and as JSON values: what an archive records of its
    model and ``Archive.check_reading`` compares, since the model's parameters alone do not
    say which embedding an image gets."""
    data = json.loads(data_cfg.to_json())
    out = {k: v for k, v in data.items() if k not in NOT_READING and k != "modalities"}
    for modality, block in sorted(data.get("modalities", {}).items()):
        out.update((f"modalities.{modality}.{k}", v) for k, v in block.items()
                   if k not in NOT_READING_MODALITY)
    return out


def differences(held: dict, given: dict, order=None) -> list[str]:
    """The settings (sorted, by ``order`` when given) that ``held`` records with another
    value than ``given`` has. A setting ``held`` lacks is newer than the record and not
    compared."""
    return [key for key in sorted(held, key=order)
            if key not in given or given[key] != held[key]]


def first_difference(held: dict, given: dict, order=None) -> str | None:
    """The first of ``differences``, or None."""
    found = differences(held, given, order)
    return found[0] if found else None
