"""Teacher features joined to training batches by image id: values, applicability masks,
missing features (an error with counts, or a counted skip), and the extraction hook."""

import os

import numpy as np
import pytest

from configs.all import get_config as all_config
from mami_jax.data import teacher_join
from mami_jax.data.image_signature import file_stamp
from mami_jax.data.manifest import read_manifest
from mami_jax.data.teacher_features import read_index
from mami_jax.data.pipeline import make_train_loader
from mami_jax.phantoms import generator
from teachers import writer

DIMS = {"anatomy": 4, "xray_only": 3}
MODALITIES = {"anatomy": ["xray", "ct", "mri", "fundus", "pathology"], "xray_only": ["xray"]}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "phantoms"
    return generator.generate(str(out), patients=4, visits=2, image_size=32, slices=2, workers=1)


def _vector(image_id, name):
    seed = sum(map(ord, image_id + name))
    return np.random.default_rng(seed).normal(size=DIMS[name]).astype(np.float32)


def _store(out, rows, drop=(), stamps=True):
    """A feature folder as teachers.extract writes it, with known vectors; ``drop`` lists
    (image_id, teacher) pairs left out; ``stamps``: with the files' stamps (as extraction
    keeps them), or as a store written before they were kept."""
    run = writer.header(manifest=dict(file="manifest.csv", sha256="0", rows=len(rows)),
                        split=None, rows_per_shard=len(rows), num_shards=1,
                        teachers={n: dict(feature_dim=d, modalities=MODALITIES[n])
                                  for n, d in DIMS.items()})
    os.makedirs(out)
    writer.ensure_run(out, run)
    records = []
    for r in rows:
        feats = {n: _vector(r.image_id, n) for n in DIMS
                 if r.modality in MODALITIES[n] and (r.image_id, n) not in drop}
        if feats:
            records.append((r.image_id, feats))
    path = {r.image_id: r.path for r in rows}
    writer.write_shard(out, 0, 1, records, [],
                       {i: file_stamp(path[i]) for i, _ in records} if stamps else None)
    writer.write_index_if_complete(out, run)
    return out


def _tf_cfg(skip_missing=False, teachers=tuple(DIMS)):
    cfg = all_config("runlocal,align")
    t = cfg.data.teacher_features
    t.teachers, t.dims, t.skip_missing = teachers, dict(DIMS), skip_missing
    return cfg


def test_join_gives_each_rows_features_and_applicability(manifest, tmp_path):
    rows = read_manifest(manifest)
    cfg = _tf_cfg()
    table = teacher_join.load_table(rows, cfg.data.teacher_features, _store(str(tmp_path / "f"), rows))
    xray = next(i for i, r in enumerate(rows) if r.modality == "xray")
    ct = next(i for i, r in enumerate(rows) if r.modality == "ct")
    out = table.join([ct, xray, -1])
    np.testing.assert_array_equal(out["teacher"]["anatomy"][0], _vector(rows[ct].image_id, "anatomy"))
    np.testing.assert_array_equal(out["teacher"]["anatomy"][1], _vector(rows[xray].image_id, "anatomy"))
    np.testing.assert_array_equal(out["teacher"]["xray_only"][1],
                                  _vector(rows[xray].image_id, "xray_only"))
    assert out["teacher_mask"]["anatomy"].tolist() == [True, True, False]
    assert out["teacher_mask"]["xray_only"].tolist() == [False, True, False]
    assert not out["teacher"]["xray_only"][[0, 2]].any()
    assert out["teacher"]["anatomy"].dtype == np.float32


def test_training_batches_carry_the_joined_fields(manifest, tmp_path):
    rows = read_manifest(manifest)
    cfg = _tf_cfg()
    table = teacher_join.load_table(rows, cfg.data.teacher_features, _store(str(tmp_path / "f"), rows))
    cfg.data.patients_per_batch, cfg.data.images_per_patient = 2, 2
    cfg.data.decode_cache_mb = 0
    loader = make_train_loader(rows, cfg.data, seed=0, teachers=table)
    it = iter(loader)
    for _ in range(3):
        batch = next(it)
        for k, i in enumerate(batch["index"]):
            applies = rows[i].modality in MODALITIES["xray_only"]
            assert batch["teacher_mask"]["xray_only"][k] == applies
            np.testing.assert_array_equal(batch["teacher"]["anatomy"][k],
                                          _vector(rows[i].image_id, "anatomy"))
    assert "xray_only" in loader.summary()


