"""Every shell command of README.md is run here, or named with the test that runs it, or
listed as not run with the reason.

The README's fenced shell blocks (```bash, ```sh, ```shell, ```console and unlabelled
ones; the ```python blocks are API sketches, not commands) are parsed into commands:
backslash continuations joined, ``# comments`` dropped, ``a && b`` split into two
commands, whitespace normalised. Each command must appear in exactly one of

- ``RUN``: run in README order inside a scratch folder (``configs`` and ``benchmarks``
  linked in, so the README's relative paths work), with the README's placeholders
  (``DIR``, ``RUN``, ``FILE``, ``/tmp/mami_runlocal`` ...) replaced by paths in that folder
  and, where the README's full size would take minutes, arguments APPENDED after the
  README's own (later values win: a smaller ``--patients``, ``--config.train.total_steps=1``).
  The command's own words are never rewritten. ``[optional]`` groups are each kept or
  dropped as the entry says. ``python -m mami_jax.main`` and ``benchmarks/*.py`` run in a
  subprocess; the other ``python -m`` commands call their module's ``main(argv)`` with the
  same argv (the interpreter's start-up is all that differs), which saves the start-up cost;
- ``TESTED_ELSEWHERE``: a named test that runs the command (its module and every flag
  and sub-command word must be literals of that test file, and the test must exist);
- ``NOT_RUN``: install commands, the test suite itself, and accelerator jobs that need
  downloaded weights, each with its reason.

A README command in none of them, an entry no longer in the README, or a mapped test that
no longer exists fails ``test_every_readme_command_is_covered``.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from tests.one_device import without_device_count


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
SHELLS = ("bash", "sh", "shell", "console", "")

# ------------------------------------------------------------------------------------------
# The README's commands


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced blocks whose info string is a shell (or empty)."""
    blocks, body, kind = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if body is None:
                body, kind = [], line[3:].strip()
            else:
                if kind in SHELLS:
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    assert body is None, "README.md: a fenced block is not closed"
    return blocks


def readme_commands(text: str) -> list[str]:
    """The commands of the fenced shell blocks of ``text``, in order (see module doc)."""
    commands = []
    for body in shell_blocks(text):
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            tokens = shlex.split(line, comments=True)
            current: list[str] = []
            for tok in tokens + ["&&"]:
                if tok == "&&":
                    if current:
                        commands.append(shlex.join(current))
                    current = []
                else:
                    current.append(tok)
    return commands


def optional_groups(tokens: list[str]) -> tuple[list[str], list[list[str]]]:
    """Splits ``[--a 1] [--b]`` groups out of ``tokens``: (fixed tokens, groups)."""
    fixed, groups, group = [], [], None
    for tok in tokens:
        if group is None and tok.startswith("["):
            group, tok = [], tok[1:]
        if group is not None:
            end = tok.endswith("]")
            if tok.rstrip("]"):
                group.append(tok.rstrip("]"))
            if end:
                groups.append(group)
                group = None
        else:
            fixed.append(tok)
    assert group is None, f"unclosed [ in {shlex.join(tokens)}"
    return fixed, groups


# ------------------------------------------------------------------------------------------
# How each command is covered

MAIN_RUNLOCAL = "python -m mami_jax.main --config=configs/all.py:runlocal"
INSTALL = "installs packages (what the tests run in)"
PAPER = ("the paper's recipe: ViT-B/16 at 224 px initialised from the CLIP weights file, "
         "which is downloaded by hand; an accelerator job (its code path is the runlocal "
         "commands', which are run)")

NOT_RUN = {
    "pip install -e .": INSTALL,
    "pip install torch==2.14.1 torchvision==0.29.1 -e '.[torch,teachers,teachers-timm,apps,slides,test]'":
        INSTALL,
    "python -m pytest tests -q -n 2": "the test suite itself (.ci/run runs it)",
    "python -m mami_jax.main --config=configs/all.py --workdir=DIR": PAPER,
    "python -m mami_jax.main --config=configs/xray.py --workdir=DIR": PAPER + " (X-ray only)",
    "python -m mami_jax.main --config=configs/all.py --workdir=DIR "
    "--config.data.manifest=/data/manifest.csv --config.train.total_steps=1000": PAPER,
    "python -m mami_jax.main --config=configs/all.py:teachers=FEATURES --workdir=DIR":
        "the paper's recipe with the seven medical teachers' features, whose weights are "
        "downloaded by hand; an accelerator job",
}

