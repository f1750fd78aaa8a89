"""A grid of images with a label column and captions, drawn with Pillow: the pictures of
what the model reads (``preview_manifest``, a training run's ``training_batches.png``).

Each grid row is one patient: a few lines of label on the left, then one cell per image,
captioned underneath; an image that could not be read is a red cell saying so.
"""

from __future__ import annotations

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LINE_HEIGHT = 11
CHAR_WIDTH = 6                      # Pillow's default bitmap font
UNREADABLE = (150, 20, 20)


def is_png(path: str) -> bool:
    """Whether ``path`` is a PNG file (a picture a command may replace with its own)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def fit(text: str, width: int) -> str:
    """``text`` cut (ending in ``~``) to what ``width`` pixels hold."""
    chars = max(4, width // CHAR_WIDTH)
    return text if len(text) <= chars else text[:chars - 1] + "~"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 1 or 3) floats in [0, 1] -> (H, W, 3) uint8."""
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def slice_caption(slices: int) -> str:
    """Which of the ``slices`` read from a series a cell shows (the middle); "" for one
    image. "of N read": the series itself may hold many more (a CT of 120 slices is read
    as ``data.slices`` of them), and "slice 2 of 3" read as the volume's second slice."""
    return f"slice {slices // 2 + 1} of {slices} read" if slices > 1 else ""


def visit_caption(row) -> str:
    """A manifest row's visit (``order``) and ``view``."""
    return " ".join(t for t in (f"order {row.order}", row.view) if t)


class PictureGrid:
    """``rows`` x ``columns`` cells of ``cell`` pixels, ``captions`` lines under each,
    after a label column ``label_width`` pixels wide."""

    def __init__(self, rows: int, columns: int, cell: int = 128, label_width: int = 150,
                 captions: int = 2):
        from PIL import Image, ImageDraw

        self.cell, self.label_width = cell, label_width
        self.row_height = cell + captions * LINE_HEIGHT + 6
        self.canvas = Image.new("RGB", (label_width + cell * max(columns, 1),
                                        self.row_height * max(rows, 1)), "white")
        self.draw = ImageDraw.Draw(self.canvas)

    def _corner(self, row: int, column: int) -> tuple[int, int]:
        return self.label_width + column * self.cell, row * self.row_height

    def label(self, row: int, lines: list[str]) -> None:
        self.draw.text((4, row * self.row_height + 4),
                       "\n".join(fit(t, self.label_width - 8) for t in lines), fill="black")

    def image(self, row: int, column: int, image: np.ndarray) -> None:
        """Pastes ``image`` (floats in [0, 1], (H, W, 1 or 3)) into the cell."""
        from PIL import Image

        left, top = self._corner(row, column)
        size = self.cell - 4
        self.canvas.paste(Image.fromarray(to_uint8(image)).resize((size, size)),
                          (left + 2, top + 2))

    def unreadable(self, row: int, column: int) -> None:
        left, top = self._corner(row, column)
        self.draw.rectangle((left + 2, top + 2, left + self.cell - 3, top + self.cell - 3),
                            fill=UNREADABLE)
        self.draw.text((left + 6, top + self.cell // 2 - 6), "unreadable", fill="white")

    def caption(self, row: int, column: int, lines: list[str]) -> None:
        left, top = self._corner(row, column)
        for k, line in enumerate(lines):
            self.draw.text((left + 2, top + self.cell + k * LINE_HEIGHT),
                           fit(line, self.cell - 4), fill="black")

    def save(self, path: str) -> None:
        """Writes the PNG atomically (``write_atomic``)."""
        from mami_jax.runtime.atomic_files import write_atomic

        write_atomic(path, lambda tmp: self.canvas.save(tmp, format="PNG"))
