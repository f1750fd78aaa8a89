"""python -m mami_jax.apps.privacy protect / cues on a tiny model and tiny phantoms: the
protected images keep their format, lower the match score within the budget, the
manifest keeps its rows' fields, inputs stay byte-identical; bad input is one error line."""

import json
import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from mami_jax.apps.privacy.__main__ import main
from mami_jax.config_files import load_config
from mami_jax.data.decode import open_volume
from mami_jax.data.manifest import read_manifest, write_manifest
from mami_jax.data.transforms import slice_indices
from tests.file_trees import tree_digest
from tests.history_workdir import make_workdir, run_config_of_modalities
from tests.privacy_tiny import tiny_xray_phantoms
from tests.strict_json_reader import strict_loads


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("privacy")
    manifest, experiment, config = tiny_xray_phantoms(base)
    workdir = make_workdir(str(base / "run"), load_config(experiment))
    before = tree_digest(str(base / "ph"))
    code = main(["protect", "--workdir", workdir, "--manifest", manifest, "--out",
                 str(base / "out"), "--config", config])
    return dict(base=base, manifest=manifest, workdir=workdir, config=config, code=code,
                before=before)


def test_protect_writes_a_manifest_that_keeps_its_rows(run):
    assert run["code"] == 0
    original = [r for r in read_manifest(run["manifest"]) if r.split == "test"]
    protected = read_manifest(str(run["base"] / "out" / "manifest.csv"))
    assert [r.image_id for r in protected] == [r.image_id + "_protected" for r in original]
    for a, b in zip(original, protected):
        for field in ("patient_id", "study_id", "order", "modality", "dataset", "view", "split"):
            assert getattr(a, field) == getattr(b, field)
        assert b.path.startswith(str(run["base"] / "out" / "images"))
        assert os.path.splitext(a.path)[1] == os.path.splitext(b.path)[1]
    with open(os.path.join(run["base"], "out", "manifest.csv")) as f:
        assert "images/" in f.read()          # relative paths: the folder can move


def test_protect_draws_an_image_beside_its_protected_copy(run):
    with Image.open(run["base"] / "out" / "preview.png") as im:
        # one modality in the tiny manifest: one line of original, copy, change x10
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1] > 300


def test_the_report_names_the_model_and_its_step(run):
    report = strict_loads((run["base"] / "out" / "protect_report.json").read_text())
    assert report["workdir"] == run["workdir"]
    assert (report["model"], report["step"]) == (f"{run['workdir']} (step 1)", 1)


def test_inputs_are_byte_identical(run):
    assert tree_digest(str(run["base"] / "ph")) == run["before"]


def test_protected_images_keep_format_and_stay_in_budget(run):
    cfg = load_config(run["config"])
    original = {r.image_id: r for r in read_manifest(run["manifest"])}
    for r in read_manifest(str(run["base"] / "out" / "manifest.csv")):
        src = original[r.image_id[:-len("_protected")]]
        if r.modality == "xray":
            with Image.open(src.path) as a, Image.open(r.path) as b:
                assert (a.format, a.mode, a.size) == (b.format, b.mode, b.size)
        n = open_volume(src.path).num_slices
        assert open_volume(r.path).num_slices == n
        idx = slice_indices(n, 1)
        change = open_volume(r.path).read(idx) - open_volume(src.path).read(idx)
        rms = np.sqrt(np.mean(np.square(change)))
        assert 0 < rms <= cfg.perturb.epsilon * 1.05     # l2 budget (plus rounding)


def test_match_score_falls(run):
    with open(run["base"] / "out" / "protect_report.json") as f:
        report = json.load(f)
    assert report["images"] == 6
    after = [r["score_after"] for r in report["records"]]
    before = [r["score_before"] for r in report["records"]]
    assert np.mean(after) < np.mean(before) - 0.05
    assert sum(a < b for a, b in zip(after, before)) >= 5


