"""The archive index: every archived image's re-ID embedding in FAISS, with its metadata.

One FAISS index per modality (a query is matched within its own modality, as the
re-identification protocols score it), over L2-normalised embeddings with the inner
product, so a score is the cosine similarity. ``kind``:

- ``flat``  (default): exact search (``IndexFlatIP``);
- ``ivf``: inverted lists (``IndexIVFFlat``, ``ivf_nlist`` cells trained on the first
  vectors of the partition, at most one cell per 39 of them; ``ivf_nprobe`` searched);
- ``hnsw``: a navigable small-world graph (``IndexHNSWFlat``, ``hnsw_m`` links,
  ``hnsw_ef_search``).

Centring: a re-ID model's raw embeddings share one large common direction per modality
(on the phantoms every raw cosine similarity lies above 0.999, and still above 0.96
after removing the mean over all modalities), which leaves verification thresholds at
the fourth or fifth decimal. An archive built with ``centers`` (per modality, the mean
of its unit embeddings, ``mean_directions``) stores every vector as the unit embedding
minus its modality's centre, renormalised (``mami_jax.models.embed.centred``,
which the privacy app uses for the same reason), and applies the same fixed centres to
every later ``add`` and every query (``prepare``), so scores are cosines in the centred
space and an archive extended later stays comparable with itself.

On disk (``save`` / ``load``; written to a staging folder and renamed into place)::

    INDEX/archive.json     format, kind and its settings, embedding size, the model that
                           made the embeddings (workdir, config, step, parameter
                           fingerprint, how it read the images: ``reading``), counts per
                           modality, calibrated thresholds
    INDEX/metadata.csv     one row per archived image, in archive order: the manifest
                           columns (patient_id is used for evaluation only)
    INDEX/<modality>.faiss the FAISS index of that modality (ids = its rows in order)
    INDEX/centers.npz      per modality its centre (float32, (dim,)) when centred
    INDEX/density.npz      per modality the local density of each image (partition
                           order) when hub-corrected
    INDEX/records.csv      image_id and the diagnosis recorded for it (one labels-table
                           column, named in archive.json) when built or extended with a
                           labels table: what ``query`` shows beside each earlier image

Hub correction (``hubness_k`` > 0 in the settings; off when absent; ``hubness.py`` says
why): the archive stores each image's local density (mean cosine to its ``hubness_k``
nearest other archived images of its modality) and scores a candidate 2 cos - r_q - r_c;
r_q is the stored one for an archived query, else computed by one more search. Scores are
then no longer cosines (they lie in [-4, 2]), thresholds are calibrated on the same
scores, and ranking re-scores the ``hubness_shortlist`` best candidates by cosine (a
re-ranking, exact when the shortlist holds the partition). ``add`` recomputes every density
of the modalities it extends (one search per archived image, at the index's own speed), so
an extended archive's scores are those of one built at once; its centres, thresholds and
visit-fusion impostor statistics stay those fitted at ``index`` (the archive does not keep
the raw embeddings they were fitted on), and ``add`` says so.

Adding refuses embeddings of another model, or of the same one reading images otherwise
(``check_model``, ``check_reading``), and image ids already archived, so one archive never
mixes two embedding spaces or counts an image twice.
"""

from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from mami_jax.apps.history import hubness
from mami_jax.apps.history.archive_files import (ARCHIVE_JSON, CENTERS_NPZ, DENSITY_NPZ,
                                                 FORMAT, META_COLUMNS, METADATA_CSV,
                                                 RECORDS_CSV, ArchiveError, read_arrays,
                                                 read_header, read_metadata)
from mami_jax.data.manifest import ManifestRow
from mami_jax.data.reading_settings import first_difference
from mami_jax.models.embed import centred
from mami_jax.runtime import strict_json
from mami_jax.runtime.atomic_files import aside_path, finish_tree, replace_dir, staging_dir
from mami_jax.runtime.setting_ranges import is_number

KINDS = ("flat", "ivf", "hnsw")


