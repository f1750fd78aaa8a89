"""mami_jax: all-in-one medical image re-identification (MaMI) in JAX/Flax."""

__version__ = "0.1.0"
