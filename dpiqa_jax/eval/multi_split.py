"""Train and test over repeated splits (ten seeded splits, or KonIQ's official one) and summarise.

Training and test-time scoring are injected callables, so the driver (and its tests) need
neither a model nor data:

    train_fn(config, split: SplitRef, workdir: Path) -> checkpoint_dir
    evaluate_fn(checkpoint_dir, split: SplitRef, out_dir: Path) -> {metric: value}

`make_test_evaluator` builds the usual evaluate_fn (score the split's test part with
`load_predict_fn(checkpoint_dir)`); `default_train_fn` is dpiqa_jax.train.run.train_and_evaluate.

Layout under workdir: <split>/ (the training run), <split>/test/ (metrics.json, predictions.csv,
scatter.png), and summary.json + summary.md over the splits.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from absl import logging
from tqdm import tqdm

from dpiqa_jax.data import images, sources
from dpiqa_jax.eval import aggregate, protocol


@dataclasses.dataclass(frozen=True)
class SplitRef:
    """Which split to train / test on: a key ("seed3", "official") of a dataset's split file."""

    dataset: str
    split_file: str
    split: str


TrainFn = Callable[[Any, SplitRef, Path], str]
EvaluateFn = Callable[[str, SplitRef, Path], Mapping[str, float]]
LoadPredictFn = Callable[[str], protocol.PredictFn]

SUMMARY_JSON = "summary.json"
SUMMARY_MARKDOWN = "summary.md"
TEST_DIR = "test"


def default_train_fn() -> TrainFn:
    """dpiqa_jax.train.run.train_and_evaluate, imported only when training is requested."""
    try:
        from dpiqa_jax.train.run import train_and_evaluate
    except ImportError as e:
        raise ImportError("Training over splits needs dpiqa_jax.train.run.train_and_evaluate"
                          "(config, split, workdir) -> checkpoint_dir, which is not available: "
                          f"{e}") from e
    return train_and_evaluate


def make_test_evaluator(data_dir: str | os.PathLike, load_predict_fn: LoadPredictFn,
                        image_config: images.ImageConfig, batch_size: int,
                        config_name: str | None = None) -> EvaluateFn:
    """An evaluate_fn scoring the test part of the split with the checkpoint's predict_fn."""

    def evaluate_fn(checkpoint_dir: str, split: SplitRef, out_dir: Path) -> dict[str, float]:
        source = sources.open_source(split.dataset, data_dir, split.split_file, split.split,
                                     "test", config_name)
        result = protocol.evaluate(load_predict_fn(checkpoint_dir), source, image_config,
                                   batch_size)
        protocol.write_evaluation(
            result, out_dir, title=f"{split.dataset} {split.split} test",
            extra_info={**dataclasses.asdict(split), "checkpoint_dir": str(checkpoint_dir)})
        return result.metrics

    return evaluate_fn


def run_over_splits(train_fn: TrainFn, evaluate_fn: EvaluateFn, config: Any, dataset: str,
                    split_file: str | os.PathLike, split_keys: Sequence[str],
                    workdir: str | os.PathLike,
                    skip_finished: bool = True) -> dict[str, dict[str, float]]:
    """Trains and tests once per split key, then writes and returns the summary.

    Args:
      skip_finished: reuse <split>/test/metrics.json of splits already done (logged), so an
        interrupted sweep resumes.

    Returns:
      {metric: {"median", "mean", "std", "n"}} over the splits.
    """
    workdir = Path(workdir)
    per_split = {}
    for key in tqdm(split_keys, desc=f"{dataset} splits"):
        split = SplitRef(dataset=dataset, split_file=os.fspath(split_file), split=key)
        test_dir = workdir / key / TEST_DIR
        if skip_finished and (test_dir / protocol.METRICS_FILE).is_file():
            logging.info("%s: reusing finished results in %s", key, test_dir)
            per_split[key] = protocol.read_metrics(test_dir)
            continue
        checkpoint_dir = train_fn(config, split, workdir / key)
        per_split[key] = dict(evaluate_fn(checkpoint_dir, split, test_dir))
    return write_summary(per_split, workdir, title=f"{dataset}: {len(per_split)} split(s)")


def write_summary(per_split: Mapping[str, Mapping[str, float]], workdir: str | os.PathLike,
                  title: str = "") -> dict[str, dict[str, float]]:
    """Writes summary.json (per-split metrics and their statistics) and summary.md."""
    summary = aggregate.aggregate_metrics(per_split)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / SUMMARY_JSON).write_text(
        json.dumps({"summary": summary, "per_split": per_split}, indent=2) + "\n")
    (workdir / SUMMARY_MARKDOWN).write_text(
        aggregate.summary_markdown(summary, title) + "\n" + aggregate.per_split_markdown(per_split))
    return summary
