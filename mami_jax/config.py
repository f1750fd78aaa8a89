"""The experiment configuration shared by every file in ``configs/``.

``base_config(modalities, runlocal)`` builds the whole locked ConfigDict: model,
data, phantoms, initialisation, optimiser, losses, training loop, mesh and
partition rules, evaluation. The files in ``configs/`` only choose modalities and
override a few values, so there is one recipe, not one fork per experiment.

The paper's recipe (AdamW, lr 5e-6, weight decay 0.05, 20 epochs, rank 16,
16 codes, alignment weight 0.01, soft-margin triplet + identity cross-entropy,
CLIP ViT-B/16 initialisation) is the default. ``runlocal`` shrinks everything so
the job trains on a 2-core CPU in minutes on the synthetic phantoms.
"""

from __future__ import annotations

import os

import ml_collections

from mami_jax.data.config import default_data_config
from mami_jax.models.config import default_config as default_model_config

#: Where the OpenAI CLIP ViT-B/16 checkpoint is looked for by default.
DEFAULT_CLIP_PATH = os.path.join("~", ".cache", "mami_jax", "ViT-B-16.pt")

#: Tensor-parallel partition rules: (regex on the parameter path, PartitionSpec
#: entries). The first match wins; the last rule replicates everything else.
#: Paths look like "mami/block_3/attn/qkv/kernel" (optimizer state paths end the same).
DEFAULT_PARTITION_RULES = (
    (r".*/attn/qkv/kernel$", (None, "model")),
    (r".*/attn/out/kernel$", ("model", None)),
    (r".*/mlp/fc/kernel$", (None, "model")),
    (r".*/mlp/proj/kernel$", ("model", None)),
    (r".*/(q|k|v|fc)_(down|up)/out/kernel$", (None, None, "model")),
    (r".*", ()),
)


def base_config(modalities: tuple = (), runlocal: bool = False) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.modalities = tuple(modalities)  # keep only these modalities; () = all

    c.model = default_model_config()
    c.data = default_data_config()

    # Synthetic phantoms: the data whenever data.manifest is "".
    c.phantoms = ml_collections.ConfigDict()
    c.phantoms.cache_dir = ""  # "" = WORKDIR/phantoms
    c.phantoms.patients = 60
    c.phantoms.visits = 4
    c.phantoms.seed = 0
    c.phantoms.image_size = 128
    c.phantoms.slices = 16
    # Pathology tiles this many standard fields wide at the same magnification
    # (phantoms.pathology_tile_size): identity is a statistic of the nuclei in a tile.
    c.phantoms.pathology_field = 1.0

    c.init = ml_collections.ConfigDict()
    c.init.clip_checkpoint = DEFAULT_CLIP_PATH  # OpenAI archive, state dict, or HF folder
    c.init.official_checkpoint = ""  # the authors' released .pth (overrides CLIP)
    c.init.require_pretrained = True  # False: random init when no checkpoint is found
    c.init.allow_torchscript = False  # OpenAI CLIP archives are TorchScript (code): opt in

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 5e-6
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.warmup_steps = 500
    c.optim.schedule = "cosine"  # or "constant"
    c.optim.grad_clip_norm = 1.0  # 0 = no clipping
    c.optim.grad_accum_steps = 1
    c.optim.classifier_lr_multiplier = 10.0  # the new identity classifier starts from scratch
    c.optim.freeze = ()  # regexes on parameter paths that are not trained

    c.loss = ml_collections.ConfigDict()
    c.loss.id_weight = 1.0
    c.loss.triplet_weight = 1.0
    c.loss.align_weight = 0.01  # used once teacher features are configured
    c.loss.label_smoothing = 0.1
    c.loss.triplet_normalize = False
    c.loss.id_neck = "none"  # "batch_standardize": BNNeck in front of the classifier

    c.train = ml_collections.ConfigDict()
    c.train.num_epochs = 20
    c.train.total_steps = 0  # > 0 overrides num_epochs
    c.train.log_every = 50
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.eval_every = 0  # 0 = only at the end
    c.train.eval_at_start = True  # metrics of the untrained model, for comparison
    c.train.eval_at_end = True
    c.train.debug_kill_at_step = -1  # SIGKILL after this step's checkpoint (resume tests)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all devices not used by the other axis
    c.mesh.model = 1
    c.partition_rules = DEFAULT_PARTITION_RULES

    c.eval = ml_collections.ConfigDict()
    c.eval.protocols = ("reid", "history")
    c.eval.split = "test"
    c.eval.metric = "cosine"
    c.eval.chunk_size = 1024
    c.eval.ks = (1, 5, 10)
    c.eval.far = 1e-3
    c.eval.verification = True
    c.eval.num_negatives = 200_000

    if runlocal:
        _shrink_for_cpu(c)
    c.lock()
    return c


