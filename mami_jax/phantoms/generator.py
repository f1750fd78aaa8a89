"""The embedded synthetic benchmark: longitudinal phantom patients in five modalities.

No real medical dataset can ship with the code, so this module generates a
small re-identification benchmark that the whole pipeline can run on with no
downloads::

    python -m mami_jax.phantoms --out DIR [--patients 100 --visits 4 --seed 0]
    python -m mami_jax.phantoms --preview FILE.png

It writes the images plus ``manifest.csv`` (the common manifest, dataset
"phantoms", paths relative to the manifest's folder), ``labels.csv`` (the
disease label of each image for the history-augmented diagnosis
application) and ``phantoms.json`` (the generation parameters).

Design (why it is honest and learnable):
- every patient has persistent anatomy drawn from the patient's own seed
  (``mami_jax/phantoms/<modality>.py`` lists the identity factors of each);
- every visit redraws pose, exposure/contrast/window, scanner style, noise
  and the disease, so global intensity statistics do not identify a patient:
  nearest neighbour on (mean, std, 32-bin histogram) has a low Rank-1 (and
  so does a linear metric learnt on them) while a structural descriptor (a
  standardised 16x16 thumbnail) has a high one, see
  ``benchmarks/phantom_baselines.py``;
- the labels' course depends on history (a Markov chain with persistence,
  ``mami_jax/phantoms/disease.py``) and stage 1 is often faint in the image,
  so earlier visits help diagnosis;
- identity cues are coarse spatial structure (organ shapes and positions,
  rib and vessel patterns, cortical folds, cell morphology) that survives
  downscaling to 64-96 px, and pose jitter is moderate (a few degrees, a few
  percent), so a small ViT can learn them.

Default size, and why: 100 patients x 4 visits at 128 px, CT and MRI series
of 16 slices. Each patient appears in 1-3 modalities (1: 10%, 2: 30%, 3:
60%; the least-used modalities of the patient's split first), which gives
250 series, about 50 patients per modality, and about 12 test patients (48
test queries) per modality after the patient-disjoint 60/10/30% split:
enough for Rank-1 figures that do not swing by a whole patient, and about
34 training patients per modality for a model to learn from. (60 patients
left only 7 test patients per modality.) Four visits give every test query
three same-patient images in its gallery. Generation is dominated by the CT
and MRI series (hence the worker processes and the progress bar) and takes
about 120 MB on disk.

Splits are assigned here by a stable hash of (patient_id, seed) (sha256, not
Python's salted ``hash``), because the general ``splits.assign_splits`` is
written elsewhere; the fractions are train 0.6 / val 0.1 / test 0.3.

Determinism: every patient, modality and visit draws from its own generator
keyed by (seed, patient index, modality, visit), so the same arguments give
byte-identical files, and adding patients or visits leaves the existing
ones unchanged.
"""

from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import json
import multiprocessing
import os

import numpy as np

from mami_jax.data.manifest import MODALITIES, ManifestRow, write_manifest
from mami_jax.phantoms import common, ct, disease, fundus, io, mri, pathology, xray
from mami_jax.runtime import atomic_files, strict_json
from mami_jax.runtime.interrupts import leave_stops_to_the_parent
from mami_jax.runtime.local_paths import refuse_url
from mami_jax.runtime.progress import progress_bar

