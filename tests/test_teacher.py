"""End-to-end parity of the tiny teacher with a PyTorch DP-IQA teacher built from diffusers parts.

The torch teacher (`dpiqa_jax.reference.torch_models.TorchTeacher`) follows the authors'
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
from dpiqa_jax.models.adapters import ImageAdapterConfig
from dpiqa_jax.models.qfd import QFDConfig
from dpiqa_jax.models.teacher import Teacher, TeacherConfig
from dpiqa_jax.reference import torch_models
from dpiqa_jax.reference.torch_models import TorchTeacher
from dpiqa_jax.sd.unet import UNetConfig
from dpiqa_jax.sd.vae import VAEConfig
from test_adapters_qfd import nchw_to_nhwc, param_count, to_numpy_state_dict

TEXT_DIM = 16
PROMPTS = 5
IMAGE_SIZE = 64  # -> 8x8 latent, like 512 -> 64 in the real model
TINY_UNET = {
    "in_channels": 4, "out_channels": 4, "block_out_channels": [16, 32, 32, 32],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
    "layers_per_block": 1, "attention_head_dim": 4, "cross_attention_dim": TEXT_DIM,
    "norm_num_groups": 8,
}
TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "block_out_channels": [8, 16, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1, "norm_num_groups": 4, "scaling_factor": 0.18215,
}
TINY_CHANNELS = tuple(TINY_UNET["block_out_channels"])
TINY_CONFIG = TeacherConfig(
    unet=UNetConfig.from_diffusers(TINY_UNET),
    vae=VAEConfig.from_diffusers(TINY_VAE),
    image_adapter=ImageAdapterConfig(channels=TINY_CHANNELS),
    qfd=QFDConfig(level_channels=TINY_CHANNELS, hidden=32, se_reduction=16,
                  score_channels=(16, 8, 4), map_size=IMAGE_SIZE // 8, head_hidden=24),
    text_dim=TEXT_DIM,
)

# fp32 through ~40 layers incl. attention and GroupNorm: summation order differs from torch.
ATOL = 1e-4
RTOL = 1e-3


def build_torch_teacher(seed: int = 0) -> TorchTeacher:
    """The tiny torch teacher with every weight perturbed (no tensor trivial)."""
    return torch_models.build_torch_teacher(TINY_UNET, TINY_VAE, TINY_CONFIG, seed=seed)


def official_state_dict(teacher: TorchTeacher) -> dict[str, np.ndarray]:
    """The state dict under the authors' `DPIQA` attribute names."""
    state = {"gamma": teacher.gamma.numpy().copy()}
    for prefix, module in [("vae.", teacher.vae), ("unet.", teacher.unet),
                           ("text_adapter.", teacher.text_adapter),
                           ("img_adapter.", teacher.img_adapter), ("QFD.", teacher.qfd)]:
        state.update({prefix + k: v for k, v in to_numpy_state_dict(module).items()})
    return state


def tiny_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE), torch.randn(PROMPTS, TEXT_DIM)


def teacher_target(model: Teacher, batch: int = 2, image_size: int = IMAGE_SIZE):
    cfg = model.config
    images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    prompts = jax.ShapeDtypeStruct((PROMPTS, cfg.text_dim), jnp.float32)
    return jax.eval_shape(model.init, {"params": jax.random.key(0), "latent": jax.random.key(1)},
                          images, prompts)


@pytest.fixture(scope="module")
def torch_teacher() -> TorchTeacher:
    return build_torch_teacher()


@pytest.fixture(scope="module")
def converted(torch_teacher):
    model = Teacher(TINY_CONFIG)
    return teacher_official_to_flax(official_state_dict(torch_teacher), teacher_target(model))


@pytest.fixture(scope="module")
def jax_outputs(converted):
    """(__call__ outputs, split-method outputs) on `tiny_inputs(1)`, compiled once."""
    variables, _ = converted
    model = Teacher(TINY_CONFIG)

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
    ranged = latents(dataclasses.replace(TINY_CONFIG, input_range="-1_1"))
    np.testing.assert_allclose(np.asarray(ranged), expected.permute(0, 2, 3, 1).numpy(),
                               atol=1e-5, rtol=1e-4)

    sampling = dataclasses.replace(TINY_CONFIG, latent="sample")
    first = latents(sampling, latent=jax.random.key(0))
    again = latents(sampling, latent=jax.random.key(0))
    other = latents(sampling, latent=jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.allclose(np.asarray(first), np.asarray(other))
    mean = latents(TINY_CONFIG)
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
        dataclasses.replace(TINY_CONFIG, qfd=QFDConfig())
    with pytest.raises(ValueError, match="text_dim"):
        dataclasses.replace(TINY_CONFIG, text_dim=768)
