"""Default data configuration (an ``ml_collections.ConfigDict``) and what it resolves to.

``config.data`` holds what applies to every image (batch shape, splits, normalisation,
augmentation strengths, input workers) and one block per modality,
``config.data.modalities.<m>`` for every m in ``manifest.MODALITIES``, with what
differs between modalities (``default_modality_config``): input sizes, slices,
which augmentations and stain normalisation apply, the evaluation view, the
sampling weight and the value window of the stored intensities. ``modality_settings(cfg)`` checks the blocks and resolves them to
frozen ``ModalitySettings``; the pipeline, sampler and evaluator read only those.

Sources: a source is one (dataset, modality) group, named ``"<dataset>:<modality>"``
(e.g. ``"nih_chestxray14:xray"``). Its sampling weight is, most specific first, its
``data.source_weights`` entry by source name, by bare dataset name (all its
modalities), or its modality's ``source_weight``. With no weight set anywhere,
sources are drawn in proportion to their training images; once any is set, a
source matched by none gets 0 (so does weight 0).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import ml_collections
from ml_collections import config_dict

from mami_jax.tuple_flags import listing_hint
from mami_jax.data.manifest import MODALITIES
from mami_jax.data.transforms import AugmentConfig

#: Modalities read as series of slices in the paper's recipe (T = 8 each).
SERIES_MODALITIES = ("ct", "mri")
#: Modalities whose tissue has no orientation or laterality: flipped and rotated in training.
UNORIENTED_MODALITIES = ("pathology",)


def default_modality_config(modality: str) -> ml_collections.ConfigDict:
    """The block ``data.modalities.<modality>`` of the paper's recipe."""
    if modality not in MODALITIES:
        raise ValueError(f"data.modalities.{modality}: unknown modality; expected one of {MODALITIES}")
    m = ml_collections.ConfigDict()
    # Side of the square crop the model sees (training crops, the evaluation centre crop).
    # Every batch holds one source, so sizes never mix in a batch, and the ViT resizes its
    # position embedding to each grid: e.g. pathology at 448 keeps cellular detail.
    m.image_size = 224
    # Evaluation resizes the short side to this, then centre-crops image_size; training
    # "shift" crops move that view by up to half the margin.
    m.resize_size = 256
    # T: slices per example, spread evenly over a series (transforms.slice_indices);
    # 1 reads one image (the middle slice of a series).
    m.slices = 8 if modality in SERIES_MODALITIES else 1
    # Horizontal flips in training: only where left/right carries neither identity nor
    # anatomy (never X-ray or CT: the heart is on the left; never fundus: laterality).
    m.flip = modality in UNORIENTED_MODALITIES
    # Right-angle rotations in training (with flip: every symmetry of the square): only for
    # images with no canonical orientation, such as a tile of a tissue section.
    m.rotate = modality in UNORIENTED_MODALITIES
    # Macenko stain normalisation (stain.py) of RGB images, in training and evaluation: H&E
    # colour differs more between labs and dye batches than between patients. Off in the
    # paper's recipe.
    m.stain_normalize = False
    # Evaluation shows the whole image (short side resized to resize_size, not cropped to
    # image_size; a non-square image keeps its central square, as a batch is square): for
    # texture, where a wider view holds more of the patient's statistics and the scale
    # does not change. Training crops stay image_size.
    m.eval_whole = False
    # Evaluation embeds an image as the mean over the 8 symmetries of the square
    # (evaluate/evaluator.py): for tiles with no orientation; costs 8 forward passes.
    m.eval_symmetry = False
    # Sampling weight of this modality's sources (see the module docstring); None = not set.
    m.source_weight = config_dict.placeholder(float)
    # (lo, hi): the stored values mapped to [0, 1], clipped, in the images' own units after
    # a DICOM's rescale (Hounsfield units for a CT: (-1000, 1000) spans air to bone),
    # in place of each read's min-max and of a DICOM's own VOI window: a scan then looks the
    # same whichever slices are read and whatever its padding, metal or technician's window,
    # so a patient's visits stay comparable. 8-bit image files keep /255. None (the default):
    # the format's own rule (docs/datasets.md).
    m.value_window = config_dict.placeholder(tuple)
    return m


