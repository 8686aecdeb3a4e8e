"""Train-step parity with the authors' PyTorch loop at tiny size, through `launch.parity --train`.

Each model runs in a child process (the launcher itself), so that XLA's fastest-compile flags
apply and the exit status and the printed JSON lines are what is checked. The tolerances, with
their derivations, are `dpiqa_jax.dev.train_parity`'s constants; the tool prints each next
to its error, and these tests re-check every line against it.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from dpiqa_jax.dev import train_parity

from helpers import REPO_ROOT, child_environment

STEPS = 5


@pytest.fixture(scope="module", params=["teacher", "student"])
def parity_run(request):
    result = subprocess.run(
        [sys.executable, "-m", "launch.parity", "--train", request.param, "--size", "tiny",
         "--steps", str(STEPS)], env=child_environment(1), cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=900, check=False)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return request.param, result, lines


def test_tool_exits_zero_and_every_quantity_is_within_its_tolerance(parity_run):
    model, result, lines = parity_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    comparisons = [line for line in lines if "quantity" in line]
    for line in comparisons:
        assert line["model"] == model
        assert line["max_rel_err"] <= line["tolerance"], line
    quantities = {line["quantity"] for line in comparisons}
    assert {"grad", "grad_untrained", "trainable_tensors", "param_update", "adam_mu",
            "adam_nu"} <= quantities
    if model == "student":
        assert "batch_stats" in quantities
    losses = [line for line in comparisons if line["quantity"] == "loss"]
    assert [line["step"] for line in losses] == list(range(1, STEPS + 1))


def test_tool_says_layout_threads_and_what_randomness_is_off(parity_run):
    _, _, lines = parity_run
    setup = lines[0]["setup"]
    assert setup["torch_layout"] == "contiguous NCHW"
    assert setup["torch_threads"] >= 1
    assert setup["randomness_switched_off"]
    # The run crosses both milestones: steps 1-2 at lr, 3-4 at 0.2 lr, 5 at 0.04 lr.
    assert STEPS > max(setup["milestone_epochs"]) * setup["steps_per_epoch"]


def test_comparisons_fail_on_a_real_difference():
    reference = {"a": np.array([1.0, -2.0, 3.0]), "b": np.array([1e-9, 0.0, 0.0])}
    same = train_parity.compare_tensors("m", 1, "grad", reference, reference, 1e-4, "norm")
    assert not same.failed() and same.max_abs_err == 0
    # 1% off in a tensor: far beyond the tolerance.
    off = dict(reference, a=reference["a"] * 1.01)
    assert train_parity.compare_tensors("m", 1, "grad", off, reference, 1e-4, "norm").failed()
    # A rounding-level tensor ("b", 3e-10 of the whole) is judged against the floor.
    noisy = dict(reference, b=np.array([-1e-9, 0.0, 0.0]))
    assert not train_parity.compare_tensors("m", 1, "grad", noisy, reference, 1e-4,
                                            "norm").failed()
    missing = {"a": reference["a"]}
    assert train_parity.compare_tensors("m", 1, "grad", missing, reference, 1e-4,
                                        "norm").failed()
    losses = list(train_parity.compare_losses("m", [1.0, 2.0], [1.0, 2.001]))
    assert not losses[0].failed() and losses[1].failed()


def test_untrained_tensors_must_have_no_gradient():
    grads = {"vae.w": None, "unet.w": np.ones(3), "unet.conv_out": None}
    ours = {"unet.w": np.ones(3), "unet.conv_out": np.zeros(2)}
    results = list(train_parity.compare_untrained("teacher", grads, ours))
    assert [r.failed() for r in results] == [False, False]
    leaked = dict(grads, **{"vae.w": np.full(2, 1e-3)})
    assert all(r.failed() for r in train_parity.compare_untrained("teacher", leaked, ours))
    ours_leak = dict(ours, **{"unet.conv_out": np.array([0.0, 1e-3])})
    assert all(r.failed() for r in train_parity.compare_untrained("teacher", grads, ours_leak))


def test_a_gradient_below_what_the_comparison_resolves_does_not_count_as_training():
    # SD's mid block at 64 px attends over one token: its keys' gradient is zero in exact
    # arithmetic and rounding on one side; GRAD_RTOL x NORM_FLOOR of the whole norm separates them.
    torch_side = {"unet.w": np.ones(3), "unet.k": np.zeros(2)}
    rounding = {"unet.w": np.ones(3), "unet.k": np.full(2, 1e-12)}
    trained = {"unet.w": np.ones(3), "unet.k": np.full(2, 1e-3)}
    counts = {name: list(train_parity.compare_untrained("teacher", torch_side, ours))[1]
              for name, ours in (("rounding", rounding), ("trained", trained))}
    assert all(c.quantity == "trainable_tensors" for c in counts.values())
    assert not counts["rounding"].failed() and counts["trained"].failed()


def test_setup_refuses_a_run_without_a_milestone():
    with pytest.raises(ValueError, match="milestone"):
        train_parity.TrainParitySetup("teacher", "tiny", steps=2)
