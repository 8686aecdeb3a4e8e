"""Train and test over repeated splits (ten seeded splits, or KonIQ's official one) and summarise.

Training and test-time scoring are injected callables, so the driver (and its tests) need
neither a model nor data:

    train_fn(config, split: SplitRef, workdir: Path) -> checkpoint_dir
    evaluate_fn(checkpoint_dir, split: SplitRef, out_dir: Path) -> {metric: value}

`make_test_evaluator` builds the usual evaluate_fn (score the split's test part with
`load_predict_fn(checkpoint_dir)`); `default_train_fn` is dpiqa_jax.train.run.train_and_evaluate.

Layout under workdir: <split>/ (the training run), <split>/test/ (metrics.json, predictions.csv,
scatter.png), and summary.json + summary.md over the splits.

Under the authors' protocol (`protocol="authors"`) the run itself evaluates the test part every
epoch and keeps the best test PLCC and SRCC (dpiqa_jax.eval.test_selection); those are what is
aggregated, not a fresh test evaluation, and every file says they were selected on the test
part: <split>/selected_on_test.json, summary_selected_on_test.json and .md.
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
from dpiqa_jax.eval import aggregate, protocol, test_selection


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
PROTOCOLS = ("ours", "authors")
# The authors' protocol's files: their names say the numbers were selected on the test part.
SELECTED_SPLIT_FILE = "selected_on_test.json"
SELECTED_SUMMARY_JSON = "summary_selected_on_test.json"
SELECTED_SUMMARY_MARKDOWN = "summary_selected_on_test.md"
SELECTED_NOTE = ("Selected on the test part (the authors' protocol): each value is the best test "
                 "score over the epochs, PLCC and SRCC each at its own best epoch. Optimistic; "
                 "not comparable with validation-selected results.")


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


def _check_protocol(name: str) -> str:
    if name not in PROTOCOLS:
        raise ValueError(f"protocol {name!r}; expected one of {PROTOCOLS}")
    return name


def _split_result(train_fn: TrainFn, evaluate_fn: EvaluateFn, config: Any, split: SplitRef,
                  run_dir: Path, skip_finished: bool, protocol_name: str) -> dict[str, float]:
    """One split's numbers: a fresh test evaluation of the trained model (ours), or the run's
    best test values (the authors')."""
    done = (run_dir / SELECTED_SPLIT_FILE if protocol_name == "authors"
            else run_dir / TEST_DIR / protocol.METRICS_FILE)
    if skip_finished and done.is_file():
        logging.info("%s: reusing finished results in %s", split.split, done)
        if protocol_name == "authors":
            return test_selection.read_reported(run_dir)
        return protocol.read_metrics(done.parent)
    checkpoint_dir = train_fn(config, split, run_dir)
    if protocol_name == "ours":
        return dict(evaluate_fn(checkpoint_dir, split, run_dir / TEST_DIR))
    reported = test_selection.read_reported(run_dir)
    done.write_text(json.dumps({"selected_on_test": True, **reported}, indent=2) + "\n")
    return reported


def run_over_splits(train_fn: TrainFn, evaluate_fn: EvaluateFn, config: Any, dataset: str,
                    split_file: str | os.PathLike, split_keys: Sequence[str],
                    workdir: str | os.PathLike, skip_finished: bool = True,
                    protocol_name: str = "ours") -> dict[str, dict[str, float]]:
    """Trains and tests once per split key, then writes and returns the summary.

    Args:
      skip_finished: reuse the results of splits already done (logged), so an interrupted sweep
        resumes.
      protocol_name: 'ours' or 'authors' (the module docstring), as the config's `protocol`.

    Returns:
      {metric: {"median", "mean", "std", "n"}} over the splits.
    """
    _check_protocol(protocol_name)
    workdir = Path(workdir)
    per_split = {}
    for key in tqdm(split_keys, desc=f"{dataset} splits"):
        split = SplitRef(dataset=dataset, split_file=os.fspath(split_file), split=key)
        per_split[key] = _split_result(train_fn, evaluate_fn, config, split, workdir / key,
                                       skip_finished, protocol_name)
    return write_summary(per_split, workdir, title=f"{dataset}: {len(per_split)} split(s)",
                         protocol_name=protocol_name)


def write_summary(per_split: Mapping[str, Mapping[str, float]], workdir: str | os.PathLike,
                  title: str = "", protocol_name: str = "ours") -> dict[str, dict[str, float]]:
    """Writes summary.json (per-split metrics and their statistics) and summary.md; under the
    authors' protocol summary_selected_on_test.json / .md of their two reported metrics."""
    selected = _check_protocol(protocol_name) == "authors"
    names = test_selection.REPORTED_METRICS if selected else aggregate.METRIC_NAMES
    summary = aggregate.aggregate_metrics(per_split, names)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    document = {"protocol": protocol_name, "selected_on_test": selected, "summary": summary,
                "per_split": per_split}
    markdown = (aggregate.summary_markdown(summary, title) + "\n"
                + aggregate.per_split_markdown(per_split, names))
    if selected:
        markdown = SELECTED_NOTE + "\n\n" + markdown
    json_name, markdown_name = ((SELECTED_SUMMARY_JSON, SELECTED_SUMMARY_MARKDOWN) if selected
                                else (SUMMARY_JSON, SUMMARY_MARKDOWN))
    (workdir / json_name).write_text(json.dumps(document, indent=2) + "\n")
    (workdir / markdown_name).write_text(markdown)
    return summary
