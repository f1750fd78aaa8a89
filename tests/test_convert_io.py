"""Checkpoint files: released layout, safetensors, unsafe/truncated input, orbax directories."""

import json
import os
import pickle

import jax
import numpy as np
import pytest

from mami_jax.convert import ConversionError, to_torch_state_dict, torch_io
from mami_jax.convert.checkpoint_dir import load_params, resolve, save_params
from mami_jax.convert.mapping import flatten_params
from mami_jax.convert.official import load_official
from mami_jax.runtime.atomic_files import TEMP_MARK
from tests.test_convert_mapping import random_params
from tests.test_model import tiny_config

torch = pytest.importorskip("torch")


def assert_same_params(a, b):
    fa, fb = flatten_params(a), flatten_params(b)
    assert set(fa) == set(fb)
    for key in fa:
        np.testing.assert_array_equal(np.asarray(fa[key]), np.asarray(fb[key]), err_msg=key)


def released_style_file(path, cfg, params):
    """As the authors saved it: {"model": state_dict} with 'module.' on every key."""
    state = to_torch_state_dict(params, cfg, as_tensors=True)
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, path)


def test_released_layout_file_imports_with_prefix_removed_and_unused_reported(tmp_path):
    cfg = tiny_config()
    params = random_params(cfg)
    path = str(tmp_path / "released.pth")
    released_style_file(path, cfg, params)
    result = load_official(path, cfg)
    assert result.prefix_stripped and result.config_source == "argument"
    assert_same_params(result.params, params)
    r = result.report
    assert "ln_post.weight" in r.ignored and "fc.bias" in r.ignored
    assert "transformer.resblocks.1.lora_mlp_c_proj_b.l31.weight" in r.ignored
    assert len(r.loaded) + len(r.ignored) == len(to_torch_state_dict(params, cfg))
    assert r.num_params == sum(np.asarray(v).size for v in flatten_params(params).values())


def test_exported_pth_and_safetensors_load_strict_into_torch_module(tmp_path):
    from mami_jax.convert.torch_model import MaMITorch

    cfg = tiny_config(shift_input="router")
    params = random_params(cfg)
    state = to_torch_state_dict(params, cfg)
    extra = {"mami_config": cfg.to_json()}
    for name in ("export.pth", "export.safetensors"):
        path = str(tmp_path / name)
        torch_io.save_state_dict(path, state, extra=extra)
        loaded = torch_io.load_file(path)
        sd = loaded["model"] if name.endswith(".pth") else loaded
        MaMITorch(cfg).load_state_dict(sd, strict=True)
        # The embedded config is found again without being told.
        result = load_official(path)
        assert result.config_source == "file" and result.cfg.shift_input == "router"
        assert_same_params(result.params, params)
    assert not [f for f in os.listdir(tmp_path) if TEMP_MARK in f]  # atomic writes


