"""The one table that says where every parameter lives on both sides.

``build_table(cfg)`` lists, for the model that ``cfg`` describes, one ``Entry`` per
PyTorch state-dict key of the released MaMI layout: our parameter path (``"a/b/c"``
in the Flax ``params`` tree, or ``None`` for keys the released forward pass never
reads), their key, and a small named invertible transform. Both directions are
driven by the same rows, so import and export cannot disagree:

- ``params_to_state_dict`` (export): every path of the table must be in ``params``
  with the table's shape, and nothing else may be there; unused keys are written
  as zeros so that a strict ``load_state_dict`` succeeds.
- ``state_dict_to_params`` (import): every used key must be present with the
  table's shape, unused keys are optional (ignored and reported), any other key is
  an error.

Every violation raises ``ConversionError`` listing all missing, extra and
mis-shaped keys at once (a width mismatch lists every key it touches), and so does a
value that is no tensor of real numbers (``check_real``). Imported values holding NaN or
inf raise ``NonFiniteWeightsError`` naming every such key (``check_finite``; the CLIP
importer and ``checkpoint_dir.load_params`` use it too).

Layout facts (docs/design.md#mapping-rules): torch Linear weights are (out, in) and our Dense
kernels (in, out); conv weights are OIHW and ours HWIO; grouped layers are stored
(G, in/G, out/G) on both sides; the MLP's generator names are swapped
(``lora_mlp_c_fc_b`` makes the *down* factor). Ablation configs drop the rows of
the parts they switch off. No torch import here: state-dict values may be numpy
arrays or torch tensors (converted with ``.numpy()``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import numpy as np

Shape = tuple


class ConversionError(ValueError):
    """A state dict or params tree does not match the table.

    ``missing``, ``extra`` and ``mismatched`` hold the complete lists; the message
    names them (the first ``_LIST_LIMIT`` of each, with counts).
    """

    def __init__(self, what: str, missing=(), extra=(), mismatched=()):
        self.missing = list(missing)
        self.extra = list(extra)
        self.mismatched = list(mismatched)  # (key, got_shape, expected_shape)
        parts = [what]
        if self.missing:
            parts.append(_listing(f"{len(self.missing)} missing", self.missing))
        if self.extra:
            parts.append(_listing(f"{len(self.extra)} unexpected", self.extra))
        if self.mismatched:
            parts.append(_listing(
                f"{len(self.mismatched)} with the wrong shape",
                [f"{k}: got {tuple(g)}, expected {tuple(e)}" for k, g, e in self.mismatched]))
        super().__init__("\n".join(parts))


_LIST_LIMIT = 40


class NonFiniteWeightsError(ValueError):
    """Weights to be imported hold NaN or inf values.

    ``bad`` lists ``(key, nan_count, inf_count, size)`` for every such array. Such a
    file is refused rather than imported: the model would compute NaN (or silently
    saturate) and nothing downstream would say which tensor was broken.
    """

    def __init__(self, source: str, bad):
        self.bad = list(bad)
        super().__init__(_listing(
            f"{source}: {len(self.bad)} weight arrays hold NaN or inf values; refusing to "
            "import them", [f"{k}: {n} NaN, {i} inf of {size} values"
                            for k, n, i, size in self.bad]))


def check_finite(arrays: Mapping[str, Any], source: str) -> None:
    """Raises ``NonFiniteWeightsError`` naming every floating array with NaN or inf."""
    bad = []
    for key, value in arrays.items():
        a = np.asarray(value)
        if a.dtype.kind not in "fc" and "float" not in a.dtype.name:  # ml_dtypes: kind "V"
            continue
        if a.dtype.kind not in "fc":
            a = a.astype(np.float32)
        if np.isfinite(a).all():
            continue
        bad.append((key, int(np.isnan(a).sum()), int(np.isinf(a).sum()), int(a.size)))
    if bad:
        raise NonFiniteWeightsError(source, bad)


def check_real(values: Mapping[str, Any], source: str) -> None:
    """Raises ``ConversionError`` naming every value that is not an array of real numbers:
    one without a shape (an int, a string: the shape check failed on it with a bare
    AttributeError) or one of complex numbers (the cast to float dropped the imaginary part
    without a word)."""
    bad = []
    for key, value in values.items():
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            bad.append(f"{key}: {type(value).__name__}, not a tensor")
            continue
        name = str(value.dtype).replace("torch.", "")
        if "complex" in name or (not hasattr(value, "detach") and "float" not in name
                                 and np.dtype(value.dtype).kind not in "biuf"):
            bad.append(f"{key}: {name} values")
    if bad:
        raise ConversionError(_listing(
            f"{source}: {len(bad)} weights are not tensors of real numbers", bad))


def _listing(title, items):
    shown = [f"  {x}" for x in items[:_LIST_LIMIT]]
    if len(items) > _LIST_LIMIT:
        shown.append(f"  ... and {len(items) - _LIST_LIMIT} more")
    return f"{title}:\n" + "\n".join(shown)


@dataclasses.dataclass(frozen=True)
class Transform:
    """An invertible layout change: ours -> theirs (``fwd``) and back (``inv``)."""

    name: str
    fwd: Callable[[np.ndarray], np.ndarray]
    inv: Callable[[np.ndarray], np.ndarray]
    fwd_shape: Callable[[Shape], Shape]


IDENTITY = Transform("identity", lambda a: a, lambda a: a, lambda s: tuple(s))
# Dense kernel (in, out) <-> torch Linear weight (out, in).
TRANSPOSE = Transform("transpose", lambda a: a.T, lambda a: a.T, lambda s: (s[1], s[0]))
# Dense kernel (in, out) <-> torch 1x1 Conv2d weight (out, in, 1, 1).
CONV1X1 = Transform("conv1x1", lambda a: a.T[:, :, None, None], lambda a: a[:, :, 0, 0].T,
                    lambda s: (s[1], s[0], 1, 1))
# Flax conv kernel HWIO <-> torch conv weight OIHW (both cross-correlations).
HWIO_OIHW = Transform("hwio_to_oihw", lambda a: a.transpose(3, 2, 0, 1),
                      lambda a: a.transpose(2, 3, 1, 0),
                      lambda s: (s[3], s[2], s[0], s[1]))
# Codebook (K, C/K) <-> knowledge_pool (1, K, C/K).
LEADING_ONE = Transform("add_leading_axis", lambda a: a[None], lambda a: a[0],
                        lambda s: (1,) + tuple(s))
# Slice-adapter kernel (k, A) <-> depthwise Conv3d weight (A, 1, k, 1, 1) over T.
DEPTHWISE_T = Transform("depthwise_conv3d_t", lambda a: a.T[:, None, :, None, None],
                        lambda a: a[:, 0, :, 0, 0].T, lambda s: (s[1], 1, s[0], 1, 1))

TRANSFORMS = {t.name: t for t in (IDENTITY, TRANSPOSE, CONV1X1, HWIO_OIHW, LEADING_ONE,
                                  DEPTHWISE_T)}


@dataclasses.dataclass(frozen=True)
class Entry:
    ours: Optional[str]        # "a/b/c" path in params; None: unused by the forward pass
    theirs: str                # key in the torch state dict (no "module." prefix)
    transform: Transform
    our_shape: Optional[Shape]
    their_shape: Shape

    @property
    def used(self) -> bool:
        return self.ours is not None


# Our factor name -> (their generator module, their static parameter).
FACTOR_NAMES = {
    "q_down": ("lora_mlp_q_a", "linear_a_q_static"),
    "q_up": ("lora_mlp_q_b", "linear_b_q_static"),
    "k_down": ("lora_mlp_k_a", "linear_a_k_static"),
    "k_up": ("lora_mlp_k_b", "linear_b_k_static"),
    "v_down": ("lora_mlp_v_a", "linear_a_v_static"),
    "v_up": ("lora_mlp_v_b", "linear_b_v_static"),
    # The released code names the MLP's factors the other way round.
    "fc_down": ("lora_mlp_c_fc_b", "linear_b_c_fc_static"),
    "fc_up": ("lora_mlp_c_fc_a", "linear_a_c_fc_static"),
}
# The released state dict's order of statics (and of generators) within a block:
# a before b, so the MLP's up factor (c_fc_a) comes before its down factor.
_RELEASED_ORDER = ("q_down", "q_up", "k_down", "k_up", "v_down", "v_up", "fc_up", "fc_down")


class _Builder:
    def __init__(self):
        self.entries: list[Entry] = []

    def add(self, ours, theirs, transform, our_shape):
        our_shape = tuple(our_shape)
        self.entries.append(Entry(ours, theirs, transform, our_shape,
                                  tuple(transform.fwd_shape(our_shape))))

    def unused(self, theirs, their_shape):
        self.entries.append(Entry(None, theirs, IDENTITY, None, tuple(their_shape)))

    def dense(self, ours, theirs, n_in, n_out, conv1x1=False):
        self.add(f"{ours}/kernel", f"{theirs}.weight", CONV1X1 if conv1x1 else TRANSPOSE,
                 (n_in, n_out))
        self.add(f"{ours}/bias", f"{theirs}.bias", IDENTITY, (n_out,))

    def layer_norm(self, ours, theirs, c):
        self.add(f"{ours}/scale", f"{theirs}.weight", IDENTITY, (c,))
        self.add(f"{ours}/bias", f"{theirs}.bias", IDENTITY, (c,))

    def grouped(self, ours, theirs, n_in, n_out, groups):
        self.add(f"{ours}/kernel", f"{theirs}.weight", IDENTITY,
                 (groups, n_in // groups, n_out // groups))
        self.add(f"{ours}/bias", f"{theirs}.bias", IDENTITY, (groups, n_out // groups))

    def unused_generator(self, theirs, c, hidden, out, groups):
        h1, h2 = hidden
        for name, shape in ((".l11.weight", (1, c, h1)), (".l11.bias", (1, h1)),
                            (".l21.weight", (1, h1, h2)), (".l21.bias", (1, h2)),
                            (".l31.weight", (groups, h2 // groups, out // groups)),
                            (".l31.bias", (groups, out // groups))):
            self.unused(theirs + name, shape)


def build_table(cfg) -> list[Entry]:
    """Every key of the released state-dict layout for ``cfg``, in the released order."""
    c, k, r = cfg.width, cfg.num_codes, cfg.rank
    d4 = c * cfg.mlp_ratio
    grid = cfg.image_size // cfg.patch_size
    hidden = tuple(cfg.generator_hidden)
    compa, codebook = cfg.use_compa, cfg.use_compa and cfg.use_codebook
    b = _Builder()
    if codebook:
        b.add("compa/codebook", "knowledge_pool", LEADING_ONE, (k, c // k))
    b.add("class_embedding", "class_embedding", IDENTITY, (c,))
    b.add("pos_embedding", "positional_embedding", IDENTITY, (1 + grid * grid, c))
    b.add("patch_embed/kernel", "conv1.weight", HWIO_OIHW, (cfg.patch_size, cfg.patch_size, 3, c))
    if compa:
        b.dense("compa/router_conv1", "router_spatial_transform.0", c, c, conv1x1=True)
        b.dense("compa/router_conv2", "router_spatial_transform.2", c, c, conv1x1=True)
        if codebook:
            b.dense("compa/router_fc1", "router_MLP.0", c, c)
            b.dense("compa/router_fc2", "router_MLP.2", c, k)
        b.dense("compa/shift_fc1", "ft_comp_MLP.1", c, c)
        b.dense("compa/shift_fc2", "ft_comp_MLP.3", c, c)
    b.layer_norm("ln_pre", "ln_pre", c)
    dims = {"q_down": c, "q_up": c, "k_down": c, "k_up": c, "v_down": c, "v_up": c,
            "fc_down": c, "fc_up": d4}
    for i in range(cfg.depth):
        ours, theirs = f"block_{i}", f"transformer.resblocks.{i}"
        if compa:
            for name in _RELEASED_ORDER:
                b.add(f"compa/{ours}/{name}/static", f"{theirs}.{FACTOR_NAMES[name][1]}",
                      IDENTITY, (1, r, dims[name]))
            b.unused(f"{theirs}.linear_a_c_proj_static", (1, r, c))
            b.unused(f"{theirs}.linear_b_c_proj_static", (1, r, d4))
        # The fused q, k, v projection (nn.MultiheadAttention's in_proj), q first.
        b.add(f"{ours}/attn/qkv/kernel", f"{theirs}.attn.in_proj_weight", TRANSPOSE, (c, 3 * c))
        b.add(f"{ours}/attn/qkv/bias", f"{theirs}.attn.in_proj_bias", IDENTITY, (3 * c,))
        b.dense(f"{ours}/attn/out", f"{theirs}.attn.out_proj", c, c)
        b.layer_norm(f"{ours}/ln_1", f"{theirs}.ln_1", c)
        b.dense(f"{ours}/mlp/fc", f"{theirs}.mlp.c_fc", c, d4)
        b.dense(f"{ours}/mlp/proj", f"{theirs}.mlp.c_proj", d4, c)
        b.layer_norm(f"{ours}/ln_2", f"{theirs}.ln_2", c)
        if cfg.use_slice_adapter:
            a = cfg.adapter_width
            b.dense(f"{ours}/adapter/fc1", f"{theirs}.adapter_pre_attn.fc1", c, a)
            b.add(f"{ours}/adapter/conv_kernel", f"{theirs}.adapter_pre_attn.conv.weight",
                  DEPTHWISE_T, (cfg.adapter_kernel, a))
            b.add(f"{ours}/adapter/conv_bias", f"{theirs}.adapter_pre_attn.conv.bias",
                  IDENTITY, (a,))
            b.dense(f"{ours}/adapter/fc2", f"{theirs}.adapter_pre_attn.fc2", a, c)
        if compa:
            for name in _RELEASED_ORDER:
                groups = cfg.mlp_groups if name.startswith("fc") else cfg.qkv_groups
                gen, theirs_gen = f"compa/{ours}/{name}", f"{theirs}.{FACTOR_NAMES[name][0]}"
                b.grouped(f"{gen}/hidden1", f"{theirs_gen}.l11", c, hidden[0], 1)
                b.grouped(f"{gen}/hidden2", f"{theirs_gen}.l21", hidden[0], hidden[1], 1)
                b.grouped(f"{gen}/out", f"{theirs_gen}.l31", hidden[1], r * dims[name], groups)
            b.unused_generator(f"{theirs}.lora_mlp_c_proj_a", c, hidden, r * c, cfg.mlp_groups)
            b.unused_generator(f"{theirs}.lora_mlp_c_proj_b", c, hidden, r * d4, cfg.mlp_groups)
    b.unused("ln_post.weight", (c,))
    b.unused("ln_post.bias", (c,))
    b.unused("fc.weight", (1, c))
    b.unused("fc.bias", (1,))
    b.dense("head_fc1", "last_mlp.0", c, c)
    b.dense("head_fc2", "last_mlp.2", c, c)
    return b.entries


# ----------------------------------------------------------------------------- trees


def flatten_params(params: Mapping) -> dict[str, Any]:
    """Nested dict (or FrozenDict) -> {"a/b/c": leaf}."""
    flat = {}

    def walk(node, prefix):
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{prefix}/{key}" if prefix else str(key))
        else:
            flat[prefix] = node

    walk(params, "")
    return flat


def unflatten_params(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def to_numpy(value) -> np.ndarray:
    """numpy / jax array / torch tensor -> numpy array (torch bfloat16 -> float32)."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


