"""The t-SNE map ``--mode=embed`` draws (``evaluate/tsne.py``, ``evaluate/embedding_map.py``).
The command writing it is checked in tests/test_readme_commands.py."""

import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mami_jax.evaluate import tsne as T
from mami_jax.evaluate.embedding_map import draw_embedding_map, patients_to_show, whole_patients


def _clusters(per=40, k=4, dim=48, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), per)
    return rng.normal(size=(k, dim))[labels] * 3 + rng.normal(size=(k * per, dim)), labels


def test_each_points_bandwidth_gives_the_requested_perplexity():
    x, _ = _clusters()
    for perplexity in (5.0, 30.0):
        p = T.conditional_affinities(T.squared_distances(T.normalized(x)), perplexity)
        assert np.allclose(p.sum(axis=1), 1.0) and np.all(np.diag(p) == 0)
        entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
        np.testing.assert_allclose(np.exp(entropy), perplexity, rtol=1e-6)


def test_joint_affinities_are_symmetric_and_sum_to_one():
    x, _ = _clusters(per=5)
    p = T.joint_affinities(x)          # perplexity 30 capped at (20 - 1) / 3
    np.testing.assert_allclose(p, p.T)
    assert abs(p.sum() - 1.0) < 1e-6


def test_two_points_alone_are_pulled_together_and_a_far_one_stays_away():
    """KL(P || Q) on a hand-sized case: with all affinity between points 0 and 1, the map
    that puts them together has the lower divergence."""
    p = jnp.asarray([[0, .45, .025, .025], [.45, 0, .025, .025],
                     [.025, .025, 0, .0], [.025, .025, 0, 0]], jnp.float32)
    p = p / p.sum()
    near = jnp.asarray([[0, 0], [0.1, 0], [3, 3], [-3, 3]], jnp.float32)
    far = jnp.asarray([[0, 0], [5, 0], [3, 3], [-3, 3]], jnp.float32)
    assert float(T.kl_divergence(near, p)) < float(T.kl_divergence(far, p))


def test_the_map_keeps_clusters_apart_and_is_the_same_on_every_run():
    x, labels = _clusters()
    y = T.tsne(x)
    d = T.squared_distances(y)
    np.fill_diagonal(d, np.inf)
    neighbours = np.argsort(d, axis=1)[:, :5]
    assert (labels[neighbours] == labels[:, None]).mean() > 0.97
    p = jnp.asarray(T.joint_affinities(x), jnp.float32)
    start = jnp.asarray(T.principal_start(x), jnp.float32)
    assert float(T.kl_divergence(jnp.asarray(y), p)) < 0.5 * float(T.kl_divergence(start, p))
    np.testing.assert_array_equal(T.tsne(x), y)


def test_too_few_points_is_an_error():
    with pytest.raises(ValueError, match="at least 4 points"):
        T.tsne(np.zeros((3, 8)))


def test_a_sample_takes_whole_patients_at_most_the_limit():
    ids = ["a"] * 5 + ["b"] * 3 + ["c"] * 4 + ["d"] * 1 + ["e"] * 2
    assert list(whole_patients(ids, 100)) == list(range(15))
    pick = whole_patients(ids, 7, seed=1)
    chosen = {ids[i] for i in pick}
    assert len(pick) <= 7 and len(pick) == sum(ids.count(p) for p in chosen)
    assert list(pick) == sorted(pick) and list(whole_patients(ids, 7, seed=1)) == list(pick)


def test_the_patients_in_colour_come_from_each_modality_in_turn():
    patients = np.array(list("aaabbcddeeee"))
    kinds = np.array(["ct"] * 6 + ["xray"] * 6)        # c has one image: never shown
    assert patients_to_show(patients, kinds, 3) == ["a", "e", "b"]
    assert patients_to_show(patients, kinds, 10) == ["a", "e", "b", "d"]


def test_the_picture_is_written_and_a_handful_of_images_is_not_mapped(tmp_path):
    x, labels = _clusters(per=6, k=5)
    patients = [f"p{k}" for k in labels]
    modalities = ["xray" if k % 2 else "ct" for k in labels]
    path = tmp_path / "map.png"
    assert draw_embedding_map(str(path), x, patients, modalities, "step 1", max_points=20)
    assert Image.open(path).format == "PNG" and Image.open(path).size[0] > 1000
    assert not draw_embedding_map(str(tmp_path / "none.png"), x[:3], patients[:3],
                                  modalities[:3], "step 1")
    assert not (tmp_path / "none.png").exists()


def test_arguments_that_do_not_line_up_are_named_before_drawing(tmp_path):
    """Half the ids drew half the points and said True; NaN rows ended in numpy's
    'SVD did not converge'."""
    x, labels = _clusters(per=6, k=5)
    patients = [f"p{k}" for k in labels]
    modalities = ["xray"] * len(x)
    path = str(tmp_path / "map.png")
    with pytest.raises(ValueError, match=r"^patient_ids: 15 for 30 embeddings; give one per "):
        draw_embedding_map(path, x, patients[:15], modalities, "t")
    with pytest.raises(ValueError, match=r"^modalities: 3 for 30 embeddings"):
        draw_embedding_map(path, x, patients, modalities[:3], "t")
    x[[4, 9]] = np.nan
    with pytest.raises(ValueError, match=r"^embeddings: 2 rows are NaN or infinite \(rows \[4, 9\]"):
        draw_embedding_map(path, x, patients, modalities, "t")
    assert not os.path.exists(path)
