"""The optimiser: AdamW with warmup + cosine decay, clipping, freezing, per-group rates.

Built from ``config.optim``. Every parameter group (``train/heads.py``: MaMI and each
head) is its own optimiser label with its own learning-rate multiplier
(``optim.lr_multipliers[<group>]``, default 1): a head that starts from scratch
while the backbone starts pretrained can learn faster. Freezing is by regex on
parameter paths ("mami/block_0/.*"; a pattern that matches nothing is an error): frozen
leaves get zero updates (``optax.set_to_zero``), no optimizer state, and no part in the
gradient norm that clipping divides by (``zero_frozen``). Weight decay skips biases, LayerNorm
scales, embeddings and the codebook (1-D and position tables), the usual practice
for ViTs.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

from mami_jax.train.heads import HEADS, MODEL_GROUP
from mami_jax.runtime.sharding import path_to_str

_NO_DECAY = re.compile(r"(bias|scale|class_embedding|pos_embedding|codebook|static)$")


#: The decays ``optim.schedule`` names (after the linear warm-up).
SCHEDULES = ("cosine", "constant")


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


def _is_frozen(name: str, freeze_patterns) -> bool:
    return any(re.match(p, name) for p in freeze_patterns)


def _labels(params, freeze_patterns):
    """Each leaf's optimiser label: "frozen", or its parameter group (first path part).
    A pattern that freezes nothing (a typo: ``block_0/.*`` for ``mami/block_0/.*``) is
    an error naming it: the run would train what it was told to keep."""
    names = [path_to_str(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    for pattern in freeze_patterns:
        if not any(re.match(pattern, name) for name in names):
            example = next((n for n in names if n.startswith(f"{MODEL_GROUP}/")), names[0])
            raise ValueError(f"optim.freeze: {pattern!r} matches no parameter (matched from "
                             f"the start of the path, e.g. {example!r})")

    def label(path, _):
        name = path_to_str(path)
        if _is_frozen(name, freeze_patterns):
            return "frozen"
        return name.split("/", 1)[0]
    return jax.tree_util.tree_map_with_path(label, params)


def zero_frozen(grads, freeze_patterns):
    """``grads`` with the leaves of frozen parameters set to 0 (their gradient is not
    computed: XLA drops what only they needed). The gradient norm that clipping divides
    by and the logs report is then the trained parameters' alone; with the frozen
    leaves in it, freezing a part changed the step size of the rest."""
    if not freeze_patterns:
        return grads
    return jax.tree_util.tree_map_with_path(
        lambda path, g: jnp.zeros_like(g) if _is_frozen(path_to_str(path), freeze_patterns)
        else g, grads)


def group_lr_multipliers(cfg, groups) -> dict:
    """``optim.lr_multipliers`` for the model's ``groups``, 1.0 where not given.

    A name that is no declared group at all (a typo) is an error; a declared head that
    this run does not build (its loss term is off) is fine.
    """
    given = {str(k): float(v) for k, v in dict(cfg.lr_multipliers).items()}
    declared = {MODEL_GROUP, *HEADS}
    unknown = sorted(set(given) - declared)
    if unknown:
        raise ValueError(f"optim.lr_multipliers names {unknown}, which are not parameter groups; "
                         f"declared groups (train/heads.py): {sorted(declared)}")
    return {g: given.get(g, 1.0) for g in groups}


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
    # sorted: the program's op order must not follow this process's string hashing, or
    # every process traces a different step and the compilation cache never hits
    multipliers = group_lr_multipliers(cfg, sorted(params))
    transforms = {g: adamw(m) for g, m in multipliers.items() if g in used}
    if "frozen" in used:
        transforms["frozen"] = optax.set_to_zero()
    tx = optax.multi_transform(transforms, labels)
    if cfg.grad_clip_norm and cfg.grad_clip_norm > 0:
        tx = optax.chain(clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """``optax.clip_by_global_norm`` (same state, same arithmetic) that takes the norm
    as ``update(..., grad_norm=)`` when the caller has it.

    The train step computes the gradients' norm for its NaN guard and its metrics
    before it decides to update; the update runs inside a conditional, where XLA
    cannot share that norm with the clipping's own, so without this the step reads
    every gradient once more. Without ``grad_norm`` the norm is computed here.
    """
    def update(updates, state, params=None, *, grad_norm=None, **extra_args):
        del params, extra_args
        norm = optax.global_norm(updates) if grad_norm is None else grad_norm
        trigger = jnp.squeeze(norm < max_norm)
        return jax.tree_util.tree_map(
            lambda t: jax.lax.select(trigger, t, (t / norm.astype(t.dtype)) * max_norm),
            updates), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update)
