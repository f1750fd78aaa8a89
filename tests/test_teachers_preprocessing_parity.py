"""Each teacher is fed what its own preprocessing gives.

DINOv2-family teachers (``transformers`` folders: ``dinov2_base``, ``rad_dino``) were fed
the picture squeezed straight to the crop size with bilinear interpolation, whatever
the folder's ``preprocessor_config.json`` said: transformers' processors resize the short
side keeping the aspect (bicubic), then crop the middle. Here the teacher input is
checked against ``AutoImageProcessor`` of the same folder on non-square pictures.

CT-FM was fed a CT read as the student reads it (min-max, or the run's value window);
its model card scales Hounsfield units from [-1024, 2048] to [0, 1], clipped. Here its
input is checked against that formula on a NIfTI CT written in Hounsfield units.
"""

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mami_jax.data import nifti_slices  # noqa: E402
from mami_jax.data.decode import open_volume  # noqa: E402
from mami_jax.data.manifest import ManifestRow  # noqa: E402
from teachers import extract, registry  # noqa: E402
from teachers.loaded import LoadedTeacher  # noqa: E402
from teachers.loaders import TeacherLoadError, load_teacher, run_batch  # noqa: E402
from teachers.preprocess import teacher_input, teacher_inputs  # noqa: E402
from tests.structured_pictures import grey_picture  # noqa: E402

MEAN, STD = [0.5307] * 3, [0.2583] * 3
#: One uint8 step in rad_dino's normalised units is 1 / 255 / 0.2583 = 0.015: the
#: processors round their resized pictures to 8 bits, the teachers keep floats.
ONE_STEP = 0.025


