"""The rank objective of the privacy protection (``perturb.objective = "rank"``): its margin
on hand-worked embeddings, its floor (no gradient once an impostor wins by the margin),
the impostors it ranks against (the modality's other patients only), and that it replaces
the match score only in what protection minimises."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mami_jax.apps.privacy import objective, references
from mami_jax.config_files import load_config
from mami_jax.data.manifest import ManifestRow

T = 0.05


def _margin(e, others, mask, impostors, impostor_mask, floor=0.1, own=None):
    e = jnp.asarray([e], jnp.float32)
    own = e if own is None else jnp.asarray([own], jnp.float32)
    return objective.rank_margins(e, jnp.asarray([others], jnp.float32),
                                  jnp.asarray([mask], jnp.float32), own,
                                  jnp.asarray([impostors], jnp.float32),
                                  jnp.asarray([impostor_mask], jnp.float32), T, floor)


def test_margin_is_the_soft_best_match_minus_the_soft_best_impostor():
    others = [[0.8, 0.6], [0.0, 1.0]]
    impostors = [[0.6, 0.8], [-1.0, 0.0], [5.0, 5.0]]        # the third is padding
    got = float(_margin([1.0, 0.0], others, [1, 1], impostors, [1, 1, 0])[0])
    # same: 0.05 log(e^16 + e^0); impostors: 0.05 log(e^12 + e^-20)
    want = T * np.log(np.exp(16) + 1) - T * np.log(np.exp(12) + np.exp(-20))
    assert got == pytest.approx(want, abs=1e-5)
    assert got == pytest.approx(0.2, abs=1e-3)
    # a masked-out other image does not count: only [0, 1] (similarity 0) is left
    got = float(_margin([1.0, 0.0], others, [0, 1], impostors, [1, 1, 0], floor=1.0)[0])
    assert got == pytest.approx(0.0 - 0.6, abs=1e-3)


def test_margin_is_floored_and_the_floor_stops_the_gradient():
    others, impostors = [[0.0, 1.0]], [[1.0, 0.0]]
    e = [1.0, 0.0]                     # the impostor wins by 1 > floor
    assert float(_margin(e, others, [1], impostors, [1])[0]) == pytest.approx(-0.1)
    grad = jax.grad(lambda v: _margin(v, others, [1], impostors, [1])[0])(jnp.asarray(e))
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
    # above the floor the gradient lowers the match and raises the impostor
    e = [0.6, 0.8]                     # same 0.8, impostor 0.6: margin 0.2
    grad = np.asarray(jax.grad(lambda v: _margin(v, others, [1], impostors, [1])[0])(
        jnp.asarray(e)))
    np.testing.assert_allclose(grad, [-1.0, 1.0], atol=1e-4)


def test_patient_without_other_images_ranks_its_own_original_and_no_impostor_is_no_nan():
    got = float(_margin([1.0, 0.0], [[0.0, 1.0]], [0], [[0.6, 0.8]], [1], own=[0.8, 0.6])[0])
    assert got == pytest.approx(0.8 - 0.6, abs=1e-4)
    grad = jax.grad(lambda v: _margin(v, [[0.0, 1.0]], [1], [[0.0, 0.0]], [0])[0])(
        jnp.asarray([0.6, 0.8]))
    assert np.isfinite(np.asarray(grad)).all()


def _row(pid, study, modality="xray"):
    return ManifestRow(f"{pid}_{study}", pid, f"{modality}_{study}", study[-1], modality,
                       "phantoms", "pa", "x.png", "test")


def _impostor_rows():
    return [_row("P1", "v0"), _row("P1", "v1"), _row("P2", "v0"), _row("P2", "v1"),
            _row("P3", "v0"), _row("P4", "v0", "ct")]


def _nearest_first(centred, own, idx):
    return sorted(idx, key=lambda j: -float(centred[j] @ centred[own]))


def test_impostors_are_the_modality_s_other_patients_nearest_first():
    rows = _impostor_rows()
    emb = np.random.default_rng(0).normal(size=(len(rows), 4)).astype(np.float32)
    refs = references.build_references([SimpleNamespace(row=rows[0]), SimpleNamespace(row=rows[4])],
                                      [emb], rows, {r.image_id: i for i, r in enumerate(rows)},
                                      impostors=10)
    unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    centred = objective.centred(unit, unit[:5].mean(0))
    # P1's first X-ray: P2's two and P3's one; P3's: P1's two and P2's two; never the CT
    np.testing.assert_array_equal(refs.impostor_mask, [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(refs.impostors[0][0, :3],
                               centred[_nearest_first(centred, 0, [2, 3, 4])], rtol=1e-5)
    np.testing.assert_allclose(refs.impostors[0][1],
                               centred[_nearest_first(centred, 4, [0, 1, 2, 3])], rtol=1e-5)


def test_impostors_are_capped_per_member_by_similarity_and_absent_unless_asked():
    rows = _impostor_rows()
    rng = np.random.default_rng(1)
    members = [rng.normal(size=(len(rows), 4)).astype(np.float32) for _ in range(2)]
    index = {r.image_id: i for i, r in enumerate(rows)}
    refs = references.build_references([SimpleNamespace(row=rows[4])], members, rows, index,
                                      impostors=2)
    np.testing.assert_array_equal(refs.impostor_mask, [[1, 1]])
    for m, emb in enumerate(members):      # each member keeps its own two nearest
        unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        centred = objective.centred(unit, unit[:5].mean(0))
        np.testing.assert_allclose(refs.impostors[m][0],
                                   centred[_nearest_first(centred, 4, [0, 1, 2, 3])[:2]],
                                   rtol=1e-5)
    plain = references.build_references([SimpleNamespace(row=rows[4])], members, rows, index)
    np.testing.assert_array_equal(plain.impostor_mask, [[0]])


def test_only_the_rank_objective_gathers_impostors_and_a_cap_below_one_is_refused():
    pcfg = load_config("configs/privacy.py").perturb
    assert objective.impostors_needed(pcfg) == 0
    pcfg.objective = "rank"
    assert objective.impostors_needed(pcfg) == pcfg.rank_impostors == 128
    pcfg.rank_impostors = 0
    with pytest.raises(ValueError, match="perturb.rank_impostors=0"):
        objective.impostors_needed(pcfg)


def test_rank_replaces_the_match_score_only_in_what_protection_minimises():
    pcfg = load_config("configs/privacy.py").perturb
    pcfg.objective = "rank"
    embed = lambda params, images: images            # noqa: E731  (the "model" is the identity)
    x = jnp.asarray([[0.6, 0.8]])
    refs = (jnp.asarray([[[0.0, 1.0]]]), jnp.ones((1, 1)), jnp.asarray([[0.6, 0.8]]),
            jnp.zeros(2), jnp.zeros((1, 2)), jnp.asarray([[[1.0, 0.0]]]), jnp.ones((1, 1)))
    plain = objective.make_member_score_fn(embed, lambda v, o: v, pcfg, 0)
    minimised = objective.make_member_score_fn(embed, lambda v, o: v, pcfg, 0, with_target=True)
    key = jax.random.key(0)
    assert float(plain(None, x, None, refs, key)[0]) == pytest.approx((0.8 + 1.0) / 2, abs=1e-5)
    assert float(minimised(None, x, None, refs, key)[0]) == pytest.approx(0.2, abs=1e-3)
    pcfg.objective = "ranking"
    with pytest.raises(ValueError, match="perturb.objective='ranking'"):
        objective.make_member_score_fn(embed, lambda v, o: v, pcfg, 0)


def test_the_transfer_recipe_ranks_xrays_alone_and_the_rank_word_every_modality():
    transfer = load_config("configs/privacy.py:runlocal,transfer=A+B").perturb
    assert [objective.objective_for(transfer, m) for m in ("xray", "ct", "fundus")] == \
        ["rank", "similarity", "similarity"]
    ranked = load_config("configs/privacy.py:runlocal,transfer=A+B,rank").perturb
    assert {objective.objective_for(ranked, m) for m in ("xray", "ct", "fundus")} == {"rank"}
    assert objective.objective_for(load_config("configs/privacy.py").perturb, "xray") == \
        "similarity"
    transfer.modality_objective = {"ct": "ranking"}
    with pytest.raises(ValueError, match=r"perturb.modality_objective\['ct'\]='ranking'"):
        objective.objective_for(transfer, "ct")


def test_the_score_minimised_follows_the_modality_s_objective():
    pcfg = load_config("configs/privacy.py:runlocal,transfer=A+B").perturb
    embed = lambda params, images: images            # noqa: E731
    x = jnp.asarray([[0.6, 0.8]])
    refs = (jnp.asarray([[[0.0, 1.0]]]), jnp.ones((1, 1)), jnp.asarray([[0.6, 0.8]]),
            jnp.zeros(2), jnp.zeros((1, 2)), jnp.asarray([[[1.0, 0.0]]]), jnp.ones((1, 1)))
    key = jax.random.key(0)
    got = {m: float(objective.make_member_score_fn(embed, lambda v, o: v, pcfg, 0, with_target=True,
                                                   modality=m)(None, x, None, refs, key)[0])
           for m in ("xray", "fundus")}
    assert got["xray"] == pytest.approx(0.8 - 0.6, abs=1e-3)        # rank margin
    assert got["fundus"] == pytest.approx((0.8 + 1.0) / 2, abs=1e-5)  # match score
