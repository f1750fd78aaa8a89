"""TCGA pathology tiles (The Cancer Genome Atlas diagnostic slides, cut into tiles).

Get it: slides from the GDC portal https://portal.gdc.cancer.gov/ (open access
diagnostic slides, .svs); tile them with any tiler (e.g. 224-512 px PNG/JPEG tiles).
mami_jax reads tiles, not whole-slide files.

Layout expected under ``root`` (any depth), either::

    <slide barcode>[.<uuid>]/<tile>.png      e.g. TCGA-A1-A0SB-01Z-00-DX1.E7F4.../12_34.png
  or
    <slide barcode>_<anything>.png           e.g. TCGA-A1-A0SB-01Z-00-DX1_1024_2048.png

The slide barcode comes from the tile's file name if it starts with "TCGA-", else from
the nearest enclosing folder that does: its first six "-" fields
(TCGA-<TSS>-<participant>-<sample>-<portion>-<slide>), ending at the first ".", "_" or a
seventh "-" (a tiler's ``<barcode>-1024-2048.png`` made every tile a study of its own,
each in the others' gallery). A name that starts a barcode but holds fewer than six
fields (a patient's folder, TCGA-XX-XXXX, holding several slides) does not say which slide
a tile is of: skipped and counted, unless a folder nearer the root names the slide.

Mapping: patient = the first 12 characters of the barcode (TCGA-<TSS>-<participant>),
study = slide barcode (tiles of one slide are one acquisition, excluded from each
other's gallery), order "" (TCGA publishes no acquisition dates: the history protocol
has no earlier visit to find), view "", modality pathology.
"""

from __future__ import annotations

import os
import re

from mami_jax.data.datasets.common import (NOT_AN_IMAGE, BuildResult, Collector, DatasetLayoutError,
                                           is_image_name, require_root, walk_files)

NAME = "tcga"
MODALITY = "pathology"
_BARCODE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}(-[A-Z0-9]+){3}$", re.IGNORECASE)
#: How many "-" fields a slide barcode has.
SLIDE_FIELDS = 6
#: Why a tile under a barcode that names no slide is skipped.
NO_SLIDE = "a TCGA barcode without the slide (TCGA-TSS-participant-sample-portion-slide)"


def slide_barcode(name: str) -> str | None:
    """The slide barcode a file or folder name starts with (upper case), or None."""
    if not name.upper().startswith("TCGA-"):
        return None
    fields = re.split(r"[._]", name, maxsplit=1)[0].split("-")
    barcode = "-".join(fields[:SLIDE_FIELDS])
    return barcode.upper() if _BARCODE.match(barcode) else None


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    for d, name in walk_files(root):
        path = os.path.join(d, name)
        src = os.path.relpath(path, root)
        if not is_image_name(name):
            c.skip(src, NOT_AN_IMAGE)
            continue
        names = [os.path.splitext(name)[0]] + list(
            reversed(os.path.relpath(d, root).split(os.sep)))
        barcode = next((b for b in map(slide_barcode, names) if b is not None), None)
        if barcode is None:
            partial = any(n.upper().startswith("TCGA-") for n in names)
            c.skip(src, NO_SLIDE if partial else
                   "no TCGA barcode (TCGA-XX-XXXX...) in the file or folder names")
            continue
        c.add(local_id=os.path.splitext(src)[0].replace(os.sep, "/"), patient_id=barcode[:12],
              study_id=barcode, order="", view="", path=path, source=src)
    if c.found_nothing():
        raise DatasetLayoutError(f"{root}: no image tiles found")
    return c.result()
