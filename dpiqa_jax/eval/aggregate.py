"""Summaries of metrics over repeated splits or across datasets, as JSON-ready dicts and
Markdown tables.

Over splits, each metric gets its median, mean and sample standard deviation (ddof=1). A split
whose metric is NaN (undefined, see metrics.py) is left out of that metric's statistics; `n`
says how many splits entered, so a gap is visible in every table.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from dpiqa_jax.eval.metrics import METRIC_NAMES

CROSS_DATASET_METRICS = ("srcc", "plcc_logistic", "plcc", "krcc")


def aggregate_metrics(per_split: Mapping[str, Mapping[str, float]],
                      metric_names: Sequence[str] = METRIC_NAMES) -> dict[str, dict[str, float]]:
    """{split: {metric: value}} -> {metric: {"median", "mean", "std", "n"}}."""
    if not per_split:
        raise ValueError("aggregate_metrics: no splits to aggregate")
    summary = {}
    for name in metric_names:
        absent = [split for split, metrics in per_split.items() if name not in metrics]
        if absent:
            raise KeyError(f"metric {name!r} missing from the results of split(s) {absent}")
        values = np.array([metrics[name] for metrics in per_split.values()], dtype=np.float64)
        values = values[np.isfinite(values)]
        summary[name] = {
            "median": float(np.median(values)) if values.size else math.nan,
            "mean": float(np.mean(values)) if values.size else math.nan,
            "std": float(np.std(values, ddof=1)) if values.size > 1 else math.nan,
            "n": int(values.size),
        }
    return summary


def summary_markdown(summary: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    """Markdown table: metric | median | mean ± std | n."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | median | mean ± std | n |", "|---|---|---|---|"]
    for name, stats in summary.items():
        lines.append(f"| {name} | {stats['median']:.4f} | {stats['mean']:.4f} ± "
                     f"{stats['std']:.4f} | {stats['n']} |")
    return "\n".join(lines) + "\n"


def per_split_markdown(per_split: Mapping[str, Mapping[str, float]],
                       metric_names: Sequence[str] = METRIC_NAMES) -> str:
    """Markdown table with one row per split and one column per metric."""
    lines = ["| split | " + " | ".join(metric_names) + " |",
             "|---|" + "---|" * len(metric_names)]
    for split, metrics in per_split.items():
        lines.append(f"| {split} | " + " | ".join(f"{metrics[m]:.4f}" for m in metric_names)
                     + " |")
    return "\n".join(lines) + "\n"


def cross_dataset_markdown(results: Mapping[str, Mapping[str, float]],
                           metric_names: Sequence[str] = CROSS_DATASET_METRICS,
                           title: str = "") -> str:
    """One checkpoint, several test sets: a row per dataset, a column per metric, plus the
    number of images."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| test set | " + " | ".join(metric_names) + " | images |",
              "|---|" + "---|" * (len(metric_names) + 1)]
    for dataset, metrics in results.items():
        cells = " | ".join(f"{metrics[m]:.4f}" for m in metric_names)
        lines.append(f"| {dataset} | {cells} | {int(metrics['num_images'])} |")
    return "\n".join(lines) + "\n"
