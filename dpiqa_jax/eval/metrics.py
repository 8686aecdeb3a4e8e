"""IQA agreement metrics between predicted scores and MOS.

* srcc: Spearman rank correlation (ties get average ranks).
* krcc: Kendall tau-b (tie-corrected).
* plcc: Pearson correlation of the raw predictions.
* plcc_logistic: Pearson correlation after mapping predictions through the 4-parameter logistic
  fitted to the MOS (VQEG convention, the IQA literature's "PLCC"):
      f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2
* rmse: root-mean-square error of the raw predictions (meaningful when they are on the MOS
  scale); rmse_logistic: after the logistic mapping.

Undefined cases give NaN with a `MetricWarning`, never an exception: constant predictions or
constant MOS (correlations are undefined), fewer than 2 (correlations) or 5 (logistic fit,
4 parameters) images. If the logistic fit fails, the *_logistic metrics fall back to the raw ones,
with a warning and `logistic_fit_ok = 0.0` in the result so the fallback is visible in reports.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.optimize
import scipy.stats

METRIC_NAMES = ("srcc", "krcc", "plcc", "plcc_logistic", "rmse", "rmse_logistic")
_MIN_IMAGES_FOR_FIT = 5


class MetricWarning(UserWarning):
    """A metric is undefined (NaN) or fell back (logistic fit failed)."""


def _as_vectors(predictions, mos) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(predictions, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"predictions and MOS differ in length: {x.size} vs {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("predictions and MOS must be finite; got NaN or inf at positions "
                         f"{np.flatnonzero(~(np.isfinite(x) & np.isfinite(y)))[:10].tolist()}")
    return x, y


def _correlation_defined(x: np.ndarray, y: np.ndarray, metric: str) -> bool:
    if x.size < 2:
        warnings.warn(f"{metric}: needs at least 2 images, got {x.size}; returning NaN",
                      MetricWarning, stacklevel=3)
        return False
    for values, what in ((x, "predictions"), (y, "MOS")):
        if np.ptp(values) == 0:
            warnings.warn(f"{metric}: {what} are constant ({values[0]}); the correlation is "
                          f"undefined, returning NaN", MetricWarning, stacklevel=3)
            return False
    return True


def _correlation(name: str, statistic: Callable[..., Any], predictions, mos) -> float:
    """scipy's `statistic` of the two vectors, or NaN where the correlation is not defined."""
    x, y = _as_vectors(predictions, mos)
    if not _correlation_defined(x, y, name):
        return float("nan")
    return float(statistic(x, y).statistic)


def srcc(predictions, mos) -> float:
    return _correlation("srcc", scipy.stats.spearmanr, predictions, mos)


def krcc(predictions, mos) -> float:
    return _correlation("krcc", scipy.stats.kendalltau, predictions, mos)


def plcc(predictions, mos) -> float:
    return _correlation("plcc", scipy.stats.pearsonr, predictions, mos)


def rmse(predictions, mos) -> float:
    x, y = _as_vectors(predictions, mos)
    return float(np.sqrt(np.mean((x - y) ** 2))) if x.size else float("nan")


def logistic_4(x, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2, elementwise."""
    z = -(np.asarray(x, dtype=np.float64) - b3) / np.abs(b4)
    # exp overflows to inf for far-away x; the limit (value b2) is the right answer there.
    with np.errstate(over="ignore"):
        return (b1 - b2) / (1.0 + np.exp(z)) + b2


def initial_logistic_params(predictions: np.ndarray, mos: np.ndarray) -> np.ndarray:
    """Start at a curve spanning the MOS range, centred and scaled like the predictions."""
    scale = np.std(predictions)
    return np.array([np.max(mos), np.min(mos), np.mean(predictions), scale if scale > 0 else 1.0])


def fit_logistic(predictions, mos) -> np.ndarray | None:
    """Least-squares 4-parameter logistic from predictions to MOS; None (and a warning) if the
    fit is impossible or does not converge."""
    x, y = _as_vectors(predictions, mos)
    if x.size < _MIN_IMAGES_FOR_FIT or np.ptp(x) == 0:
        warnings.warn(f"logistic fit: needs >= {_MIN_IMAGES_FOR_FIT} images with non-constant "
                      f"predictions (got {x.size}); using raw predictions", MetricWarning,
                      stacklevel=2)
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)
            params, _ = scipy.optimize.curve_fit(logistic_4, x, y,
                                                 p0=initial_logistic_params(x, y), maxfev=20000)
    except (RuntimeError, ValueError) as e:  # curve_fit's "no convergence" / bad input.
        warnings.warn(f"logistic fit failed ({e}); using raw predictions", MetricWarning,
                      stacklevel=2)
        return None
    if not np.all(np.isfinite(params)):
        warnings.warn(f"logistic fit gave non-finite parameters {params}; using raw predictions",
                      MetricWarning, stacklevel=2)
        return None
    return params


def compute_metrics_and_fit(predictions, mos) -> tuple[dict[str, float], np.ndarray | None]:
    """All metrics of METRIC_NAMES plus num_images and logistic_fit_ok (1.0 / 0.0), and the
    fitted logistic parameters (b1, b2, b3, b4), or None when the fit failed.

    Args:
      predictions: [N] predicted quality scores.
      mos: [N] ground-truth MOS (any scale; rmse is only meaningful on the predictions' scale).
    """
    x, y = _as_vectors(predictions, mos)
    params = fit_logistic(x, y)
    mapped = logistic_4(x, *params) if params is not None else x
    metrics = {
        "srcc": srcc(x, y),
        "krcc": krcc(x, y),
        "plcc": plcc(x, y),
        "plcc_logistic": plcc(mapped, y),
        "rmse": rmse(x, y),
        "rmse_logistic": rmse(mapped, y),
        "num_images": float(x.size),
        "logistic_fit_ok": float(params is not None),
    }
    return metrics, params


def compute_metrics(predictions, mos) -> dict[str, float]:
    """`compute_metrics_and_fit` without the fitted parameters."""
    return compute_metrics_and_fit(predictions, mos)[0]
