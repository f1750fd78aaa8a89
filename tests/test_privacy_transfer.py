"""Transfer machinery of the privacy protection: the ensemble gradient is the mean over
EVERY member, the perturbation stays in its budget under the ensemble and random-view
(input diversity, shift, noise) path, the zoom view stays inside the image, the
``transfer`` config word names the ensemble, and the adaptive attacker's manifest keeps
its rows' fields."""

import os

import jax
import jax.numpy as jnp

import numpy as np
import pytest

from mami_jax.apps.privacy import objective, perturb, references
from mami_jax.apps.privacy.attacker import attacker_rows
from mami_jax.apps.privacy.model_input import InputMap, settings_for
from mami_jax.config_files import load_config
from mami_jax.data.manifest import ManifestRow
from mami_jax.models import MaMI
from tests.history_workdir import write_config
from tests.privacy_tiny import noisy_member

B, H = 3, 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("transfer")
    cfg = load_config(write_config(str(base)))
    init = jax.jit(MaMI(cfg.model).init)(jax.random.key(0), jnp.zeros((1, 1, H, H, 3)))["params"]
    members = [noisy_member(cfg, init, seed) for seed in (1, 2)]
    imap = InputMap(settings_for(cfg.data, "xray"), H, H)
    x0 = np.asarray(jax.random.uniform(jax.random.key(5), (B, 1, H, H, 1)), np.float32)
    # random references: others (B, K=2, C), own (B, C), per member
    images = imap(x0)
    embed = jax.jit(members[0].embed)
    embs = [np.asarray(embed(m.params, images)) for m in members]
    width = embs[0].shape[-1]
    rng = np.random.default_rng(0)
    others = [rng.normal(size=(B, 2, width)).astype(np.float32) for _ in members]
    others = [o / np.linalg.norm(o, axis=-1, keepdims=True) for o in others]
    own = [e / np.linalg.norm(e, axis=-1, keepdims=True) for e in embs]
    refs = references.References(others, np.ones((B, 2), np.float32), own,
                                [np.zeros(width, np.float32) for _ in members])
    return cfg, members, imap, x0, refs


def test_ensemble_gradient_is_the_mean_over_every_member(tiny):
    cfg, members, imap, x0, refs = tiny
    pcfg = load_config("configs/privacy.py").perturb
    params = [m.params for m in members]
    delta = jnp.zeros_like(x0)
    offset = imap.stain_offset(x0)
    key = jax.random.key(7)
    member_grad = perturb.make_member_grad(objective.make_member_score_fn(
        members[0].embed, imap, pcfg, 0))
    g, s = perturb.ensemble_grad(member_grad, params, x0, delta, offset, refs.arrays(), key)
    # the gradient of the whole ensemble's score function (members looped inside)
    whole = objective.make_score_fn(members, imap, pcfg, 0)
    want = jax.jit(jax.grad(lambda d: whole(params, x0 + d, offset, refs.arrays(), key).sum()))(
        delta)
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-4, atol=1e-7)
    # every member counts: the mean of both single-member gradients, unlike either alone
    singles = [np.asarray(member_grad(delta, p, x0, offset, references.member_refs(refs.arrays(), m),
                                      key)[0]) for m, p in enumerate(params)]
    np.testing.assert_allclose(np.asarray(g), np.mean(singles, 0), rtol=1e-4, atol=1e-7)
    for single in singles:
        assert np.abs(single - np.asarray(g)).max() > 1e-3 * np.abs(np.asarray(g)).max()
    one = jax.jit(objective.make_member_score_fn(members[0].embed, imap, pcfg, 0))
    single_scores = [np.asarray(one(p, x0, offset, references.member_refs(refs.arrays(), m), key))
                     for m, p in enumerate(params)]
    np.testing.assert_allclose(np.asarray(s), np.mean(single_scores, 0), rtol=1e-5)


