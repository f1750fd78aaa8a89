"""``python -m mami_jax.apps.history figure``: several runs' metrics.json -> the mean
table (mean +- half the range per condition) and one PNG; bad input is one error line."""

import json
import os

from mami_jax.apps.history.__main__ import main


def _metrics(path, auc_current, auc_retrieved, fhr, split="test", low=-0.05):
    group = {"current_only": {"auc": auc_current, "accuracy": 0.5},
             "retrieved_history": {"auc": auc_retrieved, "accuracy": 0.5},
             "true_history": {"auc": None, "accuracy": 0.5},
             "gain": {"retrieved_history": {"auc_gain": auc_retrieved - auc_current,
                                            "ci95": [low, 0.2], "samples": 1000},
                      "true_history": None},
             "false_history_rate": fhr, "queries": 10}
    path.write_text(json.dumps({"split": split, "overall": group, "per_modality": {"xray": group}}))
    return str(path)


def test_figure_averages_runs(tmp_path, capsys):
    a = _metrics(tmp_path / "a.json", 0.6, 0.7, 0.1, low=0.01)
    b = _metrics(tmp_path / "b.json", 0.8, 0.75, 0.3)
    png = tmp_path / "auc.png"
    assert main(["figure", "--metrics", a, b, "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "2 run(s)" in out
    # gains +0.1 and -0.05: mean +0.025, one run's interval above 0
    assert "| xray | 10 | 0.700 +- 0.100 | 0.725 +- 0.025 | - | +0.025 (1/2) | - | 0.200 |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_bad_input_is_one_error_line(tmp_path, capsys):
    a = _metrics(tmp_path / "a.json", 0.6, 0.7, 0.1)
    v = _metrics(tmp_path / "v.json", 0.6, 0.7, 0.1, split="val")
    (tmp_path / "bad.json").write_text("{}")
    cases = [([a, v], "runs of different splits ['test', 'val']"),
             ([a, str(tmp_path / "bad.json")], "bad.json: not a metrics.json"),
             ([str(tmp_path / "none.json")], "none.json: cannot be read"),
             ([a, a], f"--metrics {a}: given twice (as {a}); each run counts once"),
             ([a, f"{tmp_path}/./a.json"],
              f"--metrics {tmp_path}/./a.json: given twice (as {a}); each run counts once")]
    for files, message in cases:
        assert main(["figure", "--metrics", *files, "--out", str(tmp_path / "x.png")]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "x.png").exists()


def test_figure_never_writes_over_its_inputs(tmp_path, capsys):
    """--out may not be one of the --metrics (a link to one is that file), a folder, nor
    a name without .png (it replaced a table named by a slip with the picture); the files
    are unchanged and nothing is written."""
    a = _metrics(tmp_path / "a.json", 0.6, 0.7, 0.1)
    b = _metrics(tmp_path / "b.json", 0.8, 0.75, 0.3)
    link = tmp_path / "link.png"
    link.symlink_to(a)
    (tmp_path / "folder").mkdir()
    table = tmp_path / "table.csv"          # the user's own file, named by a slip
    table.write_text("run,auc\n")
    before = {p: open(p, "rb").read() for p in (a, b, str(table))}
    cases = [(a, f"error: --out {a}: would overwrite the input {a}"),
             (str(link), f"error: --out {link}: would overwrite the input {a}"),
             (str(tmp_path / "folder"), f"error: --out {tmp_path}/folder: is a folder; give a "
                                        f"file name"),
             (f"{tmp_path}/new/", f"error: --out {tmp_path}/new/: is a folder; give a file name"),
             (f"{a}/x.png", f"error: --out {a}/x.png: {a} is a file, not a folder"),
             (str(table), f"error: --out {table}: the picture is a PNG; give a name ending in "
                          ".png")]
    for out, message in cases:
        assert main(["figure", "--metrics", a, b, "--out", out]) == 1
        assert capsys.readouterr().err.splitlines() == [message]
    assert {p: open(p, "rb").read() for p in (a, b, str(table))} == before
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json", "folder", "link.png",
                                            "table.csv"]


def test_figure_names_the_file_and_key_it_cannot_read(tmp_path, capsys):
    a = _metrics(tmp_path / "a.json", 0.6, 0.7, 0.1)
    cases = []
    for name, edit, message in [
            ("auc", lambda m: m["per_modality"]["xray"]["current_only"].update(auc="high"),
             "per_modality.xray.current_only.auc is 'high', not a number or null"),
            ("fhr", lambda m: m["overall"].update(false_history_rate=[0.1]),
             "overall.false_history_rate is [0.1], not a number or null"),
            ("queries", lambda m: m["overall"].update(queries=10.5),
             "overall.queries is 10.5, not a whole number"),
            ("gain", lambda m: m["overall"]["gain"].update(retrieved_history={"auc_gain": 0.1}),
             "overall.gain.retrieved_history is {'auc_gain': 0.1}, not an AUC gain with its 95 % "
             "interval"),
            ("cond", lambda m: m["overall"].update(true_history=0.5),
             "overall.true_history is 0.5, not an object with an auc")]:
        metrics = json.loads(open(a).read())
        edit(metrics)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(metrics))
        cases.append((str(path), message))
    for path, message in cases:
        assert main(["figure", "--metrics", a, path, "--out", str(tmp_path / "x.png")]) == 1
        assert capsys.readouterr().err.splitlines() == [f"error: --metrics {path}: {message}"]
    assert not (tmp_path / "x.png").exists()


