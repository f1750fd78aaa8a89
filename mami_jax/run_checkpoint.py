"""``--mode=eval`` and ``--mode=embed``: use the latest trained checkpoint of a workdir.

eval: embeds ``config.eval.split`` and writes WORKDIR/eval/step_<N>/ like training.
embed: embeds every row of the manifest and writes WORKDIR/embeddings/step_<N>.npz
(image_id, patient_id, study_id, modality, split, embedding), atomically.
"""

from __future__ import annotations

import os
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from mami_jax.train import sharding
from mami_jax.train.checkpointing import read_model_config
from mami_jax.data.loading import load_rows
from mami_jax.evaluate.evaluator import embed_rows, evaluate
from mami_jax.models import MaMI
from mami_jax.models.embed import example_images, make_embed_fn
from mami_jax.runtime.distributed import maybe_initialize_distributed


def _check_model_config(config, workdir: str) -> None:
    saved = read_model_config(workdir)
    current = config.model.to_dict()
    differ = {k: (saved.get(k), v) for k, v in current.items()
              if k not in ("dtype", "remat") and _norm(saved.get(k)) != _norm(v)}
    if differ:
        raise ValueError(f"config.model differs from {workdir}/model_config.json "
                         f"(saved, given): {differ}")


def _norm(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def restore_params(config, workdir: str, mesh):
    _check_model_config(config, workdir)
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    with ocp.CheckpointManager(directory, item_names=("params", "train", "data")) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}; train first")
        abstract = jax.eval_shape(
            lambda: MaMI(config.model).init(jax.random.key(0), example_images(config.model.image_size))["params"])
        shardings = sharding.tree_shardings(abstract, config.partition_rules, mesh)
        target = jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        restored = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target)))
    return step, restored["params"]


def run(mode: str, config, workdir: str):
    maybe_initialize_distributed()
    rows = load_rows(config, workdir)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
    step, params = restore_params(config, workdir, mesh)
    embed_fn = make_embed_fn(config.model)(params)
    if mode == "eval":
        return evaluate(embed_fn, rows, config, mesh,
                        os.path.join(workdir, "eval", f"step_{step}"), title=f"step {step}")
    emb = embed_rows(embed_fn, rows, list(range(len(rows))), config.data, mesh, config.eval.batch_size)
    if jax.process_index() == 0:
        out_dir = os.path.join(workdir, "embeddings")
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"step_{step}.npz")
        fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, embedding=emb,
                     **{c: np.asarray([getattr(r, c) for r in rows]) for c in
                        ("image_id", "patient_id", "study_id", "modality", "dataset", "split")})
        os.replace(tmp, path)
        logging.info("wrote %d embeddings to %s", len(rows), path)
    return emb
