"""``perturb.modality_ensemble``: a modality it names is protected by the protecting model
and that modality's own members, exactly as a run of that modality alone against them
would protect it; every other modality exactly as without it; bad keys and the combination
with ``perturb.keep_diagnosis`` are refused, naming the key."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mami_jax.apps.privacy import ensemble
from mami_jax.apps.privacy.protect import protect_rows
from mami_jax.config_files import load_config
from mami_jax.config_overrides import apply_overrides
from mami_jax.data.decode import open_volume
from mami_jax.data.manifest import MODALITIES, read_manifest
from mami_jax.models import MaMI
from mami_jax.phantoms import generate
from tests.history_workdir import write_config
from tests.privacy_tiny import noisy_member


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("modality_ensemble")
    ph = str(base / "ph")
    rows = [r for r in read_manifest(generate(ph, patients=4, visits=2, seed=3, image_size=32,
                                              slices=2, workers=1))
            if r.modality in ("xray", "fundus")]
    cfg = load_config(write_config(str(base)))
    params = MaMI(cfg.model).init(jax.random.key(0), jnp.zeros((1, 1, 32, 32, 3)))["params"]
    pcfg = load_config("configs/privacy.py")
    pcfg.perturb.steps, pcfg.perturb.step_size, pcfg.batch_size = 3, 0.02, 4
    return base, ph, rows, pcfg, noisy_member(cfg, params, 1), noisy_member(cfg, params, 2)


def _written(base, ph, rows, members, pcfg, name, modality_members=None):
    """{image_id: written pixels} of ``rows`` protected against ``members``."""
    out = str(base / name)
    new_rows, _ = protect_rows(rows, rows, members, pcfg, ph, out, progress=False,
                               modality_members=modality_members)
    return {r.image_id: open_volume(os.path.join(out, p.path)).read(np.arange(1))
            for r, p in zip(rows, new_rows)}


def test_a_named_modality_is_protected_by_its_own_members(setup):
    base, ph, rows, pcfg, a, b = setup
    xray = [r for r in rows if r.modality == "xray"]
    fundus = [r for r in rows if r.modality == "fundus"]
    both = _written(base, ph, rows, [a], pcfg, "mixed", {"xray": [a, b]})
    x_pair = _written(base, ph, xray, [a, b], pcfg, "xray_pair")
    x_alone = _written(base, ph, xray, [a], pcfg, "xray_alone")
    f_alone = _written(base, ph, fundus, [a], pcfg, "fundus_alone")
    for r in xray:
        np.testing.assert_array_equal(both[r.image_id], x_pair[r.image_id])
    for r in fundus:
        np.testing.assert_array_equal(both[r.image_id], f_alone[r.image_id])
    # the second member counted: without it the X-rays are written otherwise
    moved = max(np.abs(x_pair[r.image_id] - x_alone[r.image_id]).max() for r in xray)
    assert moved > 1.5 / 255, moved


def test_modality_ensembles_are_read_from_the_config_and_bad_keys_refused(setup):
    base, ph, rows, pcfg, a, b = setup
    cfg = load_config("configs/privacy.py:runlocal,transfer=/r/a+/r/b").perturb
    assert ensemble.modality_ensembles(cfg, MODALITIES) == {}
    apply_overrides(cfg, ["modality_ensemble={'xray': ('/r/f1', '/r/f2@500'), 'ct': '/r/c+/r/d'}"])
    assert ensemble.modality_ensembles(cfg, MODALITIES) == {
        "xray": ["/r/f1", "/r/f2@500"], "ct": ["/r/c", "/r/d"]}
    word = load_config("configs/privacy.py:runlocal,transfer=/r/a,xray_transfer=/r/f1+/r/h2")
    assert ensemble.modality_ensembles(word.perturb, MODALITIES) == {"xray": ["/r/f1", "/r/h2"]}
    assert tuple(word.perturb.ensemble) == ("/r/a",)
    # the word changes the X-rays' members and their weighting, nothing else of the recipe
    recipe = load_config("configs/privacy.py:runlocal,transfer=/r/a").to_dict()
    recipe["perturb"]["modality_ensemble"] = {"xray": ("/r/f1", "/r/h2")}
    recipe["perturb"]["modality_member_weighting"] = {"xray": "balanced"}
    assert word.to_dict() == recipe
    with pytest.raises(ValueError, match="config word 'xray_transfer' needs a value"):
        load_config("configs/privacy.py:runlocal,transfer=/r/a,xray_transfer")
    with pytest.raises(ValueError, match="xray_transfer needs the X-rays' ensemble"):
        load_config("configs/privacy.py:runlocal,transfer=/r/a,xray_transfer=+")
    with pytest.raises(ValueError, match="name the recipe's with transfer=... too"):
        load_config("configs/privacy.py:runlocal,xray_transfer=/r/f1")
    apply_overrides(cfg, ["modality_ensemble={'x-ray': ('/r/f1',)}"])
    with pytest.raises(ValueError, match=r"perturb.modality_ensemble\['x-ray'\]: no such "
                                         r"modality \(expected one of \['ct', "):
        ensemble.modality_ensembles(cfg, MODALITIES)
    keep = load_config("configs/privacy.py")
    keep.perturb.keep_diagnosis = "/some/history/out"
    with pytest.raises(ValueError, match="cannot be combined with perturb.modality_ensemble"):
        protect_rows(rows, rows, [a], keep, ph, str(base / "refused"), progress=False,
                     modality_members={"xray": [a, b]})
    assert not os.path.exists(base / "refused")


def test_a_modality_of_its_own_weighting_is_protected_as_with_it_everywhere(setup):
    """``perturb.modality_member_weighting={'xray': 'balanced'}``: the X-rays are written as
    ``member_weighting=balanced`` writes them, the fundus images as the plain mean does."""
    base, ph, rows, pcfg, a, b = setup
    xray = [r for r in rows if r.modality == "xray"]
    fundus = [r for r in rows if r.modality == "fundus"]

    def config(*overrides):
        c = load_config("configs/privacy.py")
        c.perturb.steps, c.perturb.step_size, c.batch_size = 3, 0.02, 4
        apply_overrides(c, list(overrides))
        return c

    mixed = _written(base, ph, rows, [a, b], config("perturb.modality_member_weighting="
                                                     "{'xray': 'balanced'}"), "weigh_mixed")
    balanced = _written(base, ph, xray, [a, b], config("perturb.member_weighting=balanced"),
                        "weigh_xray_balanced")
    plain_x = _written(base, ph, xray, [a, b], config(), "weigh_xray_mean")
    plain_f = _written(base, ph, fundus, [a, b], config(), "weigh_fundus_mean")
    for r in xray:
        np.testing.assert_array_equal(mixed[r.image_id], balanced[r.image_id])
    for r in fundus:
        np.testing.assert_array_equal(mixed[r.image_id], plain_f[r.image_id])
    assert any(not np.array_equal(balanced[r.image_id], plain_x[r.image_id]) for r in xray)
