"""The protection's search settings and the cue maps': one that cannot do its work is
refused naming its key before any model is read (``perturb.steps=0`` wrote unchanged
copies as protected ones); every shipped privacy config passes."""

from __future__ import annotations

import os

import pytest

from mami_jax.apps.privacy.protect import check_search
from mami_jax.config_files import load_config
from mami_jax.config_overrides import apply_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRIVACY = os.path.join(REPO, "configs", "privacy.py")


@pytest.mark.parametrize("overrides, message", [
    (["perturb.steps=0"], "perturb.steps=0: expected a whole number >= 1 (method 'perturb')"),
    (["perturb.step_size=-1.0"],
     "perturb.step_size=-1.0: expected a number > 0 (method 'perturb')"),
    (["perturb.momentum=2.0"],
     "perturb.momentum=2.0: expected a number in [0, 1] (method 'perturb')"),
    (["perturb.views=-1"],
     "perturb.views=-1: expected a whole number >= 0 (0: the plain image) (method 'perturb')"),
    (["perturb.shift=-2"],
     "perturb.shift=-2: expected a whole number of pixels >= 0 (method 'perturb')"),
    (["method=both", "perturb.steps=0"],
     "perturb.steps=0: expected a whole number >= 1 (method 'both')"),
    (["method=deform", "deform.steps=0"],
     "deform.steps=0: expected a whole number >= 1 (method 'deform')"),
    (["method=inpaint", "inpaint.region_fraction=0.0"],
     "inpaint.region_fraction=0.0: expected a share of pixels in (0, 1) (method 'inpaint')"),
    (["method=both", "inpaint.iterations=-1"],
     "inpaint.iterations=-1: expected a whole number >= 0 (0: the mean fill) (method 'both')"),
    # was refused only at the first batch, after the models were read:
    (["method=inpaint", "inpaint.cue=saliency"],
     "inpaint.cue='saliency': expected one of gradient, occlusion (method 'inpaint')"),
])
def test_a_search_that_cannot_change_an_image_is_refused(overrides, message):
    config = load_config(PRIVACY)
    apply_overrides(config, overrides)
    with pytest.raises(ValueError) as e:
        check_search(config)
    assert str(e.value) == message


def test_methods_without_a_search_ignore_its_settings():
    for method in ("noise", "inpaint"):
        config = load_config(PRIVACY)
        apply_overrides(config, [f"method={method}", "perturb.steps=0"])
        check_search(config)
    config = load_config(PRIVACY)
    apply_overrides(config, ["inpaint.region_fraction=0.0"])      # method perturb
    check_search(config)


@pytest.mark.parametrize("arg", [None, "runlocal", "both", "deform", "inpaint", "rank",
                                 "transfer=a+b", "transfer=a+b,xray_transfer=c+d",
                                 "transfer=a+b,xray_visible"])
def test_every_shipped_privacy_config_passes(arg):
    check_search(load_config(PRIVACY + (f":{arg}" if arg else "")))


@pytest.mark.parametrize("override, message", [
    ("cues.max_images=0", "cues.max_images=0: expected a whole number >= 1"),
    ("cues.occlusion_stride=0", "cues.occlusion_stride=0: expected a whole number >= 1"),
    ("cues.smooth=-1.0",
     "cues.smooth=-1.0: expected a Gaussian sigma in pixels >= 0 (0: no smoothing)"),
    ("cues.occlusion_stride=9", "cues.occlusion_stride=9: expected at most "
     "cues.occlusion_patch (8): pixels between the squares would never be occluded"),
])
def test_cue_settings_out_of_range_name_their_key(override, message):
    """max_images=0 said 'nothing to embed: no row indices given'; a stride of 0 named no
    key; a negative smoothing was taken."""
    from mami_jax.apps.privacy.cue_run import check_cue_settings
    config = load_config(PRIVACY)
    check_cue_settings(config.cues)
    apply_overrides(config, [override])
    with pytest.raises(ValueError) as e:
        check_cue_settings(config.cues)
    assert str(e.value) == message


def test_region_removal_with_an_ensemble_is_refused():
    """Region removal scores cues with --workdir's model alone: the members were read and
    never used."""
    from mami_jax.apps.privacy.protect import check_settings
    for override in ("perturb.ensemble=('A',)", "perturb.modality_ensemble={'xray': 'A'}"):
        config = load_config(PRIVACY)
        apply_overrides(config, ["method=inpaint", override])
        with pytest.raises(ValueError, match=r"^method='inpaint' removes the strongest cue "
                           r"regions of --workdir's model alone: perturb.ensemble / "
                           r"perturb.modality_ensemble would be read and never used"):
            check_settings(config, [])
        apply_overrides(config, ["method=both"])
        check_settings(config, [])


@pytest.mark.parametrize("arg, message", [
    ("inpaint,deform", "configs/privacy.py: inpaint and deform each choose the method; give "
                       "one (both inpaints, then perturbs)"),
    ("both,deform", "configs/privacy.py: both and deform each choose the method; give one "
                    "(both inpaints, then perturbs)"),
    ("inpaint,transfer=A+B,rank", "configs/privacy.py: inpaint runs no perturbation search, so "
     "transfer and rank would do nothing (it removes the strongest cue regions of --workdir's "
     "model, with no budget); the word both inpaints, then perturbs"),
    ("runlocal,transfer=", "config word 'transfer' needs a value: transfer=RUN_A+RUN_B@1000"),
    ("transfer=A,xray_transfer", "config word 'xray_transfer' needs a value: "
                                 "xray_transfer=FINETUNE_A+FINETUNE_B+BACKBONE.pth"),
    ("xray_visible=0", "config word 'xray_visible' is a switch and takes no value (got "
                       "xray_visible=0): leave the word out to turn it off"),
])
def test_privacy_words_that_would_do_nothing_or_contradict_are_refused(arg, message):
    """Before: the last method word won, inpaint took an ensemble and budget it never used,
    transfer= gave an empty ensemble at the default budget, xray_visible=0 turned it on."""
    with pytest.raises(ValueError) as e:
        load_config(f"{PRIVACY}:{arg}")
    assert message in str(e.value)


def test_a_negative_own_weight_and_gapped_occlusion_for_removal_are_refused():
    """own_weight -1 divided the match score by zero for every image with other images; an
    occlusion stride beyond its patch left pixels region removal could never pick."""
    from mami_jax.apps.privacy.protect import check_settings
    config = load_config(PRIVACY)
    apply_overrides(config, ["perturb.own_weight=-1.0"])
    with pytest.raises(ValueError, match=r"^perturb.own_weight=-1.0: expected a weight >= 0"):
        check_settings(config, [])
    config = load_config(PRIVACY + ":inpaint")
    apply_overrides(config, ["inpaint.cue='occlusion'", "cues.occlusion_stride=16"])
    with pytest.raises(ValueError, match=r"^cues.occlusion_stride=16: expected at most"):
        check_settings(config, [])
