"""The trainer's extension points: a loss term by name, a per-image batch field, a head.

Each test adds its piece the way a feature would (one registered function, one config
line, one declared head) and checks that it reaches the step, the optimiser, the
shardings and the checkpoint with nothing else edited.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.all import get_config as all_config
from mami_jax.runtime import sharding
from mami_jax.train import checkpointing, heads, loss_terms
from mami_jax.train.objective import TrainModel, example_batch, make_loss_fn
from mami_jax.train.optim import make_optimizer
from mami_jax.train.step import make_train_step
from mami_jax.train.trainer import make_init_state

TINY_MODEL = dict(width=32, depth=1, num_heads=4, patch_size=8, image_size=32, rank=4,
                  num_codes=4, generator_hidden=(24, 16), qkv_groups=4, mlp_groups=8,
                  adapter_width=8)


def _config(terms, lr_multipliers=None, rules=None):
    cfg = all_config("runlocal")
    with cfg.unlocked():
        cfg.model.update(TINY_MODEL)
        cfg.loss.terms = terms
        if lr_multipliers is not None:
            cfg.optim.lr_multipliers = lr_multipliers
        cfg.optim.warmup_steps = 0
        cfg.optim.grad_clip_norm = 0.0
        cfg.optim.weight_decay = 0.0
        if rules is not None:
            cfg.partition_rules = rules
    return cfg


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"images": rng.normal(size=(n, 1, 32, 32, 3)).astype(np.float32),
            "label": np.repeat(np.arange(n // 2), 2).astype(np.int32),
            "mask": np.ones(n, bool),
            "_skipped": 0}


class ProbeHead(nn.Module):
    """A head with one (C, 3) kernel: what an alignment or diagnosis head would add."""

    @nn.compact
    def __call__(self, out, batch):
        kernel = self.param("kernel", nn.initializers.normal(0.1), (out.embedding.shape[-1], 3))
        return {"proj": out.embedding @ kernel}


@pytest.fixture
def probe(monkeypatch):
    """Registers the term "probe" (reads the head "probe_head" and the field "target")."""
    seen = []
    monkeypatch.setitem(heads.HEADS, "probe_head", heads.HeadSpec(
        build=lambda config, num_classes, name: ProbeHead(name=name), doc="test head"))

    def probe_term(outputs, batch, cfg):
        seen.append(batch["target"].shape)
        err = outputs["probe_head"]["proj"] - batch["target"]
        return jnp.mean(jnp.where(batch["mask"][:, None], err ** 2, 0.0))

    monkeypatch.setitem(loss_terms.LOSS_TERMS, "probe",
                        loss_terms.LossTerm(probe_term, heads=("probe_head",)))
    return seen


def _state(cfg, num_classes=4):
    """(model, optimiser, a fresh state) built the trainer's way."""
    model = TrainModel(cfg, num_classes)
    abstract = jax.eval_shape(lambda r: model.init(r, example_batch(cfg))["params"],
                              jax.random.key(0))
    opt = make_optimizer(cfg.optim, abstract, 10)
    state = jax.jit(make_init_state(cfg, model, opt))(jax.random.key(0))
    return model, opt, state


def test_unknown_term_and_bad_weight_are_config_errors():
    with pytest.raises(ValueError, match=r"unknown term\(s\) \['tripplet'\]"):
        loss_terms.configured_terms(_config({"tripplet": 1.0}).loss)
    with pytest.raises(ValueError, match="loss.terms.id=nan"):
        loss_terms.configured_terms(_config({"id": float("nan")}).loss)