def test_figure_pools_only_runs_of_one_retrieval_setting(tmp_path, capsys):
    """Runs pooled into one spread differ only by seed: a run whose history was scored
    otherwise is refused by the setting's name; a report without the record (an older
    run) is not compared."""
    settings = {"scores": "visit", "visit_fusion": True, "hubness_k": 10, "center": True,
                "index": "exact", "train_history": "retrieved", "maps_key": ""}
    paths = []
    for name, extra in [("a", settings), ("b", dict(settings)), ("old", None),
                        ("hub0", dict(settings, hubness_k=0, scores="visit-cosine"))]:
        path = _metrics(tmp_path / f"{name}.json", 0.6, 0.7, 0.1)
        if extra is not None:
            m = json.loads(open(path).read())
            m["retrieval"] = extra
            open(path, "w").write(json.dumps(m))
        paths.append(path)
    a, b, old, hub0 = paths
    assert main(["figure", "--metrics", a, b, old, "--out", str(tmp_path / "ok.png")]) == 0
    assert "3 run(s)" in capsys.readouterr().out
    assert main(["figure", "--metrics", a, old, hub0, "--out", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: --metrics {hub0}: retrieval.hubness_k is 0, {a} has 10; the runs pooled "
        "into one spread must differ only by seed"]
    assert not (tmp_path / "x.png").exists()


def test_the_picture_leaves_out_the_aucs_a_run_could_not_compute():
    """The bars agree with the table: a null AUC is left out of the mean (it was drawn as
    0, pulling 0.8 and null to a 0.4 bar), and equal runs whose mean rounds above them
    draw (matplotlib refused the negative whisker: the figure of three identical seeds
    failed)."""
    import numpy as np

    from mami_jax.apps.history.pictures import auc_spread

    def run(xray, ct):
        return {"xray": {"current_only": {"auc": xray}}, "ct": {"current_only": {"auc": ct}}}
    mean, err = auc_spread([run(0.6, None), run(0.8, 0.7)], ["xray", "ct"], "current_only")
    np.testing.assert_allclose(mean, [0.7, 0.7])
    np.testing.assert_allclose(err, [[0.1, 0.0], [0.1, 0.0]])
    mean, err = auc_spread([run(None, 0.5)] * 2, ["xray", "ct"], "current_only")
    assert np.isnan(mean[0]) and mean[1] == 0.5 and (err == 0).all()
    same = [run(0.1 + 0.2, 0.3)] * 3       # the mean of three 0.30000000000000004 rounds up
    mean, err = auc_spread(same, ["xray", "ct"], "current_only")
    assert (err >= 0).all()
    assert auc_spread([run(0.6, 0.7)], ["xray", "ct"], "current_only")[1] is None


def test_figure_pools_only_runs_of_one_experiment(tmp_path, capsys):
    """A disease_label run, a features=embedding run and a 4-class disease_stage run
    were averaged into one table and picture: each differs from the first by name."""
    paths = []
    for name, extra in [("a", {}), ("b", {}), ("emb", {"features": "embedding"}),
                        ("stage", {"label_column": "disease_stage",
                                   "classes": ["0", "1", "2", "3"]}),
                        ("pairs", {"calibration": {"xray": {"method": "pairs"}}})]:
        path = _metrics(tmp_path / f"{name}.json", 0.6, 0.7, 0.1)
        m = json.loads(open(path).read())
        m.update({"label_column": "disease_label", "classes": ["0", "1"],
                  "features": "backbone", "k": 3, "target_far": 0.1,
                  "calibration": {"xray": {"method": "topk-visits", "threshold": 0.5}}})
        m.update(extra)
        open(path, "w").write(json.dumps(m))
        paths.append(path)
    a, b, emb, stage, pairs = paths
    assert main(["figure", "--metrics", a, b, "--out", str(tmp_path / "ok.png")]) == 0
    for other, key, mine, first in [
            (emb, "features", "'embedding'", "'backbone'"),
            (stage, "classes", "['0', '1', '2', '3']", "['0', '1']"),
            (pairs, "calibration", "{'xray': 'pairs'}", "{'xray': 'topk-visits'}")]:
        capsys.readouterr()
        assert main(["figure", "--metrics", a, other, "--out", str(tmp_path / "x.png")]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"error: --metrics {other}: {key} is {mine}, {a} has {first}; the runs pooled "
            "into one spread must differ only by seed"]


def test_an_auc_below_the_axis_floor_is_drawn_and_a_null_one_is_marked(monkeypatch, tmp_path):
    """The AUC axis began at 0.4 whatever the runs held: an AUC of 0.35 drew no bar at all,
    the very picture of an AUC no run could compute (null, "no bar"). Now the axis reaches
    below the lowest AUC, and a null group is marked "n/a" where its bar would stand."""
    from mami_jax.apps.history import pictures

    figures = []
    real_close = pictures.plt.close
    monkeypatch.setattr(pictures.plt, "close", lambda fig: figures.append(fig) or real_close(fig))

    def group(auc):
        return {"current_only": {"auc": 0.7}, "retrieved_history": {"auc": auc},
                "true_history": {"auc": 0.7}}
    drawn = {}
    for name, auc in (("low", 0.35), ("null", None)):
        pictures.auc_bars({"xray": group(auc), "overall": group(auc)},
                          str(tmp_path / f"{name}.png"), "test")
        drawn[name] = (tmp_path / f"{name}.png").read_bytes()
    assert drawn["low"] != drawn["null"]
    low, null = (fig.axes[0] for fig in figures)
    assert low.get_ylim()[0] <= 0.35 - 0.05 + 1e-9 and low.get_ylim()[1] >= 1.0
    assert null.get_ylim()[0] == 0.4          # nothing below the usual floor
    marks = [t.get_text() for t in null.texts]
    assert marks == ["n/a", "n/a"] and not low.texts
    assert pictures.auc_axis_bottom([{"g": group(0.02)}], ["g"]) == 0.0
