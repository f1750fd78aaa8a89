"""The rows a ``query`` scores: the query image and the other images of its visit.

An archived image is queried with its own metadata; another one needs its modality (and its
order, to exclude later archived images). With an archive calibrated on visit scores
(``visit_fusion.fit_visit_retrieval``), the query's visit-mates add their modalities'
evidence, as they do in ``train``/``eval``: an archived query brings its archived
visit-mates by itself, and ``--with`` adds images of the same visit, each either archived
(given by path) or new (given as ``MODALITY=PATH``). A path is archived when its file,
links resolved, is an archived image's, however either path reaches it. A new image's id is
``query:`` and its absolute path, so two files of the same name are two images and one file
given twice (through a link too) is one. A ``--with`` image of the query's own modality is
refused: the visit score adds the evidence of the visit's other modalities only
(``VisitFusion.score``), so it would count for nothing. An archived query's visit is its
own: an archived ``--with`` image of another visit is refused.
"""

from __future__ import annotations

import os
from typing import Sequence

from mami_jax.apps.history.history_select import NEW_IMAGE_DATASET
from mami_jax.apps.history.visit_fusion import visit_key
from mami_jax.data.file_rows import refuse_image_folder
from mami_jax.data.manifest import YEAR_LAST_DATE, ManifestRow, is_number_order, order_key


def _archived(archive, path: str) -> ManifestRow | None:
    """The archived row whose file ``path`` is, links resolved on both sides: compared as
    absolute paths, the very archived file reached through a linked folder was taken for a
    new image, and its own archived copy (and later images) came back as its history."""
    path = os.path.realpath(path)
    return next((r for r in archive.rows if os.path.realpath(r.path) == path), None)


def _new_row(archive, path: str, modality: str, order: str, flag: str,
             path_flag: str) -> ManifestRow:
    if modality not in archive.indexes:
        raise ValueError(f"{flag}: modality {modality!r}: the archive holds no such images "
                         f"(it has {', '.join(sorted(archive.indexes))})")
    refuse_image_folder(path, modality, path_flag)
    path = os.path.abspath(path)
    # a patient and study of its own (rows need both; empty ones were refused before any
    # new image was embedded): a stranger to every archived patient until placed_by_mates
    # or keyed_to makes it one of theirs
    own = f"query:{path}"
    return ManifestRow(image_id=own, patient_id=own, study_id=own, order=order,
                       modality=modality, dataset=NEW_IMAGE_DATASET, view="", path=path)


def query_row(archive, image: str, modality: str | None, order: str | None) -> ManifestRow:
    """The row of ``--image``: the archived one, or a new one of ``--modality``."""
    if not os.path.exists(image):
        raise FileNotFoundError(f"--image {image}: no such file or folder")
    row = _archived(archive, image)
    if row is not None:
        # its own metadata decides; a flag saying otherwise was silently ignored
        for flag, given, held in (("--modality", modality, row.modality),
                                  ("--order", order, row.order)):
            if given and given != held:
                raise ValueError(f"{flag} {given}: --image {image} is archived as "
                                 f"{row.image_id} with {flag[2:]} {held!r}, and an archived "
                                 f"image is queried with its own; leave {flag} out")
        return row
    if not modality:
        raise ValueError(f"--image {image} is not in the archive: give its --modality "
                         f"(and --order to exclude later archived images)")
    row = _new_row(archive, image, modality, order or "", f"--modality {modality}", "--image")
    if order:
        _check_order(archive, modality, order)
    return row


def _check_order(archive, modality: str, order: str) -> None:
    """Refuses a new image's ``--order`` that cannot be compared with the archived orders
    of its modality: a date written year last (the manifest refuses it too), or a number
    where they are all text (ISO dates) or text where they are all numbers (visit numbers,
    YYYYMMDD dates). ``order_key`` sorts every number before every text, so such an order
    would make every archived image earlier, or none, without a word."""
    if YEAR_LAST_DATE.fullmatch(order.strip()):
        raise ValueError(f"--order {order}: a date written year last does not sort in time; "
                         "write dates year first (2019-03-01 or 20190301)")
    held = sorted({r.order for r in archive.rows if r.modality == modality and r.order},
                  key=order_key)
    numbers = {is_number_order(o) for o in held}
    if len(numbers) == 1 and is_number_order(order) not in numbers:
        kind = "numbers" if True in numbers else "text (dates such as 2019-03-01)"
        raise ValueError(f"--order {order}: the archive's {modality} orders are {kind}, "
                         f"{held[0]!r} to {held[-1]!r}; an order of another kind does not "
                         "compare with them (every archived image would count as earlier, or "
                         "none): give one written like them")


