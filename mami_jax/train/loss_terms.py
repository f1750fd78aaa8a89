"""The training objective's terms, by name.

``config.loss.terms`` lists ``{name: weight}``; the step computes every listed term
and minimises ``sum(weight * term)`` (``losses.total_loss``), logging each term, its
weighted value and the total. Adding a term is one function here, registered under
its name (with the heads it reads, see ``heads.py``), and one config line.

A term is ``fn(outputs, batch, loss_cfg) -> scalar``:
- ``outputs["mami"]`` is MaMI's output (``MaMIOutput``: embedding, local map, modality
  representation, code weights); ``outputs[<head>]`` the dict a head returned;
- ``batch`` holds every per-image field of the training batch on the device
  (``images``, ``label``, ``mask``, and whatever the pipeline adds), sliced to the
  microbatch under gradient accumulation;
- rows with ``mask`` False (padding, skipped images) must not contribute.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from mami_jax.train import losses

TermFn = Callable[[dict, dict, object], jax.Array]


@dataclasses.dataclass(frozen=True)
class LossTerm:
    fn: TermFn
    heads: tuple[str, ...] = ()   # parameter groups (heads.py) whose outputs the term reads
    #: the least (patients, images of each) a batch needs for the term to be other than 0
    min_batch: tuple[int, int] = (1, 1)
    #: the least images in all a batch needs (a pair, whoever's images they are)
    min_images: int = 1


LOSS_TERMS: dict[str, LossTerm] = {}


def register(name: str, heads: tuple[str, ...] = (), min_batch: tuple[int, int] = (1, 1),
             min_images: int = 1):
    def wrap(fn: TermFn) -> TermFn:
        if name in LOSS_TERMS:
            raise ValueError(f"loss term {name!r} registered twice")
        LOSS_TERMS[name] = LossTerm(fn, tuple(heads), tuple(min_batch), int(min_images))
        return fn
    return wrap


@register("id", heads=("classifier",))
def identity(outputs: dict, batch: dict, cfg) -> jax.Array:
    """Identity cross-entropy of the classifier head (label smoothing ``loss.label_smoothing``)."""
    return losses.identity_cross_entropy(outputs["classifier"]["logits"], batch["label"],
                                         label_smoothing=cfg.label_smoothing, mask=batch["mask"])


@register("triplet", min_batch=(2, 2))
def triplet(outputs: dict, batch: dict, cfg) -> jax.Array:
    """Batch-hard soft-margin triplet on MaMI's embedding (``loss.triplet_normalize``): an
    anchor needs another image of its patient and an image of another patient."""
    return losses.batch_hard_soft_margin_triplet(outputs["mami"].embedding, batch["label"],
                                                 mask=batch["mask"],
                                                 normalize=cfg.triplet_normalize)


ALIGN_VARIANTS = ("difference", "single")


@register("align", heads=("align",), min_images=2)   # a pair ("single": InfoNCE of one is 0)
def align(outputs: dict, batch: dict, cfg) -> jax.Array:
    """Alignment of the "align" head's readouts P_t to the teachers' features Q_t
    (docs/design.md#difference-alignment), averaged over the teachers with at least one
    valid pair.

    ``loss.align.variant`` "difference": InfoNCE between the L2-normalised pair
    differences P_i - P_j and Q_i - Q_j over the batch's pairs i < j where teacher t
    applies to both images and both rows are valid (``mask`` & ``teacher_mask[t]``);
    "single": InfoNCE between P_i and Q_i over the valid images. Temperature
    ``loss.align.temperature``. The pairs are those of the batch the loss sees: the
    global batch under mesh sharding, one microbatch under gradient accumulation.
    A batch with no valid pair for any teacher gives 0.
    """
    variant = str(cfg.align.variant)
    if variant not in ALIGN_VARIANTS:
        raise ValueError(f"loss.align.variant={variant!r}: expected one of {ALIGN_VARIANTS}")
    temperature = float(cfg.align.temperature)
    total, counted = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
    for name, student in sorted(outputs["align"].items()):
        teacher = batch["teacher"][name]
        valid = batch["mask"].astype(bool) & batch["teacher_mask"][name].astype(bool)
        if variant == "difference":
            student, pair_valid = losses.all_pair_differences(student, valid)
            teacher, _ = losses.all_pair_differences(teacher, valid)
        else:
            pair_valid = valid
        value = losses.difference_alignment_infonce(student, teacher, pair_valid, temperature)
        has = jnp.any(pair_valid).astype(jnp.float32)
        total, counted = total + has * value, counted + has
    return total / jnp.maximum(counted, 1.0)


def configured_terms(loss_cfg) -> dict[str, float]:
    """``loss.terms`` as ``{name: weight}``, checked: known names, finite weights >= 0, not
    empty, not all 0 (a run of zero gradients only decayed its weights). A negative weight was taken: ``--config.loss.terms.triplet=-1`` maximised the
    triplet loss, pushing a patient's images apart, and the run ended well."""
    terms = {str(k): v for k, v in dict(loss_cfg.terms).items()}
    unknown = sorted(set(terms) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"loss.terms: unknown term(s) {unknown}; known: {sorted(LOSS_TERMS)}")
    if not terms:
        raise ValueError("loss.terms is empty: name at least one term, e.g. {'triplet': 1.0}")
    out = {}
    for name, weight in terms.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight):
            raise ValueError(f"loss.terms.{name}={weight!r}: a weight must be a finite number")
        if weight < 0:
            raise ValueError(f"loss.terms.{name}={weight!r}: expected a weight >= 0 (0: the "
                             "term is off; a negative weight maximises it)")
        out[name] = float(weight)
    if not any(out.values()):
        raise ValueError(f"loss.terms={out}: every weight is 0, so the objective is 0 and "
                         "the run trains nothing; give at least one term a weight > 0")
    return out


