"""An exported model embeds in PyTorch, without JAX, what the JAX ``Embedder`` embeds.

Before: ``mami_jax.convert.torch_model`` imported flax (through ``mami_jax.models``), so
the PyTorch side needed JAX installed; and a PyTorch user had to rebuild the evaluation
preprocessing (sizes, per-image normalisation, series slices, the symmetry mean of
pathology) by hand. The parity below runs the PyTorch side in a process where importing
jax, flax, optax, orbax or grain fails.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from mami_jax.config import base_config  # noqa: E402
from mami_jax.convert.official import export_official  # noqa: E402
from mami_jax.data.config import update_modalities  # noqa: E402
from mami_jax.data.file_rows import file_rows  # noqa: E402
from mami_jax.inference import Embedder  # noqa: E402
from mami_jax.phantoms import generator  # noqa: E402
from tests.history_workdir import TINY, random_params  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Runs in a fresh interpreter: the PyTorch side with every JAX-stack import refused.
WITHOUT_JAX = r'''
import importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in ("jax", "jaxlib", "flax", "optax", "orbax", "grain"):
            raise ImportError("refused in this test: " + name)
sys.meta_path.insert(0, Refuse())
import numpy as np
from mami_jax.convert.torch_embedder import TorchEmbedder
model = TorchEmbedder.from_export(sys.argv[1], batch_size=2)
files = json.loads(sys.argv[2])
np.savez(sys.argv[3], **{m: model.embed_files(paths, m) for m, paths in files.items()})
'''


def experiment():
    c = base_config()
    c.model.update(TINY)
    c.model.shift_input = "patch_mean"
    update_modalities(c.data, image_size=32, resize_size=36)
    update_modalities(c.data, ("ct", "mri"), slices=2)
    c.data.modalities.pathology.update(dict(resize_size=48, eval_whole=True,
                                            eval_symmetry=True))
    c.data.normalization = "per_image"
    return c


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_embedder")
    manifest = generator.generate(str(root / "phantoms"), patients=3, visits=1, image_size=32,
                                  slices=4, workers=1)
    base = os.path.dirname(manifest)
    files = {}
    for line in open(manifest).read().splitlines()[1:]:
        fields = line.split(",")
        files.setdefault(fields[4], []).append(os.path.join(base, fields[7]))
    config = experiment()
    path = str(root / "mami.safetensors")
    export_official(path, random_params(config.model, seed=5), config.model,
                    allow_non_released_shift=True, experiment=config.to_json())
    return dict(path=path, files=files, config=config, root=root)


def test_pytorch_without_jax_embeds_every_modality_as_jax_does(setup):
    """X-ray, fundus (2-D), CT and MRI (2 of 4 slices), pathology (whole 48 px view, the
    mean over the 8 symmetries): largest difference below 1e-5 of the embeddings' scale."""
    out = setup["root"] / "torch.npz"
    proc = subprocess.run([sys.executable, "-c", WITHOUT_JAX, setup["path"],
                           json.dumps(setup["files"]), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch_side = np.load(out)
    jax_side = Embedder.from_export(setup["path"], data_cfg=setup["config"].data)
    assert sorted(torch_side.files) == ["ct", "fundus", "mri", "pathology", "xray"]
    for modality, paths in setup["files"].items():
        want = jax_side.embed_files(paths, modality)
        got = torch_side[modality]
        assert got.shape == want.shape == (len(paths), TINY["width"])
        assert np.abs(got - want).max() < 1e-5 * np.abs(want).max(), modality


def test_the_symmetry_mean_and_the_carried_preprocessing_are_what_make_it_equal(setup):
    """The same weights read with the paper's preprocessing (a file that carries no
    experiment config), or without the symmetry mean, embed differently."""
    from mami_jax.convert.torch_embedder import TorchEmbedder
    model = TorchEmbedder.from_export(setup["path"])
    assert model.data_cfg.to_json() == setup["config"].data.to_json()
    tiles = setup["files"]["pathology"]
    mean = model.embed_files(tiles, "pathology")
    model._symmetric = frozenset()
    assert np.abs(model.embed_files(tiles, "pathology") - mean).max() > 1e-3

    bare = str(setup["root"] / "bare.pth")
    export_official(bare, random_params(setup["config"].model, seed=5), setup["config"].model,
                    allow_non_released_shift=True)
    paper = TorchEmbedder.from_export(bare)
    assert paper.data_cfg.to_json() == base_config().data.to_json()
    # The JAX side reads each file with the same preprocessing (it read every file with
    # the paper's: an export embedded unlike the run it came from), a Path as a str.
    import pathlib
    for path, data in ((setup["path"], setup["config"].data), (bare, base_config().data)):
        assert Embedder.from_export(pathlib.Path(path)).data_cfg.to_json() == data.to_json()
    row = file_rows(setup["files"]["xray"][:1], "xray")[0]
    assert paper.preprocess(row).shape == (1, 224, 224, 3)       # the paper's 224 px view


def test_a_folder_or_a_missing_file_is_refused_naming_what_to_do(setup, tmp_path):
    from mami_jax.convert.torch_embedder import TorchEmbedder
    with pytest.raises(IsADirectoryError) as e:
        TorchEmbedder.from_export(str(tmp_path))
    assert str(e.value) == (f"{tmp_path}: a folder; TorchEmbedder reads one exported file: "
                            f"python -m mami_jax.convert export-torch --checkpoint {tmp_path} "
                            "--out mami.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.pth: no such file"):
        TorchEmbedder.from_export(str(tmp_path / "nope.pth"))


def test_a_batch_the_model_cannot_take_is_named_as_the_jax_side_names_it(setup):
    """A side that is no multiple of the patch was cropped without a word (JAX refuses it),
    an empty batch failed inside a reshape, a NaN gave a NaN embedding."""
    from mami_jax.convert.torch_embedder import TorchEmbedder
    model = TorchEmbedder.from_export(setup["path"])
    jax_side = Embedder.from_export(setup["path"])
    x = model.preprocess(file_rows(setup["files"]["xray"][:1], "xray")[0])[None]
    nan = x.copy()
    nan[0, 0, 1, 1, 0] = np.nan
    padded = np.pad(x, ((0, 0), (0, 0), (0, 4), (0, 4), (0, 0)))
    for images, message in ((padded, r"got H=36, W=36 in shape \(1, 1, 36, 36, 3\)"),
                            (x[:0], r"got empty shape \(0, 1, 32, 32, 3\)"),
                            (nan, r"^images: 1 values are NaN or infinite")):
        for side in (model, jax_side):
            with pytest.raises(ValueError, match=message):
                side.embed(images)
    with pytest.raises(TypeError, match=r"^rows\[0\]: a str, not a ManifestRow"):
        model.embed_rows(setup["files"]["xray"])


def test_a_path_given_as_a_row_is_named(setup):
    """``TorchEmbedder.preprocess("x.png")`` failed as an AttributeError inside the reader."""
    from mami_jax.convert.torch_embedder import TorchEmbedder
    model = TorchEmbedder.from_export(setup["path"])
    with pytest.raises(TypeError, match=r"^row: a str, not a ManifestRow \(read_manifest gives "
                                        r"them\); for image files, embed_files\(paths, "
                                        r"modality\)$"):
        model.preprocess(setup["files"]["xray"][0])


def test_raw_pixels_or_an_array_given_to_the_module_are_named(setup, tmp_path):
    """``MaMITorch`` given uint8 pixels failed as torch's 'expected scalar type Byte but
    found Float', given a NumPy array as an AttributeError; and a safetensors file renamed
    without its extension went to torch.load ('not a weights-only checkpoint')."""
    import shutil

    import torch

    from mami_jax.convert.torch_embedder import TorchEmbedder
    model = TorchEmbedder.from_export(setup["path"])
    x = model.preprocess(file_rows(setup["files"]["xray"][:1], "xray")[0])[None]
    with pytest.raises(TypeError, match=r"^images: a numpy\.ndarray, not a torch\.Tensor; "):
        model.module(x)
    for dtype in (torch.uint8, torch.int64, torch.bool):
        with pytest.raises(TypeError, match=rf"^images: {dtype} values, as raw pixels are; "
                                            r"MaMITorch takes preprocessed float images"):
            model.module(torch.zeros(x.shape, dtype=dtype))
    with torch.no_grad():
        out = model.module(torch.from_numpy(x).double())["embedding"]
    np.testing.assert_allclose(out.numpy(), model.embed(x), rtol=1e-6, atol=1e-6)
    renamed = str(tmp_path / "model_v2")
    shutil.copy(setup["path"], renamed)
    again = TorchEmbedder.from_export(renamed)
    assert again.data_cfg.to_json() == setup["config"].data.to_json()
    np.testing.assert_array_equal(again.embed(x), model.embed(x))
