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

from mami_jax.data.loading import load_rows
from mami_jax.evaluate.evaluator import evaluate
from mami_jax.inference import Embedder
from mami_jax.runtime.atomic_files import write_atomic
from mami_jax.runtime.distributed import maybe_initialize_distributed
from mami_jax.train import checkpointing, sharding

EMBEDDING_COLUMNS = ("image_id", "patient_id", "study_id", "modality", "dataset", "split")


def run(mode: str, config, workdir: str):
    maybe_initialize_distributed()
    workdir = os.path.abspath(workdir)
    action = "evaluate" if mode == "eval" else "embed"
    checkpointing.check_model_config(workdir, config.model, action)  # before the data
    rows = load_rows(config, workdir)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
    model = Embedder.from_workdir(workdir, config, mesh, action)
    if mode == "eval":
        return evaluate(model.embed_batch, rows, config, mesh,
                        os.path.join(workdir, "eval", f"step_{model.step}"),
                        title=f"step {model.step}")
    emb = model.embed_rows(rows, mesh=mesh)
    if jax.process_index() == 0:
        path = os.path.join(workdir, "embeddings", f"step_{model.step}.npz")
        columns = {c: np.asarray([getattr(r, c) for r in rows]) for c in EMBEDDING_COLUMNS}
        write_atomic(path, lambda tmp: np.savez(tmp, embedding=emb, **columns))
        logging.info("wrote %d embeddings to %s", len(rows), path)
    return emb
