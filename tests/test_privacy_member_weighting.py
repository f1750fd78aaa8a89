"""How an ensemble's gradients are combined (``perturb.member_weighting``), on members whose
gradients and scores are given by hand: mean, balanced (each scaled to mean |g| 1) and
hardest (balanced, softmax of the members' scores); the score is the members' mean
whatever the weighting. One modality's weighting can differ
(``perturb.modality_member_weighting``); a table entry for no modality is refused."""

import jax
import numpy as np
import pytest

from mami_jax.apps.privacy import perturb
from mami_jax.apps.privacy.protect import check_modality_settings
from mami_jax.config_files import load_config
from mami_jax.config_overrides import apply_overrides

G = [np.full((2, 1, 2, 2, 1), 4.0, np.float32), np.full((2, 1, 2, 2, 1), -1.0, np.float32)]
G[1][1] = 2.0                                  # member 1 points the other way on image 0 only
SCORES = [np.asarray([0.9, 0.1], np.float32), np.asarray([0.1, 0.3], np.float32)]


def fake_member_grad(delta, params, x0, offset, refs, key):
    return G[params], SCORES[params]


def combine(weighting, temperature=0.05):
    refs = ([None, None], None, [None, None], [None, None], [None, None], [None, None], None)
    return perturb.ensemble_grad(fake_member_grad, [0, 1], None, None, None, refs,
                                 jax.random.key(0), weighting, temperature)


def test_mean_balanced_and_hardest_on_hand_made_members():
    g, s = combine("mean")
    np.testing.assert_allclose(s, [0.5, 0.2])
    np.testing.assert_allclose(np.asarray(g)[:, 0, 0, 0, 0], [(4 - 1) / 2, (4 + 2) / 2])
    g, s = combine("balanced")                 # 4/4 and -1/1 (image 0), 4/4 and 2/2 (image 1)
    np.testing.assert_allclose(s, [0.5, 0.2])
    np.testing.assert_allclose(np.asarray(g)[:, 0, 0, 0, 0], [0.0, 1.0], atol=1e-6)
    g, _ = combine("hardest", temperature=0.1)
    w0 = np.exp(0.9 / 0.1) / (np.exp(0.9 / 0.1) + np.exp(0.1 / 0.1))   # image 0: member 0 matches
    # image 1: both members point the same way once balanced, so any weights give 1
    np.testing.assert_allclose(np.asarray(g)[:, 0, 0, 0, 0], [w0 - (1 - w0), 1.0], rtol=1e-5)


def test_bad_weighting_and_temperature_are_refused():
    with pytest.raises(ValueError, match="perturb.member_weighting='max'"):
        combine("max")
    with pytest.raises(ValueError, match="perturb.hardest_temperature=0.0"):
        combine("hardest", temperature=0.0)


def test_one_modality_can_weigh_its_members_otherwise():
    cfg = load_config("configs/privacy.py:runlocal").perturb
    assert [perturb.weighting_for(cfg, m) for m in ("xray", "ct")] == ["mean", "mean"]
    apply_overrides(cfg, ["modality_member_weighting={'xray': 'balanced'}",
                          "member_weighting=hardest"])
    assert [perturb.weighting_for(cfg, m) for m in ("xray", "ct")] == ["balanced", "hardest"]
    check_modality_settings(cfg, ["xray", "ct"])
    apply_overrides(cfg, ["modality_member_weighting={'ct': 'max'}"])
    with pytest.raises(ValueError, match=r"perturb.modality_member_weighting\['ct'\]='max'"):
        check_modality_settings(cfg, ["ct"])
    check_modality_settings(cfg, ["xray"])       # only the modalities protected are checked
    for table in ("modality_member_weighting", "modality_epsilon", "modality_objective"):
        cfg = load_config("configs/privacy.py:runlocal").perturb
        apply_overrides(cfg, [f"{table}={{'xrays': 'balanced'}}"])
        with pytest.raises(ValueError, match=rf"perturb.{table}: no such modality \['xrays'\]"):
            check_modality_settings(cfg, ["xray"])
