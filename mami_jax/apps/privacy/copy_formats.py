"""The 2-D formats a protected copy is saved in, each so that the change survives it.

A copy is saved in its input's format with the options that keep a change of a few grey
levels: lossless, or JPEG at quality 100 without chroma subsampling (at 95, most of a
small change was lost). A camera's MPO JPEG is saved as one plain JPEG, its second
picture (the camera's preview of the unprotected photo) left out; saved as MPO it took
PIL's default quality, 75, whose coding error was ten times the change (0.16 against
0.015 on a random picture). WebP is saved lossless, PIL's
default being lossy; JPEG 2000 reversibly. A format PIL reads but no copy can keep a
change in (GIF: at most 256 colours) is refused, naming the images, before anything is
protected (``check_writable``).
"""

from __future__ import annotations

import os

from mami_jax.data import decode

JPEG_QUALITY = 100

#: PIL's name of an input's format -> (the format its copy is saved in, save options).
SAVE_AS = {"PNG": ("PNG", {}), "BMP": ("BMP", {}), "PPM": ("PPM", {}), "TGA": ("TGA", {}),
           "TIFF": ("TIFF", {}),
           "JPEG": ("JPEG", {"quality": JPEG_QUALITY, "subsampling": 0}),
           "MPO": ("JPEG", {"quality": JPEG_QUALITY, "subsampling": 0}),
           "JPEG2000": ("JPEG2000", {"irreversible": False}),
           "WEBP": ("WEBP", {"lossless": True, "quality": 100})}


def unwritable_format(path: str) -> str | None:
    """The format of the 2-D image file ``path`` when a copy cannot keep a change in it
    (not in ``SAVE_AS``), else None (DICOM, NIfTI and folders are always written). Only
    a file without a slice image's extension is opened (a run checks every target): a
    .png, .jpg, .tif or .bmp holds a format ``SAVE_AS`` saves, a mislabelled one is
    refused when its copy is written."""
    from PIL import Image
    if os.path.isdir(path) or os.path.splitext(path.lower())[1] in decode.IMAGE_EXTENSIONS \
            or decode.is_volume_file(path):
        return None
    try:
        with Image.open(path) as img:
            fmt = img.format
    except Exception:  # noqa: BLE001 - unreadable: reading it names the file
        return None
    return None if fmt in SAVE_AS else str(fmt)


def check_writable(paths) -> None:
    """ValueError naming the images whose format a copy cannot keep a change in, before
    anything is protected."""
    refused = {}
    for path in paths:
        fmt = unwritable_format(path)
        if fmt is not None:
            refused.setdefault(fmt, []).append(path)
    if refused:
        found = "; ".join(f"{fmt}: {len(files)} image(s), e.g. {files[0]}"
                          for fmt, files in sorted(refused.items()))
        raise ValueError(f"cannot write protected copies in {found}: the change would not "
                         f"survive that format; convert them to PNG (lossless) first, "
                         f"or leave them out of the manifest")
