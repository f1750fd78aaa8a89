"""The main job's jemalloc re-execution (mami_jax/runtime/malloc_preload.py)."""

import os
import subprocess
import sys
import textwrap

import pytest

from mami_jax.runtime import malloc_preload as mp


@pytest.fixture
def fake_lib(tmp_path):
    path = tmp_path / "libjemalloc.so.2"
    path.write_bytes(b"")
    return str(path)


def test_found_library_is_preloaded_with_the_default_options(fake_lib):
    env = mp.preload_environment({"PATH": "/bin"}, candidates=("/nope/libjemalloc.so.2", fake_lib),
                                 platform="linux")
    assert env["LD_PRELOAD"] == fake_lib
    assert env["MALLOC_CONF"] == mp.DEFAULT_MALLOC_CONF
    assert env[mp.ENV_DONE] == fake_lib
    assert env["PATH"] == "/bin"


def test_existing_preload_and_malloc_conf_are_kept(fake_lib):
    env = mp.preload_environment({"LD_PRELOAD": "/x/libfoo.so", "MALLOC_CONF": "narenas:2"},
                                 candidates=(fake_lib,), platform="linux")
    assert env["LD_PRELOAD"] == f"{fake_lib}:/x/libfoo.so"
    assert env["MALLOC_CONF"] == "narenas:2"


@pytest.mark.parametrize("environ, platform", [
    ({mp.ENV_CHOICE: "system"}, "linux"),
    ({mp.ENV_DONE: "/already/libjemalloc.so.2"}, "linux"),
    ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, "linux"),
    ({}, "darwin"),
])
def test_nothing_to_do(fake_lib, environ, platform):
    assert mp.preload_environment(environ, candidates=(fake_lib,), platform=platform) is None


def test_no_library_installed(monkeypatch):
    monkeypatch.setattr(mp.ctypes.util, "find_library", lambda name: None)
    assert mp.preload_environment({}, candidates=("/nope/libjemalloc.so.2",), platform="linux") is None


def test_explicit_path_wins_and_a_missing_one_is_an_error(fake_lib, tmp_path):
    env = mp.preload_environment({mp.ENV_CHOICE: fake_lib}, candidates=(), platform="linux")
    assert env["LD_PRELOAD"] == fake_lib
    with pytest.raises(ValueError, match=mp.ENV_CHOICE + ".*no such file"):
        mp.preload_environment({mp.ENV_CHOICE: str(tmp_path / "missing.so")}, platform="linux")


def _libc_path() -> str:
    for line in open("/proc/self/maps"):
        path = line.split()[-1]
        if os.path.basename(path).startswith("libc.so"):
            return path
    pytest.skip("libc not found in /proc/self/maps")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux")
def test_process_restarts_once_with_the_library_mapped_and_the_same_arguments(tmp_path):
    # libc stands in for the allocator: preloading it is harmless and it exists everywhere.
    library = _libc_path()
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from mami_jax.runtime import malloc_preload
        print("start", os.environ.get({mp.ENV_DONE!r}), flush=True)
        malloc_preload.reexec_with_preload()
        print("args", sys.argv[1:])
        print("preload", os.environ.get("LD_PRELOAD"))
    """))
    env = {k: v for k, v in os.environ.items() if k not in (mp.ENV_DONE, "LD_PRELOAD")}
    env[mp.ENV_CHOICE] = library
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout's root
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-u", str(script), "--a=1", "x y"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines() == ["start None", f"start {library}", "args ['--a=1', 'x y']",
                                f"preload {library}"]
    env[mp.ENV_CHOICE] = "system"
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.splitlines()[0] == "start None" and out.count("start") == 1
