"""The privacy figures are written as PNG from what the commands write; the utility figure's
per-modality changes are merged over privacy_eval.json files by classifier."""

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import privacy_figures
from mami_jax.apps.privacy import figures
from mami_jax.config import base_config
from mami_jax.data.manifest import ManifestRow, write_manifest


def _report(before, after, chance):
    return {"rank1_before": before, "rank1_after": after, "chance_rank1": chance}


def test_rank1_bars_and_comparison_are_pngs(tmp_path):
    attack = {"protecting": {"phantoms/xray": _report(0.9, 0.02, 0.03),
                             "phantoms/ct": _report(0.7, 0.1, 0.03), "mean": {}, "source": {}},
              "held-out": {"phantoms/xray": _report(0.8, 0.3, 0.03),
                           "phantoms/ct": _report(0.6, 0.2, 0.03), "mean": {}}}
    figures.rank1_bars(str(tmp_path / "bars.png"), attack, "title")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)).save(tmp_path / "b.png")
    row = ManifestRow("P1_v0", "P1", "v0", "0", "xray", "phantoms", "pa", str(tmp_path / "a.png"), "test")
    prot = row.replace(image_id="P1_v0_protected", path=str(tmp_path / "b.png"))
    figures.comparison_grid(str(tmp_path / "cmp.png"), [row], {"perturb": [prot]},
                            base_config().data)
    maps = {"gradient": rng.random((1, 32, 32)), "occlusion": rng.random((1, 32, 32))}
    figures.cue_grid(str(tmp_path / "cues.png"), [row], [maps], base_config().data)
    for name in ("bars.png", "cmp.png", "cues.png"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.size[0] > 100


def _eval_file(path, modality, attack_after, changes):
    """A privacy_eval.json as the command writes it: one model's attack report and the
    history classifiers' AUC per modality."""
    report = {"attack": {"m1": {f"phantoms/{modality}": _report(0.8, attack_after, 0.033),
                                "mean": {}}},
              "history_utility": {
                  f"/runs/{name}": {"auc": {modality: {"auc_original": 0.6,
                                                       "auc_protected": 0.6 * (1 + c),
                                                       "relative_change": c},
                                            "mean": {}}}
                  for name, c in changes.items()}}
    path.write_text(json.dumps(report))
    return str(path)


def test_privacy_figures_merges_the_readers_changes_per_modality(tmp_path, capsys):
    ct = _eval_file(tmp_path / "ct.json", "ct", 0.02, {"r_s0": -0.04, "r_s1": -0.01})
    fundus = _eval_file(tmp_path / "fundus.json", "fundus", 0.01, {"r_s0": -0.12, "r_s1": 0.02})
    reports = [json.loads(open(p).read()) for p in (ct, fundus)]
    assert figures.merged_utility(reports, {"/runs/r_s1": "seed 1"}) == {
        "ct": {"r_s0": -0.04, "seed 1": -0.01}, "fundus": {"r_s0": -0.12, "seed 1": 0.02}}
    manifest = tmp_path / "m.csv"
    write_manifest([], str(manifest))
    out = tmp_path / "figs"
    assert privacy_figures.main(["--original", str(manifest), "--out", str(out),
                                 "--eval", ct, "--eval", fundus]) == 0
    for name in ("privacy_rank1.png", "privacy_utility.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        privacy_figures.main(["--original", str(manifest), "--out", str(out),
                              "--eval", str(tmp_path / "missing.json")])
    assert "--eval " + str(tmp_path / "missing.json") in capsys.readouterr().err


def _transfer_file(path, modality, runs):
    """A privacy_transfer.json as the benchmark writes it: ``runs`` of (variant, size,
    held-out Rank-1 after)."""
    report = {"args": {"modality": modality}, "runs": [
        {"variant": variant, "size": size,
         "attack": {"protecting": {f"phantoms/{modality}": _report(0.9, 0.0, 0.033), "mean": {}},
                    "m1": {f"phantoms/{modality}": _report(0.8, after, 0.033), "mean": {}}}}
        for variant, size, after in runs]}
    path.write_text(json.dumps(report))
    return str(path)


def test_transfer_grid_takes_each_files_largest_ensemble(tmp_path, capsys):
    xray = _transfer_file(tmp_path / "xray.json", "xray", [("e03", 1, 0.5), ("e03", 4, 0.2)])
    ct = _transfer_file(tmp_path / "ct.json", "ct", [("e03", 4, 0.03), ("e02", 4, 0.1)])
    panels = privacy_figures.transfer_panels(
        [f"four={xray}", f"four={ct}#e02", f"ct only={ct}#e03"], {"m1": "held out"})
    assert list(panels) == ["four", "ct only"]
    assert panels["four"]["held out"]["phantoms/xray"]["rank1_after"] == 0.2
    assert panels["four"]["held out"]["phantoms/ct"]["rank1_after"] == 0.1
    assert panels["ct only"]["held out"] == {"phantoms/ct": _report(0.8, 0.03, 0.033)}
    manifest = tmp_path / "m.csv"
    write_manifest([], str(manifest))
    out = tmp_path / "figs"
    assert privacy_figures.main(["--original", str(manifest), "--out", str(out),
                                 "--transfer", f"four={xray}", "--transfer", f"four={ct}#e03",
                                 "--transfer-figure", "grid.png"]) == 0
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for bad, said in ((f"four={ct}", "2 variants (e03, e02) at ensemble size 4"),
                      (f"four={ct}#e05", "no run of variant 'e05'"),
                      (f"four={tmp_path / 'missing.json'}", "missing.json: not a readable"),
                      (str(ct), "expected PANEL=")):
        with pytest.raises(SystemExit):
            privacy_figures.main(["--original", str(manifest), "--out", str(out),
                                  "--transfer", bad])
        assert said in capsys.readouterr().err


def test_the_figures_draw_what_was_measured_and_tell_groups_and_classifiers_apart(tmp_path):
    """A group without a Rank-1 (null in the JSON: no patient with two studies) crashed
    rank1_bars and rank1_grid; two datasets of one modality read "xray" twice; two
    classifiers in folders of one name (seed0/history, seed1/history) were one bar; one
    group without an interval took every group's whiskers."""
    attack = {"m": {"phantoms/xray": dict(_report(0.9, 0.1, 0.03), rank1_after_ci95=[0.0, 0.2]),
                    "solo/xray": _report(None, None, None), "mean": {}}}
    figures.rank1_bars(str(tmp_path / "bars.png"), attack)
    figures.rank1_grid(str(tmp_path / "grid.png"), {"ensemble": attack})
    assert figures._tick_labels(["phantoms/xray", "solo/xray", "phantoms/ct"]) == [
        "phantoms/xray", "solo/xray", "ct"]
    rep = {"a": dict(_report(0.9, 0.1, 0.03), rank1_after_ci95=[0.0, 0.2]),
           "b": _report(0.8, 0.3, 0.03)}
    np.testing.assert_allclose(figures._whiskers(rep, ["a", "b"], "rank1_after"),
                               [[0.1, 0.0], [0.1, 0.0]])
    report = {"history_utility": {
        f"/runs/seed{s}/history": {"auc": {"xray": {"relative_change": c}}}
        for s, c in ((0, -0.02), (1, -0.2))}}
    assert figures.merged_utility([report], {}) == {
        "xray": {"seed0/history": -0.02, "seed1/history": -0.2}}
