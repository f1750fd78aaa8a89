"""Gradient agreement between re-ID models: the cosine algebra on a hand-built example
whose shared part is known exactly, and on tiny models and phantoms that each model's
gradient is its own score's descent direction, that a model and its copy agree exactly
while two random models do not; the white-box sweep read between its budgets; the
benchmark's JSON (a copy's estimate is the model's own sweep) and its error lines."""

import json

import jax
import numpy as np
import pytest

from benchmarks import privacy_gradient_agreement as bench
from mami_jax.apps.privacy import ensemble, gradient_agreement as ga
from mami_jax.apps.privacy.model_input import InputMap, settings_for
from mami_jax.apps.privacy.protect import ProtectionInputs, groups_of, member_score_fn
from mami_jax.apps.privacy.references import member_refs
from mami_jax.config_files import load_config
from mami_jax.data.manifest import read_manifest
from tests.history_workdir import make_workdir
from tests.privacy_tiny import tiny_xray_phantoms


def shared_part(c: float, models: int) -> np.ndarray:
    """(models, 2 views, D): every model's gradient is sqrt(c) s + sqrt(1 - c) e_m with s
    and every e_m orthonormal, so two models meet at cosine c exactly."""
    d = models + 1
    out = np.zeros((models, 2, d))
    for view, sign in enumerate((1.0, -1.0)):
        for m in range(models):
            out[m, view, 0] = sign * np.sqrt(c)
            out[m, view, 1 + m] = np.sqrt(1 - c)
    return out


def test_pairwise_cosine_and_alignment_follow_the_shared_part():
    g = shared_part(0.25, 6)
    cos = ga.pairwise_cosines(g)
    np.testing.assert_allclose(np.diag(cos), 1.0)
    np.testing.assert_allclose(cos[~np.eye(6, dtype=bool)], 0.25)
    assert ga.shared_cosine(cos) == pytest.approx(0.25)
    # the mean of k of the first five against the sixth: 0.25 sqrt(k) / sqrt(1 + (k-1)/4)
    got = ga.prefix_alignment(g[:5], g[5])
    np.testing.assert_allclose(got, ga.predicted_alignment(0.25, np.arange(1, 6)), atol=1e-12)
    np.testing.assert_allclose(got[[0, 3]], [0.25, 0.5 / np.sqrt(1.75)], atol=1e-12)
    # the ceiling: infinitely many members reach sqrt(c)
    assert ga.predicted_alignment(0.25, 1e9) == pytest.approx(0.5, abs=1e-4)


def test_unit_rows_leaves_a_zero_gradient_at_zero():
    g = ga.unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(g, [[0.6, 0.8], [0.0, 0.0]])


def sweep(points, size=1, model="protecting"):
    """A privacy_transfer.json of one model protecting against itself at (budget, Rank-1)
    points, chance 0.05, Rank-1 before protection 0.9."""
    return {"runs": [{"variant": f"e{b}", "size": size, "overrides": [
        "perturb.steps=40", f"perturb.epsilon={b}"], "attack": {model: {"mean": {
            "rank1_after": r, "rank1_before": 0.9, "chance_rank1": 0.05}}}} for b, r in points]}


