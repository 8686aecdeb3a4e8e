"""Training checkpoints: Orbax `CheckpointManager` over WORKDIR/checkpoints.

Each checkpoint step holds three items: `state` (the `TrainState`: trained parameters, optimizer
state, BatchNorm statistics, step), `data` (the Grain iterator position, one file per process)
and `config` (the run's config as JSON). Orbax writes atomically (a killed save leaves no
half-written step), so a restarted run resumes from the latest complete one.

Kept: the latest `keep` steps, and the step with the best validation SRCC among those saved with
metrics. Selection never looks at the test split.

Before anything is built, `check_run_settings` (dpiqa_jax.train.workdir) refuses a workdir that
cannot hold the run and a `keep` below 1; on resume, `config_differences` lists the config fields that changed since the
checkpoint, except those that do not change what is trained (`RUN_NEUTRAL_FIELDS`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import grain
import orbax.checkpoint as ocp

from dpiqa_jax.train.state import TrainState
from dpiqa_jax.train.workdir import check_keep

CHECKPOINT_DIR = "checkpoints"
BEST_METRIC = "val_srcc"
_STATE, _DATA, _CONFIG = "state", "data", "config"
# Config fields a resumed run may change freely: how often it logs, evaluates and saves, how
# many checkpoints it keeps, where and how fast it reads, what it shows, and how long it runs.
RUN_NEUTRAL_FIELDS = frozenset({
    "log_every_steps", "eval_every_steps", "eval_every_epochs", "checkpoint_every_steps",
    "keep_checkpoints",
    "progress_bar", "tensorboard", "total_steps", "num_epochs", "data.data_dir",
    "data.num_threads", "data.prefetch_images", "data.eval_batch_size"})


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Dotted config fields whose value differs (or that exist in one config only), sorted, not
    counting RUN_NEUTRAL_FIELDS; both configs as JSON dicts."""
    old, new = _flatten(saved), _flatten(current)
    missing = object()
    return sorted(key for key in old.keys() | new.keys()
                  if key not in RUN_NEUTRAL_FIELDS and old.get(key, missing) != new.get(key, missing))


def _selection_value(metrics: Mapping[str, float]) -> float:
    """Validation SRCC; an undefined (NaN) correlation ranks below every real one."""
    value = float(metrics[BEST_METRIC])
    return -math.inf if math.isnan(value) else value


class Checkpointer:
    """Saves and restores the training state, the data position and the config."""

    def __init__(self, workdir: str, keep: int):
        check_keep(keep)
        self.directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)),
                                      CHECKPOINT_DIR)
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.BestN(get_metric_fn=_selection_value, n=1,
                                          keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            create=True, preservation_policy=policy, best_fn=_selection_value, best_mode="max")
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                           _DATA: grain.checkpoint.CheckpointHandler(),
                           _CONFIG: ocp.JsonCheckpointHandler()})

    def save(self, step: int, state: TrainState, data_iterator: Any, config: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None) -> None:
        """Saves (asynchronously) step `step`; `metrics` with `val_srcc` make it a best candidate."""
        args = ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(state),
            _DATA: grain.checkpoint.CheckpointSave(data_iterator),
            _CONFIG: ocp.args.JsonSave(dict(config))})
        self._manager.save(step, args=args, metrics=None if metrics is None else dict(metrics),
                           force=True)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def saved_config(self, step: int) -> dict[str, Any]:
        """The config (JSON dict) saved with `step`."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            **{_CONFIG: ocp.args.JsonRestore()}))
        return dict(restored[_CONFIG])

    def best_step(self) -> int | None:
        """The step with the highest validation SRCC (None before any validated checkpoint)."""
        return self._manager.best_step()

    def restore(self, step: int, abstract_state: TrainState, data_iterator: Any | None = None
                ) -> TrainState:
        """The state of `step`, laid out like `abstract_state` (ShapeDtypeStructs with shardings);
        moves `data_iterator` to the saved position when given."""
        items = {_STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items[_DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored[_STATE]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
