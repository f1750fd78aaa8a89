"""The grain pipeline: P x K sampling, determinism, resume, process shares, eval padding, bad input.

Images are tiny (about 20 px, crops of 8 px) so every test decodes real files quickly.
"""

import json
import re

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mami_jax.data import example_reader, pipeline, sampler
from mami_jax.data.config import default_data_config, default_modality_config, update_modalities
from mami_jax.data.manifest import MODALITIES, ManifestError, ManifestRow
from mami_jax.data.decode import open_volume
from mami_jax.data.transforms import eval_transform

# Training patients of the X-ray source: number of images each.
XRAY_TRAIN = {"a": 5, "b": 2, "c": 3, "d": 1}  # d has one image: never sampled
CT_TRAIN = {"e": 2, "f": 3}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    rng = np.random.default_rng(0)
    out = []

    def add(dataset, modality, patient, k, split, path):
        out.append(ManifestRow(f"{dataset}:{patient}{k}", patient, f"s{k}", str(k), modality, dataset,
                               "", path, split))

    for patient, n in list(XRAY_TRAIN.items()) + [("t", 3)]:
        for k in range(n):
            p = str(root / f"x_{patient}{k}.png")
            Image.fromarray((rng.random((18, 22)) * 65535).astype(np.uint16)).save(p)
            add("dx", "xray", patient, k, "test" if patient == "t" else "train", p)
    for patient, n in list(CT_TRAIN.items()) + [("u", 2)]:
        for k in range(n):
            p = str(root / f"v_{patient}{k}.nii.gz")
            nib.save(nib.Nifti1Image(rng.random((16, 14, 7)).astype(np.float32), np.eye(4)), p)
            add("dc", "ct", patient, k, "test" if patient == "u" else "train", p)
    return out


def small_cfg(modalities=None, **kw):
    """8 px crops of 10 px views, T=3 series; ``modalities`` = {modality: {key: value}}."""
    cfg = default_data_config()
    update_modalities(cfg, image_size=8, resize_size=10)
    update_modalities(cfg, ("ct", "mri"), slices=3)
    cfg.patients_per_batch, cfg.images_per_patient = 2, 3
    cfg.read_threads, cfg.prefetch = 0, 1
    for k, v in kw.items():
        setattr(cfg, k, v)
    for m, values in (modalities or {}).items():
        update_modalities(cfg, (m,), **values)
    return cfg


def take(loader_or_iter, n):
    it = iter(loader_or_iter)
    return [next(it) for _ in range(n)]


def assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_label_map_sorted_patient_keys(rows):
    lm = pipeline.train_label_map(rows)
    keys = sorted(f"dx/{p}" for p in XRAY_TRAIN) + sorted(f"dc/{p}" for p in CT_TRAIN)
    assert lm == {k: i for i, k in enumerate(sorted(keys))}
    assert pipeline.num_classes(rows) == 6  # d counts as a class even though never sampled


def test_train_batches_are_homogeneous_p_by_k(rows):
    cfg = small_cfg()
    loader = pipeline.make_train_loader(rows, cfg, seed=0)
    lm = pipeline.train_label_map(rows)
    for step, b in enumerate(take(loader, 6)):
        assert set(b) == {"images", "label", "index", "modality", "mask"}
        modality = MODALITIES[int(b["modality"][0])]
        t = 3 if modality == "ct" else 1
        assert b["images"].shape == (6, t, 8, 8, 3) and b["images"].dtype == np.float32
        assert b["label"].dtype == np.int32 and b["index"].dtype == np.int32
        assert b["mask"].all() and (b["modality"] == b["modality"][0]).all()
        for g in range(2):  # each of the P groups: K images of one patient
            idx = b["index"][3 * g:3 * g + 3]
            pats = {rows[i].patient_key for i in idx}
            assert len(pats) == 1
            assert (b["label"][3 * g:3 * g + 3] == lm[pats.pop()]).all()
            assert all(rows[i].split == "train" and rows[i].modality == modality for i in idx)
        plan = loader.plan(step)
        np.testing.assert_array_equal(b["index"], plan.rows)
    assert "1 with fewer than 2 images not sampled" in loader.summary()
    assert "patients never sampled (fewer than 2 training images in their source): 1" in loader.summary()


