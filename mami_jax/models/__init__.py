"""The MaMI model: ComPA-adapted CLIP ViT for medical image re-identification."""

from mami_jax.models.config import default_config, validate_config
from mami_jax.models.mami import MaMI, MaMIOutput, check_images

__all__ = ["MaMI", "MaMIOutput", "default_config", "validate_config", "check_images"]
