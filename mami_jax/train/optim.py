"""The optimiser: AdamW with warmup + cosine decay, clipping, freezing, accumulation-free.

Built from ``config.optim``. Freezing is by regex on parameter paths
("mami/block_0/.*"): frozen leaves get zero updates (``optax.set_to_zero``) and no
optimizer state. The identity classifier, which starts from scratch while the
backbone starts pretrained, can get a larger learning rate. Weight decay skips
biases, LayerNorm scales, embeddings and the codebook (1-D and position tables),
the usual practice for ViTs.
"""

from __future__ import annotations

import re

import jax
import optax

from mami_jax.train.sharding import path_to_str

_NO_DECAY = re.compile(r"(bias|scale|class_embedding|pos_embedding|codebook|static)$")


def learning_rate_schedule(cfg, total_steps: int):
    peak = cfg.learning_rate
    warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1))
    else:
        raise ValueError(f"optim.schedule={cfg.schedule!r}; expected 'cosine' or 'constant'")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _labels(params, freeze_patterns):
    def label(path, _):
        name = path_to_str(path)
        if any(re.match(p, name) for p in freeze_patterns):
            return "frozen"
        return "classifier" if name.startswith("classifier/") else "model"
    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg, params, total_steps: int) -> optax.GradientTransformation:
    """AdamW per config.optim; ``params`` only provides the tree structure and paths."""
    schedule = learning_rate_schedule(cfg, total_steps)
    decay_mask = jax.tree_util.tree_map_with_path(
        lambda path, _: not _NO_DECAY.search(path_to_str(path)), params)

    def adamw(scale):
        lr = schedule if scale == 1.0 else (lambda step: scale * schedule(step))
        return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                           mask=decay_mask)

    labels = _labels(params, tuple(cfg.freeze))
    used = set(jax.tree_util.tree_leaves(labels))
    transforms = {"model": adamw(1.0), "classifier": adamw(cfg.classifier_lr_multiplier),
                  "frozen": optax.set_to_zero()}
    tx = optax.multi_transform({k: v for k, v in transforms.items() if k in used}, labels)
    if cfg.grad_clip_norm and cfg.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx
