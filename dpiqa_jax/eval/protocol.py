"""Scoring a data source with a model and reporting the IQA metrics.

The model enters as a callable, so this module does not depend on how checkpoints are loaded:

    predict_fn(images: float32 [B, H, W, 3]) -> scores [B]

`evaluate(predict_fn, source, ...)` runs it over padded evaluation batches (each image counted
once, also across processes), computes the metrics against `mos_normalized`, and
`write_evaluation` stores metrics.json, predictions.csv and scatter.png. predictions.csv has the
columns of `launch.score`'s output plus `mos` (`dpiqa_jax.eval.rows.LABELLED_COLUMNS`): `raw` is
the prediction, `score` = raw x mos_scale and `mos` = mos_normalized x mos_scale, on one scale.
"""

from __future__ import annotations

import dataclasses
import math
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
from tqdm import tqdm

from dpiqa_jax.data import images, pipeline
from dpiqa_jax.data.sources import IqaSource
from dpiqa_jax.eval import metrics as metrics_lib
from dpiqa_jax.eval import plots
from dpiqa_jax.eval import rows as rows_lib

PredictFn = Callable[[np.ndarray], np.ndarray]

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
SCATTER_FILE = "scatter.png"


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Per-image results, in source order: names [N], predictions [N], mos_normalized [N]."""

    names: tuple[str, ...]
    predictions: np.ndarray
    mos: np.ndarray


@dataclasses.dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    predictions: Predictions
    logistic_params: np.ndarray | None


def predict_source(predict_fn: PredictFn, source: IqaSource, image_config: images.ImageConfig,
                   batch_size: int, process_index: int = 0, process_count: int = 1,
                   num_threads: int = 8, progress: bool = True) -> Predictions:
    """Scores every image of `source` once.

    With process_count > 1, every process scores its share and the results are all-gathered,
    so every process returns the complete Predictions.
    """
    batches = pipeline.eval_dataset(source, batch_size, image_config, process_index,
                                     process_count, num_threads=num_threads)
    total = pipeline.padded_length(len(source), batch_size, process_count)
    num_batches = total // process_count // batch_size
    local = _score_batches(predict_fn, tqdm(batches, total=num_batches, desc="scoring",
                                            disable=not progress))
    gathered = _all_gather(local) if process_count > 1 else local
    return assemble_predictions(gathered, source.names)


def _score_batches(predict_fn: PredictFn,
                   batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    columns = {"index": [], "score": [], "mos": [], "mask": []}
    for batch in batches:
        scores = np.asarray(predict_fn(batch["image"]), dtype=np.float64)
        if scores.shape != batch["mask"].shape:
            raise ValueError(f"predict_fn returned shape {scores.shape} for a batch of "
                             f"{batch['mask'].shape[0]} images; expected scores [B]")
        columns["index"].append(batch["index"])
        columns["score"].append(scores)
        columns["mos"].append(batch["mos_normalized"])
        columns["mask"].append(batch["mask"])
    return {key: np.concatenate(values) for key, values in columns.items()}


def _all_gather(local: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from jax.experimental import multihost_utils  # Only multi-process runs need JAX here.

    return {key: np.asarray(multihost_utils.process_allgather(value, tiled=True))
            for key, value in local.items()}


def assemble_predictions(columns: Mapping[str, np.ndarray], names) -> Predictions:
    """Drops padding, orders by source index, and checks every image was scored exactly once."""
    real = columns["mask"].astype(bool)
    index = columns["index"][real]
    counts = np.bincount(index, minlength=len(names)) if index.size else np.zeros(len(names))
    if index.size and (index.min() < 0 or index.max() >= len(names)):
        raise ValueError(f"evaluation indices out of range [0, {len(names)})")
    if np.any(counts != 1):
        wrong = np.flatnonzero(counts != 1)[:5]
        raise ValueError(f"images scored other than exactly once, e.g. "
                         f"{[(names[i], int(counts[i])) for i in wrong]}")
    order = np.argsort(index)
    return Predictions(names=tuple(names), predictions=columns["score"][real][order],
                       mos=columns["mos"][real][order].astype(np.float64))


def evaluate(predict_fn: PredictFn, source: IqaSource, image_config: images.ImageConfig,
             batch_size: int, process_index: int = 0, process_count: int = 1,
             num_threads: int = 8, progress: bool = True) -> EvalResult:
    """Scores `source` and computes the metrics of dpiqa_jax.eval.metrics."""
    predictions = predict_source(predict_fn, source, image_config, batch_size, process_index,
                                 process_count, num_threads, progress)
    metrics, params = metrics_lib.compute_metrics_and_fit(predictions.predictions,
                                                          predictions.mos)
    return EvalResult(metrics=metrics, predictions=predictions, logistic_params=params)


def write_evaluation(result: EvalResult, out_dir: str | os.PathLike, title: str = "",
                     extra_info: Mapping[str, object] | None = None,
                     mos_scale: float = 1.0) -> dict[str, Path]:
    """Writes metrics.json (metrics + extra_info), predictions.csv and scatter.png.

    `mos_scale` turns predictions and labels into the model's score scale in predictions.csv.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / METRICS_FILE, "predictions": out / PREDICTIONS_FILE,
             "scatter": out / SCATTER_FILE}
    logistic = None if result.logistic_params is None else result.logistic_params.tolist()
    document = {"metrics": result.metrics, "logistic_params": logistic, **(extra_info or {})}
    paths["metrics"].write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
    _write_predictions_csv(result.predictions, paths["predictions"], mos_scale)
    plots.scatter_plot(result.predictions.predictions, result.predictions.mos, result.metrics,
                       result.logistic_params, paths["scatter"], title=title)
    return paths


def _prediction_row(name: str, prediction: float, mos: float, mos_scale: float) -> dict:
    finite = math.isfinite(prediction)
    return {"path": name, "score": prediction * mos_scale if finite else None,
            "raw": prediction if finite else None, "status": "ok" if finite else "error",
            "error": None if finite else f"{name}: the model's score is not finite ({prediction})",
            "map_path": None, "mos": mos * mos_scale}


def _write_predictions_csv(predictions: Predictions, path: Path, mos_scale: float) -> None:
    with rows_lib.open_output(str(path)) as f:
        writer = rows_lib.RowWriter(f, "csv", rows_lib.LABELLED_COLUMNS)
        for name, prediction, mos in zip(predictions.names, predictions.predictions,
                                         predictions.mos):
            writer.write(_prediction_row(name, float(prediction), float(mos), mos_scale))
        writer.close()


def read_metrics(out_dir: str | os.PathLike) -> dict[str, float]:
    """The metrics of a directory written by `write_evaluation`."""
    return json.loads((Path(out_dir) / METRICS_FILE).read_text())["metrics"]


def evaluate_cross_dataset(predict_fn: PredictFn, sources: Mapping[str, IqaSource],
                           image_config: images.ImageConfig, batch_size: int,
                           out_dir: str | os.PathLike | None = None, mos_scale: float = 1.0,
                           **evaluate_kwargs) -> dict[str, dict[str, float]]:
    """One model, several test sets: metrics per dataset name (outputs in out_dir/<name>/)."""
    results = {}
    for name, source in sources.items():
        result = evaluate(predict_fn, source, image_config, batch_size, **evaluate_kwargs)
        if out_dir is not None:
            write_evaluation(result, Path(out_dir) / name, title=name,
                             extra_info={"dataset": name}, mos_scale=mos_scale)
        results[name] = result.metrics
    return results
