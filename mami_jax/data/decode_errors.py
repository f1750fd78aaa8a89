"""The one error every image reader raises, so callers catch a single type, and the
refusal of a stack whose slices are not all alike, which every slice reader shares."""

from __future__ import annotations

import os

from mami_jax.data.natural_order import examples


class DecodeError(RuntimeError):
    """An image, volume or series could not be read; the message names the path."""


def dataset_place(ds) -> str:
    """How an error names a DICOM dataset: its file, else that it was read from memory."""
    return getattr(ds, "filename", None) or "<DICOM dataset>"


def slice_kind(rows, columns, samples: int = 1, dtype=None) -> str:
    """How ``refuse_odd_slices`` names one slice: ``ROWSxCOLUMNS``, `` RGB`` for three
    samples a pixel, then the stored pixel type where one is given."""
    kind = f"{rows}x{columns}" + (" RGB" if samples == 3 else "")
    return kind if dtype is None else f"{kind} {dtype}"


def refuse_odd_slices(where: str, kinds: dict[str, str], what: str = "slices") -> None:
    """Refuses a stack whose slices (file -> ``slice_kind``) are not all of one kind,
    naming the files that differ from the most common kind: a localizer or a thumbnail
    saved among the slices is the usual cause, and a message listing only the sizes left
    the user to open every file to find it. ``what``: how the message counts them (the
    slices of a folder, from their headers, or the "slices read" together)."""
    counts: dict[str, int] = {}
    for k in kinds.values():
        counts[k] = counts.get(k, 0) + 1
    if len(counts) < 2:
        return
    common = max(counts, key=counts.get)
    odd = [f"{os.path.basename(name)} ({k})" for name, k in kinds.items() if k != common]
    raise DecodeError(
        f"{where}: {len(odd)} of the {len(kinds)} {what} "
        f"{'differs' if len(odd) == 1 else 'differ'} from the others ({common}): "
        f"{examples(odd)}; a series' slices share one size and pixel type: move the odd ones "
        "(a localizer, a thumbnail) out of the folder")
