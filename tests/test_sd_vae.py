"""Our Flax VAE encoder against diffusers' `AutoencoderKL.encode` (tiny, random weights, fp32)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from dpiqa_jax.convert.torch_layout import StateDictMismatchError, torch_to_flax
from dpiqa_jax.sd.vae import SD15_VAE_CONFIG, VAEConfig, VAEEncoder, tiny_vae_config

DECODER_KEYS = (r"^decoder\.", r"^post_quant_conv\.")
# SD's encoder structure (3 downsamplers, mid attention) at toy width.
TINY_VAE = tiny_vae_config((8, 16, 32, 32), layers_per_block=2)
FP32_TOL = 1e-4  # max abs error, relative to the reference's largest magnitude


def _tiny_vae(**overrides) -> AutoencoderKL:
    """A tiny AutoencoderKL with every parameter perturbed (no identity norms, no zeros)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(**dict(TINY_VAE, **overrides))
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae.eval()


def _convert(vae: AutoencoderKL, model: VAEEncoder):
    target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    state = {k: v.detach().numpy().copy() for k, v in vae.state_dict().items()}
    return target, torch_to_flax(state, target, ignore=DECODER_KEYS)


def _param_count(variables) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables))


def _assert_close(ours, reference: np.ndarray) -> None:
    ours = np.asarray(ours)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=FP32_TOL * np.abs(reference).max())


@pytest.fixture(scope="module")
def tiny():
    vae = _tiny_vae()
    model = VAEEncoder(VAEConfig.from_diffusers(vae.config))
    target, variables = _convert(vae, model)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        posterior = vae.encode(torch.from_numpy(images).permute(0, 3, 1, 2)).latent_dist
    reference = {name: getattr(posterior, name).permute(0, 2, 3, 1).numpy()
                 for name in ("mean", "logvar")}
    return dict(torch=vae, model=model, target=target, variables=variables, images=images,
                reference=reference)


def test_posterior_matches_diffusers(tiny):
    mean, logvar = jax.jit(tiny["model"].apply)(tiny["variables"], tiny["images"])
    assert mean.shape == (2, 4, 4, 4)
    _assert_close(mean, tiny["reference"]["mean"])
    _assert_close(logvar, tiny["reference"]["logvar"])


def test_parameter_count_matches_diffusers_encoder(tiny):
    torch_count = sum(p.numel() for name, p in tiny["torch"].named_parameters()
                      if name.startswith(("encoder.", "quant_conv.")))
    assert _param_count(tiny["target"]) == torch_count


def test_sd15_encoder_parameter_count():
    model = VAEEncoder(VAEConfig.from_diffusers(SD15_VAE_CONFIG))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    assert _param_count(shapes) == 34_163_664  # encoder + quant_conv of the 83,653,863


def test_without_mid_attention_or_quant_conv_the_tree_still_mirrors_diffusers():
    vae = _tiny_vae(mid_block_add_attention=False, use_quant_conv=False)
    model = VAEEncoder(VAEConfig.from_diffusers(vae.config))
    target, _ = _convert(vae, model)  # strict: raises on any missing/extra tensor
    assert "attentions_0" not in target["params"]["encoder"]["mid_block"]
    assert "quant_conv" not in target["params"]


def test_a_checkpoint_with_mid_attention_does_not_fit_a_model_without():
    vae = _tiny_vae()
    config = dict(vae.config, mid_block_add_attention=False)
    with pytest.raises(StateDictMismatchError, match="mid_block.attentions.0.to_q.weight"):
        _convert(vae, VAEEncoder(VAEConfig.from_diffusers(config)))


@pytest.mark.parametrize("key, value, named", [
    ("down_block_types", ["AttnDownEncoderBlock2D"] * 4, "AttnDownEncoderBlock2D"),
    ("act_fn", "gelu", "act_fn"),
    ("shift_factor", 0.1159, "shift_factor"),
    ("some_new_option", 1, "some_new_option"),
])
def test_from_diffusers_rejects_unsupported(key, value, named):
    with pytest.raises(ValueError, match=named):
        VAEConfig.from_diffusers(dict(SD15_VAE_CONFIG, **{key: value}))


def test_bf16_compute_stays_close(tiny):
    model = VAEEncoder(tiny["model"].config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), tiny["variables"])
    mean, _ = jax.jit(model.apply)(variables, tiny["images"])
    expected = tiny["reference"]["mean"]
    rel_err = np.abs(np.asarray(mean) - expected).max() / np.abs(expected).max()
    print(f"bf16 VAE mean: max abs err / max |ref| = {rel_err:.4f}")
    assert mean.dtype == jnp.float32 and rel_err < 0.05, rel_err  # loose: 8-bit mantissa
