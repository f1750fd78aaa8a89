"""Every bad input to ``python -m mami_jax.convert`` ends as one ``error:`` line, no traceback."""

import asyncio
import json
import os
import pickle
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from mami_jax.convert import to_torch_state_dict
from mami_jax.convert.__main__ import main
from mami_jax.runtime.error_line import one_line
from mami_jax.runtime.orbax_noise import quiet_orbax_failure_noise
from mami_jax.convert.checkpoint_dir import save_params
from tests.file_trees import tree_digest
from tests.test_convert_io import released_style_file
from tests.test_convert_mapping import random_params
from tests.test_model import tiny_config

torch = pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_error(capsys, *argv, code=1):
    """Runs the CLI; -> its single stderr line (asserting there is exactly one)."""
    try:
        got = main(list(argv))
    except SystemExit as e:   # argparse
        got = e.code
    out, err = capsys.readouterr()
    assert got == code, (got, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_errors")
    cfg = tiny_config()
    good = str(tmp / "good.pth")
    released_style_file(good, cfg, random_params(cfg))
    data = open(good, "rb").read()
    cut = str(tmp / "cut.pth")
    with open(cut, "wb") as f:
        f.write(data[:len(data) // 20])
    cfg_json = str(tmp / "tiny.json")
    with open(cfg_json, "w") as f:
        f.write(cfg.to_json())
    return tmp, cfg, good, cut, cfg_json


def write_json(path, values):
    with open(path, "w") as f:
        json.dump(values, f)
    return str(path)


def test_missing_corrupt_and_unsafe_files(files, capsys, tmp_path):
    tmp, _, _, cut, cfg_json = files
    out = str(tmp_path / "o")
    line = one_error(capsys, "import-official", "--pth", str(tmp_path / "nope.pth"), "--out", out)
    assert line == f"error: checkpoint file not found: {tmp_path / 'nope.pth'}"
    line = one_error(capsys, "import-official", "--pth", cut, "--out", out,
                     "--model-config", cfg_json)
    assert cut in line and "truncated or corrupt" in line
    # a file given where a folder is read: it was "checkpoint directory not found"
    line = one_error(capsys, "export-torch", "--checkpoint", cut, "--out", out + ".pth")
    assert line.startswith(f"error: {os.path.abspath(cut)}: a file, not a checkpoint folder")

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    evil = str(tmp_path / "evil.pth")
    with open(evil, "wb") as f:
        pickle.dump({"model": {}, "x": Payload()}, f, protocol=2)
    line = one_error(capsys, "import-official", "--pth", evil, "--out", out)
    assert evil in line and "carries code or objects" in line
    assert not os.path.exists(out)


def test_conversion_error_listing_becomes_one_line(files, capsys, tmp_path):
    _, _, good, _, _ = files
    # No config given and none embedded: the released ViT-B/16 architecture, which the tiny
    # file does not fit. The key listing is kept, on the same line.
    line = one_error(capsys, "import-official", "--pth", good, "--out", str(tmp_path / "o"))
    assert good in line
    assert ("with the wrong shape: knowledge_pool: got (1, 4, 8), expected (1, 16, 48), "
            "class_embedding: got (32,), expected (768,), ") in line
    assert "; 740 missing: transformer.resblocks.2.linear_a_q_static, " in line


def test_bad_model_configs_are_named(files, capsys, tmp_path):
    _, cfg, good, _, _ = files
    out = str(tmp_path / "o")
    values = json.loads(cfg.to_json())
    cases = [
        (str(tmp_path / "absent.json"), "No such file or directory"),
        (write_json(tmp_path / "zero.json", dict(values, width=0)),
         "zero.json: invalid model config: width=0 must be a positive integer"),
        (write_json(tmp_path / "typo.json", dict(values, widht=32)),
         "typo.json: not a MaMI model config"),
        (write_json(tmp_path / "old.json", {k: v for k, v in values.items()
                                            if k != "shift_input"}),
         "old.json: model config lacks 'shift_input'"),
    ]
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{width: 3")
    cases.append((str(bad_json), "broken.json: not valid JSON"))
    for config, needle in cases:
        line = one_error(capsys, "import-official", "--pth", good, "--out", out,
                         "--model-config", config)
        assert needle in line, (needle, line)
    line = one_error(capsys, "import-clip", "--source", str(tmp_path), "--out", out,
                     "--model-config", cases[1][0])
    assert "width=0" in line


def test_bad_checkpoint_directories_and_outputs(files, capsys, tmp_path):
    _, cfg, good, _, cfg_json = files
    line = one_error(capsys, "export-torch", "--checkpoint", str(tmp_path / "none"),
                     "--out", str(tmp_path / "x.pth"))
    assert "checkpoint directory not found" in line
    # A converter checkpoint whose params item is garbage (orbax's own error, one line).
    broken = tmp_path / "broken"
    (broken / "params").mkdir(parents=True)
    (broken / "params" / "_METADATA").write_text("not json")
    (broken / "model_config.json").write_text(cfg.to_json())
    line = one_error(capsys, "export-torch", "--checkpoint", str(broken), "--out",
                     str(tmp_path / "x.pth"))
    assert line.startswith(f"error: {broken / 'params'}: cannot read the orbax params item")
    assert not os.path.exists(tmp_path / "x.pth")
    # The output exists: refused before any conversion.
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, random_params(cfg), cfg)
    line = one_error(capsys, "import-official", "--pth", good, "--out", ckpt,
                     "--model-config", cfg_json)
    assert "exists" in line and "--overwrite" in line
    line = one_error(capsys, "import-official", "--pth", good, "--out", str(tmp_path),
                     "--model-config", cfg_json, "--overwrite")
    assert f"{tmp_path} exists and is not a converter checkpoint" in line
    # An HF directory without config.json.
    line = one_error(capsys, "import-clip", "--source", str(tmp_path), "--out",
                     str(tmp_path / "c"), "--model-config", cfg_json)
    assert "no config.json" in line


def test_bad_arguments_are_one_line_with_status_2(capsys):
    line = one_error(capsys, "export-torch", "--out", "x.pth", code=2)
    assert "the following arguments are required: --checkpoint" in line
    line = one_error(capsys, "convert-everything", code=2)
    assert "invalid choice" in line
    line = one_error(capsys, "import-clip", "--source", "a", "--out", "b", "--seed", "x",
                     code=2)
    assert "--seed" in line


def test_one_line_keeps_titles_and_items():
    assert one_line("head\n2 missing:\n  a\n  b\n1 unexpected:\n  c") == \
        "head; 2 missing: a, b; 1 unexpected: c"
    assert one_line("plain") == "plain"


def test_real_process_prints_one_line_and_no_traceback(files, tmp_path):
    """A fresh interpreter: no traceback, and no library log lines (orbax warns through
    absl when it reads a damaged checkpoint)."""
    _, cfg, _, _, _ = files
    broken = tmp_path / "broken"
    (broken / "params").mkdir(parents=True)
    (broken / "params" / "_METADATA").write_text("not json")
    (broken / "model_config.json").write_text(cfg.to_json())
    proc = subprocess.run([sys.executable, "-m", "mami_jax.convert", "export-torch",
                           "--checkpoint", str(broken), "--out", str(tmp_path / "x.pth")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: {broken / 'params'}: cannot read the orbax params item (JSONDecodeError: "
        "Expecting value: line 1 column 1 (char 0))"]
    assert proc.stdout == ""


# ------------------------------------------------- outputs never replace inputs


def trainer_workdir(path, cfg, step=7):
    """A trainer WORKDIR: model_config.json, config.json and checkpoints/<step>/params."""
    import orbax.checkpoint as ocp
    os.makedirs(path)
    with open(os.path.join(path, "model_config.json"), "w") as f:
        f.write(cfg.to_json())
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write('{"seed": 0}')
    manager = ocp.CheckpointManager(os.path.join(path, "checkpoints"), item_names=("params",))
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(random_params(cfg))))
    manager.wait_until_finished()
    manager.close()
    return str(path)


def not_loaded(*_, **__):
    raise AssertionError("the output was not checked before the checkpoint was read")


def test_export_never_writes_into_the_folder_it_reads(files, capsys, tmp_path, monkeypatch):
    """``--out RUN/config.json`` wrote the weights over the run's config (rc 0). Every
    --out inside the run folder is refused, for the workdir and for a step, links
    resolved, even with --overwrite, before the checkpoint is read; nothing changes."""
    _, cfg, _, _, _ = files
    run = trainer_workdir(str(tmp_path / "run"), cfg)
    os.symlink(run, tmp_path / "link")
    step = os.path.join(run, "checkpoints", "7")
    before = tree_digest(run)
    monkeypatch.setattr("mami_jax.convert.__main__.load_params", not_loaded)
    for checkpoint in (run, step, str(tmp_path / "link")):
        for out in ("config.json", "model_config.json", "checkpoints/7/m.pth",
                    "new.safetensors", ""):
            out = os.path.join(str(tmp_path / "link"), out) if out else run
            line = one_error(capsys, "export-torch", "--checkpoint", checkpoint, "--out", out,
                             "--allow-non-released-shift", "--overwrite")
            read_from = str(tmp_path / "link") if checkpoint.endswith("link") else run
            assert line == (f"error: --out {out}: is or lies inside {read_from}, the folder "
                            f"--checkpoint {checkpoint} is read from; an export never "
                            "writes into its input (refused even with --overwrite). Choose "
                            "a path outside it")
    assert tree_digest(run) == before
    assert sorted(os.listdir(run)) == ["checkpoints", "config.json", "model_config.json"]


def test_export_replaces_an_existing_file_only_with_overwrite(files, capsys, tmp_path,
                                                              monkeypatch):
    """An existing --out was overwritten without asking; now it needs --overwrite, checked
    before the checkpoint is read. A folder is refused whatever the flags: no file can
    replace it, and a name that is not a model file's (``--out manifest.csv --overwrite``
    replaced the manifest with weights). (That --overwrite then replaces the file:
    test_convert_cli.py.)"""
    _, cfg, _, _, _ = files
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, random_params(cfg), cfg)
    monkeypatch.setattr("mami_jax.convert.__main__.load_params", not_loaded)
    out = tmp_path / "model.pth"
    out.write_bytes(b"an earlier export")
    line = one_error(capsys, "export-torch", "--checkpoint", ckpt, "--out", str(out))
    assert line == f"error: --out {out} exists; choose a new file name or pass --overwrite"
    assert out.read_bytes() == b"an earlier export"
    folder = tmp_path / "exports"
    folder.mkdir()
    line = one_error(capsys, "export-torch", "--checkpoint", ckpt, "--out", str(folder),
                     "--overwrite")
    assert line == (f"error: --out {folder}: is a folder; give a file name (FILE.pth or "
                    "FILE.safetensors)")
    assert os.listdir(folder) == []
    # A name without a model file's extension, a slip for another path: never replaced.
    table = tmp_path / "manifest.csv"
    table.write_text("image_id,patient_id\n")
    line = one_error(capsys, "export-torch", "--checkpoint", ckpt, "--out", str(table),
                     "--overwrite")
    assert line == (f"error: --out {table}: an export is a FILE.pth or FILE.safetensors (.pt "
                    "is read as .pth); give a name with one of those extensions")
    assert table.read_text() == "image_id,patient_id\n"


def test_importers_never_replace_a_folder_holding_their_input(files, capsys, tmp_path):
    """``import-official --pth CKPT/in.pth --out CKPT --overwrite`` replaced the folder and
    deleted in.pth. An --out that is or holds an input (links resolved) is refused even
    with --overwrite, for every input flag of both importers; nothing is changed."""
    _, cfg, good, _, cfg_json = files
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, random_params(cfg), cfg)
    shutil.copy(good, os.path.join(ckpt, "in.pth"))
    os.symlink(ckpt, tmp_path / "link")
    link = str(tmp_path / "link")
    before = tree_digest(ckpt)

    def refused(flag, path, out, *argv):
        line = one_error(capsys, *argv, "--out", out, "--overwrite")
        assert line == (f"error: --out {out}: is or holds the input {flag} {path}; replacing "
                        "it would delete that input (refused even with --overwrite). Choose "
                        "another --out")

    for pth, out in ((f"{ckpt}/in.pth", ckpt), (f"{link}/in.pth", ckpt),
                     (f"{ckpt}/in.pth", link)):
        refused("--pth", pth, out, "import-official", "--pth", pth, "--model-config", cfg_json)
    config = f"{link}/model_config.json"
    refused("--model-config", config, ckpt, "import-official", "--pth", good,
            "--model-config", config)
    refused("--init-from", link, ckpt, "import-clip", "--source", str(tmp_path / "clip.pt"),
            "--init-from", link)
    refused("--source", f"{ckpt}/in.pth", link, "import-clip", "--source", f"{ckpt}/in.pth",
            "--model-config", cfg_json)
    assert tree_digest(ckpt) == before
    assert sorted(os.listdir(ckpt)) == ["in.pth", "model_config.json", "params"]


def _closed_loop_error():
    """What tensorstore reports when a read finishes after orbax closed its event loop."""
    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(lambda: None)
    except RuntimeError as e:
        return e
    raise AssertionError("a closed loop accepted a callback")


def _unraisable(error):
    return types.SimpleNamespace(exc_type=type(error), exc_value=error,
                                 exc_traceback=error.__traceback__, err_msg=None, object=None)


def test_reads_finishing_after_the_failure_print_nothing(monkeypatch):
    """A truncated data file: orbax closes its event loop at the first failed read, and each
    read still running then reports ``Event loop is closed`` as an unraisable exception
    (2-3 extra tracebacks after the ``error:`` line). The command line's hook drops exactly
    those and passes on everything else."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    quiet_orbax_failure_noise()
    sys.unraisablehook(_unraisable(_closed_loop_error()))
    assert seen == []
    try:
        raise RuntimeError("Event loop is closed")  # same text, not from a closed loop
    except RuntimeError as e:
        elsewhere = _unraisable(e)
    other = _unraisable(ValueError("another failure"))
    sys.unraisablehook(elsewhere)
    sys.unraisablehook(other)
    assert seen == [elsewhere, other]


def test_truncated_data_is_one_line_in_a_real_process(files, tmp_path):
    _, cfg, _, _, _ = files
    ckpt = str(tmp_path / "ckpt")
    save_params(ckpt, random_params(cfg), cfg)
    data = [os.path.join(here, name) for here, _, names in os.walk(ckpt) for name in names
            if os.path.basename(here) == "d" and "ocdbt.process_" in here]
    assert data
    for path in data:
        os.truncate(path, os.path.getsize(path) // 2)
    proc = subprocess.run([sys.executable, "-m", "mami_jax.convert", "export-torch",
                           "--checkpoint", ckpt, "--out", str(tmp_path / "x.pth")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {ckpt}/params: cannot read the orbax params item ")
    assert not os.path.exists(tmp_path / "x.pth")


def test_unretrieved_sibling_read_failures_are_not_logged(caplog):
    """The other reads of a truncated checkpoint fail too; asyncio logged each of them
    ("Task exception was never retrieved" and a traceback) after the one ``error:`` line,
    now and then (when they finished before orbax closed its loop). Other unretrieved
    failures are still logged."""
    import asyncio
    import gc

    async def fail(message):
        raise ValueError(message)

    def unretrieved(message):
        loop = asyncio.new_event_loop()
        task = loop.create_task(fail(message))
        loop.run_until_complete(asyncio.sleep(0.01))
        loop.close()
        del task
        gc.collect()

    quiet_orbax_failure_noise()
    with caplog.at_level("ERROR", logger="asyncio"):
        unretrieved('OUT_OF_RANGE: Error reading "a/0.0" in OCDBT database at local file "x"')
        assert not [r for r in caplog.records if r.name == "asyncio"]
        unretrieved("a bug elsewhere")
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert logged.startswith("Task exception was never retrieved") and "a bug elsewhere" in logged


def test_the_torch_module_refuses_images_the_flax_model_refuses():
    """36 px with 8 px patches: the convolution dropped the last 4 rows and columns and
    returned embeddings of the cropped image, where the Flax model names the shape."""
    import torch
    from mami_jax.convert.torch_model import MaMITorch
    module = MaMITorch(tiny_config())
    with pytest.raises(ValueError, match=r"^MaMITorch expects images of shape .* multiples "
                                         r"of patch_size=8; got H=36, W=36"):
        module(torch.zeros(1, 1, 36, 36, 3))
    with pytest.raises(ValueError, match=r"got 1 channels"):
        module(torch.zeros(1, 1, 32, 32, 1))
    assert module(torch.zeros(1, 1, 32, 32, 3))["embedding"].shape[0] == 1


# ------------------------------------------------- what a file holds is checked at import


def test_an_embedded_experiment_config_that_is_no_config_is_refused_at_import(files, capsys,
                                                                             tmp_path):
    """The .pth's run config was copied to config.json unread: junk text was imported
    (exit 0) and only the later export-torch of the folder failed, naming config.json."""
    _, cfg, _, _, _ = files
    state = to_torch_state_dict(random_params(cfg), cfg, as_tensors=True)
    out = str(tmp_path / "o")
    for name, text, says in [
            ("junk.pth", "this is not a config",
             "not valid JSON (Expecting value: line 1 column 1 (char 0))"),
            ("list.pth", "[1, 2]", "expected a JSON object of config values, got list")]:
        pth = str(tmp_path / name)
        torch.save({"model": state, "mami_config": cfg.to_json(),
                    "mami_experiment_config": text}, pth)
        line = one_error(capsys, "import-official", "--pth", pth, "--out", out)
        assert line == f"error: {pth}:mami_experiment_config: {says}"
        assert not os.path.exists(out)


def test_a_used_key_holding_no_real_tensor_is_named(files, capsys, tmp_path):
    """An int under a used key ended as 'error: AttributeError: 'int' object has no
    attribute 'shape''; a complex tensor was imported, its imaginary part dropped."""
    _, cfg, _, _, _ = files
    out = str(tmp_path / "o")
    for name, value, says in [
            ("int.pth", 3, "class_embedding: int, not a tensor"),
            ("complex.pth", torch.ones(cfg.width, dtype=torch.complex64),
             "class_embedding: complex64 values")]:
        state = to_torch_state_dict(random_params(cfg), cfg, as_tensors=True)
        state["class_embedding"] = value
        pth = str(tmp_path / name)
        torch.save({"model": state, "mami_config": cfg.to_json()}, pth)
        line = one_error(capsys, "import-official", "--pth", pth, "--out", out)
        assert line == f"error: {pth}: 1 weights are not tensors of real numbers: {says}"
        assert not os.path.exists(out)


def test_hugging_face_json_files_that_are_no_objects_are_named(files, capsys, tmp_path):
    """A cut config.json said only 'Expecting property name ...'; one holding a list,
    'AttributeError: 'list' object has no attribute 'get''; an index without weight_map,
    'KeyError: weight_map'."""
    pytest.importorskip("transformers")
    from tests.test_convert_clip import tiny_hf_clip
    _, _, _, _, cfg_json = files
    hf = str(tmp_path / "hf")
    tiny_hf_clip(hf)
    capsys.readouterr()              # transformers' progress bar
    out = str(tmp_path / "o")
    cases = [
        ("config.json", '{"hidden_size": 32,', "not valid JSON (Expecting property name "
         "enclosed in double quotes: line 1 column 20 (char 19))"),
        ("config.json", "[1, 2]", "expected a JSON object of model config values, got list"),
        ("config.json", '{"vision_config": [1]}',
         "'vision_config' is a list, not a JSON object of the vision tower's settings"),
        ("model.safetensors.index.json", '{"metadata": {}}',
         "no 'weight_map' object (state-dict key -> weight file name); not a Hugging Face "
         "shard index")]
    for i, (name, text, says) in enumerate(cases):
        source = str(tmp_path / f"hf{i}")
        shutil.copytree(hf, source)
        with open(os.path.join(source, name), "w") as f:
            f.write(text)
        line = one_error(capsys, "import-clip", "--source", source, "--out", out,
                         "--model-config", cfg_json)
        assert line == f"error: {os.path.join(source, name)}: {says}"
        assert not os.path.exists(out)


def test_openai_clip_weights_under_another_eps_are_refused_and_other_heads_warned(
        capsys, tmp_path):
    """The Hugging Face route refused a config whose layer_norm_eps or heads differ from
    the model config's; the OpenAI layout (eps 1e-5, 64-wide heads, unsaid in its state
    dict) was imported under any. Another eps is refused; other heads are warned about
    (open_clip's larger ViTs share the layout with heads of 80)."""
    from tests.test_convert_clip import openai_config, openai_state_dict
    source = str(tmp_path / "ViT-tiny.pth")
    torch.save(openai_state_dict(openai_config()), source)
    out = str(tmp_path / "o")
    config = write_json(tmp_path / "model.json",
                        json.loads(openai_config(layernorm_eps=1e-3).to_json()))
    line = one_error(capsys, "import-clip", "--source", source, "--out", out,
                     "--model-config", config)
    assert line == (f"error: {source}: OpenAI CLIP layout does not match the model config: "
                    "layernorm_eps=1e-05 (model config wants 0.001)")
    assert not os.path.exists(out)
    config = write_json(tmp_path / "heads.json", json.loads(openai_config(num_heads=2).to_json()))
    assert main(["import-clip", "--source", source, "--out", out,
                         "--model-config", config]) == 0
    assert (f"warning: {source}: OpenAI's CLIP ViTs have 64-wide heads (num_heads 1 at "
            "width 64), the model config has 2") in capsys.readouterr().err


def test_the_torch_module_takes_float64_images():
    """numpy's default float64 met the float32 weights with a bare 'RuntimeError: expected
    scalar type Double but found Float'; it is cast to the weights' dtype."""
    from mami_jax.convert.torch_model import MaMITorch
    cfg = tiny_config()
    module = MaMITorch(cfg)
    module.load_state_dict(to_torch_state_dict(random_params(cfg), cfg, as_tensors=True),
                           strict=True)
    x = np.random.default_rng(0).standard_normal((1, 2, 32, 32, 3))
    assert x.dtype == np.float64
    with torch.no_grad():
        got = module(torch.from_numpy(x))["embedding"]
        want = module(torch.from_numpy(x.astype(np.float32)))["embedding"]
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
