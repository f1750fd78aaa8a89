"""The re-ID models a protection is optimised against or explained with.

A member is an ``Embedder`` (``mami_jax.inference``: its restored parameters and model
config) plus a pure function ``embed(params, images) -> unit embeddings`` that
``jax.grad`` can go through. Members are named as workdirs (latest checkpoint),
``WORKDIR@STEP`` (a given checkpoint of that run), or released or exported files and
converter folders (``load_member``), all of the experiment config given.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from mami_jax.convert.checkpoint_dir import is_converter_checkpoint
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


def _shardings(tree, config):
    """Where every parameter of ``tree`` lives on the experiment's mesh."""
    from mami_jax.train import sharding
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
    return sharding.tree_shardings(tree, config.partition_rules, mesh)


def _restore_at(workdir: str, step: int, config) -> Embedder:
    from mami_jax.models.embed import abstract_params
    from mami_jax.train import checkpointing
    checkpointing.check_model_config(workdir, config.model, "protect with")
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    if not os.path.isdir(step_dir):
        raise FileNotFoundError(f"{step_dir}: no checkpoint of step {step}")
    abstract = abstract_params(config.model, config.model.image_size)
    shardings = _shardings(abstract, config)
    target = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    ckpt = checkpointing.Checkpointer(workdir, read_only=True)
    try:
        params = ckpt.restore_params(step, target)
    finally:
        ckpt.close()
    return Embedder(config.model, params, config.data, step=step,
                    source=f"{workdir} (step {step})", batch_size=int(config.eval.batch_size))


def _from_export(path: str, config) -> Embedder:
    """A released or exported model placed on the experiment's mesh as a workdir's
    restored parameters are, so that it computes exactly as the run it came from."""
    loaded = Embedder.from_export(path, data_cfg=config.data, model_cfg=config.model)
    params = jax.device_put(loaded.params, _shardings(loaded.params, config))
    return Embedder(config.model, params, config.data, source=path,
                    batch_size=int(config.eval.batch_size))


def load_member(name: str, config) -> Member:
    """``WORKDIR``, ``WORKDIR@STEP``, or a model that was never a run of ours: a released
    or exported file (``.pth``/``.safetensors``) or a converter folder
    (``python -m mami_jax.convert import-official``), so the public weights an attacker
    may fine-tune from can be a member as they are. Either way for experiment ``config``:
    a model whose config differs is refused, naming the keys."""
    workdir, sep, step = name.partition("@")
    if os.path.isfile(name) or is_converter_checkpoint(name):
        embedder = _from_export(name, config)
    elif not os.path.isdir(workdir):
        raise FileNotFoundError(f"ensemble member {name!r}: no re-ID workdir, model file "
                                "(.pth/.safetensors) or converter folder there")
    elif sep:
        if not step.isdigit():
            raise ValueError(f"ensemble member {name!r}: STEP must be a number")
        embedder = _restore_at(workdir, int(step), config)
    else:
        embedder = Embedder.from_workdir(workdir, config, action="protect with")
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
