"""A tiny "trained" run for the history tests: a workdir holding one checkpoint of a
small MaMI (params item only, what inference reads), an experiment config file naming
that model and 32 px preprocessing, and a small X-ray manifest with labels and
train/val/test patients."""

from __future__ import annotations

import csv
import json
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image

from mami_jax.models.embed import abstract_params
from mami_jax.train import checkpointing
from mami_jax.train.run_config import write_run_config

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
    c.init.clip_checkpoint = ""          # a tiny model: random initialisation, no CLIP file
    c.init.require_pretrained = False
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
    c.classifier.map_dim = 4          # the local-change path, end to end
    c.map_grid = 2
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


def random_params(model_cfg, seed: int = 0) -> dict:
    """Random parameters of ``model_cfg`` drawn with ``seed`` (numpy, from the parameter
    shapes: no model initialisation to compile), LayerNorm scales near 1."""
    rng = np.random.default_rng(seed)

    def draw(path, a):
        near_one = jax.tree_util.keystr(path).endswith("['scale']")
        return (float(near_one) + 0.05 * rng.standard_normal(a.shape)).astype(a.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract_params(model_cfg, 32))


def make_workdir(workdir: str, config, seed: int = 0, step: int = 1) -> str:
    """Saves ``random_params`` of ``config.model`` as the checkpoint of ``step``."""
    params = random_params(config.model, seed)
    checkpointing.write_model_config(workdir, config.model)
    write_run_config(workdir, config)    # as training writes it
    ckpt = checkpointing.Checkpointer(workdir)
    ckpt.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    ckpt.wait()
    ckpt.close()
    return workdir


def run_config_of_modalities(workdir: str, out: str, modalities: tuple) -> str:
    """A copy of the run's stored config.json at ``out`` as if trained on ``modalities``
    only (``data.only_modalities``)."""
    with open(os.path.join(workdir, "config.json")) as f:
        stored = json.load(f)
    stored["data"]["only_modalities"] = list(modalities)
    with open(out, "w") as f:
        json.dump(stored, f)
    return out


def write_xray_archive(root: str, splits: dict[str, str], visits: int = 3, seed: int = 0) -> str:
    """A small X-ray manifest (16-bit PNGs, 40 px: a per-patient pattern plus noise,
    brighter when diseased) with ``labels.csv`` beside it; returns the manifest path.
    Patient i of ``splits`` is diseased from visit i % visits on."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    rows, labels = [], []
    for i, (pid, split) in enumerate(sorted(splits.items())):
        base = rng.uniform(0.2, 0.6, (40, 40))
        for v in range(visits):
            stage = int(v >= i % visits and i % 2 == 1)
            image = np.clip(base + 0.05 * rng.normal(size=base.shape) + 0.2 * stage, 0, 1)
            rel = f"xray/{pid}/v{v}.png"
            os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
            Image.fromarray((image * 65535).astype(np.uint16)).save(os.path.join(root, rel))
            image_id = f"{pid}_xray_v{v}"
            rows.append([image_id, pid, f"xray_v{v}", str(v), "xray", "toy", "PA", rel, split])
            labels.append([image_id, pid, "xray", str(v), str(stage), str(int(stage > 0))])
    manifest = os.path.join(root, "manifest.csv")
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "patient_id", "study_id", "order", "modality", "dataset", "view",
                    "path", "split"])
        w.writerows(rows)
    with open(os.path.join(root, "labels.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "patient_id", "modality", "order", "disease_stage",
                    "disease_label"])
        w.writerows(labels)
    return manifest


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


#: The patients of ``tiny_setup``'s manifest and their splits.
TINY_SPLITS = {"P1": "train", "P2": "train", "P3": "train", "P4": "train", "P5": "val",
               "P6": "val", "P7": "test", "P8": "test"}


def tiny_setup(root) -> dict:
    """The history CLI tests' material under ``root``: an X-ray manifest (``TINY_SPLITS``,
    3 visits) with its labels, its first visits and its last visits as two manifests, the
    experiment and app config files, a run and another model's run (other parameters)."""
    from mami_jax.config_files import load_config
    root = str(root)
    manifest = write_xray_archive(os.path.join(root, "xr"), TINY_SPLITS)
    first = split_manifest(manifest, os.path.join(root, "first.csv"), TINY_SPLITS,
                           lambda r: r["order"] != "2")
    last = split_manifest(manifest, os.path.join(root, "last.csv"), TINY_SPLITS,
                          lambda r: r["order"] == "2")
    config = write_config(root)
    app = write_app_config(root)
    cfg = load_config(config)
    run = make_workdir(os.path.join(root, "run"), cfg, seed=0)
    other = make_workdir(os.path.join(root, "other"), cfg, seed=5)
    return dict(root=pathlib.Path(root), manifest=manifest, first=first, last=last, config=config, app=app,
                run=run, other=other, labels=os.path.join(os.path.dirname(manifest), "labels.csv"))
