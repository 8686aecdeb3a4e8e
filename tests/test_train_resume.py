"""A training run killed (SIGKILL) after a checkpoint resumes from it and ends with exactly the
state (parameters, Adam moments, BatchNorm statistics, step) of an uninterrupted run, with every
logged step once in metrics.jsonl; a resume with a config that changes the run is refused.

The tiny student is used: its update has the most state to get right on resume (BatchNorm
statistics, stochastic-depth randomness, the data position, teacher maps). Each run is a child
process (this file run as a script), so the kill is a real one.
"""

import json
import os
import subprocess
import sys
import time

import grain
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import teacher
from dpiqa_jax.train import checkpoint, run, workdir
from dpiqa_jax.train.state import create_train_state
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
    records = [json.loads(line) for line in
               (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert max(record["step"] for record in records) == TOTAL_STEPS
    # A step may have a training line and a validation line, but never the same kind twice.
    kinds = [(record["step"], tuple(sorted(record))) for record in records]
    assert len(kinds) == len(set(kinds)), kinds


def _save_tiny_checkpoint(workdir, config) -> None:
    """One checkpoint of a two-parameter state saved with `config` (no model is built)."""
    state = create_train_state({"w": jnp.zeros(2)}, {}, optax.sgd(0.1))
    iterator = iter(grain.MapDataset.range(4).to_iter_dataset())
    saver = checkpoint.Checkpointer(str(workdir), keep=1)
    saver.save(1, state, iterator, run.config_json(config))
    saver.wait()
    saver.close()


def test_resume_refuses_a_config_that_changes_the_run(tmp_path):
    saved = teacher.get_config("tiny")
    _save_tiny_checkpoint(tmp_path, saved)
    changed = teacher.get_config("tiny")
    changed.optimizer.learning_rate = 0.5
    changed.seed = 3
    changed.log_every_steps = 1  # run-neutral: not listed
    with pytest.raises(workdir.RunSettingsError,
                       match=r"differing fields: optimizer\.learning_rate, seed\. "):
        run.open_checkpoints(changed, str(tmp_path))
    run.open_checkpoints(changed, str(tmp_path), allow_config_change=True).close()
    same_run = teacher.get_config("tiny")
    same_run.total_steps = 12  # a longer run of the same config
    run.open_checkpoints(same_run, str(tmp_path)).close()


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
