"""Reading whole-slide images (.svs, .ndpi, .mrxs, pyramidal TIFF, ...) through OpenSlide.

OpenSlide (the extra ``.[slides]``: openslide-python with the library's wheel,
openslide-bin) reads every common scanner format and gives the pyramid, the slide's
resolution (``openslide.mpp-x``) and any region at any level. Regions come back as RGBA
with the parts outside the scanned area transparent; they are laid on white (glass), as
a viewer shows them. Anything OpenSlide cannot read (a file, its thumbnail, a damaged
tile) is a ``ValueError`` naming the file (and the region).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

#: The extensions looked for in a folder of slides.
SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".vms", ".vmu",
                    ".tif", ".tiff")

INSTALL = "reading whole-slide images needs OpenSlide: pip install 'mami_jax[slides]'"


class Slide:
    """One open slide: ``dimensions`` (level-0 width, height), ``downsamples``, ``mpp``
    (microns per level-0 pixel, None when the file does not say)."""

    def __init__(self, path: str):
        try:
            import openslide
        except ImportError as e:
            raise ValueError(f"{path}: {INSTALL} ({e})") from None
        try:
            self._slide = openslide.OpenSlide(path)
        except (openslide.OpenSlideError, OSError) as e:
            raise ValueError(f"{path}: not a slide OpenSlide reads "
                             f"({type(e).__name__}: {e})") from None
        self.path = path
        self._errors = (openslide.OpenSlideError, OSError)
        self.dimensions = tuple(int(v) for v in self._slide.dimensions)
        self.downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        mpp = self._slide.properties.get("openslide.mpp-x")
        try:
            self.mpp = float(mpp) if mpp else None
        except ValueError:
            self.mpp = None
        if self.mpp is not None and not (math.isfinite(self.mpp) and self.mpp > 0):
            self.mpp = None

    def thumbnail(self, scale: float) -> tuple[np.ndarray, float]:
        """(RGB uint8 thumbnail about ``scale`` level-0 pixels per pixel, its exact scale
        along x)."""
        w, h = self.dimensions
        size = (max(1, math.ceil(w / scale)), max(1, math.ceil(h / scale)))
        try:
            image = self._slide.get_thumbnail(size).convert("RGB")
        except self._errors as e:
            raise ValueError(f"{self.path}: cannot be read for its thumbnail "
                             f"({type(e).__name__}: {e})") from None
        return np.asarray(image), w / image.width

    def tile(self, position: tuple[int, int], level: int, read_size: int,
             tile: int) -> Image.Image:
        """The ``read_size`` square at level-0 ``position`` of ``level``, on white, resized
        to ``tile`` pixels (area averaging when shrinking)."""
        try:
            region = self._slide.read_region(position, level, (read_size, read_size))
        except self._errors as e:      # a damaged tile of the file
            raise ValueError(f"{self.path}: the region at level-0 {position}, level {level} "
                             f"cannot be read ({type(e).__name__}: {e})") from None
        white = Image.new("RGB", region.size, (255, 255, 255))
        white.paste(region, mask=region.getchannel("A"))
        if read_size != tile:
            shrink = read_size > tile
            white = white.resize((tile, tile), Image.Resampling.BOX if shrink
                                 else Image.Resampling.BICUBIC)
        return white

    def close(self) -> None:
        self._slide.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