TESTED_ELSEWHERE = {
    "python -m mami_jax.data.tile_slides --slides /data/tcga/slides --out /data/tcga/cut "
    "--mpp 0.5 --max-tiles 100":
        "tests/test_tile_slides.py::test_slides_become_tiles_of_tissue_at_the_asked_resolution",
    # The applications' commands, on a tiny trained run (read with the config it stored;
    # privacy's tests pass a privacy config of fewer steps).
    "python -m mami_jax.apps.history index --workdir RUN --manifest FILE --out INDEX "
    "'[--labels' 'FILE]'": "tests/test_history_cli.py::test_a_run_is_read_with_the_config_it_stored",
    "python -m mami_jax.apps.history add --index INDEX --manifest MORE.csv '[--labels' 'FILE]'":
        "tests/test_history_cli.py::test_the_archive_records_diagnoses_and_query_shows_them",
    "python -m mami_jax.apps.history query --index INDEX --image PATH --k 5 "
    "'[--with' 'ct=CT_OF_THE_SAME_VISIT]'": "tests/test_history_cli.py::test_index_query_add",
    "python -m mami_jax.apps.history train --workdir RUN --manifest FILE --out DIR":
        "tests/test_history_cli.py::test_train_and_eval_write_metrics",
    "python -m mami_jax.apps.privacy cues --workdir RUN --manifest FILE --out DIR":
        "tests/test_privacy_cli.py::test_cues_read_the_run_with_the_config_it_stored",
    "python -m mami_jax.apps.privacy protect --workdir RUN --manifest FILE --out DIR "
    "--split test": "tests/test_privacy_cli.py::test_protect_writes_a_manifest_that_keeps_its_rows",
    "python -m mami_jax.apps.privacy evaluate --original FILE --protected DIR/manifest.csv "
    "--model protecting=RUN --model other=OTHER_RUN --labels LABELS.csv --probe-model RUN "
    "--out EVAL": "tests/test_privacy_history_utility.py::"
                  "test_privacy_eval_probe_reads_the_models_features",
    shlex.join(["python", "-m", "mami_jax.apps.privacy", "protect", "--workdir", "FT_A1",
                "--manifest", "FILE", "--split", "test", "--out", "DIR", "--config",
                "configs/privacy.py:transfer=FT_B1+SCRATCH_1+SCRATCH_2,"
                "xray_transfer=FT_A2+FT_B1+FT_B2+BACKBONE_A.pth+BACKBONE_B.pth",
                "--set", "perturb.modality_epsilon={'fundus': 0.0185, 'ct': 0.025}"]):
        "tests/test_privacy_cli.py::test_xray_transfer_gives_the_xrays_their_own_members",
    # A TorchScript CLIP archive of the released size is a download; the test builds a tiny
    # one and runs the same sub-command and flags (with --model-config for its size).
    "python -m mami_jax.convert import-clip --source ViT-B-16.pt --allow-torchscript "
    "--out CKPT_DIR": "tests/test_convert_cli.py::test_import_clip_from_hf_directory_and_torchscript",
}

#: README placeholder -> path in the scratch folder (``{ws}``), for every RUN command.
PLACEHOLDERS = {
    "/tmp/mami_runlocal": "{ws}/run", "RUN": "{ws}/run", "WORKDIR": "{ws}/run",
    "/tmp/phantoms": "{ws}/phantoms", "PH/manifest.csv": "{ws}/phantoms/manifest.csv",
    "phantoms.png": "{ws}/preview.png", "FEATURES": "{ws}/features", "ZERO_SHOT": "{ws}/zero_shot",
    "mami.pth": "{ws}/mami.pth", "released.pth": "{ws}/mami.pth", "CKPT_DIR": "{ws}/imported",
    "/data/nih": "{ws}/nih", "/data/nih/manifest.csv": "{ws}/nih/manifest.csv",
}

