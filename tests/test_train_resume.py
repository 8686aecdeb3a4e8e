"""A training run killed (SIGKILL) after a checkpoint resumes from it and ends with exactly the
state (parameters, Adam moments, BatchNorm statistics, step) of an uninterrupted run.

The tiny student is used: its update has the most state to get right on resume (BatchNorm
statistics, stochastic-depth randomness, the data position, teacher maps). Each run is a child
process (this file run as a script), so the kill is a real one.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from test_train_multidevice import REPO, child_environment

TOTAL_STEPS = 6
CHECKPOINT_EVERY = 2
FINAL_STATE_FILE = "final_state.npz"


def _command(workdir) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), str(workdir)]


def _run_to_completion(workdir) -> dict[str, np.ndarray]:
    result = subprocess.run(_command(workdir), env=child_environment(1), cwd=REPO,
                            capture_output=True, text=True, timeout=900, check=False)
    if result.returncode:
        pytest.fail(f"training child failed:\n{result.stderr[-6000:]}")
    with np.load(os.path.join(workdir, FINAL_STATE_FILE)) as final:
        return dict(final)


def _kill_after_first_checkpoint(workdir) -> list[str]:
    """Starts a run, SIGKILLs it once its first checkpoint is complete; returns the steps saved."""
    checkpoints = os.path.join(workdir, "checkpoints")
    child = subprocess.Popen(_command(workdir), env=child_environment(1), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    try:
        while not os.path.isdir(os.path.join(checkpoints, str(CHECKPOINT_EVERY))):
            if child.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the run ended or stalled before its first checkpoint "
                            f"(exit code {child.returncode})")
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    return sorted(name for name in os.listdir(checkpoints) if name.isdigit())


def test_killed_run_resumes_to_the_identical_state(tmp_path):
    straight = _run_to_completion(tmp_path / "straight")
    interrupted = tmp_path / "interrupted"
    saved = _kill_after_first_checkpoint(interrupted)
    assert str(TOTAL_STEPS) not in saved, f"the run finished before the kill: {saved}"
    assert not (interrupted / FINAL_STATE_FILE).exists()
    resumed = _run_to_completion(interrupted)
    assert sorted(resumed) == sorted(straight)
    assert int(resumed["step"]) == TOTAL_STEPS
    for name, value in straight.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)  # bit-identical
    log = (interrupted / "metrics.jsonl").read_text()
    assert '"step": 6' in log


# --------------------------------------------------------------------------- child process


def _child(workdir: str) -> None:
    import jax  # pylint: disable=import-outside-toplevel
    from configs import student  # pylint: disable=import-outside-toplevel
    from dpiqa_jax.train import run  # pylint: disable=import-outside-toplevel
    from dpiqa_jax.train.state import flat_paths  # pylint: disable=import-outside-toplevel

    config = student.get_config("tiny")
    config.total_steps = TOTAL_STEPS
    config.checkpoint_every_steps = CHECKPOINT_EVERY
    config.eval_every_steps = TOTAL_STEPS
    config.log_every_steps = 1
    result = run.train(config, workdir)
    state = jax.tree.map(np.asarray, result.final_state)
    np.savez(os.path.join(workdir, FINAL_STATE_FILE), **flat_paths(state))


if __name__ == "__main__":
    _child(sys.argv[1])
