"""The Colab notebooks: stored clean, and each runs top to bottom (tiny sizes, through the
real package) and computes what it claims.

Every notebook is executed with MAMI_NOTEBOOK_TINY=1 and MAMI_NOTEBOOK_WORKDIR=tmp. A probe
cell appended to the executed copy (never to the file) prints, as JSON, values the
notebook computed; each notebook's assertions below check them against an independent
computation or a known fact (e.g. the anatomy teacher's zero-shot Rank-1 is 1).
"""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.one_device import without_device_count

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(REPO, "colab")
NOTEBOOKS = sorted(f for f in os.listdir(COLAB) if f.endswith(".ipynb"))
PROBE_MARK = "NOTEBOOK-PROBE "

#: Kernel-side probes: each prints one JSON line of what the assertions need.
PROBES = {
    "quickstart.ipynb": """
import json
from mami_jax.evaluate.protocols import build_protocol as _bp
_n_test = {m: sum(r.modality == m and r.split == 'test' for r in rows) for m in MODALITIES}
print('NOTEBOOK-PROBE ' + json.dumps(dict(
    modalities=MODALITIES, total_steps=int(config.train.total_steps), restored_step=int(model.step),
    loss_steps=[int(s) for s in loss_steps], loss=[float(v) for v in loss_values],
    top1=top1, rank1_after={m: after[f'phantoms/{m}/reid']['rank1'] for m in MODALITIES},
    rank1_before={m: before[f'phantoms/{m}/reid']['rank1'] for m in MODALITIES},
    queries_after={m: after[f'phantoms/{m}/reid']['num_queries'] for m in MODALITIES},
    n_test=_n_test, returned={g: v['rank1'] for g, v in results.items()},
    files_vs_rows=float(abs(emb_files - model.embed_rows(same + [other], progress=None)).max()),
    file_scores=[float(v) for v in scores], embedding_map=os.path.isfile(map_png))))
""",
    "interchange.ipynb": """
import json
print('NOTEBOOK-PROBE ' + json.dumps(dict(
    keys=len(state), table=len(table), file_keys=sorted(saved), max_diff=max_diff, scale=scale,
    round_trip=round_trip, prefixed=sorted({k.split('.')[0] for k in prefixed}),
    refusal=refusal, parameters=int(sum(x.size for x in leaves)),
    files=list(E_torch.shape), files_jax=list(E_jax.shape), files_diff=files_diff,
    files_scale=files_scale, view=list(view))))
""",
    "teachers_alignment.ipynb": """
import json
print('NOTEBOOK-PROBE ' + json.dumps(dict(
    records=index['records'], rows=len(rows),
    dims={n: i['feature_dim'] for n, i in index['teachers'].items()},
    zero_shot=zero_shot_summary,
    tags={n: sorted(r['curves']) for n, r in runs.items()},
    align=[float(v) for v in runs['align']['curves']['train/align'][1]],
    rank1={n: {g: v['rank1'] for g, v in r['results'].items()} for n, r in runs.items()},
    terms=dict(align_config.loss.terms))))
""",
    "history.ipynb": """
import json
from mami_jax.apps.history.archive import Archive
print('NOTEBOOK-PROBE ' + json.dumps(dict(
    modalities=MODALITIES, archived=len(Archive.load(INDEX)), rows=len(rows),
    earlier=len(earlier), newest=len(newest), queries=queries, split=metrics['split'],
    overall=metrics['overall'], per_modality=sorted(metrics['per_modality']),
    n_test={m: sum(r.split == 'test' and r.modality == m for r in rows) for m in MODALITIES},
    per_modality_queries={m: g['queries'] for m, g in metrics['per_modality'].items()},
    row={r.image_id: [r.patient_id, r.study_id, int(r.order), r.modality] for r in rows})))
""",
    "privacy.ipynb": """
import json
print('NOTEBOOK-PROBE ' + json.dumps(dict(
    attack=attack, trained={n: t['phantoms/xray/reid']['rank1'] for n, t in trained.items()},
    n_test=len(test_rows), protected=len(protected), protected_ids=sorted(protected_rows),
    records=len(report['records']), score=[report['mean_score_before'], report['mean_score_after']],
    psnr=sorted(psnr.values()), cue_maps=sorted(maps), cue_pngs=len(cue_files),
    seeds=[int(experiment_config().seed), int(config.seed)],
    read_with=[report['config']['experiment'], RUNS['A']])))
""",
}


def _read(name):
    return nbformat.read(os.path.join(COLAB, name), as_version=4)


