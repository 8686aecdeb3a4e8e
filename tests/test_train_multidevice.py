"""The tiny teacher and student train a few steps on a data=4 x fsdp=2 mesh of 8 fake CPU devices
and end where the same steps on one device end.

The multi-device part runs in a child process (this file run as a script): XLA_FLAGS must give the
host platform 8 devices before JAX starts. Both runs live in the child, on devices [0] and [0..7].
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
# Adam normalises every update to ~lr whatever the gradient's size, so where a gradient is ~0
# (BatchNorm biases, cancelling sums) its sign is decided by summation-order noise and the two
# runs step apart by up to 2 * lr (seen on the student: 25% of some leaves' change). With eps = 1
# (far above every |gradient| here) Adam becomes momentum SGD, and parameter differences measure
# gradient differences, i.e. the parallel computation itself.
LEARNING_RATE = 1e-3
ADAM_EPS = 1.0
# Tolerances, derived from the two runs' own figures rather than tuned on one machine. fp32
# throughout; sharded reductions (gradient sums, BatchNorm statistics) add in another order, so:
# - A gradient vector differs by at most GRAD_RTOL of its norm. Measured 4e-5 on a 2-core Intel
#   machine (the student's BatchNorm backward cancels terms); the losses reported from a 2-core
#   AMD EPYC imply at least 9e-5 there. Norms differ by no more than vectors do.
GRAD_RTOL = 1e-3
# - The first step's loss differs by the forward pass's rounding only: identical to 6 digits on
#   both machines above (fp32 u = 6e-8; a mean over a batch of ~40-layer outputs).
FORWARD_RTOL = 1e-5
# - With eps = 1, an Adam update moves at most 2 lr per unit of gradient error (lr / eps through
#   m, as much again through v), so after steps s < t the parameters differ by
#   ||dp_t|| <= 2 lr GRAD_RTOL sum_{s<t} max_{r<=s} ||g_r||, and the loss at step t, to first
#   order, by ||g_t|| ||dp_t|| more (`loss_tolerances`). For the student's norms (14, 7, 14) that
#   is 2e-4 at step 2 and 7.7e-4 at step 3 (absolute), against 9e-6 and 2.2e-5 seen on the AMD
#   machine, where a fixed 1e-5 relative bound failed.
# - Parameters: ||p_t - p'_t||_2 over all trained tensors within the same ||dp_t|| bound, plus
#   their own fp32 rounding (u per element per step).
FP32_EPS = float(np.finfo(np.float32).eps)
# XLA's cheapest CPU code generation: these programs run three times, compiling dominates.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


# Compiled programs shared by the child processes of these tests (and by later test runs): the
# same tiny models compile once. Override the location with DPIQA_TEST_XLA_CACHE.
XLA_CACHE = os.environ.get("DPIQA_TEST_XLA_CACHE",
                           os.path.join(tempfile.gettempdir(), "dpiqa_jax_test_xla_cache"))


def child_environment(num_devices: int) -> dict[str, str]:
    """Environment of a child JAX process with `num_devices` CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (f"{FAST_COMPILE_FLAGS} "
                        f"--xla_force_host_platform_device_count={num_devices}")
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = XLA_CACHE
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="module", params=["teacher", "student"])
def comparison(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    result = subprocess.run([sys.executable, os.path.abspath(__file__), request.param, str(out)],
                            env=child_environment(8), cwd=REPO, capture_output=True, text=True,
                            timeout=900, check=False)
    if result.returncode:
        pytest.fail(f"child failed:\n{result.stderr[-6000:]}")
    with (np.load(out / "single.npz") as single, np.load(out / "sharded.npz") as sharded,
          np.load(out / "initial.npz") as initial):
        states = {"single": dict(single), "sharded": dict(sharded), "initial": dict(initial)}
    return json.loads(result.stdout.strip().splitlines()[-1]), states


def parameter_drift(grad_norms: list[float]) -> list[float]:
    """Bound on ||dp|| before each step (see the tolerances above): 0 before the first."""
    drifts, drift, largest = [], 0.0, 0.0
    for norm in grad_norms:
        drifts.append(drift)
        largest = max(largest, norm)
        drift += 2 * LEARNING_RATE * GRAD_RTOL * largest
    return drifts + [drift]


def loss_tolerances(losses: list[float], grad_norms: list[float]) -> np.ndarray:
    """Absolute bound on each step's loss difference (see the tolerances above)."""
    drifts = parameter_drift(grad_norms)
    return np.array([FORWARD_RTOL * abs(loss) + norm * drift
                     for loss, norm, drift in zip(losses, grad_norms, drifts)])


def _l2(tree_a: dict, tree_b: dict) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(tree_a[n], np.float64) - tree_b[n]))
                             for n in tree_a)))


# Why the student is compared on its forward pass only: its backbone (EfficientNet-Lite0) uses
# ReLU6, whose gradient jumps at 0 and 6. The sharded forward pass sums the BatchNorm statistics in
# another order (about 1e-5 apart), and a pre-activation that lands within that distance of a kink
# gets gradient 1 in one run and 0 in the other. Measured on this test's first batch with
# data=4 x fsdp=2: exactly one such element, in the head conv's BatchNorm output [8, 2, 2, 1280]
# (+1.9e-5 on one device, -1.5e-5 sharded), and with only 32 values per channel that one flip moves
# the step-1 gradient by 3.6e-3 of its norm and the later steps far more. With the ReLU6 gradient
# moved 1e-4 away from its kinks in both runs the gradients agree to 6.5e-6 of the norm, so the
# difference is rounding turned discontinuous, not a sharding error; whether a flip happens
# depends on the CPU's summation order, so no gradient bound would hold everywhere. The teacher's
# activations are smooth and it is compared in full.
KINKED_ACTIVATIONS = {"teacher": False, "student": True}


