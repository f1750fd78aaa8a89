"""``python -m mami_jax.phantoms``: bad arguments are one ``error:`` line (status 2), and
writing the benchmark or its preview shows a progress bar on stderr (long work used
to run without a word)."""

import subprocess
import sys

import pytest

from mami_jax.phantoms import generator, preview
from mami_jax.phantoms.__main__ import main as phantoms_cli


@pytest.mark.parametrize("argv, line", [
    (["--out", "d", "--patients", "abc"],
     "error: python -m mami_jax.phantoms: argument --patients: expected a whole number >= 1, "
     "got 'abc' (see --help)"),
    ([], "error: python -m mami_jax.phantoms: give exactly one of --out DIR or --preview FILE.png "
         "(see --help)"),
    (["--out", "d", "--preview", "p.png"],
     "error: python -m mami_jax.phantoms: give exactly one of --out DIR or --preview FILE.png "
     "(see --help)"),
    (["--out", "d", "--bogus"],
     "error: python -m mami_jax.phantoms: unrecognized arguments: --bogus (see --help)"),
])
def test_bad_arguments_are_one_error_line_with_status_2(argv, line, tmp_path):
    """argparse printed its usage block above a line that starts with the program name."""
    proc = subprocess.run([sys.executable, "-m", "mami_jax.phantoms", *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", line + "\n")
    assert list(tmp_path.iterdir()) == []


def test_writing_shows_a_progress_bar_over_the_series_on_stderr(tmp_path, capsys):
    series = sum(len(mods) for _, mods, _ in generator.plan(2, 1, 0))
    assert phantoms_cli(["--out", str(tmp_path / "ph"), "--patients", "2", "--visits", "1",
                         "--image-size", "32", "--slices", "1", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"wrote {tmp_path / 'ph' / 'manifest.csv'}\n"   # stdout: the result only
    last = captured.err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("phantoms: 100%|") and f"| {series}/{series} [" in last, captured.err


def test_progress_false_is_silent(tmp_path, capsys):
    generator.generate(str(tmp_path / "ph"), patients=2, visits=1, image_size=32, slices=1,
                       workers=1, progress=False)
    assert capsys.readouterr() == ("", "")


def test_an_image_size_past_the_limit_is_one_error_line(tmp_path, capsys):
    """--image-size 100000 was a traceback of numpy allocating 455 TiB for the CT phantom."""
    assert phantoms_cli(["--out", str(tmp_path / "ph"), "--patients", "1",
                         "--image-size", "100000"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: phantoms: image_size must be at most 1024, got 100000 (the CT phantom's memory "
        "grows with the cube of the size: about 0.7 GB a worker at 512, eight times that at "
        "1024)")
    assert not (tmp_path / "ph").exists()
    assert phantoms_cli(["--out", str(tmp_path / "ph"), "--slices", "100000"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: phantoms: slices must be at most 1024 (a long CT series), got 100000")


def test_a_preview_not_named_png_is_refused_and_the_file_it_names_kept(tmp_path, capsys):
    """``--preview manifest.csv`` (a slip for ``--out``) replaced the manifest with a
    picture."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image_id,patient_id\n")
    assert phantoms_cli(["--preview", str(manifest), "--preview-rows", "1", "--visits", "1",
                         "--image-size", "32"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: --preview {manifest}: the picture is a PNG; give a name ending in .png")
    assert manifest.read_text() == "image_id,patient_id\n"


def test_the_preview_shows_a_progress_bar_and_takes_the_default_workers(tmp_path, capsys,
                                                                         monkeypatch):
    """--preview rendered without a word and on one process whatever --workers' documented
    default (the CPUs, at most 4) said."""
    asked, real = [], generator.generate

    def generate(*args, **kwargs):
        asked.append(kwargs["workers"])
        return real(*args, **dict(kwargs, workers=1))      # one process: quick and the same output
    monkeypatch.setattr(generator, "generate", generate)
    png = tmp_path / "p.png"
    assert phantoms_cli(["--preview", str(png), "--preview-rows", "1", "--visits", "1",
                         "--image-size", "16", "--slices", "1"]) == 0
    assert asked == [None]                                  # generate's default worker count
    captured = capsys.readouterr()
    assert captured.out == f"wrote {png}\n"
    last = captured.err.replace("\r", "\n").strip().splitlines()[-1]
    series = sum(len(mods) for _, mods, _ in generator.plan(preview.patients_for(1, 0)[0], 1, 0))
    assert last.startswith("phantoms: 100%|") and f"| {series}/{series} [" in last, captured.err
    assert phantoms_cli(["--preview", str(png), "--preview-rows", "1", "--visits", "1",
                         "--image-size", "16", "--slices", "1", "--workers", "2"]) == 0
    assert asked == [None, 2]
