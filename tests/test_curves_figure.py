"""``WORKDIR/curves.png`` (``mami_jax.train.curves_figure``): which logged scalars go in
which panel, and the picture written from a run's TensorBoard files."""

import numpy as np
from PIL import Image

from mami_jax.runtime.metric_writer import MetricWriter
from mami_jax.train.curves_figure import CURVES_FILE, RANK1_PANEL, panels, write_curves


def _log(workdir, points):
    writer = MetricWriter(str(workdir / "tb"))
    for step, scalars in points:
        writer.write_scalars(step, scalars)
    writer.close()


def test_panels_hold_the_loss_terms_the_rate_the_speed_and_rank1(tmp_path):
    train = {"train/loss": 3.0, "train/id": 2.0, "train/id_weighted": 2.0, "train/triplet": 1.0,
             "train/triplet_weighted": 0.5, "train/grad_norm": 9.0, "train/learning_rate": 1e-3,
             "train/images_seen": 64.0, "train/valid_images": 32.0}
    _log(tmp_path, [(0, {"eval/d/xray/reid/rank1": 0.2, "eval/d/xray/reid/mAP": 0.1}),
                    (10, train), (20, {**train, "train/loss": 2.0, "train/images_per_second": 50.0}),
                    (20, {"eval/d/xray/reid/rank1": 0.6, "eval/d/ct/reid/rank1": 0.4})])
    from mami_jax.train.logged_scalars import read_scalars
    got = panels(read_scalars(str(tmp_path)))
    assert {k: sorted(v) for k, v in got.items()} == {
        "loss and its terms": ["id", "loss", "triplet"],       # grad norm, counts: not losses
        "learning rate": ["learning rate"],
        "images per second": ["all devices"],
        RANK1_PANEL: ["d/ct/reid", "d/xray/reid"]}               # mAP: not drawn
    steps, values = got["loss and its terms"]["loss"]
    assert steps.tolist() == [10, 20] and values.tolist() == [3.0, 2.0]
    steps, values = got[RANK1_PANEL]["d/xray/reid"]
    assert steps.tolist() == [0, 20] and np.allclose(values, [0.2, 0.6])
    path = write_curves(str(tmp_path), title="a run")
    assert path == str(tmp_path / CURVES_FILE)
    width, height = Image.open(path).size
    assert width > 1000 and height > 600       # two rows: training panels, then Rank-1


def test_nothing_logged_yet_draws_nothing(tmp_path):
    assert write_curves(str(tmp_path)) is None
    _log(tmp_path, [(1, {"train/finite": 1.0})])
    assert write_curves(str(tmp_path)) is None
    assert not (tmp_path / CURVES_FILE).exists()
