"""``--mode=eval`` and ``--mode=embed``: use the latest trained checkpoint of a workdir,
or, with ``--model``, any model a user names (``Embedder.load``: ``WORKDIR@STEP``, a
released or exported ``.pth``/``.safetensors`` file such as the MaMI authors' weights,
a converter folder), with the workdir only as the place for the results.

eval: embeds ``config.eval.split`` and writes WORKDIR/eval/<NAME>/ like training
(<NAME>_<split> for a split other than the one the run evaluates: ``eval_folder``), and
there also retrieval.png, a query of each group and its top matches (``retrieval_overview``).
embed: embeds every row of the manifest and writes WORKDIR/embeddings/<NAME>.npz
(image_id, patient_id, study_id, modality, dataset, split, embedding), atomically with
the umask's permissions, and beside it <NAME>.png, a map of them (``embedding_map``). A large manifest takes hours: in both modes each finished chunk
of the embedding pass is kept beside the output (``runtime.chunk_store``), so the same
command after a stop goes on from there. NAME is ``step_<N>`` for the workdir's own checkpoint and
``model_<file or folder name>[_step_<N>]`` for ``--model``. The requested ``config.model``
must be the saved one (``mami_jax/train/checkpointing.py``); a damaged checkpoint is a
``CheckpointError`` naming the step directory and the item.
"""

from __future__ import annotations

import contextlib
import json
import os

import jax
import numpy as np
from absl import logging

from mami_jax.config_files import trained_config_path
from mami_jax.data.image_signature import ImageFiles
from mami_jax.data.loading import load_rows
from mami_jax.data.missing_files import check_images_on_disk
from mami_jax.evaluate.embedding_map import draw_embedding_map
from mami_jax.evaluate.evaluator import evaluate, left_out_skipped
from mami_jax.evaluate.split_check import check_split_evaluable
from mami_jax.inference import Embedder, embed_in_chunks
from mami_jax.model_name import workdir_and_step
from mami_jax.runtime import sharding
from mami_jax.runtime.atomic_files import write_atomic
from mami_jax.runtime.chunk_store import discard_beside
from mami_jax.runtime.distributed import maybe_initialize_distributed
from mami_jax.runtime.idle_accelerator import warn_if_accelerator_idle
from mami_jax.train import checkpointing

EMBEDDING_COLUMNS = ("image_id", "patient_id", "study_id", "modality", "dataset", "split")


def result_name(model_name: str, step: int | None) -> str:
    """Where the results of a model go under the workdir: ``step_<N>`` for its own
    checkpoint, ``model_<name>[_step_<N>]`` for a model named with ``--model``."""
    if not model_name:
        return f"step_{step}"
    base = os.path.basename(os.path.normpath(workdir_and_step(model_name)[0]
                                             if step is not None else model_name))
    base = "".join(c if c.isalnum() or c in "._-" else "_" for c in base)
    return f"model_{base}" + (f"_step_{step}" if step is not None else "")


def eval_folder(workdir: str, name: str, split: str, step: int | None = None) -> str:
    """``WORKDIR/eval/<name>``, with ``_<split>`` when ``split`` is not the one the run
    evaluates while it trains (the ``eval.split`` of the config that trained the checkpoint
    of ``step``, the latest when None: ``config_files.trained_config_path``; "test" without
    one): evaluating the validation split replaced the training run's test report of that
    step (metrics.json, cmc.png, retrieval.png), which recorded no split."""
    trained = "test"
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        with open(trained_config_path(workdir, step), "rb") as f:
            trained = str(json.loads(f.read()).get("eval", {}).get("split", "test"))
    return os.path.join(workdir, "eval", name if split == trained else f"{name}_{split}")


def run(mode: str, config, workdir: str, model_name: str = ""):
    maybe_initialize_distributed()
    warn_if_accelerator_idle()
    workdir = os.path.abspath(workdir)
    action = "evaluate" if mode == "eval" else "embed"
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
    sharding.refuse_model_groups_across_processes(mesh)
    sharding.check_data_axis_divides(f"eval batch size {int(config.eval.batch_size)}",
                                     int(config.eval.batch_size), mesh)
    # A named model is loaded, a workdir's config checked, before the data is read.
    model = Embedder.load(model_name, config, action, role="--model") if model_name else None
    if model is None:
        checkpointing.check_model_config(workdir, config.model, action)
    rows = load_rows(config, workdir)
    if mode == "eval":
        check_split_evaluable(rows, config.eval.split, protocols=tuple(config.eval.protocols))
    read = [r for r in rows if mode == "embed" or r.split == config.eval.split]
    files = ImageFiles(read)    # asked once: the missing check, then the chunks' key
    check_images_on_disk(read, config.data.skip_bad_images,
                         "evaluation" if mode == "eval" else "embedding", files)
    model = model or Embedder.from_workdir(workdir, config, mesh, action)
    name = result_name(model_name, model.step)
    if mode == "eval":
        out = eval_folder(workdir, name, str(config.eval.split),
                          None if model_name else model.step)

        def embed_split(split_rows):
            store = model.chunk_store(out, files.signature(split_rows), "embeddings")
            return embed_in_chunks(model.embed_batch, split_rows, model, store=store, mesh=mesh,
                                   desc=f"evaluating {config.eval.split}")
        results = evaluate(embed_split, rows, config, out,
                           title=name if model_name else f"step {model.step}",
                           retrieval_picture=True)
        discard_beside(out)
        return results
    path = os.path.join(workdir, "embeddings", f"{name}.npz")
    store = model.chunk_store(path, files.signature(rows), "embeddings")
    emb = embed_in_chunks(model.embed_batch, rows, model, store=store, mesh=mesh)
    ok = left_out_skipped(rows, emb, path)
    rows, emb = [r for r, k in zip(rows, ok) if k], emb[ok]
    if jax.process_index() == 0:
        columns = {c: np.asarray([getattr(r, c) for r in rows]) for c in EMBEDDING_COLUMNS}
        write_atomic(path, lambda tmp: np.savez(tmp, embedding=emb, **columns))
        logging.info("wrote %d embeddings to %s", len(rows), path)
        picture = os.path.splitext(path)[0] + ".png"
        patients = [f"{d}/{p}" for d, p in zip(columns["dataset"], columns["patient_id"])]
        if draw_embedding_map(picture, emb, patients, columns["modality"], name):
            logging.info("wrote their map to %s", picture)
    store.discard()
    return emb