def default_data_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.manifest = ""  # path to a manifest CSV; "" = synthetic phantoms
    c.only_modalities = ()  # keep only rows of these modalities; () = all
    c.modalities = ml_collections.ConfigDict({m: default_modality_config(m) for m in MODALITIES})
    c.patients_per_batch = 16  # P (global batch = P * K images)
    c.images_per_patient = 4  # K
    c.split_fractions = ml_collections.ConfigDict({"train": 0.7, "val": 0.1, "test": 0.2})
    c.split_seed = 0
    # Weights by "<dataset>:<modality>" source name or bare dataset name (module docstring);
    # a modality's weight is data.modalities.<m>.source_weight.
    c.source_weights = ml_collections.ConfigDict()
    # One identity class per training "patient", or per "patient_modality" (a patient's
    # images of one modality): evaluation never matches across modalities (sampler.py).
    c.identity_classes = "patient"
    c.skip_bad_images = False  # True: unreadable images are skipped (mask False) and counted
    # Frozen teachers' stored features, joined to each training batch by image_id
    # (data/teacher_join.py) for the "align" loss term (docs/design.md#difference-alignment).
    t = c.teacher_features = ml_collections.ConfigDict()
    t.dir = ""  # folder written by `python -m teachers.extract`; "" = none (WORKDIR/teachers
    #             when `extract` is on)
    t.teachers = ()  # teachers joined (and extracted); each needs its feature size in `dims`
    t.dims = ml_collections.ConfigDict()  # {teacher: feature size}, checked against index.json
    t.extract = False  # True: run `python -m teachers.extract` first when dir has no index.json
    t.skip_missing = False  # True: a training image without a feature its teacher owes is
    #                         masked out for that teacher and counted, instead of an error
    t.check_files = True  # the files behind each joined feature must be those it was
    #                       extracted from (sizes and modification times, teacher_join.py);
    #                       False: trust the ids (the same images copied, their dates lost)
    c.num_workers = 0  # grain worker processes; 0 = decode in the main process (threads)
    # Decoded (and stain-normalised) images kept in memory per process, before augmentation
    # (decoded_cache.py): worth it when a dataset is small and read many times. 0 = off.
    c.decode_cache_mb = 0
    c.read_threads = 2  # threads per process decoding batches ahead
    c.prefetch = 2  # batches buffered ahead (per process / per worker)
    # "imagenet" (the ImageNet mean and std the released MaMI model was trained with, not
    # OpenAI CLIP's own constants) or "per_image": each image / series z-scored
    # per channel, which removes exposure and colour-balance changes (transforms.py).
    c.normalization = "imagenet"
    # Large JPEGs (MIMIC-CXR ~2500 px) decode at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling)
    # while their short side stays >= this: 2 x image_size keeps training crops of half
    # the area above the model resolution; a modality of larger sizes raises it to its
    # resize_size and 2 x its image_size (example_reader.jpeg_short_side_floor).
    # 0 = always full resolution.
    c.jpeg_min_short_side = 448
    # Training augmentation (see transforms.py for what each does and why).
    aug = AugmentConfig()
    c.crop_mode = aug.crop_mode  # "shift": the eval view moved; "random_resized": crop_scale/ratio
    c.crop_scale = aug.crop_scale
    c.crop_ratio = aug.crop_ratio
    c.erase_prob = aug.erase_prob
    c.erase_area = aug.erase_area
    c.erase_ratio = aug.erase_ratio
    c.brightness = aug.brightness
    c.contrast = aug.contrast
    c.slice_jitter = True  # training slices jittered inside their segment
    return c


def update_modalities(cfg, modalities=MODALITIES, **values) -> None:
    """Sets ``values`` in the blocks ``cfg.modalities.<m>`` of ``modalities`` (all by
    default), e.g. ``update_modalities(cfg, image_size=32, resize_size=36)``."""
    for m in modalities:
        for key, value in values.items():
            if key not in cfg.modalities[m]:
                raise KeyError(f"data.modalities.{m}.{key}: no such key; known: "
                               f"{sorted(cfg.modalities[m].keys())}")
            cfg.modalities[m][key] = value


