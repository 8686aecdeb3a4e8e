"""The pieces of a training step and its bookkeeping, on toy models: the non-finite check,
rematerialisation, the checkpoint retention and resume of the data position, the metrics file and
the teacher-map cache, a student without a teacher. (Real models train in
test_train_multidevice.py / test_train_resume.py.)"""

import json
import math
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import student as student_configs
from dpiqa_jax.train import checkpoint, run, steps, tasks
from dpiqa_jax.train import logging as train_logging
from dpiqa_jax.train.state import create_train_state
from dpiqa_jax.train.teacher_maps import TeacherMapCache, image_digest, write_cache

SCHEDULE = optax.constant_schedule(0.1)
OPTIMIZER = optax.adam(SCHEDULE)


def _state():
    return create_train_state({"w": jnp.array([1.0, 2.0])}, {}, OPTIMIZER)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_nonfinite_gradient_is_flagged_and_skipped(bad):
    state = _state()
    grads = {"w": jnp.array([0.5, bad])}
    new, metrics = steps.apply_gradients(state, grads, {}, jnp.float32(1.0), OPTIMIZER, SCHEDULE,
                                         skip_nonfinite=True)
    assert not bool(metrics["finite"])
    np.testing.assert_array_equal(np.asarray(new.params["w"]), [1.0, 2.0])
    assert int(new.step) == 1  # the data and the random numbers still move on


def test_nonfinite_loss_is_flagged_and_applied_without_skipping():
    new, metrics = steps.apply_gradients(_state(), {"w": jnp.array([0.5, 0.5])}, {},
                                         jnp.float32(jnp.nan), OPTIMIZER, SCHEDULE,
                                         skip_nonfinite=False)
    assert not bool(metrics["finite"])
    np.testing.assert_allclose(np.asarray(new.params["w"]), [0.9, 1.9], atol=1e-6)


def test_finite_step_updates_and_reports():
    new, metrics = steps.apply_gradients(_state(), {"w": jnp.array([3.0, 4.0])}, {},
                                         jnp.float32(2.0), OPTIMIZER, SCHEDULE, False)
    assert bool(metrics["finite"]) and int(new.step) == 1
    np.testing.assert_allclose(float(metrics["grad_norm"]), 5.0, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["learning_rate"]), 0.1, rtol=1e-6)


def test_nonfinite_step_stops_training_naming_the_step():
    metrics = {"finite": jnp.bool_(False), "loss": jnp.float32(jnp.nan)}
    with pytest.raises(run.NonFiniteError, match="step 17: the loss or a gradient is not finite"):
        run._check_step_finite(17, metrics, skip=False)  # pylint: disable=protected-access
    run._check_step_finite(17, metrics, skip=True)  # pylint: disable=protected-access


@pytest.mark.parametrize("policy", ["full", "dots_with_no_batch_dims_saveable"])
def test_remat_keeps_the_gradient(policy):
    def loss(w):
        return jnp.sum(jnp.tanh(jnp.tanh(w @ w.T)) ** 2)

    w = jax.random.normal(jax.random.key(0), (4, 3))
    expected = jax.grad(loss)(w)
    got = jax.grad(steps.with_remat(loss, policy))(w)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="remat policy 'some'"):
        steps.with_remat(loss, "some")


def test_mse_is_torch_mse_loss():
    prediction, target = jnp.array([[1.0, 2.0], [3.0, 5.0]]), jnp.array([[1.0, 0.0], [3.0, 2.0]])
    np.testing.assert_allclose(float(steps.mse(prediction, target)), (4 + 9) / 4, rtol=1e-7)


def test_metric_writer_writes_one_json_line_per_step(tmp_path):
    writer = train_logging.MetricWriter(str(tmp_path), total_steps=10, progress_bar=False)
    writer.write(3, {"loss": np.float32(0.5), "val_srcc": float("nan")})
    writer.close()
    lines = (tmp_path / train_logging.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 3, "loss": 0.5, "val_srcc": None}]
    assert os.listdir(tmp_path / train_logging.TENSORBOARD_DIR)
    silent = tmp_path / "other"
    train_logging.MetricWriter(str(silent), total_steps=1, enabled=False).write(1, {"a": 1})
    assert not silent.exists()


def _iterator():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def test_checkpoints_keep_the_latest_and_the_best_and_resume_the_data(tmp_path):
    checkpointer = checkpoint.Checkpointer(str(tmp_path), keep=1)
    iterator, state = _iterator(), _state()
    srcc = {1: 0.9, 2: None, 3: float("nan"), 4: None}
    for step, value in srcc.items():
        next(iterator)
        state = state.replace(step=jnp.int32(step))
        metrics = None if value is None else {checkpoint.BEST_METRIC: value}
        checkpointer.save(step, state, iterator, {"step": step}, metrics)
    checkpointer.wait()
    assert sorted(os.listdir(checkpointer.directory)) == ["1", "4"]
    assert checkpointer.latest_step() == 4 and checkpointer.best_step() == 1

    resumed_iterator = _iterator()
    abstract = jax.eval_shape(lambda: state)
    restored = checkpointer.restore(1, abstract, resumed_iterator)
    assert int(restored.step) == 1
    assert int(next(resumed_iterator)) == 1  # one element was consumed before step 1's save
    checkpointer.close()


def test_nan_validation_ranks_below_every_srcc():
    # pylint: disable=protected-access
    assert checkpoint._selection_value({checkpoint.BEST_METRIC: float("nan")}) == -math.inf
    assert checkpoint._selection_value({checkpoint.BEST_METRIC: -0.5}) == -0.5


def test_teacher_map_cache_finds_maps_by_image_content(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(3, 8, 8, 3)).astype(np.float32)
    maps = rng.uniform(size=(3, 4, 4, 2)).astype(np.float32)
    path = str(tmp_path / "maps.safetensors")
    write_cache(path, maps, np.stack([np.frombuffer(image_digest(i), np.uint8) for i in images]),
                {"teacher": "test"})
    cache = TeacherMapCache(path)
    assert len(cache) == 3 and cache.map_shape == (4, 4, 2)
    np.testing.assert_array_equal(cache.lookup(images[[2, 0]]), maps[[2, 0]])
    flipped = np.ascontiguousarray(images[:1, :, ::-1])
    with pytest.raises(KeyError, match="1 of 1 training images are not in the teacher-map cache"):
        cache.lookup(flipped)


def test_a_student_with_map_weight_zero_needs_no_teacher_and_has_no_map_term():
    config = student_configs.get_config("tiny")
    config.student.init = "scratch"
    config.loss.map_weight = 0.0
    config.teacher_checkpoint = "/nonexistent/teacher"  # never opened
    task = tasks.student_task(config)
    assert task.frozen == {} and "no teacher" in task.source
    update = jax.jit(task.make_update(OPTIMIZER, SCHEDULE))
    state = create_train_state(task.trainable, task.batch_stats, OPTIMIZER)
    rng = np.random.default_rng(0)
    side = config.data.image_size
    batch = task.prepare_batch({"image": rng.uniform(size=(2, side, side, 3)).astype(np.float32),
                                "mos_normalized": np.array([0.3, 0.8], np.float32)})
    assert "teacher_map" not in batch
    _, metrics = update(state, {}, batch)
    assert "map_loss" not in metrics
    assert float(metrics["loss"]) == float(metrics["score_loss"]) > 0.0
