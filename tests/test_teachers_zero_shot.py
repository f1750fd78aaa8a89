"""python -m mami_jax.evaluate.features scores stored teacher features with the trained
model's protocols, metrics and report files."""

import json
import os

import pytest

from mami_jax.config import base_config
from mami_jax.data import teacher_features as tf_files
from mami_jax.data.manifest import read_manifest
from mami_jax.evaluate import features as zero_shot
from mami_jax.evaluate.evaluator import group_indices, score_groups
from mami_jax.phantoms import generator
from teachers import extract


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("zs")
    manifest = generator.generate(str(root / "phantoms"), patients=12, visits=3, image_size=32,
                                  slices=2, workers=1)
    feats = str(root / "feats")
    extract.run(manifest, "anatomy,random_tiny", feats, split="test", show_progress=False)
    return manifest, feats


def test_scores_each_teacher_like_the_trained_model(setup, tmp_path, capsys):
    manifest, feats = setup
    out = str(tmp_path / "out")
    assert zero_shot.main(["--features", feats, "--manifest", manifest, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "| teacher |" in printed and "| anatomy |" in printed
    for teacher in ("anatomy", "random_tiny"):
        assert os.path.isfile(os.path.join(out, teacher, "metrics.json"))
        assert os.path.isfile(os.path.join(out, teacher, "cmc.png"))
    anatomy = json.load(open(os.path.join(out, "anatomy", "metrics.json")))
    rows = read_manifest(manifest)
    groups = group_indices(rows, "test")
    assert {g.rsplit("/", 1)[0] for g in anatomy} == set(groups)
    assert {g.rsplit("/", 1)[1] for g in anatomy} == {"reid", "history"}
    for group, m in anatomy.items():
        assert m["rank1"] == 1.0, group          # the hidden identity parameters are exact

    # the numbers are the evaluator's on the stored vectors
    stored = tf_files.load_features(feats)["random_tiny"].by_id()
    cfg = base_config().eval
    expected = score_groups({i: stored[rows[i].image_id] for m in groups.values() for i in m},
                            rows, groups, cfg)
    random_tiny = json.load(open(os.path.join(out, "random_tiny", "metrics.json")))
    for group, m in expected.items():
        assert random_tiny[group]["rank1"] == pytest.approx(float(m["rank1"]))
        assert random_tiny[group]["mAP"] == pytest.approx(float(m["mAP"]))
    summary = json.load(open(os.path.join(out, "zero_shot.json")))
    assert summary["anatomy"]["xray"] == {"rank1": 1.0, "mAP": 1.0}
    table = open(os.path.join(out, "zero_shot.md")).read()
    assert table.splitlines()[0].startswith("| teacher | xray | ct |")
    with open(os.path.join(out, "zero_shot.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"picture: {os.path.join(out, 'zero_shot.png')}" in printed


def test_the_picture_has_a_bar_per_teacher_and_covered_modality():
    from mami_jax.evaluate.zero_shot_figure import zero_shot_figure
    data = {"a": {"xray": {"rank1": 0.9, "mAP": 0.5}, "ct": {"rank1": 0.4, "mAP": 0.3}},
            "b": {"xray": {"rank1": 0.2, "mAP": 0.1}}}
    fig = zero_shot_figure(data)
    rank1, mean_ap = fig.axes[:2]
    assert [t.get_text() for t in rank1.get_xticklabels()] == ["xray", "ct"]
    for ax, metric in ((rank1, "rank1"), (mean_ap, "mAP")):
        bars = [(round(p.get_x() + p.get_width() / 2, 6), p.get_height()) for p in ax.patches]
        assert [h for _, h in bars] == pytest.approx(
            [data["a"]["xray"][metric], data["a"]["ct"][metric], data["b"]["xray"][metric]])
        assert bars[0][0] < 0 < bars[2][0] and bars[1][0] < 1     # a left, b right of xray


def test_partial_features_in_a_group_are_an_error(setup, tmp_path, capsys):
    manifest, feats = setup
    rows = read_manifest(manifest)
    victim = next(r for r in rows if r.split == "test" and r.modality == "xray")
    out = str(tmp_path / "partial")
    extract.run(manifest, "random_tiny", out, split="test", show_progress=False)
    # the same features without one image: rewrite its shard through the real writer
    from teachers import writer
    index = tf_files.read_index(out)
    shard = index["shards"][0]
    path = os.path.join(out, shard["file"])
    records = [(i, v) for _, i, v in tf_files.read_shard(path, {"random_tiny": 64})
               if i != victim.image_id]
    writer.write_shard(out, 0, 1, records, [])
    run = tf_files.read_json(os.path.join(out, tf_files.RUN_FILE))
    writer.write_index_if_complete(out, run)
    assert zero_shot.main(["--features", out, "--manifest", manifest,
                           "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: teacher random_tiny: 1 of ")
    assert "images of phantoms/xray have no stored feature" in err[0]
    assert victim.image_id in err[0]


def test_features_of_another_manifest_are_an_error(setup, tmp_path, capsys):
    manifest, feats = setup
    other = generator.generate(str(tmp_path / "other"), patients=2, visits=2, image_size=32,
                               slices=2, workers=1)
    assert zero_shot.main(["--features", feats, "--manifest", other, "--out",
                           str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image_id not in" in err[0] and "features-00000-of-00001" in err[0]
    for out in (feats, os.path.join(feats, "scores")):     # the input, or inside it
        assert zero_shot.main(["--features", feats, "--manifest", manifest, "--out", out]) == 1
        assert capsys.readouterr().err == (f"error: --out {out}: is or lies inside --features "
                                           f"{feats} (inputs are never modified)\n")
    assert zero_shot.main(["--features", feats, "--manifest", manifest, "--out", manifest]) == 1
    assert capsys.readouterr().err == f"error: --out {manifest}: is a file, not a folder\n"


def test_a_split_that_cannot_be_scored_is_one_error_line_naming_the_flag(setup, tmp_path,
                                                                         capsys):
    manifest, feats = setup
    assert zero_shot.main(["--features", feats, "--manifest", manifest, "--split", "nope",
                           "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err == (
        f"error: {manifest}: no rows in split 'nope' to evaluate (the rows' splits: test 15, train 75, "
        "val 9): give some patients split 'nope', or evaluate another split (--split)\n")
    assert not (tmp_path / "o").exists()


def test_an_out_holding_other_files_is_refused_and_its_own_is_written_again(setup, tmp_path,
                                                                            capsys):
    """Before: the scores were written into whatever folder --out named, beside its files."""
    manifest, feats = setup
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert zero_shot.main(["--features", feats, "--manifest", manifest, "--out", str(out),
                           "--teachers", "anatomy"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: --out {out}: holds files this command did not write (notes.txt); give a new "
        "or empty folder")
    assert os.listdir(out) == ["notes.txt"]
    (out / "notes.txt").unlink()
    (out / "anatomy").mkdir()          # what a run stopped before its summary leaves
    for _ in range(2):                 # that, and a finished run, are written again
        assert zero_shot.main(["--features", feats, "--manifest", manifest, "--out", str(out),
                               "--teachers", "anatomy"]) == 0
    assert sorted(os.listdir(out)) == ["anatomy", "zero_shot.json", "zero_shot.md",
                                       "zero_shot.png"]


def test_a_group_without_any_feature_of_a_modality_the_teacher_reads_is_an_error(
        setup, tmp_path, capsys):
    """Features extracted for a manifest without its MRI scored a manifest with them:
    the MRI group was left out of the tables without a word. A teacher that does not read
    a modality still leaves its groups out."""
    from mami_jax.data.manifest import write_manifest
    from mami_jax.evaluate.features import teacher_groups
    manifest, _ = setup
    rows = read_manifest(manifest)
    small = str(tmp_path / "no_mri.csv")
    write_manifest([r for r in rows if r.modality != "mri"], small)
    out = str(tmp_path / "feats")
    extract.run(small, "random_tiny", out, split="test", show_progress=False)
    assert zero_shot.main(["--features", out, "--manifest", manifest,
                           "--out", str(tmp_path / "o")]) == 1
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("error: teacher random_tiny: none of the ") and \
        "images of phantoms/mri has a stored feature, though it applies to mri" in err
    groups = {"d/xray": [0], "d/mri": [1]}
    two = [rows[0], next(r for r in rows if r.modality == "mri")]
    assert teacher_groups("t", {two[0].image_id: 1}, two, groups, ("xray",)) == {"d/xray": [0]}


def test_two_datasets_of_one_modality_keep_a_column_each():
    """The table, JSON and figure had one cell per modality: the second X-ray dataset's
    numbers replaced the first's."""
    results = {"a": {"dsA/xray/reid": {"rank1": 0.9, "mAP": 0.8},
                     "dsA/xray/history": {"rank1": 0.1, "mAP": 0.1},
                     "dsB/xray/reid": {"rank1": 0.2, "mAP": 0.15},
                     "dsA/ct/reid": {"rank1": 0.5, "mAP": 0.4}},
               "b": {"dsB/xray/reid": {"rank1": 0.3, "mAP": 0.25}}}
    table, data = zero_shot.summary(results)
    assert data == {"a": {"dsA/xray": {"rank1": 0.9, "mAP": 0.8},
                          "dsB/xray": {"rank1": 0.2, "mAP": 0.15},
                          "ct": {"rank1": 0.5, "mAP": 0.4}},
                    "b": {"dsB/xray": {"rank1": 0.3, "mAP": 0.25}}}
    assert table.splitlines()[0] == "| teacher | dsA/xray | dsB/xray | ct |"
    assert table.splitlines()[3] == "| b | - | 0.300 / 0.250 | - |"
    from mami_jax.evaluate.zero_shot_figure import zero_shot_figure
    fig = zero_shot_figure(data)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["dsA/xray", "dsB/xray", "ct"]
    assert sorted(p.get_height() for p in fig.axes[0].patches) == [0.2, 0.3, 0.5, 0.9]


def test_a_teacher_whose_groups_cannot_be_scored_is_said_and_the_others_scored(
        tmp_path, monkeypatch, capsys):
    """A teacher of CT only, on a CT group where no patient has two studies (the X-ray
    group is evaluable, so the split check passes): its empty report stopped the whole
    command with an internal message, the X-ray teacher's numbers unwritten."""
    import numpy as np

    from mami_jax.data.manifest import ManifestRow

    def row(p, s, modality):
        return ManifestRow(f"{p}_{s}_{modality}", p, s, s[-1], modality, "d", "",
                           f"{p}/{s}.png", "test")
    rows = [row("a", "s1", "xray"), row("a", "s2", "xray"), row("b", "s1", "xray"),
            row("b", "s2", "xray"), row("a", "s1", "ct"), row("b", "s1", "ct")]
    vectors = {r.image_id: np.eye(4, dtype=np.float32)[i % 4] for i, r in enumerate(rows)}

    class Stored:
        def __init__(self, modality):
            self.ids = [r.image_id for r in rows if r.modality == modality]
            self.info = {"modalities": [modality], "feature_dim": 4}

        def by_id(self):
            return {i: vectors[i] for i in self.ids}
    monkeypatch.setattr(zero_shot, "load_features",
                        lambda *a, **k: {"xray_only": Stored("xray"), "ct_only": Stored("ct")})
    results = zero_shot.score_teachers("feats", rows, base_config().eval, str(tmp_path),
                                       print_tables=False)
    assert sorted(results) == ["xray_only"]
    assert sorted(results["xray_only"]) == ["d/xray/history", "d/xray/reid"]
    assert ("teacher ct_only: no group of split 'test' it covers has a query with a true "
            "match, not scored") in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "xray_only" / "metrics.json")
    assert not os.path.exists(tmp_path / "ct_only")
