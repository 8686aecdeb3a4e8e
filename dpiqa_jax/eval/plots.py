"""Scatter plot of predictions against MOS, with the fitted logistic and the metrics (PNG via
matplotlib's Agg renderer; no display needed)."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

# A bare Figure renders with the Agg canvas and leaves pyplot's global backend and figure list
# alone, so importing this module in a notebook changes nothing there.
from matplotlib.figure import Figure

from dpiqa_jax.eval import metrics as metrics_lib

_SHOWN_METRICS = ("srcc", "plcc", "plcc_logistic", "krcc", "rmse")


def scatter_plot(predictions, mos, metrics: Mapping[str, float],
                 logistic_params: np.ndarray | None, path: str | os.PathLike,
                 title: str = "") -> None:
    """Writes a PNG: one dot per image (prediction vs MOS), the fitted logistic curve if any,
    and the metrics in a text box."""
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(mos, dtype=np.float64)
    fig = Figure(figsize=(6, 5), dpi=120)
    ax = fig.subplots()
    ax.scatter(x, y, s=6, alpha=0.5, edgecolors="none", label="images")
    if logistic_params is not None and x.size:
        grid = np.linspace(x.min(), x.max(), 200)
        ax.plot(grid, metrics_lib.logistic_4(grid, *logistic_params), color="C3",
                label="4-parameter logistic fit")
    ax.set_xlabel("prediction")
    ax.set_ylabel("MOS (normalized)")
    ax.set_title(title or f"{int(metrics.get('num_images', x.size))} images")
    ax.text(0.02, 0.98, _metrics_text(metrics), transform=ax.transAxes, va="top",
            family="monospace", fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8})
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.fspath(path))


def _metrics_text(metrics: Mapping[str, float]) -> str:
    lines = [f"{name:<14}{metrics[name]:.4f}" for name in _SHOWN_METRICS if name in metrics]
    if metrics.get("logistic_fit_ok") == 0.0:
        lines.append("logistic fit failed: raw")
    return "\n".join(lines)