def _faiss():
    try:
        import faiss
    except ImportError as e:  # the "apps" extra
        raise ArchiveError("the history archive needs FAISS: pip install -e '.[apps]'") from e
    return faiss


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Float32, C-contiguous rows of unit length (a zero row stays zero)."""
    v = np.ascontiguousarray(np.asarray(vectors, np.float32)).copy()
    if v.ndim != 2:
        raise ArchiveError(f"embeddings must be (n, dim); got shape {v.shape}")
    _faiss().normalize_L2(v)
    return v


def refuse_non_finite(rows: Sequence[ManifestRow], vectors: np.ndarray) -> None:
    """An ArchiveError naming the rows whose embedding is not finite: the NaN rows of
    images a run with ``data.skip_bad_images`` could not read, which poisoned a modality's
    centre or were archived where no search finds them."""
    v = np.asarray(vectors)
    bad = [r.image_id for r, row in zip(rows, v.reshape(len(v), -1)) if not np.isfinite(row).all()]
    if bad:
        raise ArchiveError(f"{len(bad)} image(s) have no finite embedding (unreadable, and "
                           f"skipped by the run's data.skip_bad_images), e.g. {bad[:5]}: "
                           "leave them out of the manifest")


def mean_directions(rows: Sequence[ManifestRow], vectors: np.ndarray) -> dict[str, np.ndarray]:
    """Per modality of ``rows``: the mean of its L2-normalised embeddings (float32,
    (dim,)), the centre an archive removes."""
    refuse_non_finite(rows, vectors)
    unit = normalized(vectors)
    modalities = np.asarray([r.modality for r in rows])
    return {m: unit[modalities == m].mean(0).astype(np.float32)
            for m in sorted(set(modalities.tolist()))}


def make_index(kind: str, dim: int, settings: dict, train_vectors: np.ndarray):
    """An empty FAISS index of ``kind`` for unit vectors (IVF trained on ``train_vectors``)."""
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(settings["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = int(settings["hnsw_ef_search"])
        return index
    if kind == "ivf":
        nlist = max(1, min(int(settings["ivf_nlist"]), len(train_vectors) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(train_vectors)
        index.nprobe = min(nlist, int(settings["ivf_nprobe"]))
        return index
    raise ArchiveError(f"index kind {kind!r} unknown; expected one of {', '.join(KINDS)}")


def _whole_setting(settings: dict, key: str, default) -> int:
    """``settings[key]`` (``default`` when absent) as a whole number, else an ArchiveError
    naming it (a bare int() error named nothing)."""
    value = settings.get(key, default)
    if not (is_number(value) and value == int(value)):
        raise ArchiveError(f"settings: {key}={value!r}, expected a whole number")
    return int(value)


#: The settings each index kind's search reads.
SEARCH_SETTINGS = {"hnsw": ("hnsw_m", "hnsw_ef_search"), "ivf": ("ivf_nlist", "ivf_nprobe")}


def index_of_kind(index, kind: str) -> bool:
    """Whether the FAISS ``index`` is of the archive ``kind`` and scores by inner product."""
    faiss = _faiss()
    cls = {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSWFlat, "ivf": faiss.IndexIVFFlat}[kind]
    return (isinstance(faiss.downcast_index(index), cls)
            and index.metric_type == faiss.METRIC_INNER_PRODUCT)


def _apply_search_settings(index, kind: str, settings: dict) -> None:
    faiss = _faiss()
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(settings["hnsw_ef_search"])
    elif kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = min(ivf.nlist, int(settings["ivf_nprobe"]))


class Archive:
    """Embeddings and metadata of archived images, searchable per modality."""

    def __init__(self, dim: int, kind: str = "flat", settings: dict | None = None,
                 model: dict | None = None, calibration: dict | None = None,
                 centers: dict | None = None):
        if kind not in KINDS:
            raise ArchiveError(f"index kind {kind!r} unknown; expected one of {', '.join(KINDS)}")
        self.dim, self.kind = int(dim), kind
        self.centers = None
        if centers is not None:
            self.centers = {m: np.asarray(c, np.float32) for m, c in centers.items()}
            for m, c in self.centers.items():
                if c.shape != (self.dim,) or not np.all(np.isfinite(c)):
                    raise ArchiveError(f"the {m} centre must be {self.dim} finite numbers; got "
                                       f"shape {c.shape}")
        self.settings = dict(settings or {})
        self.model = dict(model or {})
        self.calibration = dict(calibration or {})
        for key in SEARCH_SETTINGS.get(kind, ()):
            if key not in self.settings:
                raise ArchiveError(f"settings: no {key!r} entry, which a {kind} archive's "
                                   "search reads")
        self.hubness_k = _whole_setting(self.settings, "hubness_k", 0)
        self.shortlist = _whole_setting(self.settings, "hubness_shortlist", 100)
        for key in SEARCH_SETTINGS.get(kind, ()):
            _whole_setting(self.settings, key, None)
        self.rows: list[ManifestRow] = []
        self.indexes: dict[str, object] = {}
        self.positions: dict[str, list[int]] = {}   # partition id -> archive position
        self.density: dict[str, np.ndarray] = {}    # partition id -> local density
        self._partition_of: dict[str, tuple] = {}   # image id -> (modality, partition id)
        self.record_column: str | None = None        # labels-table column of the records
        self.records: dict[str, str] = {}            # image id -> recorded diagnosis

    # -- contents -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def partition_size(self, modality: str) -> int:
        return len(self.positions.get(modality, ()))

    def slot(self, position: int) -> int:
        """Where archived image ``position`` lies in its modality's index (the row of its
        stored vector and of its density)."""
        return self._partition_of[self.rows[position].image_id][1]

    def thresholds(self) -> dict[str, float]:
        return {m: float(c["threshold"]) for m, c in self.calibration.items()}

    def record(self, rows: Sequence[ManifestRow], values: Sequence[str], column: str) -> None:
        """Records each archived row's diagnosis (``column`` of a labels table); one archive
        keeps one column."""
        if self.record_column not in (None, column):
            raise ArchiveError(f"the archive records {self.record_column!r}, not {column!r}")
        unknown = [r.image_id for r in rows if r.image_id not in self._partition_of]
        if unknown:
            raise ArchiveError(f"{len(unknown)} image(s) to record are not archived, e.g. "
                               f"{unknown[:5]}")
        self.record_column = column
        self.records.update({r.image_id: str(v) for r, v in zip(rows, values)})

    def check_model(self, model: dict, where: str) -> None:
        """Refuses embeddings of a model other than the archive's (compares fingerprints),
        or of the same one reading images otherwise (``check_reading`` of its ``reading``,
        when ``model`` records it)."""
        mine, theirs = self.model.get("fingerprint"), model.get("fingerprint")
        if mine != theirs:
            raise ArchiveError(
                f"{where}: the archive's embeddings were made by another model "
                f"({self.model.get('source', '?')}, parameters {str(mine)[:12]}) than the one "
                f"given ({model.get('source', '?')}, parameters {str(theirs)[:12]}); build a "
                f"new archive with that model instead")
        if "reading" in model:
            self.check_reading(model["reading"], where, str(model.get("config", "?")))

    @property
    def records_reading(self) -> bool:
        """Whether archive.json records how its model read the images (archives written
        before it did cannot be checked: ``check_reading``)."""
        return self.model.get("reading") is not None

    def check_reading(self, reading: dict, where: str, config: str) -> None:
        """Refuses image-reading settings (``data.reading_settings`` of the experiment
        ``config``) other than those the archive's images were read with: the same
        parameters reading an image at another size, slice count or window give another
        embedding, and the archive took another patient's images for the query's without an
        error. The first setting that differs is named, the general ones and those of the
        archive's modalities first. A setting the archive does not record is newer than the
        archive and not compared; an archive recording none (``records_reading`` False) is
        not checked at all."""
        if not self.records_reading:
            return
        held = self.model["reading"]
        if not isinstance(held, dict):
            raise ArchiveError(f"{where}: {ARCHIVE_JSON} records the model's reading as "
                               f"{held!r}, not its settings: the archive is damaged")

        def others_last(key: str):
            return key.startswith("modalities.") and key.split(".")[1] not in self.positions, key

        key = first_difference(held, reading, order=others_last)
        if key is not None:
            given = repr(reading[key]) if key in reading else "no such setting"
            raise ArchiveError(
                f"{where}: the archive's images were read with data.{key}={held[key]!r}, "
                f"the config {config} reads them with {given}; the same model's "
                f"embeddings of images read otherwise do not compare with the archive's: "
                f"use the config the archive records ({self.model.get('config', '?')}) or "
                f"build a new archive with this one")

    @property
    def centred(self) -> bool:
        return self.centers is not None

    def prepare(self, vectors: np.ndarray, modality: str) -> np.ndarray:
        """Raw embeddings of one modality -> the vectors the index holds and compares: unit
        length, minus the modality's centre and renormalised when the archive is centred
        (float32, C order)."""
        unit = normalized(vectors)
        if self.centers is None or unit.shape[1:] != (self.dim,):
            return unit
        if modality not in self.centers:
            raise ArchiveError(f"the archive has no centre for modality {modality!r} (it was "
                               f"built without {modality} images; centres for "
                               f"{', '.join(sorted(self.centers)) or 'none'}): build it again "
                               f"with them")
        return normalized(centred(unit, self.centers[modality]))

    def prepare_rows(self, rows: Sequence[ManifestRow], vectors: np.ndarray) -> np.ndarray:
        """``prepare`` of each row's embedding with its own modality's centre, in row order."""
        vectors = normalized(vectors)
        out = vectors.copy()
        modalities = np.asarray([r.modality for r in rows])
        for m in sorted(set(modalities.tolist())):
            out[modalities == m] = self.prepare(vectors[modalities == m], m)
        return out

    def add(self, rows: Sequence[ManifestRow], vectors: np.ndarray) -> None:
        """Appends images (raw embeddings: ``prepare`` normalises and centres them)."""
        refuse_non_finite(rows, vectors)
        vectors = normalized(vectors)
        if vectors.shape != (len(rows), self.dim):
            raise ArchiveError(f"embeddings of shape {vectors.shape} for {len(rows)} images; the "
                               f"archive holds {self.dim}-d embeddings")
        known = {r.image_id for r in self.rows}
        seen, dup = set(), []
        for r in rows:
            if r.image_id in known or r.image_id in seen:
                dup.append(r.image_id)
            seen.add(r.image_id)
        if dup:
            raise ArchiveError(f"{len(dup)} image(s) already in the archive or listed twice, "
                               f"e.g. {dup[:5]}")
        by_modality: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_modality.setdefault(r.modality, []).append(i)
        start = len(self.rows)
        prepared = {m: self.prepare(vectors[members], m) for m, members in by_modality.items()}
        for modality, members in by_modality.items():
            v = prepared[modality]
            if modality not in self.indexes:
                self.indexes[modality] = make_index(self.kind, self.dim, self.settings, v)
                self.positions[modality] = []
            self.indexes[modality].add(v)
            first = len(self.positions[modality])
            self.positions[modality].extend(start + i for i in members)
            self._partition_of.update((rows[i].image_id, (modality, first + j))
                                      for j, i in enumerate(members))
        self.rows.extend(rows)
        if self.hubness_k > 0:
            for modality in by_modality:
                self.density[modality] = hubness.archived_density(
                    self.indexes[modality], self.kind, self.hubness_k)

    # -- hub correction (apps/history/hubness.py) ---------------------------------------
    def query_density(self, modality: str, prepared: np.ndarray,
                      query_ids: Sequence[str] | None = None) -> np.ndarray:
        """Local density of queries (``prepare``d vectors): an archived image's stored
        one (by ``query_ids``), else the mean cosine to its ``hubness_k`` nearest archived
        images."""
        out = np.zeros(len(prepared), np.float32)
        if self.hubness_k <= 0 or modality not in self.indexes:
            return out
        ids = list(query_ids) if query_ids is not None else [None] * len(prepared)
        where = [self._partition_of.get(i) for i in ids]
        new = [i for i, w in enumerate(where) if w is None or w[0] != modality]
        for i, w in enumerate(where):
            if w is not None and w[0] == modality:
                out[i] = self.density[modality][w[1]]
        out[new] = hubness.new_density(self.indexes[modality], prepared[new], self.hubness_k)
        return out

    def row_density(self, rows: Sequence[ManifestRow], vectors: np.ndarray) -> np.ndarray:
        """``query_density`` of each row (raw embeddings), with its own modality; zeros
        when the archive is not hub-corrected."""
        out = np.zeros(len(rows), np.float32)
        if self.hubness_k <= 0:
            return out
        prepared = self.prepare_rows(rows, vectors)
        modalities = np.asarray([r.modality for r in rows])
        for m in sorted(set(modalities.tolist())):
            sel = np.flatnonzero(modalities == m)
            out[sel] = self.query_density(m, prepared[sel], [rows[i].image_id for i in sel])
        return out

    def adjust(self, cosine, query_density, candidate_density):
        """The archive's score of a pair from its cosine and the two local densities:
        the cosine itself without hub correction, else 2 cos - r_q - r_c."""
        if self.hubness_k <= 0:
            return cosine
        return hubness.csls(cosine, query_density, candidate_density)

    def search(self, modality: str, queries: np.ndarray, k: int,
               query_ids: Sequence[str] | None = None):
        """(scores, archive positions), each (n, k), best first; position -1 where the
        partition has fewer than ``k`` images (score -inf there). Scores are cosines, or
        hub-corrected (``adjust``) re-ranked over the ``hubness_shortlist`` best cosines
        when the archive is; ``query_ids`` let archived queries use their stored density."""
        q = normalized(queries)
        n = len(q)
        if modality not in self.indexes or k <= 0:
            return np.full((n, max(k, 0)), -np.inf, np.float32), np.full((n, max(k, 0)), -1)
        prepared = self.prepare(q, modality)
        fetch = int(k) if self.hubness_k <= 0 else max(int(k), self.shortlist)
        scores, ids = self.indexes[modality].search(prepared, fetch)
        if self.hubness_k > 0:
            density = self.density[modality]
            r_q = self.query_density(modality, prepared, query_ids)
            scores = self.adjust(np.where(ids >= 0, scores, 0), r_q[:, None],
                                 density[np.maximum(ids, 0)])
            scores = np.where(ids >= 0, scores, -np.inf)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :int(k)]
            scores = np.take_along_axis(scores, order, 1)
            ids = np.take_along_axis(ids, order, 1)
        table = np.asarray(self.positions[modality] + [-1])
        positions = table[np.where(ids >= 0, ids, len(table) - 1)]
        return np.where(ids >= 0, scores, -np.inf).astype(np.float32), positions

    # -- disk -----------------------------------------------------------------------
    def header(self) -> dict:
        return {"format": FORMAT, "kind": self.kind, "settings": self.settings, "dim": self.dim,
                "model": self.model, "count": len(self.rows), "centred": self.centred,
                "modalities": {m: len(p) for m, p in sorted(self.positions.items())},
                "calibration": self.calibration, "record_column": self.record_column}

    def save(self, path: str) -> str:
        """Writes the archive folder all-or-nothing (replacing an older archive or an empty
        folder at ``path``; anything else there is refused)."""
        faiss = _faiss()
        path = os.path.abspath(path)
        if os.path.exists(path) and not os.path.isfile(os.path.join(path, ARCHIVE_JSON)) and not (
                os.path.isdir(path) and not os.listdir(path)):
            raise ArchiveError(f"{path} exists and is not an archive; refusing to replace it")
        with staging_dir(path) as tmp:
            for modality, index in self.indexes.items():
                faiss.write_index(index, os.path.join(tmp, f"{modality}.faiss"))
            if self.centers is not None:
                np.savez(os.path.join(tmp, CENTERS_NPZ), **self.centers)
            if self.hubness_k > 0:
                np.savez(os.path.join(tmp, DENSITY_NPZ), **self.density)
            with open(os.path.join(tmp, METADATA_CSV), "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(META_COLUMNS)
                writer.writerows([getattr(r, c) for c in META_COLUMNS] for r in self.rows)
            if self.record_column is not None:
                with open(os.path.join(tmp, RECORDS_CSV), "w", newline="", encoding="utf-8") as f:
                    writer = csv.writer(f)
                    writer.writerow(("image_id", self.record_column))
                    writer.writerows((r.image_id, self.records[r.image_id]) for r in self.rows
                                     if r.image_id in self.records)
            with open(os.path.join(tmp, ARCHIVE_JSON), "w", encoding="utf-8") as f:
                f.write(strict_json.dumps(self.header(), indent=1, sort_keys=True))
            finish_tree(tmp)
            replace_dir(tmp, path)       # the old archive is kept aside until this is in place
        return path

    def _load_records(self, records_path: str, column: str) -> None:
        try:
            with open(records_path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                head = next(reader, None)
                if head != ["image_id", column]:
                    raise ArchiveError(f"{records_path}: columns {head}, expected "
                                       f"['image_id', {column!r}]")
                records = {}
                for line, rec in enumerate(reader, start=2):
                    if len(rec) != 2:
                        raise ArchiveError(f"{records_path}: line {line} has {len(rec)} fields, "
                                           f"expected 2")
                    records[rec[0]] = rec[1]
        except OSError as e:
            raise ArchiveError(f"{records_path}: the archive records diagnoses but they cannot "
                               f"be read ({e.strerror})") from e
        except (UnicodeDecodeError, csv.Error) as e:
            raise ArchiveError(f"{records_path}: not a CSV text file ({e})") from e
        unknown = sorted(set(records) - set(self._partition_of))
        if unknown:
            raise ArchiveError(f"{records_path}: {len(unknown)} image(s) not in the archive, "
                               f"e.g. {unknown[:5]}")
        self.record_column, self.records = column, records

    @classmethod
    def load(cls, path: str) -> "Archive":
        """The archive folder ``path``; a missing or damaged part is an ArchiveError naming
        its file and what is wrong with it (``archive_files``), and parts that disagree
        name the two files."""
        faiss = _faiss()
        aside = aside_path(path)
        if not os.path.exists(path) and os.path.isdir(aside):   # a save killed between renames
            raise ArchiveError(f"{path}: a save of the archive stopped half-way and left the "
                               f"archive as it was before it aside, in {aside}; move it back "
                               f"(mv '{aside}' '{path}') and run the update again")
        header_path = os.path.join(path, ARCHIVE_JSON)
        header = read_header(path)
        centers = None
        if header["centred"]:
            centers = read_arrays(os.path.join(path, CENTERS_NPZ), "is centred", "centres")
            missing = sorted(set(header["modalities"]) - set(centers))
            if missing:
                raise ArchiveError(f"{os.path.join(path, CENTERS_NPZ)}: no centre for "
                                   f"{missing}, which {header_path} lists")
        try:
            archive = cls(header["dim"], header["kind"], header["settings"], header["model"],
                          header["calibration"], centers)
        except ArchiveError as e:
            raise ArchiveError(f"{path}: {e}") from e
        meta_path = os.path.join(path, METADATA_CSV)
        archive.rows = read_metadata(meta_path)
        for i, r in enumerate(archive.rows):
            archive._partition_of[r.image_id] = (r.modality,
                                                 len(archive.positions.setdefault(r.modality, [])))
            archive.positions[r.modality].append(i)
        listed = {m: len(p) for m, p in archive.positions.items()}
        if listed != header["modalities"]:
            raise ArchiveError(f"{meta_path}: lists {dict(sorted(listed.items()))} images per "
                               f"modality, {header_path} says {header['modalities']}: the "
                               f"archive is inconsistent")
        if header["record_column"]:
            archive._load_records(os.path.join(path, RECORDS_CSV), header["record_column"])
        if archive.hubness_k > 0:
            density_path = os.path.join(path, DENSITY_NPZ)
            archive.density = read_arrays(density_path, "is hub-corrected", "densities")
            wrong = {m: (archive.density[m].shape if m in archive.density else None, (len(p),))
                     for m, p in archive.positions.items()
                     if m not in archive.density or archive.density[m].shape != (len(p),)}
            if wrong:
                raise ArchiveError(f"{density_path}: densities' shapes (found, expected) "
                                   f"{wrong}: the archive is inconsistent")
            unset = sorted(m for m, d in archive.density.items() if not np.isfinite(d).all())
            if unset:     # every score against them would be NaN: no candidate, unsaid
                raise ArchiveError(f"{density_path}: the {', '.join(unset)} densities are not "
                                   "all finite numbers")
        for modality, expected in header["modalities"].items():
            index_path = os.path.join(path, f"{modality}.faiss")
            try:
                index = faiss.read_index(index_path)
            except RuntimeError as e:
                raise ArchiveError(f"{index_path}: cannot be read as a FAISS index") from e
            if index.ntotal != expected or index.d != archive.dim:
                raise ArchiveError(
                    f"{index_path}: holds {index.ntotal} {index.d}-d vectors, {header_path} "
                    f"says {expected} {archive.dim}-d ones: the archive is inconsistent")
            if not index_of_kind(index, archive.kind):
                raise ArchiveError(f"{index_path}: not the inner-product {archive.kind} index "
                                   f"{header_path} says the archive holds")
            _apply_search_settings(index, archive.kind, archive.settings)
            archive.indexes[modality] = index
        return archive
