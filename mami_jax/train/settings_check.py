"""The training run's numeric settings, checked before anything is written.

absl takes ``--config.optim.learning_rate=-1`` or ``--config.eval.far=2`` as given: a
negative or NaN rate trained on until the NaN guard stopped the run, a label smoothing of
1.5 failed when the step was traced (after the data and the model were set up), and a
false-accept rate of 2 or a Rank-0 scored nonsense at every evaluation, a checkpoint
period of 0 was a ZeroDivisionError after the set-up, and an unknown
protocol or metric stopped the run at its first evaluation (the final one, when it
evaluates only at the end). Each is one
``ValueError`` naming the key, raised before the workdir is made. So is a negative
``seed`` (the workdir was made, and left empty, before the sampler refused it without
naming the key), and a missing ``init.official_checkpoint`` or ``init.clip_checkpoint`` of
a new run is a ``FileNotFoundError`` naming its key (found only after the data was read
and the workdir got ``checkpoints/`` and ``training_batches.png``).
"""

from __future__ import annotations

import os

from mami_jax.config_files import checkpoint_steps
from mami_jax.tuple_flags import listing_hint
from mami_jax.data.config import modality_settings
from mami_jax.data.sampler import IDENTITY_CLASSES
from mami_jax.data.splits import check_fractions
from mami_jax.data.transforms import check_normalization
from mami_jax.evaluate.protocols import PROTOCOLS
from mami_jax.evaluate.retrieval import METRICS
from mami_jax.runtime.setting_ranges import is_number, is_whole, require, require_pattern
from mami_jax.train import loss_terms
from mami_jax.train.heads import NECKS
from mami_jax.train.optim import SCHEDULES


def check_optim(cfg) -> None:
    _one_of(cfg.schedule, "optim.schedule", SCHEDULES)
    require(is_number(cfg.learning_rate) and cfg.learning_rate > 0, "optim.learning_rate",
            cfg.learning_rate, "a number > 0")
    for key in ("b1", "b2"):
        value = cfg[key]
        require(is_number(value) and 0 <= value < 1, f"optim.{key}", value,
                "a number in [0, 1)")
    require(is_number(cfg.weight_decay) and cfg.weight_decay >= 0, "optim.weight_decay",
            cfg.weight_decay, "a number >= 0")
    require(is_number(cfg.grad_clip_norm) and cfg.grad_clip_norm >= 0, "optim.grad_clip_norm",
            cfg.grad_clip_norm, "a number >= 0 (0: no clipping)")
    require(is_whole(cfg.warmup_steps) and cfg.warmup_steps >= 0, "optim.warmup_steps",
            cfg.warmup_steps, "a whole number >= 0")
    require(is_whole(cfg.grad_accum_steps) and cfg.grad_accum_steps >= 1,
            "optim.grad_accum_steps", cfg.grad_accum_steps, "a whole number >= 1")
    for group, value in dict(cfg.lr_multipliers).items():
        require(is_number(value) and value >= 0, f"optim.lr_multipliers.{group}", value,
                "a number >= 0")
    for pattern in tuple(cfg.freeze):
        require_pattern(pattern, "optim.freeze")


def _one_of(value, key: str, allowed) -> None:
    require(value in allowed, key, value, "one of " + ", ".join(map(repr, allowed)))


def check_data(cfg) -> None:
    """``data.*`` beyond the modality blocks: each was read only once the phantoms were
    made and the loader built (a normalisation, an identity-class rule), or not refused at
    all (a negative JPEG side decoded every JPEG at 1/8 of its size; split fractions that
    do not sum to 1, which a manifest with its own splits never reads, but a later one
    without them would)."""
    modality_settings(cfg)
    check_normalization(str(cfg.normalization))
    try:
        check_fractions(cfg.split_fractions)
    except (TypeError, ValueError) as e:
        raise ValueError(f"data.split_fractions: {e}") from None
    _one_of(cfg.identity_classes, "data.identity_classes", IDENTITY_CLASSES)
    require(is_whole(cfg.jpeg_min_short_side) and cfg.jpeg_min_short_side >= 0,
            "data.jpeg_min_short_side", cfg.jpeg_min_short_side,
            "a whole number of pixels >= 0 (0: full resolution)")
    require(is_number(cfg.decode_cache_mb) and cfg.decode_cache_mb >= 0, "data.decode_cache_mb",
            cfg.decode_cache_mb, "a number of MiB >= 0 (0: no cache)")
    require(is_whole(cfg.num_workers) and cfg.num_workers >= 0, "data.num_workers",
            cfg.num_workers, "a whole number >= 0 (0: decode in the main process)")
    for key in ("read_threads", "prefetch"):
        require(is_whole(cfg[key]) and cfg[key] >= 1, f"data.{key}", cfg[key],
                "a whole number >= 1")


