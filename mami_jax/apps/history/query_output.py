"""What ``query`` prints and draws, and where its picture goes by default.

The printed table and the picture's captions say of each candidate whose it is (the
patient as the archive stores it, ``dataset/patient_id``: image ids need not spell it, a
DICOM UID does not) and when (its order or date): the accept/reject decision is about
whether it is the query's patient's earlier image, which a reader can only judge knowing
both. The header says which order the query itself counts with: ``newest`` only for a new
image given no ``--order`` (newer than everything archived); an archived image (or a new
one placed in an archived visit) without an order has no earlier image of its own
patient (``history_select.is_history``), which ``newest`` contradicted.

The default picture (no ``--png``) is ``./query_<image id>.png``: named after the image's
basename (``query_v2.png``), queries of two patients' ``v2.png`` from one folder wrote the
same file and the second replaced the first without a word. An archived image's id is
unique in its archive; a new image's id is its absolute path, so its picture is named by
its file's name and a short hash of that path. Names are made of ASCII letters, digits,
``.``, ``-`` and ``_`` (a file name on every system). An existing file is never replaced
by a default name: the next free ``query_<name>-2.png``, ``-3``, ... is taken (reserved
exclusively, so two queries running at once cannot take the same one), and the
``picture:`` line names it. A picture named by ``--png`` is the output the user named and
replaces an existing PNG there, as every command's picture flag does.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
from typing import Callable, Sequence

from mami_jax.apps.history.history_select import NEW_IMAGE_DATASET
from mami_jax.data.manifest import ManifestRow

#: The longest image-id part of a default picture name (a file name has at most 255 bytes).
NAME_LIMIT = 100


def file_name_part(text: str) -> str:
    """``text`` as part of a file name: every run of characters other than ASCII letters,
    digits, ``.``, ``-`` and ``_`` one ``_`` (a ``/`` of an id would name a folder, a
    ``:`` is refused on Windows), leading dots dropped; one longer than ``NAME_LIMIT`` is
    cut and ends in a hash of the whole, so two ids that share a beginning keep apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".") or "image"
    if len(safe) > NAME_LIMIT:
        safe = f"{safe[:NAME_LIMIT - 9]}-{_digest(text)}"
    return safe


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def picture_stem(path: str) -> str:
    """The name of an image without its extensions (``scan.nii.gz`` -> ``scan``; a series
    folder its own name)."""
    name = os.path.basename(os.path.normpath(path))
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[0] or name


def default_picture(row: ManifestRow, folder: str) -> str:
    """``folder/query_<name>.png`` for the query ``row`` as ``query_rows.query_row`` gave
    it (before any ``--with`` image placed it in a visit): an archived image's name is its
    image id; a new image's, its file's name and 8 hex digits of a hash of its absolute
    path (its id), so two new ``v2.png`` of other folders get two names."""
    if row.dataset == NEW_IMAGE_DATASET:
        name = f"{file_name_part(picture_stem(row.path))}-{_digest(row.image_id)}"
    else:
        name = file_name_part(row.image_id)
    return os.path.join(folder, f"query_{name}.png")


def _numbered(path: str, n: int) -> str:
    """``path`` for n = 1, else ``path`` with ``-n`` before ``.png``."""
    return path if n == 1 else f"{path[:-len('.png')]}-{n}.png"


def free_picture(path: str) -> str:
    """The first of ``path``, ``path-2``, ``path-3``, ... (before ``.png``) that names
    nothing yet (not even a dangling link)."""
    return next(p for p in map(lambda n: _numbered(path, n), itertools.count(1))
                if not os.path.lexists(p))


def write_new_picture(path: str, draw: Callable[[str], None], write_atomic) -> str:
    """Draws a default-named picture into the first free name from ``path`` on
    (``free_picture``) and returns that name. The name is taken by creating it
    exclusively (an empty placeholder that ``write_atomic`` then replaces with the whole
    picture), so a file that appeared there since the name was chosen, or a second query
    running at once, moves it on to the next number instead of being replaced; a failed
    drawing removes the placeholder."""
    base = path
    for n in itertools.count(1):
        path = _numbered(base, n)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        break
    try:
        write_atomic(path, draw)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if os.path.getsize(path) == 0:
                os.unlink(path)
        raise
    return path


def order_phrase(row: ManifestRow) -> str:
    """How the query ``row`` is placed in time, for the header: its order; ``newest`` for
    a new image without one (every archived image counts as earlier); for an archived
    image (or a new one placed in an archived visit) without an order, that none of its
    own patient's images counts as earlier (``history_select.is_history``)."""
    if row.order:
        return f"order {row.order}"
    if row.dataset == NEW_IMAGE_DATASET:
        return "order newest"
    return "no order: no image of its own patient counts as earlier"


def header(row: ManifestRow, visit: str, threshold: float) -> str:
    """The line above the table: the query, its modality, patient and order (or that it
    is a new image), how it is scored and the threshold."""
    whose = (f"patient {row.patient_key}" if row.dataset != NEW_IMAGE_DATASET
             else "new image")
    return (f"query {row.image_id} ({row.modality}, {whose}, {order_phrase(row)}){visit}; "
            f"accept above {threshold:.6f}")


def query_caption(row: ManifestRow) -> str:
    """The query's caption in the picture: its id, then its patient and order as the
    header says them, shortly."""
    whose = row.patient_key if row.dataset != NEW_IMAGE_DATASET else "new image"
    when = (f"order {row.order}" if row.order
            else "newest" if row.dataset == NEW_IMAGE_DATASET else "no order")
    return f"{row.image_id}\n{whose}, {when}"


def _order_cell(row: ManifestRow) -> str:
    return row.order or "-"


def table(candidates: Sequence[tuple[ManifestRow, float, bool]], column: str | None,
          records: dict) -> list[str]:
    """The table's lines (header first): per candidate (row, score, accepted) its rank,
    score, decision, image id, patient (``dataset/patient_id``), order (``-`` for none),
    study and, with a ``column`` of recorded diagnoses, its record (``-`` for none). The
    image id stays the fourth field and the record the last, split on whitespace."""
    heads = ["image_id", "patient", "order", "study"] + ([column] if column else [])
    cells = [[r.image_id, r.patient_key, _order_cell(r), r.study_id]
             + ([str(records.get(r.image_id, "-"))] if column else [])
             for r, _, _ in candidates]
    widths = [max(len(c) for c in col) for col in zip(heads, *cells)]

    def line(values) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    lines = [f"{'rank':>4}  {'score':>9}  {'decision':8}  " + line(heads)]
    for rank, ((_, score, accepted), values) in enumerate(zip(candidates, cells), 1):
        decision = "accept" if accepted else "reject"
        lines.append(f"{rank:>4}  {score:9.6f}  {decision:8}  " + line(values))
    return lines


def caption(row: ManifestRow, score: float, accepted: bool, column: str | None,
            records: dict, trouble: str | None = None) -> str:
    """A candidate's caption in the picture: image id; patient and order; score and
    decision; the recorded diagnosis (with a ``column``); and ``trouble`` ("file
    missing") when its image cannot be shown."""
    when = f"order {row.order}" if row.order else "no order"
    text = (f"{row.image_id}\n{row.patient_key}, {when}\n"
            f"{score:.6f} {'accept' if accepted else 'reject'}")
    if column:
        text += f"\n{column}: {records.get(row.image_id, '-')}"
    if trouble:
        text += f"\n({trouble})"
    return text
