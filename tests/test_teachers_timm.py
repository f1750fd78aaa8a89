"""The timm and open_clip teachers (UNI, RETFound, BiomedCLIP) load through the real loader
path from folders written in the layout their releases use, and store what a direct call
of the timm / open_clip model computes on the same input; their input is what timm's and
open_clip's own inference transforms give on non-square pictures (they were squeezed
straight to the input size with bilinear interpolation).

The tiny stand-ins keep each family's width where it sets the stored size (ViT-L's 1024,
BiomedCLIP's 512-d projection) and shrink depth and input size; a meta-device build checks
that the registry's full-size arguments give the registry's feature size.

Skipped where timm, open_clip or torchvision cannot be imported (a CPU torch has no
matching torchvision on PyPI; torchvision then fails with a RuntimeError, not ImportError).
"""

import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the teachers need the torch extra")


def _require(module):
    try:
        return pytest.importorskip(module, reason=f"{module} is not installed (extra teachers-timm)")
    except RuntimeError as e:        # torchvision built for another torch
        pytest.skip(f"{module} does not import beside torch {torch.__version__}: {e}",
                    allow_module_level=True)


timm = _require("timm")
open_clip = _require("open_clip")

from teachers import registry  # noqa: E402
from teachers.loaders import BUILDERS, TeacherLoadError, load_teacher, run_batch  # noqa: E402
from tests.structured_pictures import grey_picture  # noqa: E402

# ViT-L width (the stored 1024), one block, 32 px input (2x2 patches of 16)
TINY_VIT_L = dict(depth=1, img_size=32)


def _batch(size, seed=0, n=2):
    return torch.randn((n, 3) + tuple(size), generator=torch.Generator().manual_seed(seed))


def _features(teacher, x):
    return run_batch(teacher, x.numpy())


def _deterministic(teacher, x):
    first = _features(teacher, x)
    np.testing.assert_array_equal(first, _features(teacher, x))
    return first


# --- UNI: a timm hub folder (config.json + pytorch_model.bin, strict timm keys) -------------

def _uni_folder(tmp_path, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), **pretrained):
    """UNI's release layout: timm's hub config.json beside a plain timm state dict;
    ``pretrained`` replaces entries of its ``pretrained_cfg``."""
    spec = registry.get_spec("uni")
    args = dict(spec.model_args)
    arch = args.pop("architecture")
    args.update(TINY_VIT_L, patch_size=16)
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **args).eval()
    folder = tmp_path / "uni"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({
        "architecture": arch, "num_classes": 0, "num_features": 1024, "global_pool": "token",
        "model_args": args,
        "pretrained_cfg": {"tag": "uni_mass100k", "custom_load": False,
                           "input_size": [3, 32, 32], "fixed_input_size": True,
                           "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
                           "mean": list(mean), "std": list(std), "num_classes": 0,
                           "pool_size": None, "first_conv": "patch_embed.proj",
                           "classifier": "head", "license": "cc-by-nc-nd-4.0",
                           **pretrained}}))
    return folder, model


def test_uni_timm_hub_folder_loads_strictly_and_equals_timm(tmp_path):
    folder, model = _uni_folder(tmp_path)
    teacher = load_teacher(registry.get_spec("uni"), str(folder))
    assert teacher.feature_dim == registry.get_spec("uni").feature_dim == 1024
    assert teacher.spec.size == (32, 32)
    assert teacher.spec.mean == (0.5, 0.4, 0.3) and teacher.spec.std == (0.2, 0.25, 0.3)
    x = _batch(teacher.spec.size)
    got = _deterministic(teacher, x)
    with torch.no_grad():
        expected = model(x).numpy()
        cls = model.forward_features(x)[:, 0].numpy()     # LN(CLS): UNI's stored feature
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, cls)
    assert load_teacher(registry.get_spec("uni"), str(folder)).fingerprint == teacher.fingerprint


def test_uni_checkpoint_missing_layer_scale_is_an_error(tmp_path):
    folder, model = _uni_folder(tmp_path)
    sd = {k: v for k, v in model.state_dict().items() if "ls1" not in k}
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(TeacherLoadError, match=r"uni: .*uni does not fit VisionTransformer: "
                                               r"missing \['blocks.0.ls1.gamma'\]"):
        load_teacher(registry.get_spec("uni"), str(folder))


# --- RETFound: an MAE pretraining checkpoint {"model": encoder + decoder, "args": ...} ------

