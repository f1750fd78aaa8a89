"""A stopped history command goes on where it stopped: ``index``, ``add``, ``train`` and
``eval`` keep each finished chunk of their embedding pass beside their output
(``runtime.chunk_store``), a run of the same command reads them back and computes only the
rest, and the result is the one an uninterrupted run gives; Ctrl-C is one line."""

import os

import numpy as np
import pytest

pytest.importorskip("faiss")

from mami_jax.apps.history.__main__ import main  # noqa: E402
from mami_jax.apps.history.archive import Archive  # noqa: E402
from mami_jax.runtime.chunk_store import KEY_FILE, ChunkStore, beside  # noqa: E402
from tests import history_workdir as hw  # noqa: E402
from tests.embedding_chunks import count_chunks  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return hw.tiny_setup(tmp_path_factory.mktemp("resume"))


@pytest.fixture
def chunks(monkeypatch):
    """One batch (8 images) per chunk, counted (``embedding_chunks.count_chunks``)."""
    return count_chunks(monkeypatch)


def _index(s, out, model="run"):
    return ["index", "--workdir", s[model], "--manifest", s["first"], "--out", out,
            "--app-config", s["app"]]


def _vectors(path):
    archive = Archive.load(path)
    return {m: archive.indexes[m].reconstruct_n(0, archive.indexes[m].ntotal)
            for m in archive.indexes}


def test_an_interrupted_index_goes_on_where_it_stopped(setup, chunks, capsys, tmp_path):
    s = setup
    whole = str(tmp_path / "whole")
    assert main(_index(s, whole)) == 0
    assert chunks["computed"] == 2 and not os.path.exists(beside(whole))   # 16 images

    out = str(tmp_path / "index")
    chunks.update(computed=0, stop_at=0)       # before the first chunk: nothing is kept
    capsys.readouterr()
    assert main(_index(s, out)) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    assert not os.path.exists(beside(out))
    chunks.update(computed=0, stop_at=1)
    assert main(_index(s, out)) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1] == (
        "interrupted; the images embedded so far are kept: run the same command again to go on")
    assert not os.path.exists(out)
    assert sorted(os.listdir(beside(out))) == ["chunk_000000.npy", KEY_FILE]

    chunks.update(computed=0, stop_at=None)
    assert main(_index(s, out)) == 0
    assert chunks["computed"] == 1                       # only the chunk it had not finished
    assert "8 of 16 images' results read back from an earlier, stopped run" in capsys.readouterr().out
    assert not os.path.exists(beside(out))               # gone once the archive is written
    got, want = _vectors(out), _vectors(whole)
    assert got.keys() == want.keys()
    for m in want:
        np.testing.assert_array_equal(got[m], want[m])


def test_chunks_of_another_model_are_not_read_back(setup, chunks, capsys, tmp_path):
    s = setup
    out = str(tmp_path / "index")
    chunks.update(stop_at=1)
    assert main(_index(s, out)) == 130
    chunks.update(computed=0, stop_at=None)
    capsys.readouterr()
    assert main(_index(s, out, "other")) == 0
    stdout = capsys.readouterr().out
    assert chunks["computed"] == 2 and "read back" not in stdout
    assert "earlier partial results are of other images, another model or other settings; " \
           "starting over" in stdout
    assert not os.path.exists(beside(out)) and os.path.isfile(os.path.join(out, "archive.json"))


def test_an_interrupted_feature_pass_reads_its_finished_chunks_back(setup, chunks, capsys,
                                                                   tmp_path):
    """train's and eval's pass (features and token maps, cached in OUT/features.npz)."""
    from mami_jax.apps.history.experiment import FEATURES_CACHE, cached_features
    from mami_jax.apps.history.features import TrainedModel
    from mami_jax.config_files import load_config
    from mami_jax.data.manifest import read_manifest
    s = setup
    cfg, rows = load_config(s["app"]), read_manifest(s["first"])
    model = TrainedModel(s["run"], s["config"])
    out = str(tmp_path / "diag")
    os.makedirs(out)
    chunks.update(stop_at=1)
    with pytest.raises(KeyboardInterrupt):
        cached_features(model, rows, out, cfg)
    assert os.listdir(out) == [] and len(os.listdir(beside(out))) == 2
    chunks.update(computed=0, stop_at=None)
    capsys.readouterr()
    got = cached_features(model, rows, out, cfg)
    assert chunks["computed"] == 1 and not os.path.exists(beside(out))
    assert "8 of 16 images' results read back" in capsys.readouterr().out
    assert os.listdir(out) == [FEATURES_CACHE]
    chunks.update(computed=0)
    want = model.features_and_maps(rows, cfg.map_layer, int(cfg.map_grid))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_a_chunk_store_keeps_chunks_of_its_key_only(tmp_path):
    folder = str(tmp_path / ".out.partial-embeddings")
    assert beside(str(tmp_path / "out")) == folder
    logged = []
    store = ChunkStore(folder, "key-a", log=logged.append)
    assert store.get(0, 3) is None and not os.path.exists(folder)   # nothing yet, no folder
    store.put(0, np.arange(6.0).reshape(3, 2))
    again = ChunkStore(folder, "key-a", log=logged.append)
    np.testing.assert_array_equal(again.get(0, 3), np.arange(6.0).reshape(3, 2))
    assert again.get(0, 4) is None                  # another chunk size: computed again
    with open(os.path.join(folder, "chunk_000001.npy"), "wb") as f:
        f.write(b"\x93NUMPY cut short")
    assert again.get(1, 3) is None                  # unreadable: computed again
    assert not logged
    other = ChunkStore(folder, "key-b", log=logged.append)
    assert other.get(0, 3) is None and len(logged) == 1 and not os.path.exists(folder)
    other.put(0, np.zeros((3, 2)))
    assert sorted(os.listdir(folder)) == ["chunk_000000.npy", KEY_FILE]
    other.discard()
    assert not os.path.exists(folder)
