"""benchmarks/privacy_transfer.py's figure (Rank-1 against ensemble size per variant, or
against the variant when every run has one ensemble size: a sigma or epsilon sweep) and
its PSNR summary, and its one-line errors."""

import pytest

from benchmarks import privacy_transfer


def run(variant, size, after):
    rep = lambda a: {"mean": {"rank1_after": a, "rank1_before": 0.9,  # noqa: E731
                              "chance_rank1": 0.13}}
    return {"variant": variant, "size": size,
            "attack": {"protecting": rep(after / 2), "held": rep(after)}}


def result(runs):
    return {"args": {"split": "val", "modality": "xray"}, "runs": runs}


def test_one_size_plots_against_the_variant_in_run_order(tmp_path):
    res = result([run("smooth0", 4, 0.6), run("smooth2", 4, 0.5), run("smooth1", 4, 0.4)])
    (panel,) = privacy_transfer.panels(res)
    assert panel["ticks"] == ["smooth0", "smooth2", "smooth1"]
    assert panel["xlabel"] == "variant" and panel["title"] == "ensemble of 4: val xray"
    assert panel["models"]["held"] == {"after": [0.6, 0.5, 0.4], "before": 0.9}
    assert panel["models"]["protecting"]["after"] == [0.3, 0.25, 0.2]
    assert panel["chance"] == 0.13
    privacy_transfer.figure(res, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_sizes_plot_against_size_per_variant():
    res = result([run("a", 1, 0.6), run("a", 2, 0.5), run("b", 1, 0.7), run("b", 2, 0.65)])
    panels = privacy_transfer.panels(res)
    assert [p["title"] for p in panels] == ["a: val xray", "b: val xray"]
    assert panels[1]["ticks"] == ["1", "2"] and panels[1]["models"]["held"]["after"] == [0.7, 0.65]
    assert panels[0]["xlabel"] == "models in the ensemble"


def test_bad_input_is_one_error_line(tmp_path, capsys):
    missing = tmp_path / "no_such_manifest.csv"
    assert privacy_transfer.main(["--manifest", str(missing), "--workdir", str(tmp_path),
                                  "--sizes", "1", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_:
        privacy_transfer.main(["--manifest", str(missing), "--workdir", str(tmp_path),
                               "--sizes", "1,x", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ": --sizes 1,x" in err
    with pytest.raises(SystemExit) as exit_:
        privacy_transfer.main(["--manifest", str(missing), "--workdir", str(tmp_path),
                               "--held-out", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "give it as NAME=MODEL" in capsys.readouterr().err
