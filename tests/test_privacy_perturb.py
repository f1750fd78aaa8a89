"""The differentiable evaluation view equals the pipeline's, the perturbation stays in
its budget (linf and l2) and lowers the match score of a tiny model (as the common-weakness
step does; the rank objective its rank margin), as the deformation
(``apps.privacy.deform``) does inside its budget; the objective's
extra terms (feature disruption, keeping a diagnosis: ``apps.privacy.diagnosis_keep``,
whose classifier path equals the history classifier's numpy path and which refuses a
classifier of another model) do what they are for."""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mami_jax.apps.history import training
from mami_jax.inference import params_fingerprint
from mami_jax.apps.privacy import (common_weakness, deform, ensemble, objective, perturb,
                                   references)
from mami_jax.apps.privacy.diagnosis_keep import DiagnosisKeeper
from mami_jax.apps.privacy.model_input import InputMap, read_source, settings_for
from mami_jax.config_files import load_config
from mami_jax.data.config import default_data_config
from mami_jax.data.manifest import read_manifest
from mami_jax.data.example_reader import read_example
from mami_jax.models import MaMI
from mami_jax.models.embed import make_embedding_and_pooled_fn
from mami_jax.phantoms import generate
from tests.history_workdir import write_config
from tests.privacy_tiny import noisy_member


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("perturb")
    # seed 3: three patients with two X-rays each. With a single patient the centred
    # embeddings of its two images are opposite and every match score is 0 by construction.
    rows = read_manifest(generate(str(base / "ph"), patients=6, visits=2, seed=3, image_size=32,
                                  slices=2, workers=1))
    cfg = load_config(write_config(str(base)))
    params = MaMI(cfg.model).init(jax.random.key(0), jnp.zeros((1, 1, 32, 32, 3)))["params"]
    return rows, cfg, noisy_member(cfg, params, 1)


@pytest.fixture(scope="module")
def xray(setup):
    """The X-rays of ``setup`` as protection reads them: sources, the model-input map, the
    originals, their stain offset and their references under the tiny model."""
    rows, cfg, member = setup
    xray = [r for r in rows if r.modality == "xray"]
    s = settings_for(cfg.data, "xray")
    sources = [read_source(r, s) for r in xray]
    imap = InputMap(s, *sources[0].unit.shape[1:3])
    x0 = np.stack([src.unit for src in sources])
    refs = references.build_references(sources, [member.embedder.embed_rows(xray)], xray,
                                      {r.image_id: i for i, r in enumerate(xray)}, impostors=128)
    return types.SimpleNamespace(rows=xray, cfg=cfg, member=member, sources=sources, imap=imap,
                                 x0=x0, offset=imap.stain_offset(x0), refs=refs)


@pytest.mark.parametrize("modality", ["xray", "ct", "fundus", "pathology"])
def test_input_map_equals_the_evaluation_transform(setup, modality):
    rows, cfg, _ = setup
    row = next(r for r in rows if r.modality == modality)
    s = settings_for(cfg.data, modality)
    src = read_source(row, s)
    imap = InputMap(s, *src.unit.shape[1:3])
    x = src.unit[None]
    got = np.asarray(imap(x, imap.stain_offset(x)))[0]
    np.testing.assert_allclose(got, read_example(row, cfg.data), atol=2e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_keeps_the_budget(norm):
    delta = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 1))
    eps = 0.03
    projected = np.asarray(perturb.project(delta, norm, eps))
    used = perturb.budget_used(projected, norm, eps)
    np.testing.assert_allclose(used, 1.0, rtol=1e-5)     # large deltas land on the boundary
    small = np.asarray(perturb.project(delta * 1e-4, norm, eps))
    np.testing.assert_allclose(small, np.asarray(delta) * 1e-4, rtol=1e-6)  # inside: unchanged
    with pytest.raises(ValueError, match="perturb.norm='l1'"):
        perturb.project(delta, "l1", eps)


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.03)])
def test_perturbation_stays_in_budget_and_lowers_the_match_score(xray, norm, eps):
    member, imap, x0, offset, refs = xray.member, xray.imap, xray.x0, xray.offset, xray.refs
    pcfg = load_config("configs/privacy.py")
    pcfg.perturb.norm, pcfg.perturb.epsilon, pcfg.perturb.step_size = norm, eps, eps / 3
    score = objective.make_member_score_fn(member.embed, imap, pcfg.perturb, 1)
    plain = jax.jit(objective.make_score_fn([member], imap, pcfg.perturb, 0))
    step = perturb.make_step(score, norm, eps, eps / 3, 0.5)
    delta, _ = perturb.perturb(step, [member.params], x0, offset, refs, 8, jax.random.key(0))
    assert np.all(perturb.budget_used(delta, norm, eps) <= 1.0 + 1e-5)
    assert (x0 + delta).min() >= 0 and (x0 + delta).max() <= 1
    before = np.asarray(plain([member.params], x0, offset, refs.arrays(), jax.random.key(0)))
    after = np.asarray(plain([member.params], x0 + delta, offset, refs.arrays(), jax.random.key(0)))
    assert after.mean() < before.mean() - 0.1, (before, after)