@pytest.mark.parametrize("norm, eps", [("linf", 4 / 255), ("l2", 0.02)])
def test_budget_holds_under_ensemble_and_random_views(tiny, norm, eps):
    cfg, members, imap, x0, refs = tiny
    pcfg = load_config("configs/privacy.py").perturb
    pcfg.shift, pcfg.noise, pcfg.scale = 1, 0.01, 0.15
    score = objective.make_member_score_fn(members[0].embed, imap, pcfg, 2)
    step = perturb.make_step(score, norm, eps, eps, 0.9)   # large steps: the projection works
    delta, history = perturb.perturb(step, [m.params for m in members], x0, imap.stain_offset(x0),
                                     refs, 4, jax.random.key(0))
    assert history.shape == (4, B)
    used = perturb.budget_used(delta, norm, eps)
    assert np.all(used <= 1.0 + 1e-5) and np.all(used > 0.5), used
    assert (x0 + delta).min() >= 0.0 and (x0 + delta).max() <= 1.0


def test_zoom_view_stays_inside_the_image():
    ramp = jnp.broadcast_to(jnp.linspace(0.2, 0.8, H)[None, None, :, None, None], (2, 1, H, H, 1))
    same = objective.random_views(jax.random.key(0), ramp, 0, 0.0, 0.0)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(ramp))
    for k in range(5):
        v = np.asarray(objective.random_views(jax.random.key(k), ramp, 0, 0.0, 0.2))
        assert v.shape == ramp.shape
        assert v.min() >= 0.2 - 1e-6 and v.max() <= 0.8 + 1e-6     # no padding read
        assert np.abs(v - np.asarray(ramp)).max() > 1e-3               # it did zoom
        rows = v[0, 0, :, 0, 0]
        slope = np.diff(rows)
        assert np.all(slope > 0) and slope.mean() < 0.6 / (H - 1)      # zoomed in: flatter ramp


def test_transfer_word_names_the_ensemble():
    assert load_config("configs/privacy.py").perturb.ensemble == ()
    with pytest.raises(ValueError, match="config word 'transfer' needs a value"):
        load_config("configs/privacy.py:runlocal,transfer")
    with pytest.raises(ValueError, match="transfer needs the ensemble's workdirs"):
        load_config("configs/privacy.py:runlocal,transfer=+")
    cfg = load_config("configs/privacy.py:runlocal,transfer=/a/run")
    assert cfg.perturb.ensemble == ("/a/run",) and cfg.perturb.epsilon == 0.03
    assert tuple(load_config("configs/privacy.py:transfer=/a/run+/b/run@500").perturb.ensemble) \
        == ("/a/run", "/b/run@500")


def _row(pid, study, split, suffix="", path="x.png"):
    return ManifestRow(f"{pid}_{study}{suffix}", pid, study, study[-1], "xray", "phantoms", "pa",
                       path, split)


def test_attacker_manifest_swaps_only_the_chosen_splits():
    original = [_row("P1", "v0", "train"), _row("P1", "v1", "train"), _row("P2", "v0", "test")]
    protected = [_row("P1", "v0", "train", "_protected", "/out/a.png"),
                 _row("P1", "v1", "train", "_protected", "/out/b.png"),
                 _row("P2", "v0", "test", "_protected", "/out/c.png")]
    rows = attacker_rows(original, protected, ("train",))
    assert [r.image_id for r in rows] == ["P1_v0_protected", "P1_v1_protected", "P2_v0"]
    assert [r.path for r in rows] == ["/out/a.png", "/out/b.png", "x.png"]
    for a, b in zip(original, rows):
        for field in ("patient_id", "study_id", "order", "modality", "dataset", "view", "split"):
            assert getattr(a, field) == getattr(b, field)
    with pytest.raises(ValueError, match=r"P\.csv: 1 rows of split\(s\) \['train'\] have no "
                                         r"protected copy, e.g. \['P1_v1'\]"):
        attacker_rows(original, protected[:1] + protected[2:], ("train",), source="P.csv")
    moved = [protected[0].replace(split="test")] + protected[1:]
    with pytest.raises(ValueError, match="row 'P1_v0_protected' has split='test', its original "
                                         "'P1_v0' has 'train'"):
        attacker_rows(original, moved, ("train",))
    # a copy of no original row, an original row left in: named, no longer ignored
    from mami_jax.apps.privacy.evaluation import paired_rows
    for stray in (_row("P9", "v0", "train", "_protected"), _row("P1", "v0", "train")):
        with pytest.raises(ValueError, match=rf"^P\.csv: 1 rows of split\(s\) \['train'\] are "
                                             rf"no protected copy of an original row read .* "
                                             rf"e\.g\. \['{stray.image_id}'\]$"):
            attacker_rows(original, protected + [stray], ("train",), source="P.csv")
        with pytest.raises(ValueError, match=r"^P\.csv: 1 rows of split\(s\) \['train'\] are "):
            paired_rows(original, protected + [stray], "train", ("O.csv", "P.csv"))
    assert len(paired_rows(original, protected, "train")[1]) == 2
    # evaluate pairs the same way: a copy edited to another modality (or patient) was
    # accepted and read with that modality's preprocessing
    edited = [protected[0].replace(modality="fundus")] + protected[1:]
    with pytest.raises(ValueError, match="^P.csv: row 'P1_v0_protected' has "
                                         "modality='fundus', its original 'P1_v0' has 'xray'"):
        paired_rows(original, edited, "train", ("O.csv", "P.csv"))


