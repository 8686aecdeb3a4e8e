"""Our Flax SD UNet against diffusers' `UNet2DConditionModel` (tiny, random weights, fp32)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.downsampling import Downsample2D as TorchDownsample2D
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.upsampling import Upsample2D as TorchUpsample2D

from dpiqa_jax.convert.torch_layout import torch_to_flax
from dpiqa_jax.sd import layers
from dpiqa_jax.sd.attention import AttentionKernel
from dpiqa_jax.sd.unet import SD15_UNET_CONFIG, UNet, UNetConfig, tiny_unet_config

BATCH, LATENT, CONTEXT_LEN, CONTEXT_DIM = 2, 32, 150, 32
# SD 1.5's block structure at toy width; channels change between blocks (conv shortcuts).
TINY_UNET = tiny_unet_config((16, 32, 48, 48), CONTEXT_DIM, layers_per_block=2, norm_num_groups=8)
# Hidden state each T2I map joins (NHWC) for a 32x32 latent: the res of each down block.
ADAPTER_SHAPES = ((LATENT, 16), (LATENT // 2, 32), (LATENT // 4, 48), (LATENT // 8, 48))
FP32_TOL = 1e-4  # max abs error, relative to the reference's largest magnitude


def _perturb(module: torch.nn.Module) -> torch.nn.Module:
    """Adds noise to every parameter so that no norm is identity and nothing is zero."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return module.eval()


def _numpy_state_dict(module: torch.nn.Module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).numpy()


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _assert_close(ours, reference: np.ndarray, tol: float = FP32_TOL) -> None:
    ours = np.asarray(ours, np.float32)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=tol * np.abs(reference).max())


def _param_count(variables) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables))


def _torch_run(unet, sample, context, residuals=None):
    """(up-block outputs NHWC, final sample NHWC) of diffusers at t = 1."""
    captured = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: captured.append(out))
             for block in unet.up_blocks]
    kwargs = {}
    if residuals is not None:  # diffusers pops from this list
        kwargs["down_intrablock_additional_residuals"] = [_nchw(r) for r in residuals]
    with torch.no_grad():
        out = unet(_nchw(sample), 1, torch.from_numpy(context), **kwargs).sample
    for hook in hooks:
        hook.remove()
    return [_nhwc(x) for x in captured], _nhwc(out)


@pytest.fixture(scope="module")
def tiny():
    """The torch reference, our module, converted params and fixed inputs."""
    torch.manual_seed(0)
    torch_unet = _perturb(UNet2DConditionModel(**TINY_UNET))
    model = UNet(UNetConfig.from_diffusers(torch_unet.config))
    target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 4)), 1,
                            jnp.zeros((1, 1, CONTEXT_DIM)))
    variables = torch_to_flax(_numpy_state_dict(torch_unet), target)
    rng = np.random.default_rng(0)
    inputs = dict(
        sample=rng.standard_normal((BATCH, LATENT, LATENT, 4), np.float32),
        context=rng.standard_normal((1, CONTEXT_LEN, CONTEXT_DIM), np.float32),
        batch_context=rng.standard_normal((BATCH, CONTEXT_LEN, CONTEXT_DIM), np.float32),
        adapters=[rng.standard_normal((BATCH, s, s, c), np.float32) for s, c in ADAPTER_SHAPES],
    )
    return dict(torch=torch_unet, model=model, variables=variables, target=target, **inputs)


@pytest.fixture(scope="module")
def fp32_runs(tiny):
    """Ours (batch-1 context shared by the batch) and diffusers (context expanded), with all-zero
    adapter maps (bitwise the same as none: x + 0 == x) and with random ones; one compilation."""
    run = jax.jit(lambda v, x, c, a: tiny["model"].apply(v, x, 1, c, a, return_output=True))
    context = np.broadcast_to(tiny["context"], (BATCH, CONTEXT_LEN, CONTEXT_DIM)).copy()
    zeros = [np.zeros_like(a) for a in tiny["adapters"]]
    return dict(
        plain=(run(tiny["variables"], tiny["sample"], tiny["context"], zeros),
               _torch_run(tiny["torch"], tiny["sample"], context)),
        adapter=(run(tiny["variables"], tiny["sample"], tiny["context"], tiny["adapters"]),
                 _torch_run(tiny["torch"], tiny["sample"], context, tiny["adapters"])),
    )


