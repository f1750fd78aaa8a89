"""The re-ID models a protection is optimised against or explained with.

A member is an ``Embedder`` (``mami_jax.inference``: its restored parameters and model
config) plus a pure function ``embed(params, images) -> unit embeddings`` that
``jax.grad`` can go through. Members are named as workdirs (latest checkpoint),
``WORKDIR@STEP`` (a given checkpoint of that run), or released or exported files and
converter folders (``load_member``), all of the experiment config given.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax.numpy as jnp

from mami_jax.data.manifest import MODALITIES
from mami_jax.inference import Embedder
from mami_jax.models import layer_tokens
from mami_jax.models.mami import MaMI


@dataclasses.dataclass
class Member:
    embedder: Embedder
    embed: Callable      # (params, (B, T, S, S, 3) model input) -> (B, C) unit vectors

    @property
    def params(self):
        return self.embedder.params


def unit_embedding_fn(model_cfg) -> Callable:
    mami = MaMI(model_cfg)

    def embed(params, images):
        return unit(mami.apply({"params": params}, images).embedding)
    return embed


def unit(e):
    """Embeddings scaled to unit length (what the match score compares)."""
    return e / (jnp.linalg.norm(e, axis=-1, keepdims=True) + 1e-8)


def tokens_fn(model_cfg, layer: str) -> Callable:
    """(params, images (B, T, S, S, 3)) -> (unit embeddings (B, C), the patch tokens of
    ``layer`` (``models.layer_tokens``; ``last_block`` allowed) of all slices (B, T*L, C)):
    what ``perturb.feature_weight`` compares with the original image's tokens."""
    mami = MaMI(model_cfg)
    layer = layer_tokens.resolve_layer(model_cfg, layer, key="perturb.feature_layer")

    def fn(params, images):
        out, tokens = layer_tokens.apply_with_tokens(mami, params, images, layer)
        tokens = layer_tokens.patch_tokens(tokens, layer)
        return unit(out.embedding), tokens.reshape(images.shape[0], -1, tokens.shape[-1])
    return fn


def load_member(name: str, config, role: str = "ensemble member") -> Member:
    """``WORKDIR``, ``WORKDIR@STEP``, or a model that was never a run of ours: a released
    or exported file (``.pth``/``.safetensors``) or a converter folder, so the public
    weights an attacker may fine-tune from can be a member as they are
    (``Embedder.load``: the experiment ``config``'s model, on its mesh)."""
    embedder = Embedder.load(name, config, action="protect with", role=role)
    return Member(embedder, unit_embedding_fn(config.model))


def load_ensemble(names: Sequence[str], config) -> list[Member]:
    return [load_member(n, config) for n in names]


def modality_ensembles(cfg_perturb, modalities: Sequence[str]) -> dict[str, list[str]]:
    """``perturb.modality_ensemble``: per modality, the members (workdirs, "WORKDIR@STEP";
    a list or one "A+B" text) that replace ``perturb.ensemble`` for that modality's images.
    A modality outside ``modalities`` is refused, naming the known ones:
    a misspelt key would otherwise leave that modality with the default ensemble."""
    out = {}
    for modality, names in dict(cfg_perturb.get("modality_ensemble", {}) or {}).items():
        if modality not in modalities:
            raise ValueError(f"perturb.modality_ensemble[{modality!r}]: no such modality "
                             f"(expected one of {sorted(modalities)})")
        if isinstance(names, str):
            names = names.split("+")
        out[modality] = [str(n) for n in names if str(n)]
    return out


def load_modality_members(first: Member, loaded: dict, cfg_perturb, config
                          ) -> dict[str, list[Member]]:
    """Per modality of ``perturb.modality_ensemble``: ``first`` (the ``--workdir`` model)
    and that modality's members, each workdir restored once: ``loaded`` (name -> Member,
    the default ensemble's) is reused and extended."""
    named = modality_ensembles(cfg_perturb, MODALITIES)
    for name in sorted({n for names in named.values() for n in names} - set(loaded)):
        loaded[name] = load_member(name, config)
    return {m: [first] + [loaded[n] for n in names] for m, names in named.items()}
