"""The lookup tables of a grey DICOM image, read one way and inverted one way.

- The modality LUT (ModalityLUTSequence, PS3.3 C.11.1): stored values -> modality units,
  in place of RescaleSlope / RescaleIntercept (some DX, CR and XA images carry a table).
- The VOI LUT (VOILUTSequence, C.11.2): modality units -> display, the curve many CR/DX
  X-rays carry instead of a window.

Each is the first item of its sequence: LUTDescriptor (number of entries, 0 meaning
65536; the first input value mapped; bits per entry) and LUTData. An input below the
first mapped value takes the first entry, one past the last the last entry. A first
mapped value given unsigned for signed pixels (its VR is "US or SS") is read as the
signed value of the same bits.

The privacy writers put a change back through a table with the inverse of its local
slope at each pixel's value (``Table.per_output``): in a flat stretch, where no change
shows, that is capped at the table's whole input span, and the budget check on the
written file then shrinks what does not fit.
"""

from __future__ import annotations

import numpy as np

from mami_jax.data.decode_errors import DecodeError, dataset_place


def as_pixel_value(ds, value: float, bits: int) -> float:
    """``value`` of an element whose VR is "US or SS" (a padding value, a LUT's first
    mapped value) as ``ds``'s pixels read it: given unsigned for signed pixels, it is the
    signed value of the same ``bits``."""
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return value - (1 << bits) if signed and value >= 1 << (bits - 1) else value


class Table:
    """The first item of ``ds``'s ``sequence`` (a LUT): ``values`` holds its entries."""

    def __init__(self, ds, sequence: str):
        item = getattr(ds, sequence)[0]
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        self.entries = entries % 65536 or 65536    # a count read as SS arrives negative
        self.first = int(as_pixel_value(ds, first, 16))
        data = item.LUTData
        if isinstance(data, (bytes, bytearray)):
            little = ds.file_meta.TransferSyntaxUID.is_little_endian \
                if ds.get("file_meta") is not None and "TransferSyntaxUID" in ds.file_meta \
                else ds.original_encoding[1]
            dtype = np.dtype(np.uint8 if bits <= 8 and len(data) == self.entries else np.uint16)
            table = np.frombuffer(data, dtype.newbyteorder("<" if little else ">"))
        else:
            table = np.atleast_1d(np.asarray(data, np.float64))
        if table.size < self.entries:
            raise DecodeError(f"{dataset_place(ds)}: {sequence} holds {table.size} entries, "
                              f"its descriptor says {self.entries}")
        self.values = table[:self.entries].astype(np.float64)

    def index(self, x: np.ndarray) -> np.ndarray:
        """The entry each input value of ``x`` reads (clamped at both ends)."""
        return np.clip(np.rint(np.asarray(x, np.float64)) - self.first, 0,
                       self.entries - 1).astype(np.int64)

    def per_output(self, outputs: np.ndarray) -> np.ndarray:
        """Input units per output unit of a table whose entries are ``outputs``, entry by
        entry: the inverse of its local slope (negative where it falls), at most its whole
        input span in size. The slope is the secant over 1/128 of the entries around each
        one: a table of integers that rises by less than one a step is a staircase, whose
        neighbour-to-neighbour slope jumps between 0 and 1."""
        span = float(self.entries)
        reach = max(1, self.entries // 256)
        at = np.arange(self.entries)
        lo, hi = np.maximum(at - reach, 0), np.minimum(at + reach, self.entries - 1)
        slope = (outputs[hi] - outputs[lo]) / np.maximum(hi - lo, 1)
        with np.errstate(divide="ignore"):
            return np.clip(np.where(slope != 0, 1.0 / slope, span), -span, span)


class VoiLut(Table):
    """The VOI LUT, its output read in unit range by the table's own extremes (its lowest
    entry black, its highest white), so a table whose descriptor claims 16 bits but holds
    12-bit values still spans [0, 1]."""

    def __init__(self, ds):
        super().__init__(ds, "VOILUTSequence")
        lo, hi = float(self.values.min()), float(self.values.max())
        self.unit = (self.values - lo) / (hi - lo) if hi > lo else np.zeros_like(self.values)
        self._per_unit = self.per_output(self.unit)

    @staticmethod
    def of(ds) -> "VoiLut | None":
        return VoiLut(ds) if ds.get("VOILUTSequence", None) else None

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        return self.unit[self.index(x)].astype(np.float32)

    def stored_per_unit(self, x: np.ndarray) -> np.ndarray:
        """Input units per unit of display at each value of ``x``."""
        return self._per_unit[self.index(x)]


class ModalityLut(Table):
    """The modality LUT: stored values to modality units (CT numbers, optical density)."""

    def __init__(self, ds):
        super().__init__(ds, "ModalityLUTSequence")
        self._per_output = self.per_output(self.values)

    @staticmethod
    def of(ds) -> "ModalityLut | None":
        """The table of a grey ``ds`` that has one (it then replaces the rescale)."""
        if not ds.get("ModalityLUTSequence", None) or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            return None
        return ModalityLut(ds)

    def apply(self, stored: np.ndarray) -> np.ndarray:
        return self.values[self.index(stored)].astype(np.float32)

    def stored_per_output(self, stored: np.ndarray) -> np.ndarray:
        """Stored units per modality unit at each stored value."""
        return self._per_output[self.index(stored)]

    def stored_range(self, lo: float, hi: float) -> tuple[float, float]:
        """The stored values whose outputs lie in [lo, hi]: from the first to the last
        such entry (one interval for a table that only rises or only falls)."""
        inside = np.flatnonzero((self.values >= lo) & (self.values <= hi))
        if inside.size == 0:
            return float(self.first), float(self.first + self.entries - 1)
        return float(self.first + inside[0]), float(self.first + inside[-1])
