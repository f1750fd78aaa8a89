"""``python -m mami_jax.apps.history``: what the commands refuse, and when.

Outputs never replace or go into inputs (links resolved), an output folder is new, empty or
the command's own; bad input (usage, settings, splits, labels, a damaged archive, a
classifiers file of other settings or none at all) is one ``error:`` line, before any model
is loaded (``TrainedModel`` is replaced by a trap in those tests); a ``train`` that fails
leaves the folder's earlier results byte for byte; the query's ``--workdir`` finds a moved
model and its parameters are still checked."""

import dataclasses
import json
import os
import shutil

import flax.serialization
import pytest

pytest.importorskip("faiss")

from mami_jax.apps.history.archive import Archive  # noqa: E402
from mami_jax.apps.history.__main__ import main  # noqa: E402
from mami_jax.data.manifest import read_manifest, write_manifest  # noqa: E402
from tests import history_workdir as hw  # noqa: E402
from tests.history_commands import error_line  # noqa: E402
from tests.file_trees import paths_digest  # noqa: E402

PROG = "python -m mami_jax.apps.history"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = hw.tiny_setup(tmp_path_factory.mktemp("guards"))
    s["index"] = str(s["root"] / "index")
    assert main(["index", "--workdir", s["run"], "--config", s["config"], "--manifest",
                 s["first"], "--out", s["index"], "--app-config", s["app"]]) == 0
    s["diag"] = str(s["root"] / "diag")
    assert main(["train", "--workdir", s["run"], "--manifest", s["manifest"], "--out", s["diag"],
                 "--app-config", s["app"]]) == 0
    return s


def _query(s, *extra):
    q = next(r for r in read_manifest(s["manifest"]) if r.order == "1")
    return ["query", "--index", s["index"], "--image", q.path, "--app-config", s["app"],
            *extra], q


# -- usage -------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    ([], f"error: {PROG}: the following arguments are required: command (see --help)"),
    (["query", "--index", "x", "--with"],
     f"error: {PROG} query: argument --with: expected one argument (see --help)"),
    (["index", "--workdir", "/a", "--model", "/b", "--manifest", "m", "--out", "o"],
     f"error: {PROG} index: --model /b: the model was already given (--workdir /a); give one "
     f"(see --help)"),
])
def test_usage_errors_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [message]


# -- query -------------------------------------------------------------------------------
def test_query_never_writes_into_what_it_reads(setup, capsys, no_model, tmp_path):
    from mami_jax.apps.history.archive import Archive
    s = setup
    _, q = _query(s)
    other = next(r for r in Archive.load(s["index"]).rows if r.path != q.path)
    before = paths_digest(s["index"], q.path, other.path)
    link = tmp_path / "link.png"
    link.symlink_to(q.path)
    os.mkdir(tmp_path / "folder")
    cases = [
        (q.path, f"error: --png {q.path}: is --image {q.path}, which this command reads: "
                 f"outputs never go into the inputs"),
        (str(link), f"error: --png {link}: is --image {q.path}, which this command reads: "
                    f"outputs never go into the inputs"),
        (os.path.join(s["index"], "metadata.csv"),
         f"error: --png {s['index']}/metadata.csv: lies inside --index {s['index']}, which "
         f"this command reads: outputs never go into the inputs"),
        (os.path.join(s["run"], "q.png"),
         f"error: --png {s['run']}/q.png: lies inside the archive's recorded model {s['run']}, "
         f"which this command reads: outputs never go into the inputs"),
        (other.path, f"error: --png {other.path}: is the image {other.image_id} of the "
                     f"archive {s['index']} ({other.path}), which this command reads: outputs "
                     "never go into the inputs"),
        (str(tmp_path / "folder"), f"error: --png {tmp_path}/folder: is a folder; give a file "
                                   f"name"),
        (f"{tmp_path}/new/", f"error: --png {tmp_path}/new/: is a folder; give a file name"),
        (str(tmp_path / "notes.txt"), f"error: --png {tmp_path}/notes.txt: the picture is a "
                                      "PNG; give a name ending in .png"),
    ]
    for png, message in cases:
        assert main(_query(s, "--png", png)[0]) == 1
        assert error_line(capsys) == message
    assert paths_digest(s["index"], q.path, other.path) == before
    assert main(_query(s, "--threshold", "nan", "--png", str(tmp_path / "q.png"))[0]) == 1
    assert error_line(capsys) == "error: --threshold nan: must be a finite number"
    assert not os.path.exists(tmp_path / "q.png")


