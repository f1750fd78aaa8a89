"""``python -m mami_jax.apps.history`` end to end on a tiny model and phantoms: index,
query (earlier images only, a picture), add (same model only), train and eval
(metrics.json), and one ``error:`` line for bad input."""

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("faiss")

from mami_jax.apps.history.__main__ import main  # noqa: E402
from mami_jax.apps.history.archive import Archive  # noqa: E402
from mami_jax.data.manifest import order_key, read_manifest  # noqa: E402
from tests import history_workdir as hw  # noqa: E402

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return hw.tiny_setup(tmp_path_factory.mktemp("history"))


def _err(capsys):
    """The error lines of stderr (the rest is progress bars)."""
    return [line for line in capsys.readouterr().err.splitlines() if "error" in line]


def test_index_query_add(setup, capsys, tmp_path, monkeypatch):
    s = setup
    index = str(tmp_path / "index")
    # The missing-image check and the embedding chunks' key share one stat pass (on a
    # bucket each is a request per file): each image gets its signature once, and the only
    # other question is the decoder's own when it reads it (the check asked ``exists``).
    from mami_jax.data import image_signature
    asked, exists = [], []
    real, real_exists = image_signature.path_signature, os.path.exists
    monkeypatch.setattr(image_signature, "path_signature", lambda p: asked.append(p) or real(p))
    monkeypatch.setattr(os.path, "exists", lambda p: exists.append(p) or real_exists(p))
    assert main(["index", "--workdir", s["run"], "--config", s["config"], "--manifest",
                 s["first"], "--out", index, "--app-config", s["app"]]) == 0
    monkeypatch.undo()
    paths = sorted(r.path for r in read_manifest(s["first"]))
    assert sorted(asked) == paths
    assert sorted(p for p in exists if p in set(paths)) == paths
    out = capsys.readouterr().out
    assert "flat index, 32-d" in out and "xray: accept above" in out
    archive = Archive.load(index)
    assert len(archive) == len(read_manifest(s["first"]))
    assert set(archive.calibration) == {"xray"}

    # Adding the last visits: another model refused; the same model; a repeat refused.
    before = sorted(os.listdir(index))
    assert main(["add", "--index", index, "--manifest", s["last"], "--workdir", s["other"],
                 "--config", s["config"]]) == 1
    (line,) = _err(capsys)
    assert line.startswith("error: adding ") and "made by another model" in line
    assert sorted(os.listdir(index)) == before
    capsys.readouterr()
    assert main(["add", "--index", index, "--manifest", s["last"]]) == 0
    assert len(Archive.load(index)) == len(read_manifest(s["manifest"]))
    added = len(read_manifest(s["last"]))
    assert (f"warning: the thresholds (and visit scores' impostor statistics) stay those index "
            f"calibrated on {len(read_manifest(s['first']))} images; with {added} more"
            ) in capsys.readouterr().err
    assert main(["add", "--index", index, "--manifest", s["last"]]) == 1
    (line,) = _err(capsys)
    assert line.startswith("error: ") and "already in" in line

    # Query an archived last-visit image: only earlier images of other studies come back.
    rows = read_manifest(s["manifest"])
    q = next(r for r in rows if r.order == "2")
    png = str(tmp_path / "q.png")
    assert main(["query", "--index", index, "--image", q.path, "--k", "4", "--png", png,
                 "--app-config", s["app"]]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[3] for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(listed) == 4
    by_id = {r.image_id: r for r in rows}
    for image_id in listed:
        c = by_id[image_id]
        assert c.modality == "xray" and order_key(c.order) < order_key(q.order)
        assert c.study_key != q.study_key
    assert all(w in out for w in ("accept above", "picture:"))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # indexed by visits (the default): the archive's thresholds are on visit scores, and an
    # X-ray-only visit has no other image to add
    assert {c["method"] for c in Archive.load(index).calibration.values()} == {"topk-visits"}
    assert "scored by visit, no other image of it" in out
    assert main(["query", "--index", index, "--image", q.path, "--with", f"ct={q.path}",
                 "--app-config", s["app"], "--png", png]) == 1
    (line,) = _err(capsys)
    assert line == ("error: --with ct=" + q.path + ": the archive holds this image as xray, "
                    "not ct")

    # A new image (the main use: not archived), here a copy of the last-visit image under
    # another path: it failed before embedding ("empty required column 'patient_id'").
    # Newer than the archive (no --order), its original comes first; with its order, only
    # earlier archived images come back, its own patient's first.
    new = str(tmp_path / "new_xray.png")
    shutil.copy(q.path, new)
    for order, first_listed in (([], q.image_id), (["--order", q.order], None)):
        assert main(["query", "--index", index, "--image", new, "--modality", "xray", "--k",
                     "4", "--png", png, "--app-config", s["app"]] + order) == 0
        listed = [line.split()[3] for line in capsys.readouterr().out.splitlines()
                  if line[:4].strip().isdigit()]
        assert len(listed) == 4
        if first_listed:
            assert listed[0] == first_listed
        else:
            assert all(order_key(by_id[i].order) < order_key(q.order) for i in listed)
            assert by_id[listed[0]].patient_key == q.patient_key

    # A first-visit image has no history of its own patient; its candidates are other
    # patients' images, whatever their visit (orders are visits within a patient).
    first = next(r for r in rows if r.order == "0")
    assert main(["query", "--index", index, "--image", first.path, "--png", png,
                 "--app-config", s["app"]]) == 0
    listed = [line.split()[3] for line in capsys.readouterr().out.splitlines()
              if line.strip()[:1].isdigit()]
    others = {r.image_id for r in rows if r.patient_key != first.patient_key}
    assert listed and set(listed) <= others


def test_a_run_is_read_with_the_config_it_stored(setup, capsys, tmp_path):
    """Without ``--config`` the run is read with its own RUN/config.json: the archive is
    the one the named config file gives; a run without one is told to name it."""
    s = setup
    archives = {}
    for name, extra in (("named", ["--config", s["config"]]), ("own", [])):
        index = str(tmp_path / name)
        assert main(["index", "--workdir", s["run"], "--manifest", s["first"], "--out", index,
                     "--app-config", s["app"]] + extra) == 0
        archives[name] = Archive.load(index)
    assert archives["own"].model["config"] == os.path.join(s["run"], "config.json")
    assert archives["own"].calibration == archives["named"].calibration
    for modality, centre in archives["named"].centers.items():
        np.testing.assert_array_equal(archives["own"].centers[modality], centre)
    old = str(tmp_path / "old_run")
    shutil.copytree(s["run"], old)
    os.remove(os.path.join(old, "config.json"))
    capsys.readouterr()
    assert main(["index", "--model", old, "--manifest", s["first"], "--out",
                 str(tmp_path / "x"), "--app-config", s["app"]]) == 1
    assert _err(capsys) == [f"error: {old}: the run has no config.json (it was trained before "
                            "runs kept their config); name the experiment config it was "
                            "trained with: --config FILE[:ARG]"]
    assert not os.path.exists(tmp_path / "x")


def test_images_of_a_modality_the_run_left_out_are_counted(setup, capsys, tmp_path):
    """A run trained on some modalities (``data.only_modalities``) archives only those
    (index and add), and says how many images of the others it left out."""
    import csv
    s = setup

    def with_fundus(source, out):
        with open(source, newline="") as f:
            rows = list(csv.DictReader(f))
        extra = [dict(r, image_id=r["image_id"] + "_f", modality="fundus") for r in rows[:2]]
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows + extra)
        return rows

    manifest, later = tmp_path / "mixed.csv", tmp_path / "mixed_later.csv"
    rows, later_rows = with_fundus(s["first"], manifest), with_fundus(s["last"], later)
    xray_only = hw.run_config_of_modalities(s["run"], str(tmp_path / "xray_only.json"), ("xray",))
    capsys.readouterr()
    index = str(tmp_path / "index")
    assert main(["index", "--workdir", s["run"], "--config", xray_only, "--manifest",
                 str(manifest), "--out", index, "--app-config", s["app"]]) == 0
    assert (f"  2 images of fundus in {manifest} left out: the run was trained on xray only "
            "(data.only_modalities)") in capsys.readouterr().out.splitlines()
    assert len(Archive.load(index)) == len(rows)
    assert main(["add", "--index", index, "--manifest", str(later)]) == 0     # as index reads
    assert (f"  2 images of fundus in {later} left out: the run was trained on xray only "
            "(data.only_modalities)") in capsys.readouterr().out.splitlines()
    assert len(Archive.load(index)) == len(rows) + len(later_rows)


