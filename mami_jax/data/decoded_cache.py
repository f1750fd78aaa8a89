"""A bounded, thread-safe LRU cache of decoded images, shared by a reader's threads.

Small datasets are read dozens of times per run (the phantoms: every training image
about 50 times in ``runlocal``), and decoding dominates the input pipeline for some
formats (a gzipped NIfTI series must be inflated whole to take two slices; Macenko
stain normalisation costs a few milliseconds per tile). What is cached is the
decoded, stain-normalised slices *before* augmentation, so every epoch still gets
fresh random crops. Entries are stored read-only: a transform that tried to modify
one in place would raise instead of corrupting later reads.

Each grain worker process holds its own cache (it is not copied when the reader is
pickled into a worker), so the memory bound applies per process.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable, Hashable

import numpy as np


class DecodedCache:
    """LRU over numpy arrays, at most ``max_bytes`` in total (0 disables it)."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._reset()

    def _reset(self):
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __getstate__(self):
        return {"max_bytes": self.max_bytes}     # a worker starts with an empty cache

    def __setstate__(self, state):
        self.max_bytes = state["max_bytes"]
        self._reset()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get_or_compute(self, key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``key``, else ``compute()`` stored (read-only) and returned.

        ``compute`` runs outside the lock, so threads decode in parallel; two threads
        missing the same key both decode it and the second store is a no-op.
        """
        if not self.max_bytes:
            return compute()
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return value
            self.misses += 1
        value = compute()
        value.setflags(write=False)
        if value.nbytes > self.max_bytes:
            return value
        with self._lock:
            if key not in self._items:
                self._items[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return value
