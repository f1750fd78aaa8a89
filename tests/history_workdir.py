"""A tiny "trained" run for the history tests: a workdir holding one checkpoint of a
small MaMI (params item only, what inference reads), an experiment config file naming
that model and 32 px preprocessing, and a small phantom manifest with train/val/test
patients."""

from __future__ import annotations

import csv
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mami_jax.models import MaMI
from mami_jax.train import checkpointing

TINY = dict(width=32, depth=2, num_heads=4, patch_size=8, image_size=32, rank=4, num_codes=4,
            generator_hidden=(24, 16), qkv_groups=4, mlp_groups=8, adapter_width=8)

CONFIG_FILE = '''
from mami_jax.config import base_config
from mami_jax.data.config import update_modalities

def get_config(arg=None):
    c = base_config()
    c.model.update({tiny!r})
    update_modalities(c.data, image_size=32, resize_size=36)
    update_modalities(c.data, ("ct", "mri"), slices=2)
    c.data.normalization = "per_image"
    c.eval.batch_size = 8
    return c
'''

APP_CONFIG_FILE = '''
from configs.history import get_config as base

def get_config(arg=None):
    c = base(arg)
    c.k = 3
    c.target_far = 0.1
    c.classifier.steps = 40
    c.classifier.fused_steps = 40
    c.classifier.hidden = 16
    c.classifier.attention_dim = 8
    return c
'''


def write_config(directory: str) -> str:
    path = os.path.join(directory, "tiny_config.py")
    with open(path, "w") as f:
        f.write(CONFIG_FILE.format(tiny=TINY))
    return path


def write_app_config(directory: str) -> str:
    path = os.path.join(directory, "tiny_history.py")
    with open(path, "w") as f:
        f.write(APP_CONFIG_FILE)
    return path


def make_workdir(workdir: str, config, seed: int = 0, step: int = 1) -> str:
    """Saves randomly initialised (and perturbed, so every path is active) params."""
    params = MaMI(config.model).init(jax.random.key(seed), jnp.zeros((1, 1, 32, 32, 3)))["params"]
    params = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed + 1), x.shape), params)
    checkpointing.write_model_config(workdir, config.model)
    ckpt = checkpointing.Checkpointer(workdir)
    ckpt.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    ckpt.wait()
    ckpt.close()
    return workdir


def split_manifest(manifest: str, out: str, splits: dict[str, str], keep=None) -> str:
    """A copy of ``manifest`` with patient -> split from ``splits`` (rows of other patients,
    or failing ``keep(row)``, dropped); paths made absolute."""
    base = os.path.dirname(os.path.abspath(manifest))
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    fields = list(rows[0])
    kept = []
    for r in rows:
        if r["patient_id"] in splits and (keep is None or keep(r)):
            kept.append(dict(r, split=splits[r["patient_id"]], path=os.path.join(base, r["path"])))
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(kept)
    return out