def test_deform_with_a_modality_budget_moves_pixels_inside_it(run):
    """method=deform (the ``deform`` word) with the X-ray budget raised by
    ``perturb.modality_epsilon``: each written change stays inside that budget, is a
    resampling of the original (no value outside its range) and lowers the match score."""
    out = run["base"] / "deformed"
    assert main(["protect", "--workdir", run["workdir"], "--manifest", run["manifest"],
                 "--out", str(out), "--config", run["config"] + ":deform",
                 "--set", "perturb.modality_epsilon={'xray': 0.05}",
                 "--set", "deform.step_size=1.0", "--set", "deform.grid=4"]) == 0
    original = {r.image_id: r for r in read_manifest(run["manifest"])}
    sizes = []
    for r in read_manifest(str(out / "manifest.csv")):
        a = open_volume(original[r.image_id[:-len("_protected")]].path).read([0])
        b = open_volume(r.path).read([0])
        sizes.append(np.sqrt(np.mean(np.square(b - a))))
        assert b.min() >= a.min() - 1e-3 and b.max() <= a.max() + 1e-3
    # The budget binds: above the config's own epsilon (0.028), at most the X-ray one.
    assert 0.028 < min(sizes) and max(sizes) <= 0.05 * 1.02, sizes
    with open(out / "protect_report.json") as f:
        records = json.load(f)["records"]
    assert {r["epsilon"] for r in records} == {0.05}      # each record names its budget
    assert np.mean([r["score_after"] for r in records]) < np.mean(
        [r["score_before"] for r in records]) - 0.02


def test_a_ranked_modality_is_optimised_by_its_own_objective_inside_the_budget(run):
    """``perturb.modality_objective`` reaches the optimiser: the ranked X-rays stay inside
    the budget but are another change than the match score's (the run's default output)."""
    out = run["base"] / "ranked"
    assert main(["protect", "--workdir", run["workdir"], "--manifest", run["manifest"],
                 "--out", str(out), "--config", run["config"],
                 "--set", "perturb.modality_objective={'xray': 'rank'}",
                 # no floor: the tiny model already ranks some images' impostors first by
                 # the default floor's margin, and those would rightly be left unchanged
                 "--set", "perturb.rank_floor=10.0"]) == 0
    matched = {r.image_id: r for r in read_manifest(str(run["base"] / "out" / "manifest.csv"))}
    original = {r.image_id: r for r in read_manifest(run["manifest"])}
    gaps = []
    for r in read_manifest(str(out / "manifest.csv")):
        a = open_volume(original[r.image_id[:-len("_protected")]].path).read([0])
        b = open_volume(r.path).read([0])
        assert 0 < np.sqrt(np.mean(np.square(b - a))) <= 0.028 * 1.05
        gaps.append(np.abs(b - open_volume(matched[r.image_id].path).read([0])).max())
    assert len(gaps) == 6 and min(gaps) > 0.01, gaps


def test_cues_write_overlays_and_raw_maps(run, capsys):
    out = run["base"] / "cues"
    capsys.readouterr()
    assert main(["cues", "--workdir", run["workdir"], "--manifest", run["manifest"],
                 "--out", str(out), "--config", run["config"]]) == 0
    tests = sum(r.split == "test" for r in read_manifest(run["manifest"]))
    # the tiny config maps one image of the split: said, not cut without a word
    assert (f"mapping the first 1 of {tests} images (cues.max_images; --set cues.max_images=N "
            "for more)") in capsys.readouterr().out
    first = next(r for r in read_manifest(run["manifest"]) if r.split == "test")
    maps = np.load(out / f"{first.image_id}.npz")
    # The tiny random model barely reads its input (its score moves by ~1e-8): the maps'
    # values are tests/test_privacy_cue_maps.py's; here, what is written and its scale.
    assert maps["gradient"].max() == pytest.approx(1.0)
    for name in ("gradient", "occlusion"):
        assert maps[name].shape == (1, 32, 32) and 0 <= maps[name].min()
        assert maps[name].max() == pytest.approx(1.0) or not maps[name].any()
    with Image.open(out / f"{first.image_id}.png") as img:
        assert img.format == "PNG"


