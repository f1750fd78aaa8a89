"""On several hosts each process decodes only its share of every evaluation batch, and the
gathered embeddings are the 1-process ones.

Simulated on one process: ``jax.process_count``/``process_index`` say 2 and p, and
``process_allgather`` is replaced by a fake that puts this process's share beside the
other one's, recorded from an earlier pass as that process (the two run the same
batches, so the gathers line up call by call). Before, process 0 of 2 decoded every
image of every batch and dropped the other process's half.
"""

import jax
import numpy as np
import pytest
from PIL import Image

from mami_jax.data import example_reader, pipeline
from mami_jax.data.config import default_data_config, update_modalities
from mami_jax.data.manifest import ManifestRow
from mami_jax.evaluate import evaluator
from mami_jax.runtime import sharding

# 6 x-rays (batches [x0 x1 x2 x3], [x4 x5 pad pad]) and 4 pathology tiles, embedded as
# the mean over the 8 symmetries (one gather per symmetry); batches of 4, so process 0
# of 2 reads positions 0-1 of each batch and process 1 positions 2-3.
XRAYS, TILES, BATCH = 6, 4, 4
SHARES = {0: {"x0", "x1", "x4", "x5", "t0", "t1"}, 1: {"x2", "x3", "t2", "t3"}}
MISSING = "x3"   # skipped as unreadable, in process 1's share


def _rows(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for name, modality in [(f"x{k}", "xray") for k in range(XRAYS)] + \
                          [(f"t{k}", "pathology") for k in range(TILES)]:
        path = str(tmp_path / f"{name}.png")
        if name != MISSING:
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        rows.append(ManifestRow(name, f"p{name}", "s", "0", modality, "d", "", path, "test"))
    return rows


def _cfg():
    cfg = default_data_config()
    update_modalities(cfg, image_size=8, resize_size=8)
    cfg.normalization = "per_image"
    cfg.modalities.pathology.eval_symmetry = True
    cfg.skip_bad_images = True
    cfg.num_workers, cfg.read_threads, cfg.prefetch = 0, 0, 1
    return cfg


def _embed(batch):
    """A toy embedder: the top-left pixel and the image's mean colour."""
    images = batch["images"][:, 0]
    return np.concatenate([images[:, 0, 0, :], images.mean(axis=(1, 2))], axis=1)


class _FakeHosts:
    """``process_allgather`` for simulated process ``me`` of 2: the other process's
    shares are the ones it gathered in its last pass (zeros before it had one)."""

    def __init__(self):
        self.sent = {0: [], 1: []}
        self.me, self.calls = 0, 0

    def become(self, me: int) -> None:
        self.me, self.calls, self.sent[me] = me, 0, []

    def process_allgather(self, x, tiled=True):
        assert tiled
        mine = jax.tree_util.tree_map(np.asarray, jax.device_get(x))
        theirs = self.sent[1 - self.me]
        other = theirs[self.calls] if theirs else jax.tree_util.tree_map(np.zeros_like, mine)
        self.sent[self.me].append(mine)
        self.calls += 1
        parts = (mine, other) if self.me == 0 else (other, mine)
        return jax.tree_util.tree_map(lambda a, b: np.concatenate([a, b]), *parts)


@pytest.fixture
def decoded(monkeypatch):
    """The image ids each pass decodes."""
    names = []
    real = example_reader.ExampleReader.read_or_skip

    def counted(self, i, *args, **kwargs):
        names.append(self.rows[int(i)].image_id)
        return real(self, i, *args, **kwargs)
    monkeypatch.setattr(example_reader.ExampleReader, "read_or_skip", counted)
    return names


def test_each_process_decodes_its_share_and_the_gathered_embeddings_are_unchanged(
        tmp_path, monkeypatch, decoded):
    rows, cfg = _rows(tmp_path), _cfg()
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    indices = list(range(len(rows)))
    single = evaluator.embed_rows(_embed, rows, indices, cfg, mesh, BATCH)
    assert sorted(decoded) == sorted(r.image_id for r in rows)
    assert np.isnan(single[3]).all() and np.isfinite(np.delete(single, 3, axis=0)).all()

    hosts = _FakeHosts()
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: hosts.me)
    monkeypatch.setattr(evaluator.multihost_utils, "process_allgather", hosts.process_allgather)
    for me in (1, 0, 1):        # the first pass records process 1's shares for process 0's
        hosts.become(me)
        decoded.clear()
        out = evaluator.embed_rows(_embed, rows, indices, cfg, mesh, BATCH)
        assert sorted(decoded) == sorted(SHARES[me]), me
    np.testing.assert_allclose(out, single, rtol=1e-6)        # process 1, with 0's shares
    hosts.become(0)
    np.testing.assert_allclose(evaluator.embed_rows(_embed, rows, indices, cfg, mesh, BATCH),
                               single, rtol=1e-6)


def test_the_eval_loader_yields_this_process_share_of_every_field(tmp_path):
    rows, cfg = _rows(tmp_path), _cfg()
    whole = list(pipeline.make_eval_loader(rows, range(len(rows)), cfg, BATCH))
    parts = [list(pipeline.make_eval_loader(rows, range(len(rows)), cfg, BATCH,
                                            process_index=p, process_count=2)) for p in (0, 1)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 3
    for k, batch in enumerate(whole):
        for key in ("images", "label", "index", "modality", "mask"):
            np.testing.assert_array_equal(
                np.concatenate([parts[0][k][key], parts[1][k][key]]), batch[key])
    with pytest.raises(ValueError, match=r"^evaluation batch size 4 does not split over 3 "
                                         r"processes$"):
        pipeline.make_eval_loader(rows, [0], cfg, BATCH, process_index=0, process_count=3)