#: Small-size overrides of the runlocal main job (the sizes of tests/test_train.py): a tiny
#: model, the phantoms written by the README's phantoms command, one step (each batch shape
#: compiles its own step: one step, one compilation).
TINY_MODEL = dict(width=32, depth=1, num_heads=4, patch_size=8, image_size=32, rank=4,
                  num_codes=4, generator_hidden="(24,16)", qkv_groups=4, mlp_groups=8,
                  adapter_width=8)
MAIN_SMALL = ([f"--config.model.{k}={v}" for k, v in TINY_MODEL.items()] +
              ["--config.data.manifest={ws}/phantoms/manifest.csv",
               "--config.data.patients_per_batch=4", "--config.data.images_per_patient=2",
               "--config.train.total_steps=1", "--config.train.log_every=1",
               "--config.train.eval_at_start=False", "--config.eval.batch_size=16"])

#: The align run reads the features the README's extraction command stored (test split
#: only, so the training images' are missing: masked and counted) instead of extracting
#: both teachers over every phantom image first.
#: Its evaluation is the main job's, already run above: skipped.
ALIGN_SMALL = MAIN_SMALL + ["--config.data.teacher_features.dir={ws}/features",
                            "--config.data.teacher_features.skip_missing=True",
                            "--config.train.eval_at_end=False"]

#: (README command, {"append": args after the README's, "placeholders": per-command values,
#:  "keep": the [optional] groups kept}), in the order they run.
RUN = [
    ("python -m mami_jax.phantoms --out /tmp/phantoms --patients 160 --image-size 64 "
     "--pathology-field 2", {"append": ["--patients", "20", "--image-size", "32", "--slices", "4", "--workers", "1"]}),
    ("python -m mami_jax.phantoms --preview phantoms.png",
     {"append": ["--preview-rows", "1", "--visits", "2", "--image-size", "32"]}),
    ("python benchmarks/phantom_baselines.py --patients 160 --image-size 64 --pathology-field 2",
     {"append": ["--patients", "12", "--visits", "3"]}),
    ("python -m mami_jax.data.build_manifest --dataset nih_chestxray14 --root /data/nih "
     "--out /data/nih/manifest.csv", {}),
    ("python -m mami_jax.data.preview_manifest --manifest /data/nih/manifest.csv "
     "--out preview.png", {"placeholders": {"preview.png": "{ws}/nih_preview.png"}}),
    ("python -m mami_jax.data.check_images --manifest /data/nih/manifest.csv --workers 8 "
     "--clean /data/nih/readable.csv",
     {"placeholders": {"/data/nih/readable.csv": "{ws}/nih/readable.csv"},
      "append": ["--workers", "1"]}),
    (MAIN_RUNLOCAL + " --workdir=/tmp/mami_runlocal", {"append": MAIN_SMALL}),
    (MAIN_RUNLOCAL + " --workdir=DIR", {"placeholders": {"DIR": "{ws}/run"},
                                        "same_as": MAIN_RUNLOCAL + " --workdir=/tmp/mami_runlocal"}),
    # The trained run again, read back: the same model config (the appended tiny sizes).
    (MAIN_RUNLOCAL + " --workdir=DIR --mode=eval", {"placeholders": {"DIR": "{ws}/run"},
                                                    "append": MAIN_SMALL}),
    (MAIN_RUNLOCAL + " --workdir=DIR --mode=embed", {"placeholders": {"DIR": "{ws}/run"},
                                                     "append": MAIN_SMALL}),
    ("python -m mami_jax.convert export-torch --checkpoint WORKDIR --out mami.pth",
     {"append": ["--allow-non-released-shift"]}),
    ("python -m mami_jax.convert import-official --pth released.pth --out CKPT_DIR", {}),
    ("python -m teachers.extract --manifest PH/manifest.csv --teachers efficientnet_lite0,anatomy "
     "--out FEATURES '[--shard' 0 --num-shards '4]' '[--split' 'test]'",
     {"keep": [["--split", "test"]], "append": ["--batch-size", "64"]}),
    ("python -m mami_jax.evaluate.features --features FEATURES --manifest PH/manifest.csv "
     "--out ZERO_SHOT", {}),
    (MAIN_RUNLOCAL + ",align --workdir=DIR",
     {"placeholders": {"DIR": "{ws}/align"},
      "append": ALIGN_SMALL}),
]
RUN_COMMANDS = [c for c, _ in RUN]