def test_a_released_file_is_the_archives_model(setup, capsys, tmp_path):
    """``--workdir`` may name the published weights: an archive indexed with the run's
    exported .pth (given under the flag's other name, ``--model``) takes images embedded
    by the run itself (the same parameters), and a path that is no model is one error
    line naming the flag."""
    pytest.importorskip("torch")
    from mami_jax.convert.checkpoint_dir import load_params
    from mami_jax.convert.official import export_official
    s = setup
    pth = str(tmp_path / "released.pth")
    export_official(pth, *load_params(s["run"]), allow_non_released_shift=True)
    index = str(tmp_path / "index")
    assert main(["index", "--model", pth, "--config", s["config"], "--manifest", s["first"],
                 "--out", index, "--app-config", s["app"]]) == 0
    assert Archive.load(index).model["source"] == os.path.abspath(pth)
    assert main(["add", "--index", index, "--manifest", s["last"], "--workdir", s["run"],
                 "--config", s["config"]]) == 0
    assert len(Archive.load(index)) == len(read_manifest(s["manifest"]))
    capsys.readouterr()
    missing = str(tmp_path / "nowhere.pth")
    assert main(["index", "--workdir", missing, "--config", s["config"], "--manifest",
                 s["first"], "--out", str(tmp_path / "i2")]) == 1
    (line,) = _err(capsys)
    assert line.startswith(f"error: --workdir '{missing}': no re-ID workdir"), line
    assert main(["index", "--model", missing, "--config", s["config"], "--manifest",
                 s["first"], "--out", str(tmp_path / "i2")]) == 1
    (line,) = _err(capsys)
    assert line.startswith(f"error: --model '{missing}': no re-ID workdir"), line


