"""An epoch is ceil(N / B) steps, its last partial batch padded and masked: the padded step
equals the step on the real images alone (the torch DataLoader's smaller last batch)."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpiqa_jax.models.teacher import Teacher
from dpiqa_jax.train import models, run, steps
from dpiqa_jax.train.state import create_train_state, partition_params

from configs import student as student_config
from configs import teacher as teacher_config


def test_masked_mse_is_the_mse_of_the_real_images():
    rng = np.random.default_rng(0)
    prediction, target = rng.standard_normal((2, 5, 3, 3, 2)).astype(np.float32)
    mask = np.array([True, False, True, True, False])
    np.testing.assert_allclose(steps.masked_mse(prediction, target, mask),
                               steps.mse(prediction[mask], target[mask]), rtol=1e-6)
    np.testing.assert_allclose(steps.masked_mse(prediction, target, None),
                               steps.mse(prediction, target), rtol=1e-6)


@pytest.mark.parametrize("get_config, num_train, expected", [
    (teacher_config.get_config, 8058, 504),  # KonIQ's 80 % part at the teacher's batch 16
    (student_config.get_config, 8058, 336),  # and the student's 24
    (teacher_config.get_config, 928, 58),    # LIVE Challenge's 80 % part
])
def test_steps_per_epoch_are_the_dataloaders(get_config, num_train, expected):
    config = get_config("koniq10k")
    steps_per_epoch, total = run.training_length(config, num_train)
    assert steps_per_epoch == expected and total == 30 * expected


def _tiny_teacher_update(side: int):
    module = Teacher(models.TINY_TEACHER)
    params = module.init(jax.random.key(0), jnp.zeros((1, side, side, 3)),
                         jnp.zeros((3, models.TINY_TEXT_DIM)))["params"]
    trainable, frozen_params = partition_params(params, ("^vae/",))
    prompts = jnp.asarray(np.random.default_rng(1).standard_normal((3, models.TINY_TEXT_DIM)),
                          jnp.float32)
    # SGD with lr 1: the parameter change is minus the gradient.
    optimizer = optax.sgd(1.0)
    update = jax.jit(steps.make_teacher_update(module, optimizer, optax.constant_schedule(1.0),
                                               seed=0))
    state = create_train_state(trainable, {}, optimizer)
    return update, state, {"params": frozen_params, "prompts": prompts}


def test_a_padded_teacher_step_is_the_step_on_the_real_images():
    side = 64
    update, state, frozen = _tiny_teacher_update(side)
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(3, side, side, 3)).astype(np.float32)
    mos = rng.uniform(size=3).astype(np.float32)
    real = {"image": images, "mos_normalized": mos}
    padded = {"image": np.concatenate([images, np.zeros((1, side, side, 3), np.float32)]),
              "mos_normalized": np.concatenate([mos, [0.0]]).astype(np.float32),
              "mask": np.array([True, True, True, False])}
    after_real, metrics_real = update(state, frozen, real)
    after_padded, metrics_padded = update(state, frozen, padded)
    np.testing.assert_allclose(metrics_padded["loss"], metrics_real["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics_padded["grad_norm"], metrics_real["grad_norm"], rtol=1e-5)
    # Each image's backward pass is the same computation in a batch of 3 or 4; the batch mean
    # sums 3 per-image terms in another order, so the difference is a few fp32 roundings of the
    # largest gradient entries: 1e-5 of the gradient's largest entry leaves room for XLA picking
    # another convolution algorithm per batch size.
    for got, expected, before in zip(jax.tree.leaves(after_padded.params),
                                     jax.tree.leaves(after_real.params),
                                     jax.tree.leaves(state.params)):
        grad_scale = float(np.max(np.abs(np.asarray(expected) - np.asarray(before)))) or 1.0
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * grad_scale + 1e-7)