# ------------------------------------------------------------------------------------------
# Coverage: every README command is in exactly one table


def _string_literals(path: str) -> set[str]:
    tree = ast.parse(open(path, encoding="utf-8").read())
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str)}


def _words_a_test_must_pass(command: str) -> tuple[str, list[str]]:
    """(module, [sub-command and flag words]) of a ``python -m MODULE ...`` command."""
    fixed, groups = optional_groups(shlex.split(command))
    tokens = fixed + [t for g in groups for t in g]
    assert tokens[:2] == ["python", "-m"], command
    module, rest = tokens[2], tokens[3:]
    words = [t.split("=")[0] for t in rest if t.startswith("-")]
    if rest and not rest[0].startswith("-"):
        words.insert(0, rest[0])
    return module, words


def coverage_problems(commands: list[str], tested_elsewhere: dict = TESTED_ELSEWHERE) -> list[str]:
    """What is wrong with the tables for these README commands (empty: all covered)."""
    problems = []
    tables = [set(NOT_RUN), set(tested_elsewhere), set(RUN_COMMANDS)]
    if len(RUN_COMMANDS) != len(set(RUN_COMMANDS)) or any(
            a & b for i, a in enumerate(tables) for b in tables[i + 1:]):
        problems.append("a command is listed twice")
    covered = set().union(*tables)
    problems += [f"README command that no test runs (add it to RUN, TESTED_ELSEWHERE or "
                 f"NOT_RUN in tests/test_readme_commands.py): {c}"
                 for c in commands if c not in covered]
    problems += [f"entry no longer in README.md: {c}" for c in sorted(covered - set(commands))]
    for command, target in tested_elsewhere.items():
        path, _, name = target.partition("::")
        full = os.path.join(REPO, path)
        if not os.path.isfile(full):
            problems.append(f"{command}: {path} does not exist")
            continue
        source = open(full, encoding="utf-8").read()
        if not re.search(rf"^def {re.escape(name)}\(", source, re.M):
            problems.append(f"{command}: {target} does not exist")
            continue
        module, words = _words_a_test_must_pass(command)
        literals = _string_literals(full)
        missing = [w for w in words if not any(lit == w or lit.startswith(w + "=")
                                               for lit in literals)]
        if module not in source or missing:
            problems.append(f"{command}: {target} never passes {missing or module}")
    return problems


def test_every_readme_command_is_covered():
    commands = readme_commands(open(README, encoding="utf-8").read())
    assert len(commands) > 20, "the README's shell blocks were not found"
    assert coverage_problems(commands) == []


def test_coverage_fails_for_a_new_command_a_dropped_one_and_a_missing_test():
    commands = readme_commands(open(README, encoding="utf-8").read())
    new = "python -m mami_jax.something --new"
    assert coverage_problems(commands + [new]) == [
        "README command that no test runs (add it to RUN, TESTED_ELSEWHERE or NOT_RUN in "
        f"tests/test_readme_commands.py): {new}"]
    assert coverage_problems([c for c in commands if c != "pip install -e ."]) == [
        "entry no longer in README.md: pip install -e ."]
    command, target = next(iter(TESTED_ELSEWHERE.items()))
    gone = {**TESTED_ELSEWHERE, command: target + "_renamed"}
    assert coverage_problems(commands, gone) == [f"{command}: {target}_renamed does not exist"]
    # The mapped test must pass the command's flags: one it does not pass is reported.
    extra = {command + " --no-such-flag": target}
    problems = coverage_problems(commands + [command + " --no-such-flag"],
                                 {**TESTED_ELSEWHERE, **extra})
    assert problems == [f"{command} --no-such-flag: {target} never passes ['--no-such-flag']"]


