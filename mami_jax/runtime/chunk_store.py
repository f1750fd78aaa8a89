"""Arrays of a long computation kept on disk chunk by chunk, so a stopped run goes on.

Embedding a whole archive takes hours at scale; a Colab session that disconnects or a
preempted VM would otherwise start it over. A ``ChunkStore`` is a folder of one ``.npy``
per finished chunk and ``key.txt``, a digest of everything the arrays depend on (the
model's parameters, the images and their files, the data settings, the chunk size):
a later run with the same key reads the finished chunks back, a run with another key
clears them first (said in one line). Each chunk is written all-or-nothing, so a kill
leaves finished chunks only; a chunk that cannot be read is computed again. The caller
removes the folder once its own output is published (``discard``).

The folder lies beside the output (``beside``), hidden, not inside it: an output folder
holds only what the command publishes. An output made of several passes (models, image
sets) keeps one store per pass in subfolders of it, removed together (``discard_beside``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil

import numpy as np

from mami_jax.runtime.atomic_files import write_atomic, write_text_atomic

KEY_FILE = "key.txt"
SUFFIX = ".partial-embeddings"
#: An interrupted command's line when it leaves chunks to go on from.
KEPT = "the images embedded so far are kept: run the same command again to go on"


def beside(out: str) -> str:
    """The hidden chunk folder of the output ``out``: ``PARENT/.NAME.partial-embeddings``."""
    out = os.path.abspath(out)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}{SUFFIX}")


def discard_beside(out: str) -> None:
    """Remove every chunk kept for the output ``out`` (its passes' stores too)."""
    _remove(beside(out))


def _remove(folder: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)


def what_is_kept(folders) -> str:
    """``KEPT`` when one of the chunk ``folders`` exists (a stopped command left chunks), else
    "" (nothing to say)."""
    return KEPT if any(os.path.isdir(f) for f in folders) else ""


def digest(*parts) -> str:
    """sha256 of ``parts`` as JSON (what a store's key is made of)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ChunkStore:
    """Finished chunks of the computation ``key`` in ``folder`` (made by the first ``put``);
    ``folder`` None keeps nothing (where the caller cannot keep chunks)."""

    def __init__(self, folder: str | None, key: str, log=print):
        self.folder, self.key, self.log = folder, key, log
        self._ready = False

    def _prepare(self) -> None:
        """Clears chunks of another key (once); the folder is made by the first ``put``, so
        a run that fails before it finishes a chunk leaves nothing beside its output."""
        if self._ready:
            return
        self._ready = True
        if self.folder is None or not os.path.isdir(self.folder):
            return
        try:
            with open(os.path.join(self.folder, KEY_FILE)) as f:
                if f.read().strip() == self.key:
                    return
        except OSError:
            pass
        self.log(f"  {self.folder}: earlier partial results are of other images, another "
                 f"model or other settings; starting over")
        self.discard()

    def _path(self, index: int) -> str:
        return os.path.join(self.folder, f"chunk_{index:06d}.npy")

    def get(self, index: int, rows: int) -> np.ndarray | None:
        """Chunk ``index`` as stored (None when not finished, or unreadable, or not of
        ``rows`` rows: it is then computed again)."""
        self._prepare()
        if self.folder is None or not os.path.isfile(self._path(index)):
            return None
        path = self._path(index)
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if array.ndim < 1 or array.shape[0] != rows:
            return None
        return array

    def put(self, index: int, array: np.ndarray) -> None:
        self._prepare()
        if self.folder is None:
            return
        if not os.path.isdir(self.folder):
            os.makedirs(self.folder)
            write_text_atomic(os.path.join(self.folder, KEY_FILE), self.key + "\n")
        write_atomic(self._path(index), lambda tmp: _save(tmp, array))

    def discard(self) -> None:
        """Remove the folder (the output it served is published, or the key changed)."""
        if self.folder is not None:
            _remove(self.folder)


def _save(path: str, array: np.ndarray) -> None:
    """``np.save`` through a buffer and one ``write``: ``np.save`` to a file ends in
    ``tofile``, whose short write on a full disk raises an OSError with no errno, which
    the no-space message does not recognise (a traceback); ``write`` raises ENOSPC."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())
