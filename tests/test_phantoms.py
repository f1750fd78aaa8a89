"""Tests of the synthetic benchmark (mami_jax.phantoms.generator and its renderers).

Tiny sizes throughout (32-64 px, 2-4 slices) so the file runs in seconds.
"""

import csv
import errno
import hashlib
import json
import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mami_jax.phantoms import generator as phantoms
from mami_jax.data.manifest import MODALITIES, read_manifest
from benchmarks import phantom_baseline_features as baselines  # noqa: I001
from mami_jax.data import nifti_slices
from mami_jax.phantoms import common, disease, io, preview
from mami_jax.phantoms.__main__ import main as phantoms_cli
from mami_jax.runtime import atomic_files
from tests.file_trees import tree_digest

TINY = dict(patients=6, visits=2, seed=3, image_size=32, slices=2, workers=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return phantoms.generate(str(tmp_path_factory.mktemp("tiny") / "ph"), **TINY)


# ---------------------------------------------------------------- determinism

def test_same_arguments_same_bytes(tiny, tmp_path):
    again = phantoms.generate(str(tmp_path / "again"), **TINY)
    a, b = tree_digest(os.path.dirname(tiny)), tree_digest(os.path.dirname(again))
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    assert len(a) > 20


def test_worker_count_does_not_change_output(tiny, tmp_path):
    par = phantoms.generate(str(tmp_path / "par"), **dict(TINY, workers=2))
    a, b = tree_digest(os.path.dirname(tiny)), tree_digest(os.path.dirname(par))
    assert a == b


def test_other_seed_other_images(tiny, tmp_path):
    other = phantoms.generate(str(tmp_path / "other"), **dict(TINY, seed=4))
    a, b = tree_digest(os.path.dirname(tiny)), tree_digest(os.path.dirname(other))
    images = [k for k in a if k in b and not k.endswith((".csv", ".json"))]
    assert sum(a[k] != b[k] for k in images) == len(images)
    assert a["manifest.csv"] != b["manifest.csv"]


def test_more_patients_and_visits_keep_existing_ones(tiny, tmp_path):
    bigger = phantoms.generate(str(tmp_path / "big"), **dict(TINY, patients=8, visits=3))
    a, b = tree_digest(os.path.dirname(tiny)), tree_digest(os.path.dirname(bigger))
    images = [k for k in a if not k.endswith((".csv", ".json"))]
    assert images and all(a[k] == b[k] for k in images)


# ---------------------------------------------------------------- manifest and files

def test_manifest_files_decode_to_stated_shapes(tiny):
    rows = read_manifest(tiny)
    s, t = TINY["image_size"], TINY["slices"]
    assert {r.dataset for r in rows} == {"phantoms"}
    seen = set()
    for r in rows:
        assert os.path.exists(r.path), r.path
        seen.add(r.modality)
        if r.modality == "xray":
            with Image.open(r.path) as im:
                assert im.format == "PNG" and im.mode == "I;16" and im.size == (s, s)
        elif r.modality in ("fundus", "pathology"):
            with Image.open(r.path) as im:
                assert im.format == ("JPEG" if r.modality == "fundus" else "PNG")
                assert im.mode == "RGB" and im.size == (s, s)
            assert r.view in (("left", "right") if r.modality == "fundus" else ("HE",))
        elif r.modality == "ct":
            img = nib.load(r.path)
            assert img.shape == (s, s, t) and img.get_data_dtype() == np.int16
            spacing = -np.diag(img.affine)[:3]      # the stored axes run along -R, -A, -S
            assert np.all(spacing > 0) and spacing[0] == spacing[1]
            hu = np.asarray(img.dataobj)
            assert hu.min() >= -1024 and hu.max() > 0      # air and tissue in Hounsfield units
        elif r.modality == "mri":
            names = sorted(os.listdir(r.path))
            assert names == [f"slice_{k:03d}.png" for k in range(t)]
            for n in names:
                with Image.open(os.path.join(r.path, n)) as im:
                    assert im.mode == "L" and im.size == (s, s)
    assert seen == set(MODALITIES)
    # every image of a patient is in its own study, ordered by visit
    for r in rows:
        assert r.study_id == f"{r.modality}_v{r.order}" and r.image_id.startswith(r.patient_id)


def test_io_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    cases = {
        "xray": rng.integers(0, 65536, (8, 8)).astype(np.uint16),
        "pathology": rng.integers(0, 256, (8, 8, 3)).astype(np.uint8),
        "mri": rng.integers(0, 256, (3, 8, 8)).astype(np.uint8),
        "ct": (rng.integers(-1024, 3000, (3, 8, 8)).astype(np.int16), (5.0, 0.7, 0.7)),
    }
    for modality, data in cases.items():
        path = str(tmp_path / f"x{io.EXTENSIONS[modality]}")
        io.write(modality, path, data)
        back = io.read_raw(modality, path)
        expected = data[0] if modality == "ct" else data
        assert back.dtype == expected.dtype and np.array_equal(back, expected), modality
    assert np.allclose(np.diag(nib.load(str(tmp_path / "x.nii.gz")).affine)[:3], (-0.7, -0.7, -5.0))
    with pytest.raises(TypeError, match="uint16"):
        io.write("xray", str(tmp_path / "bad.png"), np.zeros((4, 4), np.uint8))


def test_ct_header_states_the_stored_axes_so_the_pipeline_shows_it_upright(tiny):
    """The affine claimed R, A, S for axes that ct.py draws toward the patient's left,
    posterior and inferior: the pipeline's reader (nifti_slices.read_slices, which
    reorients by the header) showed every phantom CT rotated 180 degrees, the table above
    the patient, and its slices reversed."""
    cts = [r for r in read_manifest(tiny) if r.modality == "ct"]
    assert cts
    for r in cts:
        img = nib.load(r.path)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "I")
        assert nib.aff2axcodes(img.get_qform()) == ("L", "P", "I")
        s, t = TINY["image_size"], TINY["slices"]
        assert np.allclose(img.affine @ [(s - 1) / 2, (s - 1) / 2, (t - 1) / 2, 1], [0, 0, 0, 1],
                           atol=1e-3)       # the centre at the origin (float32 in the file)
        n, shown = nifti_slices.read_slices(r.path, None)
        shown = shown[..., 0].astype(np.float64)
        # slices inferior to superior; in the plane, the picture the renderer drew
        assert n == t and np.array_equal(shown, io.read_raw("ct", r.path)[::-1])
        # the table under the patient's back (ct.py), the only thing outside the body at the
        # image's side edges, is in the bottom quarter: nothing bright in the top one
        w = shown.shape[2] // 8
        edges = np.concatenate([shown[:, :, :w], shown[:, :, -w:]], axis=2).mean(axis=(0, 2))
        quarter = len(edges) // 4
        assert edges[-quarter:].max() > edges[:quarter].max() + 100, (r.image_id, edges.round())


