"""Embeds the evaluation split and scores it per dataset, modality and protocol.

Every image of the split is embedded once (padded, masked batches, sharded over
the data axis); each (dataset, modality) group is then scored under each
protocol ("reid": every image a query, the query's own study left out of the
gallery; "history": the latest visit against the earlier ones) with chunked
retrieval metrics, plus same/different-patient verification. Results go to
``out_dir/metrics.json``, a printed table and ``out_dir/cmc.png``.

Embedding a split takes minutes on a large manifest, so ``evaluate`` shows one progress
bar per evaluation (``runtime.progress``: stderr, first process only, a line per 30 s in
a log file); during training it is the bar of each evaluation.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from mami_jax.data.config import modality_settings, symmetric_modalities
from mami_jax.data.manifest import MODALITIES, ManifestRow, row_place
from mami_jax.data.pipeline import make_eval_loader
from mami_jax.data.transforms import symmetry_mean
from mami_jax.evaluate.protocols import build_protocol
from mami_jax.evaluate.report import write_eval_report
from mami_jax.evaluate.retrieval import chunked_reid_metrics, chunked_verification_metrics
from mami_jax.evaluate.retrieval_overview import write_retrieval_overview
from mami_jax.runtime.progress import progress_bar
from mami_jax.runtime.sharding import check_data_axis_divides, global_batch

EmbedFn = Callable[[dict], jax.Array]  # sharded batch -> (B, C) embeddings


class EvaluationStopped(Exception):
    """``embed_rows`` left its pass unfinished because ``stop_asked`` said so (SIGTERM
    during a training run's evaluation: the grace period before the kill is shorter than
    embedding a large split, and the run must save its step in it)."""


def embed_rows(embed_fn: EmbedFn, rows: Sequence[ManifestRow], indices: Sequence[int],
               data_cfg, mesh, batch_size: int, progress: str | None = None,
               stop_asked: Callable[[], bool] | None = None) -> np.ndarray:
    """Embeddings (len(indices), C) of ``rows[indices]``, in the order of ``indices``.

    Every process iterates the same global batches of ``batch_size`` (``eval.batch_size``),
    decodes and feeds only its own contiguous share (``make_eval_loader``), and gathers the
    embeddings, row indices and masks of the whole batch, so the global batch is the
    1-process loader's batch whatever the number of hosts. Images of modalities with
    ``data.modalities.<m>.eval_symmetry`` are embedded as the mean over the 8 symmetries
    of the square (``symmetry_views``).
    ``progress``: the label of a progress bar over the images (None: no bar, for a caller
    that shows its own). With ``data.skip_bad_images`` an image skipped as unreadable or
    missing has a NaN row (``embedded`` tells them apart); without it such an image is a
    ``DataError`` naming it. ``stop_asked``, asked after every batch: True ends the pass
    with ``EvaluationStopped``.
    """
    batch_size = int(batch_size)
    check_data_axis_divides(f"eval batch size {batch_size}", batch_size, mesh)
    proc = jax.process_index()
    position = {int(i): k for k, i in enumerate(indices)}
    symmetric = symmetric_modalities(data_cfg)
    out, done = None, 0
    with progress_bar(len(indices), progress or "", disable=progress is None or proc != 0) as bar:
        for local in make_eval_loader(rows, indices, data_cfg, batch_size, process_index=proc,
                                      process_count=jax.process_count()):
            emb = symmetry_mean(
                lambda v: _gathered(embed_fn(global_batch(
                    {"images": v, "mask": local["mask"]}, mesh)), np.float32),
                local["images"], MODALITIES[int(local["modality"][0])] in symmetric)
            index, mask = _gathered_rows(local)
            if out is None:
                out = np.full((len(indices), emb.shape[-1]), np.nan, np.float32)
            keep = (index >= 0) & mask   # padding and skipped images stay NaN
            _refuse_non_finite(emb, keep, index, rows)
            out[[position[int(i)] for i in index[keep]]] = emb[keep]
            n = int((index >= 0).sum())
            done += n
            bar.update(n)
            if stop_asked is not None and stop_asked():
                raise EvaluationStopped(f"stopped after {done} of {len(indices)} images")
    if out is None:
        raise ValueError("nothing to embed: no row indices given")
    return out


def _gathered(x, dtype=None) -> np.ndarray:
    """The global batch's rows of ``x``: every process's share, in process order."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True), dtype)


