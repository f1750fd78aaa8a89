"""A trained MaMI, ready to embed images: the one entry for using a model after training.

    from mami_jax.inference import Embedder
    model = Embedder.from_workdir("/tmp/run", config)          # latest training checkpoint
    model = Embedder.from_export("mami.safetensors")           # an exported / released file
    model = Embedder.load(name, config)      # any of: WORKDIR, WORKDIR@STEP, file, converter folder
    x = model.preprocess(row)            # (T, H, W, 3): the evaluation transform of a manifest row
    e = model.embed(x[None])             # (1, C) embeddings of the view as given
    E = model.embed_rows(rows)           # every row, batched, as evaluation embeds them
    F = model.embed_files(["a.png", "b.dcm"], modality="xray")   # files, without a manifest

``--mode=eval`` and ``--mode=embed`` of ``python -m mami_jax.main``, the applications
and the notebooks all go through here, so an embedding means the same everywhere: the
same restored parameters (refused when the saved model config differs from the
requested one), the same evaluation transform (``config.data``: sizes, normalisation,
per-modality treatment) and, for ``embed_rows``, the same batching and
symmetry-averaging as the evaluator.

The config defaults to the model's own (``from_workdir`` and ``load`` without one), as
the commands' ``--config`` does. A given config whose image reading
(``data.reading_settings``) differs from the one the model carries (a run's config that
trained the checkpoint, an exported file's, a converter folder's) is used, since
embedding at another size may be meant, but with a warning naming each setting: such a
model embeds otherwise than in its own evaluation, and nothing else would say so.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from mami_jax.config import base_config
from mami_jax.convert.checkpoint_dir import is_converter_checkpoint
from mami_jax.data.manifest import ManifestRow
from mami_jax.data.example_reader import read_example
from mami_jax.data.file_rows import embeddable_rows, file_rows, manifest_row
from mami_jax.data.reading_settings import differences, reading_settings
from mami_jax.model_name import workdir_and_step
from mami_jax.evaluate.evaluator import embed_rows, left_out_skipped
from mami_jax.image_batch import checked_batch
from mami_jax.models import validate_config
from mami_jax.models.config import config_differences
from mami_jax.models.embed import make_embed_fn
from mami_jax.runtime import sharding
from mami_jax.runtime.chunk_store import ChunkStore, beside, digest
from mami_jax.runtime.local_paths import url_hint
from mami_jax.runtime.progress import progress_bar
from mami_jax.train import checkpointing


def _default_data_config() -> ml_collections.ConfigDict:
    """The paper's preprocessing (224 px, ImageNet normalisation)."""
    return base_config().data


def _carried_config(path: str) -> tuple[str, ml_collections.ConfigDict] | None:
    """(spec, config) of the experiment config the model file, converter folder or workdir
    (``WORKDIR@STEP``: the config that trained that checkpoint) ``path`` carries
    (``experiment_config.carried_config``); None when it carries none (the authors'
    release, a run that stored none, a missing path)."""
    from mami_jax.experiment_config import carried_config, load_experiment
    spec = carried_config(path) if os.path.exists(workdir_and_step(path)[0]) else None
    return (spec, load_experiment(spec)) if spec else None


def _own_config(model: str) -> ml_collections.ConfigDict:
    """The experiment config the commands read ``model`` with when no ``--config`` is
    given (``experiment_config.experiment_spec``): a run's own config that trained the
    checkpoint, the one an exported file or a converter folder carries, else the
    paper's."""
    from mami_jax.experiment_config import experiment_spec, load_experiment
    return load_experiment(experiment_spec(model))


def _warn_other_reading(where: str, model: str, data_cfg) -> None:
    """A warning naming each image-reading setting (``data.reading_settings``) of
    ``data_cfg`` that differs from the config the model ``model`` carries
    (``_carried_config``; nothing to compare when it carries none): read at another size
    or with another normalisation, the same parameters give other embeddings than the
    run's own evaluation did, with no error anywhere. A warning, not a refusal: another
    size may be meant. Settings the carried config does not record are newer than it and
    not compared (``differences``). ``where`` names the model in the warning. A
    carried config that cannot be read is said, not raised: the config was given."""
    try:
        carried = _carried_config(model)
    except (ValueError, OSError) as e:
        logging.warning("%s: the config the model carries could not be read to compare its "
                        "image reading with the given config's: %s", where, e)
        return
    if carried is None:
        return
    spec, own = carried
    held, given = reading_settings(own.data), reading_settings(data_cfg)
    differing = differences(held, given)
    if differing:
        logging.warning(
            "%s: the images will be read otherwise than with the config the model carries "
            "(%s), so its embeddings differ from those of the model's own evaluation: %s. "
            "Leave the config out to read them with the model's own", where, spec,
            "; ".join(f"data.{k}: {held[k]!r} in the model's config, "
                      f"{given[k] if k in given else 'no such setting'!r} given"
                      for k in differing))


