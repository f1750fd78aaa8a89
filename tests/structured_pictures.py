"""Test pictures with structure at every scale, so that a wrong resize or crop shows."""

import numpy as np


def grey_picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (H, W): a product of sines plus noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).normal(0, 10, (height, width))
    return (127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + noise).clip(0, 255).astype(np.uint8)
