"""The authors' protocol: model selection on the test part, best test PLCC and SRCC kept apart.

Their scripts evaluate the test part after every epoch and keep two checkpoints: the one with the
highest test PLCC (raw Pearson) and the one with the highest test SRCC, each replaced when a later
epoch ties or beats it (`>=`); they report the best PLCC and the best SRCC, which may come from
different epochs, and distil the student from the best-PLCC teacher.

Those numbers are chosen by looking at the test set, so they are optimistic; every file written
here says so (`selected_on_test: true`, `best_test_*` names). Our default protocol selects on a
validation part instead (dpiqa_jax/eval/protocol.py).

`SelectionOnTest` tracks the bests over a run and keeps them in WORKDIR/test_selection.json, so a
resumed run continues from them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

SELECTION_FILE = "test_selection.json"
# What a run under the authors' protocol reports, as they report it.
REPORTED_METRICS = ("best_test_plcc", "best_test_srcc")
# Test metric behind each reported value (their PLCC is the raw Pearson correlation).
_SELECTED_BY = {"best_test_plcc": "plcc", "best_test_srcc": "srcc"}
# Bundle directory of the checkpoint behind each reported value.
BUNDLE_DIRS = {"best_test_plcc": "best_test_plcc_model", "best_test_srcc": "best_test_srcc_model"}


def _beats(value: float, best: float | None) -> bool:
    """The authors' `>=`: a tie moves the best to the later epoch; NaN never wins."""
    if math.isnan(value):
        return False
    return best is None or value >= best


class SelectionOnTest:
    """Best test PLCC / SRCC over the evaluations of one run (`observe` after each)."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir) / SELECTION_FILE
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            document = read_selection(self.path.parent)
            self.history, self.best = list(document["history"]), dict(document["best"])

    def observe(self, step: int, epoch: float, metrics: Mapping[str, float]) -> list[str]:
        """Records one test evaluation; returns the reported metrics it improved (their
        checkpoints must then be written, to `BUNDLE_DIRS[name]`)."""
        self.history.append({"step": step, "epoch": epoch, **dict(metrics)})
        improved = []
        for name, metric in _SELECTED_BY.items():
            value = float(metrics[metric])
            if _beats(value, self.best.get(name, {}).get("value")):
                self.best[name] = {"value": value, "step": step, "epoch": epoch,
                                   "bundle": BUNDLE_DIRS[name]}
                improved.append(name)
        return improved

    def reported(self) -> dict[str, float]:
        """{best_test_plcc, best_test_srcc} (NaN if never defined)."""
        return {name: self.best.get(name, {}).get("value", math.nan) for name in REPORTED_METRICS}

    def write(self) -> Path:
        document = {"protocol": "authors", "selected_on_test": True, **self.reported(),
                    "best": self.best, "history": self.history}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
        temporary.replace(self.path)  # atomic: a killed run leaves the previous file whole
        return self.path


def read_selection(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The test_selection.json of a run under the authors' protocol, checked."""
    path = Path(run_dir) / SELECTION_FILE
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable test-selection file ({e})") from e
    if not isinstance(document, dict) or document.get("selected_on_test") is not True or any(
            not isinstance(document.get(key), (int, float)) for key in REPORTED_METRICS):
        raise ValueError(f"{path}: expected selected_on_test: true and numeric "
                         f"{REPORTED_METRICS}")
    if not isinstance(document.get("history"), list) or not isinstance(document.get("best"), dict):
        raise ValueError(f"{path}: 'history' must be a list and 'best' an object")
    return document


def read_reported(run_dir: str | os.PathLike) -> dict[str, float]:
    """{best_test_plcc, best_test_srcc} of a finished run under the authors' protocol."""
    document = read_selection(run_dir)
    return {name: float(document[name]) for name in REPORTED_METRICS}