def _cue_maps(run, model, extra, name):
    """{file: {map name: array}} of ``cues`` on ``model`` with ``extra`` arguments."""
    out = run["base"] / f"cues_{name}"
    assert main(["cues", "--model", model, "--manifest", run["manifest"],
                 "--out", str(out)] + extra) == 0
    return {f: dict(np.load(out / f)) for f in sorted(os.listdir(out)) if f.endswith(".npz")}


def _assert_same_maps(a, b):
    assert a.keys() == b.keys() and a
    for f, arrays in a.items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(b[f][key], value)


def _own_config_args(run):
    """The default privacy config (no experiment named) with the tiny one's cue settings."""
    tiny = load_config(run["config"]).cues
    return [x for k in ("max_images", "occlusion_patch", "occlusion_stride")
            for x in ("--set", f"cues.{k}={tiny[k]}")]


def test_cues_read_the_run_with_the_config_it_stored(run, capsys):
    """The default privacy config names no experiment: the run's own RUN/config.json is
    read, and the maps are those of the config file that made the run."""
    named = _cue_maps(run, run["workdir"], ["--config", run["config"]], "named_config")
    own = _cue_maps(run, run["workdir"], _own_config_args(run), "own_config")
    assert "warning" not in capsys.readouterr().err
    _assert_same_maps(named, own)


def test_an_exported_run_is_read_with_the_config_it_carries(run):
    """A .safetensors file exported from the run (export-torch) carries its config.json:
    named with no config, it explains exactly as the run does with its config file."""
    pytest.importorskip("torch")
    from mami_jax.convert.__main__ import main as convert
    exported = str(run["base"] / "exported.safetensors")
    assert convert(["export-torch", "--checkpoint", run["workdir"], "--out", exported,
                    "--allow-non-released-shift"]) == 0
    _assert_same_maps(_cue_maps(run, run["workdir"], ["--config", run["config"]], "run"),
                      _cue_maps(run, exported, _own_config_args(run), "exported"))


def test_images_of_a_modality_the_run_never_saw_are_warned_about(run, capsys, tmp_path):
    fundus_only = run_config_of_modalities(run["workdir"], str(tmp_path / "fundus_only.json"),
                                           ("fundus",))
    capsys.readouterr()
    assert main(["cues", "--workdir", run["workdir"], "--manifest", run["manifest"],
                 "--out", str(tmp_path / "cues"), "--config", run["config"],
                 "--set", f"experiment={fundus_only}"]) == 0
    n = 1          # the images cues processes: the tiny config's cues.max_images
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == [f"warning: {run['workdir']} was trained on fundus only "
                      f"(data.only_modalities); {n} xray images are processed with it all "
                      "the same (a manifest of those modalities only, or a model trained on "
                      "them, avoids this)"]


def test_a_released_file_is_the_model_its_workdir_is(run):
    """``--workdir`` takes the model as it is published (a .pth; given here under the
    flag's other name, ``--model``), and explains with it exactly what the run it came
    from explains with."""
    pytest.importorskip("torch")
    from mami_jax.convert.checkpoint_dir import load_params
    from mami_jax.convert.official import export_official
    pth = str(run["base"] / "released.pth")
    export_official(pth, *load_params(run["workdir"]), allow_non_released_shift=True)
    maps = {}
    for name, flag, model in (("from_run", "--workdir", run["workdir"]),
                              ("from_file", "--model", pth)):
        out = run["base"] / f"cues_{name}"
        assert main(["cues", flag, model, "--manifest", run["manifest"],
                     "--out", str(out), "--config", run["config"]]) == 0
        maps[name] = {f: dict(np.load(out / f)) for f in sorted(os.listdir(out))
                      if f.endswith(".npz")}
    assert maps["from_run"].keys() == maps["from_file"].keys() and maps["from_run"]
    for f, arrays in maps["from_run"].items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(maps["from_file"][f][key], value)


