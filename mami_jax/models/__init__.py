"""mami_jax."""
