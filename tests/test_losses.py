"""Losses against hand-worked examples, masking, gradients at zero distance, sharding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mami_jax.train import losses


def softplus(x):
    return math.log1p(math.exp(x))


# Five points in 2-D (hand-drawn on a grid):
#   p0=(0,0) L0   p1=(3,0) L0   p2=(0,4) L1   p3=(3,4) L1   p4=(6,0) L2
# Distances: d01=3 d02=4 d03=5 d04=6 d12=5 d13=4 d14=3 d23=3 d24=sqrt(52) d34=5
#   anchor 0: hardest pos d01=3, hardest neg min(4,5,6)=4      -> softplus(-1)
#   anchor 1: hardest pos d01=3, hardest neg min(5,4,3)=3      -> softplus(0) = log 2
#   anchor 2: hardest pos d23=3, hardest neg min(4,5,7.2)=4    -> softplus(-1)
#   anchor 3: hardest pos d23=3, hardest neg min(5,4,5)=4      -> softplus(-1)
#   anchor 4: no positive (only member of L2)                  -> excluded
# loss = (3 softplus(-1) + log 2) / 4 = 0.408233...
POINTS = np.array([[0, 0], [3, 0], [0, 4], [3, 4], [6, 0]], np.float32)
LABELS = np.array([0, 0, 1, 1, 2])
EXPECTED_TRIPLET = (3 * softplus(-1.0) + math.log(2.0)) / 4


def test_triplet_hand_worked():
    loss = losses.batch_hard_soft_margin_triplet(POINTS, LABELS)
    assert float(loss) == pytest.approx(EXPECTED_TRIPLET, rel=1e-6)
    assert EXPECTED_TRIPLET == pytest.approx(0.4082331, abs=1e-6)


def test_triplet_masked_rows_have_no_effect():
    # p5=(3.1,0) with label 1 would be a negative at distance 0.1 from p1 and change
    # anchor 1; p6 duplicates p0's label far away and would be its hardest positive.
    extra = np.array([[3.1, 0.0], [100.0, 100.0]], np.float32)
    pts = np.concatenate([POINTS, extra])
    labels = np.concatenate([LABELS, [1, 0]])
    mask = np.array([True] * 5 + [False, False])
    masked = losses.batch_hard_soft_margin_triplet(pts, labels, mask=mask)
    assert float(masked) == pytest.approx(EXPECTED_TRIPLET, rel=1e-6)
    unmasked = losses.batch_hard_soft_margin_triplet(pts, labels)
    assert abs(float(unmasked) - EXPECTED_TRIPLET) > 0.1
    # Gradients of padding rows are exactly zero.
    grads = jax.grad(losses.batch_hard_soft_margin_triplet)(pts, labels, mask)
    assert np.all(np.asarray(grads)[5:] == 0.0)


def test_triplet_normalize():
    # Points on the axes, scaled by 5, 1, 1, 2. After L2 normalisation they sit at
    # 0, 90, 180, 270 degrees: neighbours are sqrt(2) apart, opposites 2.
    #   L0 = {p0 (0 deg), p1 (90 deg)}, L1 = {p2 (180 deg), p3 (270 deg)}
    #   every anchor: hardest pos sqrt2, hardest neg sqrt2 -> softplus(0) = log 2.
    pts = np.array([[5, 0], [0, 1], [-1, 0], [0, -2]], np.float32)
    labels = np.array([0, 0, 1, 1])
    loss = losses.batch_hard_soft_margin_triplet(pts, labels, normalize=True)
    assert float(loss) == pytest.approx(math.log(2.0), rel=1e-6)
    # Unnormalised, anchor 0: pos d=sqrt(26), neg min(6, sqrt(29)) -> not log 2.
    raw = losses.batch_hard_soft_margin_triplet(pts, labels, normalize=False)
    assert abs(float(raw) - math.log(2.0)) > 0.05


def test_triplet_no_valid_anchor_is_zero():
    pts = np.array([[0, 0], [1, 0]], np.float32)
    assert float(losses.batch_hard_soft_margin_triplet(pts, np.array([0, 1]))) == 0.0
    assert float(losses.batch_hard_soft_margin_triplet(pts, np.array([0, 0]))) == 0.0


def test_triplet_gradient_finite_with_duplicates():
    # Duplicates within a label (distance 0 to the positive) and across labels
    # (distance 0 to the negative): sqrt at 0 must not produce inf/NaN.
    pts = np.array([[1, 2], [1, 2], [1, 2], [0.5, 0.5], [0.5, 0.5]], np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    for normalize in (False, True):
        value, grads = jax.value_and_grad(losses.batch_hard_soft_margin_triplet)(
            pts, labels, None, normalize)
        assert np.isfinite(float(value))
        assert np.all(np.isfinite(np.asarray(grads)))
    dist_grad = jax.grad(lambda x: losses.pairwise_euclidean_distances(x).sum())(pts)
    assert np.all(np.isfinite(np.asarray(dist_grad)))


def test_triplet_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(6, 3)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    loss_fn = jax.jit(lambda x: losses.batch_hard_soft_margin_triplet(x, labels))
    grad = np.asarray(jax.jit(jax.grad(loss_fn))(pts))
    eps = 1e-2
    numeric = np.zeros_like(pts)
    for idx in np.ndindex(pts.shape):
        plus, minus = pts.copy(), pts.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (float(loss_fn(plus)) - float(loss_fn(minus))) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, atol=2e-3)


def test_pairwise_distances_values():
    d = np.asarray(losses.pairwise_euclidean_distances(POINTS))
    assert d[0, 3] == pytest.approx(5.0, rel=1e-6)
    assert d[2, 4] == pytest.approx(math.sqrt(52), rel=1e-6)
    assert np.all(np.diag(d) == 0.0)


def test_cross_entropy_hand_worked():
    # logits (2, 0, 0), label 0: -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) = 0.239606
    logits = np.array([[2.0, 0.0, 0.0]], np.float32)
    ce = losses.identity_cross_entropy(logits, np.array([0]))
    assert float(ce) == pytest.approx(math.log1p(2 * math.exp(-2)), rel=1e-6)
    # smoothing 0.3 over 3 classes: target (0.8, 0.1, 0.1); with L = log(e^2 + 2),
    # loss = -(0.8 (2 - L) + 0.2 (-L)) = L - 1.6 = 0.639606
    smooth = losses.identity_cross_entropy(logits, np.array([0]), label_smoothing=0.3)
    assert float(smooth) == pytest.approx(math.log(math.exp(2) + 2) - 1.6, rel=1e-6)


def test_cross_entropy_mask_and_bad_labels():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 5.0, 0.0]], np.float32)
    expected = math.log1p(2 * math.exp(-2))
    # Padding row with an out-of-range label: ignored.
    ce = losses.identity_cross_entropy(logits, np.array([0, -1]), mask=np.array([True, False]))
    assert float(ce) == pytest.approx(expected, rel=1e-6)
    # The same label on a valid row: NaN, so the trainer's NaN guard stops.
    assert np.isnan(float(losses.identity_cross_entropy(logits, np.array([0, 3]))))
    # Mean over two valid rows: second row label 1 -> log(1 + 2 e^-5).
    both = losses.identity_cross_entropy(logits, np.array([0, 1]))
    assert float(both) == pytest.approx((expected + math.log1p(2 * math.exp(-5))) / 2, rel=1e-6)
    # All padding: 0, not NaN.
    none = losses.identity_cross_entropy(logits, np.array([0, 1]), mask=np.array([False, False]))
    assert float(none) == 0.0


def test_infonce_hand_worked():
    # Two pairs, u = v = e1, e2 (any scale), temperature 1:
    #   logits [[1, 0], [0, 1]]; each row: -1 + log(e + 1) = log(1 + e^-1) = 0.313262
    u = np.array([[3.0, 0.0], [0.0, 0.5]], np.float32)
    v = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    loss = losses.difference_alignment_infonce(u, v, None, temperature=1.0)
    assert float(loss) == pytest.approx(softplus(-1.0), rel=1e-6)
    # temperature 0.5 doubles the logits: log(1 + e^-2)
    loss = losses.difference_alignment_infonce(u, v, None, temperature=0.5)
    assert float(loss) == pytest.approx(softplus(-2.0), rel=1e-6)
    # A third pair that is masked (teacher missing) is neither anchor nor candidate,
    # even though its teacher difference equals pair 0's.
    u3 = np.concatenate([u, [[1.0, 1.0]]])
    v3 = np.concatenate([v, [[1.0, 0.0]]])
    masked = losses.difference_alignment_infonce(u3, v3, np.array([True, True, False]), 1.0)
    assert float(masked) == pytest.approx(softplus(-1.0), rel=1e-6)


def test_pair_differences_and_zero_difference():
    feats = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
    diffs, valid = losses.all_pair_differences(feats, np.array([True, True, False]))
    np.testing.assert_allclose(np.asarray(diffs), [[0, 0], [1, -2], [1, -2]])
    np.testing.assert_array_equal(np.asarray(valid), [True, False, False])
    value, grad = jax.value_and_grad(
        lambda s: losses.difference_alignment_infonce(s, diffs, None, 0.1))(diffs)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


def test_total_loss():
    total, logs = losses.total_loss({"ce": jnp.float32(2.0), "triplet": jnp.float32(0.5)},
                                    {"ce": 1.0, "triplet": 0.5})
    assert float(total) == pytest.approx(2.25)
    assert float(logs["triplet_weighted"]) == pytest.approx(0.25)
    assert float(logs["ce"]) == 2.0 and float(logs["total"]) == pytest.approx(2.25)
    with pytest.raises(KeyError, match="align"):
        losses.total_loss({"ce": 1.0}, {"ce": 1.0, "align": 0.01})
    with pytest.raises(KeyError, match="triplet"):
        losses.total_loss({"ce": 1.0, "triplet": 1.0}, {"ce": 1.0})


def test_losses_sharded_equal_unsharded():
    devices = np.array(jax.devices())
    if devices.size < 8:
        pytest.skip("needs the 8 virtual CPU devices from conftest")
    mesh = Mesh(devices[:8].reshape(4, 2), ("data", "model"))
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(16, 8)).astype(np.float32)
    labels = np.repeat(np.arange(8), 2)
    logits = rng.normal(size=(16, 6)).astype(np.float32)
    cls = rng.integers(0, 6, size=16)
    mask = np.arange(16) < 14

    def both(emb, labels, logits, cls, mask):
        return (losses.batch_hard_soft_margin_triplet(emb, labels, mask),
                losses.identity_cross_entropy(logits, cls, 0.1, mask))

    ref = both(emb, labels, logits, cls, mask)
    row = NamedSharding(mesh, P("data"))
    args = [jax.device_put(a, row) for a in (emb, labels, logits, cls, mask)]
    sharded = jax.jit(both)(*args)
    for a, b in zip(ref, sharded):
        assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_docstring_examples_run():
    import doctest
    result = doctest.testmod(losses)
    assert result.attempted >= 1 and result.failed == 0


def test_batch_standardize_hand_worked_and_masked():
    x = jnp.asarray([[1.0, 2.0], [3.0, 6.0]])  # mean (2, 4), variance (1, 4)
    np.testing.assert_allclose(losses.batch_standardize(x, eps=0.0), [[-1, -1], [1, 1]], rtol=1e-6)
    padded = jnp.concatenate([x, jnp.asarray([[100.0, -50.0]])])
    out = losses.batch_standardize(padded, jnp.asarray([True, True, False]), eps=0.0)
    np.testing.assert_allclose(out[:2], [[-1, -1], [1, 1]], rtol=1e-6)
    # A shift shared by every row changes nothing.
    np.testing.assert_allclose(losses.batch_standardize(x + 7.0), losses.batch_standardize(x),
                               rtol=1e-5)
