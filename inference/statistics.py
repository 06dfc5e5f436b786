"""Diagnostic-accuracy statistics for every ``pacsnode evaluate`` command.

The figures a radiology AI paper reports for a classifier, with the intervals
reviewers expect:

* ROC AUC with the DeLong 95 % confidence interval, and the DeLong test for
  two correlated AUCs measured on the same cases (e.g. a model with clinical
  data against the image-only one). The variance uses the fast algorithm of
  Sun & Xu (IEEE Signal Process. Lett. 2014), which needs only midranks, so
  it is O(N log N) and handles tied scores exactly;
* sensitivity, specificity and accuracy with exact Clopper–Pearson
  intervals (beta-distribution quantiles);
* Cohen's kappa with its z-test against chance agreement (null variance of
  Fleiss, Cohen & Everitt 1969), and the confusion matrix (rows are the
  truth, columns the prediction).

:func:`one_vs_rest_report` puts these together for a K-class probability
output as a plain JSON-serialisable dict, and :func:`format_report` renders
that dict as a table for a terminal or a model card. Results are for
research use only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = [
    "StatisticsInputError",
    "Interval",
    "AucEstimate",
    "AucComparison",
    "roc_auc",
    "delong_ci",
    "delong_test",
    "clopper_pearson",
    "sensitivity_specificity",
    "accuracy",
    "confusion_matrix",
    "cohen_kappa",
    "kappa_z_test",
    "one_vs_rest_report",
    "compare_auc_per_class",
    "format_report",
]

#: How far a row of class probabilities may sum from 1 (float32 softmax rounding).
PROBABILITY_SUM_TOLERANCE = 1e-3


class StatisticsInputError(ValueError):
    """Scores, labels or predictions cannot be evaluated as given."""


class Interval(NamedTuple):
    """A point estimate with the bounds of its confidence interval."""

    estimate: float
    low: float
    high: float


class AucEstimate(NamedTuple):
    """ROC AUC with its DeLong confidence interval and standard error."""

    auc: float
    low: float
    high: float
    standard_error: float


class AucComparison(NamedTuple):
    """DeLong test of two correlated AUCs: AUC(a) − AUC(b), its z score and two-sided p."""

    difference: float
    z: float
    p_value: float


# --------------------------------------------------------------------------- input checks


def _binary_labels(labels: ArrayLike, n: int | None = None) -> NDArray[np.bool_]:
    """Labels as booleans (True = positive); both classes must be present."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise StatisticsInputError(f"labels must be one-dimensional, got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise StatisticsInputError(
            f"scores and labels differ in length ({n} scores, {array.shape[0]} labels)"
        )
    if array.dtype != np.bool_:
        values = set(np.unique(array).tolist())
        if not values <= {0, 1}:
            raise StatisticsInputError(
                f"binary labels must be 0/1 or True/False, got values {sorted(values)}"
            )
        array = array.astype(bool)
    n_positive = int(array.sum())
    if n_positive == 0 or n_positive == array.shape[0]:
        which = "negative" if n_positive else "positive"
        raise StatisticsInputError(
            f"ROC AUC needs positive and negative cases; all {array.shape[0]} labels are {which}"
        )
    return array


