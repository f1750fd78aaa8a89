"""CLIP weights into our backbone: HF directories and OpenAI files (plain, TorchScript)."""

import json
import os

import jax
import numpy as np
import pytest

from mami_jax.convert import ConversionError, torch_io
from mami_jax.convert.clip import import_clip
from mami_jax.convert.mapping import backbone_entries, flatten_params
from mami_jax.models import MaMI
from tests.test_convert_mapping import random_params
from tests.test_model import tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def tiny_hf_clip(directory, seed=0, **overrides):
    """A tiny HF CLIPVisionModel with every weight random (not HF's init), saved to disk."""
    settings = dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, image_size=32, patch_size=8, num_channels=3,
                    hidden_act="quick_gelu", layer_norm_eps=1e-5)
    settings.update(overrides)
    config = transformers.CLIPVisionConfig(**settings)
    model = transformers.CLIPVisionModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith("layer_norm1.weight") or "layernorm.weight" in name \
                or "layrnorm.weight" in name or name.endswith("layer_norm2.weight") else 0.0
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(directory)
    return model


def test_hf_backbone_patch_tokens_match_clip_vision_model(tmp_path):
    directory = str(tmp_path / "hf_clip")
    hf = tiny_hf_clip(directory)
    assert os.path.exists(os.path.join(directory, "model.safetensors"))
    cfg = tiny_config(use_compa=False, use_slice_adapter=False)
    start = random_params(cfg, seed=5)
    result = import_clip(directory, cfg, start)
    assert result.source_format == "huggingface"
    assert sorted(result.kept) == ["head_fc1/bias", "head_fc1/kernel", "head_fc2/bias",
                                   "head_fc2/kernel"]
    assert "visual.ln_post.weight" in result.ignored

    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32, 3), dtype=np.float32)
    ours = jax.jit(MaMI(cfg).apply)({"params": result.params}, x)
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(x[:, 0].transpose(0, 3, 1, 2)))
    # last_hidden_state is the encoder output, before post_layernorm (which HF applies to
    # the pooled class token only); its patch tokens are our local map for T=1.
    want = out.last_hidden_state[:, 1:].numpy().reshape(2, 4, 4, 32)
    got = np.asarray(ours.local_map)
    err = np.abs(got - want).max() / np.abs(want).max()
    print(f"HF CLIP patch tokens: relative error {err:.2e}")
    assert err < 1e-5
    # post_layernorm would change them: the comparison is against the right tensor.
    post = hf.post_layernorm(out.last_hidden_state)[:, 1:].detach().numpy()
    assert np.abs(got - post.reshape(want.shape)).max() > 1e-2


