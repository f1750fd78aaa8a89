"""The budget each modality's images get, as ``protect`` resolves it from the config: the
`transfer` recipe gives fundus a smaller budget than the rest (its lesions are a few
pixels that a 30 dB change hides), the base config one budget everywhere, `xray_visible`
X-ray alone a larger one, and an override on the command line replaces the recipe's table
rather than merging into it."""

import pytest

from mami_jax.apps.privacy.protect import epsilon_for
from mami_jax.config_files import load_config
from mami_jax.config_overrides import apply_overrides

MODALITIES = ("xray", "ct", "mri", "fundus", "pathology")


def budgets(arg: str) -> dict:
    """The l2 budget ``protect`` gives each modality under configs/privacy.py:ARG."""
    perturb = load_config(f"configs/privacy.py:{arg}").perturb
    return {m: epsilon_for(perturb, m) for m in MODALITIES}


def test_the_base_config_has_one_budget_everywhere():
    assert budgets("runlocal") == {m: pytest.approx(0.028) for m in MODALITIES}


def test_the_transfer_recipe_gives_fundus_its_own_budget():
    got = budgets("runlocal,transfer=A+B")
    assert got.pop("fundus") == pytest.approx(0.0185)
    assert got == {m: pytest.approx(0.03) for m in got}


def test_xray_visible_trades_the_xray_budget_alone():
    """21.5 dB for X-ray, on its own or on top of the transfer recipe's table."""
    got = budgets("runlocal,transfer=A+B,xray_visible")
    assert got.pop("xray") == pytest.approx(0.084)
    assert got.pop("fundus") == pytest.approx(0.0185)
    assert got == {m: pytest.approx(0.03) for m in got}
    got = budgets("runlocal,xray_visible")
    assert got.pop("xray") == pytest.approx(0.084)
    assert got == {m: pytest.approx(0.028) for m in got}


def test_an_override_replaces_the_recipes_table():
    cfg = load_config("configs/privacy.py:runlocal,transfer=A+B")
    apply_overrides(cfg, ["perturb.modality_epsilon={'ct': 0.02}"])
    assert epsilon_for(cfg.perturb, "ct") == pytest.approx(0.02)
    assert epsilon_for(cfg.perturb, "fundus") == pytest.approx(0.03)
    apply_overrides(cfg, ["perturb.modality_epsilon={}"])
    assert epsilon_for(cfg.perturb, "fundus") == pytest.approx(0.03)
    apply_overrides(cfg, ["perturb.modality_epsilon={'xray': 0}"])
    with pytest.raises(ValueError, match=r"modality_epsilon\['xray'\]=0.0: must be > 0"):
        epsilon_for(cfg.perturb, "xray")
