"""Pictures of a privacy evaluation (docs/privacy.md): cue maps, protected images beside
their originals, Rank-1 before and after protection per re-ID model, and the diagnosis
AUC a protection costs per modality.

Every function reads what the commands wrote (cue ``.npz`` maps, protected manifests,
``privacy_eval.json``) and writes one PNG (matplotlib Agg) all-or-nothing.
"""

from __future__ import annotations

import os
import textwrap
from typing import Sequence

import numpy as np

from mami_jax.apps.privacy.model_input import read_source, settings_for
from mami_jax.apps.privacy.protect import SUFFIX
from mami_jax.runtime.atomic_files import write_atomic


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _shown(unit: np.ndarray) -> np.ndarray:
    """First slice of (T, H, W, C) unit pixels, as imshow takes it."""
    return unit[0] if unit.shape[-1] == 3 else unit[0, :, :, 0]


def _show(ax, image, title=""):
    ax.imshow(image, cmap=None if image.ndim == 3 else "gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def cue_grid(path: str, rows, maps: Sequence[dict], data_cfg) -> None:
    """One column per row: the image, its gradient cues and its occlusion cues over it
    (``maps[i]``: the arrays a ``cues`` .npz holds)."""
    plt = _plt()
    fig, axes = plt.subplots(3, len(rows), figsize=(2.2 * len(rows), 6.9), squeeze=False)
    for col, (row, m) in enumerate(zip(rows, maps)):
        shown = _shown(read_source(row, settings_for(data_cfg, row.modality)).unit)
        _show(axes[0, col], shown, f"{row.modality} ({row.image_id})")
        for ax, name in zip(axes[1:, col], ("gradient", "occlusion")):
            _show(ax, shown, f"{name} cues")
            ax.imshow(m[name][0], cmap="jet", alpha=0.45, vmin=0, vmax=1)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def comparison_grid(path: str, originals, variants: dict, data_cfg, gain: float = 10.0) -> None:
    """One line per original row: the original, then for each variant (name -> protected
    rows, aligned with ``originals``) the protected image and ``gain`` x its change
    (grey = no change)."""
    plt = _plt()
    cols = 1 + 2 * len(variants)
    fig, axes = plt.subplots(len(originals), cols, figsize=(2.2 * cols, 2.3 * len(originals)),
                             squeeze=False)
    for line, row in enumerate(originals):
        s = settings_for(data_cfg, row.modality)
        a = read_source(row, s).unit
        _show(axes[line, 0], _shown(a), f"{row.modality} original")
        for k, (name, prot) in enumerate(variants.items()):
            b = read_source(prot[line], s).unit
            psnr = 10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12))
            _show(axes[line, 1 + 2 * k], _shown(b), f"{name} ({psnr:.1f} dB)")
            _show(axes[line, 2 + 2 * k], np.clip(0.5 + gain * _shown(b - a), 0, 1),
                  f"change x{gain:g}")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def protect_preview(path: str, originals, protected, data_cfg, per_modality: int = 1) -> int:
    """``comparison_grid`` of the first ``per_modality`` rows of each modality of
    ``originals`` beside their copies in ``protected`` (a ``protect`` manifest's rows, read
    back so that their paths are whole): what a user looks at before sharing the folder.
    Returns the number of rows shown."""
    copies = {r.image_id: r for r in protected}
    shown, seen = [], {}
    for row in originals:
        copy = copies.get(row.image_id + SUFFIX)
        if copy is not None and seen.get(row.modality, 0) < per_modality:
            seen[row.modality] = seen.get(row.modality, 0) + 1
            shown.append((row, copy))
    if shown:
        comparison_grid(path, [a for a, _ in shown], {"protected": [b for _, b in shown]},
                        data_cfg)
    return len(shown)


def _modalities(attacks) -> list:
    """The groups (modalities) of several attack reports (model -> group -> metrics), sorted,
    without the summary entries ``mean`` and ``source``."""
    return sorted({g for attack in attacks for rep in attack.values() for g in rep
                   if g not in ("mean", "source")})