def test_query_with_new_images_named_by_their_paths(setup, capsys, tmp_path):
    """Two new files of one name are two images; a file given twice, or an image of the
    query's own modality, is refused (it would add nothing to the visit score)."""
    from mami_jax.apps.history.archive import Archive
    from mami_jax.apps.history.query_rows import query_row, visit_mates
    s = setup
    archive = Archive.load(s["index"])
    source = read_manifest(s["manifest"])[0].path
    for folder in ("a", "b"):
        os.mkdir(tmp_path / folder)
        shutil.copy(source, tmp_path / folder / "img.png")
    a, b = str(tmp_path / "a" / "img.png"), str(tmp_path / "b" / "img.png")
    row = query_row(archive, a, "xray", "")
    assert row.image_id == f"query:{a}"
    archive.indexes["ct"] = archive.indexes["mri"] = None     # modalities to pair with
    (mate,) = visit_mates(archive, row, [f"ct={b}"])
    assert mate.image_id == f"query:{b}" and mate.path == b
    with pytest.raises(ValueError) as e:      # one file, however spelled, is one image
        visit_mates(archive, row, [f"ct={b}", f"mri={tmp_path}/a/../b/img.png"])
    assert str(e.value) == (f"--with mri={tmp_path}/a/../b/img.png is already part of the "
                            f"query's visit (the query itself, an archived visit-mate or given "
                            f"twice)")
    with pytest.raises(ValueError) as e:
        visit_mates(archive, query_row(archive, a, "ct", ""), [f"ct={b}"])
    assert str(e.value) == (f"--with ct={b}: ct, the query's own modality; the visit score "
                            f"adds the evidence of the visit's other modalities only, so it "
                            f"would count for nothing (query it on its own instead)")
    with pytest.raises(ValueError) as e:
        visit_mates(archive, row, [f"ct={a}"])
    assert str(e.value) == (f"--with ct={a} is already part of the query's visit (the query "
                            f"itself, an archived visit-mate or given twice)")
    # a folder of several X-rays is no X-ray (it was read as a series: its middle image)
    shutil.copy(source, tmp_path / "a" / "img2.png")
    with pytest.raises(ValueError) as e:
        query_row(archive, str(tmp_path / "a"), "xray", "")
    assert str(e.value) == (f"--image {tmp_path}/a: a folder of 2 images, given as one xray "
                            "image (a folder is read as one series); give the image files "
                            "themselves")
    os.remove(tmp_path / "a" / "img2.png")
    # on the command line, one error line before the model loads
    argv = ["query", "--index", s["index"], "--image", a, "--modality", "xray", "--with",
            f"xray={b}", "--app-config", s["app"], "--png", str(tmp_path / "q.png")]
    assert main(argv) == 1
    assert error_line(capsys).startswith(f"error: --with xray={b}: xray, the query's own modality")


def test_query_finds_a_moved_model_with_workdir(setup, capsys, tmp_path):
    s = setup
    moved = str(tmp_path / "moved_index")
    shutil.copytree(s["index"], moved)
    header = json.load(open(os.path.join(moved, "archive.json")))
    header["model"]["workdir"] = str(tmp_path / "gone")
    header["model"]["config"] = str(tmp_path / "gone" / "config.json")
    json.dump(header, open(os.path.join(moved, "archive.json"), "w"))
    argv, _ = _query(s, "--png", str(tmp_path / "q.png"))
    argv[2] = moved
    assert main(argv) == 1
    assert error_line(capsys) == (f"error: querying {moved}: the archive's model {tmp_path}/gone "
                              f"is not there any more; give --workdir where it is now (its "
                              f"parameters are checked against the archive's)")
    assert main(argv + ["--workdir", s["run"]]) == 0
    assert "picture:" in capsys.readouterr().out
    assert main(argv + ["--model", s["other"]]) == 1       # other parameters: refused
    assert "made by another model" in error_line(capsys)
    del header["model"]["fingerprint"]
    json.dump(header, open(os.path.join(moved, "archive.json"), "w"))
    assert main(argv + ["--workdir", s["run"]]) == 1
    assert error_line(capsys) == (f"error: querying {moved}: archive.json records no model "
                              f"fingerprint, so no model can be checked against the archive's "
                              f"embeddings; build the archive again with `index`")