def test_sampling_rules_over_many_plans(rows):
    loader = pipeline.make_train_loader(rows, small_cfg(), seed=7)
    by_source = {s.name: 0 for s in loader.sources}
    for step in range(400):
        plan = loader.plan(step)
        src = loader.sources[plan.source]
        by_source[src.name] += 1
        groups = plan.rows.reshape(2, 3)
        assert len({rows[g[0]].patient_key for g in groups}) == 2  # P distinct patients (enough exist)
        for g in groups:
            key = rows[g[0]].patient_key
            assert key != "dx/d"
            n = (XRAY_TRAIN | CT_TRAIN)[key.split("/")[1]]
            if n >= 3:
                assert len(set(g.tolist())) == 3  # without replacement
            else:       # every image of the patient, then drawn again among them
                own = {i for i, r in enumerate(rows) if r.patient_key == key}
                assert set(g.tolist()) == own and len(set(g[:len(own)].tolist())) == len(own)
    # Default weights: proportional to sampleable training images: x-ray 10, ct 5.
    assert {s.name: round(s.weight, 4) for s in loader.sources} == {"dc:ct": 0.3333, "dx:xray": 0.6667}
    assert abs(by_source["dx:xray"] / 400 - 2 / 3) < 0.1


def test_a_block_of_a_patient_with_fewer_than_k_images_holds_every_one():
    """Drawn wholly with replacement, 12 % of a 2-image patient's blocks of 4 were one image
    four times (no pair of different images to learn from)."""
    from mami_jax.data.sampler import patient_block
    rng = np.random.default_rng(0)
    blocks = [patient_block(rng, [10, 11], 4) for _ in range(500)]
    assert all(set(b.tolist()) == {10, 11} and len(b) == 4 for b in blocks)
    assert {tuple(b[:2]) for b in blocks} == {(10, 11), (11, 10)}
    assert len(set(patient_block(rng, [1, 2, 3, 4, 5], 4).tolist())) == 4


def test_source_weights(rows):
    cfg = small_cfg(source_weights={"dx": 1.0})  # bare dataset name; others get 0
    loader = pipeline.make_train_loader(rows, cfg, seed=0)
    assert all(loader.sources[loader.plan(s).source].name == "dx:xray" for s in range(50))
    cfg = small_cfg(source_weights={"dc:ct": 3.0, "dx:xray": 1.0})
    assert [s.weight for s in pipeline.make_train_loader(rows, cfg, seed=0).sources] == [0.75, 0.25]
    # A modality's own weight; the most specific key wins (source, then dataset, then modality).
    cfg = small_cfg(source_weights={"dx": 1.0, "dx:xray": 6.0}, modalities={"ct": {"source_weight": 2.0}})
    assert [s.weight for s in pipeline.make_train_loader(rows, cfg, seed=0).sources] == [0.25, 0.75]
    cfg = small_cfg(modalities={"ct": {"source_weight": 1.0}, "xray": {"source_weight": 3.0}})
    assert [s.weight for s in pipeline.make_train_loader(rows, cfg, seed=0).sources] == [0.25, 0.75]
    with pytest.raises(ValueError, match="unknown keys \\['dz'\\]"):  # no such dataset here
        pipeline.make_train_loader(rows, small_cfg(source_weights={"dz": 1.0}), seed=0)
    with pytest.raises(ValueError, match=r"data.modalities.mri.source_weight=1.0: no training rows "
                                         r"of modality 'mri' \(training modalities: \['ct', 'xray'\]\)"):
        pipeline.make_train_loader(rows, small_cfg(modalities={"mri": {"source_weight": 1.0}}), seed=0)
    # A modality that only_modalities leaves out keeps no weight (a weighted config trains
    # on a subset); a kept modality without training rows is still an error.
    cfg = small_cfg(only_modalities=("ct", "xray"), modalities={
        "mri": {"source_weight": 1.0}, "ct": {"source_weight": 1.0}, "xray": {"source_weight": 3.0}})
    assert [s.weight for s in pipeline.make_train_loader(rows, cfg, seed=0).sources] == [0.25, 0.75]
    with pytest.raises(ValueError, match=r"data.modalities.mri.source_weight=1.0: no training rows"):
        pipeline.make_train_loader(rows, small_cfg(only_modalities=("mri", "ct"), modalities={
            "mri": {"source_weight": 1.0}}), seed=0)
    with pytest.raises(ValueError, match=r"data.source_weights\['ct'\]: a modality's weight is "
                                         r"data.modalities.ct.source_weight"):
        pipeline.make_train_loader(rows, small_cfg(source_weights={"ct": 1.0}), seed=0)