def test_common_weakness_step_stays_in_budget_and_lowers_the_match_score(xray):
    member, imap, x0, offset, refs = xray.member, xray.imap, xray.x0, xray.offset, xray.refs
    pcfg = load_config("configs/privacy.py")
    score = objective.make_member_score_fn(member.embed, imap, pcfg.perturb, 1)
    plain = jax.jit(objective.make_score_fn([member], imap, pcfg.perturb, 0))
    step = common_weakness.make_step(score, "l2", 0.03, 0.01, 0.5, reverse_size=0.003,
                                     inner_size=0.01)
    delta, _ = perturb.perturb(step, [member.params], x0, offset, refs, 8, jax.random.key(0))
    assert np.all(perturb.budget_used(delta, "l2", 0.03) <= 1.0 + 1e-5)
    before = np.asarray(plain([member.params], x0, offset, refs.arrays(), jax.random.key(0)))
    after = np.asarray(plain([member.params], x0 + delta, offset, refs.arrays(), jax.random.key(0)))
    assert after.mean() < before.mean() - 0.1, (before, after)


def test_rank_objective_stays_in_budget_and_lowers_the_rank_margin(xray):
    member, imap, x0, offset, refs = xray.member, xray.imap, xray.x0, xray.offset, xray.refs
    pcfg = load_config("configs/privacy.py:rank").perturb
    pcfg.rank_floor = 10.0          # no floor: every image's margin is free to fall
    score = objective.make_member_score_fn(member.embed, imap, pcfg, 0, with_target=True)
    margins = jax.jit(lambda x: score(member.params, x, offset,
                                      references.member_refs(refs.arrays(), 0), jax.random.key(0)))
    step = perturb.make_step(score, "l2", 0.03, 0.01, 0.5)
    delta, _ = perturb.perturb(step, [member.params], x0, offset, refs, 8, jax.random.key(0))
    assert np.all(perturb.budget_used(delta, "l2", 0.03) <= 1.0 + 1e-5)
    before, after = np.asarray(margins(x0)), np.asarray(margins(x0 + delta))
    assert after.mean() < before.mean() - 0.05, (before, after)


def test_deformation_lowers_the_match_score_inside_the_budget(xray):
    member, imap, x0, offset, refs = xray.member, xray.imap, xray.x0, xray.offset, xray.refs
    pcfg = load_config("configs/privacy.py")
    pcfg.deform.grid, pcfg.deform.max_shift, pcfg.deform.step_size = 4, 4.0, 1.0
    eps = 0.08
    score = objective.make_member_score_fn(member.embed, imap, pcfg.perturb, 0)
    plain = jax.jit(objective.make_score_fn([member], imap, pcfg.perturb, 0))
    step = deform.make_step(score, x0.shape[2], x0.shape[3], pcfg.deform, "l2", eps)
    delta, u, history = deform.deform(step, [member.params], x0, offset, refs, 10,
                                      jax.random.key(0))
    assert history.shape == (10, len(x0))
    assert np.abs(u).max() <= 4.0 + 1e-6
    assert np.all(np.sqrt(np.mean(np.square(delta.reshape(len(x0), -1)), 1)) <= eps + 1e-6)
    before = np.asarray(plain([member.params], x0, offset, refs.arrays(), jax.random.key(0)))
    after = np.asarray(plain([member.params], x0 + delta, offset, refs.arrays(), jax.random.key(0)))
    assert after.mean() < before.mean() - 0.05, (before, after)
    # The change is a resampling of the original: a pixel moves within the range of its
    # neighbourhood, it does not take values the image does not have nearby.
    assert (x0 + delta).min() >= x0.min() - 1e-6 and (x0 + delta).max() <= x0.max() + 1e-6