def test_up_features_match_diffusers_with_shared_context(fp32_runs):
    ours, (reference, _) = fp32_runs["plain"]
    assert [f.shape for f in ours.up_features] == [
        (BATCH, 8, 8, 48), (BATCH, 16, 16, 48), (BATCH, 32, 32, 32), (BATCH, 32, 32, 16)]
    for feature, expected in zip(ours.up_features, reference, strict=True):
        _assert_close(feature, expected)


def test_output_head_matches_diffusers(fp32_runs):
    ours, (_, reference_sample) = fp32_runs["plain"]
    _assert_close(ours.out, reference_sample)


def test_t2i_adapter_features_match_diffusers_intrablock_residuals(fp32_runs):
    ours, (reference, reference_sample) = fp32_runs["adapter"]
    _, (plain, _) = fp32_runs["plain"]
    assert np.abs(reference[0] - plain[0]).max() > 0.1  # the adapter maps matter
    for feature, expected in zip(ours.up_features, reference, strict=True):
        _assert_close(feature, expected)
    _assert_close(ours.out, reference_sample)


def test_query_chunked_attention_matches_diffusers(tiny, fp32_runs):
    """Chunks of 100 queries: 1024-token self-attention and the 2048-query folded cross-attention
    split into uneven chunks (the last one padded)."""
    _, (reference, _) = fp32_runs["adapter"]
    chunked = UNet(tiny["model"].config, attention_kernel=AttentionKernel(query_chunk=100))
    ours = jax.jit(lambda v, x, c, a: chunked.apply(v, x, 1, c, a))(
        tiny["variables"], tiny["sample"], tiny["context"], tiny["adapters"])
    for feature, expected in zip(ours.up_features, reference, strict=True):
        _assert_close(feature, expected)


def test_bf16_compute_with_per_sample_context_stays_close_to_fp32(tiny):
    """No adapter, one context and timestep per sample, bf16 weights and compute."""
    reference, _ = _torch_run(tiny["torch"], tiny["sample"], tiny["batch_context"])
    bf16_model = UNet(tiny["model"].config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    bf16_vars = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), tiny["variables"])
    run = jax.jit(lambda v, x, c: bf16_model.apply(v, x, jnp.array([1, 1]), c))
    ours = run(bf16_vars, tiny["sample"], tiny["batch_context"])
    assert ours.out is None  # the output head runs only with return_output=True
    for feature, expected in zip(ours.up_features, reference, strict=True):
        assert feature.dtype == jnp.bfloat16
        rel_err = np.abs(np.asarray(feature, np.float32) - expected).max() / np.abs(expected).max()
        print(f"bf16 up feature {feature.shape}: max abs err / max |ref| = {rel_err:.4f}")
        assert rel_err < 0.05, rel_err  # loose sanity bound: bf16 has an 8-bit mantissa


def _trace(tiny, context, adapters):
    jax.eval_shape(lambda v: tiny["model"].apply(v, tiny["sample"], 1, context, adapters),
                   tiny["variables"])


def test_misfitting_inputs_are_rejected_with_clear_errors(tiny):
    adapters = list(tiny["adapters"])
    with pytest.raises(ValueError, match="expected one per down block"):
        _trace(tiny, tiny["context"], adapters[:3])
    adapters[1] = adapters[1][:, :8]
    with pytest.raises(ValueError, match="down_blocks_1: adapter feature of shape"):
        _trace(tiny, tiny["context"], adapters)
    with pytest.raises(ValueError, match="context must be"):
        _trace(tiny, tiny["context"][..., :16], None)


def test_parameter_count_matches_diffusers(tiny):
    assert _param_count(tiny["target"]) == sum(p.numel() for p in tiny["torch"].parameters())


def test_sd15_parameter_count():
    model = UNet(UNetConfig.from_diffusers(SD15_UNET_CONFIG))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 4)), 1,
                            jnp.zeros((1, 1, 768)))
    assert _param_count(shapes) == 859_520_964


