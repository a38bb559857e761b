"""Distribution metrics on features with known answers."""
import time

import numpy as np
import pytest

from diffaug.metrics import frechet_distance, kid, precision_recall, set_quality

pytestmark = pytest.mark.usefixtures("one_thread")  # two threads on shared cores spin-wait


def gaussian(n, d, mean=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + mean


def test_identical_sets_are_at_distance_zero():
    x = gaussian(500, 16)
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-8)
    value, se = kid(x, x, subsets=20, subset_size=200)
    assert abs(value) < 4 * se + 1e-12  # unbiased: about 0, either sign
    assert precision_recall(x, x) == (1.0, 1.0)


def test_shifted_gaussian_gives_the_analytic_frechet_distance():
    n, d, shift = 4000, 8, 0.5
    a, b = gaussian(n, d, seed=1), gaussian(n, d, mean=shift, seed=2)
    analytic = d * shift**2  # ||mu1 - mu2||^2; both covariances are the identity, so the trace term is 0
    # Sampling error: the mean term's noise has sd ~ 2*shift*sqrt(2d/n), the covariance term is O(d^2/n).
    tolerance = 5 * 2 * shift * np.sqrt(2 * d / n) + 3 * d * d / n
    assert frechet_distance(a, b) == pytest.approx(analytic, abs=tolerance)
    # a scaled covariance: FD = d * (sigma1 - sigma2)^2 for isotropic Gaussians with equal means
    c = gaussian(n, d, seed=3) * 2.0
    assert frechet_distance(a, c) == pytest.approx(d * (1 - 2) ** 2, abs=tolerance + 5 * d * np.sqrt(2 / n) * 4)


def test_kid_grows_with_the_shift_and_has_a_standard_error():
    a = gaussian(600, 16, seed=4)
    near, near_se = kid(a, gaussian(600, 16, mean=0.2, seed=5), subsets=30, subset_size=300)
    far, far_se = kid(a, gaussian(600, 16, mean=1.0, seed=6), subsets=30, subset_size=300)
    assert 0 < near < far and near_se > 0 and far_se > 0
    assert kid(a, a[::-1], subsets=30, subset_size=300) == kid(a, a[::-1], subsets=30, subset_size=300)  # seeded


def test_a_set_missing_a_mode_loses_recall_not_precision():
    rng = np.random.default_rng(7)
    modes = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    real = np.concatenate([m + rng.normal(size=(250, 2)) for m in modes])
    fake = np.concatenate([m + rng.normal(size=(333, 2)) for m in modes[:3]])  # no samples of the fourth mode
    precision, recall = precision_recall(real, fake)
    full_p, full_r = precision_recall(real, np.concatenate([m + rng.normal(size=(333, 2)) for m in modes]))
    assert full_p > 0.9 and full_r > 0.9  # k-NN balls miss a few tail samples either way
    assert abs(precision - full_p) < 0.04  # precision is kept ...
    assert full_r - recall > 0.18 and recall < 0.78  # ... recall drops by about the missing mode's share, 1/4


def test_set_quality_per_class_and_overall_in_seconds():
    classes = ["a", "b", "c"]
    rng = np.random.default_rng(8)
    real_labels = np.repeat(np.arange(3), 1000)
    real = rng.normal(size=(3000, 128)).astype(np.float32) + real_labels[:, None]
    fake_labels = np.repeat(np.arange(3), 700)
    fake = rng.normal(size=(2100, 128)).astype(np.float32) + fake_labels[:, None]
    fake[fake_labels == 2] += 3.0  # only class c is off
    start = time.perf_counter()
    q = set_quality(real, real_labels, fake, fake_labels, classes)
    assert time.perf_counter() - start < 60  # ~2 s on one idle core; generous for shared machines
    assert set(q["per_class"]) == set(classes)
    per = q["per_class"]
    assert per["c"]["fd"] > 10 * max(per["a"]["fd"], per["b"]["fd"])
    assert per["c"]["kid"] > 10 * max(per["a"]["kid"], per["b"]["kid"])
    assert per["a"]["n_real"] == 1000 and per["a"]["n_synthetic"] == 700
    assert q["overall"]["n_real"] == 3000 and set(q["overall"]) == {"fd", "kid", "kid_se", "precision", "recall", "n_real", "n_synthetic"}


def test_too_few_features_is_refused():
    with pytest.raises(ValueError, match="more than 3 features"):
        precision_recall(gaussian(3, 2), gaussian(10, 2))
