"""What protection minimises and the cue maps explain: the identity match score, or how far
an image still ranks its own patient first (``rank_margins``).

The match score of an image is the mean cosine similarity between its embedding and the
(original) embeddings of its patient's other images, plus ``own_weight`` times the
similarity to its own original embedding (which also covers a patient with one image).
Embeddings are first centred on the mean embedding of the reference rows: a re-ID
model's raw embeddings share a large common direction (raw cosine similarities of
different patients are above 0.99 on the phantoms), so raw cosines barely move while
the ranking, which lives in the remaining directions, is what must change.

``views``: expectation over transformations (EOT). Each optimisation step embeds a few
random views of the image (shift, noise, a symmetry of the square where evaluation
averages over them), so the change does not depend on one exact pixel grid, and it
transfers better to models it was not optimised against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mami_jax.apps.privacy.references import member_refs
from mami_jax.models.embed import centred


def match_scores(embedding, others, mask, own, own_weight):
    """(B,) match score of unit embeddings (B, C) against their references: the mean
    similarity to the patient's other images plus ``own_weight`` times that to the own
    original, over 1 + ``own_weight``; an image without other images is scored by its own
    original alone, whatever ``own_weight`` (at 0 its score was 0 / 0)."""
    sim = jnp.einsum("bc,bkc->bk", embedding, others)
    has_others = mask.sum(-1) > 0
    count = jnp.maximum(mask.sum(-1), 1.0)
    score = (sim * mask).sum(-1) / count
    weight = jnp.where(has_others, own_weight, 1.0)
    return (score + weight * jnp.sum(embedding * own, -1)) / (has_others + weight)


OBJECTIVES = ("similarity", "rank")


def rank_margins(embedding, others, mask, own, impostors, impostor_mask, temperature: float,
                 floor: float):
    """(B,) how far each image still ranks its own patient first: a soft maximum (log-sum-
    exp at ``temperature``) of its similarities to the patient's other images (its own
    original where it has none) minus that over every image of the modality's other
    patients, floored at ``-floor``. Below zero a nearest-neighbour match already falls to
    an impostor; at the floor it does by that margin and the image's gradient stops, so the
    budget goes to the images and members still matched rather than to pushing the fooled
    further (the similarity objective keeps pushing every member alike)."""
    has_others = mask.sum(-1, keepdims=True) > 0
    same = jnp.where(has_others, jnp.einsum("bc,bkc->bk", embedding, others),
                     jnp.sum(embedding * own, -1, keepdims=True))
    same_mask = jnp.where(has_others, mask, jnp.ones_like(mask).at[:, 1:].set(0.0))
    imp = jnp.einsum("bc,bjc->bj", embedding, impostors)

    def soft_max(sim, m):      # a finite fill: no NaN gradient where m is all zero
        value = temperature * jax.nn.logsumexp(jnp.where(m > 0, sim / temperature, -1e4),
                                               axis=-1)
        return jnp.where(m.sum(-1) > 0, value, 0.0)
    return jnp.maximum(soft_max(same, same_mask) - soft_max(imp, impostor_mask), -floor)


def random_views(key, x, shift: int, noise: float, scale: float = 0.0):
    """One random view of (B, T, H, W, C) unit pixels: a zoom by a random factor in
    [1, 1 + ``scale``] about a random point (input diversity, DI-FGSM; bilinear, the view
    stays inside the image), a wrapped shift of up to ``shift`` pixels and noise."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    if scale > 0:
        h, w = x.shape[2], x.shape[3]
        ks, kt = jax.random.split(k4)
        s = 1.0 + scale * jax.random.uniform(ks, ())
        # output pixel o reads input (o + 0.5 - t) / s - 0.5: t in [(1 - s) size, 0] keeps
        # every read inside the image.
        t = jax.random.uniform(kt, (2,)) * (1.0 - s) * jnp.asarray([h, w], jnp.float32)
        x = jax.image.scale_and_translate(x, x.shape, (2, 3), jnp.stack([s, s]), t,
                                          method="linear", antialias=False)
    if shift > 0:
        dy = jax.random.randint(k1, (), -shift, shift + 1)
        dx = jax.random.randint(k2, (), -shift, shift + 1)
        x = jnp.roll(x, (dy, dx), axis=(2, 3))
    if noise > 0:
        x = x + noise * jax.random.normal(k3, x.shape)
    return x


def random_symmetry(key, images):
    """A random one of the 8 symmetries of the square of (B, T, S, S, 3) model input."""
    k = jax.random.randint(key, (), 0, 8)
    branches = [(lambda r, m: (lambda v: (jnp.rot90(v, r, axes=(2, 3))[:, :, :, ::-1]
                                          if m else jnp.rot90(v, r, axes=(2, 3)))))(r, m)
                for r in range(4) for m in (0, 1)]
    return jax.lax.switch(k, branches, images)


def token_similarity(tokens, clean_tokens):
    """(B,) mean cosine similarity, position by position, between a layer's tokens
    (B, L, C) and the original image's, both taken relative to the original's mean token
    (a layer's tokens share a large common part that says nothing of the position)."""
    centre = jnp.mean(clean_tokens, axis=1, keepdims=True)
    a, b = tokens - centre, clean_tokens - centre
    cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-6)
    return jnp.mean(cos, axis=1)


