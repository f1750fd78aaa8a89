"""The ``:runlocal`` variant shared by the experiment files: a small ViT trained from
scratch on small synthetic phantoms, so a job runs on a 2-core CPU in minutes.

``apply(c)`` changes a ``mami_jax.config.base_config()`` in place (values only, so the
config stays locked). Experiment files import it as ``from configs import
common_runlocal``: ``python -m mami_jax.main`` run in the repository root, and the
tests, have the root on ``sys.path``. Why each choice is made is said next to it; the
measurements behind them are in docs/experiments.md.
"""

from mami_jax.data.config import update_modalities


def apply(c) -> None:
    m = c.model
    # 32 px input with 8 px patches (16 tokens): learns as fast per step as 64 px at a
    # fraction of the cost.
    m.width, m.depth, m.num_heads, m.patch_size, m.image_size = 128, 4, 4, 8, 32
    m.rank, m.num_codes, m.generator_hidden = 8, 8, (64, 32)
    m.qkv_groups, m.mlp_groups, m.adapter_width = 8, 16, 32
    # Trained from scratch, the shift reads the patch mean; the released model's shift
    # reads the router output (models/config.py).
    m.shift_input = "patch_mean"

    d = c.data
    update_modalities(d, image_size=32, resize_size=36)
    update_modalities(d, ("ct", "mri"), slices=2)
    # Pathology identity is cellular texture: at 32 px a nucleus is a few pixels, and its
    # stain differs more between visits than between patients. So its tiles are 2 fields
    # wide (phantoms.pathology_field), trained on 80 px crops, stain-normalised, and
    # evaluated whole (more nuclei at the same scale) as the mean over the symmetries of
    # the square.
    d.modalities.pathology.update(dict(image_size=80, resize_size=128, stain_normalize=True,
                                       eval_whole=True, eval_symmetry=True))
    d.patients_per_batch, d.images_per_patient = 8, 4
    # The phantoms are read many times each: decoding (and stain-normalising) once saves
    # most of the input cost.
    d.decode_cache_mb = 512
    # Per-image normalisation and the BNNeck (loss.id_neck) are what let a model trained
    # from scratch leave chance level.
    d.normalization = "per_image"
    # T=2 of 16 slices: a jittered slice may lie anywhere in its half of the slab, so the
    # same patient would be shown at unrelated levels.
    d.slice_jitter = False

    c.phantoms.patients = 160
    c.phantoms.image_size = 64
    c.phantoms.pathology_field = 2.0

    c.init.clip_checkpoint = ""
    c.init.require_pretrained = False
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 50
    c.optim.lr_multipliers.classifier = 1.0
    c.loss.id_neck = "batch_standardize"

    c.train.num_epochs = 0
    c.train.total_steps = 2600
    c.train.log_every = 50
    c.train.checkpoint_every = 500

    c.eval.chunk_size = 256
    c.eval.num_negatives = 20_000