def test_token_similarity_on_hand_made_tokens():
    clean = jnp.asarray([[[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]]])   # mean 0
    assert float(objective.token_similarity(clean, clean)[0]) == pytest.approx(1.0, abs=1e-5)
    assert float(objective.token_similarity(-clean, clean)[0]) == pytest.approx(-1.0, abs=1e-5)
    # adding the same vector to every token of both is no change: relative to the mean token
    shifted = clean + jnp.asarray([5.0, 5.0])
    assert float(objective.token_similarity(shifted, shifted)[0]) == pytest.approx(1.0, abs=1e-5)
    # two of four positions rotated by 90 degrees: cosines 1, 1, 0, 0
    half = jnp.asarray([[[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [-2.0, 0.0]]])
    assert float(objective.token_similarity(half, clean)[0]) == pytest.approx(0.5, abs=1e-5)


def test_feature_disruption_moves_the_layer_tokens_away_from_the_original(xray):
    """The feature term makes protection move block_0's tokens away from the original
    image's further than the match score alone does, within the same budget; without the
    clean image the objective refuses to run."""
    cfg, member, imap, x0, offset, refs = (xray.cfg, xray.member, xray.imap, xray.x0,
                                           xray.offset, xray.refs)
    tokens = ensemble.tokens_fn(cfg.model, "block_0")

    def protect(feature_weight):
        pcfg = load_config("configs/privacy.py")
        pcfg.perturb.feature_weight, pcfg.perturb.feature_layer = feature_weight, "block_0"
        score = objective.make_member_score_fn(member.embed, imap, pcfg.perturb, 1,
                                               with_target=True, tokens_fn=tokens)
        step = perturb.make_step(score, "l2", 0.1, 0.03, 0.5)
        delta, _ = perturb.perturb(step, [member.params], x0, offset, refs, 8, jax.random.key(0))
        assert np.all(perturb.budget_used(delta, "l2", 0.1) <= 1.0 + 1e-5)
        return delta, score

    def similarity(x):
        _, t = tokens(member.params, imap(x, offset))
        _, t0 = tokens(member.params, imap(x0, offset))
        return np.asarray(objective.token_similarity(t, t0))

    np.testing.assert_allclose(similarity(x0), 1.0, atol=1e-5)
    plain, _ = protect(0.0)
    disrupted, score = protect(5.0)
    assert similarity(x0 + disrupted).mean() < similarity(x0 + plain).mean() - 0.05, (
        similarity(x0 + disrupted), similarity(x0 + plain))
    with pytest.raises(ValueError, match="needs the clean image"):
        score(member.params, x0, offset, references.member_refs(refs.arrays(), 0), jax.random.key(0))
    with pytest.raises(ValueError, match="perturb.feature_layer='block_9'"):
        ensemble.tokens_fn(cfg.model, "block_9")


CLS = types.SimpleNamespace(hidden=8, steps=100, learning_rate=3e-2, weight_decay=0.0, seed=0)


@pytest.fixture(scope="module")
def keep_setup(xray, tmp_path_factory):
    """``xray`` and a history classifier of the tiny model's backbone features
    (alternating labels), saved as history ``train`` saves it."""
    cfg, member, imap, x0, offset = xray.cfg, xray.member, xray.imap, xray.x0, xray.offset
    xray_rows = xray.rows
    feats = np.asarray(make_embedding_and_pooled_fn(cfg.model)(member.params,
                                                               {"images": imap(x0, offset)}))
    backbone = feats[:, np.asarray(member.embedder.embed_rows(xray_rows[:1])).shape[1]:]
    mods = ["xray"] * len(xray_rows)
    y = np.arange(len(xray_rows)) % 2
    norm = {"features": training.standardizer(backbone, mods)}
    current = training.train_current(training.apply_standardizer(norm["features"], backbone, mods),
                                     y, 2, CLS)
    out = str(tmp_path_factory.mktemp("keep") / "hist")
    os.makedirs(out)
    training.save_classifiers(os.path.join(out, "classifiers.msgpack"),
                              {"norm": norm, "current": current, "fused": current})
    np.savez(os.path.join(out, "features.npz"), fingerprint=np.asarray(params_fingerprint(member.params)))
    return types.SimpleNamespace(**vars(xray), backbone=backbone, out=out)


def test_logits_equal_the_history_classifier_path(keep_setup):
    setup = keep_setup
    keeper = DiagnosisKeeper(setup.out, "configs/history.py", setup.member)
    logits = keeper.logits_fn("xray")(setup.member.params, setup.imap(setup.x0, setup.offset))
    want = keeper.classifier.probabilities(setup.backbone, ["xray"] * len(setup.x0))
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits, -1)), want, atol=1e-5)
    with pytest.raises(ValueError, match="saw no ct training image"):
        keeper.logits_fn("ct")


