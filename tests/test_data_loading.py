"""``data.loading``: which manifest a run reads, said once."""

import os

from mami_jax.data import loading
from tests.test_train import tiny_config


def test_the_phantoms_in_use_are_said_once_per_run(tmp_path, monkeypatch):
    """The trainer reads the rows, then asks for the manifest's path again (teacher
    features are keyed by it): the headline command logged "no data.manifest configured"
    twice in its first lines."""
    said = []
    monkeypatch.setattr(loading.logging, "info", lambda msg, *a: said.append(msg % a))
    cfg = tiny_config(str(tmp_path / "ph"))
    with cfg.unlocked():
        cfg.phantoms.update(patients=4, visits=2, image_size=16, slices=2)
    rows = loading.load_rows(cfg, str(tmp_path / "run"))
    path = loading.manifest_path(cfg, str(tmp_path / "run"))
    assert rows and os.path.isfile(path) and path.startswith(str(tmp_path / "ph"))
    assert said == [f"no data.manifest configured: using the synthetic phantoms in {tmp_path / 'ph'}"]
