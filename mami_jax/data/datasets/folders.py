"""Your own images, laid out one folder per patient and one per visit: ``--dataset folders``.

    python -m mami_jax.data.build_manifest --dataset folders --modality xray \\
        --root /data/mine --out /data/mine/manifest.csv [--name mine]

Layout: ``ROOT/PATIENT/VISIT/...``, the folder names being the ids.

- 2-D modalities (xray, fundus, pathology): every image file directly in a visit folder
  is a row (PNG, JPEG, TIFF, BMP, WebP, JPEG 2000, PGM/PPM, or a DICOM file).
- 3-D modalities (ct, mri): a row is a volume of the visit: each NIfTI/Analyze file in the
  visit folder, each sub-folder holding a series (its slice images or DICOM files), or,
  when the visit folder holds slice files and nothing else, the visit folder itself (one
  series); a multi-frame DICOM file (an enhanced CT or MR) beside them is a volume too.

Fields: patient = the patient folder's name, study = the visit folder's name, order = the
visit's position among the patient's visits in natural order (``visit2`` before
``visit10``; dates written year first sort in time), view = a volume's file or folder
name (``T1w``, ``series_3``), empty for a 2-D image. ``--name`` is the dataset column
(default ``folders``): patients are told apart per dataset, so two collections built
with different names never share a patient.

Nothing is dropped without a word: files outside a visit folder, files that are not
images or volumes (a note, a converter's JSON sidecar), folders inside a 2-D visit, and
hidden files and folders (``.DS_Store``) are skipped, counted and shown with their reason.
Visit folders named by dates written year last (``3-1-2019``, ``15_01_2019``,
``visit 15.01.2019``: any of ``/ . - _`` or a space between its parts, the whole name or a
part of it) are refused: they would sort by day or month, not in time.
"""

from __future__ import annotations

import os

from mami_jax.data import decode
from mami_jax.data.datasets.common import (BuildResult, Collector, DatasetLayoutError,
                                           is_image_name)
from mami_jax.data.manifest import MODALITIES, YEAR_LAST_DATE
from mami_jax.data.natural_order import natural_key

NAME = "folders"
MODALITY = None          # given by the user (--modality)
VOLUME_MODALITIES = ("ct", "mri")
LAYOUT = "ROOT/PATIENT/VISIT/IMAGE"


#: Why a hidden entry is no row (a Finder's .DS_Store, a notebook's .ipynb_checkpoints).
HIDDEN = "hidden (its name starts with '.')"


def _children(c: Collector, *parts: str) -> tuple[list[str], list[str]]:
    """(sub-folder names, file names) of the folder ``parts`` under the root in natural
    order; hidden ones are skipped, counted (``HIDDEN``)."""
    folder = c.path(*parts)
    names = []
    for n in sorted(os.listdir(folder), key=natural_key):
        if n.startswith("."):
            c.skip(os.path.join(*parts, n), HIDDEN)
        else:
            names.append(n)
    dirs = [n for n in names if os.path.isdir(os.path.join(folder, n))]
    return dirs, [n for n in names if n not in dirs]


def _is_slice(path: str) -> bool:
    """A file a slice folder reads: a picture or a DICOM file."""
    return is_image_name(path) or decode.is_dicom_file(path)


def _is_nifti(name: str) -> bool:
    low = name.lower()
    return low.endswith(".nii") or low.endswith(".nii.gz") or low.endswith(".hdr")


def _multi_frame(path: str) -> bool:
    """Whether ``path`` is a DICOM file of several frames (an enhanced CT or MR volume)."""
    if not decode.is_dicom_file(path):
        return False
    import pydicom
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return int(ds.get("NumberOfFrames", 1) or 1) > 1
    except Exception:  # noqa: BLE001 - unreadable: not taken as a volume, skipped as a slice
        return False


def _add_2d(c: Collector, patient: str, visit: str, order: int) -> None:
    folder = c.path(patient, visit)
    dirs, files = _children(c, patient, visit)
    for d in dirs:
        c.skip(os.path.join(patient, visit, d), "folder inside a 2-D visit folder")
    for f in files:
        rel = os.path.join(patient, visit, f)
        if not _is_slice(os.path.join(folder, f)):
            c.skip(rel, "not an image")
            continue
        c.add(local_id=rel, patient_id=patient, study_id=visit, order=str(order), view="",
              path=os.path.join(folder, f), source=rel)