def test_param_paths_mirror_diffusers_keys(tiny):
    params = tiny["target"]["params"]
    block = params["down_blocks_0"]["attentions_1"]["transformer_blocks_0"]
    assert block["ff"]["net_0"]["proj"]["kernel"].shape == (16, 2 * 4 * 16)
    assert block["attn2"]["to_k"]["kernel"].shape == (CONTEXT_DIM, 16)
    assert "bias" in block["attn1"]["to_out_0"] and "bias" not in block["attn1"]["to_q"]
    assert params["time_embedding"]["linear_1"]["kernel"].shape == (16, 64)
    assert params["up_blocks_0"]["upsamplers_0"]["conv"]["kernel"].shape == (3, 3, 48, 48)


@pytest.mark.parametrize("key, value, named", [
    ("down_block_types", ["SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                          "CrossAttnDownBlock2D", "DownBlock2D"], "SimpleCrossAttnDownBlock2D"),
    ("up_block_types", ["UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D",
                        "CrossAttnUpBlock2D"], "AttnUpBlock2D"),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn", "UNetMidBlock2DSimpleCrossAttn"),
    ("class_embed_type", "timestep", "class_embed_type"),
    ("addition_embed_type", "text", "addition_embed_type"),
    ("resnet_time_scale_shift", "scale_shift", "resnet_time_scale_shift"),
    ("dual_cross_attention", True, "dual_cross_attention"),
    ("some_new_option", 1, "some_new_option"),
])
def test_from_diffusers_rejects_unsupported(key, value, named):
    config = dict(SD15_UNET_CONFIG, **{key: value})
    with pytest.raises(ValueError, match=named):
        UNetConfig.from_diffusers(config)


def test_from_diffusers_reads_sd15_config():
    config = UNetConfig.from_diffusers(SD15_UNET_CONFIG)
    assert config.heads_per_block == (8, 8, 8, 8)
    assert config.layers(0) == 2 and config.layers(0, up=True) == 3
    assert config.time_embed_dim == 1280 and config.cross_attention_dim == 768


@pytest.mark.parametrize("flip, shift, dim", [(True, 0, 32), (False, 1, 33)])
def test_timestep_embedding_matches_diffusers(flip, shift, dim):
    steps = np.array([0, 1, 500, 999])
    expected = get_timestep_embedding(torch.from_numpy(steps), dim, flip_sin_to_cos=flip,
                                      downscale_freq_shift=shift).numpy()
    ours = layers.timestep_embedding(jnp.asarray(steps), dim, flip_sin_to_cos=flip,
                                     downscale_freq_shift=shift)
    # t * freq reaches 999 rad, where one fp32 ulp of the angle is 6e-5.
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=0, atol=2e-4)


@pytest.mark.parametrize("padding, size", [(1, 9), (0, 8)])
def test_downsample_padding_matches_diffusers(padding, size):
    torch.manual_seed(0)
    reference = _perturb(TorchDownsample2D(4, use_conv=True, out_channels=6, padding=padding,
                                           name="op"))
    x = np.random.default_rng(0).standard_normal((1, size, size, 4), np.float32)
    module = layers.Downsample2D(6, padding)
    variables = torch_to_flax(_numpy_state_dict(reference),
                              jax.eval_shape(module.init, jax.random.key(0), x))
    with torch.no_grad():
        expected = _nhwc(reference(_nchw(x)))
    _assert_close(module.apply(variables, x), expected)


@pytest.mark.parametrize("output_size", [None, (7, 5)])
def test_upsample_matches_diffusers(output_size):
    torch.manual_seed(0)
    reference = _perturb(TorchUpsample2D(4, use_conv=True, out_channels=6))
    x = np.random.default_rng(0).standard_normal((1, 4, 3, 4), np.float32)
    module = layers.Upsample2D(6)
    variables = torch_to_flax(_numpy_state_dict(reference),
                              jax.eval_shape(module.init, jax.random.key(0), x))
    with torch.no_grad():
        expected = _nhwc(reference(_nchw(x), output_size))
    _assert_close(module.apply(variables, x, output_size), expected)