def test_keeping_holds_the_diagnosis_and_still_lowers_the_match_score(keep_setup):
    setup = keep_setup
    keeper = DiagnosisKeeper(setup.out, "configs/history.py", setup.member)
    refs = setup.refs
    pcfg = load_config("configs/privacy.py").perturb
    score = objective.make_member_score_fn(setup.member.embed, setup.imap, pcfg, 1, with_target=True)
    plain = jax.jit(objective.make_score_fn([setup.member], setup.imap, pcfg, 0))
    logits = keeper.logits_fn("xray")
    params = setup.member.params

    def protect(weight):
        pcfg.keep_weight = weight
        keep = [(0, keeper.change_fn(setup.imap, "xray", pcfg, 1))] if weight else []
        step = perturb.make_step(score, "l2", 0.1, 0.03, 0.5, keep_changes=keep)
        delta, _ = perturb.perturb(step, [params], setup.x0, setup.offset, refs, 10,
                                   jax.random.key(0))
        assert np.all(perturb.budget_used(delta, "l2", 0.1) <= 1.0 + 1e-5)
        return delta

    def change(delta):
        a = logits(params, setup.imap(setup.x0 + delta, setup.offset))
        b = logits(params, setup.imap(setup.x0, setup.offset))
        return float(jnp.mean(jnp.square(a - b)))

    def match(delta):
        return float(np.mean(plain([params], setup.x0 + delta, setup.offset, refs.arrays(),
                                   jax.random.key(0))))

    free, kept = protect(0.0), protect(100.0)
    assert change(kept) < 0.5 * change(free), (change(kept), change(free))
    assert match(kept) < match(np.zeros_like(setup.x0)) - 0.1


def test_a_classifier_of_another_model_is_refused(keep_setup, tmp_path):
    setup = keep_setup
    other = str(tmp_path / "other")
    os.makedirs(other)
    for name in ("classifiers.msgpack",):
        with open(os.path.join(setup.out, name), "rb") as f, open(os.path.join(other, name), "wb") as g:
            g.write(f.read())
    np.savez(os.path.join(other, "features.npz"), fingerprint=np.asarray("f" * 64))
    with pytest.raises(ValueError, match=r"perturb.keep_diagnosis=.*fffffffffff.*not the "
                                         r"protecting model"):
        DiagnosisKeeper(other, "configs/history.py", setup.member)
    with pytest.raises(ValueError, match=r"perturb.keep_diagnosis .*run `train` first"):
        DiagnosisKeeper(str(tmp_path / "none"), "configs/history.py", setup.member)
    from mami_jax.apps.privacy.protect import keepers_of
    pcfg = load_config("configs/privacy.py").perturb
    pcfg.keep_diagnosis = f"{setup.out}+{setup.out}"           # two classifiers, one model
    with pytest.raises(ValueError, match="names 2 classifiers for 1 re-ID models"):
        keepers_of(pcfg, [setup.member])
    pcfg.keep_diagnosis = f"{setup.out}+{other}"               # the second one is checked too
    with pytest.raises(ValueError, match="fffffffffff"):
        keepers_of(pcfg, [setup.member, setup.member])
    pcfg.keep_diagnosis = setup.out
    assert len(keepers_of(pcfg, [setup.member, setup.member])) == 1


@pytest.mark.parametrize("n, t", [(16, 2), (16, 4), (10, 4), (17, 2), (3, 2), (2, 2), (7, 2),
                                  (11, 2), (13, 3)])
def test_slice_groups_cover_the_series_and_hold_the_evaluation_view(n, t):
    from mami_jax.apps.privacy.model_input import slice_groups
    from mami_jax.data.transforms import slice_indices
    groups = slice_groups(n, t)
    assert all(len(g) == t for g in groups)
    assert sorted(set(np.concatenate(groups).tolist())) == list(range(n))
    # one slice per segment, where training reads floor((i + u) n / t), u in [0, 1)
    for g in groups:
        assert all(np.floor(i * n / t) <= s < (i + 1) * n / t for i, s in enumerate(g.tolist()))
    # the view evaluation reads is one of them (7 slices read as 2: (1, 5) was none)
    assert any(np.array_equal(g, slice_indices(n, t)) for g in groups)
    if n % t == 0:
        assert len(groups) == n // t               # no slice twice


