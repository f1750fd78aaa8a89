"""``--mode=eval`` and ``--mode=embed``: use the latest trained checkpoint of a workdir.

eval: embeds ``config.eval.split`` and writes WORKDIR/eval/step_<N>/ like training.
embed: embeds every row of the manifest and writes WORKDIR/embeddings/step_<N>.npz
(image_id, patient_id, study_id, modality, dataset, split, embedding), atomically with
the umask's permissions. The requested ``config.model`` must be the saved one
(``mami_jax/train/checkpointing.py``); a damaged checkpoint is a ``CheckpointError``
naming the step directory and the item.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from mami_jax.train import checkpointing, sharding
from mami_jax.data.loading import load_rows
from mami_jax.evaluate.evaluator import embed_rows, evaluate
from mami_jax.models.embed import make_embed_fn
from mami_jax.runtime.atomic_files import write_atomic
from mami_jax.runtime.distributed import maybe_initialize_distributed

EMBEDDING_COLUMNS = ("image_id", "patient_id", "study_id", "modality", "dataset", "split")


def restore_params(config, workdir: str, mesh, action: str = "evaluate"):
    """(step, MaMI params) of the latest checkpoint (checkpointing.restore_model_params)."""
    return checkpointing.restore_model_params(workdir, config, mesh, action)


def run(mode: str, config, workdir: str):
    maybe_initialize_distributed()
    workdir = os.path.abspath(workdir)
    action = "evaluate" if mode == "eval" else "embed"
    checkpointing.check_model_config(workdir, config.model, action)  # before the data
    rows = load_rows(config, workdir)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
    step, params = restore_params(config, workdir, mesh, action)
    embed_fn = make_embed_fn(config.model)(params)
    if mode == "eval":
        return evaluate(embed_fn, rows, config, mesh,
                        os.path.join(workdir, "eval", f"step_{step}"), title=f"step {step}")
    emb = embed_rows(embed_fn, rows, list(range(len(rows))), config.data, mesh, config.eval.batch_size)
    if jax.process_index() == 0:
        path = os.path.join(workdir, "embeddings", f"step_{step}.npz")
        columns = {c: np.asarray([getattr(r, c) for r in rows]) for c in EMBEDDING_COLUMNS}
        write_atomic(path, lambda tmp: np.savez(tmp, embedding=emb, **columns))
        logging.info("wrote %d embeddings to %s", len(rows), path)
    return emb