def test_sampling_is_a_pure_function_of_seed_and_step(rows):
    cfg = small_cfg()
    first = take(pipeline.make_train_loader(rows, cfg, seed=3), 4)
    again = take(pipeline.make_train_loader(rows, cfg, seed=3, start_step=2), 2)
    assert_batches_equal(first[2:], again)
    other = take(pipeline.make_train_loader(rows, cfg, seed=4), 4)
    assert any(not np.array_equal(a["index"], b["index"]) for a, b in zip(first, other))


def test_iterator_state_restores_exactly(rows):
    cfg = small_cfg(read_threads=2, prefetch=2)
    loader = pipeline.make_train_loader(rows, cfg, seed=1)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = json.dumps(it.get_state())  # what grain.checkpoint.CheckpointSave writes
    expected = [next(it) for _ in range(2)]
    it2 = iter(pipeline.make_train_loader(rows, cfg, seed=1))
    it2.set_state(json.loads(state))
    assert_batches_equal(expected, [next(it2) for _ in range(2)])


def test_process_shares_concatenate_to_the_global_batch(rows):
    cfg = small_cfg(images_per_patient=2)  # global batch 4, two processes of 2
    whole = take(pipeline.make_train_loader(rows, cfg, seed=5), 3)
    parts = [take(pipeline.make_train_loader(rows, cfg, seed=5, process_index=i, process_count=2), 3)
             for i in range(2)]
    for step in range(3):
        assert parts[0][step]["images"].shape[0] == 2
        joined = {k: np.concatenate([parts[0][step][k], parts[1][step][k]]) for k in whole[step]}
        assert_batches_equal([whole[step]], [joined])
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.make_train_loader(rows, small_cfg(), seed=0, process_count=4)


def test_worker_processes_give_the_same_batches(rows):
    cfg0 = small_cfg()
    expected = take(pipeline.make_train_loader(rows, cfg0, seed=2), 3)
    it = iter(pipeline.make_train_loader(rows, small_cfg(num_workers=1), seed=2))
    try:
        got = [next(it) for _ in range(3)]
    finally:
        it.close()
    assert_batches_equal(expected, got)