def test_hf_bin_file_and_full_clip_model_keys(tmp_path):
    """pytorch_model.bin (weights_only) with CLIPModel-style extra keys is read too."""
    directory = str(tmp_path / "hf_bin")
    hf = tiny_hf_clip(directory, seed=1)
    os.remove(os.path.join(directory, "model.safetensors"))
    # As CLIPModel stores it: the vision tower under vision_model., plus a text tower.
    state = {"vision_model." + k: v for k, v in hf.state_dict().items()}
    state["text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 32)
    state["logit_scale"] = torch.tensor(2.0)
    torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    cfg = tiny_config()
    result = import_clip(directory, cfg, random_params(cfg))
    assert "logit_scale" in result.ignored
    assert "text_model.embeddings.token_embedding.weight" in result.ignored
    q = state["vision_model.encoder.layers.1.self_attn.q_proj.weight"].numpy()
    v_bias = state["vision_model.encoder.layers.1.self_attn.v_proj.bias"].numpy()
    qkv = result.params["block_1"]["attn"]["qkv"]
    np.testing.assert_array_equal(qkv["kernel"][:, :32], q.T)
    np.testing.assert_array_equal(qkv["bias"][64:], v_bias)


def test_hf_config_with_other_activation_or_width_is_rejected(tmp_path):
    directory = str(tmp_path / "gelu")
    tiny_hf_clip(directory, hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act='gelu'.*QuickGELU"):
        import_clip(directory, tiny_config(), random_params(tiny_config()))
    wide = str(tmp_path / "wide")
    tiny_hf_clip(wide, hidden_size=48, intermediate_size=192)
    with pytest.raises(ValueError, match="hidden_size=48 \\(model config wants 32\\)"):
        import_clip(wide, tiny_config(), random_params(tiny_config()))
    # the weights file itself, not its folder: its config.json is checked all the same (it
    # was skipped, and GELU weights imported as QuickGELU); without one beside it, refused
    weights = os.path.join(directory, "model.safetensors")
    with pytest.raises(ValueError, match="hidden_act='gelu'.*QuickGELU"):
        import_clip(weights, tiny_config(), random_params(tiny_config()))
    os.remove(os.path.join(directory, "config.json"))
    with pytest.raises(FileNotFoundError, match=r"Hugging Face CLIP weights without their "
                                                r"config\.json beside them"):
        import_clip(weights, tiny_config(), random_params(tiny_config()))


def openai_config(**overrides):
    """The smallest model config OpenAI-layout weights fit: OpenAI's ViTs have 64-wide
    heads (``clip.check_openai_config``), so width 64 and one head."""
    return tiny_config(**{"width": 64, "num_heads": 1, **overrides})


def openai_state_dict(cfg, seed=0):
    """OpenAI CLIP layout (visual.* + a text tower), fp16, every value random."""
    rng = np.random.default_rng(seed)
    state = {}
    for e in backbone_entries(cfg):
        state["visual." + e.theirs] = torch.from_numpy(
            rng.standard_normal(e.their_shape).astype(np.float16))
    c = cfg.width
    state["visual.ln_post.weight"] = torch.ones(c, dtype=torch.float16)
    state["visual.ln_post.bias"] = torch.zeros(c, dtype=torch.float16)
    state["visual.proj"] = torch.zeros(c, 16, dtype=torch.float16)
    state["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3 * 16, 16,
                                                                      dtype=torch.float16)
    state["token_embedding.weight"] = torch.zeros(10, 16, dtype=torch.float16)
    state["logit_scale"] = torch.tensor(4.6, dtype=torch.float16)
    return state


def torchscript_holding(state, path):
    """A TorchScript archive whose module has parameters under exactly these names."""
    class Root(torch.nn.Module):
        def forward(self, x):
            return x

    root = Root()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, torch.nn.Module())
            node = getattr(node, name)
        node.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    torch.jit.save(torch.jit.script(root), path)


def check_openai_landed(result, state, start, cfg):
    p = result.params
    f16 = lambda key: state[key].float().numpy()  # noqa: E731
    np.testing.assert_array_equal(p["patch_embed"]["kernel"],
                                  f16("visual.conv1.weight").transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["class_embedding"], f16("visual.class_embedding"))
    np.testing.assert_array_equal(p["pos_embedding"], f16("visual.positional_embedding"))
    np.testing.assert_array_equal(p["ln_pre"]["scale"], f16("visual.ln_pre.weight"))
    np.testing.assert_array_equal(
        p["block_1"]["attn"]["qkv"]["kernel"],
        f16("visual.transformer.resblocks.1.attn.in_proj_weight").T)
    np.testing.assert_array_equal(p["block_0"]["mlp"]["proj"]["bias"],
                                  f16("visual.transformer.resblocks.0.mlp.c_proj.bias"))
    assert p["block_0"]["mlp"]["fc"]["kernel"].dtype == np.float32
    # Everything else kept its initialisation, untouched.
    flat, before = flatten_params(p), flatten_params(start)
    assert len(result.loaded) == len(backbone_entries(cfg))
    for key in result.kept:
        np.testing.assert_array_equal(flat[key], before[key], err_msg=key)
    assert any(k.startswith("compa/") for k in result.kept)
    assert any("/adapter/" in k for k in result.kept)
    for key in ("visual.proj", "visual.ln_post.weight", "logit_scale", "token_embedding.weight",
                "transformer.resblocks.0.attn.in_proj_weight"):
        assert key in result.ignored, key


def test_openai_plain_file_and_torchscript_archive(tmp_path):
    cfg = openai_config()
    state = openai_state_dict(cfg)
    start = random_params(cfg, seed=2)
    plain = str(tmp_path / "ViT-tiny.pth")
    torch.save(state, plain)
    result = import_clip(plain, cfg, start)
    assert result.source_format == "openai"
    check_openai_landed(result, state, start, cfg)

    archive = str(tmp_path / "ViT-tiny-jit.pt")
    torchscript_holding(state, archive)
    with pytest.raises(torch_io.UnsafeCheckpointError, match="TorchScript"):
        import_clip(archive, cfg, start)
    result = import_clip(archive, cfg, start, allow_torchscript=True)
    check_openai_landed(result, state, start, cfg)


def test_openai_with_missing_or_misshaped_keys_lists_them(tmp_path):
    cfg = openai_config()
    state = openai_state_dict(cfg)
    del state["visual.transformer.resblocks.1.ln_2.bias"]
    state["visual.class_embedding"] = torch.zeros(40, dtype=torch.float16)
    state["visual.attnpool.c_proj.weight"] = torch.zeros(2, 2)
    path = str(tmp_path / "bad.pth")
    torch.save(state, path)
    with pytest.raises(ConversionError) as err:
        import_clip(path, cfg, random_params(cfg))
    e = err.value
    assert e.missing == ["transformer.resblocks.1.ln_2.bias"]
    assert e.extra == ["attnpool.c_proj.weight"]
    assert e.mismatched == [("class_embedding", (40,), (64,))]
    assert path in str(e)


def test_hf_directory_config_is_read_from_a_full_clip_config(tmp_path):
    """A CLIPModel config nests the vision settings under vision_config."""
    directory = str(tmp_path / "hf_clip")
    tiny_hf_clip(directory)
    with open(os.path.join(directory, "config.json")) as f:
        vision = json.load(f)
    vision["hidden_act"] = "gelu_new"
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"model_type": "clip", "vision_config": vision}, f)
    with pytest.raises(ValueError, match="gelu_new"):
        import_clip(directory, tiny_config(), random_params(tiny_config()))


def test_openai_weights_that_are_not_real_numbers_are_named(tmp_path):
    """A complex tensor was cast to float32, its imaginary part dropped without a word."""
    cfg = openai_config()
    state = openai_state_dict(cfg)
    state["visual.ln_pre.bias"] = torch.ones(cfg.width, dtype=torch.complex64)
    path = str(tmp_path / "complex.pth")
    torch.save(state, path)
    with pytest.raises(ConversionError) as err:
        import_clip(path, cfg, random_params(cfg))
    assert str(err.value) == (f"{path}: 1 weights are not tensors of real numbers:\n"
                              "  ln_pre.bias: complex64 values")