def test_sharded_run_matches_one_device(comparison, request):
    report, states = comparison
    assert report["devices"] == [1, 8]
    losses, norms = report["losses_single"], report["grad_norms_single"]
    if KINKED_ACTIVATIONS[request.node.callspec.params["comparison"]]:
        # The first step's loss is the forward pass of identical weights on the same batch.
        assert abs(report["losses_sharded"][0] - losses[0]) <= FORWARD_RTOL * abs(losses[0])
        return
    loss_errors = np.abs(np.subtract(report["losses_sharded"], losses))
    assert np.all(loss_errors <= loss_tolerances(losses, norms)), (
        loss_errors, loss_tolerances(losses, norms))
    np.testing.assert_allclose(report["grad_norms_sharded"], norms, rtol=GRAD_RTOL)
    assert sorted(states["single"]) == sorted(states["sharded"])
    single, sharded, initial = ({n: a for n, a in states[run].items() if n.startswith("params/")}
                                for run in ("single", "sharded", "initial"))
    zeros = {n: np.zeros_like(a) for n, a in single.items()}
    param_bound = parameter_drift(norms)[-1] + STEPS * FP32_EPS * _l2(single, zeros)
    assert _l2(sharded, single) <= param_bound
    assert _l2(single, initial) > 10 * param_bound  # the steps did train, far beyond the noise
    # BatchNorm running statistics blend batch statistics: the forward pass's rounding.
    stats = {run: {n: a for n, a in states[run].items() if n.startswith("batch_stats/")}
             for run in ("single", "sharded")}
    stats_zeros = {n: np.zeros_like(a) for n, a in stats["single"].items()}
    assert _l2(stats["sharded"], stats["single"]) <= FORWARD_RTOL * _l2(stats["single"],
                                                                         stats_zeros)


def test_parameters_and_adam_moments_are_split_over_fsdp(comparison):
    report, _ = comparison
    assert report["fsdp_split_leaves"] > 0
    assert report["moments_follow_params"]
    assert report["frozen_not_in_optimizer"]


# --------------------------------------------------------------------------- child process


def _train_few_steps(config, devices):
    import jax  # pylint: disable=import-outside-toplevel
    from dpiqa_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    from dpiqa_jax.train import inputs, optim, run, sharding, tasks  # pylint: disable=import-outside-toplevel

    mesh = sharding.make_mesh(config.mesh, devices)
    parts = inputs.open_parts(config.data)
    schedule = optim.learning_rate_schedule(config.optimizer.learning_rate, [], 1.0)
    optimizer = optim.make_optimizer(config.optimizer, schedule)
    task = tasks.build_task(config)
    placed = run.place_task(task, optimizer, mesh, config.fsdp_min_size)
    initial = jax.tree.map(np.asarray, placed.state)
    update = run.compile_task_update(config, task, placed, optimizer, schedule)
    iterator = pipeline.train_iterator(parts["train"], inputs.pipeline_config(config))
    state, history = placed.state, {"losses": [], "grad_norms": []}
    for _ in range(STEPS):
        batch = run.next_global_batch(task, iterator, mesh)
        with jax.transfer_guard("disallow"):
            state, metrics = update(state, placed.frozen, batch)
        history["losses"].append(float(metrics["loss"]))
        history["grad_norms"].append(float(metrics["grad_norm"]))
    return task, initial, state, history


def _save_trained(path: str, state) -> None:
    import jax  # pylint: disable=import-outside-toplevel
    from dpiqa_jax.train.state import flat_paths  # pylint: disable=import-outside-toplevel
    trained = {"params": state.params, "batch_stats": state.batch_stats}
    np.savez(path, **flat_paths(jax.tree.map(np.asarray, trained)))


def _child(kind: str, out: str) -> dict:
    import jax  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    from configs import student, teacher  # pylint: disable=import-outside-toplevel
    from dpiqa_jax.train.state import flat_paths  # pylint: disable=import-outside-toplevel

    config = (teacher if kind == "teacher" else student).get_config("tiny")
    config.fsdp_min_size = 256  # the tiny models' kernels are small; split them anyway
    config.optimizer.learning_rate = LEARNING_RATE
    config.optimizer.eps = ADAM_EPS
    config.mesh = "data=1,fsdp=1"
    _, initial, single, history_single = _train_few_steps(config, jax.devices()[:1])
    config.mesh = "data=4,fsdp=2"
    task, _, sharded, history_sharded = _train_few_steps(config, jax.devices())
    _save_trained(os.path.join(out, "initial.npz"), initial)
    _save_trained(os.path.join(out, "single.npz"), single)
    _save_trained(os.path.join(out, "sharded.npz"), sharded)

    params, moments = flat_paths(sharded.params), flat_paths(
        optax.tree_utils.tree_get(sharded.opt_state, "mu"))
    split = [name for name, leaf in params.items() if "fsdp" in str(leaf.sharding.spec)]
    return {
        "devices": [len(jax.tree.leaves(tree)[0].sharding.device_set)
                    for tree in (single.params, sharded.params)],
        **{f"{name}_single": value for name, value in history_single.items()},
        **{f"{name}_sharded": value for name, value in history_sharded.items()},
        "fsdp_split_leaves": len(split),
        "moments_follow_params": all(moments[n].sharding == params[n].sharding for n in params),
        "frozen_not_in_optimizer": not any(n.startswith("vae/") for n in moments) and (
            kind == "student" or "vae" in task.frozen["params"]),
    }


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2])))
