"""Difference alignment, training side: the "align" term against a numpy reference, its
masks, its head (training-only), sharding and micro-batching, and the config words."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.all import get_config as all_config
from mami_jax.data import teacher_join
from mami_jax.runtime import sharding
from mami_jax.train import checkpointing, loss_terms
from mami_jax.train.objective import TrainModel, example_batch, make_loss_fn
from mami_jax.train.optim import make_optimizer
from mami_jax.train.step import loss_and_grads, make_train_step
from mami_jax.train.trainer import make_init_state

TINY_MODEL = dict(width=32, depth=1, num_heads=4, patch_size=8, image_size=32, rank=4,
                  num_codes=4, generator_hidden=(24, 16), qkv_groups=4, mlp_groups=8,
                  adapter_width=8)
DIMS = {"anatomy": 6, "other": 5}


# ---------------------------------------------------------------- numpy reference

def _np_infonce(u, v, temperature):
    """mean_k [-s_kk + log sum_l exp s_kl] of L2-normalised rows (docs/design.md)."""
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = u @ v.T / temperature
    lse = np.log(np.exp(s).sum(axis=1))
    return float(np.mean(lse - np.diag(s)))


def _np_pairs(x, valid):
    idx = np.flatnonzero(valid)
    return np.asarray([x[i] - x[j] for a, i in enumerate(idx) for j in idx[a + 1:]])


def _np_align(student, teacher, mask, teacher_mask, temperature, variant):
    values = []
    for name in sorted(student):
        valid = mask & teacher_mask[name]
        if variant == "difference":
            if valid.sum() < 2:
                continue
            values.append(_np_infonce(_np_pairs(student[name], valid),
                                      _np_pairs(teacher[name], valid), temperature))
        else:
            if valid.sum() < 1:
                continue
            values.append(_np_infonce(student[name][valid], teacher[name][valid], temperature))
    return float(np.mean(values)) if values else 0.0


def _hand_batch(seed=0, b=6):
    rng = np.random.default_rng(seed)
    student = {n: rng.normal(size=(b, d)).astype(np.float32) for n, d in DIMS.items()}
    teacher = {n: rng.normal(size=(b, d)).astype(np.float32) for n, d in DIMS.items()}
    mask = np.array([True, True, False, True, True, True])
    teacher_mask = {"anatomy": np.array([True, True, True, True, False, True]),
                    "other": np.array([False, True, True, False, True, True])}
    return student, teacher, mask, teacher_mask


def _loss_cfg(variant="difference", temperature=0.2):
    cfg = all_config("runlocal").loss
    with cfg.unlocked():
        cfg.align.variant, cfg.align.temperature = variant, temperature
    return cfg


def _term(student, teacher, mask, teacher_mask, cfg):
    batch = {"mask": jnp.asarray(mask), "teacher": {n: jnp.asarray(v) for n, v in teacher.items()},
             "teacher_mask": {n: jnp.asarray(v) for n, v in teacher_mask.items()}}
    return loss_terms.align({"align": {n: jnp.asarray(v) for n, v in student.items()}}, batch, cfg)


@pytest.mark.parametrize("variant", ["difference", "single"])
def test_align_term_equals_numpy_reference(variant):
    student, teacher, mask, teacher_mask = _hand_batch()
    cfg = _loss_cfg(variant)
    want = _np_align(student, teacher, mask, teacher_mask, 0.2, variant)
    got = float(_term(student, teacher, mask, teacher_mask, cfg))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the two teachers both count, each over its own valid rows (anatomy: 0,1,3,5; other: 1,4,5)
    one = _np_align({"anatomy": student["anatomy"]}, teacher, mask, teacher_mask, 0.2, variant)
    assert abs(want - one) > 1e-3


def test_masked_rows_do_not_count_and_teacher_without_pairs_is_left_out():
    student, teacher, mask, teacher_mask = _hand_batch()
    cfg = _loss_cfg()
    base = float(_term(student, teacher, mask, teacher_mask, cfg))
    # row 2 (mask False) and row 4 for anatomy (teacher_mask False): any values, same loss
    s2 = {n: v.copy() for n, v in student.items()}
    t2 = {n: v.copy() for n, v in teacher.items()}
    s2["anatomy"][[2, 4]] = 1e3
    t2["anatomy"][[2, 4]] = -7.0
    s2["other"][[0, 2, 3]] = 55.0
    np.testing.assert_allclose(float(_term(s2, t2, mask, teacher_mask, cfg)), base, rtol=1e-6)
    # "other" left with one valid image: no pair, so the mean is anatomy's alone (not /2)
    tm = dict(teacher_mask, other=np.array([False, True, False, False, False, False]))
    got = float(_term(student, teacher, mask, tm, cfg))
    want = _np_align({"anatomy": student["anatomy"]}, teacher, mask, tm, 0.2, "difference")
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_no_valid_pair_gives_zero_and_finite_gradient():
    student, teacher, mask, teacher_mask = _hand_batch()
    none = {n: np.zeros_like(v) for n, v in teacher_mask.items()}
    cfg = _loss_cfg()

    def f(s):
        return _term(s, teacher, mask, none, cfg)

    value, grads = jax.value_and_grad(f)({n: jnp.asarray(v) for n, v in student.items()})
    assert float(value) == 0.0
    assert all(np.isfinite(np.asarray(g)).all() and not np.asarray(g).any()
               for g in grads.values())
    # identical images (zero differences) stay finite too
    same = {n: np.repeat(v[:1], len(v), 0) for n, v in student.items()}
    value, grads = jax.value_and_grad(lambda s: _term(s, same, mask, teacher_mask, cfg))(
        {n: jnp.asarray(v) for n, v in same.items()})
    assert np.isfinite(float(value))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads.values())


def test_unknown_variant_is_a_config_error():
    student, teacher, mask, teacher_mask = _hand_batch()
    with pytest.raises(ValueError, match=r"loss.align.variant='pairs'"):
        _term(student, teacher, mask, teacher_mask, _loss_cfg("pairs"))


# ---------------------------------------------------------------- model, step, sharding

def _config(terms):
    cfg = all_config("runlocal,align")
    with cfg.unlocked():
        cfg.model.update(TINY_MODEL)
        cfg.data.teacher_features.teachers = tuple(DIMS)
        cfg.data.teacher_features.dims = dict(DIMS)
        cfg.loss.terms = terms
        cfg.optim.update(warmup_steps=0, grad_clip_norm=0.0, weight_decay=0.0,
                         learning_rate=3e-3)
    return cfg


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"images": rng.normal(size=(n, 1, 32, 32, 3)).astype(np.float32),
            "label": np.repeat(np.arange(n // 2), 2).astype(np.int32),
            "mask": np.ones(n, bool),
            "teacher": {k: rng.normal(size=(n, d)).astype(np.float32) for k, d in DIMS.items()},
            "teacher_mask": {"anatomy": np.ones(n, bool),
                             "other": np.arange(n) % 4 != 3},
            "_skipped": 0}


def _state(cfg, steps=10):
    model = TrainModel(cfg, 4)
    abstract = jax.eval_shape(lambda r: model.init(r, example_batch(cfg))["params"],
                              jax.random.key(0))
    opt = make_optimizer(cfg.optim, abstract, steps)
    return model, opt, jax.jit(make_init_state(cfg, model, opt))(jax.random.key(0))


def _fields(batch):
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def test_head_is_training_only_and_mami_params_are_unchanged():
    on = _config({"triplet": 1.0, "align": 0.01})
    off = _config({"triplet": 1.0})
    p_on = TrainModel(on, 4).init(jax.random.key(0), example_batch(on))["params"]
    p_off = TrainModel(off, 4).init(jax.random.key(0), example_batch(off))["params"]
    assert set(p_on) == {"mami", "align"} and set(p_off) == {"mami"}
    assert "teacher" in example_batch(on) and "teacher" not in example_batch(off)
    # the exported / evaluated model is the same tree, bit for bit at init
    jax.tree_util.tree_map(np.testing.assert_array_equal, p_on["mami"], p_off["mami"])
    heads = p_on["align"]["readout"]
    assert heads["anatomy"]["proj"]["kernel"].shape == (32, 6)
    assert heads["other"]["proj"]["kernel"].shape == (32, 5)
    assert set(heads["anatomy"]["query"]) == {"fc1", "fc2", "fc3"}   # the 3-layer query MLP
    # checkpoint: params item = MaMI alone; the head rides in the train item
    state = make_init_state(on, TrainModel(on, 4), make_optimizer(
        on.optim, jax.eval_shape(lambda: p_on), 10))(jax.random.key(0))
    assert set(checkpointing._train_item(state)["heads"]) == {"align"}
    # applying with align on gives every teacher's readout, float32, (B, D_t)
    out = TrainModel(on, 4).apply({"params": p_on}, _fields(_batch()))
    assert {k: v.shape for k, v in out["align"].items()} == {"anatomy": (8, 6), "other": (8, 5)}


def test_align_loss_falls_on_a_fixed_batch():
    cfg = _config({"align": 1.0})
    model, opt, state = _state(cfg, 20)
    step = jax.jit(make_train_step(model, opt, cfg.loss))
    batch = _fields(_batch())
    values = []
    for _ in range(8):
        state, metrics = step(state, batch)
        values.append(float(metrics["align"]))
    assert values[-1] < values[0] - 0.1, values


def test_sharded_equals_unsharded_and_pairs_span_the_global_batch():
    cfg = _config({"triplet": 1.0, "align": 0.5})
    model, _, state = _state(cfg)
    batch = _batch()
    loss_fn = make_loss_fn(model, cfg.loss)
    value_and_grads = jax.value_and_grad(loss_fn, has_aux=True)
    mesh = sharding.make_mesh(4, 2)
    shardings = sharding.tree_shardings(state.params, cfg.partition_rules, mesh)
    (_, m1), g1 = jax.jit(value_and_grads)(state.params, _fields(batch))
    (_, m2), g2 = jax.jit(value_and_grads,
                          in_shardings=(shardings, sharding.batch_sharding(mesh)))(
        jax.device_put(state.params, shardings), sharding.global_batch(batch, mesh))
    for key in ("align", "triplet", "total"):
        np.testing.assert_allclose(float(m2[key]), float(m1[key]), rtol=2e-5, atol=1e-6)
    scale = max(float(np.abs(x).max()) for x in jax.tree_util.tree_leaves(g1["align"]))
    assert scale > 1e-4
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(
        np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4 * scale), g2, g1)
    # each device holds 2 images; the loss still pairs all 8 (28 pairs per teacher)
    out = jax.jit(model.apply)({"params": state.params}, _fields(batch))
    student = {k: np.asarray(v) for k, v in out["align"].items()}
    want = _np_align(student, batch["teacher"], batch["mask"], batch["teacher_mask"],
                     float(cfg.loss.align.temperature), "difference")
    np.testing.assert_allclose(float(m1["align"]), want, rtol=1e-4)


def test_gradient_accumulation_pairs_within_each_microbatch():
    cfg = _config({"align": 1.0})
    model, _, state = _state(cfg)
    loss_fn = make_loss_fn(model, cfg.loss)
    batch = _fields(_batch())
    _, logs, _ = jax.jit(lambda p, b: loss_and_grads(loss_fn, p, b, accum_steps=2))(
        state.params, batch)
    halves = [jax.tree_util.tree_map(lambda x: x[i * 4:(i + 1) * 4], batch) for i in range(2)]
    loss = jax.jit(loss_fn)
    per_half = [float(loss(state.params, h)[1]["align"]) for h in halves]
    whole = float(loss(state.params, batch)[1]["align"])
    np.testing.assert_allclose(float(logs["align"]), np.mean(per_half), rtol=1e-5)
    assert abs(float(logs["align"]) - whole) > 1e-3


# ---------------------------------------------------------------- config

def test_runlocal_align_config_builds_and_words_are_checked():
    cfg = all_config("runlocal,align")
    assert dict(cfg.loss.terms) == {"id": 1.0, "triplet": 1.0, "align": 1.0}
    tf = cfg.data.teacher_features
    assert tf.teachers == ("anatomy", "efficientnet_lite0") and tf.extract and tf.dir == ""
    assert dict(tf.dims) == {"anatomy": 256, "efficientnet_lite0": 1280}
    assert cfg.optim.lr_multipliers.align == 1.0
    teacher_join.check_config(cfg)
    assert "align" not in dict(all_config("runlocal").loss.terms)
    base = all_config("teachers=/feats")
    assert base.data.teacher_features.dir == "/feats" and base.loss.terms.align == 0.01
    assert base.data.teacher_features.dims.retfound == 1024
    with pytest.raises(ValueError, match="combine it with 'runlocal'"):
        all_config("align")
    with pytest.raises(ValueError, match=r"unknown config argument\(s\) \['algn'\]"):
        all_config("runlocal,algn")


def test_align_word_picks_teachers():
    cfg = all_config("runlocal,align=anatomy")
    assert cfg.data.teacher_features.teachers == ("anatomy",)
    assert dict(cfg.data.teacher_features.dims) == {"anatomy": 256}
    both = all_config("runlocal,align=efficientnet_lite0+anatomy").data.teacher_features
    assert both.teachers == ("efficientnet_lite0", "anatomy")
    for bad in ("align=uni", "align=anatomy+random_tiny"):
        with pytest.raises(ValueError, match="name teachers among anatomy\\+efficientnet_lite0"):
            all_config("runlocal," + bad)


def test_align_and_teacher_features_must_come_together():
    cfg = all_config("runlocal")
    with cfg.unlocked():
        cfg.loss.terms.align = 0.01
    with pytest.raises(teacher_join.TeacherJoinError, match="loss.terms.align is set but no"):
        teacher_join.check_config(cfg)
    cfg = all_config("runlocal")
    cfg.data.teacher_features.dir = "/feats"
    with pytest.raises(teacher_join.TeacherJoinError, match="loss.terms has no 'align'"):
        teacher_join.check_config(cfg)
    cfg = all_config("runlocal,align")
    cfg.data.teacher_features.teachers = ("anatomy", "uni")
    with pytest.raises(teacher_join.TeacherJoinError, match=r"dims has no feature size for \['uni'\]"):
        teacher_join.check_config(cfg)