def test_every_slice_of_a_series_is_protected(setup, tmp_path):
    """CT series of 6 slices read as 2: with ``every_slice`` every slice of the written
    NIfTI changes, each group within the budget, and the inputs stay as they were;
    without it only the 2 slices evaluation reads change. The noise control spends the
    whole budget on the slices it changes."""
    from mami_jax.apps.privacy.model_input import slice_groups
    from mami_jax.apps.privacy.protect import protect_rows
    from mami_jax.data.decode import open_volume
    from mami_jax.data.transforms import slice_indices
    _, cfg, member = setup
    rows = [r for r in read_manifest(generate(str(tmp_path / "ph"), patients=5, visits=2, seed=3,
                                              image_size=32, slices=6, workers=1))
            if r.modality == "ct"]              # two patients' CT: the centre needs others'
    assert len({r.patient_id for r in rows}) == 2
    digests = {r.path: open(r.path, "rb").read() for r in rows}
    pcfg = load_config("configs/privacy.py")
    pcfg.perturb.steps, pcfg.perturb.step_size, pcfg.batch_size = 3, 0.02, 4
    targets = rows[:2]

    def changed_slices(every, method="perturb"):
        pcfg.every_slice, pcfg.method = every, method
        out = str(tmp_path / f"out_{every}_{method}")
        new_rows, records = protect_rows(rows, targets, [member], pcfg,
                                         str(tmp_path / "ph"), out, progress=False)
        per_row = []
        for a, b, rec in zip(targets, new_rows, records):
            x, y = open_volume(a.path), open_volume(os.path.join(out, b.path))
            assert x.num_slices == y.num_slices == 6
            d = y.read(np.arange(6)) - x.read(np.arange(6))
            rms = np.sqrt(np.mean(np.square(d), axis=(1, 2, 3)))
            assert np.sqrt(np.mean(np.square(d))) <= pcfg.perturb.epsilon * 1.1
            if method == "noise":      # the control spends the whole budget
                assert np.sqrt(np.mean(np.square(d[rms > 1e-4]))) >= pcfg.perturb.epsilon * 0.8
            assert rec["slices_protected"] == (6 if every else 2)
            # each group, read as the model reads it (its own intensity scale), keeps its
            # budget: the views' changes were written in one common scale
            for g in slice_groups(6, 2):
                dg = y.read(g) - x.read(g)
                assert np.sqrt(np.mean(np.square(dg))) <= pcfg.perturb.epsilon * 1.1, g
            per_row.append(np.flatnonzero(rms > 1e-4).tolist())
        return per_row

    assert changed_slices(True) == [list(range(6))] * 2
    # the noise control compiles no optimisation step: the cheap way to check the rest
    assert changed_slices(True, "noise") == [list(range(6))] * 2
    assert changed_slices(False, "noise") == [slice_indices(6, 2).tolist()] * 2
    assert {r.path: open(r.path, "rb").read() for r in rows} == digests


