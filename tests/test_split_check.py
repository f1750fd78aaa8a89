"""An evaluation split that cannot be scored is refused before a run, and a group of it
that cannot be scored is skipped, not the end of the evaluation.

The audit's cases: a manifest without test rows trained every step and then stopped with
"no rows in split 'test' to evaluate"; a test split of one image per patient trained
every step and then stopped with "verification needs both kinds of pairs: 0
same-patient"; in a manifest of several modalities, one modality of one image per
patient ended the whole evaluation the same way.
"""

import numpy as np
import pytest

from mami_jax.config import base_config
from mami_jax.data.manifest import ManifestRow
from mami_jax.evaluate import evaluator
from mami_jax.evaluate.evaluator import group_indices, score_groups
from mami_jax.evaluate.split_check import check_split_evaluable, patients_with_two_studies


def row(patient: str, study: str, modality: str = "xray", split: str = "test") -> ManifestRow:
    return ManifestRow(f"{patient}_{modality}_{study}", patient, study, study[-1], modality,
                       "d", "", f"{patient}/{study}.png", split)


def test_patients_with_two_studies_are_counted_per_dataset_and_modality():
    rows = [row("a", "s1"), row("a", "s2"),                      # a: two X-ray studies
            row("b", "s1"), row("b", "s1"),                      # b: two images, one study
            row("a", "s1", "ct"), row("c", "s1", "ct"), row("c", "s2", "ct"),
            row("d", "s1"), row("d", "s2", split="train")]      # d's second is not test
    assert patients_with_two_studies(rows, "test") == {"d/xray": 1, "d/ct": 1}
    assert patients_with_two_studies(rows, "train") == {"d/xray": 0}


def test_a_split_without_rows_is_refused_naming_the_splits_there():
    rows = [row("a", "s1", split="train"), row("a", "s2", split="train"),
            row("b", "s1", split="val")]
    rows[0].located("m.csv", 2)
    with pytest.raises(ValueError) as e:
        check_split_evaluable(rows, "test", otherwise="do X")
    assert str(e.value) == (
        "m.csv: no rows in split 'test' to evaluate (the rows' splits: train 2, val 1): give "
        "some patients split 'test', or evaluate another split (--config.eval.split); or do X")


def test_a_split_of_single_studies_is_refused_and_one_patient_of_two_is_enough():
    rows = [row("a", "s1"), row("a", "s1"), row("b", "s1", "ct"), row("c", "s2")]
    with pytest.raises(ValueError, match=r"^split 'test' has 4 images of 3 patients, but no "
                                         r"patient has images of two studies"):
        check_split_evaluable(rows, "test")
    check_split_evaluable(rows + [row("b", "s2", "ct")], "test")


def test_the_check_asks_the_protocols_the_run_evaluates():
    """Slides of one patient without an order: two studies (the reid protocol scores
    them), but no ordered visits. With eval.protocols = ("history",) the check passed and
    the evaluation then found nothing to score."""
    def slide(patient, study, order):
        r = row(patient, study, "pathology")
        return ManifestRow(r.image_id, r.patient_id, r.study_id, order, r.modality, r.dataset,
                           r.view, r.path, r.split)
    undated = [slide("a", "s1", ""), slide("a", "s2", ""), slide("b", "s1", ""),
               slide("b", "s2", "")]
    check_split_evaluable(undated, "test")
    check_split_evaluable(undated, "test", protocols=("reid", "history"))
    with pytest.raises(ValueError, match=r"^split 'test' has 4 images of 2 patients, but no "
                                         r"patient has images of two visits of different "
                                         r"order .* the protocols \['history'\] evaluated"):
        check_split_evaluable(undated, "test", protocols=("history",))
    dated = undated[:1] + [slide("a", "s2", "2")] + undated[2:]
    with pytest.raises(ValueError, match="two visits of different order"):   # "" is left out
        check_split_evaluable(dated, "test", protocols=("history",))
    check_split_evaluable([slide("a", "s1", "1")] + dated[1:], "test", protocols=("history",))


def test_a_group_without_a_true_match_is_skipped_and_the_others_scored(monkeypatch):
    """X-ray: a and b with two visits each, embeddings that find the right patient first
    (Rank-1 1, AUC 1). CT: one image per patient, nothing to score."""
    rows = [row("a", "s1"), row("a", "s2"), row("b", "s1"), row("b", "s2"),
            row("a", "s1", "ct"), row("b", "s1", "ct")]
    emb = np.asarray([[1, 0.1], [1, -0.1], [0.1, 1], [-0.1, 1], [1, 0], [0, 1]], np.float32)
    warned = []    # (captured here: caplog misses records once absl has set up logging)
    monkeypatch.setattr(evaluator.logging, "warning", lambda *a: warned.append(a[0] % a[1:]))
    results = score_groups(emb, rows, group_indices(rows, "test"), base_config().eval)
    assert sorted(results) == ["d/xray/history", "d/xray/reid"]
    reid = results["d/xray/reid"]
    assert (reid["rank1"], reid["num_valid_queries"], reid["auc"]) == (1.0, 4, 1.0)
    assert (reid["num_positive_pairs"], reid["num_negative_pairs"]) == (2, 4)
    assert results["d/xray/history"]["num_queries"] == 2
    assert warned == ["d/ct/reid: no query has a true match (no patient with images of two "
                      "studies), skipped", "d/ct/history: empty query or gallery, skipped"]
