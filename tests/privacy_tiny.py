"""Tiny X-ray phantoms and a privacy config naming a tiny experiment, shared by the privacy
tests that train tiny models on them (protect/cues, gradient agreement)."""

import os

import jax

from mami_jax.apps.privacy import ensemble
from mami_jax.inference import Embedder
from mami_jax.phantoms import generate
from tests.history_workdir import split_manifest, write_config

PRIVACY_CONFIG = '''
import sys
sys.path.insert(0, {root!r})
from configs.privacy import get_config as base

def get_config(arg=None):
    c = base(arg)
    c.experiment = {experiment!r}
    c.batch_size = 4
    c.perturb.steps = 6
    c.perturb.step_size = 0.02
    c.cues.max_images = 1
    c.cues.occlusion_patch = 16
    c.cues.occlusion_stride = 16
    return c
'''
SPLITS = {"P0001": "train", "P0002": "test", "P0004": "test", "P0007": "test"}  # X-ray patients of seed 3


def tiny_xray_phantoms(base) -> tuple[str, str, str]:
    """(X-ray manifest with SPLITS, tiny experiment config, privacy config naming it) under
    ``base`` (a pathlib folder): tiny phantoms of 8 patients, two visits each."""
    full = generate(str(base / "ph"), patients=8, visits=2, seed=3, image_size=32, slices=2,
                    workers=1)
    manifest = split_manifest(full, str(base / "manifest.csv"), SPLITS,
                              keep=lambda r: r["modality"] == "xray")
    experiment = write_config(str(base))
    config = base / "privacy_tiny.py"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config.write_text(PRIVACY_CONFIG.format(root=root, experiment=experiment))
    return manifest, experiment, str(config)


def noisy_member(cfg, params, seed: int) -> ensemble.Member:
    """An ensemble member of experiment ``cfg`` whose parameters are ``params`` plus
    Gaussian noise (std 0.05, drawn with ``seed``): distinct tiny models without training."""
    noisy = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed), x.shape), params)
    return ensemble.Member(Embedder(cfg.model, noisy, cfg.data, batch_size=8),
                           ensemble.unit_embedding_fn(cfg.model))