def _shrink_for_cpu(c: ml_collections.ConfigDict) -> None:
    """A small ViT on small phantom images: trains on a 2-core CPU in minutes.

    Measured choices (``benchmarks/runlocal_ablation.py``, single modality, see README):
    32 px input with 8 px patches (16 tokens) learns as fast per step as 64 px and runs
    ~2.5x faster; per-image normalisation and the BNNeck are what make training from
    scratch leave chance level at all (fundus Rank-1 0.03 -> 0.58 at 400 steps; X-ray
    at 64 px 0.25 -> 0.51 at 200 steps); shifted instead of random-resized crops
    (``data.crop_mode``, MRI 0.43 -> 0.65 at 400 steps). Pathology alone gets 80 px crops
    of tiles 2 fields wide, stain normalisation, and evaluation on the whole tile averaged
    over its symmetries (below); each of its steps costs about five times a 32 px step
    (532 vs 105 ms), which is what limits the step count. The 2600-step job took 14m11s
    with jemalloc preloaded (mami_jax/runtime/malloc_preload.py) on a slow hour of this 2-core
    CPU; without it the steps take ~1.5x as long (README).
    """
    m = c.model
    m.width, m.depth, m.num_heads, m.patch_size, m.image_size = 128, 4, 4, 8, 32
    m.rank, m.num_codes, m.generator_hidden = 8, 8, (64, 32)
    m.qkv_groups, m.mlp_groups, m.adapter_width = 8, 16, 32
    # Trained from scratch, the measured figures were made with the shift reading the patch
    # mean; the released model's shift reads the router output (models/config.py).
    m.shift_input = "patch_mean"
    d = c.data
    d.image_size, d.resize_size, d.num_slices = 32, 36, 2
    d.patients_per_batch, d.images_per_patient = 8, 4
    # Pathology identity is cellular texture: at 32 px a tile is a few pixels per nucleus
    # (single-modality Rank-1 at 400 steps: 0.30 at 32 px, 0.52 at 48, 0.71 at 64), and its
    # stain differs more between visits than between patients (64 px, 600 steps: 0.39
    # without, 0.55 with Macenko normalisation on the version 1 phantoms). Wider tiles at
    # the same magnification carry more nuclei: 1.5 fields (96 px) 0.80 at 400 steps
    # against 0.72 for the standard field (version 2 layout); 2 fields (128 px), trained
    # on 80 px crops and evaluated whole, 0.86 against 0.80 for 1.5 fields (version 3).
    d.modality_image_sizes = ml_collections.ConfigDict({"pathology": (80, 128)})
    d.stain_normalize_modalities = ("pathology",)
    d.eval_symmetry_modalities = ("pathology",)   # 400 steps: mAP 0.61 -> 0.66
    # Evaluate the whole tile, not an 80 px crop of it: more nuclei, the same scale (a
    # 2600-step model on 96 px tiles: Rank-1 0.78 -> 0.79, mAP 0.70 -> 0.73).
    d.eval_uncropped_modalities = ("pathology",)
    # The phantoms are read ~50 times each; decoding once saves most of the input cost
    # (batch build, single thread: CT 234 -> 20 ms, stained pathology 164 -> 37 ms).
    d.decode_cache_mb = 512
    d.eval_batch_size = 64
    d.normalization = "per_image"
    # T=2 of 16 slices: a jittered slice may lie anywhere in its half of the slab, so the
    # same patient is shown at unrelated levels (MRI Rank-1 at 400 steps: 0.46 with
    # jitter, 0.65 without).
    d.slice_jitter = False
    if not c.modalities:
        # Steps where they are needed: alone, CT reaches Rank-1 0.95 in 400 steps while
        # fundus (0.77 at 400, 0.85 at 600) and MRI (0.65 at 400) need more; pathology
        # needs many and each of its steps costs five. With 2-field tiles, pathology 0.24
        # gave fundus 0.80 / pathology 0.87, these weights 0.89 / 0.85 (README).
        d.source_weights = ml_collections.ConfigDict(
            {"xray": 0.09, "ct": 0.125, "fundus": 0.285, "mri": 0.29, "pathology": 0.21})
    c.phantoms.patients = 160
    c.phantoms.image_size = 64
    c.phantoms.pathology_field = 2.0
    c.init.clip_checkpoint = ""
    c.init.require_pretrained = False
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 50
    c.optim.classifier_lr_multiplier = 1.0
    c.loss.id_neck = "batch_standardize"
    c.train.num_epochs = 0
    c.train.total_steps = 2600
    c.train.log_every = 50
    c.train.checkpoint_every = 500
    c.eval.chunk_size = 256
    c.eval.num_negatives = 20_000


def parse_arg(arg: str | None) -> dict:
    """"runlocal" and "key=value" words separated by commas, e.g. "runlocal,modality=xray"."""
    out = {}
    for word in (arg or "").split(","):
        word = word.strip()
        if not word:
            continue
        key, _, value = word.partition("=")
        out[key] = value if _ else True
    unknown = set(out) - {"runlocal"}
    if unknown:
        raise ValueError(f"unknown config argument(s) {sorted(unknown)}; known: runlocal")
    return out