def test_a_batch_under_which_a_weighted_term_is_always_zero_is_refused():
    """With one image a patient (K=1) the triplet has no positive: it was 0 at every step
    and the run trained on the identity loss alone without a word."""
    from mami_jax.train.losses import batch_hard_soft_margin_triplet
    emb = jax.random.normal(jax.random.key(0), (8, 4))
    assert float(batch_hard_soft_margin_triplet(emb, jnp.arange(8))) == 0.0      # K = 1
    assert float(batch_hard_soft_margin_triplet(emb, jnp.zeros(8, int))) == 0.0  # P = 1
    both = _config({"id": 1.0, "triplet": 1.0}).loss
    loss_terms.check_batch_shape(both, 2, 2)
    for p, k in ((8, 1), (1, 4)):
        with pytest.raises(ValueError) as e:
            loss_terms.check_batch_shape(both, p, k)
        assert str(e.value) == (
            f"data.patients_per_batch={p}, data.images_per_patient={k}: loss term 'triplet' "
            "needs at least 2 patients of 2 images in a batch and would be 0 at every step; "
            "raise them, or drop the term (--config.loss.terms.triplet=0)")
    loss_terms.check_batch_shape(_config({"id": 1.0, "triplet": 0.0}).loss, 8, 1)


def test_an_alignment_term_needs_a_pair_in_each_batch_it_sees():
    """The alignment term compares pairs (difference) or runs InfoNCE over the batch
    (single, whose value on one image is 0): P=2, K=1 under two microbatches left one
    image each and alignment never trained, accepted."""
    align = _config({"id": 1.0, "align": 1.0}).loss
    loss_terms.check_batch_shape(align, 2, 1)                        # two patients: a pair
    loss_terms.check_batch_shape(align, 1, 2)                        # one patient's pair
    for p, k, a in ((2, 1, 2), (1, 1, 1)):
        with pytest.raises(ValueError) as e:
            loss_terms.check_batch_shape(align, p, k, accum_steps=a)
        assert str(e.value).startswith(
            f"data.patients_per_batch={p}, data.images_per_patient={k}: loss term 'align' "
            "needs at least 2 images in a batch")


def test_accumulation_is_checked_on_the_microbatch_the_terms_see():
    """P=4, K=2 under four microbatches left the triplet one patient each: 0 at every
    step, accepted; P=3 under two cut patient 1 across both microbatches."""
    from mami_jax.train.step import _split_microbatches
    both = _config({"id": 1.0, "triplet": 1.0}).loss
    loss_terms.check_batch_shape(both, 4, 2, accum_steps=2)
    with pytest.raises(ValueError) as e:
        loss_terms.check_batch_shape(both, 4, 2, accum_steps=4)
    assert str(e.value) == (
        "data.patients_per_batch=4, data.images_per_patient=2: loss term 'triplet' needs at "
        "least 2 patients of 2 images in a batch (each of the optim.grad_accum_steps=4 "
        "microbatches holds 1) and would be 0 at every step; raise them, or drop the term "
        "(--config.loss.terms.triplet=0)")
    with pytest.raises(ValueError, match=r"^optim.grad_accum_steps=2: "
                       r"data.patients_per_batch=3 does not split into 2 microbatches of "
                       r"whole patients"):
        loss_terms.check_batch_shape(both, 3, 4, accum_steps=2)
    labels = jnp.repeat(jnp.arange(4), 2)           # the loader's order: patient by patient
    micro = _split_microbatches({"label": labels}, 2)["label"]
    assert [sorted(set(m.tolist())) for m in micro] == [[0, 1], [2, 3]]


def test_terms_are_the_configured_ones_with_their_weights():
    cfg = _config({"triplet": 0.5})
    model = TrainModel(cfg, 4)
    params = model.init(jax.random.key(0), example_batch(cfg))["params"]
    assert set(params) == {"mami"}            # no term reads the classifier: no head built
    batch = {k: v for k, v in _batch().items() if not k.startswith("_")}
    total, logs = make_loss_fn(model, cfg.loss)(params, batch)
    assert set(logs) == {"triplet", "triplet_weighted", "total"}
    np.testing.assert_allclose(float(total), 0.5 * float(logs["triplet"]), rtol=1e-6)