def _whiskers(rep: dict, groups, key: str):
    """(2, n) distances from each group's ``key`` to the ends of its interval
    (``key + "_ci95"``): none for a group without one (one such group removed every
    group's), None where no group has one (reports of before intervals)."""
    intervals = [rep[g].get(key + "_ci95") for g in groups]
    if not any(i is not None for i in intervals):
        return None
    values = np.asarray([rep[g][key] for g in groups], np.float64)
    ends = np.asarray([i if i is not None else (v, v) for i, v in zip(intervals, values)],
                      np.float64).T
    return np.maximum(np.stack([values - ends[0], ends[1] - values]), 0.0)


def _measured(entry: dict | None) -> bool:
    """Whether a group's report has a Rank-1 to draw: a group where no patient has two
    studies has none (null in the JSON, NaN in memory), which the figures failed on."""
    return entry is not None and all(
        entry.get(k) is not None and np.isfinite(entry[k])
        for k in ("rank1_before", "rank1_after", "chance_rank1"))


def _tick_labels(groups) -> list[str]:
    """A group's modality, or "dataset/modality" where two datasets share a modality (both
    read "xray" before)."""
    modalities = [g.split("/")[-1] for g in groups]
    return [m if modalities.count(m) == 1 else g for g, m in zip(groups, modalities)]


