"""mami_jax: all-in-one medical image re-identification in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="mami_jax",
    version="0.1.0",
    description="MaMI (CVPR 2025) medical image re-identification in JAX/Flax: "
    "training, data, evaluation, applications, PyTorch interchange.",
    packages=find_packages(include=["mami_jax", "mami_jax.*", "teachers", "teachers.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.0,<0.11",
        "flax>=0.12.0,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.12.0,<0.13",
        "grain>=0.2.12,<0.3",
        "ml_collections>=1.0,<2",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "pillow>=10.0,<14",
        "pydicom>=3.0,<4",
        "nibabel>=5.2,<6",
        "tensorboardX>=2.6,<3",
        "matplotlib>=3.8,<4",
        "tqdm>=4.66,<5",
        "safetensors>=0.4,<1",
    ],
    extras_require={
        # PyTorch side: checkpoint import/export and offline teachers. Kept out of
        # the JAX install so TPU VMs do not pull a CUDA build of torch.
        "torch": [
            "torch>=2.4,<2.14",
            "transformers>=4.45,<6",
            "safetensors>=0.4,<1",
        ],
        "test": [
            "pytest>=8,<10",
            "nbformat>=5.9,<6",
            "nbclient>=0.10,<1",
            "ipykernel>=6.29,<8",
        ],
    },
)