def test_every_notebook_has_its_probe():
    assert set(NOTEBOOKS) == set(PROBES), "a notebook without assertions (or a stale probe)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    for c in code:
        assert c.outputs == [] and c.execution_count is None, (name, c.source[:60])
    # Every cell is valid IPython, and an install cell that works in Colab (and does
    # nothing elsewhere) installs the repository with pip, inside its Colab branch.
    from IPython.core.inputtransformer2 import TransformerManager
    python = [TransformerManager().transform_cell(c.source) for c in code]
    for c, src in zip(code, python):
        compile(src, f"{name}: {c.source[:40]!r}", "exec")
    install = [src for c, src in zip(code, python) if "google.colab" in c.source]
    assert len(install) == 1
    assert "    get_ipython().run_line_magic('pip', 'install -q -e \"{REPO}[" in install[0]
    text = "\n".join(c.source for c in nb.cells)
    for banned in ("shared/", "../shared", "DESIGN.md"):
        assert banned not in text, (name, banned)


def test_kernel_flags_drop_only_the_device_count():
    assert without_device_count(
        "--xla_cpu_a=1 --xla_force_host_platform_device_count=8 --xla_b") == "--xla_cpu_a=1 --xla_b"
    assert without_device_count("--xla_force_host_platform_device_count=8") == ""


def _execute(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MAMI_NOTEBOOK_WORKDIR", str(tmp_path))
    monkeypatch.setenv("MAMI_NOTEBOOK_TINY", "1")
    # The kernel sees one CPU device, as a Colab CPU runtime does (tests/one_device.py).
    monkeypatch.setenv("XLA_FLAGS", without_device_count(os.environ.get("XLA_FLAGS", "")))
    # The kernel runs in tmp_path: it imports the package and configs/ from this checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p))
    nb = _read(name)
    nb.cells.append(nbformat.v4.new_code_cell(PROBES[name]))
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    streams = [o.get("text", "") for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []) if o.output_type == "stream"]
    probe = [line for s in streams for line in s.splitlines() if line.startswith(PROBE_MARK)]
    assert len(probe) == 1, "the probe cell printed nothing"
    text = "".join(streams)
    assert "CpuDevice(id=0)" in text and "CpuDevice(id=1)" not in text  # one device
    pictures = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    return json.loads(probe[0][len(PROBE_MARK):]), text, pictures


def _check_quickstart(p, text, pictures):
    mods = p["modalities"]
    assert mods == ["xray", "fundus"]      # the tiny size trains two 2-D modalities
    assert p["restored_step"] == p["total_steps"] == 60
    assert p["loss_steps"] == [10, 20, 30, 40, 50, 60]
    assert p["loss"][-1] < p["loss"][0]
    for m in mods:
        # The retrieval pictures rank what the metrics rank: the share of correct first
        # matches (Embedder, outside the trainer) is the trainer's Rank-1.
        assert p["top1"][m] == pytest.approx(p["rank1_after"][m], abs=1e-9)
        assert p["returned"][f"phantoms/{m}/reid"] == pytest.approx(p["rank1_after"][m])
        assert p["queries_after"][m] == p["n_test"][m] > 0
        assert 0.0 <= p["rank1_before"][m] <= 1.0
    # phantoms, training batches, loss, Rank-1 bars, CMC, one retrieval grid per modality,
    # the embedding map
    assert pictures >= 6 + len(mods) and p["embedding_map"]
    assert "restored" in text and "first match correct" in text
    # embed_files on the paths embeds what embed_rows does on their rows
    assert p["files_vs_rows"] < 1e-5 and len(p["file_scores"]) == 2
    assert "with the same patient" in text


def _check_interchange(p, text, pictures):
    assert p["keys"] == p["table"] > 100           # every key of the mapping table written
    assert p["file_keys"] == ["mami_config", "model"]
    assert set(p["max_diff"]) == {f"T={t} {k}" for t in (1, 3) for k in
                                  ("embedding", "local_map", "modality", "code_weights")}
    for k, d in p["max_diff"].items():
        assert d < 1e-4 * max(1.0, p["scale"][k]), (k, d)
        assert p["scale"][k] > 1e-3, k        # the outputs compared are not all zero
    assert p["round_trip"] == 0.0
    assert p["prefixed"] == ["module"]
    assert "shift_input='patch_mean'" in p["refusal"]
    assert "parity holds" in text and pictures >= 1
    # image files through TorchEmbedder: the paper's 224 px view, the JAX side's embeddings
    assert p["files"] == p["files_jax"] == [3, p["files"][1]] and p["view"] == [1, 224, 224, 3]
    assert p["files_scale"] > 1e-3 and p["files_diff"] < 1e-4 * max(1.0, p["files_scale"])


