"""benchmarks/history_index.py on a tiny archive: the exact reference, the recall of a
full IVF probe, the memory accounting, the JSON and PNG, and the one-line errors."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("faiss")
from benchmarks import history_index  # noqa: E402


def test_tiny_run_writes_table_json_and_picture(tmp_path, capsys):
    out = str(tmp_path / "bench.json")
    assert history_index.main(["--n", "3000", "--dim", "16", "--queries", "40", "--latency-queries", "5",
                               "--flat-latency-queries", "3", "--kinds", "flat,ivf,hnsw",
                               "--ivf-nlist", "16", "--ivf-train", "1000", "--ivf-nprobe", "1,16",
                               "--hnsw-ef-search", "8,64", "--clusters", "50", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "| clustered | ivf | nlist 16, nprobe 16 |" in text
    with open(out) as f:
        r = json.load(f)
    assert set(r["data"]) == {"random", "clustered"}
    for data in ("random", "clustered"):
        kinds = r["data"][data]
        flat, ivf, hnsw = kinds["flat"], kinds["ivf"], kinds["hnsw"]
        assert flat["settings"][0]["recall_at_k"] == 1.0
        assert flat["index_bytes"] == 3000 * 16 * 4
        assert ivf["nlist"] == 16 and [s["nprobe"] for s in ivf["settings"]] == [1, 16]
        assert ivf["settings"][1]["recall_at_k"] == 1.0          # every list probed: exact
        assert ivf["index_bytes"] == 3000 * (16 * 4 + 8) + 16 * 16 * 4
        assert [s["ef_search"] for s in hnsw["settings"]] == [8, 64]
        assert hnsw["index_bytes"] > 3000 * 16 * 4
        assert 0 < hnsw["settings"][0]["recall_at_k"] <= hnsw["settings"][1]["recall_at_k"]
        assert all(s["latency_queries"] == 5 for s in ivf["settings"])
        assert flat["settings"][0]["latency_queries"] == 3
        assert flat["peak_rss_gb"] >= flat["rss_after_build_gb"] > 0
    # Clustered data has structure: one probed cell of 16 finds most of the exact top 10;
    # random data does not.
    assert (r["data"]["clustered"]["ivf"]["settings"][0]["recall_at_k"]
            > r["data"]["random"]["ivf"]["settings"][0]["recall_at_k"] + 0.3)
    assert os.path.getsize(str(tmp_path / "bench.png")) > 10000


def test_streams_are_deterministic_unit_vectors():
    s = history_index.Stream("clustered", 24, 3, clusters=5, spread=0.5)
    a, b = s.chunk(0, 2, 100), s.chunk(0, 2, 100)
    assert np.array_equal(a, b) and not np.array_equal(a, s.chunk(1, 2, 100))
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # Members lie near their centre (cosine about 1 / sqrt(1 + 0.5^2) = 0.89), far
    # above their similarity to the other centres.
    sims = np.sort(a @ s.centres.T, axis=1)
    assert 0.85 < sims[:, -1].mean() < 0.93 and np.all(sims[:, -1] - sims[:, -2] > 0.2)


@pytest.mark.parametrize("argv, needle", [
    (["--kinds", "flat,annoy"], "--kinds must name some of flat, ivf, hnsw"),
    (["--data", "gaussian"], "unknown: ['gaussian']"),
    (["--ivf-nprobe", "0,4"], "--ivf-nprobe and --hnsw-ef-search comma lists"),
    (["--n", "5", "--k", "10"], "--k (at most --n)"),
])
def test_bad_flags_are_one_error_line(argv, needle, capsys, tmp_path):
    assert history_index.main(argv + ["--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "x.json")
