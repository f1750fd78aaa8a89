"""``python -m mami_jax.main``: bad input is one ``error:`` line (no traceback), and long
work shows progress.

The audit's cases: ``--workdir`` an existing file ended in a NotADirectoryError traceback;
a ``--config`` file that cannot be loaded (a syntax error, null bytes, ``get_config``
returning no ConfigDict) in a 50-line one; ``--mode=embed`` and ``--mode=eval`` worked for
minutes without a word; an image missing on manifest line N was ``manifest row N-2``.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mami_jax.config_files import load_config
from tests.history_workdir import make_workdir, write_config, write_xray_archive
from tests.one_device import without_device_count

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=without_device_count(os.environ.get("XLA_FLAGS", "")))


def main(*argv, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "mami_jax.main", *map(str, argv)], cwd=cwd,
                          capture_output=True, text=True, env=ENV, timeout=300)


def only_error_line(proc) -> str:
    """The one ``error:`` line of a failed run (anything else on stderr is log lines)."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == errors[0]
    return errors[0]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_workdir_that_is_a_file_is_one_error_line(tmp_path, mode):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    proc = main("--config=configs/all.py:runlocal", f"--workdir={afile}", f"--mode={mode}")
    assert proc.returncode == 1
    assert only_error_line(proc) == f"error: --workdir {afile}: is a file, not a folder"
    proc = main("--config=configs/all.py:runlocal", f"--workdir={afile / 'run'}", f"--mode={mode}")
    assert proc.returncode == 1 and only_error_line(proc) == (
        f"error: --workdir {afile / 'run'}: {afile} is a file, not a folder")
    assert afile.read_text() == "mine" and os.listdir(tmp_path) == ["afile"]
    proc = main("--config=configs/all.py:runlocal", "--workdir=", f"--mode={mode}", cwd=tmp_path)
    assert proc.returncode == 1 and only_error_line(proc) == (
        "error: --workdir: an empty path; give the run's folder")    # not the current folder
    assert os.listdir(tmp_path) == ["afile"]