def _check_teachers(p, text, pictures):
    assert p["records"] == p["rows"]                # every phantom image has a record
    assert p["dims"] == {"efficientnet_lite0": 1280, "anatomy": 256, "random_tiny": 64}
    zs = p["zero_shot"]
    assert set(zs) == {"efficientnet_lite0", "anatomy", "random_tiny"}
    assert set(zs["anatomy"]) == {"xray", "fundus"}   # the tiny size extracts two modalities
    # The generator's hidden identity parameters identify every patient exactly.
    for m, v in zs["anatomy"].items():
        assert v["rank1"] == 1.0 and v["mAP"] == 1.0, m
    from configs.all import RUNLOCAL_ALIGN_WEIGHT
    assert p["terms"]["align"] == RUNLOCAL_ALIGN_WEIGHT
    assert "train/align" in p["tags"]["align"] and "train/align" not in p["tags"]["plain"]
    assert len(p["align"]) == 6 and all(v > 0 for v in p["align"])
    assert set(p["rank1"]["plain"]) == set(p["rank1"]["align"])
    assert {g.split("/")[1] for g in p["rank1"]["plain"]} == {"xray", "fundus"}
    assert pictures >= 3 and "Rank-1 (reid, test)" in text


def _check_history(p, text, pictures):
    mods = p["modalities"]
    assert mods == ["xray", "fundus"]           # the tiny size's two modalities
    # index + add archived every image once: the earlier visits, then the newest ones.
    assert p["archived"] == p["rows"] == p["earlier"] + p["newest"] > 0
    row = p["row"]
    for m in mods:
        q = p["queries"][m]
        qp, qs, qo, qm = row[q["query"]]
        assert qm == m and qo == max(o for _, _, o, mm in row.values() if mm == m)
        cands = q["candidates"]
        # k=5 candidates, when the archive holds as many earlier images of the modality
        earlier = sum(mm == m and o < qo and not (pp == qp and s == qs)
                      for pp, s, o, mm in row.values())
        assert len(cands) == min(5, earlier) > 0
        for c in cands:
            pp, s, o, mm = row[c["image_id"]]
            assert mm == m and o < qo and not (pp == qp and s == qs), c
            # scores and threshold are printed to 6 decimals: rounding keeps the order
            if c["decision"] == "accept":
                assert c["score"] >= q["threshold"], c
            else:
                assert c["decision"] == "reject" and c["score"] <= q["threshold"], c
    assert p["split"] == "test"
    assert p["overall"]["queries"] == sum(p["n_test"].values())
    assert p["per_modality_queries"] == p["n_test"]
    assert p["per_modality"] == sorted(mods)
    for condition in ("current_only", "retrieved_history", "true_history"):
        auc = p["overall"][condition]["auc"]
        assert auc is None or 0.0 <= auc <= 1.0, (condition, auc)
    # a query picture per modality and the AUC bars
    assert pictures >= len(mods) + 1
    assert "$ python -m mami_jax.apps.history index" in text and "accepted" in text


def _check_privacy(p, text, pictures):
    assert p["seeds"] == [0, 1]                   # model B is another seed
    experiment, run_a = p["read_with"]            # no config named: the run's own
    assert experiment == os.path.join(run_a, "config.json")
    assert p["n_test"] == p["protected"] == p["records"] > 0
    assert all(i.endswith("_protected") for i in p["protected_ids"])
    assert len(p["cue_maps"]) == min(4, p["n_test"]) and p["cue_pngs"] == len(p["cue_maps"])
    # l2 budget 0.028 per pixel: PSNR >= 20 log10(1 / 0.028) = 31.06 dB before the PNG's
    # 8-bit rounding, which costs well under a dB here.
    assert p["psnr"][0] >= 30.0
    before, after = p["score"]
    assert after < before
    for name in ("A", "B"):
        a = p["attack"][name]
        # "before" is the trainer's own Rank-1 on the same test X-rays (same protocol).
        assert a["rank1_before"] == pytest.approx(p["trained"][name], abs=1e-6)
        assert a["num_queries"] == p["n_test"]
    a = p["attack"]["A"]
    assert a["rank1_after"] < a["rank1_before"]   # the protecting model loses the patients
    assert pictures >= 4                          # two cue maps, the images, the Rank-1 bars
    assert "$ python -m mami_jax.apps.privacy protect" in text


CHECKS = {"quickstart.ipynb": _check_quickstart, "interchange.ipynb": _check_interchange,
          "teachers_alignment.ipynb": _check_teachers, "history.ipynb": _check_history,
          "privacy.ipynb": _check_privacy}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_computes_what_it_shows(name, tmp_path, monkeypatch):
    CHECKS[name](*_execute(name, tmp_path, monkeypatch))