def rank1_bars(path: str, attack: dict, title: str = "") -> None:
    """Grouped bars: per re-ID model (``attack``: name -> ``attack_eval.attack_report``),
    Rank-1 before and after protection for each modality, with chance and twice chance;
    whiskers: the 95 % intervals over patients, where the report holds them."""
    plt = _plt()
    names = list(attack)
    groups = _modalities([attack])
    width = max(4.5, 1.0 + (0.5 + 0.55 * len(groups)) * len(names))   # room for the legend
    fig, axes = plt.subplots(1, len(names), figsize=(width, 3.8), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        rep = attack[name]
        gs = [g for g in groups if _measured(rep.get(g))]
        x = np.arange(len(gs))
        before = [rep[g]["rank1_before"] for g in gs]
        after = [rep[g]["rank1_after"] for g in gs]
        ax.bar(x - 0.2, before, 0.4, label="original queries", color="#7f9fbf",
               yerr=_whiskers(rep, gs, "rank1_before"), error_kw={"lw": 0.8})
        ax.bar(x + 0.2, after, 0.4, label="protected queries", color="#d0624a",
               yerr=_whiskers(rep, gs, "rank1_after"), error_kw={"lw": 0.8})
        for i, g in enumerate(gs):
            c = rep[g]["chance_rank1"]
            ax.plot([i - 0.45, i + 0.45], [c, c], "k:", lw=1)
            ax.plot([i - 0.45, i + 0.45], [2 * c, 2 * c], "k--", lw=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(_tick_labels(gs), fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=8)
    axes[0, 0].set_ylabel("Rank-1, 95% interval\n(dotted: chance, dashed: 2x chance)", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=2)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def merged_utility(reports, rename) -> dict:
    """modality -> {classifier label: relative AUC change}, over the ``history_utility``
    sections of several ``privacy_eval.json`` (usually one file per modality). A classifier
    is labelled by ``rename`` of its path, else by its last folder names, as many as tell
    it from the others (seed0/history and seed1/history were one bar, the last drawn)."""
    changes: dict[str, dict] = {}
    paths = list(dict.fromkeys(p for rep in reports for p in rep.get("history_utility", {})))
    short = _short_names([p for p in paths if p not in rename])
    for rep in reports:
        for path, entry in rep.get("history_utility", {}).items():
            label = rename.get(path, short.get(path))
            for modality, v in entry["auc"].items():
                # a modality whose AUC is undefined (one diagnosis class among its images)
                # has no change to draw; the report's table says n/a
                if modality != "mean" and v.get("relative_change") is not None:
                    changes.setdefault(modality, {})[label] = float(v["relative_change"])
    return changes


def _short_names(paths: list[str]) -> dict[str, str]:
    """Each path's shortest ending of whole folder names that no other path shares."""
    parts = {p: os.path.normpath(p).split(os.sep) for p in paths}
    out = {}
    for p, mine in parts.items():
        for n in range(1, len(mine) + 1):
            ending = mine[-n:]
            if all(other[-n:] != ending for q, other in parts.items() if q != p):
                break
        out[p] = "/".join(x for x in ending if x) or p
    return out


def utility_bars(path: str, changes: dict, goal: float = -0.05, title: str = "") -> None:
    """Per modality (``changes``: modality -> {classifier label: relative AUC change,
    protected against original}), one bar per classifier, with the goal's line (``goal``,
    -5 %: the change a protection may cost) and zero."""
    plt = _plt()
    groups = sorted(changes)
    labels = list(dict.fromkeys(c for g in groups for c in changes[g]))
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(3.6, 1.5 + 0.9 * len(groups)), 3.4))
    x = np.arange(len(groups))
    colours = plt.get_cmap("tab10")
    for i, label in enumerate(labels):
        values = [100.0 * changes[g].get(label, np.nan) for g in groups]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=label, color=colours(i))
    ax.axhline(0.0, color="k", lw=0.8)
    ax.axhline(100.0 * goal, color="k", ls="--", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([g.split("/")[-1] for g in groups], fontsize=8)
    lowest = min([100.0 * goal] + [100.0 * v for g in groups for v in changes[g].values()])
    ax.set_ylim(min(-10.0, 1.15 * lowest), 5.0)
    ax.set_ylabel(f"diagnosis AUC change, % (dashed: {100 * goal:+.0f} %)", fontsize=8)
    ax.legend(fontsize=7, loc="lower left")
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 40)), fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def rank1_grid(path: str, panels: dict, title: str = "") -> None:
    """Rank-1 of protected queries as a table of colours, one panel per ensemble
    (``panels``: label -> {re-ID model: ``attack_eval.attack_report``}): rows are the
    models (every panel the same rows, blank where a panel lacks one), columns the
    modalities, each cell its Rank-1 after protection (three decimals, as near the goal
    one query of a hundred matters; bold where at most twice chance, the goal). Many
    models against five modalities read better this way than as bars."""
    plt = _plt()
    labels = list(panels)
    names = list(dict.fromkeys(n for attack in panels.values() for n in attack))
    groups = _modalities(panels.values())
    fig, axes = plt.subplots(1, len(labels), squeeze=False, sharey=True,
                             figsize=(1.2 + (0.4 + 0.75 * len(groups)) * len(labels),
                                      1.2 + 0.32 * len(names)))
    image = None
    width = max(10, int(10 * (0.4 + 0.75 * len(groups))))  # a panel title's characters a line
    for ax, label in zip(axes[0], labels):
        after = np.full((len(names), len(groups)), np.nan)
        for i, name in enumerate(names):
            for j, g in enumerate(groups):
                rep = panels[label].get(name, {}).get(g)
                if not _measured(rep):
                    continue
                after[i, j] = rep["rank1_after"]
                met = rep["rank1_after"] <= 2 * rep["chance_rank1"] + 1e-9
                ax.text(j, i, f"{rep['rank1_after']:.3f}", ha="center", va="center", fontsize=7,
                        fontweight="bold" if met else "normal")
        image = ax.imshow(after, cmap="Reds", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(np.arange(len(groups)))
        ax.set_xticklabels(_tick_labels(groups), fontsize=7)
        ax.set_title(textwrap.fill(label, width), fontsize=8)
    axes[0, 0].set_yticks(np.arange(len(names)))
    axes[0, 0].set_yticklabels(names, fontsize=7)
    bar = fig.colorbar(image, ax=list(axes[0]), shrink=0.8)
    bar.set_label("Rank-1 after protection\n(bold: at most 2x chance)", fontsize=7)
    if title:   # above the panels' titles, however many lines they wrapped to
        lines = max(len(textwrap.wrap(label, width)) for label in labels)
        fig.suptitle(title, fontsize=9, y=1.0 + 0.035 * lines)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png", bbox_inches="tight"))
    plt.close(fig)
