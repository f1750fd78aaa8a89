"""Every command answers in the same statuses, so a script can tell a mistyped command from
bad data: 2 for a usage error (argparse's refusal, one ``error:`` line), 1 for any other
bad input (here a manifest whose header is not the project's), each with one ``error:``
line naming what is wrong. The history app, the teacher extractor and the zero-shot
scorer once answered bad data with 2."""

from __future__ import annotations

import importlib

import pytest

#: (module, argv with {bad} for the manifest and {tmp} for a scratch folder).
COMMANDS = [
    ("mami_jax.data.preview_manifest", ["--manifest", "{bad}", "--out", "{tmp}/p.png"]),
    ("mami_jax.data.check_images", ["--manifest", "{bad}"]),
    ("teachers.extract", ["--manifest", "{bad}", "--teachers", "efficientnet_lite0",
                          "--out", "{tmp}/features"]),
    ("mami_jax.evaluate.features", ["--features", "{tmp}/features", "--manifest", "{bad}",
                                    "--out", "{tmp}/scores"]),
    ("mami_jax.apps.history.__main__", ["index", "--workdir", "{tmp}/run", "--manifest",
                                        "{bad}", "--out", "{tmp}/index"]),
]


def _main(module):
    return importlib.import_module(module).main


@pytest.fixture
def bad_manifest(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("a,b,c\n1,2,3\n")
    return str(path)


@pytest.mark.parametrize("module,argv", COMMANDS, ids=[m for m, _ in COMMANDS])
def test_bad_data_is_status_1_and_one_line(module, argv, bad_manifest, tmp_path, capsys):
    argv = [a.format(bad=bad_manifest, tmp=tmp_path) for a in argv]
    assert _main(module)(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad_manifest}: header ['a', 'b', 'c']"), err
    assert open(bad_manifest).read() == "a,b,c\n1,2,3\n"


@pytest.mark.parametrize("module,argv", COMMANDS, ids=[m for m, _ in COMMANDS])
def test_usage_error_is_status_2_and_one_line(module, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        _main(module)(argv[:1] if module.endswith("history.__main__") else [])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "(see --help)" in err[0], err


def test_privacy_without_its_run_is_status_1(bad_manifest, tmp_path, capsys):
    """The privacy app reads the model before the manifest: a missing run is its bad input."""
    main = _main("mami_jax.apps.privacy.__main__")
    assert main(["cues", "--workdir", str(tmp_path / "run"), "--manifest", bad_manifest,
                 "--out", str(tmp_path / "cues")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --workdir {tmp_path}/run: no such file or folder"]