def test_missing_feature_is_an_error_with_counts_or_a_counted_skip(manifest, tmp_path):
    rows = read_manifest(manifest)
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split != "train"]
    drop = {(train[0].image_id, "anatomy"), (train[1].image_id, "anatomy"),
            (test[0].image_id, "anatomy")}       # a test image lacking a feature is fine
    xray_train = next(r for r in train if r.modality == "xray")
    drop.add((xray_train.image_id, "xray_only"))
    folder = _store(str(tmp_path / "f"), rows, drop)
    with pytest.raises(teacher_join.TeacherJoinError) as e:
        teacher_join.load_table(rows, _tf_cfg().data.teacher_features, folder)
    msg = str(e.value)
    assert "anatomy: 2 (e.g. [" in msg and "xray_only: 1 (e.g. [" in msg
    assert train[0].image_id in msg and xray_train.image_id in msg
    assert "skip_missing=True" in msg and folder in msg
    table = teacher_join.load_table(rows, _tf_cfg(skip_missing=True).data.teacher_features, folder)
    assert table.missing == {"anatomy": 2, "xray_only": 1}
    idx = [rows.index(train[0]), rows.index(xray_train)]
    out = table.join(idx)
    assert out["teacher_mask"]["anatomy"].tolist() == [False, xray_train is not train[0]]
    assert out["teacher_mask"]["xray_only"].tolist() == [False, False]
    assert "2 training images masked out" in table.summary()


def test_store_must_hold_the_configured_teachers_and_sizes(manifest, tmp_path):
    rows = read_manifest(manifest)
    folder = _store(str(tmp_path / "f"), rows)
    cfg = _tf_cfg()
    cfg.data.teacher_features.dims.anatomy = 5
    with pytest.raises(teacher_join.TeacherJoinError,
                       match=r"dims.anatomy=5, but .* stores 4-d features"):
        teacher_join.load_table(rows, cfg.data.teacher_features, folder)
    cfg = _tf_cfg(teachers=("anatomy", "uni"))
    cfg.data.teacher_features.dims.uni = 1024
    with pytest.raises(teacher_join.TeacherJoinError, match=r"teacher 'uni' was not extracted"):
        teacher_join.load_table(rows, cfg.data.teacher_features, folder)


def test_prepare_extracts_into_the_workdir_in_a_subprocess(manifest, tmp_path, capsys):
    """The "align" quick start's path: no index.json in WORKDIR/teachers -> python -m
    teachers.extract runs (in a subprocess), then the features are joined. Its progress
    bar reaches the terminal (both of its streams were captured: minutes of nothing)."""
    rows = read_manifest(manifest)
    cfg = all_config("runlocal,align")
    cfg.data.teacher_features.teachers = ("anatomy",)
    cfg.data.teacher_features.dims = {"anatomy": 256}
    cfg.data.modalities.ct.value_window = (-1000, 1000)    # the teachers read as the run
    workdir = str(tmp_path / "wd")
    table = teacher_join.prepare(cfg, workdir, rows, manifest)
    assert "teachers shard 0/1" in capsys.readouterr().err
    assert table.directory == os.path.join(workdir, "teachers")
    index = read_index(os.path.join(workdir, "teachers"))
    assert index["value_windows"] == {"ct": [-1000.0, 1000.0]}
    out = table.join(np.arange(len(rows)))
    assert out["teacher_mask"]["anatomy"].all() and out["teacher"]["anatomy"].shape == (len(rows), 256)
    assert np.abs(out["teacher"]["anatomy"]).sum(axis=1).min() > 0
    # a second run finds the index and does not extract again
    stamp = os.stat(os.path.join(workdir, "teachers", "index.json")).st_mtime_ns
    teacher_join.prepare(cfg, workdir, rows, manifest)
    assert os.stat(os.path.join(workdir, "teachers", "index.json")).st_mtime_ns == stamp
    # no alignment configured: nothing is read
    assert teacher_join.prepare(all_config("runlocal"), workdir, rows, manifest) is None


def test_failed_extraction_names_the_folder_and_the_reason(tmp_path):
    cfg = all_config("runlocal,align")
    with pytest.raises(teacher_join.TeacherJoinError,
                       match=r"teacher extraction into .*teachers failed: error: .*nope.csv"):
        teacher_join.prepare(cfg, str(tmp_path), [], str(tmp_path / "nope.csv"))