def check_loss(cfg) -> None:
    """``loss.*`` that were read only when the model was built or the step traced, after
    the phantoms, ``training_batches.png`` and (``adversarial_rms``) the run's config were
    written."""
    smoothing = cfg.label_smoothing
    require(is_number(smoothing) and 0 <= smoothing < 1, "loss.label_smoothing", smoothing,
            "a number in [0, 1)")
    _one_of(cfg.id_neck, "loss.id_neck", NECKS)
    require(is_number(cfg.adversarial_rms) and cfg.adversarial_rms >= 0, "loss.adversarial_rms",
            cfg.adversarial_rms, "a number >= 0 (0: off)")
    _one_of(cfg.align.variant, "loss.align.variant", loss_terms.ALIGN_VARIANTS)
    require(is_number(cfg.align.temperature) and cfg.align.temperature > 0,
            "loss.align.temperature", cfg.align.temperature, "a number > 0")
    require(is_whole(cfg.align.mlp_hidden) and cfg.align.mlp_hidden >= 0,
            "loss.align.mlp_hidden", cfg.align.mlp_hidden,
            "a whole number >= 0 (0: the model width)")


def check_phantoms(config) -> None:
    """With no manifest the run trains on phantoms: one visit a patient gives no second
    image to train or score on (refused only after the phantoms were generated)."""
    if str(config.data.manifest) or "phantoms" not in config:
        return
    visits = config.phantoms.visits
    require(is_whole(visits) and visits >= 2, "phantoms.visits", visits,
            "a whole number >= 2 (one visit a patient leaves nothing to match)")


def check_eval(cfg) -> None:
    require(is_number(cfg.far) and 0 < cfg.far < 1, "eval.far", cfg.far,
            "a false-accept rate in (0, 1)")
    ks = tuple(cfg.ks)
    require(bool(ks) and all(is_whole(k) and k >= 1 for k in ks) and len(set(ks)) == len(ks),
            "eval.ks", cfg.ks, "distinct ranks >= 1, e.g. (1, 5, 10)")
    protocols = tuple(cfg.protocols)
    require(bool(protocols) and set(protocols) <= set(PROTOCOLS)
            and len(set(protocols)) == len(protocols), "eval.protocols", cfg.protocols,
            "one or both of " + ", ".join(map(repr, PROTOCOLS))
            + listing_hint("eval.protocols", protocols, PROTOCOLS))  # absl's =reid,history
    require(cfg.metric in METRICS, "eval.metric", cfg.metric,
            "one of " + ", ".join(map(repr, METRICS)))
    for key in ("batch_size", "chunk_size", "num_negatives", "max_positives"):
        require(is_whole(cfg[key]) and cfg[key] >= 1, f"eval.{key}", cfg[key],
                "a whole number >= 1")


def check_train(cfg) -> None:
    """``train.*``: a zero period was a ZeroDivisionError traceback after the set-up, a
    negative length trained nothing and ended well, a negative ``eval_every`` evaluated at
    every step."""
    for key in ("total_steps", "num_epochs", "eval_every"):
        require(is_whole(cfg[key]) and cfg[key] >= 0, f"train.{key}", cfg[key],
                "a whole number >= 0" + (" (0: only at the start and the end)"
                                         if key == "eval_every" else ""))
    if cfg.total_steps == 0 and cfg.num_epochs == 0:
        raise ValueError("train.total_steps=0 and train.num_epochs=0: nothing to train; set "
                         "one of them (total_steps > 0 wins)")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
        require(is_whole(cfg[key]) and cfg[key] >= 1, f"train.{key}", cfg[key],
                "a whole number >= 1")


def check_seed(seed) -> None:
    """``seed``: the sampler (numpy) takes no negative seed, JAX none of 2**63 or more."""
    require(is_whole(seed) and 0 <= seed < 2**63, "seed", seed,
            "a whole number >= 0 (below 2**63)")


def check_init_files(init) -> None:
    """The pretrained weights a new run starts from (``train/pretrained.load_pretrained``,
    which reads them after the data and the model are set up): ``init.official_checkpoint``
    when set, else ``init.clip_checkpoint``, must exist; a missing CLIP file is let pass
    only with ``init.require_pretrained=False`` (random initialisation)."""
    from mami_jax.train.pretrained import HOW_TO_GET_CLIP
    official = str(init.official_checkpoint)
    if official:
        if not os.path.exists(os.path.expanduser(official)):
            raise FileNotFoundError(f"init.official_checkpoint={official!r}: no such file (the "
                                    "released .pth a new run is initialised from)")
        return
    clip = str(init.clip_checkpoint)
    if not init.require_pretrained or (clip and os.path.exists(os.path.expanduser(clip))):
        return
    where = (f"init.clip_checkpoint={clip!r}: no such file or folder. " if clip else
             "init.clip_checkpoint is not set. ")
    raise FileNotFoundError(where + HOW_TO_GET_CLIP)


def check_training_settings(config, workdir: str | None = None) -> None:
    """Every setting of ``config`` a training run reads, beyond the model's own
    (``models.config.validate_config``): seed, data, loss, optimiser, evaluation; with
    ``workdir`` (the run's) holding no checkpoint, a new run, also the pretrained weights
    it starts from (a resumed run reads its checkpoint instead: it may go on on a machine
    without them)."""
    check_seed(config.seed)
    if workdir is not None and not checkpoint_steps(workdir):
        check_init_files(config.init)
    check_data(config.data)
    check_phantoms(config)
    check_loss(config.loss)
    check_optim(config.optim)
    loss_terms.check_batch_shape(config.loss, int(config.data.patients_per_batch),
                                 int(config.data.images_per_patient),
                                 int(config.optim.grad_accum_steps))
    check_train(config.train)
    check_eval(config.eval)