def test_a_new_term_head_and_field_flow_through_sharding_and_microbatches(probe):
    cfg = _config({"triplet": 1.0, "probe": 0.25},
                  rules=((r".*probe_head/kernel$", ("model", None)),) + tuple(
                      _config({"id": 1.0}).partition_rules))
    model, opt, state = _state(cfg)
    assert set(state.params) == {"mami", "probe_head"}
    mesh = sharding.make_mesh(4, 2)
    shardings = sharding.tree_shardings(state, cfg.partition_rules, mesh)
    assert shardings.params["probe_head"]["kernel"].spec == jax.sharding.PartitionSpec(
        "model", None)
    batch = _batch()
    batch["target"] = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    step = jax.jit(make_train_step(model, opt, cfg.loss, accum_steps=2),
                   in_shardings=(shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(shardings, sharding.replicated(mesh)))
    new_state, metrics = step(jax.device_put(state, shardings),
                              sharding.global_batch(batch, mesh))
    assert probe and all(s == (4, 3) for s in probe)   # each microbatch saw its half
    m = jax.device_get(metrics)
    assert {"probe", "probe_weighted", "triplet", "total"} <= set(m)
    np.testing.assert_allclose(m["total"], m["triplet"] + 0.25 * m["probe"], rtol=1e-5)
    # The probe's value is the mean over the two microbatches of the masked squared error.
    loss_fn = make_loss_fn(model, cfg.loss)
    halves = [{k: v[s] for k, v in batch.items() if not k.startswith("_")}
              for s in (slice(0, 4), slice(4, 8))]
    expected = np.mean([float(loss_fn(state.params, h)[1]["probe"]) for h in halves])
    np.testing.assert_allclose(m["probe"], expected, rtol=1e-5)
    moved = jax.device_get(new_state.params["probe_head"]["kernel"]) - \
        jax.device_get(state.params["probe_head"]["kernel"])
    assert np.abs(moved).max() > 0


def test_each_group_has_its_own_learning_rate(probe):
    """AdamW's first update is lr * g / (|g| + eps): about lr in size wherever g != 0."""
    cfg_1 = _config({"triplet": 1.0, "probe": 1.0}, lr_multipliers={"probe_head": 1.0})
    cfg_3 = _config({"triplet": 1.0, "probe": 1.0}, lr_multipliers={"probe_head": 3.0})
    batch = _batch()
    batch["target"] = np.ones((8, 3), np.float32)
    batch = {k: v for k, v in batch.items() if not k.startswith("_")}
    moves = {}
    for name, cfg in (("x1", cfg_1), ("x3", cfg_3)):
        model, opt, state = _state(cfg)
        new, _ = jax.jit(make_train_step(model, opt, cfg.loss))(state, batch)
        kernel = {"mami": lambda p: p["mami"]["head_fc2"]["kernel"],
                  "probe_head": lambda p: p["probe_head"]["kernel"]}
        moves[name] = {g: np.abs(np.asarray(f(new.params)) - np.asarray(f(state.params))).max()
                       for g, f in kernel.items()}
    np.testing.assert_allclose(moves["x3"]["probe_head"], 3 * moves["x1"]["probe_head"],
                               rtol=1e-3)
    np.testing.assert_allclose(moves["x3"]["mami"], moves["x1"]["mami"], rtol=1e-6)
    with pytest.raises(ValueError, match=r"optim.lr_multipliers names \['nope'\], which are not parameter groups"):
        make_optimizer(_config({"id": 1.0}, lr_multipliers={"nope": 2.0}).optim,
                       {"mami": {}, "classifier": {}}, 10)


def test_a_head_is_saved_and_restored_but_never_in_the_params_item(probe, tmp_path):
    cfg = _config({"triplet": 1.0, "probe": 1.0})
    model, opt, state = _state(cfg)
    state = state.replace(params=jax.tree_util.tree_map(lambda x: x + 0.5, state.params))
    ckpt = checkpointing.Checkpointer(str(tmp_path))
    ckpt.save(state, {"phantoms/P0001": 0})
    ckpt.wait()
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=sharding.replicated(sharding.make_mesh(1, 1, jax.devices()[:1]))),
        state)
    restored = ckpt.restore(int(state.step), abstract)
    params_item = ckpt.restore_params(int(state.step), abstract.params["mami"])
    ckpt.close()
    for a, b in zip(jax.tree_util.tree_leaves(state.params),
                    jax.tree_util.tree_leaves(restored.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "probe_head" in restored.params
    assert jax.tree_util.tree_structure(params_item) == \
        jax.tree_util.tree_structure(state.params["mami"])