# ----------------------------------------------------------------------------- directions


@dataclasses.dataclass
class ImportReport:
    loaded: list            # their keys copied into params
    ignored: list           # unused keys that were present (not read by the forward pass)
    absent_unused: list     # unused keys that were not in the file (fine)
    num_params: int         # number of values in the resulting params tree


def params_to_state_dict(params: Mapping, cfg) -> dict[str, np.ndarray]:
    """Our params tree -> released-layout state dict of contiguous numpy arrays.

    Leaves keep their dtype (bit-exact copies); unused keys are zeros of the params'
    dtype.
    """
    table = build_table(cfg)
    flat = {k: to_numpy(v) for k, v in flatten_params(params).items()}
    expected = {e.ours: e for e in table if e.used}
    missing = [p for p in expected if p not in flat]
    extra = [p for p in flat if p not in expected]
    mismatched = [(p, flat[p].shape, expected[p].our_shape) for p in expected
                  if p in flat and tuple(flat[p].shape) != expected[p].our_shape]
    if missing or extra or mismatched:
        raise ConversionError(
            "params do not match the model config "
            f"(width={cfg.width}, depth={cfg.depth}, use_compa={cfg.use_compa}, "
            f"use_codebook={cfg.use_codebook}, use_slice_adapter={cfg.use_slice_adapter})",
            missing, extra, mismatched)
    dtype = next(iter(flat.values())).dtype if flat else np.float32
    out = {}
    for e in table:
        if e.used:
            # An owned, writable, C-contiguous copy (torch.from_numpy and safetensors
            # need contiguity; jax-backed arrays are read-only views).
            out[e.theirs] = np.array(e.transform.fwd(flat[e.ours]), order="C", copy=True)
        else:
            out[e.theirs] = np.zeros(e.their_shape, dtype)
    return out