def test_features_read_through_other_windows_are_used_with_a_warning(manifest, tmp_path,
                                                                      monkeypatch):
    """A store extracted with min-max for a run that windows CT: the join goes on, and one
    warning names the modality, both readings and the flag that extracts them again."""
    rows = read_manifest(manifest)
    folder = _store(str(tmp_path / "f"), rows)
    cfg = _tf_cfg()
    cfg.data.teacher_features.dir = folder
    warned = []
    monkeypatch.setattr(teacher_join.logging, "warning", lambda f, *a: warned.append(f % a))
    assert teacher_join.prepare(cfg, str(tmp_path / "wd"), rows, manifest) is not None
    assert warned == []                                   # both read by min-max
    cfg.data.modalities.ct.value_window = (-1000, 1000)
    teacher_join.prepare(cfg, str(tmp_path / "wd"), rows, manifest)
    assert warned == [f"{folder}: the teachers read ct by min-max, this run reads ct by "
                      "window (-1000.0, 1000.0) (data.modalities.<m>.value_window): the "
                      "student would align to features of pixels it does not see; extract "
                      "again with --value-window ct=-1000.0,1000.0"]
    # the modalities a teacher does not apply to, or the run does not read, do not count
    index = {"teachers": {"xray_only": {"modalities": ["xray"]}}, "value_windows": {}}
    assert teacher_join.other_reading(index, ["xray_only"], {"xray", "ct"},
                                      {"ct": (-1000.0, 1000.0)}, folder) is None
    index["teachers"]["all"] = {"modalities": ["xray", "ct", "mri"]}
    assert teacher_join.other_reading(index, ["all"], {"xray"},
                                      {"ct": (-1000.0, 1000.0)}, folder) is None
    # CT-FM reads CT through its own window, the anatomy teacher no pixels: extracting
    # them again gives the same features, which the warning asked for
    index["teachers"]["ct_fm"] = {"modalities": ["ct"], "preprocessing": {
        "input": "volume", "value_window": [-1024.0, 2048.0]}}
    index["teachers"]["anatomy"] = {"modalities": ["ct"], "preprocessing": {"input": "none"}}
    assert teacher_join.other_reading(index, ["ct_fm", "anatomy"], {"ct"},
                                      {"ct": (-1000.0, 1000.0)}, folder) is None
    index["teachers"]["ct_plain"] = {"modalities": ["ct"], "preprocessing": {"input": "image"}}
    assert "the teachers read ct by min-max" in teacher_join.other_reading(
        index, ["ct_fm", "ct_plain"], {"ct"}, {"ct": (-1000.0, 1000.0)}, folder)


def test_features_of_images_rewritten_under_the_same_ids_are_refused(manifest, tmp_path, caplog):
    """Phantoms regenerated with another seed keep their ids: the old features were joined
    to the new images without a word. The files' stamps kept at extraction tell them apart;
    check_files=False trusts the ids, and a store without stamps is joined with a line
    saying it is unchecked. A dataset moved elsewhere keeps its stamps."""
    import shutil
    rows = [r for r in read_manifest(manifest) if r.split == "train"]
    copy = tmp_path / "data"
    shutil.copytree(os.path.dirname(manifest), copy,
                    copy_function=shutil.copy2)                 # moved: dates kept
    moved = read_manifest(str(copy / "manifest.csv"))
    moved = [r for r in moved if r.split == "train"]
    folder = _store(str(tmp_path / "f"), rows)
    cfg = _tf_cfg().data.teacher_features
    teacher_join.load_table(moved, cfg, folder)                 # same files elsewhere: fine
    victim = next(r for r in moved if os.path.isfile(r.path))
    with open(victim.path, "ab") as f:
        f.write(b"\0")                                          # rewritten: size differs
    with pytest.raises(teacher_join.TeacherJoinError,
                       match=rf"the features of 1 images were extracted from other files .*"
                             rf"{victim.image_id}.*check_files=False"):
        teacher_join.load_table(moved, cfg, folder)
    cfg.check_files = False
    teacher_join.load_table(moved, cfg, folder)
    cfg.check_files = True
    old = _store(str(tmp_path / "old"), rows, stamps=False)
    with caplog.at_level("WARNING"):
        teacher_join.load_table(moved, cfg, old)
    assert f"{len(rows)} of {len(rows)} joined images have no file stamp" in caplog.text