@pytest.mark.parametrize("args, message", [
    (["--manifest", "/nonexistent.csv"], "error: --manifest /nonexistent.csv: no such file"),
    (["--manifest", "{folder}"], "error: --manifest {folder}: is a folder, not a file"),
    (["--split", "nope"], "error: {manifest}: no rows in split 'nope'"),
    (["--workdir", "/nonexistent.pth"], "error: --workdir /nonexistent.pth: no such file or folder"),
    (["--model", "/nonexistent.pth"], "error: --model /nonexistent.pth: no such file or folder"),
    (["--model", "{folder}"], "error: --model '{folder}': {folder}/model_config.json is missing"),
    (["--set", "perturb.norm=l3"], "error: perturb.norm='l3': expected one of ('linf', 'l2')"),
    (["--set", "metadata.identity=strip"],
     "error: metadata.identity='strip': expected one of ('keep', 'remove')"),
    (["--config", "configs/privacy.py:runlocal,xray_vis"],
     "error: config 'configs/privacy.py:runlocal,xray_vis': unknown config argument(s) "
     "['xray_vis']; known: runlocal, inpaint, both, deform, transfer, xray_transfer, "
     "xray_visible, rank"),
    (["--set", "perturb.modality_epsilon={'xrays': 0.02}"],
     "error: perturb.modality_epsilon: no such modality ['xrays']"),
    (["--set", "perturb.modality_objective={'xray': 'ranking'}"],
     "error: perturb.modality_objective['xray']='ranking': expected one of ('similarity', 'rank')"),
])
def test_bad_input_is_one_error_line(run, capsys, args, message):
    options = {"--workdir": run["workdir"], "--manifest": run["manifest"],
               "--out": str(run["base"] / "bad"), "--config": run["config"]}
    for flag, value in zip(args[::2], args[1::2]):
        if flag == "--model":         # the other spelling: the error names the one typed
            del options["--workdir"]
        options[flag] = value.replace("{folder}", str(run["base"]))
    capsys.readouterr()
    assert main(["protect"] + [x for kv in options.items() for x in kv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    expected = message.format(manifest=run["manifest"], folder=str(run["base"]))
    assert len(err) == 1 and err[0].startswith(expected), err


def test_outputs_never_land_on_inputs(run, capsys, tmp_path):
    """OUT must be new, empty or the command's own earlier output (a link resolved), and
    nothing it writes may replace an input: the manifest's folder, a link to it, an image
    folder (where a cue map named like the image would replace it), and a protect output
    given as its own input are each refused before any work, leaving every input as it was."""
    base = run["base"]
    image_dir = os.path.dirname(read_manifest(run["manifest"])[0].path)
    os.symlink(base, tmp_path / "link")
    before = tree_digest(str(base))
    protected = str(base / "out" / "manifest.csv")
    cases = [("protect", run["manifest"], str(base), f"--out {base}: holds files this command "
              "did not write ("),
             ("protect", run["manifest"], str(tmp_path / "link"), f"--out {tmp_path / 'link'}: "
              "holds files this command did not write"),
             ("cues", run["manifest"], image_dir, f"--out {image_dir}: holds files this command "
              "did not write (v0.png, v1.png)"),
             ("protect", protected, str(base / "out"), f"--out {base / 'out' / 'manifest.csv'}: "
              f"would overwrite the input {protected}")]
    for command, manifest, out, message in cases:
        capsys.readouterr()
        assert main([command, "--workdir", run["workdir"], "--manifest", manifest, "--split",
                     "all", "--out", out, "--config", run["config"]]) == 1, out
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: " + message), err
    assert tree_digest(str(base)) == before


@pytest.mark.parametrize("command", ["protect", "cues"])
def test_a_second_run_into_an_output_in_use_is_refused(run, capsys, tmp_path, command):
    """Two protects into one OUT (a second terminal, a rerun while the first still ran) each
    appended to the same log and wrote the same images; the second went on from the
    first's unfinished records. Now OUT is held while a run writes there; a run that ends
    before its first file (here, refused) leaves no empty OUT behind."""
    from mami_jax.runtime import folder_lock
    busy, new = tmp_path / "busy", tmp_path / "new"
    busy.mkdir()
    args = ["--manifest", run["manifest"], "--config", run["config"]]
    with folder_lock.held(str(busy), f"--out {busy}", f"privacy {command}"):
        capsys.readouterr()
        assert main([command, *args, "--workdir", run["workdir"], "--out", str(busy)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            f"error: --out {busy} is in use by another privacy {command} (process "
            f"{os.getpid()} "), err
    assert os.listdir(busy) == [folder_lock.LOCK_FILE]
    (tmp_path / "not_a_run").mkdir()         # found once OUT is held: reading the model
    assert main([command, *args, "--out", str(new), "--workdir", str(tmp_path / "not_a_run")]) == 1
    assert "not_a_run" in capsys.readouterr().err and not os.path.exists(new)


def test_a_lone_image_of_a_modality_is_refused(run, capsys, tmp_path):
    """One image of a modality among the chosen patients is its own centre: it would come
    out unchanged, labelled protected. Refused, naming it, before any model is read."""
    rows = read_manifest(run["manifest"])
    lone = [r for r in rows if r.split == "test"][:1]
    manifest = str(tmp_path / "one.csv")
    write_manifest(lone, manifest)
    capsys.readouterr()
    assert main(["protect", "--workdir", run["workdir"], "--manifest", manifest,
                 "--out", str(tmp_path / "out"), "--config", run["config"]]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {manifest}: line 2 (image_id={lone[0].image_id!r}): the only xray image of "
        "the patients chosen; an image is "
        "compared with its patients' other images, centred on their mean, so one image alone "
        "has nothing to compare with: give the manifest with more images (other patients, "
        "other visits) or choose more rows (--split)"]
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("item, problem", [
    ("perturb.nope=1", "no config key 'perturb.nope'"),
    ("batch_size", "expected KEY=VALUE"),
    ("batch_size=abc", "batch_size takes an integer"),
])
def test_a_set_that_is_no_setting_is_a_usage_error(run, capsys, item, problem):
    """Status 2, as ``mami_jax.main`` gives a bad ``--config.KEY`` (it was 1, as if the
    images were at fault); a setting of the right type that a check refuses stays 1."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["protect", "--workdir", run["workdir"], "--manifest", run["manifest"],
              "--out", str(run["base"] / "bad"), "--config", run["config"], "--set", item])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: python -m mami_jax.apps.privacy protect: --set: override {item!r}: {problem} "
        "(see --help)"]
    assert not os.path.exists(run["base"] / "bad")


def test_usage_error_is_one_line_with_status_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["protect", "--workdir", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--manifest" in err[0]
    with pytest.raises(SystemExit) as e:
        main(["cues", "--workdir", "a", "--model", "b", "--manifest", "m", "--out", "o"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: python -m mami_jax.apps.privacy cues: --model b: the model was already given "
        "(--workdir a); give one (see --help)"]


def test_xray_transfer_gives_the_xrays_their_own_members(run, capsys):
    """The README's recipe for attackers of every kind: ``transfer=A,xray_transfer=B.pth``
    (B's weights exported, as a public backbone is released) protects the X-rays against
    --workdir's model and B alone, their gradients balanced, exactly as ``transfer=B`` (B's
    workdir) with balanced members does, and not as ``transfer=A`` does; the report names
    the X-rays' members and weighting. B's file carries no training config: one warning
    line says it is fed the run's input unchecked, and the report names it; B's workdir is
    checked, and nothing is said."""
    pytest.importorskip("torch")
    from mami_jax.convert.checkpoint_dir import load_params
    from mami_jax.apps.privacy.member_reading import unchecked_warning
    from mami_jax.convert.official import export_official
    from tests.history_workdir import make_workdir
    base = run["base"]
    experiment = load_config(load_config(run["config"]).experiment)
    a = make_workdir(str(base / "member_a"), experiment, seed=1)
    b = make_workdir(str(base / "member_b"), experiment, seed=2)
    b_pth = str(base / "member_b.pth")
    export_official(b_pth, *load_params(b), allow_non_released_shift=True)

    def written(name, words, *extra):
        out = base / name
        capsys.readouterr()
        assert main(["protect", "--workdir", run["workdir"], "--manifest", run["manifest"],
                     "--split", "test", "--out", str(out), "--config", f"{run['config']}:{words}",
                     "--set", "perturb.modality_epsilon={'fundus': 0.0185, 'ct': 0.025}",
                     *extra]) == 0
        with open(out / "protect_report.json") as f:
            report = json.load(f)
        p = report["config"]["perturb"]
        warned = [w for w in capsys.readouterr().err.splitlines() if "training config" in w]
        assert warned == ([unchecked_warning([b_pth])] if report["unchecked_members"] else [])
        unchecked.append(report["unchecked_members"])
        return (p["modality_ensemble"], p["modality_member_weighting"]), {
            r.image_id: open_volume(r.path).read([0])
            for r in read_manifest(str(out / "manifest.csv"))}

    unchecked = []
    named, own = written("xray_own", f"transfer={a},xray_transfer={b_pth}")
    assert named == ({"xray": [b_pth]}, {"xray": "balanced"})
    _, same = written("xray_b", f"transfer={b}", "--set", "perturb.member_weighting=balanced")
    _, other = written("xray_a", f"transfer={a}", "--set", "perturb.member_weighting=balanced")
    assert own.keys() == same.keys() == other.keys() and len(own) == 6
    for k in own:
        np.testing.assert_array_equal(own[k], same[k])
    assert max(np.abs(own[k] - other[k]).max() for k in own) > 1.5 / 255
    assert unchecked == [[b_pth], [], []]
    assert unchecked_warning([b_pth]).startswith(
        f"warning: 1 ensemble member(s) carry no training config ({b_pth}): ")


def test_a_protect_stopped_after_its_first_copy_goes_on(run, monkeypatch, capsys):
    """Stopped after its first copy was written, before that copy's record (a large
    series' header edit, a disconnect): OUT held only images/ and the same command was
    refused as a folder of someone else's files. The log's header is now written before
    the first copy, so the run goes on."""
    from mami_jax.apps.privacy import protect as protect_lib
    args = ["protect", "--workdir", run["workdir"], "--manifest", run["manifest"],
            "--out", str(run["base"] / "first"), "--config", run["config"]]
    real = protect_lib.write_within_budget

    def write_then_stop(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(protect_lib, "write_within_budget", write_then_stop)
    assert main(args) == 130
    assert sorted(n for n in os.listdir(run["base"] / "first") if not n.startswith(".")) == [
        "images", "protect_log.jsonl"]
    monkeypatch.setattr(protect_lib, "write_within_budget", real)
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads((run["base"] / "first" / "protect_report.json").read_text())
    assert report["images"] == 6


def test_an_interrupted_protect_goes_on_where_it_stopped(run, monkeypatch, capsys):
    """Stopped while writing its third image (a Colab session that disconnects), then started
    again with the same arguments: it protects only what was not finished (the first batch
    of two is skipped; two chunks of rows, read one at a time), and writes exactly what one
    uninterrupted run writes (files, manifest, records), random views included. A record
    line cut short by the crash is no finished image."""
    from mami_jax.apps.privacy import protect as protect_lib

    def args(out):
        return ["protect", "--workdir", run["workdir"], "--manifest", run["manifest"],
                "--out", str(run["base"] / out), "--config", run["config"],
                "--set", "batch_size=2", "--set", "read_chunk=4", "--set", "perturb.views=2",
                "--set", "perturb.noise=0.01"]

    from mami_jax.runtime.chunk_store import beside
    assert main(args("straight")) == 0
    assert not os.path.exists(beside(str(run["base"] / "straight")))
    real, written = protect_lib.write_within_budget, []

    def write(*a, **k):
        if stop and len(written) == 2:
            raise KeyboardInterrupt
        written.append(a[3])
        return real(*a, **k)

    monkeypatch.setattr(protect_lib, "write_within_budget", write)
    stop = True
    capsys.readouterr()
    assert main(args("resumed")) == 130
    log = run["base"] / "resumed" / "protect_log.jsonl"
    assert capsys.readouterr().err.strip().endswith(f"run the same command again to go on ({log})")
    assert len(log.read_text().splitlines()) == 1 + 2          # settings, two images
    assert len(os.listdir(beside(str(log.parent)))) == 1       # the references' embeddings
    with open(log, "a") as f:
        f.write('{"image_id": "P00')                           # the crash came mid-line
    stop, first = False, list(written)
    written.clear()
    capsys.readouterr()
    assert main(args("resumed")) == 0
    out = capsys.readouterr().out
    assert "resuming: 2 of 6 images" in out
    assert "results read back from an earlier, stopped run" in out   # references not embedded again
    assert not os.path.exists(beside(str(log.parent)))
    assert len(written) == 4 and not set(written) & set(first)   # the rest, once each
    straight, resumed = run["base"] / "straight", run["base"] / "resumed"
    assert tree_digest(str(resumed / "images")) == tree_digest(str(straight / "images"))
    assert (resumed / "manifest.csv").read_text() == (straight / "manifest.csv").read_text()
    reports = [json.loads((d / "protect_report.json").read_text()) for d in (straight, resumed)]
    assert reports[0]["records"] == reports[1]["records"]
    assert len(reports[1]["records"]) == 6
    assert len(log.read_text().splitlines()) == 1 + 6
    # run again once everything is finished: no image is read or written, nothing changes
    reads = []
    monkeypatch.setattr(protect_lib, "read_parts", lambda *a, **k: reads.append(a) or [])
    written.clear()
    assert main(args("resumed")) == 0
    assert "resuming: 6 of 6 images" in capsys.readouterr().out
    assert reads == [] and written == []
    assert tree_digest(str(resumed / "images")) == tree_digest(str(straight / "images"))


def test_protect_refuses_to_mix_two_protections_in_one_folder(run, capsys):
    out = str(run["base"] / "mixed")
    base = ["protect", "--workdir", run["workdir"], "--manifest", run["manifest"],
            "--out", out, "--config", run["config"]]
    assert main(base) == 0
    before = tree_digest(out)
    capsys.readouterr()
    assert main(base + ["--set", "perturb.epsilon=0.5"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {out} holds a protection made with other settings "
                           f"(config.perturb.epsilon differ)"), line
    assert tree_digest(out) == before


@pytest.mark.parametrize("command", ["cues", "protect"])
def test_a_missing_image_is_refused_before_any_model_or_output(run, capsys, tmp_path, command):
    """An image missing half-way ended the command after its models had loaded, with its
    record (cues.json) or an empty --out left behind."""
    rows = read_manifest(run["manifest"])
    test = [r for r in rows if r.split == "test"]
    gone = dataclasses.replace(test[1], path=str(tmp_path / "gone.png"))
    manifest = str(tmp_path / "gone.csv")
    write_manifest([test[0], gone] + test[2:], manifest)
    capsys.readouterr()
    assert main([command, "--workdir", run["workdir"], "--manifest", manifest,
                 "--out", str(tmp_path / "out"), "--config", run["config"]]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {manifest}: line 3 (image_id={gone.image_id!r}): {tmp_path / 'gone.png'}: "
        "no such file or folder"]
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("command", ["protect", "cues"])
def test_an_unreadable_image_leaves_no_empty_output_folder(run, capsys, tmp_path, command):
    """An image that is there but cannot be read is met when it is read; --out is made by
    the first file written, so the failed run leaves nothing (it left an empty folder, and
    cues its cues.json: it now reads every image before writing)."""
    rows = read_manifest(run["manifest"])
    test = [r for r in rows if r.split == "test"]
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    manifest = str(tmp_path / "junk.csv")
    write_manifest([dataclasses.replace(test[0], path=str(junk))] + test[1:], manifest)
    capsys.readouterr()
    assert main([command, "--workdir", run["workdir"], "--manifest", manifest,
                 "--out", str(tmp_path / "out"), "--config", run["config"]]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith(f"error: {manifest}: line 2 ") and "cannot read image file" in line
    assert not os.path.exists(tmp_path / "out")


def test_a_member_trained_reading_otherwise_is_refused_before_any_model(run, capsys):
    """Every member is fed the protecting run's input: a member whose own config reads the
    X-rays through a value window (the protecting run reads them by /255) would be fed
    pixels it never saw. Refused, naming it, the modality and the settings; nothing
    written."""
    from tests.history_workdir import make_workdir
    base = run["base"]
    experiment = load_config(load_config(run["config"]).experiment)
    experiment.data.modalities.xray.value_window = (0.0, 200.0)
    member = make_workdir(str(base / "member_windowed"), experiment, seed=3)
    out = base / "refused_member"
    capsys.readouterr()
    assert main(["protect", "--workdir", run["workdir"], "--manifest", run["manifest"],
                 "--out", str(out), "--config", f"{run['config']}:transfer={member}"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: ensemble member {member} was trained reading xray images with "
        "value_window=(0.0, 200.0), the protecting run with value_window=None; every model "
        "is fed the protecting run's input, so it would be fed pixels it never saw: name "
        "models trained with the same data settings"]
    assert not out.exists()


def test_a_run_read_with_a_config_that_reads_otherwise_is_refused(run, capsys, tmp_path):
    """--experiment naming a config whose X-ray reading is not the one the run was trained
    with (its config.json): the model would be fed pixels it never saw. Refused before any
    model is read; cues too."""
    experiment = load_config(load_config(run["config"]).experiment)
    experiment.data.modalities.xray.value_window = (0.0, 200.0)
    other = tmp_path / "other_reading.json"
    other.write_text(json.dumps(experiment.to_dict()))
    for command in ("protect", "cues"):
        capsys.readouterr()
        assert main([command, "--workdir", run["workdir"], "--manifest", run["manifest"],
                     "--out", str(tmp_path / command), "--config", run["config"],
                     "--experiment", str(other)]) == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == (
            f"error: --workdir {run['workdir']} was trained reading xray images with "
            f"value_window=None, the experiment config it is read with ({other}) with "
            "value_window=(0.0, 200.0); name the config it was trained with (--experiment "
            "FILE[:ARG]), or none to read it with its own config.json")
        assert not (tmp_path / command).exists()


def test_a_member_that_is_not_there_is_not_warned_about_as_unchecked(tmp_path):
    """A missing transfer= member was first warned about as carrying no training config,
    then refused by the loader: the warning only misled."""
    from mami_jax.apps.privacy.member_reading import refuse_other_readings
    from mami_jax.config_files import load_config
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = load_config(os.path.join(repo, "configs", "all.py:runlocal")).data
    assert refuse_other_readings({str(tmp_path / "nowhere"): {"xray"}}, data) == []
    here = tmp_path / "model.pth"
    here.write_bytes(b"")
    assert refuse_other_readings({str(here): {"xray"}}, data) == [str(here)]