def check_batch_shape(loss_cfg, patients_per_batch: int, images_per_patient: int,
                      accum_steps: int = 1) -> None:
    """Refuses a P x K batch under which a weighted term is 0 at every step (the triplet
    with one image a patient has no positive). With ``accum_steps`` = A > 1 the terms see
    microbatches of P / A whole patients (``train.step``), so P must be a multiple of A
    (else a patient's images were cut across two microbatches) and the microbatch must
    have what the terms need (P=4, A=4 left the triplet one patient: no negative)."""
    if accum_steps > 1 and patients_per_batch % accum_steps:
        raise ValueError(
            f"optim.grad_accum_steps={accum_steps}: data.patients_per_batch="
            f"{patients_per_batch} does not split into {accum_steps} microbatches of whole "
            "patients; make the patients per batch a multiple of it")
    seen = patients_per_batch // max(accum_steps, 1)
    for name, weight in configured_terms(loss_cfg).items():
        p, k = LOSS_TERMS[name].min_batch
        least = LOSS_TERMS[name].min_images
        if weight and (seen < p or images_per_patient < k
                       or seen * images_per_patient < least):
            where = (f" (each of the optim.grad_accum_steps={accum_steps} microbatches "
                     f"holds {seen})" if accum_steps > 1 else "")
            need = (f"{p} patients of {k} images" if least <= p * k
                    else f"{least} images")
            raise ValueError(
                f"data.patients_per_batch={patients_per_batch}, data.images_per_patient="
                f"{images_per_patient}: loss term {name!r} needs at least {need} in a "
                f"batch{where} and would be 0 at every step; raise them, or "
                f"drop the term (--config.loss.terms.{name}=0)")


def heads_needed(loss_cfg) -> tuple[str, ...]:
    """The heads the configured terms read, in a fixed order (sorted by name)."""
    return tuple(sorted({h for name in configured_terms(loss_cfg)
                         for h in LOSS_TERMS[name].heads}))


def compute_terms(outputs: dict, batch: dict, loss_cfg) -> tuple[jax.Array, dict]:
    """(weighted total, logs) of the configured terms."""
    weights = configured_terms(loss_cfg)
    values = {name: LOSS_TERMS[name].fn(outputs, batch, loss_cfg) for name in weights}
    return losses.total_loss(values, weights)
