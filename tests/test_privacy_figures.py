"""The privacy figures are written as PNG from what the commands write."""

import numpy as np
from PIL import Image

from mami_jax.apps.privacy import figures
from mami_jax.config import base_config
from mami_jax.data.manifest import ManifestRow


def _report(before, after, chance):
    return {"rank1_before": before, "rank1_after": after, "chance_rank1": chance}


def test_rank1_bars_and_comparison_are_pngs(tmp_path):
    attack = {"protecting": {"phantoms/xray": _report(0.9, 0.02, 0.03),
                             "phantoms/ct": _report(0.7, 0.1, 0.03), "mean": {}, "source": {}},
              "held-out": {"phantoms/xray": _report(0.8, 0.3, 0.03),
                           "phantoms/ct": _report(0.6, 0.2, 0.03), "mean": {}}}
    figures.rank1_bars(str(tmp_path / "bars.png"), attack, "title")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)).save(tmp_path / "b.png")
    row = ManifestRow("P1_v0", "P1", "v0", "0", "xray", "phantoms", "pa", str(tmp_path / "a.png"), "test")
    prot = row.replace(image_id="P1_v0_protected", path=str(tmp_path / "b.png"))
    figures.comparison_grid(str(tmp_path / "cmp.png"), [row], {"perturb": [prot]},
                            base_config().data)
    maps = {"gradient": rng.random((1, 32, 32)), "occlusion": rng.random((1, 32, 32))}
    figures.cue_grid(str(tmp_path / "cues.png"), [row], [maps], base_config().data)
    for name in ("bars.png", "cmp.png", "cues.png"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.size[0] > 100