def test_the_archive_records_diagnoses_and_query_shows_them(setup, capsys, tmp_path):
    import csv
    import shutil
    s = setup
    with open(s["labels"]) as f:
        label = {r["image_id"]: r["disease_label"] for r in csv.DictReader(f)}
    index = str(tmp_path / "index")
    assert main(["index", "--workdir", s["run"], "--config", s["config"], "--manifest",
                 s["first"], "--out", index, "--app-config", s["app"],
                 "--labels", s["labels"]]) == 0
    first = read_manifest(s["first"])
    assert f"recorded diagnoses (disease_label) of {len(first)} images" in capsys.readouterr().out
    # the last visits added with labels (a copy), and without: said, and shown as "-"
    shutil.copytree(index, tmp_path / "labelled")
    assert main(["add", "--index", str(tmp_path / "labelled"), "--manifest", s["last"],
                 "--labels", s["labels"]]) == 0
    last = read_manifest(s["last"])
    assert f"recorded diagnoses (disease_label) of {len(last)} images" in capsys.readouterr().out
    assert Archive.load(str(tmp_path / "labelled")).records == {
        r.image_id: label[r.image_id] for r in first + last}
    assert main(["add", "--index", index, "--manifest", s["last"]]) == 0
    assert "without a recorded diagnosis" in capsys.readouterr().out
    archive = Archive.load(index)
    assert archive.records == {r.image_id: label[r.image_id] for r in first}
    rows = read_manifest(s["manifest"])
    q = next(r for r in rows if r.order == "2")
    assert main(["query", "--index", index, "--image", q.path, "--k", "3",
                 "--png", str(tmp_path / "q.png"), "--app-config", s["app"]]) == 0
    out = capsys.readouterr().out
    assert "disease_label" in out.splitlines()[1]
    listed = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(listed) == 3
    for fields in listed:     # every candidate is an earlier (recorded) image
        assert fields[-1] == label[fields[3]]
    # a labels table that lacks an image is an error naming the table, the archive unchanged
    partial = tmp_path / "partial.csv"
    with open(s["labels"]) as f:
        partial.write_text("".join(f.readlines()[:3]))
    assert main(["index", "--workdir", s["run"], "--config", s["config"], "--manifest",
                 s["first"], "--out", str(tmp_path / "other"), "--app-config", s["app"],
                 "--labels", str(partial)]) == 1
    (line,) = _err(capsys)
    assert line.startswith("error: labels table ") and "have no label" in line
    assert not os.path.exists(tmp_path / "other")