def _mae_checkpoint(encoder, decoder_dim=16, patch=16):
    """The keys MAE pretraining saves: the encoder (timm ViT names, final ``norm``) plus the
    decoder (mask_token, decoder_embed, decoder_pos_embed, decoder_blocks, decoder_norm,
    decoder_pred), with the run's optimizer, epoch and argparse.Namespace beside it."""
    from timm.models.vision_transformer import Block
    g = torch.Generator().manual_seed(3)
    sd = dict(encoder.state_dict())
    tokens, width = sd["pos_embed"].shape[1], sd["cls_token"].shape[-1]
    sd["mask_token"] = torch.randn(1, 1, decoder_dim, generator=g)
    sd["decoder_embed.weight"] = torch.randn(decoder_dim, width, generator=g)
    sd["decoder_embed.bias"] = torch.zeros(decoder_dim)
    sd["decoder_pos_embed"] = torch.randn(1, tokens, decoder_dim, generator=g)
    for k, v in Block(decoder_dim, num_heads=2, qkv_bias=True).state_dict().items():
        sd[f"decoder_blocks.0.{k}"] = v
    sd["decoder_norm.weight"], sd["decoder_norm.bias"] = torch.ones(decoder_dim), torch.zeros(decoder_dim)
    sd["decoder_pred.weight"] = torch.randn(patch * patch * 3, decoder_dim, generator=g)
    sd["decoder_pred.bias"] = torch.zeros(patch * patch * 3)
    return {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4}]},
            "epoch": 799, "scaler": {"scale": 65536.0},
            "args": argparse.Namespace(model="mae_vit_large_patch16", mask_ratio=0.75)}


def _retfound_folder(tmp_path):
    torch.manual_seed(1)
    # the pretraining encoder: CLS pooling, so it has the final ``norm`` MAE trains
    encoder = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0,
                                **TINY_VIT_L).eval()
    with torch.no_grad():
        encoder.norm.weight.uniform_(0.5, 1.5)       # not the identity: must not be used
    folder = tmp_path / "retfound"
    folder.mkdir()
    torch.save(_mae_checkpoint(encoder), folder / "RETFound_mae_natureCFP.pth")
    # the release has no config.json; the tiny stand-in states its own depth and size
    (folder / "config.json").write_text(json.dumps({"model_args": TINY_VIT_L}))
    return folder


def test_retfound_mae_checkpoint_is_the_authors_global_pool_feature(tmp_path):
    folder = _retfound_folder(tmp_path)
    spec = registry.get_spec("retfound")
    teacher = load_teacher(spec, str(folder))
    assert teacher.feature_dim == spec.feature_dim == 1024 and teacher.spec.size == (32, 32)
    x = _batch(teacher.spec.size, seed=2)
    got = _deterministic(teacher, x)

    # the authors' recipe: a fresh global-pool ViT, checkpoint['model'] loaded non-strictly
    direct = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0,
                               global_pool="avg", **TINY_VIT_L).eval()
    ckpt = torch.load(folder / "RETFound_mae_natureCFP.pth", weights_only=False)
    msg = direct.load_state_dict(ckpt["model"], strict=False)
    assert set(msg.missing_keys) == {"fc_norm.weight", "fc_norm.bias"}
    with torch.no_grad():
        np.testing.assert_array_equal(got, direct(x).numpy())
        tokens = direct.forward_features(x)          # norm is Identity under avg pooling
        pooled = torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (1024,), eps=1e-6)
    np.testing.assert_allclose(got, pooled.numpy(), rtol=1e-5, atol=1e-5)


def test_retfound_checkpoint_of_another_width_is_an_error(tmp_path):
    encoder = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0,
                                embed_dim=64, num_heads=2, **TINY_VIT_L)
    folder = tmp_path / "wide"
    folder.mkdir()
    torch.save(_mae_checkpoint(encoder), folder / "weights.pth")
    (folder / "config.json").write_text(json.dumps({"model_args": TINY_VIT_L}))
    with pytest.raises(TeacherLoadError, match=r"retfound: .*wide does not fit VisionTransformer: "
                                               r".*size mismatch for cls_token"):
        load_teacher(registry.get_spec("retfound"), str(folder))


# --- BiomedCLIP: an open_clip folder (open_clip_config.json + a whole-CLIP state dict) ------

