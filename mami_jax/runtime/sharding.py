"""Device mesh and partition rules: how parameters and batches are laid out.

The mesh has two axes, "data" (batch parallelism) and "model" (tensor
parallelism of the big kernels). Parameters are placed by regex rules on their
path ("mami/block_3/attn/qkv/kernel" -> PartitionSpec(None, "model")), the first
matching rule winning, like big_vision's. Optimizer-state leaves are matched by
the same rules through their path, which ends with the parameter's path, so
Adam's moments live next to their parameter. A rule that cannot apply (more
axes than the array has, or a dimension not divisible by the mesh axis) is an
error naming the parameter, never a silent replication.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mami_jax.runtime.setting_ranges import require_pattern

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, model) mesh over ``devices`` (default: all); -1 for either axis means "the
    devices the other axis leaves" (``mesh.data``, ``mesh.model``), not for both at once."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    data, model = _mesh_axis_sizes(int(data), int(model), n)
    if data * model != n:
        raise ValueError(f"mesh data={data} x model={model} != {n} devices")
    grid = np.asarray(devices, dtype=object).reshape(data, model)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def _mesh_axis_sizes(data: int, model: int, n: int) -> tuple[int, int]:
    """(data, model) with a -1 resolved to what the other axis leaves of ``n`` devices;
    ValueError naming the key when both are -1 or a given size does not divide ``n``."""
    if data == -1 and model == -1:
        raise ValueError("mesh.data=-1 and mesh.model=-1: at most one of them can be -1 "
                         "(the devices the other axis leaves); give the other a size")
    for key, size in (("mesh.data", data), ("mesh.model", model)):
        if size != -1 and (size < 1 or n % size):
            raise ValueError(f"{key}={size} must divide the {n} devices (or be -1)")
    return (n // model if data == -1 else data), (n // data if model == -1 else model)


def check_data_axis_divides(what: str, size: int, mesh: Mesh) -> None:
    """ValueError "WHAT is not divisible by the N devices of the data axis" unless a global
    batch of ``size`` splits evenly over ``mesh``'s data axis."""
    devices = mesh.shape[DATA_AXIS]
    if int(size) % devices:
        raise ValueError(f"{what} is not divisible by the {devices} devices of the data axis")


def path_to_str(path) -> str:
    """"mami/block_0/attn/qkv/kernel" from a jax tree path."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def check_partition_rules(rules, mesh: Mesh) -> None:
    """ValueError naming the rule of ``partition_rules`` whose pattern is no regular
    expression or that names an axis ``mesh`` lacks (was a KeyError or re.error traceback
    when the state was placed, after the data was read)."""
    for pattern, axes in rules:
        require_pattern(pattern, "partition_rules")
        unknown = [a for a in tuple(axes) if a is not None and a not in mesh.shape]
        if unknown:
            raise ValueError(f"partition_rules: rule {pattern!r} names mesh axis "
                             f"{unknown[0]!r}; the mesh's axes are {list(mesh.axis_names)} "
                             "(or None)")


def model_groups_span_processes(devices: np.ndarray) -> list[int] | None:
    """The process indices of the first data-axis row of ``devices`` (a (data, model) grid
    of devices) that holds devices of more than one process, or None. Every process feeds
    its own share of the batch over the data axis; a model group across processes was fed
    two different shares as one replicated array, and trained on half the batch."""
    for row in np.asarray(devices, dtype=object):
        owners = sorted({int(d.process_index) for d in row})
        if len(owners) > 1:
            return owners
    return None


def refuse_model_groups_across_processes(mesh: Mesh) -> None:
    """ValueError naming ``mesh.model`` when a model-axis group of ``mesh`` spans processes
    (``model_groups_span_processes``): training, evaluation and embedding alike (eval
    and embed crashed with a traceback while fingerprinting the parameters)."""
    owners = model_groups_span_processes(mesh.devices)
    if owners is not None:
        raise ValueError(
            f"mesh.model={mesh.shape[MODEL_AXIS]}: a model-axis group spans processes "
            f"{owners}; each process feeds its own share of the batch, so a group must lie "
            f"within one process: mesh.model at most the {jax.local_device_count()} devices of "
            "a process, dividing them")


def spec_for(name: str, shape: tuple, rules, mesh: Mesh) -> P:
    for pattern, axes in rules:
        if re.match(pattern, name):
            axes = tuple(axes)
            if not axes:
                return P()
            if len(axes) > len(shape):
                raise ValueError(f"partition rule {pattern!r} gives {len(axes)} axes to "
                                 f"{name} of shape {shape}")
            for dim, axis in zip(shape, axes):
                if axis is not None and dim % mesh.shape[axis]:
                    raise ValueError(f"partition rule {pattern!r}: {name} dimension {dim} of "
                                     f"shape {shape} is not divisible by mesh axis {axis!r} of "
                                     f"size {mesh.shape[axis]}")
            return P(*axes)
    raise ValueError(f"no partition rule matches {name}; end the rules with ('.*', ())")


def tree_shardings(tree, rules, mesh: Mesh):
    """NamedShardings for every leaf of ``tree`` (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, spec_for(path_to_str(path),
                                                        tuple(np.shape(leaf)), rules, mesh)),
        tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch dimension split over the data axis, replicated over the model axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles every process's share into global arrays sharded over the data axis.

    Every entry is a per-image field (an array, or a nested dict of arrays such as
    per-teacher features and masks) whose first axis is the batch; entries whose key
    starts with ``_`` are host-side bookkeeping (e.g. ``_skipped``) and stay behind.
    So a field the pipeline adds reaches the step and the losses with no list to edit.
    """
    sharding = batch_sharding(mesh)
    fields = {k: v for k, v in local_batch.items() if not str(k).startswith("_")}
    return jax.tree_util.tree_map(
        lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)), fields)
