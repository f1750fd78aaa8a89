"""mami_jax.inference.Embedder: one way to embed with a trained model, equal to the model's
own forward pass, the evaluator's batching and an exported file's function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mami_jax.convert.official import export_official
from mami_jax.data.config import default_data_config, update_modalities
from mami_jax.data.manifest import read_manifest
from mami_jax.data.example_reader import read_example
from mami_jax.inference import Embedder
from mami_jax.models import MaMI, default_config
from mami_jax.phantoms import generate

TINY = dict(width=32, depth=2, num_heads=4, patch_size=8, image_size=32, rank=4, num_codes=4,
            generator_hidden=(24, 16), qkv_groups=4, mlp_groups=8, adapter_width=8)


@pytest.fixture(scope="module")
def model():
    cfg = default_config()
    with cfg.unlocked():
        cfg.update(TINY)
    params = MaMI(cfg).init(jax.random.key(0), jnp.zeros((1, 1, 32, 32, 3)))["params"]
    # Make every path (deltas, shift) active so a wrong restore or shift would show.
    params = jax.tree_util.tree_map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), params)
    data_cfg = default_data_config()
    update_modalities(data_cfg, image_size=32, resize_size=36)
    update_modalities(data_cfg, ("ct", "mri"), slices=2)
    return Embedder(cfg, params, data_cfg, batch_size=8)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    manifest = generate(str(tmp_path_factory.mktemp("ph") / "p"), patients=6, visits=2, seed=1,
                        image_size=32, slices=2, workers=1)
    return read_manifest(manifest)


def test_embed_is_the_models_forward_pass_on_the_evaluation_view(model, rows):
    row = next(r for r in rows if r.modality == "mri")
    x = model.preprocess(row)
    np.testing.assert_array_equal(x, read_example(row, model.data_cfg))
    assert x.shape == (2, 32, 32, 3)
    expected = MaMI(model.model_cfg).apply({"params": model.params}, x[None]).embedding
    np.testing.assert_allclose(model.embed(x[None]), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"expects images of shape \(B, T, H, W, 3\) with H and W multiples of patch_size=8; got shape"):
        model.embed(x)


def test_embed_rows_batches_like_single_images(model, rows):
    xray = [i for i, r in enumerate(rows) if r.modality == "xray"]
    batched = model.embed_rows(rows, xray)
    single = np.concatenate([model.embed(model.preprocess(rows[i])[None]) for i in xray])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


def test_embed_files_embeds_paths_as_their_manifest_rows(model, rows, tmp_path):
    """A notebook's own files, no manifest: a CT volume and an X-ray PNG, each embedded
    as the model embeds its manifest row on its own."""
    for modality in ("ct", "xray"):
        picked = [r for r in rows if r.modality == modality][:3]
        got = model.embed_files([r.path for r in picked], modality=modality)
        single = np.concatenate([model.embed(model.preprocess(r)[None]) for r in picked])
        assert got.shape == (3, 32)
        np.testing.assert_allclose(got, single, rtol=1e-5, atol=1e-5)
    path = rows[0].path
    with pytest.raises(ValueError, match=r"^modality 'x-ray': expected one of xray, ct, mri, "):
        model.embed_files([path], modality="x-ray")
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path}/gone.png: no such file or folder$"):
        model.embed_files([path, str(tmp_path / "gone.png")], modality="xray")
    with pytest.raises(TypeError, match=r"a list of paths, not one path"):
        model.embed_files(path, modality="xray")


def test_from_export_computes_the_same_function(model, rows, tmp_path, monkeypatch):
    path = str(tmp_path / "mami.safetensors")
    export_official(path, model.params, model.model_cfg)
    monkeypatch.setenv("HOME", str(tmp_path))        # "~/..." as a notebook writes it
    loaded = Embedder.from_export("~/mami.safetensors", data_cfg=model.data_cfg)
    assert loaded.model_cfg.shift_input == "router"
    x = model.preprocess(rows[0])[None]
    np.testing.assert_allclose(loaded.embed(x), model.embed(x), rtol=1e-5, atol=1e-6)
    other = default_config()
    with other.unlocked():
        other.update(dict(TINY, rank=2))
    with pytest.raises(ValueError, match="rank: saved 4, given 2"):
        Embedder.from_export(path, model_cfg=other)


def test_a_notebooks_slips_are_named_before_the_model_sees_them(model, rows, tmp_path):
    """Raw 0-255 pixels ran through (a wrong embedding), a NaN gave a NaN embedding, a
    folder of X-rays was one embedding of its middle image, paths given as rows failed
    eight frames deep; each is now an error naming the argument."""
    import os
    import shutil
    x = model.preprocess(next(r for r in rows if r.modality == "xray"))[None]
    with pytest.raises(ValueError, match=r"^images: uint8 values, as raw pixels are; "):
        model.embed((x * 255).astype(np.uint8))
    bad = np.repeat(x, 3, axis=0)
    bad[1, 0, 3, 4, 0], bad[2, 0, 0, 0, 1] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"^images: 2 values are NaN or infinite \(in image\(s\) "
                                         r"\[1, 2\] of the batch\)$"):
        model.embed(bad)
    with pytest.raises(ValueError, match=r"got empty shape \(0, 1, 32, 32, 3\)"):
        model.embed(x[:0])
    folder = tmp_path / "xrays"
    folder.mkdir()
    xrays = [r.path for r in rows if r.modality == "xray"][:3]
    for i, p in enumerate(xrays):
        shutil.copy(p, folder / f"patient{i}{os.path.splitext(p)[1]}")
    with pytest.raises(ValueError, match=rf"^{folder}: a folder of 3 images, given as one xray "
                                         r"image \(a folder is read as one series\); give the "
                                         r"image files themselves$"):
        model.embed_files([str(folder)], "xray")
    ct = next(r for r in rows if r.modality == "ct")       # a series may be a folder
    assert model.embed_files([ct.path], "ct").shape == (1, 32)
    with pytest.raises(TypeError, match=r"^rows\[0\]: a str, not a ManifestRow .*embed_files"):
        model.embed_rows([xrays[0]])
    with pytest.raises(ValueError, match=r"^rows: empty; nothing to embed$"):
        model.embed_rows([])
    with pytest.raises(ValueError, match=r"^paths: empty; nothing to embed$"):
        model.embed_files([], "xray")
    with pytest.raises(TypeError, match=r"^paths: a list of paths, got NoneType$"):
        model.embed_files(None, "xray")


def test_a_config_or_model_path_of_the_wrong_kind_is_named(model, tmp_path):
    """``Embedder.load(run, None)`` failed as ``'NoneType' object has no attribute 'mesh'``
    (None now is the model's own config: a folder that is no run says so), the history
    app's config as ``AttributeError: 'mesh'``, a folder given as a model file as
    'checkpoint file not found' though it is there."""
    import pathlib

    from mami_jax.config_files import load_config
    from mami_jax.convert.official import load_official
    with pytest.raises(ValueError, match=rf"^{tmp_path}: not a trained run \(no checkpoints/ "
                                         r"and no config.json\), nor a converter folder"):
        Embedder.load(pathlib.Path(tmp_path), None)
    with pytest.raises(TypeError, match=r"^config: an experiment config .*got str$"):
        Embedder.load(pathlib.Path(tmp_path), "configs/all.py")
    with pytest.raises(ValueError, match=r"^config: not an experiment config \(it has no model, "
                                         r"data, train, eval\); it is a history app config"):
        Embedder.load(str(tmp_path), load_config("configs/history.py"))
    with pytest.raises(IsADirectoryError, match=rf"^{tmp_path}: a folder, not a checkpoint file"):
        load_official(str(tmp_path))


def test_the_kept_chunks_follow_what_makes_an_embedding(model, rows, tmp_path):
    """A stopped pass goes on from chunks kept under a key: resumed in bfloat16 it read the
    float32 chunks back, and after a manifest's mislabelled modality was corrected it read
    the chunks made the other modality's way; more input workers or a bigger decode cache
    threw the chunks away."""
    import copy
    from mami_jax.data.image_signature import rows_signature

    def key(embedder, images=rows):
        return embedder.chunk_store(str(tmp_path / "o.npz"), rows_signature(images),
                                    "embeddings").key

    def changed(model_cfg=None, data_cfg=None):
        other = copy.copy(model)
        other.model_cfg, other.data_cfg = model_cfg or model.model_cfg, data_cfg or model.data_cfg
        return other
    base = key(model)
    faster = copy.deepcopy(model.data_cfg)
    faster.num_workers, faster.decode_cache_mb = 4, 512
    assert key(changed(data_cfg=faster)) == base
    half = copy.deepcopy(model.model_cfg)
    with half.unlocked():
        half.dtype = "bfloat16"
    assert key(changed(model_cfg=half)) != base
    windowed = copy.deepcopy(model.data_cfg)
    windowed.modalities.ct.value_window = (-1000.0, 1000.0)
    assert key(changed(data_cfg=windowed)) != base
    relabelled = [r.replace(modality="fundus") if i == 0 else r for i, r in enumerate(rows)]
    assert key(model, relabelled) != base


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run (one checkpoint, its config.json as training stores it) and that
    config, read back from the run."""
    from mami_jax.config_files import load_config
    from tests.history_workdir import make_workdir, write_config
    root = tmp_path_factory.mktemp("own_config")
    workdir = make_workdir(str(root / "run"), load_config(write_config(str(root))))
    return workdir, load_config(f"{workdir}/config.json")


def _warnings(caplog) -> list[str]:
    """The warnings mami_jax logged (orbax's own, through absl, left out)."""
    return [r.getMessage() for r in caplog.records
            if r.levelname == "WARNING" and r.name == "root"]


def test_a_config_that_reads_images_otherwise_than_the_runs_is_warned_about(run, rows, caplog):
    """A config whose data block differed from the run's (another normalisation, another
    size) was taken without a word, and the model embedded otherwise than in the run's own
    evaluation (cosine to the right embedding down to -0.03). Now each differing reading
    setting is named with both values; the run's own config, or none, reads as the run."""
    import copy
    workdir, stored = run
    xray = [r for r in rows if r.modality == "xray"][:2]
    with caplog.at_level("WARNING"):
        own = Embedder.from_workdir(workdir, stored)
        same = Embedder.load(workdir, stored)
    assert _warnings(caplog) == []
    assert own.data_cfg.normalization == "per_image"
    other = copy.deepcopy(stored)
    other.data.normalization = "imagenet"
    other.data.modalities.xray.image_size = 64
    other.data.num_workers = 3                      # how fast, not how: not named
    for load in (Embedder.from_workdir, Embedder.load):
        caplog.clear()
        with caplog.at_level("WARNING"):
            load(workdir, other)
        (message,) = _warnings(caplog)
        assert message == (
            f"{workdir} (step 1): the images will be read otherwise than with the config the "
            f"model carries ({workdir}/config.json), so its embeddings differ from those of "
            "the model's own evaluation: data.modalities.xray.image_size: 32 in the model's "
            "config, 64 given; data.normalization: 'per_image' in the model's config, "
            "'imagenet' given. Leave the config out to read them with the model's own")
    # Without a config: the run's own, as the commands' --config defaults to it.
    caplog.clear()
    with caplog.at_level("WARNING"):
        default = Embedder.from_workdir(workdir)
        loaded = Embedder.load(workdir)
        stepped = Embedder.load(f"{workdir}@1")
    assert _warnings(caplog) == []
    want = own.embed_rows(xray, progress=None)
    np.testing.assert_array_equal(same.embed_rows(xray, progress=None), want)
    for model_ in (default, loaded, stepped):
        assert model_.data_cfg.to_json() == stored.data.to_json() and model_.step == 1
        np.testing.assert_array_equal(model_.embed_rows(xray, progress=None), want)


def test_an_exported_file_read_with_another_data_config_is_warned_about(run, rows, tmp_path,
                                                                        caplog):
    """The same for a file exported from a run, which carries the run's config: given
    another data config it is warned about; given its own, or none, it is not."""
    import copy
    import shutil
    from mami_jax.convert.checkpoint_dir import load_params
    workdir, stored = run
    params, cfg = load_params(workdir)
    path = str(tmp_path / "mami.safetensors")
    export_official(path, params, cfg, experiment=stored.to_json())
    other = copy.deepcopy(stored)
    other.data.modalities.ct.slices = 3
    with caplog.at_level("WARNING"):
        Embedder.from_export(path)
        Embedder.from_export(path, data_cfg=stored.data)
        Embedder.load(path, stored)
    assert _warnings(caplog) == []
    for load in (lambda: Embedder.from_export(path, data_cfg=other.data),
                 lambda: Embedder.load(path, other)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            load()
        (message,) = _warnings(caplog)
        assert message.startswith(f"{path}: the images will be read otherwise than with the "
                                  f"config the model carries ({path}), ")
        assert message.endswith(": data.modalities.ct.slices: 2 in the model's config, 3 given. "
                                "Leave the config out to read them with the model's own")
    # A safetensors file renamed without its extension is still one, config and all: it
    # went to torch.load, which called it 'not a weights-only checkpoint'.
    renamed = str(tmp_path / "model_v2")
    shutil.copy(path, renamed)
    again = Embedder.from_export(renamed)
    assert again.data_cfg.to_json() == stored.data.to_json()
    x = again.preprocess(rows[0])[None]
    np.testing.assert_array_equal(again.embed(x), Embedder.from_export(path).embed(x))


def _read_error(row) -> str:
    """What the reader says of ``row``'s unreadable image (it names the file)."""
    from mami_jax.data.decode_errors import DecodeError
    with pytest.raises(DecodeError) as e:
        read_example(row, default_data_config())
    assert row.path in str(e.value)
    return str(e.value).splitlines()[0]


def test_skipped_images_are_counted_and_named_with_why(model, rows, tmp_path, caplog):
    """With data.skip_bad_images, embed_rows and embed_files gave NaN rows for a missing or
    unreadable file without a word; now a warning counts them and names each, and another
    says what was wrong with them."""
    import copy
    import dataclasses
    skipping = copy.deepcopy(model.data_cfg)
    skipping.skip_bad_images = True
    lenient = dataclasses.replace(model, data_cfg=skipping)
    text = tmp_path / "text.png"
    text.write_text("hello")
    xray = [r for r in rows if r.modality == "xray"][:3]
    picked = [xray[0], xray[1].replace(path=str(tmp_path / "gone.png")),
              xray[2].replace(path=str(text))]
    with caplog.at_level("WARNING"):
        out = lenient.embed_rows(picked, progress=None)
    assert np.isnan(out).any(axis=1).tolist() == [False, True, True]
    counted, why = _warnings(caplog)
    assert counted.startswith("2 of the 3 images were skipped as unreadable or missing "
                              "(data.skip_bad_images) and are left out of the embeddings "
                              "(their rows are NaN): ")
    assert f"(image_id={xray[1].image_id!r})" in counted
    assert f"(image_id={xray[2].image_id!r})" in counted
    assert why == "why they were skipped: " + "; ".join(map(_read_error, picked[1:]))
    assert why.startswith(f"why they were skipped: {tmp_path / 'gone.png'}: ")
    caplog.clear()
    with caplog.at_level("WARNING"):
        files = lenient.embed_files([xray[0].path, str(text)], "xray")
    assert np.isnan(files).any(axis=1).tolist() == [False, True]
    counted, why = _warnings(caplog)
    assert counted.startswith("1 of the 2 images were skipped") and str(text) in counted
    assert why == f"why they were skipped: {_read_error(picked[2])}"
    caplog.clear()
    with caplog.at_level("WARNING"):
        lenient.embed_rows(xray[:1], progress=None)
    assert _warnings(caplog) == []


def test_a_path_given_as_a_row_is_named(model, rows):
    """``preprocess("x.png")`` failed as an AttributeError inside the reader."""
    with pytest.raises(TypeError, match=r"^row: a str, not a ManifestRow \(read_manifest gives "
                                        r"them\); for image files, embed_files\(paths, "
                                        r"modality\)$"):
        model.preprocess(rows[0].path)


def test_a_batch_size_below_1_is_named(model, rows):
    """``embed_rows(rows, batch_size=0)`` took the default batch size without a word
    (TorchEmbedder refuses 0)."""
    for size in (0, -8):
        with pytest.raises(ValueError, match=rf"^batch_size must be >= 1, got {size}$"):
            model.embed_rows(rows[:2], batch_size=size, progress=None)
    np.testing.assert_allclose(model.embed_rows(rows[:3], batch_size=16, progress=None),
                               model.embed_rows(rows[:3], progress=None), rtol=1e-5, atol=1e-5)
