"""An epoch is ceil(N / B) steps, its last partial batch padded and masked: the padded step
equals the step on the real images alone (the torch DataLoader's smaller last batch)."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import student as student_config
from configs import teacher as teacher_config
from dpiqa_jax.models.efficientnet import TorchBatchNorm
from dpiqa_jax.models.student import Student, StudentConfig
from dpiqa_jax.models.teacher import Teacher
from dpiqa_jax.train import models, run, steps
from dpiqa_jax.train.state import create_train_state, partition_params


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


def test_masked_batchnorm_counts_only_the_real_images():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((3, 4, 4, 5)).astype(np.float32)
    padding = 100.0 * rng.standard_normal((2, 4, 4, 5)).astype(np.float32)
    module = TorchBatchNorm(momentum=0.5)
    variables = module.init(jax.random.key(0), real, True)
    expected, expected_stats = module.apply(variables, real, True, mutable=["batch_stats"])
    got, got_stats = module.apply(variables, np.concatenate([real[:2], padding[:1], real[2:],
                                                             padding[1:]]),
                                  True, jnp.array([True, True, False, True, False]),
                                  mutable=["batch_stats"])
    # One image's values sum into 48 of the 80 terms per channel: a few fp32 roundings apart.
    np.testing.assert_allclose(np.asarray(got)[[0, 1, 3]], expected, rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(got_stats["batch_stats"][name],
                                   expected_stats["batch_stats"][name], rtol=1e-5, atol=1e-6)


def _tiny_student_update(side: int):
    module = Student(StudentConfig(backbone="b0", map_size=8, map_channels=4, hidden=16,
                                   stochastic_depth=False))
    variables = module.init(jax.random.key(0), jnp.zeros((2, side, side, 3)), train=False)
    optimizer = optax.sgd(1.0)
    update = jax.jit(steps.make_student_update(module, optimizer, optax.constant_schedule(1.0),
                                               seed=0, teacher=None))
    return update, create_train_state(variables["params"], variables["batch_stats"], optimizer)


def test_a_padded_student_step_is_the_step_on_the_real_images():
    side = 64
    update, state = _tiny_student_update(side)
    rng = np.random.default_rng(4)
    images = rng.uniform(size=(3, side, side, 3)).astype(np.float32)
    mos = rng.uniform(size=3).astype(np.float32)
    maps = rng.uniform(size=(3, 8, 8, 4)).astype(np.float32)
    real = {"image": images, "mos_normalized": mos, "teacher_map": maps}
    padded = {"image": np.concatenate([images, np.ones((1, side, side, 3), np.float32)]),
              "mos_normalized": np.concatenate([mos, [0.0]]).astype(np.float32),
              "teacher_map": np.concatenate([maps, np.zeros((1, 8, 8, 4), np.float32)]),
              "mask": np.array([True, True, True, False])}
    after_real, metrics_real = update(state, {}, real)
    after_padded, metrics_padded = update(state, {}, padded)
    # The padding image enters neither the loss nor the BatchNorm statistics, so what differs is
    # summation order (3 images' statistics summed with a zero-weighted fourth), which every
    # later layer and the backward pass carry on. Measured with 2 threads and with 1: loss 3e-6
    # and 1.4e-6 relative, parameters 2.3e-5 and 2.0e-5 of the largest update, batch statistics
    # 9e-7 and 1.3e-6 of the largest statistic; counting the padding in the statistics (the old
    # step) moves the parameters by 1.8 times the largest update. The bounds sit ~10-50x above
    # the measured spread and far below that.
    np.testing.assert_allclose(metrics_padded["loss"], metrics_real["loss"], rtol=3e-5)
    np.testing.assert_allclose(metrics_padded["grad_norm"], metrics_real["grad_norm"], rtol=1e-4)
    _assert_trees_close(after_padded.batch_stats, after_real.batch_stats, 1e-5)
    updates = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), after_real.params,
                           state.params)
    _assert_trees_close(after_padded.params, after_real.params, 1e-3, scale=updates)


def _assert_trees_close(got, expected, fraction: float, scale=None) -> None:
    """Every leaf within `fraction` of the largest |value| of `scale` (default `expected`)."""
    largest = max(float(np.max(np.abs(leaf))) for leaf in jax.tree.leaves(
        expected if scale is None else scale))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=0, atol=fraction * largest)