#: Bump when the generated content changes, so stale caches are not reused.
#: 2: pathology identity with four nuclear sizes and clustering, milder cellularity;
#: 3: pathology tissue layout 1.5x larger relative to the nuclei (pathology.LAYOUT_SCALE);
#: 4: the CT header states the stored axes (L, P, I: ``io.ct_affine``); it claimed R, A, S,
#: so a header-reading pipeline showed every CT rotated 180 degrees, its slices reversed.
VERSION = 4
DATASET = "phantoms"
RENDERERS = {"xray": xray, "ct": ct, "mri": mri, "fundus": fundus, "pathology": pathology}
VIEWS = {"xray": "PA", "ct": "axial", "mri": "axial", "pathology": "HE"}
SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.1), ("test", 0.3))
MODALITY_COUNT_P = (0.1, 0.3, 0.6)   # P(1, 2 or 3 modalities per patient)
LABEL_COLUMNS = ("image_id", "patient_id", "modality", "order", "disease_stage", "disease_label")
DEFAULTS = dict(patients=100, visits=4, seed=0, image_size=128, slices=16, pathology_field=1.0)
#: The largest ``image_size``: the CT phantom renders fields of (size / 4) x (size / 2)^2
#: voxels, so memory grows with the cube of the size (a traceback of an allocation of
#: hundreds of TiB at 100000).
MAX_IMAGE_SIZE = 1024
MAX_SLICES = 1024

# spawn keys of the generators (see common.rng_for); modality keys are 1 + index in MODALITIES
_KEY_ASSIGN = 1_000_001
_KEY_DISEASE = 99


def patient_id(index: int) -> str:
    return f"P{index:04d}"