def test_eval_refuses_trained_patients_and_other_token_maps(setup, capsys, tmp_path):
    """classifiers.json records the patients trained on and the token maps compared: an
    eval of a manifest that moved training patients into the evaluated split scored the
    classifiers on their own training images (AUC 1.000 where held-out patients gave
    0.875), and one of maps of another layer (same width) was read through the trained
    projection; both went through without a word."""
    s = setup
    out = str(tmp_path / "diag")
    base = ["--workdir", s["run"], "--config", s["config"], "--labels", s["labels"],
            "--out", out]
    assert main(["train", *base, "--manifest", s["manifest"], "--app-config", s["app"]]) == 0
    rows = read_manifest(s["manifest"])
    with open(os.path.join(out, "classifiers.json")) as f:
        info = json.load(f)
    trained = sorted({r.patient_key for r in rows if r.split == "train"})
    assert info["trained_patients"] == trained and info["maps_key"].startswith("last_block@")
    splits = {r.patient_id: r.split for r in rows}
    moved = sorted(p for p, split in splits.items() if split == "train")[0]
    swapped = hw.split_manifest(s["manifest"], str(tmp_path / "swapped.csv"),
                                dict(splits, **{moved: "test"}))
    capsys.readouterr()
    assert main(["eval", *base, "--manifest", swapped, "--app-config", s["app"]]) == 1
    (line,) = _err(capsys)
    assert line.startswith("error: 1 patient(s) of split 'test' are among those the classifiers "
                           f"were trained on ({rows[0].dataset}/{moved})")
    assert main(["eval", *base, "--manifest", s["manifest"],
                 "--app-config", s["app"] + ":map_dim=4,map_layer=block_0"]) == 1
    (line,) = _err(capsys)
    assert line.startswith(f"error: the classifiers compare token maps '{info['maps_key']}', "
                           "this run gives 'block_0@")
    assert main(["eval", *base, "--manifest", s["manifest"], "--app-config", s["app"]]) == 0


def test_train_and_eval_write_metrics(setup, capsys, tmp_path):
    s = setup
    out_dir = str(tmp_path / "diag")
    args = ["--workdir", s["run"], "--manifest", s["manifest"],      # the run's own config
            "--labels", s["labels"], "--out", out_dir, "--app-config", s["app"]]
    assert main(["train"] + args) == 0
    printed = capsys.readouterr().out
    assert "| overall |" in printed and "false-history rate" in printed
    with open(os.path.join(out_dir, "metrics.json")) as f:
        m = json.load(f)
    assert set(m["per_modality"]) == {"xray"} and m["split"] == "test"
    for group in [m["overall"], *m["per_modality"].values()]:
        for c in ("current_only", "retrieved_history", "true_history"):
            assert set(group[c]) == {"auc", "accuracy"}
            assert 0.0 <= group[c]["accuracy"] <= 1.0
        assert "false_history_rate" in group
    assert m["overall"]["queries"] == sum(r.split == "test" for r in read_manifest(s["manifest"]))
    # how the history was found and scored (the base config's, the tiny one's maps)
    assert m["retrieval"] == {"scores": "visit", "visit_fusion": True, "hubness_k": 10,
                              "center": True, "index": "flat", "train_history": "both",
                              "maps_key": "last_block@2"}
    for name in ("classifiers.msgpack", "features.npz", "auc.png", "metrics.md"):
        assert os.path.isfile(os.path.join(out_dir, name))
    # the tiny app config compares 2 x 2 token maps (width 32) with the history
    with np.load(os.path.join(out_dir, "features.npz")) as f:
        assert f["maps"].shape == (len(read_manifest(s["manifest"])), 4, 32)
        assert str(f["maps_key"]) == "last_block@2"
    # eval reuses the classifiers (and cached features): the same numbers.
    assert main(["eval"] + args) == 0
    with open(os.path.join(out_dir, "metrics.json")) as f:
        assert json.load(f) == m


