"""What a training run tells the person watching it (absl logging on stderr).

- each setup phase (mesh, data, model, placement, restore, compile) when it starts and how long
  it took;
- one line per logged step: `step 4/6 (67%) | loss 0.0213 | lr 1.0e-03 | 13.2 img/s | ETA 0:00:09`;
- one line per evaluation: `eval step 3: val SRCC 0.4120 PLCC 0.3911 | best SRCC 0.4120 (step 3)`;
- third-party INFO chatter (Orbax prints its options and every save step, JAX its backend probing)
  held below the default verbosity: shown again with `--verbosity=1`.
"""

from __future__ import annotations

import importlib.util
import logging as std_logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

# Packages whose INFO records are hidden at the default verbosity; warnings always pass.
QUIET_PACKAGES = ("orbax", "grain", "jax", "jaxlib", "tensorstore", "tensorflow_datasets")


class phase:  # pylint: disable=invalid-name  # used as a function: `with phase(...):`
    """Logs `description` when the phase starts and its duration when it ends."""

    def __init__(self, description: str):
        self._description = description
        self._start = 0.0

    def __enter__(self) -> None:
        logging.info("%s ...", self._description)
        self._start = time.perf_counter()

    def __exit__(self, error_type: Any, *_: Any) -> None:
        if error_type is None:
            logging.info("%s: done in %.1f s", self._description,
                         time.perf_counter() - self._start)


# The log lines name the run's code that opened the phase, not this file.
for _method in ("__enter__", "__exit__"):
    logging.ABSLLogger.register_frame_to_skip(__file__, _method)


def format_duration(seconds: float) -> str:
    """H:MM:SS (what tqdm prints too); '?' before anything is known."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class EtaClock:
    """Remaining time from the pace of the steps run by this process so far (compile excluded)."""

    def __init__(self, first_step: int, total_steps: int):
        self._first_step = first_step
        self._total = total_steps
        self._start = time.perf_counter()

    def remaining_seconds(self, step: int) -> float:
        done = step - self._first_step
        if done <= 0:
            return math.nan
        return (time.perf_counter() - self._start) / done * (self._total - step)


def step_line(step: int, total: int, metrics: Mapping[str, float], images_per_second: float,
              eta_seconds: float) -> str:
    """The line of one logged step (`metrics` as the update returns them: loss, learning_rate)."""
    parts = [f"step {step}/{total} ({100.0 * step / total:.0f}%)",
             f"loss {metrics['loss']:.4g}"]
    if "learning_rate" in metrics:
        parts.append(f"lr {metrics['learning_rate']:.2e}")
    parts += [f"{images_per_second:.1f} img/s", f"ETA {format_duration(eta_seconds)}"]
    return " | ".join(parts)


class BestSoFar:
    """The best validation SRCC seen in this run (NaN ranks below every number)."""

    def __init__(self, history: Sequence[Mapping[str, float | None]] = ()):
        self.srcc = -math.inf
        self.step: int | None = None
        for record in history:
            if record.get("val_srcc") is not None:
                self.update(int(record["step"]), float(record["val_srcc"]))

    def update(self, step: int, srcc: float) -> None:
        if not math.isnan(srcc) and srcc > self.srcc:
            self.srcc, self.step = srcc, step


def eval_line(step: int, val_metrics: Mapping[str, float], best: BestSoFar) -> str:
    """The line of one validation (`val_metrics` with val_srcc and val_plcc)."""
    line = (f"eval step {step}: val SRCC {val_metrics['val_srcc']:.4f} "
            f"PLCC {val_metrics['val_plcc']:.4f}")
    if best.step is None:
        return line + " | no finite SRCC yet"
    return line + f" | best SRCC {best.srcc:.4f} (step {best.step})"


class _QuietPackages(std_logging.Filter):
    """Drops records below WARNING that come from files inside `directories`."""

    def __init__(self, directories: Sequence[str]):
        super().__init__()
        self._directories = tuple(directories)

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING or logging.get_verbosity() > logging.INFO:
            return True
        return not record.pathname.startswith(self._directories)


_installed_filter: _QuietPackages | None = None


def quiet_library_logs(packages: Sequence[str] = QUIET_PACKAGES) -> None:
    """Holds the INFO records of `packages` below the default verbosity (idempotent).

    These libraries log through absl, so every record reaches the one 'absl' logger; the filter
    therefore goes by the file a record comes from, and only touches records below WARNING. The
    packages' own Python loggers (JAX's backend probing) get the WARNING level.
    """
    global _installed_filter
    if _installed_filter is not None:
        return
    if logging.get_verbosity() <= logging.INFO:
        for name in packages:
            std_logging.getLogger(name).setLevel(std_logging.WARNING)
    directories = []
    for name in packages:
        spec = _find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            directories += [os.path.join(path, "") for path in spec.submodule_search_locations]
    _installed_filter = _QuietPackages(directories)
    std_logging.getLogger("absl").addFilter(_installed_filter)


def _find_spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
