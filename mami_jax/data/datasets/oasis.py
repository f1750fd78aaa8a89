"""OASIS brain MRI (Open Access Series of Imaging Studies: OASIS-1, OASIS-2, OASIS-3).

Get it: https://sites.wustl.edu/oasisbrains/ (OASIS-1/2 tarballs freely; OASIS-3
through NITRC/XNAT after accepting the data use terms).

Layouts expected under ``root`` (any depth; subject and session are in folder names)::

    OASIS-1   disc1/OAS1_0001_MR1/RAW/OAS1_0001_MR1_mpr-1_anon.img (+ .hdr)
    OASIS-2   OAS2_RAW_PART1/OAS2_0001_MR2/RAW/mpr-1.nifti.img (+ .hdr)
    OASIS-3   OAS30001_MR_d0129/anat2/NIFTI/sub-OAS30001_ses-d0129_run-01_T1w.nii.gz
              or BIDS: sub-OAS30001/ses-d0129/anat/sub-OAS30001_ses-d0129_T1w.nii.gz

One row per raw scan volume (.nii, .nii.gz, or an .img with its .hdr). For
OASIS-3 only anatomical scans (files under an anat*/ folder) are read. For
OASIS-1/2 only RAW/ is read; PROCESSED/ and FSL_SEG/ hold images derived from the
same raw scans (same acquisition: they would be trivial matches) and are reported
as skipped, as are OASIS-3's BIDS derivatives (a derivatives/ folder, or desc-/space-
entities in the name).

Mapping: patient = subject (OAS1_0001, OAS2_0001, OAS30001); study = session (MR1,
MR2, d0129); order = session number, or days since entry for OASIS-3 (both in time
order); view = scan name (mpr-1, T1w, run-01_T1w, FLAIR, ...); modality mri.
OASIS-1 MR2 sessions are reliability rescans a few days after MR1.
"""

from __future__ import annotations

import os
import re

from mami_jax.data.datasets.common import (BuildResult, Collector, DatasetLayoutError, require_root,
                                           walk)

NAME = "oasis"
MODALITY = "mri"

_SESSION_12 = re.compile(r"^(OAS[12]_\d{4})_MR(\d+)$")
_SESSION_3 = re.compile(r"^(OAS3\d{4})_MR_d(\d+)$")
_BIDS = re.compile(r"^sub-(OAS3\d{4})_ses-d(\d+)_(.+)$")
_VOLUME = re.compile(r"\.(nii|nii\.gz|img)$", re.IGNORECASE)
_DERIVED = {"PROCESSED", "FSL_SEG"}
#: BIDS entities only a derived image carries (a brain mask, a registered copy).
_BIDS_DERIVED = re.compile(r"(^|_)(desc|space)-")


def _volume_stem(name: str) -> str:
    return _VOLUME.sub("", name)


def _add(c: Collector, root: str, path: str, subject: str, session: str, order: int, view: str) -> None:
    src = os.path.relpath(path, root)
    stem = os.path.splitext(path)[0]
    if path.lower().endswith(".img") and not any(os.path.isfile(stem + h) for h in (".hdr", ".HDR")):
        c.skip(src, "Analyze/NIfTI pair without its .hdr header")
        return
    c.add(local_id=f"{subject}/{session}/{view}", patient_id=subject, study_id=session,
          order=str(order), view=view, path=path, source=src)


def build(root: str, verify_files: bool = True) -> BuildResult:
    require_root(root)
    c = Collector(NAME, MODALITY, root, verify_files)
    for d, dirs, files in walk(root):
        dirs.sort()
        parts = os.path.relpath(d, root).split(os.sep)
        vols = sorted(f for f in files if _VOLUME.search(f) and not f.startswith("."))
        if not vols:
            continue
        # Nearest enclosing session folder (OASIS-1/2 or OASIS-3 style).
        session = None
        for i in range(len(parts) - 1, -1, -1):
            m12, m3 = _SESSION_12.match(parts[i]), _SESSION_3.match(parts[i])
            if m12 or m3:
                session = (i, m12, m3)
                break
        for f in vols:
            path = os.path.join(d, f)
            stem = _volume_stem(f)
            bids = _BIDS.match(stem)
            if session is None and bids is None:
                c.skip(os.path.relpath(path, root), "no OASIS session folder or sub-/ses- file name")
                continue
            if session is not None and session[1] is not None:
                i, m, _ = session
                inner = parts[i + 1:]
                if any(p in _DERIVED for p in inner):
                    c.skip(os.path.relpath(path, root), "derived image (PROCESSED/FSL_SEG); raw scans are used")
                    continue
                if "RAW" not in inner:
                    c.skip(os.path.relpath(path, root), "not under the session's RAW/ folder")
                    continue
                subject, n = m.group(1), int(m.group(2))
                view = stem
                prefix = f"{subject}_MR{n}_"
                if view.startswith(prefix):
                    view = view[len(prefix):]
                view = re.sub(r"(_anon)?(\.nifti)?$", "", view, flags=re.IGNORECASE)
                _add(c, root, path, subject, f"MR{n}", n, view)
            elif "derivatives" in parts or _BIDS_DERIVED.search(stem):
                c.skip(os.path.relpath(path, root), "OASIS-3 derived image (BIDS derivatives/, "
                                                    "desc-/space- names); raw scans are used")
            elif not any(p.lower().startswith("anat") for p in parts):
                c.skip(os.path.relpath(path, root), "OASIS-3 file outside an anat*/ folder "
                                                    "(functional/diffusion scans are not used)")
            elif bids is not None:
                _add(c, root, path, bids.group(1), f"d{int(bids.group(2)):04d}", int(bids.group(2)),
                     bids.group(3))
            else:
                i, _, m = session
                subject, n = m.group(1), int(m.group(2))
                _add(c, root, path, subject, f"d{n:04d}", n, stem)
    if c.found_nothing():
        raise DatasetLayoutError(f"{root}: no OASIS volumes (.nii, .nii.gz, .img) found")
    return c.result()