@dataclasses.dataclass(frozen=True)
class ModalitySettings:
    """One modality's resolved block (see ``default_modality_config`` for the why)."""

    augment: AugmentConfig  # training crop and transform parameters, evaluation sizes
    slices: int
    flip: bool
    rotate: bool
    stain_normalize: bool
    eval_whole: bool
    eval_symmetry: bool
    source_weight: Optional[float]
    value_window: Optional[tuple[float, float]] = None

    @property
    def eval_image_size(self) -> int:
        """Side of the evaluation view: the centre crop, or the whole resized image."""
        return self.augment.resize_size if self.eval_whole else self.augment.image_size


_BLOCK_KEYS = frozenset(default_modality_config(MODALITIES[0]).keys())
_BOOL_KEYS = ("flip", "rotate", "stain_normalize", "eval_whole", "eval_symmetry")


def augment_config(cfg, image_size: int, resize_size: int) -> AugmentConfig:
    """The transform parameters of a data config at the given sizes."""
    return AugmentConfig(
        image_size=int(image_size),
        resize_size=int(resize_size),
        crop_mode=str(cfg.crop_mode),
        crop_scale=tuple(float(v) for v in cfg.crop_scale),
        crop_ratio=tuple(float(v) for v in cfg.crop_ratio),
        erase_prob=float(cfg.erase_prob),
        erase_area=tuple(float(v) for v in cfg.erase_area),
        erase_ratio=tuple(float(v) for v in cfg.erase_ratio),
        brightness=float(cfg.brightness),
        contrast=float(cfg.contrast),
        normalization=str(cfg.normalization),
    )


def _positive_int(where: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}={value!r}: expected a positive int")
    return value


def only_modalities(cfg) -> tuple[str, ...]:
    """``data.only_modalities`` of data config ``cfg``, checked: () keeps every modality.

    Raises ValueError naming the key for a name that is not a modality; a value that lists
    modalities in one name (absl reads ``--config.data.only_modalities=xray,ct`` so) gets
    the flag written the way absl reads it.
    """
    wanted = tuple(cfg.get("only_modalities", ()) or ())
    unknown = [m for m in wanted if m not in MODALITIES]
    if not unknown:
        return wanted
    raise ValueError(f"data.only_modalities has unknown {unknown}; known: {MODALITIES}"
                     + listing_hint("data.only_modalities", wanted, MODALITIES))


def modality_settings(cfg) -> dict[str, ModalitySettings]:
    """Every modality's block of data config ``cfg``, checked and resolved.

    Raises ValueError naming the key (``data.modalities.<m>.<key>``) for a missing or
    unknown modality block, an unknown or missing key, a value of the wrong kind, or
    image_size > resize_size; and for ``data.only_modalities`` naming no modality.
    """
    only_modalities(cfg)
    blocks = cfg.get("modalities")
    if blocks is None or not hasattr(blocks, "keys"):
        raise ValueError(f"data.modalities: expected one block per modality {MODALITIES}")
    unknown = sorted(set(blocks.keys()) - set(MODALITIES))
    if unknown:
        raise ValueError(f"data.modalities.{unknown[0]}: unknown modality; expected one of {MODALITIES}")
    out = {}
    for m in MODALITIES:
        where = f"data.modalities.{m}"
        if m not in blocks:
            raise ValueError(f"{where}: missing; every modality of {MODALITIES} needs its block")
        block = blocks[m]
        keys = set(block.keys())
        if keys != _BLOCK_KEYS:
            bad = sorted(keys - _BLOCK_KEYS) or sorted(_BLOCK_KEYS - keys)
            what = "unknown key" if keys - _BLOCK_KEYS else "missing key"
            raise ValueError(f"{where}.{bad[0]}: {what}; a block has {sorted(_BLOCK_KEYS)}")
        for key in _BOOL_KEYS:
            if not isinstance(block[key], bool):
                raise ValueError(f"{where}.{key}={block[key]!r}: expected True or False")
        image_size = _positive_int(f"{where}.image_size", block.image_size)
        resize_size = _positive_int(f"{where}.resize_size", block.resize_size)
        if image_size > resize_size:
            raise ValueError(f"{where}: image_size {image_size} > resize_size {resize_size}")
        weight = block.source_weight
        if weight is not None and (isinstance(weight, bool) or float(weight) < 0):
            raise ValueError(f"{where}.source_weight={weight!r}: expected a weight >= 0 or None")
        value_window = _value_window(f"{where}.value_window", block.value_window)
        out[m] = ModalitySettings(
            augment=augment_config(cfg, image_size, resize_size),  # names a bad data.crop_mode
            slices=_positive_int(f"{where}.slices", block.slices),
            flip=block.flip, rotate=block.rotate, stain_normalize=block.stain_normalize,
            eval_whole=block.eval_whole, eval_symmetry=block.eval_symmetry,
            source_weight=None if weight is None else float(weight), value_window=value_window)
    return out