def test_a_damaged_archive_is_one_error_line(setup, capsys, no_model, tmp_path):
    s = setup
    damaged = str(tmp_path / "damaged")
    shutil.copytree(s["index"], damaged)
    meta = os.path.join(damaged, "metadata.csv")
    lines = open(meta).read().splitlines()
    lines[2] += ",extra"
    open(meta, "w").write("\n".join(lines) + "\n")
    argv, _ = _query(s, "--png", str(tmp_path / "q.png"))
    argv[2] = damaged
    assert main(argv) == 1
    assert error_line(capsys) == f"error: {meta}: line 3 has 10 fields, expected 9"


# -- index -------------------------------------------------------------------------------
def test_index_writes_a_new_folder_only(setup, capsys, no_model, tmp_path):
    s = setup
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("mine")
    empty = tmp_path / "empty.csv"
    empty.write_text(open(s["manifest"]).readline())
    xr = os.path.dirname(s["manifest"])
    base = ["--workdir", s["run"], "--config", s["config"], "--app-config", s["app"]]
    cases = [
        (["--manifest", s["manifest"], "--out", os.path.join(s["run"], "arch")],
         f"error: --out {s['run']}/arch: lies inside --workdir {s['run']}, which this command "
         f"reads: outputs never go into the inputs"),
        (["--manifest", s["manifest"], "--out", xr],
         f"error: --out {xr}: holds --manifest {s['manifest']}; the archive replaces the whole "
         f"folder, and outputs never go into the inputs"),
        (["--manifest", s["manifest"], "--out", str(notes)],
         f"error: --out {notes}: holds files this command did not write (a.txt); give a new or "
         f"empty folder"),
        (["--manifest", s["manifest"], "--out", s["labels"]],
         f"error: --out {s['labels']}: is a file, not a folder"),
        (["--manifest", s["manifest"], "--out", str(tmp_path / "x"), "--labels",
          os.path.join(xr, "xray", "P1", "v0.png")],
         f"error: labels table {xr}/xray/P1/v0.png: not a text file (it holds NUL bytes: an "
         f"image, an archive?)"),
        (["--manifest", str(empty), "--out", str(tmp_path / "x")],
         f"error: --manifest {empty}: no images to work on"),
    ]
    rows = read_manifest(s["first"])          # an image missing on line 4: before the model
    gone = dataclasses.replace(rows[2], path=str(tmp_path / "gone.png"))
    write_manifest(rows[:2] + [gone] + rows[3:], str(tmp_path / "gone.csv"))
    cases.append((["--manifest", str(tmp_path / "gone.csv"), "--out", str(tmp_path / "x")],
                  f"error: {tmp_path / 'gone.csv'}: line 4 (image_id={gone.image_id!r}): "
                  f"{tmp_path / 'gone.png'}: no such file or folder"))
    before = paths_digest(xr, s["run"], notes)
    for argv, message in cases:
        assert main(["index"] + base + argv) == 1
        assert error_line(capsys) == message
    assert paths_digest(xr, s["run"], notes) == before
    assert not os.path.exists(tmp_path / "x")
    assert not os.path.exists(tmp_path / ".x.partial-embeddings")