def _dinov2_folder(folder, **processor):
    """A tiny Dinov2 saved with the image processor settings ``processor``, written by
    transformers' own ``BitImageProcessor`` (the class of dinov2-base's and rad-dino's)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, patch_size=14, image_size=56)
                ).save_pretrained(folder)
    BitImageProcessor(image_mean=MEAN, image_std=STD, **processor).save_pretrained(folder)
    return str(folder)


def _processor_input(folder, picture):
    from PIL import Image
    from transformers import AutoImageProcessor
    processor = AutoImageProcessor.from_pretrained(folder)
    rgb = Image.fromarray(picture).convert("RGB")
    return processor(images=rgb, return_tensors="pt")["pixel_values"][0].numpy()


def _teacher_input(spec, picture):
    """The input ``teacher_inputs`` gives for ``picture`` decoded as a grey 8-bit image
    (values / 255, one channel: what ``open_volume`` reads)."""
    decoded = (picture / 255.0).astype(np.float32)[None, :, :, None]
    return teacher_inputs(decoded, [spec])[spec.name]


@pytest.fixture(scope="module")
def short_side_folder(tmp_path_factory):
    return _dinov2_folder(tmp_path_factory.mktemp("dino") / "rad_dino",
                          size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                          do_center_crop=True, resample=3)


@pytest.mark.parametrize("shape", [(50, 80), (80, 50), (61, 97)])
def test_a_dinov2_teacher_gets_what_its_image_processor_gives(short_side_folder, shape):
    """Before: max abs difference 2.4 to 3.2 in normalised units (the picture squeezed
    to 56 x 56, bilinear), features 3 to 6 % apart; now within one uint8 step."""
    teacher = load_teacher(registry.get_spec("rad_dino"), short_side_folder)
    picture = grey_picture(*shape)
    expected = _processor_input(short_side_folder, picture)
    got = _teacher_input(teacher.spec, picture)
    assert got.shape == expected.shape == (3, 56, 56)
    assert np.abs(got - expected).max() < ONE_STEP
    want, have = run_batch(teacher, expected[None]), run_batch(teacher, got[None])
    assert np.linalg.norm(have - want) / np.linalg.norm(want) < 0.005
    spec = teacher.spec
    assert (spec.size, spec.resize_short, spec.resize_to, spec.resample) == (
        (56, 56), 64, (), "bicubic")


def test_a_height_width_size_is_resized_to_then_cropped(tmp_path):
    folder = _dinov2_folder(tmp_path / "hw", size={"height": 64, "width": 72},
                            crop_size={"height": 56, "width": 56}, resample=2)
    spec = load_teacher(registry.get_spec("dinov2_base"), folder).spec
    assert (spec.size, spec.resize_short, spec.resize_to, spec.resample) == (
        (56, 56), 0, (64, 72), "bilinear")
    picture = grey_picture(50, 80)
    assert np.abs(_teacher_input(spec, picture)
                  - _processor_input(folder, picture)).max() < ONE_STEP


def test_a_crop_size_alone_is_resized_straight_to(tmp_path):
    """Folders written with only mean, std and crop_size keep the resize they had: straight
    to the crop (the registry's bicubic interpolation where the file names none)."""
    folder = _dinov2_folder(tmp_path / "crop_only")
    (tmp_path / "crop_only" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": MEAN, "image_std": STD, "crop_size": {"height": 56, "width": 56}}))
    spec = load_teacher(registry.get_spec("rad_dino"), folder).spec
    assert (spec.size, spec.resize_short, spec.resize_to) == ((56, 56), 0, ())
    assert _teacher_input(spec, grey_picture(50, 80)).shape == (3, 56, 56)


@pytest.mark.parametrize("values", [
    {"do_normalize": False},                                   # 0..1, not normalised
    {"do_rescale": False},                                     # 0..255, then normalised
    {"rescale_factor": 1 / 127.5, "image_mean": [1.0] * 3, "image_std": [1.0] * 3},  # -1..1
    {"image_mean": 0.5, "image_std": 0.25},                    # one number for all channels
])
def test_the_processors_value_settings_are_followed(tmp_path, values):
    """``do_rescale``, ``rescale_factor``, ``do_normalize`` and a scalar mean or std were not
    read: every folder was fed (x / 255 - mean) / std. Before: 1.9, 945 and 0.96 apart in
    the processor's units on the first three folders (a scalar mean stopped the load with
    an error blaming the model's config); now within one
    uint8 step of ``AutoImageProcessor`` (a unit step of the 0..255 input, whose values
    are 255 times larger)."""
    settings = dict(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                    do_center_crop=True, resample=3)
    folder = _dinov2_folder(tmp_path / "values", **settings)
    path = tmp_path / "values" / "preprocessor_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **values)))
    spec = load_teacher(registry.get_spec("rad_dino"), folder).spec
    picture = grey_picture(61, 97)
    expected = _processor_input(folder, picture)
    step = ONE_STEP * (255 if values.get("do_rescale") is False else 1)
    assert np.abs(_teacher_input(spec, picture) - expected).max() < step


@pytest.mark.parametrize("values, problem", [
    ({"image_mean": "grey"}, r"image_mean is 'grey', not a number or one per channel \(3\)"),
    ({"image_std": [0.2, 0.0, 0.2]}, r"image_std is \[0.2, 0.0, 0.2\]; a std is above 0"),
    ({"rescale_factor": 0}, r"rescale_factor is 0, not a number above 0"),
])
def test_value_settings_no_input_can_follow_name_the_file(tmp_path, values, problem):
    folder = _dinov2_folder(tmp_path / "odd", size={"shortest_edge": 64},
                            crop_size={"height": 56, "width": 56})
    path = tmp_path / "odd" / "preprocessor_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **values)))
    with pytest.raises(TeacherLoadError, match=rf"^{path}: {problem}"):
        load_teacher(registry.get_spec("rad_dino"), folder)


@pytest.mark.parametrize("settings, problem", [
    ({"size": {"shortest_edge": 64}, "crop_size": {"height": 56, "width": 56},
      "do_center_crop": False}, r"size \{'shortest_edge': 64\} without a centre crop .* "
                                r"cannot be batched"),
    ({"size": {"shortest_edge": 64}, "crop_size": {"height": 56, "width": 56},
      "resample": 1}, r"resample 1 is not supported: PIL codes 0 nearest, 2 bilinear, "
                      r"3 bicubic"),
    ({"size": {"shortest_edge": 48}, "crop_size": {"height": 56, "width": 56}},
     r"teacher rad_dino: a resize to 48 does not cover the \(56, 56\) crop"),
    ({"size": {"shortest_edge": 64}, "do_resize": False,
      "crop_size": {"height": 56, "width": 56}}, r"do_resize false"),
    ({"size": 64, "crop_size": {"height": 56, "width": 56}}, r"size 64 is not read"),
])
def test_processor_settings_the_teacher_cannot_follow_are_errors_naming_the_file(
        short_side_folder, tmp_path, settings, problem):
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes(open(f"{short_side_folder}/{name}", "rb").read())
    (folder / "preprocessor_config.json").write_text(json.dumps(
        dict(settings, image_mean=MEAN, image_std=STD)))
    with pytest.raises(TeacherLoadError, match=rf"^{folder}/preprocessor_config.json: {problem}"):
        load_teacher(registry.get_spec("rad_dino"), str(folder))


def test_the_registry_resizes_as_the_released_processors():
    """facebook/dinov2-base: short side 256, bicubic, crop 224; microsoft/rad-dino: short
    side 518, bicubic, crop 518. The index records it."""
    dino, rad = registry.get_spec("dinov2_base"), registry.get_spec("rad_dino")
    assert (dino.resize_short, dino.resample, dino.size) == (256, "bicubic", (224, 224))
    assert (rad.resize_short, rad.resample, rad.size) == (518, "bicubic", (518, 518))
    assert rad.preprocessing()["resize"] == ("short side to 518 (aspect kept), bicubic, "
                                             "antialiased, clipped to [0, 1]; centre crop 518x518")
    x = _teacher_input(dino, grey_picture(300, 200))
    assert x.shape == (3, 224, 224)


def test_teachers_of_another_resize_get_their_own(short_side_folder):
    """Teachers of one input size shared one resize whatever else they set."""
    base = load_teacher(registry.get_spec("rad_dino"), short_side_folder).spec
    others = [dataclasses.replace(base, name="straight", resize_short=0),
              dataclasses.replace(base, name="bilinear", resample="bilinear"),
              dataclasses.replace(base, name="wider", resize_short=80)]
    decoded = (grey_picture(50, 80) / 255.0).astype(np.float32)[None, :, :, None]
    inputs = teacher_inputs(decoded, [base] + others)
    for spec in others:
        np.testing.assert_array_equal(inputs[spec.name], teacher_input(decoded, spec))
        assert np.abs(inputs[spec.name] - inputs[base.name]).max() > 0.1


# ---- CT-FM: Hounsfield units through its card's window -------------------------------

AIR, SOFT_TISSUE, BONE, TOP = -1000, 40, 1200, 3071


@pytest.fixture(scope="module")
def ct_row(tmp_path_factory):
    """A NIfTI CT in Hounsfield units: air, a soft-tissue block, a bone block, one voxel at
    the top of the 12-bit range."""
    import nibabel as nib
    hu = np.full((20, 18, 7), AIR, np.int16)
    hu[4:16, 3:15, 1:6] = SOFT_TISSUE
    hu[8:12, 6:10, 2:5] = BONE
    hu[10, 8, 3] = TOP
    path = str(tmp_path_factory.mktemp("ct") / "ct.nii.gz")
    nib.save(nib.Nifti1Image(hu, np.eye(4)), path)
    return ManifestRow(image_id="ct0", patient_id="p0", study_id="s0", order="0",
                       modality="ct", dataset="d", view="", path=path, split="test")


def _recording_teacher(spec, seen) -> LoadedTeacher:
    def forward(x):
        seen.append(x.numpy().copy())
        return x.flatten(1).mean(dim=1, keepdim=True)
    return LoadedTeacher(spec=spec, forward=forward, feature_dim=1, fingerprint=spec.name,
                         weights_path=None)


class _Bar:
    def update(self, n):
        pass


@pytest.mark.parametrize("run_window", [None, (-1000.0, 1000.0), (-1024.0, 2048.0)])
def test_ct_fm_reads_hounsfield_units_through_its_card_window(ct_row, monkeypatch,
                                                              run_window):
    """Whatever window the run reads CT through, CT-FM's input is clip((HU + 1024) / 3072,
    0, 1) resampled; the other teachers still read the run's window; a row is decoded once
    per distinct window."""
    ct_fm = dataclasses.replace(registry.get_spec("ct_fm"), size=(6, 16, 16))
    flat = dataclasses.replace(registry.get_spec("random_tiny"), name="flat", size=(16, 16))
    seen_ct_fm, seen_flat, decodes = [], [], []
    real = extract.open_volume
    monkeypatch.setattr(extract, "open_volume",
                        lambda p, value_window=None: decodes.append(value_window)
                        or real(p, value_window=value_window))
    extract.shard_features([_recording_teacher(ct_fm, seen_ct_fm),
                            _recording_teacher(flat, seen_flat)], [ct_row], 1, "cpu", False,
                           _Bar(), read_threads=1,
                           value_windows={"ct": run_window} if run_window else None)

    _, raw = nifti_slices.read_slices(ct_row.path, None)         # (S, H, W, 1) HU
    assert {AIR, SOFT_TISSUE, BONE, TOP} == set(np.unique(raw).tolist())
    card = np.clip((raw[..., 0].astype(np.float64) + 1024) / 3072, 0, 1)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(card.astype(np.float32))[None, None], size=(6, 16, 16),
        mode="trilinear", align_corners=False)[0].numpy()
    np.testing.assert_allclose(seen_ct_fm[0][0], expected, atol=1e-6)

    theirs = open_volume(ct_row.path, value_window=run_window).read(None)
    np.testing.assert_array_equal(seen_flat[0][0], teacher_input(theirs, flat))
    assert sorted(decodes, key=str) == sorted({run_window, (-1024.0, 2048.0)}, key=str)


def test_ct_fm_records_its_window():
    record = registry.get_spec("ct_fm").preprocessing()
    assert record["value_window"] == [-1024.0, 2048.0]
    assert "whatever the run reads" in record["intensity"]
    assert "value_window" not in registry.get_spec("brainiac").preprocessing()
