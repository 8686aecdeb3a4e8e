"""Learning-rate schedules, the optimizer, its coverage check, and the trained/frozen split."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dpiqa_jax.train import optim
from dpiqa_jax.train.state import create_train_state, flat_paths, merge_params, partition_params

PARAMS = {"unet": {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.zeros(4)}},
          "vae": {"conv": {"kernel": jnp.ones((3, 3, 3, 2)), "bias": jnp.zeros(2)}},
          "gamma": jnp.full((4,), 1e-4)}


def _schedule_config(**fields):
    config = ml_collections.ConfigDict({"milestone_epochs": (), "milestone_steps": (),
                                        "factor": 0.2})
    config.update(fields)
    return config


def test_milestones_in_epochs_become_steps():
    assert optim.milestone_steps(_schedule_config(milestone_epochs=(10, 25)), 73) == [730, 1825]
    assert optim.milestone_steps(_schedule_config(milestone_steps=(4, 9)), 73) == [4, 9]


@pytest.mark.parametrize("fields,message", [
    ({"milestone_epochs": (5,), "milestone_steps": (3,)}, "not both"),
    ({"milestone_steps": (9, 4)}, "increasing"),
    ({"milestone_steps": (0,)}, "positive"),
])
def test_bad_milestones_are_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        optim.milestone_steps(_schedule_config(**fields), 10)


def test_schedule_decays_on_the_first_step_of_each_milestone_epoch():
    # torch MultiStepLR stepped per epoch: epoch e uses lr * 0.2 ** (milestones <= e); with 100
    # steps per epoch and milestones [10, 25], optimizer step s is in epoch s // 100.
    schedule = optim.learning_rate_schedule(1e-4, [1000, 2500], 0.2)
    expected = {0: 1e-4, 999: 1e-4, 1000: 2e-5, 2499: 2e-5, 2500: 4e-6, 10 ** 6: 4e-6}
    for step, lr in expected.items():
        np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-6)


def _optimizer_config(**fields):
    config = ml_collections.ConfigDict({"name": "adam", "learning_rate": 0.1, "b1": 0.9,
                                        "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
                                        "clip_norm": 0.0})
    config.update(fields)
    return config


def test_adam_matches_torch_adam_first_step():
    # torch.optim.Adam's first step moves every parameter by lr * sign(grad) (bias-corrected).
    optimizer = optim.make_optimizer(_optimizer_config(), optax.constant_schedule(0.1))
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, -3.0, 0.0])}
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["w"]), [-0.1, 0.1, 0.0], atol=1e-6)


def test_adamw_decays_kernels_only():
    optimizer = optim.make_optimizer(_optimizer_config(name="adamw", weight_decay=0.5),
                                     optax.constant_schedule(0.1))
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = optimizer.update(zeros, optimizer.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["kernel"]), -0.05, atol=1e-7)
    np.testing.assert_allclose(np.asarray(updates["bias"]), 0.0, atol=1e-7)


def test_clipping_bounds_the_global_norm():
    optimizer = optim.make_optimizer(_optimizer_config(clip_norm=1.0), optax.constant_schedule(1))
    params = {"w": jnp.zeros(2)}
    _, state = optimizer.update({"w": jnp.array([30.0, 40.0])}, optimizer.init(params), params)
    # Adam's first moment after one step is (1 - b1) * the gradient it received: the clipped one.
    mu = optax.tree_utils.tree_get(state, "mu")
    np.testing.assert_allclose(np.asarray(mu["w"]), [0.06, 0.08], atol=1e-6)


def test_adam_with_weight_decay_is_refused():
    with pytest.raises(ValueError, match="use 'adamw'"):
        optim.make_optimizer(_optimizer_config(weight_decay=0.01), optax.constant_schedule(1))


def test_partition_keeps_frozen_weights_out_of_the_trainable_tree():
    trainable, frozen = partition_params(PARAMS, ("^vae/",))
    assert set(flat_paths(trainable)) == {"unet/conv/kernel", "unet/conv/bias", "gamma"}
    assert set(flat_paths(frozen)) == {"vae/conv/kernel", "vae/conv/bias"}
    merged = merge_params(trainable, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(PARAMS)
    with pytest.raises(ValueError, match="both trainable and frozen"):
        merge_params(trainable, trainable)
    with pytest.raises(ValueError, match=r"match no parameter.*\['gamma', 'unet', 'vae'\]"):
        partition_params(PARAMS, ("^text_adapter/",))


def test_optimizer_state_covers_exactly_the_trainable_parameters():
    trainable, _ = partition_params(PARAMS, ("^vae/",))
    optimizer = optim.make_optimizer(_optimizer_config(), optax.constant_schedule(0.1))
    state = create_train_state(trainable, {}, optimizer)
    optim.check_optimizer_covers(state.params, state.opt_state)
    # The frozen VAE has no Adam moments at all.
    assert not any(path.startswith("vae/") for path in flat_paths(state.opt_state[0].mu))
    # Works on abstract trees too (launch.inspect, before any weight exists).
    abstract = jax.eval_shape(lambda p: create_train_state(p, {}, optimizer), trainable)
    optim.check_optimizer_covers(abstract.params, abstract.opt_state)


def test_a_parameter_left_out_of_the_optimizer_is_reported():
    masked = optax.masked(optax.adam(0.1), lambda p: {"unet": jax.tree.map(lambda _: True,
                                                                           p["unet"]),
                                                      "gamma": False})
    trainable, _ = partition_params(PARAMS, ("^vae/",))
    with pytest.raises(optim.OptimizerCoverageError, match=r"not covered \['gamma'\]"):
        optim.check_optimizer_covers(trainable, masked.init(trainable))


def test_frozen_weights_in_the_optimizer_are_reported():
    optimizer = optax.adam(0.1)
    trainable, _ = partition_params(PARAMS, ("^vae/",))
    with pytest.raises(optim.OptimizerCoverageError, match=r"unexpected \['vae/conv/bias'"):
        optim.check_optimizer_covers(trainable, optimizer.init(PARAMS))
