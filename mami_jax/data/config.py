"""Default data configuration (an ``ml_collections.ConfigDict``).

Other parts of mami_jax (trainer, evaluators, configs/) read these field names; keep
them stable. Experiment configs copy this dict into ``config.data`` and override
fields before locking.

Sources: a source is one (dataset, modality) group, named ``"<dataset>:<modality>"``
(e.g. ``"nih_chestxray14:xray"``). ``source_weights`` maps a source name, a bare
dataset name (all its modalities) or a bare modality name (all its datasets) to a
sampling weight; the most specific key wins; empty means
"proportional to the number of training images". Weight 0 leaves a source out.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from mami_jax.data.manifest import MODALITIES
from mami_jax.data.transforms import AugmentConfig


def default_data_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.manifest = ""  # path to a manifest CSV; "" = synthetic phantoms
    c.image_size = 224  # crop fed to the model
    c.resize_size = 256  # evaluation: short side resized to this, then centre crop
    # Per-modality (image_size, resize_size) overriding the two above, e.g. {"pathology":
    # (448, 512)} to keep cellular detail; every batch holds one source, so sizes never mix
    # in a batch, and the ViT resizes its position embedding to each grid.
    c.modality_image_sizes = ml_collections.ConfigDict()
    c.num_slices = 8  # T for ct/mri series; 2-D modalities use T = 1
    c.volume_modalities = ("ct", "mri")  # modalities read as T-slice series
    c.patients_per_batch = 16  # P (global batch = P * K images)
    c.images_per_patient = 4  # K
    c.split_fractions = ml_collections.ConfigDict({"train": 0.7, "val": 0.1, "test": 0.2})
    c.split_seed = 0
    c.source_weights = ml_collections.ConfigDict()  # {} = proportional to training images
    # One identity class per training "patient", or per "patient_modality" (a patient's
    # images of one modality): evaluation never matches across modalities (sampler.py).
    c.identity_classes = "patient"
    c.skip_bad_images = False  # True: unreadable images are skipped (mask False) and counted
    c.num_workers = 0  # grain worker processes; 0 = decode in the main process (threads)
    # Decoded (and stain-normalised) images kept in memory per process, before augmentation
    # (decoded_cache.py): worth it when a dataset is small and read many times. 0 = off.
    c.decode_cache_mb = 0
    c.read_threads = 2  # threads per process decoding batches ahead
    c.prefetch = 2  # batches buffered ahead (per process / per worker)
    c.eval_batch_size = 64
    # Evaluation embeds these modalities' images as the mean over the 8 symmetries of the
    # square (evaluate/evaluator.py): for tiles with no orientation; costs 8 forward passes.
    c.eval_symmetry_modalities = ()
    # Evaluation shows these modalities' images whole (resized to resize_size, no centre
    # crop): for texture, where a wider view holds more of the patient's statistics and
    # scale does not change (tiles). Training crops stay image_size.
    c.eval_uncropped_modalities = ()
    # "imagenet" (what CLIP weights expect) or "per_image": each image / series z-scored
    # per channel, which removes exposure and colour-balance changes (transforms.py).
    c.normalization = "imagenet"
    # Large JPEGs (MIMIC-CXR ~2500 px) decode at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling)
    # while their short side stays >= this: 2 x image_size keeps training crops of half
    # the area above the model resolution. 0 = always full resolution.
    c.jpeg_min_short_side = 448
    # Training augmentation (see transforms.py for what each does and why).
    aug = AugmentConfig()
    c.flip_modalities = ("pathology",)  # horizontal flip allowed only here
    c.rotate_modalities = ("pathology",)  # 90-degree rotations allowed only here (no orientation)
    c.crop_mode = aug.crop_mode  # "shift": the eval view moved; "random_resized": crop_scale/ratio
    c.crop_scale = aug.crop_scale
    c.crop_ratio = aug.crop_ratio
    c.erase_prob = aug.erase_prob
    c.erase_area = aug.erase_area
    c.erase_ratio = aug.erase_ratio
    c.brightness = aug.brightness
    c.contrast = aug.contrast
    c.slice_jitter = True  # training slices jittered inside their segment
    # Macenko stain normalisation (stain.py) of these modalities' RGB images, in training
    # and evaluation: H&E colour differs more between labs and dye batches than between
    # patients. Off by default, as in the paper's recipe.
    c.stain_normalize_modalities = ()
    return c


def augment_config(cfg) -> AugmentConfig:
    """The transform parameters of a data config."""
    return AugmentConfig(
        image_size=int(cfg.image_size),
        resize_size=int(cfg.resize_size),
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


def modality_augment_configs(cfg) -> dict[str, AugmentConfig]:
    """The transform parameters of every modality: ``augment_config`` with the
    ``modality_image_sizes`` override of that modality, if any.

    Raises ValueError naming ``data.modality_image_sizes`` for an unknown modality or
    a value that is not two positive integers (image_size <= resize_size).
    """
    base = augment_config(cfg)
    overrides = dict(cfg.get("modality_image_sizes", {}) or {})
    out = {m: base for m in MODALITIES}
    for modality, sizes in overrides.items():
        where = f"data.modality_image_sizes[{modality!r}]"
        if modality not in MODALITIES:
            raise ValueError(f"{where}: unknown modality; expected one of {MODALITIES}")
        if isinstance(sizes, (str, bytes)) or len(tuple(sizes)) != 2 or \
                any(int(v) != v or int(v) < 1 for v in sizes):
            raise ValueError(f"{where}={sizes!r}: expected (image_size, resize_size), two positive ints")
        image_size, resize_size = (int(v) for v in sizes)
        try:
            out[modality] = dataclasses.replace(base, image_size=image_size, resize_size=resize_size)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
    return out
