"""The posterior sample (`latent="sample"`): fresh noise per image and step, reproducible, and
independent of an image's batch neighbours."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpiqa_jax.models.teacher import Teacher
from dpiqa_jax.train import models, steps

SIDE = 64


@pytest.fixture(scope="module")
def teacher():
    module = Teacher(dataclasses.replace(models.TINY_TEACHER, latent="sample"))
    images = jnp.zeros((1, SIDE, SIDE, 3))
    prompts = jnp.zeros((4, models.TINY_TEXT_DIM))
    params = module.init({"params": jax.random.key(0), "latent": jax.random.key(1)}, images,
                         prompts)["params"]
    return module, params, jnp.asarray(np.random.default_rng(0).standard_normal(
        (4, models.TINY_TEXT_DIM)), jnp.float32)


def _images(seed: int, count: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(size=(count, SIDE, SIDE, 3)),
                       jnp.float32)


def _latents(teacher, images, step):
    module, params, _ = teacher
    return np.asarray(steps.encode_teacher_latents(module, params, images,
                                                   steps.step_key(0, jnp.int32(step))))


def test_new_noise_at_every_step_same_noise_for_the_same_step(teacher):
    images = _images(1, 3)
    at_1, again_1, at_2 = (_latents(teacher, images, s) for s in (1, 1, 2))
    np.testing.assert_array_equal(at_1, again_1)
    for i in range(3):
        assert np.max(np.abs(at_1[i] - at_2[i])) > 1e-3, f"image {i}: the same noise at steps 1, 2"


def test_every_image_draws_its_own_noise(teacher):
    module, params, _ = teacher
    same = jnp.repeat(_images(2, 1), 2, axis=0)
    shifted = same.at[1, 0, 0, 0].add(1e-3)  # one pixel differs: another image, other noise
    mean = np.asarray(steps.encode_teacher_latents(
        dataclasses.replace(module, config=dataclasses.replace(module.config, latent="mean")),
        params, shifted, jax.random.key(0)))
    sampled = _latents(teacher, shifted, 1)
    noise = sampled - mean
    assert np.max(np.abs(noise[0] - noise[1])) > 1e-2


def test_an_image_keeps_its_noise_whatever_its_batch_neighbours(teacher):
    a, b, c = (_images(seed, 1) for seed in (3, 4, 5))
    first = _latents(teacher, jnp.concatenate([a, b]), 7)
    second = _latents(teacher, jnp.concatenate([c, b, a]), 7)
    np.testing.assert_allclose(first[0], second[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first[1], second[1], rtol=1e-5, atol=1e-6)


def test_test_time_scores_do_not_depend_on_the_batch(teacher):
    module, params, prompts = teacher
    predict = jax.jit(steps.make_teacher_predict(module, seed=0))
    frozen = {"params": {}, "prompts": prompts}
    a, b, c = (_images(seed, 1) for seed in (6, 7, 8))
    alone = predict(params, frozen, a)
    with_b = predict(params, frozen, jnp.concatenate([b, a]))
    with_c = predict(params, frozen, jnp.concatenate([a, c, b]))
    np.testing.assert_allclose(alone[0], with_b[1], rtol=1e-5)
    np.testing.assert_allclose(alone[0], with_c[0], rtol=1e-5)
    np.testing.assert_allclose(with_b[0], with_c[2], rtol=1e-5)


def test_fingerprints_are_exact_and_order_free():
    images = _images(9, 3)
    prints = np.asarray(steps.image_fingerprints(images))
    assert len(set(prints.tolist())) == 3
    np.testing.assert_array_equal(np.asarray(steps.image_fingerprints(images[::-1])),
                                  prints[::-1])