def test_index_into_a_new_folder_inside_the_manifests(setup, capsys, tmp_path):
    """A new folder beside the data is harmless: the archive is written there and nothing
    else in the manifest's folder changes; hub correction and calibration show progress."""
    s = setup
    xr = str(tmp_path / "xr")
    shutil.copytree(os.path.dirname(s["manifest"]), xr)
    before = paths_digest(xr)
    out = os.path.join(xr, "archives", "a")
    capsys.readouterr()
    assert main(["index", "--workdir", s["run"], "--manifest", os.path.join(xr, "manifest.csv"),
                 "--out", out, "--app-config", s["app"]]) == 0
    err = capsys.readouterr().err
    assert "hub-correction densities: 100%" in err and "calibration (val visits): 100%" in err
    after = paths_digest(xr)
    assert {p: b for p, b in after.items() if not p.startswith(out + os.sep)} == before
    assert os.path.isfile(os.path.join(out, "archive.json"))
    assert main(["index", "--workdir", s["run"], "--manifest", os.path.join(xr, "manifest.csv"),
                 "--out", out, "--app-config", s["app"]]) == 0      # its own: replaced


def test_add_refuses_inputs_inside_the_archive_it_rewrites(setup, capsys, no_model, tmp_path):
    s = setup
    index = str(tmp_path / "index")
    shutil.copytree(s["index"], index)
    before = paths_digest(index)
    inside = os.path.join(index, "metadata.csv")
    for flag, extra in (("--manifest", [inside]), ("--labels", [s["last"], "--labels", inside])):
        assert main(["add", "--index", index, "--manifest", *extra]) == 1
        assert error_line(capsys) == (f"error: {flag} {inside}: lies inside --index {index}, which "
                                  f"add rewrites; give a copy outside it")
    assert paths_digest(index) == before


def test_add_refuses_a_patients_order_of_another_kind_than_archived(setup, capsys, no_model,
                                                                      tmp_path):
    """Each manifest alone was fine; together a patient's visit numbers and dates sorted
    numbers first, so its history was wrong without a word."""
    s = setup
    index = str(tmp_path / "index")
    shutil.copytree(s["index"], index)
    before = paths_digest(index)
    held = read_manifest(s["first"])[0]
    later = [r.replace(order="2019-03-01") for r in read_manifest(s["last"])
             if r.patient_key == held.patient_key][:1]
    assert later, "the second manifest holds later images of the archived patients"
    more = str(tmp_path / "more.csv")
    write_manifest(later, more)
    first = next(r for r in Archive.load(index).rows if r.patient_key == held.patient_key)
    assert main(["add", "--index", index, "--manifest", more]) == 1
    assert error_line(capsys) == (
        f"error: {more}: image {later[0].image_id}: order '2019-03-01' is text, but patient "
        f"{held.patient_key!r} has order {first.order!r} at image {first.image_id} of archive "
        f"{index}; every number sorts before every text, so write one patient's orders one way "
        "(all visit numbers, or all dates: 2019-03-01 or 20190301)")
    assert paths_digest(index) == before


