"""Symmetry-averaged evaluation embeddings for tiles with no orientation."""

import jax
import numpy as np
from PIL import Image

from mami_jax.runtime import sharding
from mami_jax.data.config import default_data_config, update_modalities
from mami_jax.data.manifest import ManifestRow
from mami_jax.data.transforms import symmetry_views
from mami_jax.evaluate.evaluator import embed_rows


def test_views_are_the_eight_symmetries_of_the_square():
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3, 1)
    views = symmetry_views(x)
    flat = {tuple(v.ravel()) for v in views}
    assert len(views) == 8 and len(flat) == 8
    assert tuple(x.ravel()) in flat                                   # identity
    assert tuple(x[:, :, :, ::-1].ravel()) in flat                    # mirror
    assert tuple(np.transpose(x, (0, 1, 3, 2, 4)).ravel()) in flat    # transpose


def test_embedding_is_the_mean_over_symmetries_only_for_listed_modalities(tmp_path):
    """A toy embedder that reads the top-left pixel: averaged over the 8 symmetries it
    returns the mean of the four corners (each corner lands top-left twice)."""
    rng = np.random.default_rng(0)
    rows = []
    for k, modality in enumerate(("pathology", "xray")):
        path = str(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        rows.append(ManifestRow(f"i{k}", f"p{k}", "s", "0", modality, "d", "", path, "test"))
    cfg = default_data_config()
    update_modalities(cfg, image_size=8, resize_size=8)
    cfg.normalization = "per_image"
    cfg.modalities.pathology.eval_symmetry = True
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])

    def top_left(batch):
        return batch["images"][:, 0, 0, 0, :]

    emb = embed_rows(top_left, rows, [0, 1], cfg, mesh, 2)
    cfg.modalities.pathology.eval_symmetry = False
    plain = embed_rows(top_left, rows, [0, 1], cfg, mesh, 2)
    from mami_jax.data.example_reader import read_example
    path_img = read_example(rows[0], cfg)[0]
    corners = path_img[[0, 0, -1, -1], [0, -1, 0, -1]].mean(0)
    np.testing.assert_allclose(emb[0], corners, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain[0], path_img[0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb[1], plain[1])                      # x-ray: not averaged