@pytest.mark.parametrize("argv, message", [
    (["index", "--workdir", "{run}", "--config", "{config}", "--manifest", "{root}/none.csv",
      "--out", "{root}/x"], "none.csv"),
    (["index", "--workdir", "{root}/nowhere", "--config", "{config}", "--manifest",
      "{manifest}", "--out", "{root}/x"], "nowhere"),
    (["index", "--workdir", "{run}", "--config", "{config}", "--manifest", "{manifest}",
      "--out", "{run}"], "outputs never go into the inputs"),
    (["query", "--index", "{root}", "--image", "{manifest}"], "is not an archive"),
    (["train", "--workdir", "{run}", "--config", "{config}", "--manifest", "{manifest}",
      "--labels", "{manifest}", "--out", "{root}/t"], "no column 'disease_label'"),
    (["eval", "--workdir", "{run}", "--config", "{config}", "--manifest", "{manifest}",
      "--out", "{root}/empty"], "run `train` first"),
])
def test_bad_input_is_one_error_line(setup, capsys, argv, message):
    s = {k: str(v) for k, v in setup.items()}
    assert main([a.format(**s) for a in argv]) == 1
    lines = _err(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_a_new_images_picture_is_named_by_its_file_without_extensions():
    """(with a hash of its path: tests/test_history_query_output.py)"""
    from mami_jax.apps.history.query_output import picture_stem
    assert [picture_stem(p) for p in ("/a/new.png", "/a/scan.nii.gz", "/a/series/", "/a/x")] == [
        "new", "scan", "series", "x"]


def test_a_manifest_of_the_dataset_queries_reserve_is_refused(setup, capsys, tmp_path):
    """A dataset named "query" is what a query gives an image not in the archive: archived
    images of it would be taken for new ones (no patient of their own)."""
    from mami_jax.data.manifest import write_manifest
    s = setup
    renamed = str(tmp_path / "renamed.csv")
    write_manifest([r.replace(dataset="query") for r in read_manifest(s["first"])], renamed)
    assert main(["index", "--workdir", s["run"], "--config", s["config"], "--manifest", renamed,
                 "--out", str(tmp_path / "x"), "--app-config", s["app"]]) == 1
    (line,) = _err(capsys)
    assert line.startswith(f"error: --manifest {renamed}: image ") and "is of dataset 'query'" in line
    assert not os.path.exists(tmp_path / "x")


def test_a_query_embeds_as_the_archive_did(setup, capsys, tmp_path, monkeypatch):
    """With eval_symmetry (the paper's config turns it on for pathology) the archive holds
    the mean over the square's 8 symmetries, and query embedded one view: an archived
    image's query vector was not its own stored vector (relative difference 0.25-0.33).
    Now the query's vector, prepared as the archive prepares its rows, is the stored one."""
    from mami_jax.apps.history import commands, hubness
    from mami_jax.apps.history.visit_fusion import VisitFusion
    s = setup
    config = tmp_path / "symmetric.py"
    config.write_text(open(s["config"]).read().replace(
        "    return c", "    c.data.modalities.xray.eval_symmetry = True\n    return c"))
    index = str(tmp_path / "index")
    assert main(["index", "--workdir", s["run"], "--config", str(config), "--manifest",
                 s["first"], "--out", index, "--app-config", s["app"]]) == 0
    seen = {}

    class Spy(VisitFusion):
        def __init__(self, archive, rows, vectors, *args, **kwargs):
            seen["vectors"] = np.asarray(vectors)
            super().__init__(archive, rows, vectors, *args, **kwargs)

    monkeypatch.setattr(commands, "VisitFusion", Spy)
    archive = Archive.load(index)
    position = next(i for i, r in enumerate(archive.rows) if r.order == "1")
    q = archive.rows[position]
    assert main(["query", "--index", index, "--image", q.path, "--png",
                 str(tmp_path / "q.png"), "--app-config", s["app"]]) == 0
    capsys.readouterr()
    stored = hubness.stored_vectors(archive.indexes[q.modality], archive.kind)
    mine = archive.prepare_rows([q], seen["vectors"][:1])[0]
    np.testing.assert_allclose(mine, stored[archive.slot(position)], atol=2e-5)


def test_a_config_spec_whose_folder_holds_a_colon_names_its_file(tmp_path):
    """The history commands guard a ``--config`` file against being written over; a run
    folder named ``run_12:00`` was cut at its ':' and the guard looked at a file that is not
    there."""
    from mami_jax.apps.history.commands import _file_of
    run = tmp_path / "run_12:00"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert _file_of(str(run / "config.json")) == str(run / "config.json")
    seeded = run / "seeded.py"
    seeded.write_text("")
    assert _file_of(f"{seeded}:3") == str(seeded)
