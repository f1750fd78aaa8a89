"""``teachers.extract`` reads each image once for all its teachers, ahead of them, and
gives each teacher full batches.

Before: every teacher decoded every row again (the medical bag: three decodes of each
X-ray and CT series), one image after another in the main thread while the teachers
waited, and resized the three equal channels of a grey image three times; a teacher of
one modality in a mixed manifest got batches of whatever share of each 16 rows it
applied to. The features are bit for bit what each teacher computes from ``decode`` alone.
"""

import dataclasses

import numpy as np
import pytest

pytest.importorskip("torch")

from mami_jax.data import decode as decode_module  # noqa: E402
from mami_jax.data.decode import decode  # noqa: E402
from mami_jax.data.manifest import read_manifest  # noqa: E402
from mami_jax.phantoms import generator  # noqa: E402
from teachers import extract, registry  # noqa: E402
from teachers.loaded import LoadedTeacher  # noqa: E402
from teachers.loaders import run_batch  # noqa: E402
from teachers.preprocess import teacher_input, teacher_inputs  # noqa: E402


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("ph") / "phantoms"
    return read_manifest(generator.generate(str(out), patients=6, visits=2, image_size=32,
                                            slices=3, workers=1))


class Bar:
    n = 0

    def update(self, k):
        self.n += k


def mean_teacher(name: str, modalities, size=(16, 16), calls=None) -> LoadedTeacher:
    """A teacher whose feature is its input's per-channel mean (it records batch sizes)."""
    import torch
    spec = dataclasses.replace(registry.get_spec("random_tiny"), name=name,
                               modalities=tuple(modalities), size=size, feature_dim=3)

    def forward(x):
        if calls is not None:
            calls.append((name, x.shape[0]))
        return x.mean(dim=(2, 3)).to(torch.float32)

    return LoadedTeacher(spec=spec, forward=forward, feature_dim=3, fingerprint=name,
                         weights_path=None)


def test_each_image_is_read_once_and_every_teacher_gets_full_batches(rows, monkeypatch):
    reads, calls = [], []
    real = decode_module.open_volume
    monkeypatch.setattr(extract, "open_volume", lambda p, **k: reads.append(p) or real(p, **k))
    teachers = [mean_teacher("all_small", registry.ALL_MODALITIES, (16, 16), calls),
                mean_teacher("all_same_size", registry.ALL_MODALITIES, (16, 16), calls),
                mean_teacher("xray_only", ("xray",), (24, 24), calls),
                mean_teacher("ct_only", ("ct",), (8, 8), calls)]
    bar = Bar()
    features, skipped = extract.shard_features(teachers, rows, batch_size=4, device="cpu",
                                               skip_unreadable=False, progress=bar,
                                               read_threads=3)
    assert sorted(reads) == sorted(r.path for r in rows) and not skipped
    for t in teachers:
        mine = [r for r in rows if t.spec.applies_to(r.modality)]
        assert list(features[t.spec.name]) == [r.image_id for r in mine]   # in row order
        sizes = [n for name, n in calls if name == t.spec.name]
        assert sizes == [4] * (len(mine) // 4) + ([len(mine) % 4] if len(mine) % 4 else [])
        for r in mine:    # what the teacher computes from decode alone, bit for bit
            alone = run_batch(t, teacher_input(decode(r.path), t.spec)[None])[0]
            np.testing.assert_array_equal(features[t.spec.name][r.image_id], alone)
    assert bar.n == sum(len(f) for f in features.values())


def test_an_unreadable_image_is_named_in_turn_or_skipped_by_every_teacher(rows, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = dataclasses.replace(next(r for r in rows if r.modality == "xray"), path=str(broken),
                              image_id="bad")
    mixed = list(rows[:5]) + [bad] + list(rows[5:])
    teachers = [mean_teacher("a", registry.ALL_MODALITIES), mean_teacher("b", ("xray",))]
    with pytest.raises(extract.ExtractError, match="image_id 'bad': unreadable"):
        extract.shard_features(teachers, mixed, 4, "cpu", False, Bar(), read_threads=2)
    features, skipped = extract.shard_features(teachers, mixed, 4, "cpu", True, Bar(),
                                               read_threads=2)
    assert skipped == {"bad"}
    assert all("bad" not in f for f in features.values())
    assert len(features["a"]) == len(rows)


def test_a_grey_image_resized_once_is_the_three_channels_resized(rows):
    """The shared resize of ``teacher_inputs`` against one teacher at a time on the
    decoder's three-channel array (how it was computed before)."""
    specs = [registry.get_spec(n) for n in ("dinov2_base", "biomedclip", "random_tiny",
                                            "ct_fm")]
    channels = set()
    for r in rows:
        grey = decode_module.open_volume(r.path).read(None)
        channels.add(grey.shape[-1])
        inputs = teacher_inputs(grey, specs)
        for spec in specs:
            np.testing.assert_array_equal(inputs[spec.name], teacher_input(decode(r.path), spec))
    assert channels == {1, 3}      # grey X-rays and series, colour fundus and pathology


def test_the_benchmark_compares_the_same_features(tmp_path, monkeypatch, capsys):
    from benchmarks import teacher_reading
    out = tmp_path / "r.json"
    monkeypatch.setattr("sys.argv", ["teacher_reading.py", "--images", "3", "--size", "40",
                                     "--repeats", "1", "--threads", "2", "--json", str(out)])
    teacher_reading.main()          # asserts that every variant gives the same features
    import json
    result = json.loads(out.read_text())["variants"]
    assert set(result) == {"per_teacher", "shared_1", "shared_2"}
    assert result["per_teacher"]["ratio"] == 1.0
    assert "vs per_teacher" in capsys.readouterr().out
