"""The slice adapter: the only place where the slices of a series see each other.

tokens += fc2(depthwise_conv_T(fc1(tokens))) on patch tokens (not the class token),
with fc1: C -> A, a depthwise convolution over the slice axis T (kernel 3, zero
padding, with bias) and fc2: A -> C; no nonlinearity (docs/design.md#slice-adapter). For a 2-D
image (T=1) only the centre tap of the kernel sees data.

fc2 starts at zero so that a pretrained backbone is unchanged at step 0.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class SliceAdapter(nn.Module):
    width: int           # adapter width A (384 in the released model)
    kernel_size: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, num_slices: int) -> jax.Array:
        """tokens: (B*T, L, C) with the class token first; returns the same shape."""
        n, length, c = tokens.shape
        b = n // num_slices
        # Every token goes through the adapter and the class token's delta is masked to
        # zero below: the same function as adapting the patch tokens alone, for 1/L more
        # adapter FLOPs, without slicing the patch tokens out (a copy of the tokens in
        # the forward pass and of their gradient in the backward pass).
        h = nn.Dense(self.width, dtype=self.dtype, name="fc1")(tokens)
        h = h.reshape(b, num_slices, length, self.width)

        kernel = self.param("conv_kernel", nn.initializers.normal(self.kernel_size ** -0.5),
                            (self.kernel_size, self.width), jnp.float32).astype(self.dtype)
        bias = self.param("conv_bias", nn.initializers.zeros, (self.width,),
                          jnp.float32).astype(self.dtype)
        pad = self.kernel_size // 2
        hp = jnp.pad(h, ((0, 0), (pad, pad), (0, 0), (0, 0)))
        # Cross-correlation as in torch: out[t] = sum_j kernel[j] * in[t + j - pad].
        conv = sum(kernel[j] * hp[:, j:j + num_slices] for j in range(self.kernel_size)) + bias

        delta = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="fc2")(
            conv.reshape(n, length, self.width))
        is_patch = (jnp.arange(length) > 0)[:, None]
        return tokens + jnp.where(is_patch, delta.astype(tokens.dtype), 0)
