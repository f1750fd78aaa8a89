"""Whole-image evaluation views for texture modalities (data.modalities.<m>.eval_whole)."""

import jax
import numpy as np
import pytest
from PIL import Image

from mami_jax.runtime import sharding
from mami_jax.data.config import default_data_config, update_modalities
from mami_jax.data.manifest import ManifestRow
from mami_jax.data.example_reader import DataError, read_example
from mami_jax.data.transforms import normalize
from mami_jax.evaluate.evaluator import embed_rows, embedded


def _rows(tmp_path, rng):
    rows, pixels = [], []
    for k, modality in enumerate(("pathology", "xray")):
        path = str(tmp_path / f"{k}.png")
        img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(img).save(path)
        rows.append(ManifestRow(f"i{k}", f"p{k}", "s", "0", modality, "d", "", path, "test"))
        pixels.append(img.astype(np.float32) / 255.0)
    return rows, pixels


def _cfg(whole):
    cfg = default_data_config()
    update_modalities(cfg, image_size=8, resize_size=16)
    update_modalities(cfg, whole, eval_whole=True)
    cfg.normalization = "per_image"
    return cfg


def test_listed_modalities_are_evaluated_whole_others_centre_cropped(tmp_path):
    rows, pixels = _rows(tmp_path, np.random.default_rng(0))
    cfg = _cfg(("pathology",))
    whole = read_example(rows[0], cfg)
    crop = read_example(rows[1], cfg)
    assert whole.shape == (1, 16, 16, 3) and crop.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(whole[0], normalize(pixels[0][None], "per_image")[0], atol=1e-5)
    np.testing.assert_allclose(crop[0], normalize(pixels[1][None, 4:12, 4:12], "per_image")[0],
                               atol=1e-5)
    # Training crops keep image_size.
    assert read_example(rows[0], cfg, np.random.default_rng(1)).shape == (1, 8, 8, 3)


def test_embeddings_see_the_whole_tile(tmp_path):
    """A toy embedder returning the bottom-right pixel: with the whole tile that is the
    image's corner, with the centre crop it is pixel (11, 11)."""
    rows, pixels = _rows(tmp_path, np.random.default_rng(1))
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])

    def bottom_right(batch):
        return batch["images"][:, 0, -1, -1, :]

    whole = embed_rows(bottom_right, rows, [0, 1], _cfg(("pathology",)), mesh, 2)
    cropped = embed_rows(bottom_right, rows, [0, 1], _cfg(()), mesh, 2)
    full = normalize(pixels[0][None], "per_image")[0]
    centre = normalize(pixels[0][None, 4:12, 4:12], "per_image")[0]
    np.testing.assert_allclose(whole[0], full[-1, -1], atol=1e-5)
    np.testing.assert_allclose(cropped[0], centre[-1, -1], atol=1e-5)
    np.testing.assert_allclose(whole[1], cropped[1])          # x-ray: cropped either way


def test_skipped_unreadable_image_has_the_evaluation_size(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    row = ManifestRow("i", "p", "s", "0", "pathology", "d", "", str(bad), "test")
    cfg = _cfg(("pathology",))
    cfg.skip_bad_images = True
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    seen = []

    def record(batch):
        seen.append(batch["images"].shape)
        return batch["images"][:, 0, 0, 0, :]

    out = embed_rows(record, [row], [0], cfg, mesh, 2)
    assert seen == [(2, 1, 16, 16, 3)]
    assert np.isnan(out).all() and not embedded(out).any()     # skipped: a NaN row
    cfg.skip_bad_images = False
    with pytest.raises(DataError, match="bad.png"):
        embed_rows(record, [row], [0], cfg, mesh, 2)


def test_eval_whole_must_be_a_flag(tmp_path):
    rows, _ = _rows(tmp_path, np.random.default_rng(2))
    cfg = _cfg(())
    cfg.modalities.pathology.eval_whole = None
    with pytest.raises(ValueError, match=r"data.modalities.pathology.eval_whole=None: expected True or False"):
        read_example(rows[0], cfg)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_a_non_finite_embedding_is_an_error_naming_the_image(tmp_path, bad_value):
    """A NaN row marks a skipped image: a model that embedded a readable image as NaN
    (half-precision overflow, a diverged checkpoint) had it counted as unreadable and left
    out of the metrics, even without data.skip_bad_images; an inf row went through to the
    scores. Now either is an error naming the image."""
    rows, _ = _rows(tmp_path, np.random.default_rng(3))
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])

    def overflow_on_xray(batch):          # the x-ray is the 8 x 8 crop, pathology whole
        e = batch["images"][:, 0, 0, 0, :]
        return e + bad_value if batch["images"].shape[2] == 8 else e

    with pytest.raises(ValueError, match=r"the model's embedding of 1 image\(s\) is not "
                                         r"finite \(NaN or inf\): manifest row 1 "
                                         r"\(image_id='i1'\); a diverged checkpoint"):
        embed_rows(overflow_on_xray, rows, [0, 1], _cfg(("pathology",)), mesh, 2)
    # the pathology batch alone embeds
    assert np.isfinite(embed_rows(overflow_on_xray, rows, [0], _cfg(("pathology",)), mesh, 2)).all()