def test_pickle_carrying_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = str(tmp_path / "evil.pth")
    with open(path, "wb") as f:
        pickle.dump({"model": {"class_embedding": [0.0, 1.0]}, "x": Payload()}, f, protocol=2)
    with pytest.raises(torch_io.UnsafeCheckpointError, match="carries code or objects") as err:
        load_official(path, tiny_config())
    assert path in str(err.value) and "system" in str(err.value)  # names what it refused
    assert not marker.exists()
    with open(path, "wb") as f:  # newest pickle protocol: refused as well
        pickle.dump({"x": Payload()}, f, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(torch_io.UnsafeCheckpointError, match="weights-only"):
        torch_io.load_file(path)
    assert not marker.exists()
    # Also in torch's own zip format.
    zpath = str(tmp_path / "evil_zip.pth")
    torch.save({"model": {}, "x": Payload()}, zpath)
    with pytest.raises(torch_io.UnsafeCheckpointError):
        torch_io.load_file(zpath)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_truncated_file_gives_a_clear_error_naming_the_file(tmp_path, fmt):
    """Cut anywhere, every format gives the same named CorruptCheckpointError."""
    cfg = tiny_config()
    state = to_torch_state_dict(random_params(cfg), cfg)
    path = str(tmp_path / ("ok.safetensors" if fmt == "safetensors" else "ok.pth"))
    if fmt == "safetensors":
        torch_io.save_state_dict(path, state)
    else:
        torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, path,
                   _use_new_zipfile_serialization=(fmt == "zip"))
    data = open(path, "rb").read()
    cut = str(tmp_path / ("cut" + os.path.splitext(path)[1]))
    torch_raised = set()
    for size in [1, 3] + [len(data) * i // 40 for i in range(1, 40)] + [len(data) - 1]:
        with open(cut, "wb") as f:
            f.write(data[:size])
        with pytest.raises(torch_io.CorruptCheckpointError,
                           match="truncated or corrupt") as err:
            load_official(cut, cfg)
        assert cut in str(err.value), size
        if fmt != "safetensors":
            try:
                torch.load(cut, weights_only=True)
            except Exception as e:  # noqa: BLE001 - what torch itself raises at this cut
                torch_raised.add(type(e).__name__)
    # What torch itself raises varies with the cut: the cases covered here.
    if fmt == "zip":
        assert "OSError" in torch_raised, torch_raised
    if fmt == "legacy":
        assert {"IndexError", "error", "RuntimeError"} <= torch_raised, torch_raised
    empty = str(tmp_path / "empty.pth")
    open(empty, "wb").close()
    with pytest.raises(torch_io.CorruptCheckpointError, match="empty"):
        torch_io.load_file(empty)


@pytest.mark.skipif(not os.path.isfile("/proc/self/maps"), reason="needs Linux's /proc")
def test_a_mapped_read_leaves_the_weights_on_disk(tmp_path):
    """``mmap`` (a look at the values beside the weights, e.g. the experiment config an
    export carries): the zip format's tensors are backed by the file, not read; the legacy
    format, which cannot be mapped, is read as before."""
    path = str(tmp_path / "export.pth")
    weight = torch.arange(12.0).reshape(3, 4)
    torch.save({"model": {"w": weight}, "note": "plain"}, path)
    def file_is_mapped():
        with open("/proc/self/maps") as f:
            return path in f.read()

    read = torch_io.load_file(path)
    assert not file_is_mapped()
    mapped = torch_io.load_file(path, mmap=True)
    assert mapped["note"] == read["note"] == "plain"
    assert file_is_mapped()
    torch.testing.assert_close(mapped["model"]["w"], weight)
    legacy = str(tmp_path / "legacy.pth")
    torch.save({"model": {"w": weight}}, legacy, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(torch_io.load_file(legacy, mmap=True)["model"]["w"], weight)


def test_torchscript_needs_explicit_opt_in(tmp_path):
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.arange(3.0))

        def forward(self, x):
            return x * self.w

    path = str(tmp_path / "model.pt")
    torch.jit.save(torch.jit.script(Holder()), path)
    assert torch_io.is_torchscript_archive(path)
    with pytest.raises(torch_io.UnsafeCheckpointError, match="allow_torchscript=True"):
        torch_io.load_file(path)
    sd = torch_io.load_file(path, allow_torchscript=True)
    np.testing.assert_array_equal(sd["w"].numpy(), [0, 1, 2])


def test_not_a_state_dict_is_named(tmp_path):
    path = str(tmp_path / "list.pth")
    torch.save([1, 2, 3], path)
    with pytest.raises(torch_io.CheckpointFileError, match="expected a dict with a 'model'"):
        load_official(path, tiny_config())


def test_other_width_file_names_mismatched_keys(tmp_path):
    wide = tiny_config(width=48, adapter_width=8)
    path = str(tmp_path / "wide.pth")
    released_style_file(path, wide, random_params(wide))
    with pytest.raises(ConversionError) as err:
        load_official(path, tiny_config())
    assert path in str(err.value)
    assert "conv1.weight: got (48, 3, 8, 8), expected (32, 3, 8, 8)" in str(err.value)


def test_a_file_without_config_of_another_size_says_what_its_weights_are(tmp_path):
    small = tiny_config()
    path = str(tmp_path / "small.pth")
    released_style_file(path, small, random_params(small))
    with pytest.raises(ConversionError) as err:
        load_official(path)       # no config given, none embedded: the released one
    assert str(err.value).startswith(
        f"{path} carries no model config and is not the released architecture (its weights "
        f"say width={small.width}, depth={small.depth}, patch_size={small.patch_size}, "
        f"image_size={small.image_size}; released: width=768, depth=12, patch_size=16, "
        "image_size=224): give the config it was made with (CLI: --model-config FILE.json")
    assert err.value.mismatched          # the full lists are kept
    assert load_official(path, small).report.num_params > 0


def test_orbax_directory_round_trip_and_atomic_refusal_to_overwrite(tmp_path):
    cfg = tiny_config(use_codebook=False, rank=2)
    params = random_params(cfg)
    out = str(tmp_path / "ckpt")
    save_params(out, params, cfg)
    assert sorted(os.listdir(out)) == ["model_config.json", "params"]
    back, cfg2 = load_params(out)
    assert cfg2 == cfg and cfg2.rank == 2 and not cfg2.use_codebook
    assert_same_params(back, params)
    with pytest.raises(FileExistsError, match="exists"):
        save_params(out, params, cfg)
    assert [f for f in os.listdir(tmp_path)] == ["ckpt"]  # no staging directory left behind
    save_params(out, params, cfg, overwrite=True)


def test_trainer_layout_step_and_workdir(tmp_path):
    """WORKDIR/checkpoints/<step>/params (CheckpointManager) + WORKDIR/model_config.json."""
    import orbax.checkpoint as ocp

    cfg = tiny_config()
    params = random_params(cfg)
    older = jax.tree_util.tree_map(lambda a: np.zeros_like(a), params)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "model_config.json").write_text(cfg.to_json())
    manager = ocp.CheckpointManager(str(workdir / "checkpoints"), item_names=("params", "opt"))
    for step, tree in ((5, older), (20, params)):
        manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(tree),
            opt=ocp.args.StandardSave({"count": np.array(step)})))
    manager.wait_until_finished()
    manager.close()
    got, cfg2 = load_params(str(workdir / "checkpoints" / "20"))
    assert_same_params(got, params)
    assert cfg2 == cfg
    got5, _ = load_params(str(workdir / "checkpoints" / "5"))
    assert_same_params(got5, older)
    _, _, layout = resolve(str(workdir))
    assert layout == "trainer workdir (step 20)"
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        resolve(str(tmp_path))