def test_eval_loader_groups_pads_and_masks(rows):
    cfg = small_cfg()
    test_idx = [i for i, r in enumerate(rows) if r.split == "test"]  # 3 x-ray, 2 ct
    order = test_idx[::-1]  # ct rows first, in the given order
    loader = pipeline.make_eval_loader(rows, order, cfg, batch_size=2)
    batches = list(loader)
    assert len(loader) == len(batches) == 3  # ct: 2 -> 1 batch; x-ray: 3 -> 2 batches
    ct = [i for i in order if rows[i].modality == "ct"]
    xr = [i for i in order if rows[i].modality == "xray"]
    assert batches[0]["index"].tolist() == ct and batches[0]["images"].shape == (2, 3, 8, 8, 3)
    assert batches[1]["index"].tolist() == xr[:2]
    assert batches[2]["index"].tolist() == [xr[2], -1]
    assert batches[2]["mask"].tolist() == [True, False] and batches[2]["label"].tolist() == [-1, -1]
    assert np.all(batches[2]["images"][1] == 0)
    # Content equals the evaluation transform of the centre slices.
    vol = open_volume(rows[ct[0]].path)
    ref = eval_transform(vol.read([1, 3, 5]), 10, 8)  # centres of 3 segments of 7 slices
    np.testing.assert_allclose(batches[0]["images"][0], ref, atol=1e-6)
    np.testing.assert_allclose(example_reader.read_example(rows[ct[0]], cfg), ref, atol=1e-6)