def state_dict_to_params(state_dict: Mapping, cfg, *, dtype=np.float32,
                         source: str = "state dict") -> tuple[dict, ImportReport]:
    """Released-layout state dict (no prefix) -> (our params tree, report).

    Values are cast to ``dtype`` (float32: fp16 CLIP weights are widened; float32
    values are copied bit-exactly). ``source`` names the file in error messages. Used
    values holding NaN or inf (also after the cast: a float64 beyond float32's range)
    raise ``NonFiniteWeightsError``; unused keys are not read, so not checked. A value of
    the table that is no tensor of real numbers is a ``ConversionError`` (``check_real``).
    """
    table = build_table(cfg)
    by_key = {e.theirs: e for e in table}
    check_real({k: v for k, v in state_dict.items() if k in by_key}, source)
    missing = [e.theirs for e in table if e.used and e.theirs not in state_dict]
    extra = [k for k in state_dict if k not in by_key]
    mismatched = []
    for key, value in state_dict.items():
        e = by_key.get(key)
        if e is not None and tuple(value.shape) != e.their_shape:
            mismatched.append((key, tuple(value.shape), e.their_shape))
    if missing or extra or mismatched:
        raise ConversionError(
            f"{source} does not match the released MaMI layout for the model config "
            f"(width={cfg.width}, depth={cfg.depth}, use_compa={cfg.use_compa}, "
            f"use_codebook={cfg.use_codebook}, use_slice_adapter={cfg.use_slice_adapter})",
            missing, extra, mismatched)
    flat, loaded, ignored, absent = {}, [], [], []
    for e in table:
        if not e.used:
            (ignored if e.theirs in state_dict else absent).append(e.theirs)
            continue
        with np.errstate(over="ignore"):  # values beyond dtype's range: check_finite below
            value = to_numpy(state_dict[e.theirs]).astype(dtype, copy=False)
        # An owned copy: never alias the caller's (e.g. torch) buffers.
        flat[e.ours] = np.array(e.transform.inv(value), order="C", copy=True)
        loaded.append(e.theirs)
    check_finite({e.theirs: flat[e.ours] for e in table if e.used}, source)
    num = int(sum(v.size for v in flat.values()))
    return unflatten_params(flat), ImportReport(loaded, ignored, absent, num)


def backbone_entries(cfg) -> list[Entry]:
    """Rows of the plain CLIP ViT (their keys are OpenAI CLIP's ``visual.`` keys)."""
    def is_backbone(path):
        top = path.split("/")[0]
        if top in ("patch_embed", "class_embedding", "pos_embedding", "ln_pre"):
            return True
        return top.startswith("block_") and path.split("/")[1] in ("attn", "mlp", "ln_1", "ln_2")

    return [e for e in build_table(cfg) if e.used and is_backbone(e.ours)]