def value_windows(cfg) -> dict[str, tuple[float, float]]:
    """{modality: (lo, hi)} of the modalities the data block ``cfg`` reads through a fixed
    value window; what every other model of a run (the alignment teachers, the history
    app's diagnosis reader) reads them through too."""
    return {m: s.value_window for m, s in modality_settings(cfg).items()
            if s.value_window is not None}


def windows_as_json(windows) -> dict[str, list[float]]:
    """{modality: [lo, hi]} (sorted, floats) of {modality: (lo, hi)}: how a file that
    records the windows a model read through (a feature folder's index, a readers' file,
    classifiers.json) writes them."""
    return {m: [float(w[0]), float(w[1])] for m, w in sorted((windows or {}).items())}


def windows_from_json(recorded) -> dict[str, tuple[float, float]]:
    """{modality: (lo, hi)} of what ``windows_as_json`` wrote (None or absent: {}, the
    min-max a file written before windows existed read by)."""
    return {m: (float(w[0]), float(w[1])) for m, w in sorted((recorded or {}).items())}


def _value_window(where: str, value) -> tuple[float, float] | None:
    """None for None (or ()), else (lo, hi) with finite lo < hi; ValueError naming
    ``where``."""
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        return None
    flag = f'--config.{where}="(-1000, 1000)"'
    if not isinstance(value, (tuple, list)) or len(value) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise ValueError(f"{where}={value!r}: expected (lo, hi), two numbers in the images' "
                         f"stored units, or None; e.g. {flag}")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ValueError(f"{where}={value!r}: expected finite lo < hi")
    return lo, hi


def sampler_source_weights(cfg, settings: dict[str, ModalitySettings] | None = None) -> dict[str, float]:
    """The weights ``sampler.build_sources`` resolves: ``data.source_weights`` (source and
    dataset names) plus each modality's ``source_weight`` that is set, except those of
    modalities that ``data.only_modalities`` leaves out.

    Raises ValueError naming ``data.source_weights[key]`` for a bare modality key there
    (its place is ``data.modalities.<m>.source_weight``).
    """
    settings = settings if settings is not None else modality_settings(cfg)
    explicit = dict(cfg.get("source_weights", {}) or {})
    for key in explicit:
        if key in MODALITIES:
            raise ValueError(f"data.source_weights[{key!r}]: a modality's weight is "
                             f"data.modalities.{key}.source_weight")
    kept = only_modalities(cfg)
    # A modality left out by ``only_modalities`` has no rows: its weight is moot, and
    # ignoring it lets a config that weighs every modality train on a subset.
    out = {m: s.source_weight for m, s in settings.items()
           if s.source_weight is not None and (not kept or m in kept)}
    out.update(explicit)
    return out


def symmetric_modalities(cfg) -> frozenset[str]:
    """The modalities embedded as the mean over the symmetries of the square
    (``data.modalities.<m>.eval_symmetry``)."""
    return frozenset(m for m, s in modality_settings(cfg).items() if s.eval_symmetry)