def with_corrupt_image(rows, tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    i = next(i for i, r in enumerate(rows) if r.patient_id == "t")
    return [r.replace(path=str(bad)) if j == i else r for j, r in enumerate(rows)], i


def test_bad_image_fails_naming_row_and_file_or_is_skipped_and_counted(rows, tmp_path):
    bad_rows, i = with_corrupt_image(rows, tmp_path)
    cfg = small_cfg()
    with pytest.raises(example_reader.DataError, match=f"manifest row {i} \\(image_id='dx:t0'.*corrupt.png"):
        list(pipeline.make_eval_loader(bad_rows, [i], cfg, batch_size=2))
    cfg = small_cfg(skip_bad_images=True)
    loader = pipeline.make_eval_loader(bad_rows, [i, i + 1], cfg, batch_size=2)
    (b,) = list(loader)
    assert b["mask"].tolist() == [False, True] and loader.skipped_images == 1
    # Training: make a sampled patient's image unreadable; skipped images are masked and counted.
    j = next(k for k, r in enumerate(rows) if r.patient_id == "b")
    train_bad = [r.replace(path=str(tmp_path / "corrupt.png")) if k == j else r for k, r in enumerate(bad_rows)]
    loader = pipeline.make_train_loader(train_bad, cfg, seed=0)
    batches = take(loader, 12)
    hits = sum(int((b["index"] == j).sum()) for b in batches)
    assert hits > 0 and loader.skipped_images == hits
    assert all(not m for b in batches for m, ix in zip(b["mask"], b["index"]) if ix == j)
    with pytest.raises(example_reader.DataError, match=f"manifest row {j} "):
        take(pipeline.make_train_loader(train_bad, small_cfg(), seed=0), 12)


def test_manifest_errors_before_training(rows):
    cfg = small_cfg()
    dup = rows + [rows[0]]
    with pytest.raises(ManifestError, match="duplicate image_id"):
        pipeline.make_train_loader(dup, cfg, seed=0)
    two_splits = rows + [rows[0].replace(image_id="dx:new", split="test")]
    with pytest.raises(ManifestError, match="in split 'test' here and in split 'train'"):
        pipeline.make_train_loader(two_splits, cfg, seed=0)
    unknown = rows + [rows[0].replace(image_id="dx:us", patient_id="z", modality="ultrasound")]
    with pytest.raises(ManifestError, match="unknown modality 'ultrasound'"):
        pipeline.make_train_loader(unknown, cfg, seed=0)
    with pytest.raises(ManifestError, match=re.escape(
            f"no training rows (split 'train'; the rows' splits: test {len(rows)}): give some "
            "rows split 'train', or leave the split column empty in every row")):
        pipeline.make_train_loader([r.replace(split="test") for r in rows], cfg, seed=0)


def test_sources_need_two_image_patients():
    rows = [ManifestRow(f"i{k}", f"p{k}", "s", "0", "xray", "d", "", "/x.png", "train") for k in range(3)]
    with pytest.raises(ValueError, match="no training source can be sampled"):
        sampler.build_sources(rows, slices={"xray": 1})
    with pytest.raises(ValueError, match=r"no slice count for modality 'xray' \(data.modalities.xray.slices\)"):
        sampler.build_sources(rows, slices={"ct": 8})


def test_errors_that_are_not_bad_files_are_never_skipped(rows, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a bug, not a bad file")

    monkeypatch.setattr(example_reader, "eval_transform", broken)
    loader = pipeline.make_eval_loader(rows, [0], small_cfg(skip_bad_images=True), batch_size=1)
    with pytest.raises(example_reader.DataError, match="manifest row 0 .*ValueError: a bug"):
        list(loader)
    assert loader.skipped_images == 0


def test_modality_image_sizes_per_source_in_training_and_evaluation(rows):
    cfg = small_cfg(modalities={"ct": {"image_size": 12, "resize_size": 14}})
    ct = [i for i, r in enumerate(rows) if r.modality == "ct" and r.split == "test"]
    xr = [i for i, r in enumerate(rows) if r.modality == "xray" and r.split == "test"]
    batches = list(pipeline.make_eval_loader(rows, ct + xr, cfg, batch_size=4))
    assert batches[0]["images"].shape == (4, 3, 12, 12, 3)   # ct: its own size, padded
    assert batches[1]["images"].shape == (4, 1, 8, 8, 3)     # x-ray: the default
    vol = open_volume(rows[ct[0]].path)
    np.testing.assert_allclose(batches[0]["images"][0], eval_transform(vol.read([1, 3, 5]), 14, 12),
                               atol=1e-6)
    loader = pipeline.make_train_loader(rows, cfg, seed=0)
    for batch, step in zip(take(loader, 6), range(6)):
        source = loader.sources[loader.plan(step).source]
        side = 12 if source.modality == "ct" else 8
        assert batch["images"].shape[2:4] == (side, side), (source.name, batch["images"].shape)


def _with_block(name):
    cfg = small_cfg()
    cfg.modalities[name] = default_modality_config("ct")
    return cfg


def _without_block(name):
    cfg = small_cfg()
    del cfg.modalities[name]
    return cfg


@pytest.mark.parametrize("make, match", [
    (lambda: small_cfg(modalities={"ct": {"image_size": 0}}),
     r"^data.modalities.ct.image_size=0: expected a positive int$"),
    (lambda: small_cfg(modalities={"ct": {"image_size": 12, "resize_size": 10}}),
     r"^data.modalities.ct: image_size 12 > resize_size 10$"),
    (lambda: small_cfg(modalities={"mri": {"slices": 0}}),
     r"^data.modalities.mri.slices=0: expected a positive int$"),
    (lambda: small_cfg(modalities={"xray": {"flip": None}}),
     r"^data.modalities.xray.flip=None: expected True or False$"),
    (lambda: small_cfg(modalities={"xray": {"source_weight": -1.0}}),
     r"^data.modalities.xray.source_weight=-1.0: expected a weight >= 0 or None$"),
    (lambda: _with_block("cat"), r"^data.modalities.cat: unknown modality; expected one of"),
    (lambda: _without_block("fundus"), r"^data.modalities.fundus: missing; every modality"),
])
def test_bad_modality_blocks_are_named(rows, make, match):
    with pytest.raises(ValueError, match=match):
        pipeline.make_eval_loader(rows, [0], make(), batch_size=1)


def test_misspelt_block_key_is_named(rows):
    cfg = small_cfg()
    cfg.modalities.pathology.stain_normalise = True   # unlocked default config: a new key
    with pytest.raises(ValueError, match=r"^data.modalities.pathology.stain_normalise: unknown key"):
        pipeline.make_eval_loader(rows, [0], cfg, batch_size=1)
    with pytest.raises(KeyError, match=r"data.modalities.ct.flipp: no such key"):
        update_modalities(small_cfg(), ("ct",), flipp=True)


def test_stain_normalisation_applies_only_to_the_listed_modalities(rows, tmp_path):
    rgb = np.random.default_rng(1).uniform(0.2, 1.0, (20, 20, 3))
    path = str(tmp_path / "tile.png")
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path)
    row = ManifestRow("tile", "p", "s0", "0", "pathology", "dp", "", path, "test")
    plain = example_reader.read_example(row, small_cfg())
    normed = example_reader.read_example(row, small_cfg(modalities={"pathology": {"stain_normalize": True}}))
    from mami_jax.data import stain
    ref = eval_transform(stain.normalize_slices(open_volume(path).read([0])), 10, 8)
    np.testing.assert_allclose(normed, ref, atol=1e-6)
    assert np.abs(normed - plain).max() > 0.1
    other = small_cfg(modalities={"fundus": {"stain_normalize": True}})   # not this row's modality
    np.testing.assert_array_equal(example_reader.read_example(row, other), plain)


def test_decode_cache_changes_no_batch_and_serves_repeated_reads(rows):
    plain = small_cfg()
    cached = small_cfg(decode_cache_mb=1)
    assert_batches_equal(take(pipeline.make_train_loader(rows, plain, seed=3), 8),
                         take(pipeline.make_train_loader(rows, cached, seed=3), 8))
    idx = [i for i, r in enumerate(rows) if r.split == "test"]
    assert_batches_equal(list(pipeline.make_eval_loader(rows, idx, plain, batch_size=2)),
                         list(pipeline.make_eval_loader(rows, idx, cached, batch_size=2)))
    loader = pipeline.make_train_loader(rows, cached, seed=3)
    take(loader, 8)
    cache = loader._reader.cache
    assert cache.hits > 0 and 0 < cache.nbytes <= 2 ** 20


def test_training_batches_picture_shows_each_sources_first_batch_as_trained(rows, tmp_path):
    """``WORKDIR/training_batches.png``: the first batch of each source, its images exactly
    as the batch holds them (training transform of that step and position), normalisation
    undone."""
    from mami_jax.data.picture_grid import LINE_HEIGHT, to_uint8
    from mami_jax.data.transforms import display_view, normalize
    from mami_jax.train import training_batches

    loader = pipeline.make_train_loader(rows, small_cfg(), seed=2)
    steps = training_batches.first_steps(loader)
    sources = [loader.plan(i).source for i in range(60)]
    assert steps == sorted(((sources.index(s), s) for s in set(sources)), key=lambda t: t[1])
    assert [s for _, s in steps] == [0, 1]
    batches = take(loader, max(i for i, _ in steps) + 1)       # the loader's own batches
    for index, _ in steps:
        read = loader.read_planned(index, range(6))
        np.testing.assert_array_equal(np.stack([x for x, _ in read]), batches[index]["images"])
    x = np.random.default_rng(0).random((1, 4, 4, 1)).astype(np.float32)
    np.testing.assert_allclose(display_view(normalize(x, "imagenet"), "imagenet"),
                               np.repeat(x, 3, axis=-1), atol=1e-6)

    path = tmp_path / "batches.png"
    training_batches.draw_training_batches(str(path), loader, patients=1, cell=40)
    picture = np.asarray(Image.open(path).convert("RGB"))
    row_height = 40 + 2 * LINE_HEIGHT + 6
    assert picture.shape[:2] == (2 * row_height, 150 + 3 * 40)    # 2 sources x 1 patient, K=3
    for r, (index, s) in enumerate(steps):                # each row's first cell: position 0
        first = batches[index]["images"][0]
        shown = display_view(first[first.shape[0] // 2], "imagenet")
        expected = np.asarray(Image.fromarray(to_uint8(shown)).resize((36, 36)))
        top = r * row_height + 2
        np.testing.assert_array_equal(picture[top:top + 36, 152:188], expected)