def test_readme_parsing():
    text = ("x\n```bash\npip install a && python -m m --x=1 \\\n    --y 2   # note\n```\n"
            "```python\nimport m\n```\n```\nm [--a 1] [--b]\n```\n")
    assert readme_commands(text) == ["pip install a", "python -m m --x=1 --y 2",
                                     "m '[--a' '1]' '[--b]'"]
    assert optional_groups(shlex.split("m '[--a' '1]' '[--b]'")) == (["m"], [["--a", "1"], ["--b"]])


# ------------------------------------------------------------------------------------------
# Running them


def _argv(command: str, spec: dict, ws: str, values: dict) -> list[str]:
    fixed, groups = optional_groups(shlex.split(command))
    keep = spec.get("keep", [])
    assert all(k in groups for k in keep), (command, keep, groups)
    tokens = fixed + [t for g in groups if g in keep for t in g]
    places = {**PLACEHOLDERS, **spec.get("placeholders", {})}
    fill = {k: v.format(ws=ws, **values) for k, v in places.items()}

    def sub(tok):
        if tok in fill:
            return fill[tok]
        flag, eq, value = tok.partition("=")
        if eq and value in fill:
            return f"{flag}={fill[value]}"
        return tok

    return [sub(t) for t in tokens] + [a.format(ws=ws) for a in spec.get("append", [])]


def _fake_nih(root: str) -> None:
    """The NIH ChestX-ray14 layout with two patients (empty image files: the builder
    never decodes)."""
    os.makedirs(os.path.join(root, "images_001", "images"))
    with open(os.path.join(root, "Data_Entry_2017.csv"), "w") as f:
        f.write("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
                "Patient Gender,View Position\n")
        for pid in (1, 2):
            for visit in (0, 1):
                name = f"{pid:08d}_{visit:03d}.png"
                f.write(f"{name},No Finding,{visit},{pid},50,F,PA\n")
                open(os.path.join(root, "images_001", "images", name), "wb").close()