def assign_split(pid: str, seed: int) -> str:
    """Patient-level split from a stable hash of (patient_id, seed)."""
    digest = hashlib.sha256(f"{pid}:{seed}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    acc = 0.0
    for name, frac in SPLIT_FRACTIONS:
        acc += frac
        if u < acc:
            return name
    return SPLIT_FRACTIONS[-1][0]


def assign_modalities(patients: int, seed: int) -> list[tuple[str, ...]]:
    """Modalities of each patient: 1-3 of them, the least used first within the patient's split.

    Balancing within the split keeps the test patients spread evenly over
    the modalities (a plain random draw leaves some modality with a handful).
    Ties are broken at random. Sequential over patients, so patient i's
    modalities do not depend on how many patients follow.
    """
    rng = common.rng_for(seed, _KEY_ASSIGN)
    counts = {(s, m): 0 for s, _ in SPLIT_FRACTIONS for m in MODALITIES}
    out = []
    for index in range(patients):
        split = assign_split(patient_id(index), seed)
        k = int(rng.choice((1, 2, 3), p=MODALITY_COUNT_P))
        order = rng.permutation(len(MODALITIES))
        ranked = sorted(order, key=lambda i: counts[split, MODALITIES[i]])  # stable: ties stay random
        chosen = tuple(sorted((MODALITIES[i] for i in ranked[:k]), key=MODALITIES.index))
        for m in chosen:
            counts[split, m] += 1
        out.append(chosen)
    return out


def plan(patients: int, visits: int, seed: int) -> list[tuple[str, tuple[str, ...], list[int]]]:
    """(patient_id, modalities, disease stage per visit) of every patient, before any rendering."""
    modalities = assign_modalities(patients, seed)
    return [(patient_id(i), modalities[i], disease.disease_course(common.rng_for(seed, i, _KEY_DISEASE), visits))
            for i in range(patients)]


def _render_series(job):
    """Renders and writes every visit of one (patient, modality); returns manifest and label rows."""
    root, index, modality, course, seed, size, slices, field, stage1_visible, signs_visible = job
    pid = patient_id(index)
    mkey = 1 + MODALITIES.index(modality)
    module = RENDERERS[modality]
    anat = module.make_anatomy(common.rng_for(seed, index, mkey, 0), size)
    view = anat.eye if modality == "fundus" else VIEWS[modality]
    rows, labels = [], []
    for visit, stage in enumerate(course):
        data, quality = render_visit(modality, anat, common.rng_for(seed, index, mkey, visit + 1),
                                     stage, size, slices, field, stage1_visible, signs_visible)
        rel = io.relative_path(modality, pid, visit)
        io.write(modality, os.path.join(root, rel), data, jpeg_quality=quality)
        image_id = f"{pid}_{modality}_v{visit}"
        rows.append(ManifestRow(image_id=image_id, patient_id=pid, study_id=f"{modality}_v{visit}",
                                order=str(visit), modality=modality, dataset=DATASET, view=view,
                                path=rel, split=assign_split(pid, seed)))
        labels.append((image_id, pid, modality, str(visit), str(stage), str(int(stage > 0))))
    return rows, labels


def render_visit(modality: str, anat, rng, stage: int, size: int, slices: int, field: float,
                 stage1_visible: float | None = None, signs_visible: float | None = None):
    """(pixels, JPEG quality) of one visit; every per-visit draw comes from ``rng`` (the
    visit's generator), in this order: disease severity, the renderer's draws, quality."""
    module = RENDERERS[modality]
    sev = disease.severity(rng, stage, stage1_visible, signs_visible)
    if modality in ("ct", "mri"):
        data = module.render(anat, rng, sev, size, slices)
    elif modality == "pathology":
        data = module.render(anat, rng, sev, pathology_tile_size(size, field), field)
    else:
        data = module.render(anat, rng, sev, size)
    return data, int(rng.integers(80, 96))


def pathology_tile_size(image_size: int, field: float) -> int:
    """Side in pixels of a pathology tile: ``field`` standard fields at the magnification
    of an ``image_size`` tile (``pathology.render``)."""
    return int(round(image_size * field))


def _check_args(patients, visits, seed, image_size, slices, pathology_field=1.0,
                stage1_visible=None, signs_visible=None):
    for name, value, low in (("patients", patients, 1), ("visits", visits, 1), ("seed", seed, 0),
                             ("image_size", image_size, 16), ("slices", slices, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"phantoms: {name} must be an integer >= {low}, got {value!r}")
    if slices > MAX_SLICES:
        raise ValueError(f"phantoms: slices must be at most {MAX_SLICES} (a long CT series), "
                         f"got {slices}")
    if image_size > MAX_IMAGE_SIZE:
        raise ValueError(f"phantoms: image_size must be at most {MAX_IMAGE_SIZE}, got "
                         f"{image_size} (the CT phantom's memory grows with the cube of the "
                         "size: about 0.7 GB a worker at 512, eight times that at 1024)")
    if not isinstance(pathology_field, (int, float)) or not 0.25 <= pathology_field <= 4:
        raise ValueError(f"phantoms: pathology_field must be a number in [0.25, 4], got {pathology_field!r}")
    for name, p in (("stage1_visible", stage1_visible), ("signs_visible", signs_visible)):
        if p is not None and (not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise ValueError(f"phantoms: {name} must be a number in (0, 1], got {p!r}")
    if stage1_visible is not None and signs_visible is not None:
        raise ValueError("phantoms: give stage1_visible or signs_visible, not both "
                         "(signs_visible already makes stage 1 intermittent)")


def generate(out_dir: str, patients: int = DEFAULTS["patients"], visits: int = DEFAULTS["visits"],
             seed: int = DEFAULTS["seed"], image_size: int = DEFAULTS["image_size"],
             slices: int = DEFAULTS["slices"], workers: int | None = None,
             pathology_field: float = DEFAULTS["pathology_field"],
             stage1_visible: float | None = None, signs_visible: float | None = None,
             progress: bool = False) -> str:
    """Generates the benchmark into ``out_dir`` (absent or empty); returns the manifest path.

    ``stage1_visible`` (None: off): the share of stage-1 visits that show the disease, at
    stage-2 strength, the others not at all (``disease.severity``). ``signs_visible``
    (None: off): the same at every stage, the share of diseased visits that show their
    disease. Only the disease's pixels change, and ``phantoms.json`` records either.

    Pathology tiles are ``pathology_field`` times wider than ``image_size`` at the same
    magnification (``pathology_tile_size``): more nuclei per tile, a stronger identity
    statistic, without shrinking them below a few pixels.

    Everything is written into a temporary sibling folder
    (``runtime.atomic_files.staging_dir``) that is renamed to ``out_dir`` only when
    complete, so an interrupted run never leaves a partial benchmark at ``out_dir``;
    folders and files get the modes the user's umask asks for. An ``out_dir`` that is a
    symbolic link to an empty folder is filled through the link, and an empty mount point
    is filled in place (``_publish_target``; there the staging folder is a hidden one inside
    it, which a killed run leaves behind). ``workers`` processes
    render in parallel (default: up to 4, the CPU count); the output does not depend on it.
    Rendering takes a minute or more at the default sizes, so it shows a progress bar over
    the series (one per patient and modality) on stderr with ``progress`` (the command and
    the main job's first generation ask for it).
    """
    _check_args(patients, visits, seed, image_size, slices, pathology_field, stage1_visible,
                signs_visible)
    refuse_url(out_dir, "phantoms folder")
    pathology_field = float(pathology_field)
    out_dir = os.path.abspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"phantoms: output folder {out_dir} exists and is not empty")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"phantoms: output path {out_dir} exists and is not a folder")
    target, in_place = _publish_target(out_dir)
    with _staging(target, in_place) as tmp:
        patients_plan = plan(patients, visits, seed)
        jobs = [(tmp, index, modality, course, seed, image_size, slices, pathology_field,
                 stage1_visible, signs_visible)
                for index, (_, mods, course) in enumerate(patients_plan) for modality in mods]
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        with progress_bar(len(jobs), "phantoms", unit="series", disable=not progress) as bar:
            if workers > 1:
                # spawn, not fork: the caller may have started JAX's threads
                ctx = multiprocessing.get_context("spawn")
                pool = concurrent.futures.ProcessPoolExecutor(
                    workers, mp_context=ctx, initializer=leave_stops_to_the_parent)
                try:
                    results = list(_counted(pool.map(_render_series, jobs, chunksize=2), bar))
                finally:
                    # On Ctrl-C or an error, the series not begun are dropped, not rendered
                    # (``with`` would wait for all of them), and the workers are gone before
                    # the staging folder is removed.
                    pool.shutdown(wait=True, cancel_futures=True)
            else:
                results = list(_counted(map(_render_series, jobs), bar))
        rows = [r for rs, _ in results for r in rs]
        labels = [lab for _, ls in results for lab in ls]
        write_manifest(rows, os.path.join(tmp, "manifest.csv"))
        with open(os.path.join(tmp, "labels.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(LABEL_COLUMNS)
            writer.writerows(labels)
        params = dict(version=VERSION, patients=patients, visits=visits, seed=seed,
                      image_size=image_size, slices=slices, pathology_field=pathology_field)
        if stage1_visible is not None:
            params["stage1_visible"] = float(stage1_visible)
        if signs_visible is not None:
            params["signs_visible"] = float(signs_visible)
        with open(os.path.join(tmp, "phantoms.json"), "w") as f:
            f.write(strict_json.dumps(dict(
                params, images=len(rows),
                patients_per_modality={m: sum(m in ms for _, ms, _ in patients_plan)
                                       for m in MODALITIES}), indent=1, sort_keys=True))
        # Renderers and writers run in worker processes and libraries; whatever they
        # created, the published tree gets the umask's modes.
        atomic_files.finish_tree(tmp)
        if in_place:
            _move_in(tmp, target)
        else:
            _rename_into_place(tmp, target)
    return os.path.join(out_dir, "manifest.csv")


def _publish_target(out_dir: str) -> tuple[str, bool]:
    """(the folder the finished tree becomes, whether it is filled in place) for the absolute
    ``out_dir``, absent or an empty folder.

    A symbolic link is followed: renaming onto the link failed (``Not a directory``) after
    every series was rendered; the folder it points to is the one the user meant. A mount
    point cannot be removed or renamed onto (``Device or resource busy``), so it is filled
    in place: staged inside itself and the staged entries moved in (``_move_in``)."""
    target = os.path.realpath(out_dir) if os.path.islink(out_dir) else out_dir
    return target, os.path.ismount(target)


def _staging(target: str, in_place: bool):
    """The staging folder of ``target`` (``atomic_files.staging_dir``, removed on failure):
    beside it, or for a folder filled in place a hidden one inside it; on the target's file
    system either way, so every final rename is atomic."""
    return atomic_files.staging_dir(os.path.join(target, DATASET) if in_place else target)


def _rename_into_place(tmp: str, target: str) -> None:
    """Replaces the empty folder (or nothing) at ``target`` with the staged tree ``tmp``."""
    try:
        if os.path.isdir(target):
            os.rmdir(target)     # empty (checked before rendering); fails if someone filled it meanwhile
        os.rename(tmp, target)
    except OSError as e:
        if os.path.isdir(target) and os.listdir(target):
            raise FileExistsError(f"phantoms: {target} was filled by another process") from e
        raise


def _move_in(tmp: str, target: str) -> None:
    """Moves the staged tree ``tmp``, a folder inside ``target``, into ``target`` entry by
    entry, the manifest last, so a run stopped half-way leaves no manifest.csv (no folder
    that reads as a finished benchmark)."""
    if sorted(os.listdir(target)) != [os.path.basename(tmp)]:
        raise FileExistsError(f"phantoms: {target} was filled by another process")
    names = sorted(os.listdir(tmp), key=lambda n: (n == "manifest.csv", n))
    for name in names:
        os.rename(os.path.join(tmp, name), os.path.join(target, name))
    os.rmdir(tmp)
    atomic_files.sync_dir(target)


def _counted(results, bar):
    """``results`` as they arrive, each counted on the progress ``bar``."""
    for result in results:
        bar.update(1)
        yield result


def cache_key(patients, visits, seed, image_size, slices, pathology_field=1.0) -> str:
    """Folder name of a cached benchmark; the standard pathology field (1) adds nothing to it."""
    key = f"phantoms-v{VERSION}-p{patients}-v{visits}-s{seed}-i{image_size}-t{slices}"
    return key if float(pathology_field) == 1.0 else f"{key}-f{float(pathology_field):g}"


def ensure_phantoms(cache_dir: str, patients: int = DEFAULTS["patients"], visits: int = DEFAULTS["visits"],
                    seed: int = DEFAULTS["seed"], image_size: int = DEFAULTS["image_size"],
                    slices: int = DEFAULTS["slices"], workers: int | None = None,
                    pathology_field: float = DEFAULTS["pathology_field"]) -> str:
    """Returns the manifest of the cached benchmark, generating it on first use.

    The cache folder name holds the format version and every generation
    parameter; a folder only exists there once complete (see ``generate``),
    so an existing one is reused as is. Its ``phantoms.json`` is checked
    against the parameters to catch a hand-edited cache. A run that was
    killed leaves only a hidden ``.<key>.mami-tmp-*`` folder beside it, which is
    never mistaken for the cache; it is not deleted here because another
    process may still be writing it.
    """
    _check_args(patients, visits, seed, image_size, slices, pathology_field)
    refuse_url(cache_dir, "phantoms.cache_dir")
    pathology_field = float(pathology_field)
    target = os.path.join(os.path.abspath(cache_dir),
                          cache_key(patients, visits, seed, image_size, slices, pathology_field))
    manifest = os.path.join(target, "manifest.csv")
    if not os.path.isfile(manifest):
        try:
            generate(target, patients=patients, visits=visits, seed=seed, image_size=image_size,
                     slices=slices, workers=workers, pathology_field=pathology_field,
                     progress=True)
        except FileExistsError:
            if not os.path.isfile(manifest):   # someone else finished first: fine; anything else is not
                raise
    with open(os.path.join(target, "phantoms.json")) as f:
        meta = json.load(f)
    expected = dict(version=VERSION, patients=patients, visits=visits, seed=seed,
                    image_size=image_size, slices=slices, pathology_field=pathology_field)
    wrong = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        raise ValueError(f"phantoms: cache {target} does not match its parameters "
                         f"(found, expected): {wrong}; delete the folder to regenerate")
    return manifest
