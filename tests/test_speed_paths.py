"""The accelerator and speed paths of the model: attention implementation, remat policy,
bfloat16 compute, the patch embedding as a matrix multiply; and the speed benchmarks'
arithmetic and command lines (tiny models; nothing here is timed)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mami_jax.models import MaMI
from mami_jax.models.layers import PatchEmbed
from mami_jax.models.vit import attention_implementation
from tests.test_model import images, init, randomize, tiny_config


def test_attention_auto_is_cudnn_only_on_gpu_in_half_precision(monkeypatch):
    assert attention_implementation("auto", jnp.float32) == "xla"  # this CPU
    assert attention_implementation("xla", jnp.bfloat16) == "xla"
    assert attention_implementation("cudnn", jnp.float32) == "cudnn"  # forced, even if it fails
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attention_implementation("auto", jnp.bfloat16) == "cudnn"
    assert attention_implementation("auto", jnp.float16) == "cudnn"
    assert attention_implementation("auto", jnp.float32) == "xla"  # cuDNN takes no float32


def test_attention_setting_reaches_dot_product_attention(monkeypatch):
    seen = []
    real = jax.nn.dot_product_attention

    def spy(*args, implementation=None, **kwargs):
        seen.append(implementation)
        return real(*args, implementation=implementation, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    x = images((1, 1, 32, 32, 3))
    model, params = init(tiny_config(attention="xla"), (1, 1, 32, 32, 3))
    params = randomize(params)
    seen.clear()
    xla = jax.jit(model.apply)({"params": params}, x).embedding
    assert seen == ["xla", "xla"]  # one per block, at trace time
    auto = jax.jit(MaMI(tiny_config()).apply)({"params": params}, x).embedding
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(xla))
    with pytest.raises(ValueError, match="attention='flash' not in"):
        MaMI(tiny_config(attention="flash")).apply({"params": params}, x)


def test_remat_policy_is_applied_and_gradients_unchanged():
    x = images((2, 2, 32, 32, 3))
    model, params = init(tiny_config(), (2, 2, 32, 32, 3))
    params = randomize(params)
    loss = lambda m: lambda p: m.apply({"params": p}, x).embedding.sum()  # noqa: E731
    g_ref = jax.jit(jax.grad(loss(model)))(params)
    remat = MaMI(tiny_config(remat=True, remat_policy="dots_with_no_batch_dims_saveable"))
    g = jax.jit(jax.grad(loss(remat)))(params)
    for a, b in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    jaxpr = str(jax.make_jaxpr(loss(remat))(params))
    assert jaxpr.count("policy=DotsSaveable(only_if_no_batch_dims=True)") == 2  # per block
    with pytest.raises(ValueError, match="remat_policy='everything' not in"):
        MaMI(tiny_config(remat=True, remat_policy="everything")).apply({"params": params}, x)


def test_bfloat16_multiplies_in_bfloat16_with_float32_parameters_and_gradients():
    x = images((1, 2, 32, 32, 3))
    model, params = init(tiny_config(dtype="bfloat16"), (1, 2, 32, 32, 3))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float32")}
    loss = lambda p: model.apply({"params": p}, x).embedding.sum()  # noqa: E731
    grads = jax.eval_shape(jax.grad(loss), params)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(grads)} == {jnp.dtype("float32")}
    hlo = jax.jit(lambda p: model.apply({"params": p}, x).embedding).lower(params).as_text()
    dots = [line for line in hlo.splitlines() if "stablehlo.dot_general" in line]
    half = [line for line in dots if "xbf16>" in line.split("->")[0]]
    # Every block matmul (patch embedding, qkv, attention, out, MLP, adapters, deltas)
    # reads bfloat16; only the head (2 dense layers in float32) does not.
    assert len(dots) > 20 and len(dots) - len(half) <= 2, (len(dots), len(half))


def test_patch_embed_matches_conv_and_keeps_its_parameter():
    x = jax.random.normal(jax.random.key(0), (2, 32, 48, 3))
    conv = nn.Conv(16, (8, 8), strides=(8, 8), padding="VALID", use_bias=False)
    ours = PatchEmbed(16, 8)
    p_conv = conv.init(jax.random.key(1), x)
    p_ours = ours.init(jax.random.key(1), x)
    assert jax.tree_util.tree_structure(p_conv) == jax.tree_util.tree_structure(p_ours)
    np.testing.assert_array_equal(np.asarray(p_ours["params"]["kernel"]),
                                  np.asarray(p_conv["params"]["kernel"]))  # same init
    want = conv.apply(p_conv, x)
    got = ours.apply(p_conv, x)
    assert got.shape == want.shape == (2, 4, 6, 16)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("slices", [1, 3])
def test_slice_adapter_adapts_patch_tokens_only(slices):
    """The adapter runs on every token and masks the class token's delta (no slicing of
    the patch tokens): patch tokens as in the adapter's definition, class token as is."""
    from mami_jax.models.adapters import SliceAdapter
    b, length, c, width = 2, 5, 8, 4
    x = jax.random.normal(jax.random.key(0), (b * slices, length, c))
    module = SliceAdapter(width)
    params = module.init(jax.random.key(1), x, slices)["params"]
    params = jax.tree_util.tree_map(
        lambda a: a + 0.3 * jax.random.normal(jax.random.key(2), a.shape), params)
    got = np.asarray(module.apply({"params": params}, x, slices))
    p = jax.tree_util.tree_map(np.asarray, params)
    xs = np.asarray(x)
    h = (xs[:, 1:] @ p["fc1"]["kernel"] + p["fc1"]["bias"]).reshape(b, slices, length - 1, width)
    hp = np.pad(h, ((0, 0), (1, 1), (0, 0), (0, 0)))
    conv = sum(p["conv_kernel"][j] * hp[:, j:j + slices] for j in range(3)) + p["conv_bias"]
    delta = conv.reshape(b * slices, length - 1, width) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    np.testing.assert_array_equal(got[:, 0], xs[:, 0])
    np.testing.assert_allclose(got[:, 1:], xs[:, 1:] + delta, rtol=1e-5, atol=1e-5)


