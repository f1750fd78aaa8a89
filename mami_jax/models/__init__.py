"""The MaMI model: ComPA-adapted CLIP ViT for medical image re-identification.

``MaMI``, ``MaMIOutput`` and ``check_images`` (Flax) are imported on first use, so the
model config (``mami_jax.models.config``) imports without JAX: the PyTorch side
(``mami_jax.convert.torch_model``) reads it where only torch is installed.
"""

from mami_jax.models.config import default_config, validate_config

__all__ = ["MaMI", "MaMIOutput", "default_config", "validate_config", "check_images"]

_FLAX_NAMES = ("MaMI", "MaMIOutput", "check_images")


def __getattr__(name):
    if name in _FLAX_NAMES:
        from mami_jax.models import mami
        return getattr(mami, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
