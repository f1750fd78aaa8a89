"""MaMI in PyTorch: the same function as ``mami_jax.models.MaMI``, in the released layout.

``MaMITorch(cfg)`` has exactly the released model's state-dict keys and shapes
(for the default config, the 1082 keys listed in ``tests/official_state_dict.tsv``),
including the parameters the forward pass never reads (``lora_mlp_c_proj_*``,
``linear_*_c_proj_static``, ``ln_post``, ``fc``), so a state dict written by
``mami_jax.convert.to_torch_state_dict`` loads with ``strict=True``.

Its ``forward`` computes what docs/design.md#model and the Flax model compute, the
feature-shift input following ``cfg.shift_input`` ("router", the default, is the
released model's function): input ``(B, T, H, W, 3)`` float images, of any floating
dtype (cast to the weights'), channels last like the Flax model; output a dict with
``embedding`` (B, C), ``local_map`` (B, h, w, C), ``modality`` (B, C) and
``code_weights`` (B, K).
Low-rank deltas are applied per example in factored form with ``torch.einsum``.
Position embeddings for other grids are resized with antialiased bicubic
interpolation, which matches ``jax.image.resize(..., "bicubic")`` (Keys a=-0.5).
Computation is float32.

torch is imported when this module is imported; ``mami_jax.convert`` itself
imports it lazily.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mami_jax.image_batch import shape_problem
from mami_jax.models.config import validate_config


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class GroupedLinear(nn.Module):
    """weight (G, in/G, out/G), bias (G, out/G); group g maps input slice g by x @ W[g]."""

    def __init__(self, n_in: int, n_out: int, groups: int):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.zeros(groups, n_in // groups, n_out // groups))
        self.bias = nn.Parameter(torch.zeros(groups, n_out // groups))

    def forward(self, x):
        g = self.groups
        xg = x.reshape(x.shape[:-1] + (g, x.shape[-1] // g))
        y = torch.einsum("...gi,gio->...go", xg, self.weight) + self.bias
        return y.reshape(x.shape[:-1] + (-1,))


class FactorGenerator(nn.Module):
    """l11 -> LeakyReLU -> l21 -> LeakyReLU -> l31, reshaped row-major to (N, r, d)."""

    def __init__(self, c, hidden, out, groups, slope):
        super().__init__()
        self.slope = slope
        self.l11 = GroupedLinear(c, hidden[0], 1)
        self.l21 = GroupedLinear(hidden[0], hidden[1], 1)
        self.l31 = GroupedLinear(hidden[1], out, groups)

    def forward(self, m):
        h = F.leaky_relu(self.l11(m), self.slope)
        h = F.leaky_relu(self.l21(h), self.slope)
        return self.l31(h)


class SliceAdapter(nn.Module):
    """tokens[:, 1:] += fc2(depthwise Conv3d over T (kernel k, zero padding)(fc1(tokens)))."""

    def __init__(self, c, width, kernel):
        super().__init__()
        self.fc1 = nn.Linear(c, width)
        self.conv = nn.Conv3d(width, width, (kernel, 1, 1), padding=(kernel // 2, 0, 0),
                              groups=width)
        self.fc2 = nn.Linear(width, c)

    def forward(self, tokens, num_slices):
        n, length, _ = tokens.shape
        b = n // num_slices
        h = self.fc1(tokens[:, 1:])                                     # (N, L-1, A)
        h = h.reshape(b, num_slices, length - 1, -1).permute(0, 3, 1, 2)  # (B, A, T, L-1)
        h = self.conv(h[..., None])[..., 0]                             # (B, A, T, L-1)
        h = h.permute(0, 2, 3, 1).reshape(n, length - 1, -1)
        return torch.cat([tokens[:, :1], tokens[:, 1:] + self.fc2(h)], dim=1)


class Attention(nn.Module):
    """Fused qkv projection named like nn.MultiheadAttention (in_proj_*, out_proj)."""

    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * c, c))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * c))
        self.out_proj = nn.Linear(c, c)

    def forward(self, x, qkv_delta=None):
        n, length, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        if qkv_delta is not None:
            qkv = qkv + qkv_delta
        q, k, v = qkv.reshape(n, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) * (c // self.heads) ** -0.5, dim=-1)
        out = (att @ v).transpose(1, 2).reshape(n, length, c)
        return self.out_proj(out)


class Mlp(nn.Module):
    def __init__(self, c, hidden):
        super().__init__()
        self.c_fc = nn.Linear(c, hidden)
        self.c_proj = nn.Linear(hidden, c)


def factored_delta(x, down, up):
    """x (N, L, C), down (N, r, C), up (N, r, D) -> (x down^T) up, per example (N, L, D)."""
    return torch.einsum("nlr,nrd->nld", torch.einsum("nlc,nrc->nlr", x, down), up)


class ResidualBlock(nn.Module):
    """Registration order follows the released state dict (statics first)."""

    def __init__(self, cfg):
        super().__init__()
        c, r, d4 = cfg.width, cfg.rank, cfg.width * cfg.mlp_ratio
        self.cfg = cfg
        if cfg.use_compa:
            for name, d in (("linear_a_q_static", c), ("linear_b_q_static", c),
                            ("linear_a_k_static", c), ("linear_b_k_static", c),
                            ("linear_a_v_static", c), ("linear_b_v_static", c),
                            ("linear_a_c_fc_static", d4), ("linear_b_c_fc_static", c),
                            ("linear_a_c_proj_static", c), ("linear_b_c_proj_static", d4)):
                self.register_parameter(name, nn.Parameter(torch.zeros(1, r, d)))
        self.attn = Attention(c, cfg.num_heads)
        self.ln_1 = nn.LayerNorm(c, eps=cfg.layernorm_eps)
        self.mlp = Mlp(c, d4)
        self.ln_2 = nn.LayerNorm(c, eps=cfg.layernorm_eps)
        if cfg.use_slice_adapter:
            self.adapter_pre_attn = SliceAdapter(c, cfg.adapter_width, cfg.adapter_kernel)
        if cfg.use_compa:
            hidden, slope = tuple(cfg.generator_hidden), cfg.leaky_slope
            gq, gm = cfg.qkv_groups, cfg.mlp_groups
            for name, out, groups in (("lora_mlp_q_a", r * c, gq), ("lora_mlp_q_b", r * c, gq),
                                      ("lora_mlp_k_a", r * c, gq), ("lora_mlp_k_b", r * c, gq),
                                      ("lora_mlp_v_a", r * c, gq), ("lora_mlp_v_b", r * c, gq),
                                      ("lora_mlp_c_fc_a", r * d4, gm),
                                      ("lora_mlp_c_fc_b", r * c, gm),
                                      ("lora_mlp_c_proj_a", r * c, gm),
                                      ("lora_mlp_c_proj_b", r * d4, gm)):
                self.add_module(name, FactorGenerator(c, hidden, out, groups, slope))

    def _factor(self, m, generator, static):
        gen = getattr(self, generator)(m)
        s = getattr(self, static)
        return gen.reshape(m.shape[0], s.shape[1], s.shape[2]) + s

    def forward(self, x, m, num_slices):
        if self.cfg.use_slice_adapter:
            x = self.adapter_pre_attn(x, num_slices)
        y = self.ln_1(x)
        delta = None
        if m is not None:
            # down factor: lora_mlp_*_a + linear_a_*_static, up: *_b (q, k, v).
            delta = torch.cat([
                factored_delta(y, self._factor(m, f"lora_mlp_{p}_a", f"linear_a_{p}_static"),
                               self._factor(m, f"lora_mlp_{p}_b", f"linear_b_{p}_static"))
                for p in "qkv"], dim=-1)
        x = x + self.attn(y, delta)
        y = self.ln_2(x)
        h = self.mlp.c_fc(y)
        if m is not None:
            # The MLP's names are swapped: c_fc_b is the down factor (r, C).
            h = h + factored_delta(y, self._factor(m, "lora_mlp_c_fc_b", "linear_b_c_fc_static"),
                                   self._factor(m, "lora_mlp_c_fc_a", "linear_a_c_fc_static"))
        return x + self.mlp.c_proj(quick_gelu(h))


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualBlock(cfg) for _ in range(cfg.depth)])


def resize_position_embedding(pos: torch.Tensor, grid) -> torch.Tensor:
    """(1 + g*g, C) -> (1 + h*w, C), class entry kept; matches jax.image.resize bicubic."""
    stored = int(round((pos.shape[0] - 1) ** 0.5))
    if (stored, stored) == tuple(grid):
        return pos
    patch = pos[1:].reshape(stored, stored, -1).permute(2, 0, 1)[None]
    resized = F.interpolate(patch, size=tuple(grid), mode="bicubic", align_corners=False,
                            antialias=True)[0].permute(1, 2, 0).reshape(grid[0] * grid[1], -1)
    return torch.cat([pos[:1], resized], dim=0)


class MaMITorch(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        c, k, slope = cfg.width, cfg.num_codes, cfg.leaky_slope
        grid = cfg.image_size // cfg.patch_size
        if cfg.use_compa and cfg.use_codebook:
            self.knowledge_pool = nn.Parameter(torch.zeros(1, k, c // k))
        self.class_embedding = nn.Parameter(torch.zeros(c))
        self.positional_embedding = nn.Parameter(torch.zeros(1 + grid * grid, c))
        self.conv1 = nn.Conv2d(3, c, cfg.patch_size, stride=cfg.patch_size, bias=False)
        if cfg.use_compa:
            self.router_spatial_transform = nn.Sequential(
                nn.Conv2d(c, c, 1), nn.LeakyReLU(slope), nn.Conv2d(c, c, 1))
            if cfg.use_codebook:
                self.router_MLP = nn.Sequential(nn.Linear(c, c), nn.LeakyReLU(slope),
                                                nn.Linear(c, k))
            self.ft_comp_MLP = nn.Sequential(nn.LeakyReLU(slope), nn.Linear(c, c),
                                             nn.LeakyReLU(slope), nn.Linear(c, c))
        self.ln_pre = nn.LayerNorm(c, eps=cfg.layernorm_eps)
        self.transformer = Transformer(cfg)
        self.ln_post = nn.LayerNorm(c, eps=cfg.layernorm_eps)  # unused by forward
        self.fc = nn.Linear(c, 1)                               # unused by forward
        self.last_mlp = nn.Sequential(nn.Linear(c, c), nn.LeakyReLU(slope), nn.Linear(c, c))

    def forward(self, images: torch.Tensor) -> dict:
        """``images`` (B, T, H, W, 3) of any floating dtype, cast to the weights' (numpy's
        default float64 met the float32 convolution with a bare dtype error); the outputs
        of the module docstring. Anything but a tensor (a NumPy array failed as an
        AttributeError) and integer or bool values (raw pixels: a bare dtype error of the
        convolution) are a TypeError naming ``images``, as the JAX side refuses raw
        pixels (``image_batch.checked_batch``)."""
        cfg = self.cfg
        if not isinstance(images, torch.Tensor):
            kind = type(images)
            named = (kind.__name__ if kind.__module__ == "builtins"
                     else f"{kind.__module__}.{kind.__qualname__}")
            raise TypeError(f"images: a {named}, not a torch.Tensor; MaMITorch "
                            "takes preprocessed float images as a tensor (torch.from_numpy), "
                            "TorchEmbedder.embed NumPy arrays")
        problem = shape_problem(tuple(images.shape), cfg.patch_size)
        if problem:      # the convolution would drop the pixels beyond the last whole patch
            raise ValueError(problem.replace("MaMI expects", "MaMITorch expects"))
        if not images.is_floating_point():
            raise TypeError(f"images: {images.dtype} values, as raw pixels are; MaMITorch takes "
                            "preprocessed float images (TorchEmbedder.preprocess(row)), or use "
                            "TorchEmbedder.embed_files / embed_rows, which read image files as "
                            "evaluation does")
        images = images.to(self.conv1.weight.dtype)
        b, t, height, width, _ = images.shape
        n, c = b * t, cfg.width
        grid = (height // cfg.patch_size, width // cfg.patch_size)
        x = images.reshape(n, height, width, 3).permute(0, 3, 1, 2)
        patches = self.conv1(x)                                   # (N, C, h, w)

        m = None
        if cfg.use_compa:
            g = self.router_spatial_transform(patches).mean(dim=(2, 3))
            if cfg.use_codebook:
                code_weights = torch.softmax(self.router_MLP(g), dim=-1)
                m = (code_weights[:, :, None] * self.knowledge_pool).reshape(n, c)
            else:
                code_weights = g.new_zeros(n, cfg.num_codes)
                m = g
            shift_in = g if cfg.shift_input == "router" else patches.mean(dim=(2, 3))
            patches = patches + self.ft_comp_MLP(shift_in)[:, :, None, None]

        tokens = torch.cat([self.class_embedding.expand(n, 1, c),
                            patches.flatten(2).transpose(1, 2)], dim=1)
        tokens = tokens + resize_position_embedding(self.positional_embedding, grid)
        tokens = self.ln_pre(tokens)
        for block in self.transformer.resblocks:
            tokens = block(tokens, m, t)

        local = tokens[:, 1:].reshape(b, t, grid[0], grid[1], c).mean(1)
        embedding = self.last_mlp(local.mean(dim=(1, 2)))
        if m is not None:
            modality = m.reshape(b, t, c).mean(1)
            code_weights = code_weights.reshape(b, t, -1).mean(1)
        else:
            modality = patches.mean(dim=(2, 3)).reshape(b, t, c).mean(1)
            code_weights = patches.new_zeros(b, cfg.num_codes)
        return {"embedding": embedding, "local_map": local, "modality": modality,
                "code_weights": code_weights}