def test_mfu_arithmetic_and_peak_table():
    from benchmarks import mfu
    # 100 TFLOP per step in 0.5 s on 2 devices of 250 TFLOP/s: 40%.
    assert mfu.utilisation(100e12, 0.5, 250.0, 2) == pytest.approx(0.4)
    assert mfu.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert mfu.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert mfu.peak_tflops("TPU v5 lite", "bfloat16") == 197.0
    assert mfu.peak_tflops("cpu", "float32") is None
    # "l4" is no L40S (it was given the L4's 121), "a10" no A100 nor A10G
    assert mfu.peak_tflops("NVIDIA L40S", "bfloat16") == 362.0
    assert mfu.peak_tflops("NVIDIA L4", "bfloat16") == 121.0
    assert mfu.peak_tflops("NVIDIA A10G", "bfloat16") is None
    assert mfu.peak_tflops("NVIDIA H100 NVL", "bfloat16") == 835.0
    # float32 on a GPU may run as TF32: no guess
    assert mfu.peak_tflops("NVIDIA H100 80GB HBM3", "float32") is None


def test_mfu_counts_the_executed_step_over_every_device(tmp_path):
    """XLA counts the partitioned step one device runs: divided by the peak of all devices
    it gave an HFU eight times too low here, below the MFU, which cannot be."""
    import jax
    from benchmarks import mfu
    args = mfu.parse_args(["--preset", "tiny", "--batch", "16", "--steps", "1",
                           "--peak-tflops", "1", "--json", str(tmp_path / "mfu.json")])
    r = mfu.run(args)
    assert r["devices"] == jax.device_count() == 8
    assert r["xla_gflops_per_step"] == pytest.approx(8 * r["xla_gflops_per_device"])
    assert r["hfu"] >= r["mfu"] > 0


def test_speed_vs_torch_tiny_inference_writes_json(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from benchmarks import speed_vs_torch
    out = tmp_path / "speed.json"
    threads = torch.get_num_threads()
    try:
        report = speed_vs_torch.run(speed_vs_torch.parse_args(
            ["--preset", "tiny", "--parts", "inference", "--rounds", "1", "--batch", "1",
             "--series-slices", "2", "--threads", "1", "--json", str(out)]))
    finally:
        torch.set_num_threads(threads)
    saved = json.loads(out.read_text())
    assert saved["results"].keys() == report["results"].keys() == {"inference T=1",
                                                                   "inference T=2"}
    assert saved["settings"]["torch_threads"] == 1
    for part in saved["results"].values():
        assert part["embedding_rel_err"] < 1e-5  # the same function on both sides
        assert part["flax"]["peak_mib"] > 0 and part["torch"]["peak_mib"] > 0
        assert part["flax"]["ratio_to_torch"] > 0
    assert "flax/torch" in capsys.readouterr().out


@pytest.mark.parametrize("module,argv,needle", [
    ("speed_vs_torch", ["--parts", "inference,bogus"], "--parts"),
    ("speed_vs_torch", ["--rounds", "0"], "--rounds must be at least 1"),
    ("mfu", ["--batch", "0"], "--batch must be at least 1"),
    ("mfu", ["--num-classes", "0"], "--num-classes must be at least 1"),
])
def test_benchmarks_refuse_bad_flags_with_one_error_line(module, argv, needle, capsys):
    import importlib
    mod = importlib.import_module(f"benchmarks.{module}")
    with pytest.raises(SystemExit) as exit_info:
        mod.parse_args(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in last and needle in last, last


def test_input_speed_refuses_fewer_patients_than_a_batch_holds(monkeypatch, capsys):
    """With fewer patients than P the sampler repeats images within a batch, and the rate
    counted every repeat: 2 million images/s came out of two cores."""
    from benchmarks import input_speed
    monkeypatch.setattr("sys.argv", ["input_speed.py", "--patients", "4"])
    with pytest.raises(SystemExit) as exit_info:
        input_speed.main()
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and \
        "--patients 4: at least the 16 patients of a batch" in last
