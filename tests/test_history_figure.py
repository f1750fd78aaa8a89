"""``python -m mami_jax.apps.history figure``: several runs' metrics.json -> the mean
table (mean +- half the range per condition) and one PNG; bad input is one error line."""

import json

from mami_jax.apps.history.__main__ import main


def _metrics(path, auc_current, auc_retrieved, fhr, split="test", low=-0.05):
    group = {"current_only": {"auc": auc_current, "accuracy": 0.5},
             "retrieved_history": {"auc": auc_retrieved, "accuracy": 0.5},
             "true_history": {"auc": None, "accuracy": 0.5},
             "gain": {"retrieved_history": {"auc_gain": auc_retrieved - auc_current,
                                            "ci95": [low, 0.2], "samples": 1000},
                      "true_history": None},
             "false_history_rate": fhr, "queries": 10}
    path.write_text(json.dumps({"split": split, "overall": group, "per_modality": {"xray": group}}))
    return str(path)


def test_figure_averages_runs(tmp_path, capsys):
    a = _metrics(tmp_path / "a.json", 0.6, 0.7, 0.1, low=0.01)
    b = _metrics(tmp_path / "b.json", 0.8, 0.75, 0.3)
    png = tmp_path / "auc.png"
    assert main(["figure", "--metrics", a, b, "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "2 run(s)" in out
    # gains +0.1 and -0.05: mean +0.025, one run's interval above 0
    assert "| xray | 10 | 0.700 +- 0.100 | 0.725 +- 0.025 | - | +0.025 (1/2) | - | 0.200 |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_bad_input_is_one_error_line(tmp_path, capsys):
    a = _metrics(tmp_path / "a.json", 0.6, 0.7, 0.1)
    v = _metrics(tmp_path / "v.json", 0.6, 0.7, 0.1, split="val")
    (tmp_path / "bad.json").write_text("{}")
    cases = [([a, v], "runs of different splits ['test', 'val']"),
             ([a, str(tmp_path / "bad.json")], "bad.json: not a metrics.json"),
             ([str(tmp_path / "none.json")], "none.json: cannot be read")]
    for files, message in cases:
        assert main(["figure", "--metrics", *files, "--out", str(tmp_path / "x.png")]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "x.png").exists()