def _gathered_rows(local: dict) -> tuple[np.ndarray, np.ndarray]:
    """(row index, mask) of the global batch from every process's share (one gather): the
    other processes' images were decoded, and maybe skipped, there."""
    both = multihost_utils.process_allgather(
        {"index": local["index"], "mask": local["mask"]}, tiled=True)
    return np.asarray(both["index"]), np.asarray(both["mask"], bool)


def _refuse_non_finite(emb: np.ndarray, keep: np.ndarray, index: np.ndarray,
                       rows: Sequence[ManifestRow]) -> None:
    """A ValueError naming the images of a batch the model embedded as NaN or inf. A NaN
    row is how a skipped image is marked (``embedded``): a model overflow (half precision,
    a diverged checkpoint) would otherwise be counted as unreadable images and left out of
    the metrics, whatever ``data.skip_bad_images`` says."""
    bad = np.flatnonzero(keep & ~np.isfinite(emb).all(axis=1))
    if bad.size:
        named = "; ".join(_row_name(rows, int(index[k])) for k in bad[:3])
        raise ValueError(f"the model's embedding of {bad.size} image(s) is not finite (NaN or "
                         f"inf): {named}{'; ...' if bad.size > 3 else ''}; a diverged "
                         "checkpoint or an overflow in model.dtype, not the images")


def embedded(embeddings: np.ndarray) -> np.ndarray:
    """bool per row of ``embed_rows``'s result: False for an image skipped as unreadable or
    missing (``data.skip_bad_images``), whose row is NaN."""
    return ~np.isnan(embeddings).any(axis=1)


def left_out_skipped(rows: Sequence[ManifestRow], embeddings: np.ndarray, what: str
                     ) -> np.ndarray:
    """``embedded(embeddings)``, after a warning that counts and names the images skipped
    (``rows``: the embedded rows, in order; ``what``: where they are left out of)."""
    ok = embedded(embeddings)
    skipped = np.flatnonzero(~ok)
    if skipped.size:
        named = "; ".join(_row_name(rows, int(k)) for k in skipped[:3])
        logging.warning("%d of the %d images were skipped as unreadable or missing "
                        "(data.skip_bad_images) and are left out of %s: %s%s", skipped.size,
                        len(rows), what, named, "; ..." if skipped.size > 3 else "")
    return ok


def _row_name(rows: Sequence[ManifestRow], i: int) -> str:
    """A row as messages name it: ``FILE: line N (image_id=...)``, or by index for a row
    that was made in memory."""
    return f"{row_place(rows[i]) or f'manifest row {i}'} (image_id={rows[i].image_id!r})"


