"""The paper's recipe: the base configuration every file in ``configs/`` starts from.

``base_config()`` builds the whole locked ConfigDict: model, data (with one block per
modality, ``data.modalities.<m>``), phantoms, initialisation, optimiser, losses,
training loop, mesh and partition rules, evaluation. An experiment file in
``configs/`` takes it and sets only what its experiment changes (the modalities it
keeps; with ``:runlocal``, a small model on small phantoms for a CPU), so there is one
recipe, not one fork per experiment.

The recipe (docs/design.md): CLIP ViT-B/16 initialisation, AdamW at lr 5e-6 with
weight decay 0.05 for 20 epochs, rank 16 and 16 codes, soft-margin triplet plus
identity cross-entropy.
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


def base_config() -> ml_collections.ConfigDict:
    """The paper's recipe, locked: values may be changed, keys not added."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # A folder for XLA's compiled programs (runtime/compilation_cache.py): a resumed run or
    # an --mode=eval of the same model loads them instead of compiling. "" = JAX's own
    # setting (the JAX_COMPILATION_CACHE_DIR environment variable, else off).
    c.compilation_cache_dir = ""

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
    # Learning-rate multiplier per parameter group (train/heads.py); 1 where not given.
    # The identity classifier and the alignment head start from scratch while the
    # backbone starts pretrained.
    c.optim.lr_multipliers = ml_collections.ConfigDict({"classifier": 10.0, "align": 10.0})
    c.optim.freeze = ()  # regexes on parameter paths that are not trained

    c.loss = ml_collections.ConfigDict()
    # The objective: {term name: weight} (train/loss_terms.py lists the terms).
    c.loss.terms = ml_collections.ConfigDict({"id": 1.0, "triplet": 1.0})
    c.loss.label_smoothing = 0.1
    c.loss.triplet_normalize = False
    c.loss.id_neck = "none"  # "batch_standardize": BNNeck in front of the classifier
    # > 0: adversarial training, the loss at images moved by one normalised gradient step
    # of this root-mean-square (model-input units; train/adversarial.py). A little
    # robustness makes a model a better surrogate for privacy protection that transfers.
    c.loss.adversarial_rms = 0.0
    # Difference alignment to frozen teachers (term "align", docs/design.md#difference-alignment):
    # loss.terms gets {"align": ALIGN_WEIGHT} only when teacher features are configured.
    c.loss.align = ml_collections.ConfigDict()
    c.loss.align.temperature = 0.1
    c.loss.align.variant = "difference"  # or "single": align P_i with Q_i (the ablation)
    c.loss.align.mlp_hidden = 0  # width of the query MLP's hidden layers; 0 = model width

    c.train = ml_collections.ConfigDict()
    c.train.num_epochs = 20
    c.train.total_steps = 0  # > 0 overrides num_epochs
    c.train.log_every = 50
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.eval_every = 0  # 0 = only at the end
    c.train.eval_at_start = True  # metrics of the untrained model, for comparison
    c.train.eval_at_end = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 = all devices not used by the other axis
    c.mesh.model = 1
    c.partition_rules = DEFAULT_PARTITION_RULES

    c.eval = ml_collections.ConfigDict()
    c.eval.protocols = ("reid", "history")
    c.eval.split = "test"
    c.eval.batch_size = 64  # global batch of the embedding pass
    c.eval.metric = "cosine"
    c.eval.chunk_size = 1024
    c.eval.ks = (1, 5, 10)
    c.eval.far = 1e-3
    c.eval.verification = True
    c.eval.num_negatives = 200_000
    # same-patient pairs kept for verification: a seeded sample beyond this many (a
    # patient of thousands of pathology tiles has millions of them)
    c.eval.max_positives = 1_000_000

    c.lock()
    return c


#: Weight of the "align" term against the re-identification loss (the paper's lambda).
ALIGN_WEIGHT = 0.01


def parse_arg(arg: str | None, known: tuple[str, ...] = ("runlocal",),
              values: dict[str, str] | None = None,
              optional_values: tuple[str, ...] = ()) -> dict:
    """Words separated by commas, "word" or "key=value", e.g. "runlocal,teachers=DIR".

    ``known`` lists the words the experiment file accepts. A word of ``values`` needs a
    value (``{"teachers": "FEATURES_DIR"}``: the example said when it has none), a word of
    ``optional_values`` may have one (``align`` or ``align=NAME+NAME``), and every other
    word is a switch that takes none. Refused, with the word named: an unknown word, a
    word given twice, a switch given a value (``runlocal=0`` would have turned it on: a
    switch is off by leaving it out), a value-word with no value or an empty one
    (``teachers=`` would have been dropped, so the run went on without them).
    """
    values = values or {}
    out = {}
    for word in (arg or "").split(","):
        word = word.strip()
        if not word:
            continue
        key, has_value, value = word.partition("=")
        key = key.strip()
        if key in out:
            raise ValueError(f"config word {key!r} is given twice; give it once")
        out[key] = value.strip() if has_value else True
    unknown = set(out) - set(known)
    if unknown:
        raise ValueError(f"unknown config argument(s) {sorted(unknown)}; known: "
                         f"{', '.join(known)}")
    for key, value in out.items():
        if key in values and (value is True or not value):
            raise ValueError(f"config word {key!r} needs a value: {key}={values[key]}")
        if key in optional_values and value is not True and not value:
            raise ValueError(f"config word {key!r} was given an empty value: write {key} "
                             f"alone or {key}=VALUE")
        if key not in values and key not in optional_values and value is not True:
            raise ValueError(f"config word {key!r} is a switch and takes no value "
                             f"(got {key}={value}): leave the word out to turn it off")
    return out