# -- train and eval ----------------------------------------------------------------------
def test_train_and_eval_check_everything_cheap_first(setup, capsys, no_model, tmp_path):
    s = setup
    before = paths_digest(s["diag"], os.path.dirname(s["manifest"]), s["run"])
    base = ["--workdir", s["run"], "--manifest", s["manifest"], "--app-config", s["app"]]
    xr = os.path.dirname(s["manifest"])
    splits = "(its splits: 'test', 'train', 'val')"
    cases = [
        (["train", "--out", s["diag"], "--split", "bogus"],
         f"error: --split 'bogus': {s['manifest']} has no images in it {splits}"),
        (["eval", "--out", s["diag"], "--split", "bogus"],
         f"error: --split 'bogus': {s['manifest']} has no images in it {splits}"),
        (["train", "--out", str(tmp_path / "new"), "--split", "bogus"],
         f"error: --split 'bogus': {s['manifest']} has no images in it {splits}"),
        # train scored its own training patients (AUC 0.979) where eval refuses them
        (["train", "--out", str(tmp_path / "new"), "--split", "train"],
         "error: --split 'train' is train_split: the classifiers are trained on its "
         "patients, so its scores would be of the images they learnt; evaluate another split"),
        (["train", "--out", s["labels"]],
         f"error: --out {s['labels']}: is --labels {s['labels']}, which this command reads: "
         f"outputs never go into the inputs"),
        (["train", "--out", s["config"]], f"error: --out {s['config']}: is a file, not a folder"),
        (["train", "--out", os.path.join(s["run"], "diag")],
         f"error: --out {s['run']}/diag: lies inside --workdir {s['run']}, which this command "
         f"reads: outputs never go into the inputs"),
        (["train", "--out", xr],
         f"error: --out {xr}: holds files this command did not write (labels.csv, "
         f"manifest.csv, xray); give a new or empty folder"),
        (["train", "--out", os.path.join(s["config"], "sub")],
         f"error: --out {s['config']}/sub: {s['config']} is a file, not a folder"),
    ]
    one_class = tmp_path / "one_class.csv"
    with open(s["labels"]) as f:
        header = f.readline().strip().split(",")
        column = header.index("disease_label")
        lines = [line.strip().split(",") for line in f]
    one_class.write_text(",".join(header) + "\n" + "".join(
        ",".join(v[:column] + ["1"] + v[column + 1:]) + "\n" for v in lines))
    cases.append((["train", "--out", str(tmp_path / "new"), "--labels", str(one_class)],
                  f"error: labels table {one_class}: every image of train_split 'train' in "
                  f"{s['manifest']} has disease_label='1'; a classifier cannot learn from one "
                  f"class (classes: 0, 1)"))
    for argv, message in cases:
        assert main(argv[:1] + base + argv[1:]) == 1
        assert error_line(capsys) == message
    assert paths_digest(s["diag"], xr, s["run"]) == before
    assert not os.path.exists(tmp_path / "new")


def test_a_modality_the_classifiers_cannot_read_is_refused_before_the_model_loads(
        setup, capsys, no_model, tmp_path):
    """A modality with validation and test images but none in the training split was
    refused only after every image was embedded, calibrated and retrieved (``error: no
    training images of modality ['fundus']``, from the standardiser): ``train`` now refuses
    it with the splits, naming the modality and the split, before the model loads; and
    ``eval`` refuses a modality the classifiers were not trained on, which failed the same
    way."""
    import csv
    s = setup
    rows = read_manifest(s["manifest"])
    os.mkdir(tmp_path / "fundus")
    fundus = []
    for r in rows:
        if r.split != "train":
            path = str(tmp_path / "fundus" / f"{r.patient_id}_v{r.order}.png")
            shutil.copy(r.path, path)
            fundus.append(r.replace(image_id=r.image_id.replace("xray", "fundus"),
                                    study_id=f"fundus_v{r.order}", modality="fundus", view="",
                                    path=path))
    manifest = str(tmp_path / "manifest.csv")
    write_manifest(rows + fundus, manifest)
    labels = str(tmp_path / "labels.csv")     # every image labelled: only the split is wrong
    with open(s["labels"], newline="") as f:
        table = list(csv.DictReader(f))
    by_id = {t["image_id"]: t for t in table}
    with open(labels, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table + [dict(by_id[r.image_id.replace("fundus", "xray")],
                                  image_id=r.image_id, modality="fundus") for r in fundus])
    before = paths_digest(s["diag"], tmp_path)
    new = str(tmp_path.parent / f"{tmp_path.name}_new")
    assert main(["train", "--workdir", s["run"], "--manifest", manifest, "--labels", labels,
                 "--out", new, "--app-config", s["app"]]) == 1
    assert error_line(capsys) == (
        f"error: train_split 'train': {manifest} has no fundus images in it, so the "
        f"classifiers could not read the features of such images (each modality is "
        f"standardised by its own training images); add training patients of that modality "
        f"or leave its images out of the manifest")
    assert not os.path.exists(new)
    assert main(["eval", "--workdir", s["run"], "--manifest", manifest, "--labels", labels,
                 "--out", s["diag"], "--app-config", s["app"]]) == 1
    assert error_line(capsys) == (
        f"error: {manifest}: has fundus images, and the classifiers "
        f"{os.path.join(s['diag'], 'classifiers.msgpack')} were trained on xray images only, "
        f"so they could not read their features; train them on a manifest with training "
        f"images of that modality, or leave its images out")
    assert paths_digest(s["diag"], tmp_path) == before


