"""The diagnosis-keeping term of protection (``apps.privacy.diagnosis_keep``): its
classifier path equals the history classifier's numpy path, it holds the diagnosis
closer to the original's than protection without it while the match score still falls,
and a classifier of another model is refused naming the setting."""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("faiss")

from mami_jax.apps.history import training  # noqa: E402
from mami_jax.apps.history.features import fingerprint  # noqa: E402
from mami_jax.apps.privacy import ensemble, objective, perturb  # noqa: E402
from mami_jax.apps.privacy.diagnosis_keep import DiagnosisKeeper  # noqa: E402
from mami_jax.apps.privacy.model_input import InputMap, read_source, settings_for  # noqa: E402
from mami_jax.apps.privacy.settings import load_config  # noqa: E402
from mami_jax.data.manifest import read_manifest  # noqa: E402
from mami_jax.inference import Embedder  # noqa: E402
from mami_jax.models import MaMI  # noqa: E402
from mami_jax.models.embed import make_embedding_and_pooled_fn  # noqa: E402
from mami_jax.phantoms import generate  # noqa: E402
from tests.history_workdir import write_config  # noqa: E402

CLS = types.SimpleNamespace(hidden=8, steps=100, learning_rate=3e-2, weight_decay=0.0, seed=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("keep")
    rows = read_manifest(generate(str(base / "ph"), patients=6, visits=2, seed=3, image_size=32,
                                  slices=2, workers=1))
    cfg = load_config(write_config(str(base)))
    params = MaMI(cfg.model).init(jax.random.key(0), jnp.zeros((1, 1, 32, 32, 3)))["params"]
    params = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)
    member = ensemble.Member(Embedder(cfg.model, params, cfg.data, batch_size=8, source="tiny"),
                             ensemble.unit_embedding_fn(cfg.model))
    xray = [r for r in rows if r.modality == "xray"]
    s = settings_for(cfg.data, "xray")
    sources = [read_source(r, s) for r in xray]
    imap = InputMap(s, *sources[0].unit.shape[1:3])
    x0 = np.stack([src.unit for src in sources])
    offset = imap.stain_offset(x0)
    feats = np.asarray(make_embedding_and_pooled_fn(cfg.model)(params,
                                                               {"images": imap(x0, offset)}))
    emb_dim = np.asarray(member.embedder.embed_rows(xray[:1])).shape[1]
    backbone = feats[:, emb_dim:]
    # a classifier of the "backbone" features, as history `train` saves it
    mods = ["xray"] * len(xray)
    y = np.arange(len(xray)) % 2
    norm = {"features": training.standardizer(backbone, mods)}
    current = training.train_current(training.apply_standardizer(norm["features"], backbone, mods),
                                     y, 2, CLS)
    out = str(base / "hist")
    os.makedirs(out)
    training.save_classifiers(os.path.join(out, "classifiers.msgpack"),
                              {"norm": norm, "current": current, "fused": current})
    np.savez(os.path.join(out, "features.npz"), fingerprint=np.asarray(fingerprint(params)))
    return types.SimpleNamespace(rows=xray, cfg=cfg, member=member, sources=sources, imap=imap,
                                 x0=x0, offset=offset, backbone=backbone, out=out)


def test_logits_equal_the_history_classifier_path(setup):
    keeper = DiagnosisKeeper(setup.out, "configs/history.py", setup.member)
    logits = keeper.logits_fn("xray")(setup.member.params, setup.imap(setup.x0, setup.offset))
    want = keeper.classifier.probabilities(setup.backbone, ["xray"] * len(setup.x0))
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits, -1)), want, atol=1e-5)
    with pytest.raises(ValueError, match="saw no ct training image"):
        keeper.logits_fn("ct")


def test_keeping_holds_the_diagnosis_and_still_lowers_the_match_score(setup):
    keeper = DiagnosisKeeper(setup.out, "configs/history.py", setup.member)
    refs = objective.build_references(setup.sources, [setup.member.embedder.embed_rows(setup.rows)],
                                      setup.rows, {r.image_id: i for i, r in enumerate(setup.rows)})
    pcfg = load_config("configs/privacy.py").perturb
    score = objective.make_member_score_fn(setup.member.embed, setup.imap, pcfg, 1, with_target=True)
    plain = jax.jit(objective.make_score_fn([setup.member], setup.imap, pcfg, 0))
    logits = keeper.logits_fn("xray")
    params = setup.member.params

    def protect(weight):
        pcfg.keep_weight = weight
        keep = keeper.change_fn(setup.imap, "xray", pcfg, 1) if weight else None
        step = perturb.make_step(score, "l2", 0.1, 0.03, 0.5, keep_change=keep)
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


def test_a_classifier_of_another_model_is_refused(setup, tmp_path):
    other = str(tmp_path / "other")
    os.makedirs(other)
    for name in ("classifiers.msgpack",):
        with open(os.path.join(setup.out, name), "rb") as f, open(os.path.join(other, name), "wb") as g:
            g.write(f.read())
    np.savez(os.path.join(other, "features.npz"), fingerprint=np.asarray("f" * 64))
    with pytest.raises(ValueError, match=r"perturb.keep_diagnosis=.*fffffffffff.*not the "
                                         r"protecting model tiny"):
        DiagnosisKeeper(other, "configs/history.py", setup.member)
    with pytest.raises(ValueError, match=r"perturb.keep_diagnosis .*run `train` first"):
        DiagnosisKeeper(str(tmp_path / "none"), "configs/history.py", setup.member)