CONFIGS = {
    "syntax.py": (b"import ml_collections\n\ndef get_config(arg=None):\n    return dict(a=(1\n",
                  "line 4: '(' was never closed"),
    "nulls.py": (b"x = 1\x00\n", "not Python source (source code string cannot contain null bytes)"),
    "number.py": (b"def get_config(arg=None):\n    return 5\n",
                  "get_config() returned int, not an ml_collections.ConfigDict"),
    "plain_dict.py": (b"def get_config(arg=None):\n    return {'seed': 0}\n",
                      "get_config() returned dict, not an ml_collections.ConfigDict"),
    "nothing.py": (b"def get_config(arg=None):\n    pass\n",
                   "get_config() returned None, not an ml_collections.ConfigDict"),
    "raises.py": (b"def get_config(arg=None):\n    x = 1\n    raise RuntimeError('no GPU here')\n",
                  "line 3: RuntimeError: no GPU here"),
    "imports.py": (b"import no_such_module_anywhere\n",
                   "line 1: ModuleNotFoundError: No module named 'no_such_module_anywhere'"),
    # Not a Python file at all: the flag runs it whatever its name.
    "manifest.csv": (b"image_id,patient_id\nA,P\n",
                     "line 1: NameError: name 'image_id' is not defined"),
    "notes.cfg": (b"x =\n", "line 1: invalid syntax"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_config_file_that_cannot_be_loaded_is_one_error_line(tmp_path, name):
    source, problem = CONFIGS[name]
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / name).write_bytes(source)
    proc = main(f"--config=configs/{name}", f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"error: configs/{name}: {problem}\n"
    assert not (tmp_path / "w").exists()


def test_an_unknown_key_of_a_json_config_names_the_users_file_alone(tmp_path):
    """A run's config.json is loaded through the package's own loader file, whose path
    led the message ('.../mami_jax/json_config_file.py:.../config.json has no key')."""
    from mami_jax.config_files import load_config
    (tmp_path / "c.json").write_text(
        load_config(os.path.join(REPO, "configs", "all.py:runlocal")).to_json_best_effort())
    proc = main(f"--config={tmp_path / 'c.json'}", "--config.train.totl_steps=3",
                f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 2
    assert proc.stderr == (f"error: --config.train.totl_steps: {tmp_path / 'c.json'} has no key "
                           "'train.totl_steps'\n")


def test_a_file_without_get_config_and_a_stray_argument_are_one_error_line(tmp_path):
    """A Python file that defines no ``get_config`` ended in a traceback raised while the
    error was being named; a stray word printed absl's whole usage text, status 1."""
    (tmp_path / "plain.py").write_text("x = 1\n")
    proc = main("--config=plain.py", f"--workdir={tmp_path / 'w'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "error: config file 'plain.py' defines no get_config(arg)\n"
    proc = main("--config=configs/all.py:runlocal", f"--workdir={tmp_path / 'w'}", "extra")
    assert proc.returncode == 2
    assert proc.stderr == ("error: unexpected arguments: extra (every setting is a flag: "
                           "--config.KEY=VALUE; see --help)\n")
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run (random parameters) over 8 X-ray patients, 5 of them in test."""
    tmp = tmp_path_factory.mktemp("main")
    splits = {f"P{i}": s for i, s in enumerate(["train"] * 3 + ["test"] * 5)}
    manifest = write_xray_archive(str(tmp / "xr"), splits)
    config_file = write_config(str(tmp))
    config = load_config(config_file)
    with config.unlocked():
        config.data.manifest = manifest
    workdir = make_workdir(str(tmp / "run"), config, seed=3, step=7)
    return dict(workdir=workdir, config=config_file, manifest=manifest)


def bar_end(stderr: str, label: str) -> str:
    """The last state of the progress bar ``label`` on stderr."""
    states = [s for s in stderr.replace("\r", "\n").splitlines() if s.startswith(label + ":")]
    assert states, stderr[-3000:]
    return states[-1]


def test_embed_and_eval_show_a_progress_bar(run):
    common = [f"--workdir={run['workdir']}", f"--config={run['config']}",
              f"--config.data.manifest={run['manifest']}"]
    proc = main(*common, "--mode=embed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = bar_end(proc.stderr, "embedding")
    assert last.startswith("embedding: 100%|") and "| 24/24 [" in last, last
    proc = main(*common, "--mode=eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = bar_end(proc.stderr, "evaluating test")
    assert last.startswith("evaluating test: 100%|") and "| 15/15 [" in last, last
    assert proc.stderr.count("evaluating test: 100%|") == 1     # one bar, one final line
    # embed checks its batch size as eval does (0 ended in range() after the data was read)
    proc = main(*common, "--mode=embed", "--config.eval.batch_size=0")
    assert proc.returncode == 1 and only_error_line(proc) == (
        "error: eval.batch_size=0: expected a whole number >= 1"), proc.stderr[-2000:]


def manifest_missing(run, tmp_path, split: str) -> tuple[str, int, str, str]:
    """A copy of the run's manifest, paths made absolute, whose first ``split`` row names
    an image that is not there: (copy, its line, that row's image id, the missing path)."""
    lines = open(run["manifest"]).read().splitlines()
    number = next(n for n, line in enumerate(lines, start=1) if line.endswith("," + split))
    base = os.path.dirname(run["manifest"])
    absolute = [lines[0]] + [",".join(f.split(",")[:7] + [os.path.join(base, f.split(",")[7])]
                                      + f.split(",")[8:]) for f in lines[1:]]
    gone = str(tmp_path / "gone.png")
    fields = absolute[number - 1].split(",")
    fields[7] = gone
    absolute[number - 1] = ",".join(fields)
    copy = tmp_path / "manifest.csv"
    copy.write_text("\n".join(absolute) + "\n")
    return str(copy), number, fields[0], gone


@pytest.mark.parametrize("mode", ["eval", "embed"])
def test_a_missing_image_is_named_by_the_manifest_file_and_line(run, tmp_path, mode):
    copy, number, image_id, gone = manifest_missing(run, tmp_path, "test")
    before = sorted(os.walk(run["workdir"]))
    proc = main(f"--workdir={run['workdir']}", f"--config={run['config']}",
                f"--config.data.manifest={copy}", f"--mode={mode}")
    assert proc.returncode == 1
    purpose = "evaluation" if mode == "eval" else "embedding"
    assert only_error_line(proc) == (
        f"error: {copy}: line {number} (image_id={image_id!r}): {gone}: no such file or folder; "
        f"{purpose} can skip missing and unreadable images, counted: "
        "--config.data.skip_bad_images=True")
    assert sorted(os.walk(run["workdir"])) == before       # nothing begun


def test_a_missing_training_image_is_refused_before_the_run_starts(run, tmp_path):
    """The sampler met it only when it drew it: a 10-step run over the phantoms with one
    training image gone trained, evaluated and ended well; a long run stopped hours in."""
    copy, number, image_id, gone = manifest_missing(run, tmp_path, "train")
    assert refused_before_the_workdir(
        tmp_path / "fresh", f"--config.data.manifest={copy}", "--config.train.total_steps=1",
        config=f"--config={run['config']}") == (
        f"error: {copy}: line {number} (image_id={image_id!r}): {gone}: no such file or folder; "
        "training can skip missing and unreadable images, counted: "
        "--config.data.skip_bad_images=True")


def refused_before_the_workdir(workdir, *flags,
                               config="--config=configs/all.py:runlocal") -> str:
    """The one error line of a training run refused before it made ``workdir``."""
    proc = main(config, f"--workdir={workdir}", *flags)
    assert proc.returncode == 1
    line = only_error_line(proc)
    assert not os.path.exists(workdir)
    return line


def test_one_image_a_patient_under_the_triplet_is_one_error_line_before_the_workdir(tmp_path):
    """K=1 made the triplet 0 at every step: the run trained on the identity loss alone."""
    assert refused_before_the_workdir(tmp_path / "run", "--config.data.images_per_patient=1") == (
        "error: data.patients_per_batch=8, data.images_per_patient=1: loss term 'triplet' "
        "needs at least 2 patients of 2 images in a batch and would be 0 at every step; raise "
        "them, or drop the term (--config.loss.terms.triplet=0)")


def test_a_bad_augmentation_setting_is_one_error_line_before_the_workdir(tmp_path):
    assert refused_before_the_workdir(tmp_path / "run", "--config.data.crop_ratio=2") == (
        "error: data.crop_ratio=(2.0,): expected (low, high) with 0 < low <= high")


def test_a_manifest_that_is_a_folder_or_under_a_file_is_one_error_line(run, tmp_path):
    """Both ended in an IsADirectoryError / NotADirectoryError traceback."""
    assert refused_before_the_workdir(
        tmp_path / "fresh", f"--config.data.manifest={tmp_path}",
        config=f"--config={run['config']}") == (
        f"error: manifest {tmp_path}: is a folder, not a manifest file")
    under = os.path.join(run["manifest"], "x.csv")
    line = refused_before_the_workdir(tmp_path / "fresh", f"--config.data.manifest={under}",
                                      config=f"--config={run['config']}")
    assert line.startswith("error: ") and under in line and "Not a directory" in line, line


def test_a_manifest_without_evaluation_rows_is_refused_before_the_run(run, tmp_path):
    """It trained every step and then stopped at the final evaluation: "no rows in split
    'test' to evaluate"."""
    manifest = write_xray_archive(str(tmp_path / "xr"), {f"P{i}": "train" for i in range(4)})
    assert refused_before_the_workdir(
        tmp_path / "fresh", f"--config.data.manifest={manifest}",
        config=f"--config={run['config']}") == (
        f"error: {manifest}: no rows in split 'test' to evaluate (the rows' splits: train 12): "
        "give some patients split 'test', or evaluate another split (--config.eval.split); or "
        "train without evaluating: --config.train.eval_at_start=False "
        "--config.train.eval_at_end=False --config.train.eval_every=0")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_an_evaluation_split_of_one_visit_a_patient_is_refused_before_the_work(
        run, tmp_path, mode):
    """Training trained every step, ``--mode=eval`` embedded the whole split, and both then
    stopped with "verification needs both kinds of pairs: 0 same-patient"."""
    manifest = write_xray_archive(str(tmp_path / "xr"), {f"P{i}": "test" for i in range(5)},
                                  visits=1)
    workdir = tmp_path / "fresh" if mode == "train" else run["workdir"]
    before = sorted(os.walk(run["workdir"]))
    proc = main(f"--workdir={workdir}", f"--config={run['config']}",
                f"--config.data.manifest={manifest}", f"--mode={mode}")
    assert proc.returncode == 1
    assert only_error_line(proc).startswith(
        f"error: {manifest}: split 'test' has 5 images of 5 patients, but no patient has images "
        "of two studies (visits) in one dataset and modality: ")
    assert not (tmp_path / "fresh").exists()
    assert sorted(os.walk(run["workdir"])) == before


@pytest.mark.parametrize("mode", ["eval", "embed"])
def test_a_missing_image_is_left_out_when_skipping_is_asked_for(run, tmp_path, mode):
    """The error line above names the switch; with it, both modes embedded every other
    image and then stopped with a RuntimeError traceback ("1 rows were not embedded")."""
    copy, number, image_id, _ = manifest_missing(run, tmp_path, "test")
    workdir = tmp_path / "w"
    shutil.copytree(run["workdir"], workdir)
    proc = main(f"--workdir={workdir}", f"--config={run['config']}",
                f"--config.data.manifest={copy}", f"--mode={mode}",
                "--config.data.skip_bad_images=True")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = len(open(copy).read().splitlines()) - 1
    if mode == "embed":
        saved = np.load(workdir / "embeddings" / "step_7.npz")
        assert image_id not in saved["image_id"].tolist()
        assert saved["embedding"].shape[0] == len(saved["image_id"]) == rows - 1
        assert np.isfinite(saved["embedding"]).all()
        left_out = f"{workdir}/embeddings/step_7.npz"
    else:
        metrics = json.load(open(workdir / "eval" / "step_7" / "metrics.json"))
        assert metrics["toy/xray/reid"]["num_queries"] == 15 - 1    # 5 test patients x 3
        left_out = "the evaluation"
    assert (f"1 of the {rows if mode == 'embed' else 15} images were skipped as unreadable or "
            f"missing (data.skip_bad_images) and are left out of {left_out}: {copy}: line "
            f"{number} (image_id={image_id!r})") in proc.stderr