@pytest.mark.parametrize("word, message", [
    ("calibration=bogus", "calibration='bogus' unknown; expected one of pairs, topk"),
    ("calibration=pairs", "calibration='pairs' has no effect with visit_fusion (the default): "
                          "visit scores are calibrated on the validation images' top-k visit "
                          "candidates; add visit_fusion=0 to calibrate single images on pairs"),
])
def test_settings_that_would_do_nothing_are_refused(setup, capsys, no_model, tmp_path, word,
                                                     message):
    s = setup
    assert main(["train", "--workdir", s["run"], "--manifest", s["manifest"], "--out",
                 str(tmp_path / "d"), "--app-config", f"{s['app']}:{word}"]) == 1
    line = error_line(capsys)
    assert line.startswith(f"error: config '{s['app']}:{word}'") and line.endswith(message)


def test_eval_refuses_classifiers_it_cannot_read_before_any_work(setup, capsys, no_model,
                                                                  tmp_path):
    s = setup
    d = str(tmp_path / "d")
    shutil.copytree(s["diag"], d)
    clf, info = os.path.join(d, "classifiers.msgpack"), os.path.join(d, "classifiers.json")
    argv = ["eval", "--workdir", s["run"], "--manifest", s["manifest"], "--out", d,
            "--app-config", s["app"]]
    # trained on disease_label (two classes), evaluated on disease_stage (four)
    assert main(argv[:-1] + [f"{s['app']}:stage"]) == 1
    assert error_line(capsys) == ("error: the classifiers were trained on 'disease_label' (classes "
                              "0, 1), this run reads 'disease_stage' (classes 0, 1, 2, 3): "
                              "train again or use the same --app-config")
    # a record from before the classes were recorded: the parameters' shapes tell
    recorded = json.load(open(info))
    json.dump({k: v for k, v in recorded.items() if k not in ("label_column", "classes")},
              open(info, "w"))
    assert main(argv[:-1] + [f"{s['app']}:stage"]) == 1
    assert error_line(capsys) == (
        f"error: classifiers {clf}: parameter current['logits']['bias'] has shape (2,), the app "
        f"config's classifier gives (4,) (4 classes of 'disease_stage', hidden, attention_dim, "
        f"map_dim, records): train again or use the same --app-config")
    good = open(clf, "rb").read()
    cases = [
        (flax.serialization.msgpack_serialize([1, 2]),
         f"error: classifiers {clf}: holds a list, not the classifiers `train` writes"),
        (b"garbage\n", f"error: classifiers {clf}: not a classifiers file of `train` (ExtraData: "
                       f"unpack(b) received extra data.)"),
        (flax.serialization.msgpack_serialize({"current": {}, "fused": {}}),
         f"error: classifiers {clf}: no 'norm' entry (not a classifiers file of `train`)"),
    ]
    for data, message in cases:
        open(clf, "wb").write(data)
        assert main(argv) == 1
        assert error_line(capsys) == message
    open(clf, "wb").write(good)
    open(info, "w").write("{not json")
    assert main(argv) == 1
    assert error_line(capsys) == (f"error: {info}: not the JSON object `train` writes (Expecting "
                              f"property name enclosed in double quotes: line 1 column 2 "
                              f"(char 1))")