def test_mri_slices_past_999_read_back_in_order(tmp_path):
    """read_raw sorted the slice names as text: slice_1000 came before slice_101."""
    k = np.arange(1002)
    series = np.stack([k // 256, k % 256], axis=1).astype(np.uint8)[:, None, :]   # (T, 1, 2)
    io.write("mri", str(tmp_path / "v0"), series)
    assert {"slice_999.png", "slice_1000.png", "slice_1001.png"} <= set(os.listdir(tmp_path / "v0"))
    assert np.array_equal(io.read_raw("mri", str(tmp_path / "v0")), series)


def test_labels_cover_every_image_and_follow_the_plan(tiny):
    rows = read_manifest(tiny)
    with open(os.path.join(os.path.dirname(tiny), "labels.csv")) as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == phantoms.LABEL_COLUMNS
        labels = {r["image_id"]: r for r in reader}
    assert set(labels) == {r.image_id for r in rows}
    plan = {pid: (mods, course) for pid, mods, course in
            phantoms.plan(TINY["patients"], TINY["visits"], TINY["seed"])}
    for r in rows:
        mods, course = plan[r.patient_id]
        assert r.modality in mods
        lab = labels[r.image_id]
        assert int(lab["disease_stage"]) == course[int(r.order)]
        assert int(lab["disease_label"]) == int(course[int(r.order)] > 0)
    meta = json.load(open(os.path.join(os.path.dirname(tiny), "phantoms.json")))
    assert meta["images"] == len(rows) and meta["version"] == phantoms.VERSION


# ---------------------------------------------------------------- splits and modalities

def test_split_is_patient_disjoint_and_a_stable_hash(tiny):
    rows = read_manifest(tiny)   # read_manifest itself rejects a patient in two splits
    for r in rows:
        u = int.from_bytes(hashlib.sha256(f"{r.patient_id}:{TINY['seed']}".encode()).digest()[:8], "big") / 2 ** 64
        assert r.split == ("train" if u < 0.6 else "val" if u < 0.7 else "test")
    splits = [phantoms.assign_split(f"P{i:04d}", 0) for i in range(5000)]
    for name, frac in phantoms.SPLIT_FRACTIONS:
        assert abs(splits.count(name) / 5000 - frac) < 0.025


def test_modalities_balanced_within_each_split_and_prefix_stable():
    mods = phantoms.assign_modalities(100, 0)
    assert all(1 <= len(m) <= 3 and len(set(m)) == len(m) for m in mods)
    for split, _ in phantoms.SPLIT_FRACTIONS:
        counts = [sum(m in mods[i] for i in range(100)
                      if phantoms.assign_split(phantoms.patient_id(i), 0) == split) for m in MODALITIES]
        assert max(counts) - min(counts) <= 1, (split, counts)
    assert phantoms.assign_modalities(40, 0) == mods[:40]
    # the default benchmark: about 50 patients and 12 test patients per modality
    assert sum("ct" in m for m in mods) >= 45


# ---------------------------------------------------------------- disease course

def test_disease_course_rules():
    for p in range(300):
        course = disease.disease_course(common.rng_for(0, p, 99), 6)
        assert all(0 <= s <= 3 for s in course)
        assert all(abs(b - a) <= 1 for a, b in zip(course, course[1:]))
    assert disease.severity(np.random.default_rng(0), 0) == 0.0
    sev = [disease.severity(np.random.default_rng(i), 2) for i in range(50)]
    assert min(sev) >= 1.0 and max(sev) <= 2.0


def test_intermittent_stage1_shows_at_stage2_strength_or_not_at_all():
    sev = np.asarray([disease.severity(np.random.default_rng(i), 1, 0.3) for i in range(2000)])
    visible = sev > 0
    assert 0.27 < visible.mean() < 0.33
    assert sev[visible].min() >= 1.0 and sev[visible].max() < 2.0
    # one draw either way: the renderer's draws that follow are the same
    for i in range(20):
        a, b = np.random.default_rng(i), np.random.default_rng(i)
        disease.severity(a, 1)
        disease.severity(b, 1, 0.3)
        assert a.uniform() == b.uniform()
    # other stages are untouched
    for stage in (0, 2, 3):
        assert disease.severity(np.random.default_rng(5), stage, 0.3) == \
            disease.severity(np.random.default_rng(5), stage)


def test_signs_visible_hides_every_stage_or_shows_its_strength():
    for stage, low in ((1, 1.0), (2, 1.0), (3, 2.0)):
        sev = np.asarray([disease.severity(np.random.default_rng(i), stage, signs_visible=0.4)
                          for i in range(2000)])
        visible = sev > 0
        assert 0.37 < visible.mean() < 0.43, stage
        assert sev[visible].min() >= low and sev[visible].max() < low + 1.0
        # one draw either way
        a, b = np.random.default_rng(stage), np.random.default_rng(stage)
        disease.severity(a, stage)
        disease.severity(b, stage, signs_visible=0.4)
        assert a.uniform() == b.uniform()
    assert disease.severity(np.random.default_rng(0), 0, signs_visible=0.4) == 0.0


def _visibility_variant(tiny, tmp_path, **setting):
    """(manifest of the tiny phantoms generated again with one visibility ``setting``, the
    tiny set's stage per image id); the setting is recorded in phantoms.json."""
    other = phantoms.generate(str(tmp_path / "variant"), **dict(TINY, **setting))
    with open(os.path.join(os.path.dirname(other), "phantoms.json")) as f:
        recorded = json.load(f)
    assert all(recorded[k] == v for k, v in setting.items())
    with open(os.path.join(os.path.dirname(tiny), "labels.csv")) as f:
        stage = {r["image_id"]: int(r["disease_stage"]) for r in csv.DictReader(f)}
    return other, stage


def test_signs_visible_changes_only_diseased_images_and_is_recorded(tiny, tmp_path):
    other, stage = _visibility_variant(tiny, tmp_path, signs_visible=0.5)
    rows = read_manifest(tiny)
    same = read_manifest(other)
    assert [r.image_id for r in rows] == [r.image_id for r in same]

    def content(path):         # a file, or a series folder of slices
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return f.read()
        return tree_digest(path)
    changed = {r.image_id for r, o in zip(rows, same) if content(r.path) != content(o.path)}
    assert changed and all(stage[i] > 0 for i in changed)
    with pytest.raises(ValueError, match="stage1_visible or signs_visible, not both"):
        phantoms.generate(str(tmp_path / "both"), **dict(TINY, signs_visible=0.5,
                                                        stage1_visible=0.5))


def test_stage1_visible_changes_only_stage1_images_and_is_recorded(tiny, tmp_path):
    other, stage = _visibility_variant(tiny, tmp_path, stage1_visible=0.5)
    a, b = tree_digest(os.path.dirname(tiny)), tree_digest(os.path.dirname(other))
    assert sorted(a) == sorted(b)
    rows = {r.image_id: r for r in read_manifest(tiny)}
    paths = {os.path.relpath(r.path, os.path.dirname(tiny)): i for i, r in rows.items()}

    def image_of(name):        # a file, or a slice inside a series folder
        return next((i for p, i in paths.items() if name == p or name.startswith(p + os.sep)),
                    None)
    differ = [k for k in a if a[k] != b[k]]
    changed = {image_of(k) for k in differ} - {None}
    assert changed and all(stage[i] == 1 for i in changed)
    assert [k for k in differ if image_of(k) is None] == ["phantoms.json"]


def test_history_predicts_the_label_better_than_the_marginal():
    """On generated plans: label(v) = label(v-1) beats always answering the majority label."""
    pairs, labels = [], []
    for _, _, course in phantoms.plan(600, 4, seed=0):
        lab = [int(s > 0) for s in course]
        labels += lab[1:]
        pairs += list(zip(lab[:-1], lab[1:]))
    prev = np.array(pairs)
    acc_history = np.mean(prev[:, 0] == prev[:, 1])
    majority = max(np.mean(labels), 1 - np.mean(labels))
    assert acc_history > majority + 0.2, (acc_history, majority)
    # persistence: once diseased, nearly always still diseased at the next visit
    sick = prev[prev[:, 0] == 1]
    assert np.mean(sick[:, 1]) > 0.9


# ---------------------------------------------------------------- baselines

def test_rank1_hand_worked_example():
    # patients A, A, B, B, C on a line; A's two images share a study, so A's
    # query has no positive left in its gallery and is skipped
    feats = np.array([[0.0], [0.1], [1.0], [1.05], [0.5]])
    pats = ["A", "A", "B", "B", "C"]
    studies = ["A/1", "A/1", "B/1", "B/2", "C/1"]
    r1, used, skipped = baselines.rank1(feats, pats, studies)
    assert (used, skipped) == (2, 3)       # only B's two images are queries
    assert r1 == 1.0
    # ties go to the first gallery item. A at 0, B at 1, A at -1:
    # query 0 sees B and A both at distance 1 and picks B (index 1): miss;
    # query 2's nearest is A at index 0: hit; B has no positive: skipped.
    r1, used, skipped = baselines.rank1(np.array([[0.0], [1.0], [-1.0]]), ["A", "B", "A"], ["1", "2", "3"])
    assert (r1, used, skipped) == (0.5, 2, 1)


def test_intensity_features_by_hand():
    img = np.array([[0.0, 0.0], [1.0, 0.5]])
    f = baselines.intensity_features(img, "xray")
    assert f[0] == pytest.approx(0.375) and f[1] == pytest.approx(np.std([0, 0, 1, 0.5]))
    hist = f[2:]
    assert hist.shape == (32,) and hist[0] == 0.5 and hist[16] == 0.25 and hist[31] == 0.25


def test_identity_is_in_the_structure_not_the_intensity(tmp_path):
    """Small set (8-10 patients per modality, 3 visits): a structural NN finds the patient,
    an intensity-statistics NN mostly does not (chance is about 0.08 here)."""
    manifest = phantoms.generate(str(tmp_path / "id"), patients=16, visits=3, seed=0, image_size=128,
                                 slices=4, workers=1)
    res = baselines.evaluate_manifest(manifest, split="all")
    assert set(res) == set(MODALITIES)
    gaps, intens = [], []
    for m, r in res.items():
        intensity = max(r["intensity_z"], r["intensity_raw"])
        assert r["structural"] >= intensity + 0.15, (m, r)
        assert r["structural"] >= 0.45, (m, r)
        assert r["intensity_z"] <= 0.35, (m, r)
        gaps.append(r["structural"] - intensity)
        intens.append(r["intensity_z"])
    assert np.mean(gaps) >= 0.4 and np.mean(intens) <= 0.2, res


# ---------------------------------------------------------------- cache and atomicity

def test_ensure_reuses_the_cache(tmp_path, monkeypatch):
    kw = dict(patients=3, visits=2, seed=1, image_size=32, slices=2, workers=1)
    first = phantoms.ensure_phantoms(str(tmp_path), **kw)
    assert os.path.basename(os.path.dirname(first)) == phantoms.cache_key(3, 2, 1, 32, 2)
    stamp = os.stat(first).st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("regenerated a finished cache")
    monkeypatch.setattr(phantoms, "generate", boom)
    assert phantoms.ensure_phantoms(str(tmp_path), **kw) == first
    assert os.stat(first).st_mtime_ns == stamp
    with pytest.raises(AssertionError, match="regenerated"):   # other parameters: another cache
        phantoms.ensure_phantoms(str(tmp_path), **dict(kw, seed=2))


def test_ensure_rejects_a_cache_that_does_not_match(tmp_path):
    kw = dict(patients=2, visits=1, seed=0, image_size=32, slices=1, workers=1)
    manifest = phantoms.ensure_phantoms(str(tmp_path), **kw)
    meta_path = os.path.join(os.path.dirname(manifest), "phantoms.json")
    meta = json.load(open(meta_path))
    meta["seed"] = 9
    json.dump(meta, open(meta_path, "w"))
    with pytest.raises(ValueError, match="does not match"):
        phantoms.ensure_phantoms(str(tmp_path), **kw)


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = phantoms.RENDERERS["mri"].render

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("disk on fire")
        return real(*a, **k)
    monkeypatch.setattr(phantoms.RENDERERS["mri"], "render", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        phantoms.ensure_phantoms(str(tmp_path), patients=6, visits=2, seed=0, image_size=32, slices=2,
                                 workers=1)
    assert os.listdir(tmp_path) == []      # no half cache, no temporary folder
    monkeypatch.setattr(phantoms.RENDERERS["mri"], "render", real)
    # a killed run's leftover temporary folder does not count as a cache and is not in the way
    key = phantoms.cache_key(6, 2, 0, 32, 2)
    os.makedirs(tmp_path / f".{key}{atomic_files.TEMP_MARK}killed" / "mri")
    manifest = phantoms.ensure_phantoms(str(tmp_path), patients=6, visits=2, seed=0, image_size=32, slices=2,
                                        workers=1)
    assert os.path.dirname(manifest) == str(tmp_path / key)
    assert len(read_manifest(manifest)) > 0


def test_generate_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        phantoms.generate(str(tmp_path / "full"), patients=1, visits=1, image_size=32, slices=1, workers=1)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="visits"):
        phantoms.generate(str(tmp_path / "x"), patients=1, visits=0)


SMALL = dict(patients=1, visits=1, image_size=16, slices=1, workers=1)


def test_out_may_be_a_link_to_an_empty_folder(tmp_path):
    """Everything was rendered, then the rename onto the link failed (Errno 20) and the work
    was thrown away; the folder the link points to is filled, the link kept."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    manifest = phantoms.generate(str(tmp_path / "link"), **SMALL)
    assert manifest == str(tmp_path / "link" / "manifest.csv")
    assert (tmp_path / "link").is_symlink() and os.path.isfile(tmp_path / "real" / "manifest.csv")
    assert len(read_manifest(manifest)) > 0
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]       # no staging folder left


def test_out_may_be_an_empty_mount_point(tmp_path, monkeypatch):
    """A mount point can be neither removed nor renamed onto (Errno 16, as simulated here:
    a real one needs root); it is filled in place, its manifest last."""
    mount = str(tmp_path / "mnt")
    os.mkdir(mount)
    real_ismount, real_rmdir, real_rename = os.path.ismount, os.rmdir, os.rename
    renamed = []

    def busy(path):
        if os.path.abspath(path) == mount:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)

    def rename(src, dst, *a, **k):
        busy(dst)
        real_rename(src, dst, *a, **k)
        renamed.append(os.path.relpath(dst, mount))
    monkeypatch.setattr(os.path, "ismount", lambda p: os.path.abspath(p) == mount or real_ismount(p))
    monkeypatch.setattr(os, "rmdir", lambda p, *a, **k: busy(p) or real_rmdir(p, *a, **k))
    monkeypatch.setattr(os, "rename", rename)
    manifest = phantoms.generate(mount, **SMALL)
    assert manifest == os.path.join(mount, "manifest.csv") and len(read_manifest(manifest)) > 0
    assert not [n for n in os.listdir(mount) if n.startswith(".")]   # the staging folder is gone
    assert renamed[-1] == "manifest.csv"


# ---------------------------------------------------------------- preview

def _preview(path, **kw):
    """The preview at ``path`` as an RGB array, drawn with small settings and ``kw``."""
    preview.write_preview(str(path), **dict(dict(rows=1, visits=1, image_size=16, slices=1,
                                                 workers=1), **kw))
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_preview_shrinks_a_pathology_tile_of_another_field_to_its_cell(tmp_path):
    """--pathology-field 2 pasted the top-left quarter of each tile, which spilled over the
    next row's caption."""
    size, field = 32, 2.0
    picture = _preview(tmp_path / "f2.png", rows=2, image_size=size, pathology_field=field)
    # the first patient with pathology, rendered again (the plan is prefix-stable)
    first = next(i for i, mods in enumerate(phantoms.assign_modalities(20, 0)) if "pathology" in mods)
    manifest = phantoms.generate(str(tmp_path / "ph"), **dict(SMALL, patients=first + 1,
                                                                image_size=size,
                                                                pathology_field=field))
    tile = io.read_raw("pathology", os.path.join(os.path.dirname(manifest), io.relative_path(
        "pathology", phantoms.patient_id(first), 0)))
    assert tile.shape == (2 * size, 2 * size, 3)
    cell_h = size + preview.CAPTION_H
    top = MODALITIES.index("pathology") * 2 * cell_h
    cols = slice(preview.LABEL_W, preview.LABEL_W + size)
    cell = picture[top + preview.CAPTION_H: top + cell_h, cols]
    assert np.array_equal(cell, np.asarray(Image.fromarray(tile).resize((size, size), Image.BOX)))
    caption = picture[top + cell_h: top + cell_h + preview.CAPTION_H, cols].astype(int)
    assert (caption == 255).mean() > 0.5                         # white behind the black text
    assert np.array_equal(caption[..., 0], caption[..., 1]) and np.array_equal(caption[..., 0],
                                                                               caption[..., 2])


def test_preview_draws_every_modality(tmp_path, capsys):
    """With --seed 4 --preview-rows 1 the five patients it generated had no CT: the grid
    left the modality out without a word."""
    assert "ct" not in {m for _, ms, _ in phantoms.plan(5, 1, 4) for m in ms}
    picture = _preview(tmp_path / "s4.png", seed=4)
    assert picture.shape[0] == len(MODALITIES) * (16 + preview.CAPTION_H)
    assert capsys.readouterr().err == ""
    assert preview.patients_for(1, 4) == (7, [])         # the fewest that hold every modality


def test_preview_warns_of_a_modality_it_cannot_fill(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preview, "MAX_PATIENTS_PER_ROW", 1)
    have = phantoms.assign_modalities(1, 4)[0]
    short = [m for m in MODALITIES if m not in have]
    picture = _preview(tmp_path / "short.png", seed=4)
    assert picture.shape[0] == len(have) * (16 + preview.CAPTION_H)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: --preview: among the first 1 patients (seed 4) too few have "
                   f"{', '.join(short)} to fill 1 row(s) each; the grid shows those there are"]


# ---------------------------------------------------------------- command line

def test_cli_out_and_preview(tmp_path, capsys):
    assert phantoms_cli(["--out", str(tmp_path / "cli"), "--patients", "2", "--visits", "1",
                         "--image-size", "32", "--slices", "1", "--workers", "1"]) == 0
    assert os.path.exists(tmp_path / "cli" / "manifest.csv")
    assert capsys.readouterr().out == f"wrote {tmp_path / 'cli' / 'manifest.csv'}\n"
    png = tmp_path / "prev.png"
    assert phantoms_cli(["--preview", str(png), "--preview-rows", "1", "--visits", "2",
                         "--image-size", "32", "--slices", "2", "--workers", "1"]) == 0
    from mami_jax.phantoms import preview
    with Image.open(png) as im:
        assert im.width == preview.LABEL_W + 2 * 32
        assert im.height == len(MODALITIES) * (32 + preview.CAPTION_H)
    with pytest.raises(SystemExit):
        phantoms_cli([])


def test_the_preview_draws_the_benchmark_its_flags_make(tmp_path, capsys):
    """--signs-visible, --stage1-visible and --pathology-field were left out of the preview
    (a picture byte-equal to the plain one); a flag the chosen output never reads is a
    usage error."""
    common = ["--preview-rows", "1", "--visits", "2", "--image-size", "32", "--slices", "1",
              "--workers", "1"]
    pictures = {}
    for name, extra in (("plain", []), ("field", ["--pathology-field", "3"]),
                        ("signs", ["--signs-visible", "0.2"])):
        png = tmp_path / f"{name}.png"
        assert phantoms_cli(["--preview", str(png), *common, *extra]) == 0
        pictures[name] = np.asarray(Image.open(png).convert("RGB"), np.int16)
    assert np.abs(pictures["field"] - pictures["plain"]).max() > 0
    assert np.abs(pictures["signs"] - pictures["plain"]).max() > 0
    capsys.readouterr()
    for argv, message in (
            (["--preview", str(tmp_path / "p.png"), "--patients", "50"],
             "--patients is for --out; the preview draws --preview-rows patients per modality"),
            (["--out", str(tmp_path / "o"), "--preview-rows", "2"],
             "--preview-rows is for --preview")):
        with pytest.raises(SystemExit) as e:
            phantoms_cli(argv)
        assert e.value.code == 2
        assert capsys.readouterr().err.splitlines() == [
            f"error: python -m mami_jax.phantoms: {message} (see --help)"]


def _cli_error(capsys, argv):
    """Runs the CLI expecting a failure; returns its one stderr line."""
    assert phantoms_cli(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_cli_bad_input_is_one_error_line(tmp_path, capsys):
    small = ["--patients", "1", "--visits", "1", "--image-size", "32", "--slices", "1", "--workers", "1"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    line = _cli_error(capsys, ["--out", str(tmp_path / "full")] + small)
    assert line == f"error: phantoms: output folder {tmp_path / 'full'} exists and is not empty"
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    (tmp_path / "afile").write_text("x")
    line = _cli_error(capsys, ["--out", str(tmp_path / "afile")] + small)
    assert line == f"error: phantoms: output path {tmp_path / 'afile'} exists and is not a folder"
    for flag in ("--patients", "--visits", "--slices", "--workers", "--image-size"):
        with pytest.raises(SystemExit) as e:      # a count below 1: a usage error, status 2
            phantoms_cli(["--out", str(tmp_path / "new"), flag, "0"])
        assert e.value.code == 2
        assert capsys.readouterr().err == (f"error: python -m mami_jax.phantoms: argument "
                                           f"{flag}: expected a whole number >= 1, got 0 (see "
                                           "--help)\n")
    line = _cli_error(capsys, ["--out", str(tmp_path / "new"), "--pathology-field", "9"])
    assert "pathology_field must be a number in [0.25, 4], got 9.0" in line
    line = _cli_error(capsys, ["--out", str(tmp_path / "new"), "--stage1-visible", "0"])
    assert line == "error: phantoms: stage1_visible must be a number in (0, 1], got 0.0"
    line = _cli_error(capsys, ["--out", str(tmp_path / "new"), "--signs-visible", "1.5"])
    assert line == "error: phantoms: signs_visible must be a number in (0, 1], got 1.5"
    assert not os.path.exists(tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["afile", "full"]   # no temporary left behind


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_generated_tree_gets_the_umask_permissions(tmp_path, umask, file_mode, dir_mode):
    # mkdtemp made the folder 0700 and the manifest's temporary file 0600; the umask rules.
    old = os.umask(umask)
    try:
        manifest = phantoms.generate(str(tmp_path / "ph"), patients=2, visits=1, seed=0, image_size=32,
                                     slices=1, workers=1)
    finally:
        os.umask(old)
    root = os.path.dirname(manifest)
    modes = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(here, name)
            modes[os.path.relpath(path, root)] = (os.path.isdir(path), os.stat(path).st_mode & 0o777)
    assert os.stat(root).st_mode & 0o777 == dir_mode
    assert {"manifest.csv", "labels.csv", "phantoms.json"} <= set(modes)
    assert len(modes) > 5
    wrong = {k: oct(m) for k, (is_dir, m) in modes.items() if m != (dir_mode if is_dir else file_mode)}
    assert wrong == {}