def make_view_fn(input_map, cfg_perturb, views: int):
    """(x, offset, key) -> the model input of one random view of x (``random_views`` and,
    for modalities evaluated over them, ``random_symmetry``): the same view for the same
    key, so an image and its original can be compared view for view. views=0: the plain
    image."""
    shift, noise = int(cfg_perturb.shift), float(cfg_perturb.noise)
    scale = float(cfg_perturb.get("scale", 0.0))

    def view_of(z, offset, k):
        if views == 0:
            return input_map(z, offset)
        kk = jax.random.split(k)
        images = input_map(random_views(kk[0], z, shift, noise, scale), offset)
        return random_symmetry(kk[1], images) if input_map.symmetric else images
    return view_of


def objective_for(cfg_perturb, modality: str | None = None) -> str:
    """What protection minimises for ``modality``'s images: ``perturb.modality_objective
    [modality]`` where given, else ``perturb.objective`` (one of ``OBJECTIVES``). The
    ranking removes X-ray identity further at the same budget but, on fundus, moves the
    image towards other patients' lesions (docs/privacy_experiments.md), so a recipe can choose per
    modality."""
    by_modality = dict(cfg_perturb.get("modality_objective", {}) or {})
    name = str(by_modality.get(modality, cfg_perturb.get("objective", "similarity")))
    if name not in OBJECTIVES:
        key = (f"perturb.modality_objective[{modality!r}]" if modality in by_modality
               else "perturb.objective")
        raise ValueError(f"{key}={name!r}: expected one of {OBJECTIVES}")
    return name


def impostors_needed(cfg_perturb, modality: str | None = None) -> int:
    """How many impostors per image ``references.build_references`` must gather for ``modality``'s
    objective."""
    if objective_for(cfg_perturb, modality) != "rank":
        return 0
    count = int(cfg_perturb.get("rank_impostors", 128))
    if count < 1:
        raise ValueError(f"perturb.rank_impostors={count}: the rank objective needs at least 1")
    return count


def make_member_score_fn(embed_fn, input_map, cfg_perturb, views: int, with_target: bool = False,
                         tokens_fn=None, modality: str | None = None,
                         own_weight: float | None = None):
    """(params, x (B,T,H,W,C), offset, ``references.member_refs``, key[, clean]) -> (B,)
    match score of ONE member, averaged over ``views`` random views (views=0: the plain image, no
    randomness). ``with_target``: what protection minimises rather than the match score
    alone: the rank margins where ``modality``'s objective is "rank" (``objective_for``),
    minus ``perturb.target_weight`` times the similarity to the target patient,
    plus ``perturb.feature_weight`` times the similarity of ``perturb.feature_layer``'s
    tokens to those of the same view of ``clean`` (the original image; needs
    ``tokens_fn``: (params, images) -> (unit embeddings, (B, L, C) tokens), as
    ``ensemble.tokens_fn`` makes).

    Every member of an ensemble has the same model config, so one compiled gradient of
    this function serves them all (``perturb.make_step`` calls it once per member)."""
    own_weight = float(cfg_perturb.own_weight if own_weight is None else own_weight)
    rank = objective_for(cfg_perturb, modality) == "rank" and with_target
    temperature = float(cfg_perturb.get("rank_temperature", 0.1))
    floor = float(cfg_perturb.get("rank_floor", 1.0))
    target_weight = float(cfg_perturb.get("target_weight", 0.0)) if with_target else 0.0
    feature_weight = float(cfg_perturb.get("feature_weight", 0.0)) if with_target else 0.0
    if feature_weight and tokens_fn is None:
        raise ValueError("perturb.feature_weight needs the members' token function")
    n = max(views, 1)

    view_of = make_view_fn(input_map, cfg_perturb, views)

    def score(params, x, offset, refs, key, clean=None):
        others, mask, own, center, target, impostors, impostor_mask = refs
        total = 0.0
        keys = jax.random.split(key, n)
        for v in range(n):
            images = view_of(x, offset, keys[v])
            if feature_weight:
                if clean is None:
                    raise ValueError("perturb.feature_weight: the score needs the clean image")
                e, tokens = tokens_fn(params, images)
                _, clean_tokens = tokens_fn(params, view_of(clean, offset, keys[v]))
                total = total + feature_weight * token_similarity(
                    tokens, jax.lax.stop_gradient(clean_tokens))
            else:
                e = embed_fn(params, images)
            e = centred(e, center)
            if rank:
                total = total + rank_margins(e, others, mask, own, impostors, impostor_mask,
                                             temperature, floor)
            else:
                total = total + match_scores(e, others, mask, own, own_weight)
            if target_weight:
                total = total - target_weight * jnp.sum(e * target, -1)
        return total / n
    return score


def make_score_fn(members, input_map, cfg_perturb, views: int,
                  own_weight: float | None = None):
    """(params list, x (B,T,H,W,C), offset, ``References.arrays()``, key) -> (B,)
    match score (``match_scores`` of centred embeddings) averaged over the members (each
    with its own key) and ``views`` random views (views=0: the plain image);
    ``own_weight`` in place of ``perturb.own_weight`` (the cue maps' 0)."""
    fns = [make_member_score_fn(m.embed, input_map, cfg_perturb, views, own_weight=own_weight)
           for m in members]

    def score(params_list, x, offset, ref_arrays, key):
        keys = jax.random.split(key, len(fns))
        total = 0.0
        for m, (fn, params) in enumerate(zip(fns, params_list)):
            total = total + fn(params, x, offset, member_refs(ref_arrays, m), keys[m])
        return total / len(fns)
    return score