def _add_volumes(c: Collector, patient: str, visit: str, order: int) -> None:
    folder = c.path(patient, visit)
    dirs, files = _children(c, patient, visit)
    slices = [f for f in files if not _is_nifti(f) and _is_slice(os.path.join(folder, f))]
    volumes = [f for f in files if _is_nifti(f)]
    rel_visit = os.path.join(patient, visit)
    # the visit folder is one series when it holds slices only; its first file tells a
    # folder of slices from one of enhanced (multi-frame) volumes without reading them all
    first_is_volume = bool(slices) and _multi_frame(os.path.join(folder, slices[0]))
    if slices and not dirs and not volumes and not first_is_volume:
        c.add(local_id=rel_visit, patient_id=patient, study_id=visit, order=str(order),
              view="", path=folder, source=rel_visit, folder=True)
        return
    volumes += [f for i, f in enumerate(slices)
                if (first_is_volume if i == 0 else _multi_frame(os.path.join(folder, f)))]
    pair_data = {f[:-4] + ".img" for f in volumes if f.lower().endswith(".hdr")}
    for f in files:
        rel = os.path.join(rel_visit, f)
        if f in pair_data:      # the voxels of an Analyze/NIfTI pair, read through its .hdr
            continue
        if f in volumes:
            view = f[:-7] if f.lower().endswith(".nii.gz") else os.path.splitext(f)[0]
            c.add(local_id=rel, patient_id=patient, study_id=visit, order=str(order),
                  view=view, path=os.path.join(folder, f), source=rel)
        else:
            c.skip(rel, "slice beside series folders or volumes" if f in slices else
                   "not an image or volume")
    for d in dirs:
        rel = os.path.join(rel_visit, d)
        c.add(local_id=rel, patient_id=patient, study_id=visit, order=str(order), view=d,
              path=os.path.join(folder, d), source=rel, folder=True)


def check_name(name: str) -> None:
    """DatasetLayoutError unless ``name`` can be the dataset column: a word without ':'
    (it joins the image id), '/' (it joins the patient id in the identity), '\\' or ','
    and without surrounding spaces (read back stripped, it would be another name)."""
    if not name or any(ch in name for ch in ":/\\,") or name != name.strip():
        raise DatasetLayoutError(f"--name {name!r}: a dataset name is a word without ':', "
                                 "'/', ',' or surrounding spaces")


def build(root: str, verify_files: bool = True, modality: str | None = None,
          name: str = NAME) -> BuildResult:
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"{root}: not a folder (layout {LAYOUT})")
    if modality not in MODALITIES:
        raise DatasetLayoutError(f"--dataset {NAME} needs --modality, one of "
                                 f"{', '.join(MODALITIES)} (got {modality!r})")
    check_name(name)
    c = Collector(name, modality, root, verify_files)
    patients, loose = _children(c)
    for f in loose:
        c.skip(f, f"file outside a patient folder (layout {LAYOUT})")
    if not patients:
        raise DatasetLayoutError(f"{c.root}: no patient folders (layout {LAYOUT})")
    add = _add_volumes if modality in VOLUME_MODALITIES else _add_2d
    for patient in patients:
        visits, files = _children(c, patient)
        for f in files:
            c.skip(os.path.join(patient, f), f"file outside a visit folder (layout {LAYOUT})")
        for order, visit in enumerate(visits):
            if YEAR_LAST_DATE.search(visit):     # the name, or a date in it (visit_15-01-2019)
                raise DatasetLayoutError(
                    f"{c.path(patient, visit)}: a visit folder named by a date written year "
                    "last sorts by day or month, not in time; rename the visit folders year "
                    "first (2019-03-01 or 20190301)")
            add(c, patient, visit, order)
    c.notes.append(f"modality {modality}, dataset name {name!r}, layout {LAYOUT}")
    return c.result()