def test_a_failed_train_leaves_the_earlier_results(setup, capsys, monkeypatch, tmp_path):
    """The results are published together after everything is computed: a failure while
    writing them leaves the folder's files byte for byte, and no staging folder."""
    from mami_jax.apps.history import pictures
    s = setup
    d = str(tmp_path / "d")
    shutil.copytree(s["diag"], d)
    before = paths_digest(d)

    def fail(*args, **kwargs):
        raise OSError("No space left on device")
    monkeypatch.setattr(pictures, "auc_bars", fail)
    capsys.readouterr()
    assert main(["train", "--workdir", s["run"], "--manifest", s["manifest"], "--out", d,
                 "--app-config", s["app"]]) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "error:" in line] == [
        "error: No space left on device"]
    assert "current-only classifier: 100%" in err and "history model: 100%" in err
    assert paths_digest(d) == before and sorted(os.listdir(d)) == sorted(os.listdir(s["diag"]))
    # in a new folder, only the feature cache (it is keyed by what it was computed from)
    fresh = str(tmp_path / "fresh")
    assert main(["train", "--workdir", s["run"], "--manifest", s["manifest"], "--out", fresh,
                 "--app-config", s["app"]]) == 1
    assert os.listdir(fresh) == ["features.npz"]


def test_train_records_the_classes_and_eval_reuses_them(setup):
    info = json.load(open(os.path.join(setup["diag"], "classifiers.json")))
    assert info["label_column"] == "disease_label" and info["classes"] == ["0", "1"]
    assert sorted(os.listdir(setup["diag"])) == [
        "auc.png", "classifiers.json", "classifiers.msgpack", "features.npz", "metrics.json",
        "metrics.md"]


def test_an_archived_query_refuses_metadata_other_than_its_own(setup):
    """--order 99 or --modality ct for an archived image was silently ignored."""
    from mami_jax.apps.history.archive import Archive
    from mami_jax.apps.history.query_rows import query_row
    archive = Archive.load(setup["index"])
    held = archive.rows[0]
    assert query_row(archive, held.path, held.modality, held.order) == held   # the same: fine
    with pytest.raises(ValueError) as e:
        query_row(archive, held.path, None, "99")
    assert str(e.value) == (f"--order 99: --image {held.path} is archived as {held.image_id} "
                            f"with order {held.order!r}, and an archived image is queried with "
                            f"its own; leave --order out")
    with pytest.raises(ValueError, match=r"^--modality ct: .* with modality 'xray'"):
        query_row(archive, held.path, "ct", None)


def test_a_new_querys_order_must_compare_with_the_archived_ones(setup, tmp_path):
    """order_key sorts every number before every text: '--order 2019-03-01' against visit
    numbers made the whole archive earlier, '--order yesterday' too, without a word."""
    from mami_jax.apps.history.archive import Archive
    from mami_jax.apps.history.query_rows import query_row
    archive = Archive.load(setup["index"])
    orders = sorted({r.order for r in archive.rows if r.modality == "xray"}, key=float)
    image = shutil.copy(archive.rows[0].path, tmp_path / "new.png")
    assert query_row(archive, str(image), "xray", "1").order == "1"
    for order in ("2019-03-01", "yesterday"):
        with pytest.raises(ValueError) as e:
            query_row(archive, str(image), "xray", order)
        assert str(e.value) == (
            f"--order {order}: the archive's xray orders are numbers, {orders[0]!r} to "
            f"{orders[-1]!r}; an order of another kind does not compare with them (every "
            "archived image would count as earlier, or none): give one written like them")
    with pytest.raises(ValueError, match=r"^--order 3/1/2019: a date written year last"):
        query_row(archive, str(image), "xray", "3/1/2019")


def test_eval_refuses_classifiers_of_images_read_otherwise(setup, capsys, tmp_path):
    """The same parameters reading the images at another size give other features: eval
    recomputed them and fed them to classifiers trained on the first (current-only AUC
    0.875 -> 0.5), without a word. Refused, naming the setting, before any features."""
    s = setup
    other = tmp_path / "tiny_config48.py"
    other.write_text(open(s["config"]).read().replace("resize_size=36", "resize_size=48"))
    before = open(os.path.join(s["diag"], "metrics.json")).read()
    argv = ["eval", "--workdir", s["run"], "--manifest", s["manifest"], "--out", s["diag"],
            "--app-config", s["app"], "--config", str(other)]
    assert main(argv) == 1
    line = error_line(capsys)
    assert line.startswith("error: the classifiers were trained on features of images read "
                           "with data.modalities.") and f"the config {other} reads them" in line
    assert open(os.path.join(s["diag"], "metrics.json")).read() == before
