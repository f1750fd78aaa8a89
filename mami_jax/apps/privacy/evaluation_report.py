"""What ``privacy evaluate`` writes from its measurements (``evaluation.run``'s result):
``privacy_eval.json``, the same as markdown tables in ``privacy_eval.md``, and the pictures
a person looks at first. Rendering only; nothing here measures."""

from __future__ import annotations

import os

import numpy as np

from mami_jax.apps.privacy import figures
from mami_jax.runtime import strict_json
from mami_jax.runtime.atomic_files import write_text_atomic


#: The record of an evaluation (also how an earlier one in ``--out`` is recognised).
REPORT = "privacy_eval.json"
#: Everything ``evaluate`` may write into ``--out``.
WRITTEN = (REPORT, "privacy_eval.md", "privacy_rank1.png", "privacy_utility.png")


def _with_interval(values: dict, key: str) -> str:
    """``values[key]`` and, where measured, its interval ``values[key + "_ci95"]``."""
    interval = values.get(key + "_ci95")
    shown = _num(values[key])
    return shown if not interval or shown == "n/a" else \
        f"{shown} [{interval[0]:.3f}, {interval[1]:.3f}]"


def markdown(result: dict) -> str:
    """The tables of ``result``: attack per model and modality, the patients still matched,
    the diagnosis probes and classifiers, image quality; headed by a warning until the
    evaluation is ``complete`` (it is written after every model)."""
    lines = [] if result.get("complete", True) else [
        "**Incomplete**: the evaluation was still running, or stopped, when this was written; "
        "the tables below hold what was measured by then.", ""]
    lines += ["Rank-1 with its 95 % interval from a bootstrap over patients; the mean row "
              "averages the groups.", "",
              "| model | group | chance R1 | R1 before | R1 after | AUC before | AUC after |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rep in result.get("attack", {}).items():
        for g, v in rep.items():
            if g == "source":
                continue
            lines.append(f"| {name} | {g} | {_num(v['chance_rank1'])} | "
                         f"{_with_interval(v, 'rank1_before')} | {_with_interval(v, 'rank1_after')} "
                         f"| {_num(v['auc_before'])} | {_num(v['auc_after'])} |")
    for name, rep in result.get("patients", {}).items():
        for g, patients in rep.items():
            kept = [v for v in patients if v["matched_after"]]
            if not kept:
                continue
            lines += ["", f"{name}, {g}: {len(kept)} of {len(patients)} patients still matched",
                      "", "| patient | queries | matched before | matched after |",
                      "| --- | --- | --- | --- |"]
            lines += [f"| {v['patient']} | {v['queries']} | {v['matched_before']} | "
                      f"{v['matched_after']} |" for v in kept]
    for probe, rep in result.get("utility", {}).items():
        lines += ["", f"diagnosis probe on {probe}", "",
                  "| modality | diagnosis AUC original | protected |", "| --- | --- | --- |"]
        for m, v in rep.items():
            lines.append(f"| {m} | {_num(v['auc_original'])} | {_num(v['auc_protected'])} |")
    for hist in result.get("history_utility", {}).values():
        step = "" if hist.get("step") is None else f" (step {hist['step']})"
        lines += ["", f"history diagnosis classifier {hist['classifier']} on {hist['model']}{step}",
                  "",
                  "| modality | diagnosis AUC original | protected | relative change |",
                  "| --- | --- | --- | --- |"]
        for m, v in hist["auc"].items():
            lines.append(f"| {m} | {_num(v['auc_original'])} | {_num(v['auc_protected'])} | "
                         f"{_pct(v.get('relative_change'))} |")
    lines += ["", "Image quality in the model's view (each image read as the model reads it):", "",
              "| modality | PSNR dB (mean) | PSNR dB (min) | unchanged images | SSIM |",
              "| --- | --- | --- | --- | --- |"]
    for m, v in result.get("quality", {}).items():
        lines.append(f"| {m} | {v['psnr_db']:.2f} | {v['psnr_db_min']:.2f} | "
                     f"{v.get('unchanged', 0)} | {v['ssim']:.4f} |")
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    """A rate to 3 places; n/a where a group could not give one (an AUC of one class, a
    Rank-1 where no patient has two studies: None, or NaN in memory)."""
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:+.1f} %"


def save(result: dict, out: str) -> str:
    """Writes what is measured so far (JSON and markdown); returns the markdown."""
    text = markdown(result)
    write_text_atomic(os.path.join(out, REPORT), strict_json.dumps(result, where=REPORT, indent=1))
    write_text_atomic(os.path.join(out, "privacy_eval.md"), text)
    return text


def pictures(result: dict, out: str) -> list[str]:
    """OUT/privacy_rank1.png (Rank-1 before and after, per model and modality, against
    chance and twice chance) and, where history classifiers judged the diagnosis,
    OUT/privacy_utility.png (each one's AUC change per modality against the 5 % goal);
    returns the paths written."""
    written = [os.path.join(out, WRITTEN[2])]
    figures.rank1_bars(written[0], result["attack"], "Rank-1 before and after protection")
    changes = figures.merged_utility([result], {})
    if changes:
        written.append(os.path.join(out, WRITTEN[3]))
        figures.utility_bars(written[1], changes, title="diagnosis AUC, protected vs original")
    return written