def _scores_matrix(scores: ArrayLike) -> NDArray[np.float64]:
    """One scorer ([N]) or several ([n_scorers, N]) as a finite 2D float array."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise StatisticsInputError(f"scores must be a non-empty 1D array, got shape {np.shape(scores)}")
    if not np.all(np.isfinite(array)):
        raise StatisticsInputError("scores contain NaN or infinite values")
    return array


def _class_indices(values: ArrayLike, n_classes: int, what: str) -> NDArray[np.int64]:
    """Integer class indices in [0, n_classes)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise StatisticsInputError(f"{what} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise StatisticsInputError(f"{what} must be integer class indices")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= n_classes):
        raise StatisticsInputError(
            f"{what} must lie in 0..{n_classes - 1}, got {int(array.min())}..{int(array.max())}"
        )
    return array


def _paired(pred: ArrayLike, labels: ArrayLike, n_classes: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    if n_classes < 2:
        raise StatisticsInputError(f"n_classes must be at least 2, got {n_classes}")
    p = _class_indices(pred, n_classes, "predictions")
    t = _class_indices(labels, n_classes, "labels")
    if p.shape != t.shape:
        raise StatisticsInputError(
            f"predictions and labels differ in length ({p.shape[0]} vs {t.shape[0]})"
        )
    if p.size == 0:
        raise StatisticsInputError("no cases to evaluate")
    return p, t


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise StatisticsInputError(f"confidence level must be between 0 and 1, got {level}")
    return 1.0 - level


# --------------------------------------------------------------------------- ROC AUC, DeLong


def _delong_components(
    scores: NDArray[np.float64], positive: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """AUCs and DeLong structural components of each scorer (Sun & Xu 2014).

    With m positives and n negatives, the midrank of each positive among the
    positives (T_x), of each negative among the negatives (T_y) and of every
    case among all (T_z) give the placement values without any pairwise loop:
    V10_i = (T_z_i − T_x_i) / n is the fraction of negatives a positive beats
    (ties count ½), and V01_j = 1 − (T_z_j − T_y_j) / m the fraction of
    positives that beat a negative. AUC is the mean of either.
    """
    pos = scores[:, positive]
    neg = scores[:, ~positive]
    m, n = pos.shape[1], neg.shape[1]
    tx = stats.rankdata(pos, axis=1)
    ty = stats.rankdata(neg, axis=1)
    tz = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = v10.mean(axis=1)
    return aucs, v10, v01


def _delong_covariance(v10: NDArray[np.float64], v01: NDArray[np.float64]) -> NDArray[np.float64]:
    """Covariance matrix of the AUC estimates: S10 / m + S01 / n."""
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((v10.shape[0],) * 2)
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((v01.shape[0],) * 2)
    return s10 / m + s01 / n


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting ½.

    Equal to the Mann–Whitney U statistic divided by (positives × negatives).
    """
    matrix = _scores_matrix(scores)
    if matrix.shape[0] != 1:
        raise StatisticsInputError("roc_auc takes one scorer; pass a 1D array of scores")
    positive = _binary_labels(labels, matrix.shape[1])
    aucs, _, _ = _delong_components(matrix, positive)
    return float(aucs[0])


def delong_ci(scores: ArrayLike, labels: ArrayLike, level: float = 0.95) -> AucEstimate:
    """ROC AUC with DeLong's standard error and normal-theory confidence interval, clipped to [0, 1].

    A perfectly separating scorer has zero variance, so its interval is (1, 1).
    """
    alpha = _check_level(level)
    matrix = _scores_matrix(scores)
    if matrix.shape[0] != 1:
        raise StatisticsInputError("delong_ci takes one scorer; pass a 1D array of scores")
    positive = _binary_labels(labels, matrix.shape[1])
    aucs, v10, v01 = _delong_components(matrix, positive)
    auc = float(aucs[0])
    variance = float(_delong_covariance(v10, v01)[0, 0])
    se = math.sqrt(max(variance, 0.0))
    half_width = float(stats.norm.ppf(1.0 - alpha / 2.0)) * se
    return AucEstimate(auc, max(0.0, auc - half_width), min(1.0, auc + half_width), se)


def delong_test(scores_a: ArrayLike, scores_b: ArrayLike, labels: ArrayLike) -> AucComparison:
    """DeLong test of AUC(a) = AUC(b) for two scorers evaluated on the same cases.

    The two AUCs are correlated because the cases are shared; the variance of
    their difference is Var(a) + Var(b) − 2 Cov(a, b). When that variance is
    zero (identical scorers, or both perfect) and the AUCs are equal, the
    result is z = 0, p = 1.
    """
    a = _scores_matrix(scores_a)
    b = _scores_matrix(scores_b)
    if a.shape[0] != 1 or b.shape[0] != 1:
        raise StatisticsInputError("delong_test takes two 1D arrays of scores")
    if a.shape[1] != b.shape[1]:
        raise StatisticsInputError(
            f"the two scorers must rate the same cases ({a.shape[1]} vs {b.shape[1]} scores)"
        )
    positive = _binary_labels(labels, a.shape[1])
    aucs, v10, v01 = _delong_components(np.concatenate([a, b]), positive)
    cov = _delong_covariance(v10, v01)
    difference = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if variance <= 1e-15:
        if abs(difference) < 1e-12:
            return AucComparison(difference, 0.0, 1.0)
        return AucComparison(difference, math.copysign(math.inf, difference), 0.0)
    z = difference / math.sqrt(variance)
    return AucComparison(difference, z, float(2.0 * stats.norm.sf(abs(z))))


# --------------------------------------------------------------------------- proportions


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> Interval:
    """Proportion successes/trials with its exact (Clopper–Pearson) confidence interval.

    The bounds are beta quantiles: low = B(α/2; x, n − x + 1), high =
    B(1 − α/2; x + 1, n − x), with low = 0 when x = 0 and high = 1 when x = n.
    """
    alpha = _check_level(level)
    if int(successes) != successes or int(trials) != trials:
        raise StatisticsInputError(f"successes and trials must be whole numbers, got {successes}/{trials}")
    x, n = int(successes), int(trials)
    if n <= 0:
        raise StatisticsInputError("a proportion needs at least one trial; no cases of this kind")
    if not 0 <= x <= n:
        raise StatisticsInputError(f"successes must lie in 0..{n}, got {x}")
    low = 0.0 if x == 0 else float(stats.beta.ppf(alpha / 2.0, x, n - x + 1))
    high = 1.0 if x == n else float(stats.beta.ppf(1.0 - alpha / 2.0, x + 1, n - x))
    return Interval(x / n, low, high)


def _proportion_dict(successes: int, trials: int, level: float) -> dict[str, Any]:
    """A proportion as a JSON dict; estimate and bounds are None when there are no trials."""
    if trials == 0:
        return {"estimate": None, "low": None, "high": None, "successes": 0, "trials": 0}
    interval = clopper_pearson(successes, trials, level)
    return {**interval._asdict(), "successes": int(successes), "trials": int(trials)}


def sensitivity_specificity(
    pred: ArrayLike, labels: ArrayLike, positive: int, level: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Sensitivity and specificity for one class against the rest, each with its Clopper–Pearson CI.

    ``pred`` and ``labels`` are class indices; a case counts as positive when
    it equals ``positive``. Returns ``{"sensitivity": {...}, "specificity":
    {...}}``, each with estimate, low, high, successes and trials (estimate
    None when the test set has no case of that kind).
    """
    p = np.asarray(pred)
    t = np.asarray(labels)
    if p.ndim != 1 or t.ndim != 1 or p.shape != t.shape:
        raise StatisticsInputError(
            f"predictions and labels must be 1D of equal length, got shapes {p.shape} and {t.shape}"
        )
    predicted = p == positive
    actual = t == positive
    true_positive = int(np.sum(predicted & actual))
    true_negative = int(np.sum(~predicted & ~actual))
    return {
        "sensitivity": _proportion_dict(true_positive, int(actual.sum()), level),
        "specificity": _proportion_dict(true_negative, int((~actual).sum()), level),
    }


def accuracy(pred: ArrayLike, labels: ArrayLike, level: float = 0.95) -> Interval:
    """Fraction of cases predicted correctly, with its Clopper–Pearson CI."""
    p = np.asarray(pred)
    t = np.asarray(labels)
    if p.ndim != 1 or p.shape != t.shape:
        raise StatisticsInputError(
            f"predictions and labels must be 1D of equal length, got shapes {p.shape} and {t.shape}"
        )
    return clopper_pearson(int(np.sum(p == t)), int(p.size), level)


# --------------------------------------------------------------------------- agreement


def confusion_matrix(pred: ArrayLike, labels: ArrayLike, n_classes: int) -> NDArray[np.int64]:
    """Counts [n_classes, n_classes]: element (i, j) is the number of cases of true class i predicted j."""
    p, t = _paired(pred, labels, n_classes)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _kappa_terms(matrix: NDArray[np.int64]) -> tuple[float, float, NDArray[np.float64], NDArray[np.float64]]:
    proportions = matrix / matrix.sum()
    rows = proportions.sum(axis=1)  # truth marginals
    cols = proportions.sum(axis=0)  # prediction marginals
    return float(np.trace(proportions)), float(rows @ cols), rows, cols


def cohen_kappa(pred: ArrayLike, labels: ArrayLike, n_classes: int) -> float:
    """Cohen's (unweighted) kappa between predictions and truth: (p_o − p_e) / (1 − p_e).

    When both raters put every case in the same class (p_e = 1) the agreement
    is complete and kappa is reported as 1.
    """
    observed, expected, _, _ = _kappa_terms(confusion_matrix(pred, labels, n_classes))
    if expected >= 1.0 - 1e-12:
        return 1.0
    return (observed - expected) / (1.0 - expected)


def kappa_z_test(pred: ArrayLike, labels: ArrayLike, n_classes: int) -> tuple[float, float, float]:
    """Cohen's kappa, its z score against chance agreement, and the two-sided p value.

    Uses the variance of kappa under the null hypothesis of chance agreement
    (Fleiss, Cohen & Everitt 1969): [p_e + p_e² − Σ r_i c_i (r_i + c_i)] / (N (1 − p_e)²),
    with r and c the truth and prediction marginal proportions.
    """
    matrix = confusion_matrix(pred, labels, n_classes)
    n = int(matrix.sum())
    observed, expected, rows, cols = _kappa_terms(matrix)
    if expected >= 1.0 - 1e-12:
        return 1.0, 0.0, 1.0
    kappa = (observed - expected) / (1.0 - expected)
    variance = (expected + expected**2 - float(np.sum(rows * cols * (rows + cols)))) / (
        n * (1.0 - expected) ** 2
    )
    if variance <= 0.0:
        return kappa, 0.0, 1.0
    z = kappa / math.sqrt(variance)
    return kappa, z, float(2.0 * stats.norm.sf(abs(z)))


# --------------------------------------------------------------------------- reports


def _check_probabilities(
    probabilities: ArrayLike, labels: ArrayLike, class_names: Sequence[str]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    probs = np.asarray(probabilities, dtype=np.float64)
    k = len(class_names)
    if k < 2:
        raise StatisticsInputError("a report needs at least two class names")
    if probs.ndim != 2 or probs.shape[1] != k:
        raise StatisticsInputError(
            f"probabilities must have shape [cases, {k}] for {k} classes, got {probs.shape}"
        )
    if probs.shape[0] == 0:
        raise StatisticsInputError("no cases to evaluate")
    if not np.all(np.isfinite(probs)) or probs.min() < 0.0:
        raise StatisticsInputError("probabilities must be finite and non-negative")
    sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > PROBABILITY_SUM_TOLERANCE:
        raise StatisticsInputError(
            f"class probabilities must sum to 1 for each case; case {worst} sums to {sums[worst]:.4f} "
            "(pass softmax outputs, not logits)"
        )
    truth = _class_indices(labels, k, "labels")
    if truth.shape[0] != probs.shape[0]:
        raise StatisticsInputError(
            f"probabilities and labels differ in length ({probs.shape[0]} vs {truth.shape[0]})"
        )
    return probs, truth


def one_vs_rest_report(
    probabilities: ArrayLike,
    labels: ArrayLike,
    class_names: Sequence[str],
    level: float = 0.95,
) -> dict[str, Any]:
    """Per-class and overall accuracy of a K-class classifier as a JSON-serialisable dict.

    For each class, one against the rest: ROC AUC of that class's probability
    with its DeLong CI and standard error (None when the test set lacks
    positives or negatives for it), and sensitivity and specificity with
    Clopper–Pearson CIs at the argmax decision. Overall: accuracy with its
    CI, Cohen's kappa with its z test, and the confusion matrix (rows truth,
    columns prediction, in ``class_names`` order).
    """
    probs, truth = _check_probabilities(probabilities, labels, class_names)
    pred = np.argmax(probs, axis=1)
    k = len(class_names)
    per_class: list[dict[str, Any]] = []
    for index, name in enumerate(class_names):
        actual = truth == index
        entry: dict[str, Any] = {"class": str(name), "index": index, "n_cases": int(actual.sum())}
        if 0 < actual.sum() < actual.size:
            estimate = delong_ci(probs[:, index], actual, level)
            entry["auc"] = {
                "estimate": estimate.auc,
                "low": estimate.low,
                "high": estimate.high,
                "standard_error": estimate.standard_error,
            }
        else:
            entry["auc"] = None
        entry.update(sensitivity_specificity(pred, truth, index, level))
        per_class.append(entry)
    acc = accuracy(pred, truth, level)
    kappa, kappa_z, kappa_p = kappa_z_test(pred, truth, k)
    return {
        "n_cases": int(truth.size),
        "confidence_level": level,
        "class_names": [str(name) for name in class_names],
        "per_class": per_class,
        "accuracy": {**acc._asdict(), "successes": int(np.sum(pred == truth)), "trials": int(truth.size)},
        "kappa": {"estimate": kappa, "z": kappa_z, "p_value": kappa_p},
        "confusion_matrix": confusion_matrix(pred, truth, k).tolist(),
    }


def compare_auc_per_class(
    probabilities_a: ArrayLike,
    probabilities_b: ArrayLike,
    labels: ArrayLike,
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """DeLong test per class (one against the rest) of model a against model b on the same cases.

    Classes without both positives and negatives in the test set get None.
    """
    probs_a, truth = _check_probabilities(probabilities_a, labels, class_names)
    probs_b, _ = _check_probabilities(probabilities_b, labels, class_names)
    results: list[dict[str, Any]] = []
    for index, name in enumerate(class_names):
        actual = truth == index
        if 0 < actual.sum() < actual.size:
            comparison = delong_test(probs_a[:, index], probs_b[:, index], actual)
            results.append({"class": str(name), **comparison._asdict()})
        else:
            results.append({"class": str(name), "difference": None, "z": None, "p_value": None})
    return results


def _interval_text(entry: dict[str, Any] | None, percent: bool = False) -> str:
    if entry is None or entry.get("estimate") is None:
        return "n/a"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    suffix = "%" if percent else ""
    return (
        f"{entry['estimate'] * scale:.{digits}f}{suffix} "
        f"({entry['low'] * scale:.{digits}f}–{entry['high'] * scale:.{digits}f})"
    )


def format_report(report: dict[str, Any], title: str | None = None) -> str:
    """A :func:`one_vs_rest_report` dict as a plain-text table, in the layout of a paper's results table."""
    level = round(100 * report["confidence_level"])
    lines: list[str] = []
    if title:
        lines += [title, "=" * len(title)]
    lines.append(f"{report['n_cases']} cases; intervals are {level} % (AUC: DeLong; proportions: Clopper–Pearson)")
    names = report["class_names"]
    width = max(12, *(len(name) for name in names))
    header = f"{'class':<{width}}  {'n':>4}  {'AUC (CI)':<22}  {'sensitivity (CI)':<24}  {'specificity (CI)':<24}"
    lines += [header, "-" * len(header)]
    for entry in report["per_class"]:
        sens = entry["sensitivity"]
        lines.append(
            f"{entry['class']:<{width}}  {entry['n_cases']:>4}  {_interval_text(entry['auc']):<22}  "
            f"{_interval_text(sens, True):<24}  {_interval_text(entry['specificity'], True):<24}"
        )
    acc = report["accuracy"]
    kappa = report["kappa"]
    lines += [
        "",
        f"accuracy {_interval_text(acc, True)} ({acc['successes']}/{acc['trials']})",
        f"Cohen's kappa {kappa['estimate']:.3f} (z = {kappa['z']:.2f}, p = {kappa['p_value']:.2g})",
        "",
        "confusion matrix (rows: truth, columns: predicted)",
    ]
    cell = max(5, *(len(str(v)) for row in report["confusion_matrix"] for v in row))
    short = [name[:cell] for name in names]
    lines.append(" " * (width + 2) + " ".join(f"{name:>{cell}}" for name in short))
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)
