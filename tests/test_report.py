"""Evaluation report: metrics.json, the fixed-width table, the CMC plot."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mami_jax.evaluate import report
from mami_jax.evaluate.metrics import reid_metrics, verification_metrics


def groups():
    s = np.array([[0.9, 0.8, 0.5, 0.7], [0.1, 0.9, 0.8, 0.2]])
    xray = reid_metrics(s, ["a", "b"], ["a", "b", "a", "a"], [1, 5], [1, 7, 2, 3], ks=(1, 5, 10))
    xray.update(verification_metrics([0.9, 0.8, 0.4, 0.7, 0.3], [1, 1, 1, 0, 0]))
    ct = reid_metrics(np.eye(3), [0, 1, 2], [0, 1, 2], [0, 0, 0], [1, 1, 1])
    return {"phantoms/xray/reid": xray, "phantoms/ct/history": ct}


def test_table_layout_and_values():
    table = report.format_table(groups())
    lines = table.splitlines()
    assert lines[0].split() == ["group", "rank1", "rank5", "rank10", "mAP", "mINP", "auc",
                                "eer", "n_scored"]
    assert set(lines[1]) == {"-"}
    assert len({len(line) for line in lines}) == 1  # fixed width
    # xray: query a -> matches at ranks 2, 3 (AP 7/12); query b -> rank 1 (AP 1).
    # rank1 = 0.5, mAP = (7/12 + 1)/2 = 0.7917, mINP = (2/3 + 1)/2 = 0.8333
    # verification: pos .9 .8 .4, neg .7 .3: AUC = (2 + 2 + 1)/6 = 0.8333
    xray = lines[2].split()
    assert xray == ["phantoms/xray/reid", "0.5000", "1.0000", "1.0000", "0.7917", "0.8333",
                    "0.8333", xray[7], "2"]
    ct = lines[3].split()
    assert ct[1:4] == ["1.0000"] * 3 and ct[6:8] == ["-", "-"] and ct[8] == "3"


def test_write_report(tmp_path, capsys):
    out = tmp_path / "eval" / "step_10"
    table = report.write_eval_report(groups(), str(out), title="step 10")
    assert capsys.readouterr().out.strip() == table.strip()
    data = json.loads((out / "metrics.json").read_text())
    assert list(data) == ["phantoms/ct/history", "phantoms/xray/reid"]  # sorted keys
    assert data["phantoms/xray/reid"]["mAP"] == pytest.approx((7 / 12 + 1) / 2)
    # the lowest threshold with no false accept: 0.8 (TAR 2/3)
    assert data["phantoms/xray/reid"]["threshold_at_far_1e-3"] == pytest.approx(0.8)
    assert len(data["phantoms/ct/history"]["cmc"]) == 50
    png = out / "cmc.png"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 800
        pixels = np.asarray(im.convert("L"))
    assert pixels.min() < 100 and pixels.max() > 200  # something is drawn on white
    assert sorted(os.listdir(out)) == ["cmc.png", "metrics.json"]  # no temp files left


def test_nan_and_missing_cmc(tmp_path):
    empty = reid_metrics(np.zeros((1, 2)), ["a"], ["a", "b"], [1], [1, 2])  # no valid query
    report.write_eval_report({"x/mri/reid": empty}, str(tmp_path), print_table=False)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["x/mri/reid"]["rank1"] is None and data["x/mri/reid"]["num_skipped_queries"] == 1
    assert not (tmp_path / "cmc.png").exists()  # no finite curve to draw
    assert "nan" in report.format_table({"x/mri/reid": empty})


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        report.write_eval_report({}, str(tmp_path))
    with pytest.raises(TypeError, match="grp/extra"):
        report.write_eval_report({"grp": {"extra": object()}}, str(tmp_path))
    assert not (tmp_path / "metrics.json").exists()


def test_report_files_get_the_umask_permissions(tmp_path):
    """mkstemp creates 0600 files; the report must be as readable as the user's umask allows."""
    old = os.umask(0o022)
    try:
        report.write_eval_report(groups(), str(tmp_path / "eval"), print_table=False)
    finally:
        os.umask(old)
    modes = {name: oct(os.stat(tmp_path / "eval" / name).st_mode & 0o777)
             for name in ("metrics.json", "cmc.png")}
    assert modes == {"metrics.json": "0o644", "cmc.png": "0o644"}
    assert oct(os.stat(tmp_path / "eval").st_mode & 0o777) == "0o755"