def visit_mates(archive, query: ManifestRow, extra: Sequence[str]) -> list[ManifestRow]:
    """The other images of ``query``'s visit: its archived visit-mates (when it is
    archived), then each ``--with`` image (``PATH`` of an archived image or
    ``MODALITY=PATH``), as the archive holds them (``keyed_to`` makes them the query's)."""
    key = visit_key(query)
    mates = [] if query.dataset == NEW_IMAGE_DATASET else [
        r for r in archive.rows if visit_key(r) == key and r.image_id != query.image_id]
    for spec in extra:
        modality, sep, path = spec.partition("=")
        if not sep:
            modality, path = "", spec
        if not os.path.exists(path):
            raise FileNotFoundError(f"--with {spec}: no such file or folder")
        row = _archived(archive, path)
        if row is None:
            if not modality:
                raise ValueError(f"--with {spec} is not in the archive: give it as "
                                 f"MODALITY=PATH")
            row = _new_row(archive, path, modality, query.order, f"--with {spec}", "--with")
            if query.dataset == NEW_IMAGE_DATASET:      # two new images: one new visit
                row = row.replace(patient_id=query.patient_id)
        elif modality and modality != row.modality:
            raise ValueError(f"--with {spec}: the archive holds this image as "
                             f"{row.modality}, not {modality}")
        real = os.path.realpath(row.path)
        if row.image_id == query.image_id or any(
                m.image_id == row.image_id or os.path.realpath(m.path) == real
                for m in [query, *mates]):
            raise ValueError(f"--with {spec} is already part of the query's visit (the query "
                             f"itself, an archived visit-mate or given twice)")
        if (query.dataset != NEW_IMAGE_DATASET and row.dataset != NEW_IMAGE_DATASET
                and visit_key(row) != key):
            # placed_by_mates returns an archived query as it is: this is its one-visit check
            raise ValueError(f"--with {spec}: archived as {row.image_id}, of the visit "
                             f"{row.patient_key}, order {row.order!r}; the archived query "
                             f"{query.image_id} is of {query.patient_key}, order "
                             f"{query.order!r}, and brings its own visit's archived images by "
                             "itself: a query's visit is one")
        if row.modality == query.modality:
            raise ValueError(f"--with {spec}: {row.modality}, the query's own modality; the "
                             f"visit score adds the evidence of the visit's other modalities "
                             f"only, so it would count for nothing (query it on its own "
                             f"instead)")
        mates.append(row)
    return mates


def keyed_to(query: ManifestRow, mates: Sequence[ManifestRow]) -> list[ManifestRow]:
    """``mates`` keyed to ``query``'s visit, so that they count as its mates."""
    return [m.replace(dataset=query.dataset, patient_id=query.patient_id, order=query.order)
            for m in mates]


def placed_by_mates(query: ManifestRow, mates: Sequence[ManifestRow]) -> ManifestRow:
    """A new query image placed in the archived visit that its archived ``--with`` images
    belong to (their dataset, patient and order; ``mates`` as ``visit_mates`` got them, before
    re-keying), so the history rule treats it as that patient's: their own visit, and any
    later one, is no earlier history of it. Left a stranger, it had that very visit
    returned as its earliest match, scored with each archived mate compared with itself.
    An archived query, or one without archived mates, is returned as it is (``visit_mates``
    refused an archived query's archived mates of another visit); mates of two visits, or
    an ``--order`` other than theirs, are a ValueError."""
    if query.dataset != NEW_IMAGE_DATASET:
        return query
    archived = [m for m in mates if m.dataset != NEW_IMAGE_DATASET]
    visits = sorted({(m.dataset, m.patient_id, m.order) for m in archived})
    if not visits:
        return query
    if len(visits) > 1:
        raise ValueError("--with: the archived images given belong to different visits ("
                         + "; ".join(f"{d}/{p}, order {o!r}" for d, p, o in visits)
                         + "); a query's visit is one")
    dataset, patient, order = visits[0]
    if query.order and query.order != order:
        raise ValueError(f"--order {query.order}: the archived --with images are of the visit "
                         f"of order {order!r} ({dataset}/{patient}); leave --order out or give "
                         "theirs")
    return query.replace(dataset=dataset, patient_id=patient, order=order)