def test_views_of_different_intensity_ranges_are_written_in_their_own_scale(tmp_path):
    """A NIfTI read min-max per view: slices 0, 2 span 0-100 and slices 1, 3 span 0-1000,
    so the two views' unit scales differ tenfold. Written together, each view re-read on
    its own shows the change it was optimised with (to the int16 rounding)."""
    import nibabel as nib
    from mami_jax.apps.privacy.model_input import Source
    from mami_jax.apps.privacy.row_views import PendingRows
    from mami_jax.apps.privacy.writers import write_protected
    from mami_jax.data.decode import open_volume
    from mami_jax.data.manifest import ManifestRow
    rng = np.random.default_rng(0)
    vol = np.zeros((16, 16, 4), np.int16)                # (X, Y, slice), identity affine
    for k, top in enumerate((100, 1000, 100, 1000)):
        vol[..., k] = rng.integers(0, top + 1, (16, 16))
        vol[0, 0, k], vol[1, 1, k] = 0, top
    path = str(tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    row = ManifestRow(image_id="v", patient_id="p", study_id="s", order="0", modality="ct",
                      dataset="d", view="", path=path, split="test")
    volume = open_volume(path)
    views = [Source(row, volume.read(idx), np.asarray(idx), 4, np.ones(2, bool))
             for idx in ([0, 2], [1, 3])]
    # the extremes stay as they are, so that the min-max reading keeps its scale
    deltas = [np.where((v.unit > 0) & (v.unit < 0.9), 0.05, 0.0).astype(np.float32)
              for v in views]
    pending = PendingRows(views, default_data_config())
    assert pending.add(views[0], deltas[0], 0.0, 0.0) is None
    whole = pending.add(views[1], deltas[1], 0.0, 0.0)
    assert whole.slices.tolist() == [0, 1, 2, 3]
    out = str(tmp_path / "out.nii.gz")
    write_protected(path, whole.slices, whole.delta, out)
    for v, d in zip(views, deltas):
        got = open_volume(out).read(v.slices) - v.unit
        np.testing.assert_allclose(got, d, atol=0.011)   # 1 stored unit of 100 at most


def test_a_dicom_copy_names_nobody_when_asked_and_everyone_by_default(setup, tmp_path):
    """``metadata.identity``: by default a protected DICOM keeps its header (the issue's
    'DICOM with its metadata'); with "remove" protect empties who and when, replaces its
    UIDs and counts what it removed in the record, and the input file stays as it was."""
    import pydicom
    from PIL import Image

    from mami_jax.apps.privacy.protect import protect_rows
    from tests.test_data_decode import write_dicom
    rows, _, member = setup
    xray = [r for r in rows if r.modality == "xray"]
    first = xray[0]
    dcm = str(tmp_path / "in" / "first.dcm")
    os.makedirs(os.path.dirname(dcm))
    with Image.open(first.path) as im:
        pixels = (np.asarray(im.convert("L"), np.uint16) * 16)
    write_dicom(dcm, pixels, PatientName="Doe^Jane", PatientID="X123",
                InstitutionName="St Elsewhere", StudyInstanceUID="1.2.3.4",
                BurnedInAnnotation="YES")
    before = open(dcm, "rb").read()
    rows_in = [first.replace(path=dcm)] + xray[1:]
    pcfg = load_config("configs/privacy.py")
    pcfg.method, pcfg.batch_size = "noise", 4         # no optimisation: the writing is tested

    copies = []

    def protected(identity):
        pcfg.metadata.identity = identity
        out = str(tmp_path / identity)
        new_rows, records = protect_rows(rows_in, rows_in[:1], [member], pcfg,
                                         str(tmp_path), out, progress=False)
        copies.append(os.path.join(out, new_rows[0].path))
        return pydicom.dcmread(copies[-1]), records[0]

    original_uid = pydicom.dcmread(dcm).SOPInstanceUID
    kept, record = protected("keep")
    assert (str(kept.PatientName), kept.PatientID, kept.StudyInstanceUID) == (
        "Doe^Jane", "X123", "1.2.3.4") and record["header_elements_removed"] == 0
    assert kept.SourceImageSequence[0].ReferencedSOPInstanceUID == original_uid
    assert record["burned_in_annotation"] is True
    removed, record = protected("remove")
    assert (str(removed.PatientName), removed.PatientID, removed.InstitutionName) == ("", "", "")
    assert removed.StudyInstanceUID != "1.2.3.4" and removed.PatientIdentityRemoved == "YES"
    # three named; the study's, the copy's own and its source image's UIDs
    assert record["header_elements_removed"] == 3 + 3
    assert original_uid.encode() not in open(copies[-1], "rb").read()
    np.testing.assert_array_equal(removed.pixel_array, kept.pixel_array)   # same seed
    assert open(dcm, "rb").read() == before


def test_a_folder_row_counts_the_files_its_copy_left_out(setup, tmp_path):
    """A slice folder with a note beside its one slice: the copy holds the slice, the
    record says one file was not copied, and the input folder stays as it was."""
    import shutil

    from mami_jax.apps.privacy.protect import protect_rows
    rows, _, member = setup
    xray = [r for r in rows if r.modality == "xray"]
    folder = tmp_path / "in" / "scan"
    folder.mkdir(parents=True)
    shutil.copyfile(xray[0].path, folder / "slice_0.png")
    (folder / "notes.txt").write_text("scanned by dr x\n")
    rows_in = [xray[0].replace(path=str(folder))] + xray[1:]
    pcfg = load_config("configs/privacy.py")
    pcfg.method, pcfg.batch_size = "noise", 4
    new_rows, records = protect_rows(rows_in, rows_in[:1], [member], pcfg, str(tmp_path),
                                     str(tmp_path / "out"), progress=False)
    assert os.listdir(os.path.join(tmp_path / "out", new_rows[0].path)) == ["slice_0.png"]
    assert records[0]["files_not_copied"] == 1
    assert sorted(os.listdir(folder)) == ["notes.txt", "slice_0.png"]