def test_bad_model_config_json_is_named(tmp_path):
    cfg = tiny_config()
    out = str(tmp_path / "ckpt")
    save_params(out, random_params(cfg), cfg)
    with open(os.path.join(out, "model_config.json"), "w") as f:
        json.dump({"widht": 32}, f)
    with pytest.raises(ValueError, match="model_config.json: not a MaMI model config"):
        load_params(out)


def test_a_safetensors_file_is_read_as_one_whatever_its_name(tmp_path):
    """A safetensors file named without its extension (``model_v2``, a ``.pt`` name) went
    to torch.load, whose error called it 'not a weights-only checkpoint (it was not written
    by torch.save ...)'. Its header says what it is: read as safetensors, its embedded
    config too; cut short, it is named a truncated safetensors file. The writer still
    follows the name, whatever a file of that name holds."""
    cfg = tiny_config()
    params = random_params(cfg)
    state = to_torch_state_dict(params, cfg)
    named = str(tmp_path / "m.safetensors")
    torch_io.save_state_dict(named, state, extra={"mami_config": cfg.to_json()})
    data = open(named, "rb").read()
    for name in ("model_v2", "m.pt", "m.pth"):
        path = str(tmp_path / name)
        open(path, "wb").write(data)
        assert torch_io.is_safetensors(path) and not torch_io.safetensors_name(path)
        loaded = load_official(path)
        assert loaded.config_source == "file" and loaded.cfg == cfg
        assert_same_params(loaded.params, params)
    cut = str(tmp_path / "cut_v2")
    for size in (9, 200, len(data) - 1):
        open(cut, "wb").write(data[:size])
        with pytest.raises(torch_io.CorruptCheckpointError,
                           match=rf"^{cut}: truncated or corrupt safetensors file"):
            load_official(cut)
    # A torch file (zip or legacy pickle) is not taken for one, whatever its name.
    for fmt in ("zip", "legacy"):
        path = str(tmp_path / f"{fmt}_v2")
        torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()},
                    "mami_config": cfg.to_json()}, path,
                   _use_new_zipfile_serialization=(fmt == "zip"))
        assert not torch_io.is_safetensors(path)
        assert_same_params(load_official(path).params, params)
    # Writing over a safetensors file under a .pth name writes a torch file, as named.
    over = str(tmp_path / "m.pth")
    torch_io.save_state_dict(over, state)
    assert not torch_io.is_safetensors(over)
    assert sorted(torch.load(over, weights_only=True)) == ["model"]
