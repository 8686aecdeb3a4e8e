"""End-to-end parity of the tiny teacher with a PyTorch DP-IQA teacher built from diffusers parts.

The torch teacher (`dpiqa_jax.dev.torch_models.TorchTeacher`) follows the authors'
`DPIQA.forward` (posterior mean instead of their sample): VAE latent x scaling, text adapter
context, FullAdapter features injected as T2I residuals (`down_intrablock_additional_residuals`),
up-block outputs captured by forward hooks, QFD on them.
Its weights reach our model through the checkpoint converter, under the authors' key prefixes.
`test_convert_dpiqa.py` reuses `build_torch_teacher` and `official_state_dict`.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dpiqa_jax.convert.dpiqa import teacher_official_to_flax
from dpiqa_jax.dev.torch_models import TorchTeacher
from dpiqa_jax.models.qfd import QFDConfig
from dpiqa_jax.models.teacher import Teacher, TeacherConfig

from helpers import (
    PARITY_PROMPTS,
    PARITY_TEACHER,
    PARITY_TEXT_DIM,
    build_torch_teacher,
    nchw_to_nhwc,
    official_state_dict,
    param_count,
    teacher_target,
)

IMAGE_SIZE = 64  # -> 8x8 latent, like 512 -> 64 in the real model

# fp32 through ~40 layers incl. attention and GroupNorm: summation order differs from torch.
ATOL = 1e-4
RTOL = 1e-3


def tiny_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE), torch.randn(PARITY_PROMPTS, PARITY_TEXT_DIM)


@pytest.fixture(scope="module")
def torch_teacher() -> TorchTeacher:
    return build_torch_teacher()


@pytest.fixture(scope="module")
def converted(torch_teacher):
    model = Teacher(PARITY_TEACHER)
    return teacher_official_to_flax(official_state_dict(torch_teacher), teacher_target(model))


@pytest.fixture(scope="module")
def jax_outputs(converted):
    """(__call__ outputs, split-method outputs) on `tiny_inputs(1)`, compiled once."""
    variables, _ = converted
    model = Teacher(PARITY_TEACHER)

    def whole_and_split(variables, images, prompts):
        params = variables["params"]
        # Training runs the frozen VAE apart, each call seeing only the params it needs.
        latents = model.apply({"params": {"vae": params["vae"]}}, images,
                              method=Teacher.encode_latents)
        trainable = {k: v for k, v in params.items() if k != "vae"}
        split = model.apply({"params": trainable}, latents, images, prompts,
                            method=Teacher.score_latents)
        return model.apply(variables, images, prompts), split

    images, prompts = tiny_inputs(seed=1)
    return jax.jit(whole_and_split)(variables, nchw_to_nhwc(images), jnp.asarray(prompts.numpy()))


def test_tiny_teacher_matches_torch(torch_teacher, converted, jax_outputs):
    _, extras = converted
    assert any(k.startswith("vae.decoder.") for k in extras)
    expected_score, expected_map = torch_teacher(*tiny_inputs(seed=1))
    (score, quality_map), _ = jax_outputs
    assert score.shape == (2,) and quality_map.shape == (2, 8, 8, 4)
    np.testing.assert_allclose(np.asarray(quality_map),
                               expected_map.permute(0, 2, 3, 1).numpy(), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(score), expected_score[:, 0].numpy(), atol=ATOL,
                               rtol=RTOL)
    assert float(np.abs(expected_map.numpy()).max()) > 1e-2  # a non-degenerate comparison


def test_split_methods_compose_to_call(jax_outputs):
    """encode_latents then score_latents (the frozen-VAE training path) equals __call__."""
    whole, split = jax_outputs
    for a, b in zip(split, whole):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)


def test_input_range_and_latent_sampling(converted, torch_teacher):
    variables, _ = converted
    images, _ = tiny_inputs(seed=3)
    nhwc = nchw_to_nhwc(images)

    def latents(config: TeacherConfig, **rngs):
        encode = functools.partial(Teacher(config).apply, method=Teacher.encode_latents)
        return jax.jit(encode)({"params": {"vae": variables["params"]["vae"]}}, nhwc, rngs=rngs)

    with torch.no_grad():
        expected = torch_teacher.vae.encode(images * 2 - 1).latent_dist.mean * 0.18215
    ranged = latents(dataclasses.replace(PARITY_TEACHER, input_range="-1_1"))
    np.testing.assert_allclose(np.asarray(ranged), expected.permute(0, 2, 3, 1).numpy(),
                               atol=1e-5, rtol=1e-4)

    sampling = dataclasses.replace(PARITY_TEACHER, latent="sample")
    first = latents(sampling, latent=jax.random.key(0))
    again = latents(sampling, latent=jax.random.key(0))
    other = latents(sampling, latent=jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.allclose(np.asarray(first), np.asarray(other))
    mean = latents(PARITY_TEACHER)
    assert not np.allclose(np.asarray(first), np.asarray(mean))


def test_full_size_teacher_param_tree():
    variables = teacher_target(Teacher(), batch=1, image_size=512)
    params = variables["params"]
    assert set(params) == {"vae", "unet", "img_adapter", "text_adapter", "gamma", "QFD"}
    assert params["gamma"].shape == (768,)
    assert param_count(params["unet"]) == 859_520_964
    assert param_count(params["img_adapter"]) == 77_369_280
    assert param_count(params["QFD"]) == 42_934_697
    assert param_count(params["text_adapter"]) == 2 * (768 * 768 + 768)


def test_config_rejects_inconsistent_parts():
    with pytest.raises(ValueError, match="latent"):
        TeacherConfig(latent="mode")
    with pytest.raises(ValueError, match="input_range"):
        TeacherConfig(input_range="0_255")
    with pytest.raises(ValueError, match="QFD level_channels"):
        dataclasses.replace(PARITY_TEACHER, qfd=QFDConfig())
    with pytest.raises(ValueError, match="text_dim"):
        dataclasses.replace(PARITY_TEACHER, text_dim=768)
