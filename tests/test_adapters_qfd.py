"""Parity of the text adapter, image adapter and Quality Feature Decoder with PyTorch references.

The torch QFD and text adapter (`dpiqa_jax.dev.torch_models`) follow the authors'
`iqa_models/dpiqa.py` with configurable widths.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.adapter import FullAdapter

from dpiqa_jax.convert.dpiqa import nchw_flatten_transform
from dpiqa_jax.convert.torch_layout import torch_to_flax
from dpiqa_jax.dev.torch_models import TorchQFD, TorchTextAdapter
from dpiqa_jax.models.adapters import (
    ImageAdapter,
    ImageAdapterConfig,
    TextAdapter,
    avg_pool_2x2_ceil_torch,
    pixel_unshuffle_torch_order,
)
from dpiqa_jax.models.qfd import QFDConfig, QualityFeatureDecoder

from helpers import nchw_to_nhwc, param_count, to_numpy_state_dict

# fp32, tiny widths: differences are summation order in convs/matmuls only.
ATOL = 1e-5
RTOL = 1e-4

TINY_QFD = QFDConfig(level_channels=(4, 6, 8, 8), hidden=32, se_reduction=16,
                     score_channels=(16, 8, 4), map_size=16, head_hidden=24)


def qfd_unused_key(key: str) -> bool:
    return key.startswith(("bnc1.", "classifier_dist."))


def torch_up_features(cfg: QFDConfig, batch: int, seed: int) -> list[torch.Tensor]:
    """Up-block features in UNet order (block 0 first) at the sizes SD 1.5 has relative to 64."""
    torch.manual_seed(seed)
    side = cfg.map_size
    sizes = (side // 4, side // 2, side, side)
    channels = cfg.level_channels[::-1]
    return [torch.randn(batch, c, s, s) for c, s in zip(channels, sizes)]


def convert_qfd(module: TorchQFD, cfg: QFDConfig, target) -> dict:
    state = {k: v for k, v in to_numpy_state_dict(module).items() if not qfd_unused_key(k)}
    transform = nchw_flatten_transform(cfg.score_channels[-1], cfg.map_size, cfg.map_size)
    return torch_to_flax(state, target, transforms={"fc1.weight": transform})


# --------------------------------------------------------------------------- text adapter


def test_text_adapter_matches_torch_and_returns_batch1_context():
    torch.manual_seed(0)
    dim, prompts = 16, 7
    reference = TorchTextAdapter(dim).eval()
    embeddings = torch.randn(prompts, dim)
    gamma = torch.randn(dim)  # large, so the MLP branch dominates the comparison
    expected = reference(embeddings, gamma).detach().numpy()

    model = TextAdapter()
    target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((prompts, dim)),
                            jnp.zeros(dim))
    variables = torch_to_flax(to_numpy_state_dict(reference), target)
    got = model.apply(variables, jnp.asarray(embeddings.numpy()), jnp.asarray(gamma.numpy()))
    assert got.shape == (1, prompts, dim)
    np.testing.assert_allclose(np.asarray(got[0]), expected, atol=ATOL, rtol=RTOL)


def test_text_adapter_uses_exact_gelu():
    model = TextAdapter()
    embeddings = jnp.linspace(-3, 3, 8)[:, None] * jnp.ones((1, 4))
    identity = {"kernel": jnp.eye(4), "bias": jnp.zeros(4)}
    variables = {"params": {"fc_0": identity, "fc_2": identity}}
    got = model.apply(variables, embeddings, jnp.ones(4))[0] - embeddings
    exact_gelu = jax.nn.gelu(embeddings, approximate=False)
    np.testing.assert_allclose(np.asarray(got), np.asarray(exact_gelu), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- image adapter


def test_pixel_unshuffle_matches_torch_channel_order():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 16, 24)
    expected = torch.nn.PixelUnshuffle(4)(x).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(np.asarray(pixel_unshuffle_torch_order(nchw_to_nhwc(x), 4)),
                                  expected)


@pytest.mark.parametrize("size", [(8, 8), (9, 9), (5, 8), (1, 3)])
def test_avg_pool_ceil_mode_matches_torch(size):
    torch.manual_seed(2)
    x = torch.randn(2, 3, *size)
    expected = torch.nn.AvgPool2d(2, stride=2, ceil_mode=True)(x).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(avg_pool_2x2_ceil_torch(nchw_to_nhwc(x))), expected,
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("image_size", [64, 72])  # 72: odd sizes after unshuffle exercise ceil mode
def test_image_adapter_matches_diffusers_full_adapter(image_size):
    torch.manual_seed(3)
    channels = (8, 16, 32, 32)
    reference = FullAdapter(in_channels=3, channels=list(channels), num_res_blocks=2,
                            downscale_factor=8).eval()
    images = torch.rand(2, 3, image_size, image_size)
    with torch.no_grad():
        expected = [f.permute(0, 2, 3, 1).numpy() for f in reference(images)]

    model = ImageAdapter(ImageAdapterConfig(channels=channels))
    target = jax.eval_shape(model.init, jax.random.key(0), nchw_to_nhwc(images))
    variables = torch_to_flax(to_numpy_state_dict(reference), target)
    got = model.apply(variables, nchw_to_nhwc(images))
    assert [g.shape for g in got] == [e.shape for e in expected]
    for level, (g, e) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(np.asarray(g), e, atol=ATOL, rtol=RTOL, err_msg=f"level {level}")


def test_image_adapter_full_size_shapes_and_param_count():
    model = ImageAdapter()
    images = jax.ShapeDtypeStruct((1, 512, 512, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    assert param_count(variables) == 77_369_280
    outputs = jax.eval_shape(model.apply, variables, images)
    assert [o.shape for o in outputs] == [(1, 64, 64, 320), (1, 32, 32, 640), (1, 16, 16, 1280),
                                          (1, 8, 8, 1280)]


def test_image_adapter_rejects_indivisible_size():
    model = ImageAdapter(ImageAdapterConfig(channels=(8, 8, 8, 8)))
    with pytest.raises(ValueError, match="not divisible"):
        model.init(jax.random.key(0), jnp.zeros((1, 60, 64, 3)))


# --------------------------------------------------------------------------- QFD


def test_qfd_matches_torch_incl_nchw_flatten():
    torch.manual_seed(4)
    reference = TorchQFD(TINY_QFD).eval()
    features = torch_up_features(TINY_QFD, batch=2, seed=5)
    with torch.no_grad():
        # The authors call QFD(x4, x3, x2, x1) with x1 the first up block's output.
        score, score_map = reference(*features[::-1])

    model = QualityFeatureDecoder(TINY_QFD)
    inputs = [nchw_to_nhwc(f) for f in features]
    target = jax.eval_shape(model.init, jax.random.key(0), inputs)
    got_score, got_map = model.apply(convert_qfd(reference, TINY_QFD, target), inputs)
    assert got_score.shape == (2,)
    assert got_map.shape == (2, 16, 16, 4)
    np.testing.assert_allclose(np.asarray(got_map), score_map.permute(0, 2, 3, 1).numpy(),
                               atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(np.asarray(got_score), score[:, 0].numpy(), atol=ATOL, rtol=RTOL)
    assert float(jnp.min(got_map)) >= 0.0


def test_qfd_full_size_param_count_and_names():
    model = QualityFeatureDecoder()
    features = [jax.ShapeDtypeStruct(s, jnp.float32) for s in
                [(1, 16, 16, 1280), (1, 32, 32, 1280), (1, 64, 64, 640), (1, 64, 64, 320)]]
    variables = jax.eval_shape(model.init, jax.random.key(0), features)
    assert param_count(variables) == 42_934_697
    assert variables["params"]["fc1"]["kernel"].shape == (8 * 64 * 64, 512)
    assert variables["params"]["se1"]["fc_0"]["kernel"].shape == (512, 32)
    score, quality_map = jax.eval_shape(model.apply, variables, features)
    assert score.shape == (1,) and quality_map.shape == (1, 64, 64, 8)


def test_qfd_rejects_wrong_level_channels():
    model = QualityFeatureDecoder(TINY_QFD)
    features = [jnp.zeros(f.permute(0, 2, 3, 1).shape) for f in torch_up_features(TINY_QFD, 1, 0)]
    features[0] = jnp.zeros(features[0].shape[:-1] + (5,))
    with pytest.raises(ValueError, match="conv4 expects 8 channels"):
        model.init(jax.random.key(0), features)


def test_qfd_computes_in_bfloat16_with_fp32_params():
    model = QualityFeatureDecoder(TINY_QFD, dtype=jnp.bfloat16)
    features = [jax.ShapeDtypeStruct(f.permute(0, 2, 3, 1).shape, jnp.float32)
                for f in torch_up_features(TINY_QFD, 1, 6)]
    variables = jax.eval_shape(model.init, jax.random.key(0), features)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(variables))
    score, quality_map = jax.eval_shape(model.apply, variables, features)
    assert score.dtype == jnp.bfloat16 and quality_map.dtype == jnp.bfloat16