def group_indices(rows: Sequence[ManifestRow], split: str) -> dict[str, list[int]]:
    """Row indices of ``split`` per "dataset/modality" group, in row order."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.split == split:
            groups.setdefault(f"{r.dataset}/{r.modality}", []).append(i)
    return groups


def score_groups(embeddings: dict[int, np.ndarray] | np.ndarray, rows, groups, eval_cfg
                 ) -> dict[str, dict]:
    """Metrics per "dataset/modality/protocol" from embeddings indexed by row."""
    results = {}
    for name, members in groups.items():
        sub = [rows[i] for i in members]
        emb = np.stack([embeddings[i] for i in members])
        for protocol_name in eval_cfg.protocols:
            protocol = build_protocol(sub, protocol_name, split=sub[0].split)
            if protocol.left_out.size:
                logging.warning("%s/%s: %d of the %d images have no order and are left out "
                                "(neither query nor gallery: their place in time is unknown)",
                                name, protocol_name, protocol.left_out.size, len(sub))
            if protocol.query.size == 0 or protocol.gallery.size == 0:
                logging.warning("%s/%s: empty query or gallery, skipped", name, protocol_name)
                continue
            if not protocol.query_has_match.any():
                logging.warning("%s/%s: no query has a true match (no patient with images of "
                                "two studies), skipped", name, protocol_name)
                continue
            metrics = chunked_reid_metrics(
                emb[protocol.query], emb[protocol.gallery], protocol.query_pids,
                protocol.gallery_pids, protocol.query_studies, protocol.gallery_studies,
                chunk_size=int(eval_cfg.chunk_size), metric=eval_cfg.metric,
                ks=tuple(eval_cfg.ks))
            if eval_cfg.verification and protocol_name == "reid":
                pids = np.asarray([r.patient_key for r in sub])
                studies = np.asarray([r.study_key for r in sub])
                if len(set(pids.tolist())) > 1:
                    metrics.update(chunked_verification_metrics(
                        emb, pids, studies, far=float(eval_cfg.far), metric=eval_cfg.metric,
                        num_negatives=int(eval_cfg.num_negatives),
                        max_positives=int(eval_cfg.max_positives)))
            results[f"{name}/{protocol_name}"] = metrics
    return results


SplitEmbedder = Callable[[list], np.ndarray]   # the split's rows -> (N, C) embeddings


def embed_split_by(embed_fn: EmbedFn, config, mesh,
                   stop_asked: Callable[[], bool] | None = None) -> SplitEmbedder:
    """``embed_rows`` of the split's rows with the evaluation's batch size and progress
    bar: how the trainer embeds a split (``run_checkpoint`` keeps its chunks instead)."""
    def embed_split(split_rows):
        return embed_rows(embed_fn, split_rows, range(len(split_rows)), config.data, mesh,
                          config.eval.batch_size, progress=f"evaluating {config.eval.split}",
                          stop_asked=stop_asked)
    return embed_split


def evaluate(embed_split: SplitEmbedder, rows: Sequence[ManifestRow], config, out_dir: str,
             title: str | None = None, retrieval_picture: bool = False) -> dict[str, dict]:
    """Embeds ``config.eval.split`` with ``embed_split`` (``embed_split_by``, or a pass
    that keeps its chunks) and writes the report; returns metrics per group. With
    ``retrieval_picture`` (``--mode=eval``; not the trainer's periodic evaluations, where
    decoding and drawing the images each time would add up) also ``retrieval.png``
    (``retrieval_overview``)."""
    groups = group_indices(rows, config.eval.split)
    if not groups:
        raise ValueError(f"no rows in split {config.eval.split!r} to evaluate")
    indices = [i for members in groups.values() for i in members]
    emb = embed_split([rows[i] for i in indices])
    ok = left_out_skipped([rows[i] for i in indices], emb, "the evaluation")
    by_row = {i: e for i, e, k in zip(indices, emb, ok) if k}
    groups = {g: kept for g, members in groups.items()
              if (kept := [i for i in members if i in by_row])}
    results = score_groups(by_row, rows, groups, config.eval)
    if not results:
        raise ValueError(f"nothing to score in split {config.eval.split!r}: no group has a "
                         "query with a true match (evaluate.split_check)")
    if jax.process_index() == 0:
        write_eval_report(results, out_dir, title=title)
        if retrieval_picture:
            windows = {m: s.value_window for m, s in modality_settings(config.data).items()}
            write_retrieval_overview(os.path.join(out_dir, "retrieval.png"), by_row, rows,
                                     groups, config.eval.metric, title or "evaluation",
                                     value_windows=windows)
    return results
