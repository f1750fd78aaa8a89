"""Small building blocks shared by the backbone and ComPA.

They exist as separate definitions because each has a detail that differs from
Flax's defaults and matters for parity with the PyTorch checkpoints:
LayerNorm eps 1e-5 (not 1e-6), QuickGELU (not GELU), and the grouped dense
layout (G, in/G, out/G) applied as ``x @ W`` without a transpose. ``PatchEmbed``
keeps ``nn.Conv``'s parameter (name, shape, initialisation) but computes the
non-overlapping convolution as one matrix multiply, which XLA runs faster than its
convolution on CPU (docs/speed.md).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's activation: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def leaky_relu(x: jax.Array, slope: float) -> jax.Array:
    return jnp.where(x >= 0, x, slope * x)


def dtype_of(name: str) -> Any:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


class LayerNorm(nn.Module):
    """LayerNorm with PyTorch's eps; statistics in float32 whatever the compute dtype."""

    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(self.dtype)


def declare_grouped_dense(module: nn.Module, in_features: int, features: int, groups: int,
                          kernel_init: Initializer, bias_init: Initializer):
    """Declares a grouped dense layer's ``kernel`` (G, in/G, out/G) and ``bias`` (G, out/G)
    in ``module``'s scope (float32, kernel first) and returns them.

    Called from the compact ``__call__`` of ``GroupedDense`` and of ``GroupedDenseParams``,
    so both give the same parameter tree and the same initial values.
    """
    if in_features % groups or features % groups:
        raise ValueError(
            f"GroupedDense: in={in_features} and out={features} must be divisible "
            f"by groups={groups}")
    kernel = module.param("kernel", kernel_init,
                          (groups, in_features // groups, features // groups), jnp.float32)
    bias = module.param("bias", bias_init, (groups, features // groups), jnp.float32)
    return kernel, bias


def grouped_dense(x: jax.Array, kernel: jax.Array, bias: jax.Array, dtype: Any) -> jax.Array:
    """``x`` (..., in) through a grouped kernel (G, in/G, out/G) and bias (G, out/G):
    (..., out), every output group from its own input group."""
    g, gin, _ = kernel.shape
    xg = x.reshape(x.shape[:-1] + (g, gin)).astype(dtype)
    y = jnp.einsum("...gi,gio->...go", xg, kernel.astype(dtype)) + bias.astype(dtype)
    return y.reshape(x.shape[:-1] + (-1,))


#: Fan-in per group: the leading group axis is a batch axis of independent matrices.
GROUPED_KERNEL_INIT = nn.initializers.lecun_normal(batch_axis=(0,))


class GroupedDense(nn.Module):
    """Splits inputs and outputs into ``groups`` and applies one matrix per group.

    kernel: (G, in/G, out/G), bias: (G, out/G); output group g is
    ``x[..., g*in/G:(g+1)*in/G] @ kernel[g] + bias[g]`` and the groups are
    concatenated in order. ``groups=1`` is an ordinary dense layer stored with a
    leading axis of 1, which is how the released checkpoint stores its
    generator's first two layers.
    """

    features: int
    groups: int = 1
    kernel_init: Initializer = GROUPED_KERNEL_INIT
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel, bias = declare_grouped_dense(self, x.shape[-1], self.features, self.groups,
                                             self.kernel_init, self.bias_init)
        return grouped_dense(x, kernel, bias, self.dtype)


class GroupedDenseParams(nn.Module):
    """``GroupedDense``'s parameters (same names, shapes and initial values), returned
    instead of applied: ``(kernel, bias)`` for ``in_features`` inputs. The fused factor
    generators (``models/generators.py``) stack many of them into one batched matmul."""

    features: int
    groups: int = 1
    kernel_init: Initializer = GROUPED_KERNEL_INIT
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, in_features: int):
        return declare_grouped_dense(self, in_features, self.features, self.groups,
                                     self.kernel_init, self.bias_init)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> C features, no bias: ``nn.Conv`` with stride p.

    The kernel is stored as ``nn.Conv`` stores it, (p, p, 3, C) under ``kernel`` with
    the same initialiser, so checkpoints and the converters see no difference. It is
    applied as patches (N, h, w, p*p*3) @ kernel.reshape(p*p*3, C): the same sums as
    the convolution in another order.
    """

    features: int
    patch_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (N, H, W, Cin) with H and W multiples of the patch size -> (N, H/p, W/p, C)."""
        p = self.patch_size
        n, height, width, channels = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (p, p, channels, self.features), jnp.float32)
        patches = x.reshape(n, height // p, p, width // p, p, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(
            n, height // p, width // p, p * p * channels)
        return jnp.dot(patches.astype(self.dtype),
                       kernel.reshape(p * p * channels, self.features).astype(self.dtype))