def test_references_are_the_patients_images_of_the_same_modality():
    from types import SimpleNamespace
    rows = [_row("P1", "xray_v0", "test"), _row("P1", "xray_v1", "test"),
            _row("P1", "ct_v0", "test").replace(modality="ct"), _row("P2", "xray_v0", "test")]
    emb = np.asarray([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]], np.float32)
    refs = references.build_references([SimpleNamespace(row=rows[0])], [emb], rows,
                                      {r.image_id: i for i, r in enumerate(rows)})
    assert refs.mask.tolist() == [[1.0]]                     # P1's other X-ray, not its CT
    xray = emb[[0, 1, 3]] / np.linalg.norm(emb[[0, 1, 3]], axis=-1, keepdims=True)
    np.testing.assert_allclose(refs.center[0], xray.mean(0), rtol=1e-6)   # X-ray rows only
    want = objective.centred(xray[1:2], xray.mean(0))[0]
    np.testing.assert_allclose(refs.others[0][0, 0], want, rtol=1e-5)


def test_attacker_manifest_command(tmp_path, capsys):
    from mami_jax.apps.privacy.__main__ import main
    from mami_jax.data.manifest import read_manifest, write_manifest
    original = [_row("P1", "v0", "train", path=str(tmp_path / "a.png")),
                _row("P1", "v1", "train", path=str(tmp_path / "b.png")),
                _row("P2", "v0", "test", path=str(tmp_path / "c.png")),
                _row("P3", "v0", "train", path=str(tmp_path / "d.png")).replace(modality="ct")]
    protected = [r.replace(image_id=r.image_id + "_protected", path=str(tmp_path / "p" / "x.png"))
                 for r in original[:2]]
    write_manifest(original, str(tmp_path / "m.csv"))
    write_manifest(protected, str(tmp_path / "p.csv"))
    args = ["attacker-manifest", "--manifest", str(tmp_path / "m.csv"), "--protected",
            str(tmp_path / "p.csv"), "--out", str(tmp_path / "attacker.csv")]
    assert main(args + ["--modalities", "xray"]) == 0
    rows = read_manifest(str(tmp_path / "attacker.csv"))
    assert [r.image_id for r in rows] == ["P1_v0_protected", "P1_v1_protected", "P2_v0", "P3_v0"]
    assert [r.split for r in rows] == ["train", "train", "test", "train"]
    capsys.readouterr()
    # an existing manifest is replaced only when asked; any other file never (before: both were)
    assert main(args + ["--modalities", "xray"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'attacker.csv'} already exists; pass --overwrite to replace it")
    (tmp_path / "notes.csv").write_text("mine\n")
    assert main(args[:-1] + [str(tmp_path / "notes.csv"), "--overwrite"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'notes.csv'} exists and is not a manifest; refusing to replace it, "
        "even with --overwrite (choose another --out)")
    assert (tmp_path / "notes.csv").read_text() == "mine\n"
    args.append("--overwrite")
    assert main(args) == 1          # the CT train row has no protected copy
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'p.csv'}: 1 rows of split(s) ['train'] have no protected "
                   "copy, e.g. ['P3_v0']"]
    # a misspelt split or modality, or none given, would give the attacker the originals
    original = f"--manifest {tmp_path / 'm.csv'}: "
    for extra, message in ((["--splits", "tset"], original + "no rows of split ['tset'] "
                             "(splits there: ['test', 'train'])"),
                           (["--splits", ","], "no split given whose rows become protected"),
                           (["--modalities", "xrayy"], original + "no rows of modality "
                            "['xrayy'] (modalities there: ['ct', 'xray'])"),
                           (["--splits", "test", "--modalities", "ct"], original + "no rows "
                            "of split(s) ['test'] and modalities ['ct'] together")):
        assert main(args + extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: " + message), err
    os.makedirs(tmp_path / "folder")
    assert main(args[:-2] + [str(tmp_path / "folder"), "--modalities", "xray"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: --out {tmp_path / 'folder'}: is a folder; give the manifest file to write")
    # copies protected together with the test images (--split all) taught the attacker them
    (tmp_path / "protect_report.json").write_text('{"split": "all"}')
    assert main(args + ["--modalities", "xray"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: --protected {tmp_path / 'p.csv'}: protected with --split all, so the copies "
        "of train were optimised against the evaluation splits' images too (the centre of the "
        "embeddings, the impostors, the impersonation targets); protect --split train for the "
        "attacker's training images")
    (tmp_path / "protect_report.json").write_text('{"split": "train"}')
    assert main(args + ["--modalities", "xray"]) == 0


def test_target_is_the_farthest_other_patient_of_the_modality_and_lowers_the_score():
    from types import SimpleNamespace
    rows = [_row("P1", "xray_v0", "test"), _row("P1", "xray_v1", "test"),
            _row("P2", "xray_v0", "test"), _row("P3", "xray_v0", "test"),
            _row("P4", "ct_v0", "test").replace(modality="ct")]
    emb = np.asarray([[1.0, 0, 0], [1.0, 0.1, 0], [0, 1.0, 0], [-1.0, 0.05, 0], [-1.0, -0.2, 0]],
                     np.float32)
    refs = references.build_references([SimpleNamespace(row=rows[0])], [emb], rows,
                                      {r.image_id: i for i, r in enumerate(rows)})
    unit = emb[:4] / np.linalg.norm(emb[:4], axis=-1, keepdims=True)
    want = objective.centred(unit[3:4], unit.mean(0))[0]      # P3, not P2 nor the CT patient
    np.testing.assert_allclose(refs.target[0][0], want, rtol=1e-5)
    # with_target subtracts target_weight x the similarity to the target
    pcfg = load_config("configs/privacy.py").perturb
    pcfg.target_weight = 0.5
    embed = lambda params, images: images            # noqa: E731  (the "model" is the identity)
    x = jnp.asarray(refs.target[0] + refs.center[0])            # (1, C): an image AT the target
    plain = objective.make_member_score_fn(embed, lambda v, o: v, pcfg, 0)
    targeted = objective.make_member_score_fn(embed, lambda v, o: v, pcfg, 0, with_target=True)
    a = float(plain(None, x, None, references.member_refs(refs.arrays(), 0), jax.random.key(0))[0])
    b = float(targeted(None, x, None, references.member_refs(refs.arrays(), 0), jax.random.key(0))[0])
    assert b == pytest.approx(a - 0.5, abs=1e-4)
    # "nearest" picks P2, the other X-ray patient most similar to P1's image
    near = references.build_references([SimpleNamespace(row=rows[0])], [emb], rows,
                                      {r.image_id: i for i, r in enumerate(rows)}, "nearest")
    np.testing.assert_allclose(near.target[0][0], objective.centred(unit[2:3], unit.mean(0))[0],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="perturb.target='closest'"):
        references.build_references([SimpleNamespace(row=rows[0])], [emb], rows,
                                   {r.image_id: i for i, r in enumerate(rows)}, "closest")
