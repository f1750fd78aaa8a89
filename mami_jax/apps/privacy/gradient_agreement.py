"""How much of one re-ID model's identity gradient other models share.

A change optimised against an ensemble transfers to a model it never saw only through
what that model's gradient has in common with the members'. This module measures it at
the original images: every model's gradient of its own protection score (the one
``protect`` descends: ``objective``, with the run's smoothing) per image, normalised,
and their cosines.

If any two models' gradients share a part whose cosine is ``c`` and the rest is
independent, the mean of ``k`` members' gradients meets an unseen model's at

    c * sqrt(k) / sqrt(1 + (k - 1) * c),

which rises towards ``sqrt(c)`` however many members there are (``predicted_alignment``).
So ``c`` bounds what any ensemble can do at first order: a change of size epsilon moves
an unseen model about as far as a change of size ``alignment * epsilon`` optimised
against that model itself would. Whether that is enough depends on how much change the
identity needs even on the model the change is optimised against: a budget sweep of the
held-out model against itself (``privacy_transfer.py --sizes 1``) gives its Rank-1 after
protection at each budget (``white_box_curve``), from which ``budget_to_reach`` reads
the budget its own protection needs and ``rank1_at`` what a smaller, effective one leaves.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from tqdm import tqdm

from mami_jax.apps.privacy import perturb
from mami_jax.apps.privacy.change_masks import change_mask
from mami_jax.apps.privacy.model_input import InputMap, settings_for
from mami_jax.apps.privacy.protect import ProtectionInputs, groups_of, member_score_fn
from mami_jax.apps.privacy.references import member_refs


def model_gradients(rows_all, targets: Sequence, models, config,
                    progress: bool = True) -> np.ndarray:
    """(models, views, pixels): each model's gradient of its own protection score at the
    original pixels of every view ``protect`` would optimise for ``targets`` (rows of
    ``rows_all``), smoothed as the run's step smooths it (``perturb.smooth``), masked as
    it masks it, and scaled to unit length per view. ``models`` are ensemble members
    (``ensemble.load_ensemble``) with one model config; each is scored against its own
    embeddings of the patients' images, as a member of a protecting ensemble is."""
    inputs = ProtectionInputs.of(rows_all, targets, models, config, progress)
    sigma = float(config.perturb.get("smooth", 0.0))
    size = int(config.batch_size)
    out = [[] for _ in models]
    bar = tqdm(total=len(inputs.sources) * len(models), desc="gradients", unit="view",
               disable=not progress)
    key = jax.random.key(int(config.seed))
    for (modality, _, h, w, _), group in groups_of(inputs.sources).items():
        settings = settings_for(inputs.data_cfg, modality)
        imap = InputMap(settings, h, w)
        member_grad = perturb.make_member_grad(
            member_score_fn(models, imap, config.perturb, modality))
        for start in range(0, len(group), size):
            batch, padded, x0, offset, refs = inputs.batch(group, start, size, imap,
                                                           config.perturb)
            mask, _ = change_mask(padded, x0, settings.value_window)
            arrays, delta = refs.arrays(), np.zeros_like(x0)
            key, sub = jax.random.split(key)
            for m, model in enumerate(models):
                g, _ = member_grad(delta, model.params, x0, offset, member_refs(arrays, m), sub)
                g = np.asarray(perturb.smooth_gradient(g, sigma)) * mask
                out[m].append(g[:len(batch)].reshape(len(batch), -1))
                bar.update(len(batch))
    bar.close()
    return unit_rows(np.stack([np.concatenate(g) for g in out]))


def unit_rows(g: np.ndarray) -> np.ndarray:
    """``g`` (..., D) scaled to unit length along its last axis; an all-zero row stays 0."""
    norm = np.linalg.norm(g, axis=-1, keepdims=True)
    return np.where(norm > 0, g / np.where(norm > 0, norm, 1.0), 0.0)


def pairwise_cosines(g: np.ndarray) -> np.ndarray:
    """(M, M): the cosine of every two models' gradients (M, N, D), averaged over the N
    views."""
    g = unit_rows(np.asarray(g, np.float64))
    return np.einsum("mnd,knd->mkn", g, g).mean(-1)


def prefix_alignment(members: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """(K,): for k = 1 .. K, the cosine between the mean of the first k members'
    gradients (K, N, D) and ``held_out``'s (N, D), averaged over the views: how well an
    ensemble of the first k points where the unseen model's score falls fastest."""
    members = unit_rows(np.asarray(members, np.float64))
    target = unit_rows(np.asarray(held_out, np.float64))
    sums = np.cumsum(members, axis=0)
    return np.einsum("knd,nd->kn", unit_rows(sums), target).mean(-1)


def predicted_alignment(c: float, k) -> np.ndarray:
    """The alignment of ``k`` members' mean with an unseen model when every two models'
    gradients meet at cosine ``c`` through one shared part (the module's docstring)."""
    k = np.asarray(k, np.float64)
    return c * np.sqrt(k) / np.sqrt(1.0 + (k - 1.0) * c)


def shared_cosine(cosines: np.ndarray) -> float:
    """The mean cosine between two different models (off the diagonal of
    ``pairwise_cosines``)."""
    cosines = np.asarray(cosines)
    return float(cosines[~np.eye(len(cosines), dtype=bool)].mean())


def white_box_curve(sweep: dict, model: str = "protecting") -> tuple[np.ndarray, np.ndarray, float]:
    """(budgets, Rank-1 after protection, chance Rank-1) of ``model`` in a
    ``privacy_transfer.py`` result whose runs are one model protecting against itself
    (``--sizes 1``) at the budgets their ``perturb.epsilon=`` overrides set; sorted by
    budget, starting at budget 0 with the Rank-1 before protection."""
    points, chance, before = [], None, None
    for run in sweep["runs"]:
        if run["size"] != 1:
            raise ValueError(f"white-box sweep: run {run['variant']!r} has ensemble size "
                             f"{run['size']}, expected 1 (the model against itself)")
        eps = [float(o.split("=", 1)[1]) for o in run["overrides"]
               if o.startswith("perturb.epsilon=")]
        if not eps:
            raise ValueError(f"white-box sweep: run {run['variant']!r} sets no perturb.epsilon")
        report = run["attack"][model]["mean"]
        points.append((eps[-1], report["rank1_after"]))
        chance, before = report["chance_rank1"], report["rank1_before"]
    if len(points) < 2:
        raise ValueError("white-box sweep: needs at least two budgets")
    points = [(0.0, before)] + sorted(points)
    return (np.array([b for b, _ in points]), np.array([r for _, r in points]), float(chance))


def budget_to_reach(budgets: np.ndarray, rank1: np.ndarray, goal: float) -> float:
    """The least budget at which Rank-1, linear between the measured budgets, falls to
    ``goal``; inf when no measured budget reaches it."""
    if rank1[0] <= goal:
        return float(budgets[0])
    for i in range(1, len(budgets)):
        if rank1[i] <= goal:
            t = (rank1[i - 1] - goal) / (rank1[i - 1] - rank1[i])
            return float(budgets[i - 1] + t * (budgets[i] - budgets[i - 1]))
    return float("inf")


def rank1_at(budgets: np.ndarray, rank1: np.ndarray, budget) -> np.ndarray:
    """Rank-1, linear between the measured budgets, at ``budget`` (held at the ends)."""
    return np.interp(budget, budgets, rank1)
