"""What a training run prints and checks before it builds anything: the step and evaluation lines,
library chatter held below the default verbosity, the workdir / keep_checkpoints checks (and that
launch.train makes them before any model work), metrics.jsonl without repeated steps on resume,
and validation with non-finite predictions under skip_nonfinite."""

import json
import logging as std_logging
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import logging

from configs import teacher
from dpiqa_jax.train import checkpoint, console, inputs, run, workdir
from dpiqa_jax.train import logging as train_logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_step_line_has_progress_loss_lr_rate_and_eta():
    line = console.step_line(4, 6, {"loss": 0.021375, "learning_rate": 1e-3, "grad_norm": 2.0},
                             13.24, 9.4)
    assert line == "step 4/6 (67%) | loss 0.02138 | lr 1.00e-03 | 13.2 img/s | ETA 0:00:09"


def test_eta_is_unknown_before_the_first_step():
    assert console.format_duration(math.nan) == "?"
    assert console.format_duration(3725) == "1:02:05"
    assert math.isnan(console.EtaClock(3, 6).remaining_seconds(3))


def test_eval_line_tracks_the_best_srcc_and_ranks_nan_last():
    best = console.BestSoFar([{"step": 3, "val_srcc": 0.5}, {"step": 3, "loss": 1.0}])
    best.update(6, math.nan)
    line = console.eval_line(6, {"val_srcc": math.nan, "val_plcc": math.nan}, best)
    assert line == "eval step 6: val SRCC nan PLCC nan | best SRCC 0.5000 (step 3)"
    best.update(9, 0.75)
    assert (best.srcc, best.step) == (0.75, 9)
    assert console.eval_line(1, {"val_srcc": math.nan, "val_plcc": 0.0},
                             console.BestSoFar()).endswith("no finite SRCC yet")


def _record(pathname: str, level: int) -> std_logging.LogRecord:
    return std_logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_library_info_is_quiet_at_the_default_verbosity_only():
    console.quiet_library_logs()
    orbax_file = os.path.join(os.path.dirname(__import__("orbax").checkpoint.__file__), "x.py")
    quiet = console._installed_filter  # pylint: disable=protected-access
    assert not quiet.filter(_record(orbax_file, std_logging.INFO))
    assert quiet.filter(_record(orbax_file, std_logging.WARNING))
    assert quiet.filter(_record(run.__file__, std_logging.INFO))  # our own lines
    previous = logging.get_verbosity()
    logging.set_verbosity(logging.DEBUG)
    try:
        assert quiet.filter(_record(orbax_file, std_logging.INFO))
    finally:
        logging.set_verbosity(previous)


def test_a_workdir_that_cannot_be_written_is_refused(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(workdir.RunSettingsError, match="exists and is not a directory"):
        workdir.check_run_settings(str(a_file), 2)
    with pytest.raises(workdir.RunSettingsError, match="cannot be written"):
        workdir.check_run_settings(str(a_file / "below"), 2)
    with pytest.raises(workdir.RunSettingsError, match="keep_checkpoints must be at least 1"):
        workdir.check_run_settings(str(tmp_path / "fine"), 0)
    assert workdir.check_run_settings(str(tmp_path / "fine"), 1) == str(tmp_path / "fine")


@pytest.mark.parametrize("setting", ["--workdir={file}", "--config.keep_checkpoints=0"])
def test_launch_train_refuses_bad_settings_before_building_a_model(tmp_path, setting):
    (tmp_path / "file").write_text("x")
    args = [f"--workdir={tmp_path / 'run'}", setting.format(file=tmp_path / "file")]
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config=configs/teacher.py:tiny", *args],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "launch.train:" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert ("not a directory" in errors[0]) or ("keep_checkpoints must be at least 1" in errors[0])
    assert "setup:" not in result.stderr  # no setup phase started
    # Imports take seconds on a loaded CI machine; building the tiny model takes minutes there.
    assert elapsed < 90, elapsed


def test_config_differences_ignore_run_neutral_fields():
    saved = {"seed": 0, "log_every_steps": 2, "optimizer": {"learning_rate": 1e-3},
             "schedule": {"milestone_steps": [4]}, "data": {"num_threads": 2, "split": "seed0"}}
    current = {"seed": 0, "log_every_steps": 5, "optimizer": {"learning_rate": 1e-4},
               "schedule": {"milestone_steps": (4,)}, "data": {"num_threads": 8, "split": "seed1"},
               "new_field": 1}
    assert checkpoint.config_differences(saved, current) == [
        "data.split", "new_field", "optimizer.learning_rate"]


def test_resumed_metrics_drop_the_steps_run_again(tmp_path):
    path = tmp_path / train_logging.METRICS_FILE
    lines = [{"step": 2, "loss": 1.0}, {"step": 3, "val_srcc": 0.5}, {"step": 4, "loss": 0.5}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 5, "lo')
    writer = train_logging.MetricWriter(str(tmp_path), total_steps=6, initial_step=3,
                                        tensorboard=False, progress_bar=False, enabled=True)
    writer.write(4, {"loss": 0.25})
    writer.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == lines[:2] + [{"step": 4, "loss": 0.25}]
    assert writer.history == lines[:2]


def _tiny_val_part():
    config = teacher.get_config("tiny")
    return config, inputs.open_parts(config.data)["val"]


def test_nonfinite_validation_ranks_last_with_skip_nonfinite():
    config, source = _tiny_val_part()
    config.skip_nonfinite = True

    def nan_at_first(images):
        scores = np.linspace(0.0, 1.0, len(images), dtype=np.float32)
        scores[0] = np.nan
        return scores

    metrics = run.validation_metrics(nan_at_first, source, config)
    assert math.isnan(metrics["val_srcc"]) and math.isnan(metrics["val_plcc"])
    assert metrics["val_nonfinite_predictions"] >= 1
    assert checkpoint._selection_value(metrics) == -math.inf  # pylint: disable=protected-access
    config.skip_nonfinite = False
    with pytest.raises(run.NonFiniteError, match="predictions not finite"):
        run.validation_metrics(nan_at_first, source, config)
