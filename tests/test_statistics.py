"""Evaluation statistics (inference.statistics) against definitions, known values and simulation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from inference.statistics import (
    StatisticsInputError,
    accuracy,
    clopper_pearson,
    cohen_kappa,
    compare_auc_per_class,
    confusion_matrix,
    delong_ci,
    delong_test,
    format_report,
    kappa_z_test,
    one_vs_rest_report,
    roc_auc,
    sensitivity_specificity,
)


def _binormal(rng: np.random.Generator, n_pos: int, n_neg: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([rng.normal(shift, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)])
    labels = np.concatenate([np.ones(n_pos, int), np.zeros(n_neg, int)])
    return scores, labels


def _pairwise_placements(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placement values by the O(m·n) definition: ψ = 1 if pos > neg, ½ if equal."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


# --------------------------------------------------------------------------- AUC


def test_auc_equals_mann_whitney_u_with_ties() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 120).astype(float)  # heavy ties
    labels = (rng.random(120) < 0.4 + 0.1 * scores).astype(int)
    pos, neg = scores[labels == 1], scores[labels == 0]
    u = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    assert roc_auc(scores, labels) == pytest.approx(u / (pos.size * neg.size), abs=1e-12)


def test_auc_is_one_half_for_constant_scores_and_flips_with_sign() -> None:
    labels = np.array([0, 1, 0, 1, 1, 0])
    assert roc_auc(np.zeros(6), labels) == pytest.approx(0.5)
    scores = np.array([0.1, 0.8, 0.3, 0.6, 0.2, 0.4])
    assert roc_auc(-scores, labels) == pytest.approx(1.0 - roc_auc(scores, labels))
    assert roc_auc(scores, labels.astype(bool)) == roc_auc(scores, labels)


def test_delong_variance_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 90)
    scores = np.round(rng.normal(size=90) + labels, 1)  # rounding creates ties
    v10, v01 = _pairwise_placements(scores, labels)
    expected_se = math.sqrt(np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size)
    estimate = delong_ci(scores, labels)
    assert estimate.auc == pytest.approx(v10.mean(), abs=1e-12)
    assert estimate.standard_error == pytest.approx(expected_se, rel=1e-9)
    assert estimate.low == pytest.approx(estimate.auc - 1.959964 * expected_se, abs=1e-6)
    assert estimate.high == pytest.approx(estimate.auc + 1.959964 * expected_se, abs=1e-6)


def test_delong_standard_error_agrees_with_bootstrap() -> None:
    rng = np.random.default_rng(3)
    scores, labels = _binormal(rng, 80, 120, shift=1.2)
    se = delong_ci(scores, labels).standard_error
    pos, neg = scores[labels == 1], scores[labels == 0]
    boot_labels = np.concatenate([np.ones(pos.size, int), np.zeros(neg.size, int)])
    aucs = [
        roc_auc(np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)]), boot_labels)
        for _ in range(1000)
    ]
    assert se == pytest.approx(np.std(aucs, ddof=1), rel=0.15)


def test_delong_ci_covers_true_auc_at_nominal_rate() -> None:
    rng = np.random.default_rng(4)
    shift = 1.0
    true_auc = float(0.5 * math.erfc(-shift / 2.0))  # Φ(shift / √2)
    covered = 0
    trials = 300
    for _ in range(trials):
        estimate = delong_ci(*_binormal(rng, 40, 60, shift))
        covered += estimate.low <= true_auc <= estimate.high
    assert 0.90 <= covered / trials <= 0.99


def test_delong_perfect_classifier_has_degenerate_interval() -> None:
    scores = np.array([0.9, 0.8, 0.95, 0.1, 0.2, 0.3, 0.05])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    estimate = delong_ci(scores, labels)
    assert estimate.auc == 1.0
    assert (estimate.low, estimate.high, estimate.standard_error) == (1.0, 1.0, 0.0)


def test_delong_interval_widens_with_level_and_stays_in_unit_range() -> None:
    scores, labels = _binormal(np.random.default_rng(5), 15, 15, shift=1.5)
    narrow, wide = delong_ci(scores, labels, level=0.8), delong_ci(scores, labels, level=0.99)
    assert 0.0 <= wide.low < narrow.low < narrow.auc < narrow.high < 1.0
    assert narrow.standard_error == wide.standard_error
    # A high AUC's 99 % interval would pass 1; it is clipped there, as papers report "(…, 1.000)".
    assert narrow.auc + 2.5758 * wide.standard_error > 1.0
    assert wide.high == 1.0


def test_delong_test_separates_different_scorers_and_not_identical_ones() -> None:
    rng = np.random.default_rng(6)
    labels = np.repeat([1, 0], 100)
    signal = labels + rng.normal(0.0, 0.5, 200)
    weak = labels + rng.normal(0.0, 3.0, 200)
    different = delong_test(signal, weak, labels)
    assert different.difference > 0 and different.p_value < 0.05
    assert different.z == pytest.approx(different.difference / _pairwise_difference_se(signal, weak, labels), rel=1e-9)
    same = delong_test(signal, signal.copy(), labels)
    assert same.difference == 0.0 and same.p_value > 0.05
    # Swapping the scorers negates the difference and z, not the p value.
    swapped = delong_test(weak, signal, labels)
    assert swapped.z == pytest.approx(-different.z) and swapped.p_value == pytest.approx(different.p_value)


def _pairwise_difference_se(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> float:
    a10, a01 = _pairwise_placements(a, labels)
    b10, b01 = _pairwise_placements(b, labels)
    s10 = np.cov(np.vstack([a10, b10]))
    s01 = np.cov(np.vstack([a01, b01]))
    s = s10 / a10.size + s01 / a01.size
    return math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])


def test_delong_test_keeps_type_one_error_for_equally_good_scorers() -> None:
    rng = np.random.default_rng(7)
    rejections = 0
    trials = 300
    for _ in range(trials):
        labels = np.repeat([1, 0], 40)
        latent = labels + rng.normal(0.0, 1.0, 80)
        a = latent + rng.normal(0.0, 1.0, 80)
        b = latent + rng.normal(0.0, 1.0, 80)
        rejections += delong_test(a, b, labels).p_value < 0.05
    assert 0.01 <= rejections / trials <= 0.10


@pytest.mark.parametrize(
    "labels",
    [np.ones(5, int), np.zeros(5, int)],
    ids=["all-positive", "all-negative"],
)
def test_auc_refuses_one_class_labels(labels: np.ndarray) -> None:
    with pytest.raises(StatisticsInputError, match="positive and negative"):
        roc_auc(np.arange(5.0), labels)
    with pytest.raises(ValueError):
        delong_ci(np.arange(5.0), labels)


def test_auc_refuses_mismatched_lengths_and_bad_values() -> None:
    with pytest.raises(StatisticsInputError, match="differ in length"):
        roc_auc(np.arange(5.0), np.array([0, 1, 0, 1]))
    with pytest.raises(StatisticsInputError, match="same cases"):
        delong_test(np.arange(4.0), np.arange(5.0), np.array([0, 1, 0, 1]))
    with pytest.raises(StatisticsInputError, match="NaN"):
        roc_auc(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))
    with pytest.raises(StatisticsInputError, match="0/1"):
        roc_auc(np.arange(3.0), np.array([0, 1, 2]))


# --------------------------------------------------------------------------- proportions


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [(0, 10, 0.0, 0.3085), (10, 10, 0.6915, 1.0), (5, 10, 0.1871, 0.8129), (1, 3, 0.0084, 0.9057)],
)
def test_clopper_pearson_known_values(successes: int, trials: int, low: float, high: float) -> None:
    estimate, lower, upper = clopper_pearson(successes, trials)
    assert estimate == pytest.approx(successes / trials)
    assert lower == pytest.approx(low, abs=1e-4)
    assert upper == pytest.approx(high, abs=1e-4)


def test_clopper_pearson_is_conservative() -> None:
    """The exact interval covers the true proportion at least at the nominal rate."""
    rng = np.random.default_rng(8)
    p, n = 0.8, 25
    intervals = [clopper_pearson(int(x), n) for x in rng.binomial(n, p, 2000)]
    coverage = np.mean([low <= p <= high for _, low, high in intervals])
    assert coverage >= 0.95


def test_clopper_pearson_refuses_impossible_counts() -> None:
    with pytest.raises(StatisticsInputError, match="at least one trial"):
        clopper_pearson(0, 0)
    with pytest.raises(StatisticsInputError):
        clopper_pearson(11, 10)
    with pytest.raises(StatisticsInputError, match="confidence level"):
        clopper_pearson(3, 10, level=95)


def test_sensitivity_specificity_counts_one_class_against_the_rest() -> None:
    labels = np.array([2, 2, 2, 2, 0, 1, 0, 1, 0, 1])
    pred = np.array([2, 2, 2, 0, 0, 1, 2, 1, 0, 0])
    result = sensitivity_specificity(pred, labels, positive=2)
    assert (result["sensitivity"]["successes"], result["sensitivity"]["trials"]) == (3, 4)
    assert (result["specificity"]["successes"], result["specificity"]["trials"]) == (5, 6)
    assert result["sensitivity"]["estimate"] == pytest.approx(0.75)
    low, high = clopper_pearson(3, 4)[1:]
    assert (result["sensitivity"]["low"], result["sensitivity"]["high"]) == (low, high)
    # A class absent from the test set has no sensitivity, rather than a fabricated one.
    assert sensitivity_specificity(pred, labels, positive=3)["sensitivity"]["estimate"] is None
    assert accuracy(pred, labels).estimate == pytest.approx(0.7)
    with pytest.raises(StatisticsInputError, match="equal length"):
        sensitivity_specificity(pred[:-1], labels, positive=2)


# --------------------------------------------------------------------------- agreement


def test_confusion_matrix_rows_are_truth() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])
    matrix = confusion_matrix(pred, labels, n_classes=4)
    assert matrix.shape == (4, 4)
    assert matrix.sum() == 6
    assert matrix[0].tolist() == [1, 1, 0, 0]
    assert matrix[2].tolist() == [1, 0, 2, 0]
    assert matrix[:, 3].sum() == 0
    with pytest.raises(StatisticsInputError, match="0..3"):
        confusion_matrix(np.array([0, 4]), np.array([0, 1]), n_classes=4)
    with pytest.raises(StatisticsInputError, match="differ in length"):
        confusion_matrix(np.array([0, 1]), np.array([0, 1, 1]), n_classes=2)


def test_cohen_kappa_known_values() -> None:
    labels = np.array([0, 1, 2, 3, 1, 2])
    assert cohen_kappa(labels, labels, 4) == pytest.approx(1.0)
    # Textbook 2×2 table (50 cases): both yes 20, rater A yes / B no 5, A no / B yes 10, both no 15;
    # p_o = 0.7, p_e = 0.5, kappa = 0.4.
    truth = np.array([1] * 20 + [1] * 5 + [0] * 10 + [0] * 15)
    rater = np.array([1] * 20 + [0] * 5 + [1] * 10 + [0] * 15)
    assert cohen_kappa(rater, truth, 2) == pytest.approx(0.4)
    # Predictions independent of the truth agree only by chance.
    rng = np.random.default_rng(9)
    chance = cohen_kappa(rng.integers(0, 3, 5000), rng.integers(0, 3, 5000), 3)
    assert abs(chance) < 0.03


def test_kappa_z_test_has_nominal_false_positive_rate_under_chance() -> None:
    rng = np.random.default_rng(10)
    p_values = [kappa_z_test(rng.integers(0, 3, 150), rng.integers(0, 3, 150), 3)[2] for _ in range(400)]
    assert 0.02 <= np.mean(np.array(p_values) < 0.05) <= 0.09
    labels = rng.integers(0, 3, 150)
    noisy = np.where(rng.random(150) < 0.7, labels, rng.integers(0, 3, 150))
    kappa, z, p = kappa_z_test(noisy, labels, 3)
    assert kappa == pytest.approx(cohen_kappa(noisy, labels, 3))
    assert z > 5 and p < 1e-6


# --------------------------------------------------------------------------- report


def _softmax_cases(rng: np.random.Generator, n: int, k: int, strength: float) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += strength
    probabilities = np.exp(logits)
    return probabilities / probabilities.sum(axis=1, keepdims=True), labels


def test_one_vs_rest_report_shapes_and_consistency() -> None:
    rng = np.random.default_rng(11)
    names = ["cyst", "hemangioma", "FNH", "other benign", "HCC", "metastasis", "other malignant"]
    probabilities, labels = _softmax_cases(rng, 210, len(names), strength=2.5)
    report = one_vs_rest_report(probabilities, labels, names)
    json.dumps(report, allow_nan=False)  # plain JSON, no NaN
    assert report["n_cases"] == 210 and report["class_names"] == names
    assert len(report["per_class"]) == 7
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (7, 7) and matrix.sum() == 210
    pred = probabilities.argmax(axis=1)
    for index, entry in enumerate(report["per_class"]):
        actual = labels == index
        assert entry["n_cases"] == int(actual.sum()) == matrix[index].sum()
        assert entry["auc"]["estimate"] == pytest.approx(roc_auc(probabilities[:, index], actual))
        assert entry["auc"]["low"] <= entry["auc"]["estimate"] <= entry["auc"]["high"]
        assert entry["sensitivity"]["successes"] == matrix[index, index]
        assert entry["specificity"]["successes"] == int(np.sum((pred != index) & ~actual))
    assert report["accuracy"]["successes"] == int(np.trace(matrix))
    assert report["kappa"]["estimate"] == pytest.approx(cohen_kappa(pred, labels, 7))

    text = format_report(report, title="Model A (7-way)")
    assert "Model A (7-way)" in text and "metastasis" in text and "Cohen's kappa" in text
    assert f"({np.trace(matrix)}/210)" in text


def test_report_with_a_class_missing_from_the_test_set() -> None:
    rng = np.random.default_rng(12)
    probabilities, labels = _softmax_cases(rng, 60, 3, strength=2.0)
    labels[labels == 2] = 1
    report = one_vs_rest_report(probabilities, labels, ["HCC", "metastasis", "other"])
    missing = report["per_class"][2]
    assert missing["n_cases"] == 0 and missing["auc"] is None
    assert missing["sensitivity"]["estimate"] is None
    assert missing["specificity"]["estimate"] is not None
    json.dumps(report, allow_nan=False)
    assert "n/a" in format_report(report)


def test_report_refuses_bad_probabilities() -> None:
    rng = np.random.default_rng(13)
    probabilities, labels = _softmax_cases(rng, 20, 3, strength=2.0)
    names = ["a", "b", "c"]
    with pytest.raises(StatisticsInputError, match="sum to 1"):
        one_vs_rest_report(probabilities * 1.1, labels, names)
    with pytest.raises(StatisticsInputError, match="shape"):
        one_vs_rest_report(probabilities, labels, ["a", "b"])
    with pytest.raises(StatisticsInputError, match="differ in length"):
        one_vs_rest_report(probabilities, labels[:-1], names)
    with pytest.raises(StatisticsInputError, match="non-negative"):
        one_vs_rest_report(np.array([[1.2, -0.2, 0.0]]), np.array([0]), names)
    with pytest.raises(StatisticsInputError, match="0..2"):
        one_vs_rest_report(probabilities, np.full(20, 3), names)


def test_compare_auc_per_class_finds_the_better_model() -> None:
    rng = np.random.default_rng(14)
    labels = rng.integers(0, 3, 240)
    good = np.exp(rng.normal(size=(240, 3)) + 3.0 * np.eye(3)[labels])
    poor = np.exp(rng.normal(size=(240, 3)) + 0.5 * np.eye(3)[labels])
    good /= good.sum(axis=1, keepdims=True)
    poor /= poor.sum(axis=1, keepdims=True)
    results = compare_auc_per_class(good, poor, labels, ["HCC", "metastasis", "other"])
    assert [r["class"] for r in results] == ["HCC", "metastasis", "other"]
    for result, index in zip(results, range(3)):
        actual = labels == index
        expected = roc_auc(good[:, index], actual) - roc_auc(poor[:, index], actual)
        assert result["difference"] == pytest.approx(expected)
        assert result["difference"] > 0 and result["p_value"] < 0.05