def _require_experiment(config) -> None:
    """TypeError/ValueError naming ``config`` when it is no experiment config (None, the
    history or privacy application's), which failed as ``'NoneType' object has no
    attribute 'mesh'`` or ``AttributeError: 'mesh'``."""
    from mami_jax.config_kinds import kind_problem
    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(f"config: an experiment config (load_config('configs/all.py') or a "
                        f"run's config.json), got {type(config).__name__}")
    problem = kind_problem(config, "experiment")
    if problem:
        raise ValueError(f"config: {problem}")


def params_fingerprint(params) -> str:
    """sha256 over every parameter's path, dtype, shape and bytes (in path order): what
    says two models are the same (archives and kept partial results record it)."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.asarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclasses.dataclass
class Embedder:
    """MaMI parameters with the config they belong to and the preprocessing they expect."""

    model_cfg: ml_collections.ConfigDict
    params: dict
    data_cfg: ml_collections.ConfigDict
    step: Optional[int] = None   # training step of the checkpoint, when known
    source: str = ""             # where the parameters came from
    batch_size: int = 64         # images per batch in ``embed_rows`` (config.eval.batch_size)

    def __post_init__(self):
        validate_config(self.model_cfg)
        #: The jitted embedding of a batch dict ({"images": ...}, possibly sharded), as the
        #: evaluator calls it.
        self.embed_batch = make_embed_fn(self.model_cfg)(self.params)

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_workdir(cls, workdir: str, config=None, mesh=None, action: str = "use",
                     step: int | None = None) -> "Embedder":
        """Checkpoint ``step`` (the latest by default) of a training workdir, for the
        experiment ``config`` (refused, naming the keys, when ``config.model`` is not the
        saved one; ``action`` names the use in that refusal). ``config`` defaults to the
        run's own, the one that trained the checkpoint (``config.json``, or the
        ``config.until_step_<N>.json`` a resume with other settings kept:
        ``config_files.trained_config_path``); a given one that reads images otherwise
        than that one is warned about, naming each setting (``_warn_other_reading``)."""
        workdir = os.path.expanduser(os.fspath(workdir))
        given = config is not None
        if not given:
            config = _own_config(workdir if step is None else f"{workdir}@{int(step)}")
        _require_experiment(config)
        mesh = mesh or sharding.make_mesh(config.mesh.data, config.mesh.model)
        step, params = checkpointing.restore_model_params(workdir, config, mesh, action, step)
        if given:
            _warn_other_reading(f"{workdir} (step {step})", f"{workdir}@{step}", config.data)
        return cls(config.model, params, config.data, step=step,
                   source=f"{workdir} (step {step})", batch_size=int(config.eval.batch_size))

    @classmethod
    def from_export(cls, path: str, data_cfg=None, model_cfg=None) -> "Embedder":
        """An exported or released PyTorch file (``.pth``/``.safetensors``) or a converter
        checkpoint folder. ``data_cfg`` defaults to the preprocessing the model carries (a
        file ``export-torch`` wrote from a training run, a converter folder imported from
        one), else the paper's (the authors' release), as ``TorchEmbedder.from_export``
        reads it: an export embeds as the run it came from. A given ``data_cfg`` that reads
        images otherwise than the one the model carries is warned about, naming each
        setting (``_warn_other_reading``)."""
        # convert/ reads torch files; imported here so JAX-only use never loads it.
        from mami_jax.convert.checkpoint_dir import load_params
        from mami_jax.convert.official import load_official
        path = os.path.expanduser(os.fspath(path))     # "~/ckpt" in a notebook
        given = data_cfg is not None
        if not given:
            carried = _carried_config(path)
            data_cfg = carried[1].data if carried else _default_data_config()
        if os.path.isdir(path):
            params, cfg = load_params(path)
            if model_cfg is not None:
                _refuse_other_config(cfg, model_cfg, path)
        else:
            imported = load_official(path, cfg=model_cfg)
            params, cfg = imported.params, imported.cfg
        if given:       # (once the file is known to be a model)
            _warn_other_reading(path, path, data_cfg)
        return cls(cfg, params, data_cfg, source=path)

    @classmethod
    def load(cls, name: str, config=None, action: str = "use", role: str = "model"
             ) -> "Embedder":
        """The model a user names, in any of the forms the commands accept: ``WORKDIR``
        (latest checkpoint), ``WORKDIR@STEP``, a released or exported ``.pth`` /
        ``.safetensors`` file, or a converter folder (``python -m mami_jax.convert
        import-official``). Whatever the form, for the experiment ``config``: another model
        config is refused naming the keys, another image reading than the model's own
        config's is warned about naming the settings, and the parameters sit on the
        experiment's mesh with its batch size, so a file computes exactly as the run it was
        exported from. ``config`` defaults to the model's own, as the commands'
        ``--config`` does (``experiment_config.experiment_spec``: the run's config that
        trained the checkpoint, the one a file or converter folder carries, else the
        paper's). ``role`` names the argument in the error for a path that is none of
        these."""
        name = os.path.expanduser(os.fspath(name))
        if config is None:
            config = _own_config(name)
        _require_experiment(config)
        workdir, step = workdir_and_step(name)
        if os.path.isfile(name) or is_converter_checkpoint(name):
            loaded = cls.from_export(name, data_cfg=config.data, model_cfg=config.model)
            mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
            placed = jax.device_put(loaded.params, sharding.tree_shardings(
                loaded.params, config.partition_rules, mesh))
            return cls(config.model, placed, config.data, source=name,
                       batch_size=int(config.eval.batch_size))
        if not names_a_path(name):
            raise FileNotFoundError(f"{role} {name!r}: no re-ID workdir, model file "
                                    f"(.pth/.safetensors) or converter folder there"
                                    f"{url_hint(name)}")
        if step is not None and not step.isdigit():
            raise ValueError(f"{role} {name!r}: STEP of WORKDIR@STEP must be a number")
        try:
            return cls.from_workdir(workdir, config, action=action,
                                    step=int(step) if step is not None else None)
        except (checkpointing.CheckpointError, FileNotFoundError) as e:
            # A folder that is not a run, or a step it lacks: say which argument named it.
            raise type(e)(f"{role} {name!r}: {e}") from e

    # -- use ------------------------------------------------------------------------
    @functools.cached_property
    def fingerprint(self) -> str:
        """``params_fingerprint`` of this model's parameters."""
        return params_fingerprint(self.params)

    def chunk_store(self, out: str, images: str, what: str, shared: bool = False) -> ChunkStore:
        """Where the chunks of ``what`` are kept while they are computed for the output
        ``out``, so a stopped command goes on (``runtime.chunk_store``): beside ``out``, or,
        when ``shared`` (``out`` is made of several passes: models, image sets), in a
        subfolder of that named by the pass's key. Keyed on this model's parameters and its
        config (``dtype``: a pass resumed in bfloat16 kept the float32 chunks), the images
        (``data.image_signature.rows_signature`` of the rows, which the caller has at hand,
        their modalities included), the settings that read them
        (``data.reading_settings``, and ``skip_bad_images``, which decides a bad image's
        row: not the workers or caches, whose change threw the kept chunks away) and the
        batch size. Nowhere on several processes, whose embedding passes must stay in
        step."""
        reading = json.dumps(reading_settings(self.data_cfg), sort_keys=True)
        key = digest(what, self.fingerprint, self.model_cfg.to_json(), reading,
                     bool(self.data_cfg.skip_bad_images), int(self.batch_size), images)
        folder = os.path.join(beside(out), key[:16]) if shared else beside(out)
        return ChunkStore(folder if jax.process_count() == 1 else None, key)

    def preprocess(self, row: ManifestRow) -> np.ndarray:
        """The evaluation view of one manifest row, (T, H, W, 3) float32. Anything but a
        ``ManifestRow`` (a path) is a TypeError naming ``row``, not an AttributeError
        inside the reader."""
        manifest_row(row)
        return read_example(row, self.data_cfg)

    def embed(self, images) -> np.ndarray:
        """(B, T, H, W, 3) preprocessed images -> (B, C) embeddings (not normalised), of
        the images as given: no symmetry averaging. Evaluation embeds the modalities with
        ``data.modalities.<m>.eval_symmetry`` (pathology) as the mean over the 8 symmetries
        of the square, and so do ``embed_rows`` and ``embed_files``; compare embeddings made
        the same way."""
        images = checked_batch(images, self.model_cfg.patch_size)
        return np.array(jax.device_get(self.embed_batch({"images": images})), np.float32)  # writable

    def embed_rows(self, rows: Sequence[ManifestRow], indices: Sequence[int] | None = None,
                   mesh=None, batch_size: int | None = None,
                   progress: str | None = "embedding") -> np.ndarray:
        """Embeddings of ``rows[indices]`` (all rows by default) exactly as evaluation makes
        them: batched over the mesh, symmetry-averaged where the data config says so.
        ``progress``: the label of the progress bar over the images (None: no bar), so
        that embedding a whole manifest (``--mode=embed``) shows how far it is.
        ``batch_size``: images per batch (default ``self.batch_size``; < 1 is a ValueError).
        With ``data.skip_bad_images`` an unreadable or missing image's row is NaN
        (``evaluate.evaluator.embedded``), after a warning that counts them and names the
        first few with what was wrong with them (``_warn_skipped``)."""
        rows = embeddable_rows(rows)
        batch_size = self.batch_size if batch_size is None else batch_size
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        mesh = mesh or sharding.make_mesh(-1, 1)
        indices = list(range(len(rows))) if indices is None else list(indices)
        if not indices:
            raise ValueError("indices: empty; nothing to embed")
        out = embed_rows(self.embed_batch, rows, indices, self.data_cfg, mesh,
                         int(batch_size), progress=progress)
        if self.data_cfg.skip_bad_images:
            self._warn_skipped([rows[i] for i in indices], out)
        return out

    def _warn_skipped(self, rows: Sequence[ManifestRow], embeddings: np.ndarray) -> None:
        """The evaluator's warning (``left_out_skipped``) for the images of ``rows`` that
        ``data.skip_bad_images`` skipped (NaN rows of ``embeddings``), and a second one with
        why the first three could not be read, found by reading them again: a caller
        handed NaN rows had no word of them, nor of which files to fix."""
        skipped = np.flatnonzero(~left_out_skipped(rows, embeddings,
                                                   "the embeddings (their rows are NaN)"))
        why = []
        for k in skipped[:3]:
            path = rows[k].path
            try:
                read_example(rows[k], self.data_cfg)
                why.append(f"{path}: readable when read again (a passing read error)")
            except Exception as e:  # noqa: BLE001 - only reported: why it was skipped
                said = str(e).splitlines()[0] if str(e) else type(e).__name__
                why.append(said if path in said else f"{path}: {said}")
        if why:
            logging.warning("why they were skipped: %s%s", "; ".join(why),
                            "; ..." if skipped.size > 3 else "")

    def embed_files(self, paths: Sequence[str], modality: str,
                    progress: str | None = None) -> np.ndarray:
        """(N, C) embeddings of image files of one ``modality`` given by path (image
        files, DICOM files or series folders, NIfTI volumes, slice folders), made as
        ``embed_rows`` makes a manifest's: a notebook's own images without a manifest.
        ``pairwise_similarity`` (``mami_jax.evaluate.retrieval``) of two of them is the
        score evaluation ranks by."""
        return self.embed_rows(file_rows(paths, modality), progress=progress)


#: Batches per chunk of ``embed_in_chunks``: the progress bar's step, and what a stopped
#: run loses at most when its chunks are kept.
CHUNK_BATCHES = 8


def embed_in_chunks(fn, rows: Sequence[ManifestRow], embedder: Embedder, progress: bool = True,
                    desc: str = "embedding", store=None, mesh=None) -> np.ndarray:
    """``fn`` (a batch -> (B, D) function, e.g. ``embedder.embed_batch``) over every row, as
    ``embed_rows`` batches them, in chunks of ``CHUNK_BATCHES`` batches with a progress
    bar: long embeddings of a whole archive or split show how far they are. With ``store`` (a
    ``runtime.chunk_store.ChunkStore`` keyed by the caller on the model and rows), each
    finished chunk is kept, and the chunks an earlier, stopped run finished are read back.
    ``mesh``: the one the parameters sit on (default: every device on the data axis)."""
    mesh = mesh or sharding.make_mesh(-1, 1)
    chunk = CHUNK_BATCHES * int(embedder.batch_size)
    parts, read_back = [], 0
    with progress_bar(len(rows), desc, disable=not progress or jax.process_index() != 0) as bar:
        for number, start in enumerate(range(0, len(rows), chunk)):
            indices = list(range(start, min(len(rows), start + chunk)))
            part = store.get(number, len(indices)) if store is not None else None
            read_back += 0 if part is None else len(indices)
            if part is None:
                part = embed_rows(fn, rows, indices, embedder.data_cfg, mesh, embedder.batch_size)
                if store is not None:
                    store.put(number, part)
            parts.append(part)
            bar.update(len(indices))
    if not parts:
        raise ValueError("no images to embed")
    if read_back:
        print(f"  {read_back} of {len(rows)} images' results read back from an earlier, stopped "
              f"run ({store.folder})", flush=True)
    return np.concatenate(parts)


def names_a_path(name: str) -> bool:
    """Whether ``name`` (as ``Embedder.load`` takes it) points at something on disk: a
    file or folder, or the workdir of ``WORKDIR@STEP``; a cheap check before slow work."""
    return os.path.exists(name) or os.path.isdir(workdir_and_step(name)[0])


def _refuse_other_config(saved, given, where: str) -> None:
    differ = config_differences(saved, given)
    if differ:
        raise ValueError(f"{where}: its model config differs from the one given: "
                         + "; ".join(differ))