def _run(argv: list[str], ws: str) -> str:
    """Runs one README command line; returns its stdout (fails with its stderr)."""
    if argv[:2] == ["python", "-m"] and argv[2] != "mami_jax.main":
        module = importlib.import_module(argv[2])
        if not hasattr(module, "main"):
            module = importlib.import_module(argv[2] + ".__main__")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = module.main(argv[3:])
        assert code == 0, f"{shlex.join(argv)} -> {code}:\n{err.getvalue()[-3000:]}"
        return out.getvalue()
    assert argv[0] == "python", argv
    # One CPU device, as a user's machine (tests/one_device.py), not conftest.py's eight.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p),
           "XLA_FLAGS": without_device_count(os.environ.get("XLA_FLAGS", ""))}
    proc = subprocess.run([sys.executable] + argv[1:], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{shlex.join(argv)}:\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _check(command: str, ws: str, out: str) -> None:
    """What each command promises, on disk or in its output."""
    from mami_jax.data.manifest import read_manifest
    if command.startswith("python -m mami_jax.phantoms --out"):
        rows = read_manifest(f"{ws}/phantoms/manifest.csv")
        assert len({r.patient_id for r in rows}) == 20   # the appended --patients won
        assert os.path.isfile(f"{ws}/phantoms/labels.csv")
    elif "--preview" in command:
        assert os.path.getsize(f"{ws}/preview.png") > 0
    elif "phantom_baselines" in command:
        assert "generated 12 patients x 3 visits" in out    # the appended size
        table = {line.split()[0] for line in out.splitlines() if line.strip()}
        assert {"xray", "ct", "fundus", "mri", "pathology"} <= table
    elif "build_manifest" in command:
        assert len(read_manifest(f"{ws}/nih/manifest.csv")) == 4
        # Its picture, where the fake dataset's empty image files are marked and listed.
        assert Image.open(f"{ws}/nih/manifest_preview.png").format == "PNG"
        assert "4 of them could not be read" in out
    elif "check_images" in command:
        # The fake dataset's image files are empty: none reads, and --clean leaves them out.
        assert "clean manifest: 0 rows (4 unreadable left out)" in out
    elif "preview_manifest" in command:
        assert Image.open(f"{ws}/nih_preview.png").format == "PNG"
        assert out.startswith(f"preview: 2 patients, 4 images -> {ws}/nih_preview.png\n")
    elif command.endswith("--mode=eval"):
        # The training's own evaluation of the same checkpoint was moved aside before: the
        # eval mode wrote its folder anew, with the same figures.
        again = json.load(open(f"{ws}/run/eval/step_1/metrics.json"))
        trained = json.load(open(f"{ws}/run/eval/step_1.training/metrics.json"))
        assert Image.open(f"{ws}/run/eval/step_1/retrieval.png").format == "PNG"
        assert set(again) == set(trained) and len(trained) >= 5
        for group, values in trained.items():
            for key, value in values.items():
                if isinstance(value, float):
                    assert abs(again[group][key] - value) < 1e-6, (group, key)
    elif command.endswith("--mode=embed"):
        from mami_jax.data.manifest import read_manifest as _rows
        emb = np.load(f"{ws}/run/embeddings/step_1.npz")
        ids = [r.image_id for r in _rows(f"{ws}/phantoms/manifest.csv")]
        assert list(emb["image_id"]) == ids and emb["embedding"].shape[0] == len(ids)
        assert np.all(np.isfinite(emb["embedding"]))
        assert Image.open(f"{ws}/run/embeddings/step_1.png").format == "PNG"   # their map
    elif command.startswith(MAIN_RUNLOCAL) and ",align" not in command:
        metrics = json.load(open(f"{ws}/run/eval/step_1/metrics.json"))
        assert {g.split("/")[1] for g in metrics} == {"xray", "ct", "fundus", "mri", "pathology"}
        assert "over 1 devices" in out        # the trainer's mesh line: one device
    elif "export-torch" in command:
        assert os.path.getsize(f"{ws}/mami.pth") > 0
    elif "import-official" in command:
        assert os.path.isdir(f"{ws}/imported")
    elif "teachers.extract" in command:
        index = json.load(open(f"{ws}/features/index.json"))
        test_rows = [r for r in read_manifest(f"{ws}/phantoms/manifest.csv") if r.split == "test"]
        assert index["records"] == len(test_rows)
    elif "evaluate.features" in command:
        summary = json.load(open(f"{ws}/zero_shot/zero_shot.json"))
        # The generator's hidden parameters identify every patient.
        assert all(v["rank1"] == 1.0 for v in summary["anatomy"].values())
    elif ",align" in command:
        assert "1" in os.listdir(f"{ws}/align/checkpoints")
        assert "train/align" in out
    else:
        raise AssertionError(f"no check for {command}")


def test_readme_commands_run(tmp_path, monkeypatch):
    ws = str(tmp_path)
    for name in ("configs", "benchmarks"):
        os.symlink(os.path.join(REPO, name), os.path.join(ws, name))
    _fake_nih(f"{ws}/nih")
    monkeypatch.chdir(ws)             # relative config paths and default outputs land here
    values = {}
    done = {}
    for command, spec in RUN:
        if "same_as" in spec:
            # The same command line once the placeholders are filled: it ran already.
            assert _argv(command, spec, ws, values) == done[spec["same_as"]]
            continue
        argv = _argv(command, spec, ws, values)
        if command.endswith("--mode=eval"):
            os.rename(f"{ws}/run/eval/step_1", f"{ws}/run/eval/step_1.training")
        start = time.perf_counter()
        out = _run(argv, ws)
        print(f"{time.perf_counter() - start:6.1f} s  {command}", flush=True)
        done[command] = argv[:len(argv) - len(spec.get("append", []))]
        _check(command, ws, out)
    assert sorted(done) == sorted(c for c, spec in RUN if "same_as" not in spec)
