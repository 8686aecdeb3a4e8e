"""Training metrics out: WORKDIR/metrics.jsonl, TensorBoard (tensorboardX), console lines and a
tqdm bar (only when stderr is a terminal).

Only process 0 writes; on the others every method is a no-op, so the loop calls them
unconditionally. Each `write` is one JSON line `{"step": N, ...}` and one scalar per key. A
resumed run first drops the lines of steps after its checkpoint (they are run again), so
metrics.jsonl never holds a step twice.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import tqdm
from absl import logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _to_float(value: Any) -> float | None:
    """A JSON-safe float; non-finite values become None (JSON null)."""
    number = float(np.asarray(value))
    return number if math.isfinite(number) else None


class MetricWriter:
    """Writes step metrics; the progress bar shows the step and images per second."""

    def __init__(self, workdir: str, *, total_steps: int, initial_step: int = 0,
                 tensorboard: bool = True, progress_bar: bool = True,
                 enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tensorboard = None
        self._bar = None
        self.history: list[dict[str, Any]] = []
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, METRICS_FILE)
        self.history = records_up_to(path, initial_step)
        _rewrite(path, self.history)
        self._jsonl = open(path, "a", encoding="utf-8")
        if tensorboard:
            import tensorboardX  # pylint: disable=import-outside-toplevel
            self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))
        if progress_bar and sys.stderr.isatty():
            self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step",
                                  dynamic_ncols=True)

    def say(self, line: str) -> None:
        """One console line (above the progress bar when there is one)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            logging.info("%s", line)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{name: _to_float(v) for name, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tensorboard is not None:
            for name, value in record.items():
                if name != "step" and value is not None:
                    self._tensorboard.add_scalar(name, value, step)
            self._tensorboard.flush()

    def advance(self, steps: int, images_per_second: float | None = None) -> None:
        if self._bar is None:
            return
        self._bar.update(steps)
        if images_per_second is not None:
            self._bar.set_postfix(img_s=f"{images_per_second:.1f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._jsonl is not None:
            self._jsonl.close()


# Console lines name the run's code that said them, not this file.
logging.ABSLLogger.register_frame_to_skip(__file__, "say")


def records_up_to(path: str, last_step: int) -> list[dict[str, Any]]:
    """The records of `path` (metrics.jsonl) with step <= last_step; none if it does not exist.

    A line that does not parse (a run killed mid-write) is dropped with a warning naming it.
    """
    if not os.path.exists(path):
        return []
    kept = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (ValueError, KeyError, TypeError):
                logging.warning("%s line %d: not a metrics record, dropped", path, number)
                continue
            if step <= last_step:
                kept.append(record)
    return kept


def _rewrite(path: str, records: list[dict[str, Any]]) -> None:
    """Replaces `path` by `records` atomically (a kill leaves the old or the new file)."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as out:
        out.writelines(json.dumps(record) + "\n" for record in records)
    os.replace(temporary, path)


class Throughput:
    """Images per second between two calls of `rate`."""

    def __init__(self):
        self._start = time.perf_counter()
        self._images = 0

    def add(self, images: int) -> None:
        self._images += images

    def restart(self) -> None:
        """Starts a new window (after work that is not training: validation, a save)."""
        self._start, self._images = time.perf_counter(), 0

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self._images / max(now - self._start, 1e-9)
        self._start, self._images = now, 0
        return rate
