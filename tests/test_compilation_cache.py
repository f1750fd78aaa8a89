"""``config.compilation_cache_dir``: refusals here; that a run writes the cache and a resumed
run reuses it is checked by the end-to-end run in tests/test_train.py."""

import jax
import pytest

from mami_jax.runtime import compilation_cache


def test_empty_leaves_jax_setting_alone():
    before = jax.config.jax_compilation_cache_dir
    assert compilation_cache.enable("") is None
    assert jax.config.jax_compilation_cache_dir == before


def test_a_bucket_url_is_handed_to_jax_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = jax.config.jax_compilation_cache_dir
    try:
        assert compilation_cache.enable("gs://bucket/jax_cache") == "gs://bucket/jax_cache"
        assert jax.config.jax_compilation_cache_dir == "gs://bucket/jax_cache"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert list(tmp_path.iterdir()) == []   # no local folder named "gs:"


def test_a_file_in_the_way_is_refused_naming_the_key(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    before = jax.config.jax_compilation_cache_dir
    with pytest.raises(ValueError, match=r"config\.compilation_cache_dir=.*not_a_folder.*cannot"):
        compilation_cache.enable(str(blocker / "cache"))
    assert jax.config.jax_compilation_cache_dir == before
    assert blocker.read_text() == "x"


def test_entries_are_counted_by_their_suffix(tmp_path):
    assert compilation_cache.count_entries(str(tmp_path / "missing")) == 0
    for name in ("jit_step-0a1b-cache", "jit_step-0a1b-atime", "jit_init-9f-cache", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert compilation_cache.count_entries(str(tmp_path)) == 2


def test_an_unusable_folder_carried_by_a_runs_config_is_passed_over(tmp_path):
    """--mode=eval/embed read the run's config.json, and with it the training machine's
    cache folder: on another machine, where it cannot be made, the run was refused. Not
    required, the cache is left off with a warning."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    before = jax.config.jax_compilation_cache_dir
    assert compilation_cache.enable(str(blocker / "cache"), required=False) is None
    assert jax.config.jax_compilation_cache_dir == before