def _biomedclip_folder(tmp_path):
    """BiomedCLIP's layout: open_clip_config.json (timm ViT image tower, BERT text tower
    from transformers) and open_clip_pytorch_model.bin holding the whole CustomTextCLIP.
    The stand-in's text tower is a tiny local BERT folder instead of the hub's PubMedBERT,
    and its image trunk is vit_tiny_patch16_224 (the ViT/16 family at 224 px)."""
    from transformers import BertConfig, BertModel
    bert = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, vocab_size=100,
                         max_position_embeddings=32)).save_pretrained(bert)
    folder = tmp_path / "biomedclip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 512,
                      "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224",
                                     "timm_model_pretrained": False, "timm_pool": "",
                                     "timm_proj": "linear", "image_size": 224},
                      "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert),
                                   "hf_proj_type": "mlp",
                                   "hf_pooler_type": "cls_last_hidden_state_pooler",
                                   "context_length": 16}},
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]}}))
    torch.manual_seed(0)
    clip = open_clip.create_model(f"local-dir:{folder}")     # no weights yet: random init
    torch.save(clip.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def test_biomedclip_image_tower_equals_open_clip_encode_image(tmp_path):
    folder = _biomedclip_folder(tmp_path)
    spec = registry.get_spec("biomedclip")
    teacher = load_teacher(spec, str(folder))
    assert teacher.feature_dim == spec.feature_dim == 512
    assert teacher.spec.size == (224, 224) and teacher.spec.mean == registry.OPENAI_CLIP_MEAN
    x = _batch(teacher.spec.size, seed=4)
    got = _deterministic(teacher, x)
    # open_clip's own factory reads the same folder and loads the whole CLIP strictly
    clip = open_clip.create_model(f"local-dir:{folder}").eval()
    with torch.no_grad():
        np.testing.assert_array_equal(got, clip.encode_image(x).numpy())
        trunk_cls = clip.visual.trunk.forward_features(x)[:, 0]           # LN(CLS)
        np.testing.assert_allclose(got, clip.visual.head.proj(trunk_cls).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_open_clip_config_with_an_unknown_vision_key_is_an_error(tmp_path):
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 8, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224",
                                                      "timm_poool": ""}}}))
    torch.save({"x": torch.zeros(1)}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(TeacherLoadError, match=r"open_clip_config.json: unknown vision_cfg keys "
                                               r"\['timm_poool'\]"):
        load_teacher(registry.get_spec("biomedclip"), str(folder))


# --- full size: the registry's own arguments give the registry's feature size ----------------

@pytest.mark.parametrize("name", ["uni", "retfound", "biomedclip"])
def test_registry_full_size_architecture_gives_the_registry_feature_size(name, monkeypatch):
    """Builds the real-size model (ViT-L/16, ViT-B/16) on the meta device, so no memory or
    compute: only the weights are skipped (the strict load is what the tiny tests check)."""
    import teachers.loaders as loaders
    spec = registry.get_spec(name)
    monkeypatch.setattr(loaders, "_weights_file", lambda *a, **k: "unused")
    monkeypatch.setattr(loaders, "read_state_dict", lambda *a, **k: {})
    monkeypatch.setattr(loaders, "_load_strict", lambda *a, **k: None)
    with torch.device("meta"):
        model, forward, changes = BUILDERS[spec.loader](spec, "/nonexistent", torch)
        out = forward(torch.zeros((1, 3) + tuple(spec.size)))
    assert out.shape == (1, spec.feature_dim)
    assert changes.get("size", spec.size) == (224, 224)
    assert sum(p.numel() for p in model.parameters()) > (300e6 if name != "biomedclip" else 85e6)


# --- their input is what their own library's inference transform gives ----------------------

#: The resized picture in [0, 1] within 1.5 uint8 steps of the library's: the libraries
#: resize 8-bit PIL pictures (rounded), the teachers resize floats.
STEPS = 1.5 / 255


def _close_to_library(spec, library_transform, picture):
    """Max difference, in [0, 1] units, of the teacher input and the library's tensor of
    the same picture (a grey 8-bit image, as the decoder reads one)."""
    from PIL import Image
    from teachers.preprocess import teacher_input
    expected = library_transform(Image.fromarray(picture).convert("RGB")).numpy()
    got = teacher_input((picture / 255.0).astype(np.float32)[None, :, :, None], spec)
    assert got.shape == expected.shape
    return float((np.abs(got - expected) * np.asarray(spec.std)[:, None, None]).max())


@pytest.mark.parametrize("pretrained, resize", [
    ({"crop_pct": 1.0, "interpolation": "bilinear"}, (32, "bilinear")),   # UNI's card
    ({"crop_pct": 0.875, "interpolation": "bicubic"}, (36, "bicubic")),   # timm's default
    ({"crop_pct": 0.8, "interpolation": "bicubic", "crop_mode": "squash"}, (40, "bicubic")),
])
@pytest.mark.parametrize("shape", [(50, 80), (97, 61)])
def test_a_timm_teacher_gets_what_timms_eval_transform_gives(tmp_path, pretrained, resize, shape):
    """Before: squeezed to 32 x 32 with bilinear whatever the pretrained_cfg said, max
    difference 0.41 to 0.78 of the [0, 1] range on these pictures; a crop placed as
    transformers places it (margin // 2) was 0.17 off on the odd margin of (50, 80):
    torchvision rounds half to even. Now under 0.004."""
    folder, _ = _uni_folder(tmp_path, **pretrained)
    spec = load_teacher(registry.get_spec("uni"), str(folder)).spec
    side, resample = resize
    squash = pretrained.get("crop_mode") == "squash"
    assert (spec.resize_short, spec.resize_to, spec.resample) == (
        (0, (side, side), resample) if squash else (side, (), resample))
    config = timm.data.resolve_data_config(pretrained_cfg=json.loads(
        (folder / "config.json").read_text())["pretrained_cfg"])
    transform = timm.data.create_transform(**config)
    assert _close_to_library(spec, transform, grey_picture(*shape)) < STEPS


def test_retfound_gets_its_authors_eval_transform(tmp_path):
    """RETFound's release has no transform settings: the registry's (its authors'
    evaluation transform: the short side to input / 0.875 bicubic, a centre crop),
    scaled to the stand-in's 32 px input (short side 36)."""
    from torchvision import transforms
    spec = load_teacher(registry.get_spec("retfound"), str(_retfound_folder(tmp_path))).spec
    assert (spec.size, spec.resize_short, spec.resample) == ((32, 32), 36, "bicubic")
    authors = transforms.Compose([
        transforms.Resize(36, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(32), transforms.ToTensor(),
        transforms.Normalize(registry.IMAGENET_MEAN, registry.IMAGENET_STD)])
    for shape in [(50, 80), (97, 61)]:
        assert _close_to_library(spec, authors, grey_picture(*shape)) < STEPS


@pytest.mark.parametrize("preprocess", [{}, {"interpolation": "bilinear"},
                                        {"resize_mode": "squash"}])
def test_biomedclip_gets_what_open_clips_transform_gives(tmp_path, preprocess):
    """The transform ``open_clip.create_model_and_transforms`` returns for the folder."""
    folder = _biomedclip_folder(tmp_path)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["preprocess_cfg"].update(preprocess)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    spec = load_teacher(registry.get_spec("biomedclip"), str(folder)).spec
    _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    if preprocess.get("resize_mode") == "squash":
        assert (spec.resize_short, spec.resize_to) == (0, ())
    else:
        assert (spec.resize_short, spec.size) == (224, (224, 224))
    assert spec.resample == preprocess.get("interpolation", "bicubic")
    for shape in [(200, 300), (310, 250)]:
        assert _close_to_library(spec, transform, grey_picture(*shape)) < STEPS


@pytest.mark.parametrize("pretrained, problem", [
    ({"crop_mode": "border"}, r"pretrained_cfg.crop_mode 'border' is not supported"),
    ({"crop_pct": 0}, r"pretrained_cfg.crop_pct 0 is not a fraction in \(0, 1\]"),
    ({"crop_pct": "0.9"}, r"pretrained_cfg.crop_pct '0.9' is not a fraction"),
    ({"interpolation": "lanczos"}, r"pretrained_cfg.interpolation 'lanczos' is not supported: "
                                   r"one of \['nearest', 'bilinear', 'bicubic'\]"),
    ({"input_size": [3, 32, 48]}, r"a non-square input_size \[32, 48\] with crop_mode 'center'"),
])
def test_timm_settings_the_teacher_cannot_follow_are_errors_naming_the_file(
        tmp_path, pretrained, problem):
    folder, _ = _uni_folder(tmp_path, **pretrained)
    config = json.loads((folder / "config.json").read_text())
    if "input_size" in pretrained:            # the size comes from input_size, not img_size
        config["model_args"].pop("img_size")
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherLoadError, match=rf"^{folder}/config.json: {problem}"):
        load_teacher(registry.get_spec("uni"), str(folder))


def test_open_clip_longest_resize_mode_is_an_error_naming_the_file(tmp_path):
    folder = _biomedclip_folder(tmp_path)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["preprocess_cfg"]["resize_mode"] = "longest"
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherLoadError, match=rf"^{folder}/open_clip_config.json: "
                                               r"preprocess_cfg.resize_mode 'longest' is not "
                                               r"supported: 'shortest' or 'squash'"):
        load_teacher(registry.get_spec("biomedclip"), str(folder))


def test_the_registry_resizes_as_the_releases():
    """BiomedCLIP: open_clip's default (short side 224, bicubic, crop 224); RETFound: its
    authors' evaluation transform (short side 256, bicubic, crop 224); UNI: its model card
    (Resize(224), torchvision's bilinear; a centre crop of 224 for non-square tiles)."""
    got = {n: (s.resize_short, s.resample, s.size) for n in ("biomedclip", "retfound", "uni")
           for s in [registry.get_spec(n)]}
    assert got == {"biomedclip": (224, "bicubic", (224, 224)),
                   "retfound": (256, "bicubic", (224, 224)),
                   "uni": (224, "bilinear", (224, 224))}
    assert registry.get_spec("uni").preprocessing()["resize"] == (
        "short side to 224 (aspect kept), bilinear, antialiased; centre crop 224x224 "
        "(offset rounded half to even, as torchvision)")