def test_white_box_budget_is_read_between_the_measured_budgets():
    budgets, rank1, chance = ga.white_box_curve(sweep([(0.02, 0.0), (0.01, 0.3), (0.015, 0.1)]))
    np.testing.assert_allclose(budgets, [0.0, 0.01, 0.015, 0.02])
    np.testing.assert_allclose(rank1, [0.9, 0.3, 0.1, 0.0])
    assert chance == 0.05
    # twice chance, 0.1, is reached exactly at 0.015; 0.2 halfway between 0.01 and 0.015
    assert ga.budget_to_reach(budgets, rank1, 0.1) == pytest.approx(0.015)
    assert ga.budget_to_reach(budgets, rank1, 0.2) == pytest.approx(0.0125)
    assert ga.budget_to_reach(budgets, rank1, 0.3) == pytest.approx(0.01)
    assert ga.budget_to_reach(budgets, rank1, 0.6) == pytest.approx(0.005)
    assert ga.budget_to_reach(budgets[1:], np.array([0.9, 0.8, 0.7]), 0.1) == float("inf")
    np.testing.assert_allclose(ga.rank1_at(budgets, rank1, [0.005, 0.0175, 0.05]), [0.6, 0.05, 0.0])
    with pytest.raises(ValueError, match="size 2"):
        ga.white_box_curve(sweep([(0.01, 0.3), (0.02, 0.1)], size=2))
    with pytest.raises(ValueError, match="at least two"):
        ga.white_box_curve(sweep([(0.01, 0.3)]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("agreement")
    manifest, experiment, config = tiny_xray_phantoms(base)
    cfg = load_config(experiment)
    workdirs = {"a": make_workdir(str(base / "a"), cfg, seed=0),
                "b": make_workdir(str(base / "b"), cfg, seed=1),
                "a_copy": make_workdir(str(base / "a_copy"), cfg, seed=0)}
    return dict(base=base, manifest=manifest, workdirs=workdirs, config=config)


def test_each_gradient_lowers_its_own_models_score(tiny):
    cfg = load_config(tiny["config"])
    rows = read_manifest(tiny["manifest"])
    targets = [r for r in rows if r.split == "test"]
    models = ensemble.load_ensemble([tiny["workdirs"][n] for n in ("a", "b")],
                                    load_config(cfg.experiment))
    grads = ga.model_gradients(rows, targets, models, cfg, progress=False)
    assert grads.shape[:2] == (2, len(targets))
    np.testing.assert_allclose(np.linalg.norm(grads, axis=-1), 1.0, rtol=1e-5)
    inputs = ProtectionInputs.of(rows, targets, models, cfg)
    (modality, _, h, w, _), group = next(iter(groups_of(inputs.sources).items()))
    imap = InputMap(settings_for(inputs.data_cfg, modality), h, w)
    score = jax.jit(member_score_fn(models, imap, cfg.perturb, modality))
    _, _, x0, offset, refs = inputs.batch(group, 0, len(group), imap, cfg.perturb)
    for m, model in enumerate(models):
        before = np.asarray(score(model.params, x0, offset, member_refs(refs.arrays(), m),
                                  jax.random.key(0), clean=x0))
        step = 0.02 * grads[m].reshape(x0.shape) * np.sqrt(x0[0].size)   # RMS 0.02 per view
        after = np.asarray(score(model.params, x0 - step, offset, member_refs(refs.arrays(), m),
                                 jax.random.key(0), clean=x0))
        assert np.all(after < before), (m, before, after)
    assert ga.pairwise_cosines(grads)[0, 1] < 0.99


def test_benchmark_writes_the_agreement_of_a_copy_as_one(tiny, tmp_path, capsys):
    w = tiny["workdirs"]
    out = tmp_path / "agree"
    white_box, finer = tmp_path / "copy_sweep.json", tmp_path / "copy_finer.json"
    white_box.write_text(json.dumps(sweep([(0.01, 0.5), (0.04, 0.0)])))
    finer.write_text(json.dumps(sweep([(0.02, 0.1), (0.03, 0.05)])))     # pooled with it
    code = bench.main(["--manifest", tiny["manifest"], "--member", f"a={w['a']}",
                       "--member", f"b={w['b']}", "--held-out", f"copy={w['a_copy']}",
                       "--split", "test", "--modality", "xray", "--config", tiny["config"],
                       "--set", "perturb.epsilon=0.03", "--white-box", f"copy={white_box}",
                       "--white-box", f"copy={finer}",
                       "--out", str(out)])
    assert code == 0
    result = json.loads((out / "gradient_agreement.json").read_text())
    cos = np.array(result["pairwise_cosine"])
    tests = [r for r in read_manifest(tiny["manifest"]) if r.split == "test"]
    assert result["models"] == ["a", "b", "copy"] and result["views"] == len(tests)
    assert cos[0, 2] == pytest.approx(1.0, abs=1e-4)         # a model and its copy
    assert cos[0, 1] < 0.99 and cos[1, 2] == pytest.approx(cos[0, 1], abs=1e-4)
    assert result["alignment"]["copy"][0] == pytest.approx(1.0, abs=1e-4)
    assert result["shared_cosine"] == pytest.approx((cos[0, 1] + cos[0, 2] + cos[1, 2]) / 3, abs=1e-3)
    pred = result["prediction"]["copy"]
    align = np.array(result["alignment"]["copy"])
    assert pred["budget"] == 0.03 and pred["white_box_budget"] == pytest.approx(0.02)
    # k = 1 is the model's own copy: it needs what the model itself needs
    np.testing.assert_allclose(pred["needed_budget"], 0.02 / align, rtol=1e-3)
    assert pred["needed_budget"][0] == pytest.approx(0.02, rel=1e-3)
    assert pred["needed_psnr_db"][0] == pytest.approx(-20 * np.log10(0.02), abs=0.01)
    np.testing.assert_allclose(pred["predicted_rank1"],
                               np.interp(0.03 * align, [0, 0.01, 0.02, 0.03, 0.04],
                                         [0.9, 0.5, 0.1, 0.05, 0.0]),
                               atol=1e-3)
    assert pred["predicted_rank1"][0] == pytest.approx(0.05, abs=1e-3)
    assert (out / "gradient_agreement.png").stat().st_size > 0
    assert "| copy |" in (out / "gradient_agreement.md").read_text()
    with pytest.raises(SystemExit):
        bench.main(["--manifest", tiny["manifest"], "--member", "a", "--member", f"b={w['b']}",
                    "--held-out", f"copy={w['a_copy']}", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "--member 'a': give it as NAME=MODEL" in err[-1]
    with pytest.raises(SystemExit):
        bench.main(["--manifest", tiny["manifest"], "--member", f"a={w['a']}", "--member",
                    f"b={w['b']}", "--held-out", f"copy={w['a_copy']}", "--modality", "xray",
                    "--white-box", f"a={white_box}", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "--white-box a: not a --held-out model" in err[-1]
    missing = tmp_path / "never_trained"
    assert bench.main(["--manifest", tiny["manifest"], "--member", f"a={w['a']}", "--member",
                       f"b={w['b']}", "--held-out", f"gone={missing}", "--modality", "xray",
                       "--split", "test", "--config", tiny["config"],
                       "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and str(missing) in err[-1]
    assert not (tmp_path / "bad").exists()
