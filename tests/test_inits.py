"""The new modules start from torch's default initialisation (kaiming_uniform(a=sqrt(5)) weights,
uniform(+-1/sqrt(fan_in)) biases), checked against torch's own layers of the same shapes."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from dpiqa_jax import inits
from dpiqa_jax.convs import Conv2d, PointwiseConv
from dpiqa_jax.models.adapters import ImageAdapter, ImageAdapterConfig, TextAdapter
from dpiqa_jax.models.qfd import QFDConfig, QualityFeatureDecoder
from dpiqa_jax.models.student import TorchConvTranspose2d


def _torch_fan_in(weight: torch.Tensor) -> int:
    """What torch's own Linear / Conv initialisation uses as fan_in for `weight`."""
    calculate = torch.nn.init._calculate_fan_in_and_fan_out  # pylint: disable=protected-access
    return calculate(weight)[0]


def _assert_uniform_within(values: np.ndarray, bound: float, what: str) -> None:
    """max |x| <= bound, and for enough samples the extremes reach near the bound and the mean
    and variance are those of uniform(-bound, bound).

    With n samples of U(-b, b): P(max |x| < b (1 - 8/n)) = (1 - 8/n)^n ~ e^-8; the sample mean
    has std b / sqrt(3n) (5 std allowed), the sample variance b^2/3 with relative std
    sqrt(4/5 / n) (5 std allowed).
    """
    values = np.asarray(values, np.float64).ravel()
    n = values.size
    assert np.max(np.abs(values)) <= bound * (1 + 1e-6), f"{what}: beyond the bound {bound}"
    assert np.max(np.abs(values)) >= bound * (1 - 8 / n), f"{what}: far below the bound {bound}"
    assert abs(np.mean(values)) <= 5 * bound / math.sqrt(3 * n), f"{what}: mean {np.mean(values)}"
    variance = np.mean(values ** 2)
    assert abs(variance / (bound ** 2 / 3) - 1) <= 5 * math.sqrt(0.8 / n), (
        f"{what}: variance {variance}, uniform's {bound ** 2 / 3}")


@pytest.mark.parametrize("torch_layer, flax_shape, in_axis", [
    (torch.nn.Linear(48, 24), (48, 24), inits.DENSE_OR_CONV_IN_AXIS),
    (torch.nn.Conv2d(6, 10, 3), (3, 3, 6, 10), inits.DENSE_OR_CONV_IN_AXIS),
    (torch.nn.Conv2d(7, 5, 1), (1, 1, 7, 5), inits.DENSE_OR_CONV_IN_AXIS),
    (torch.nn.ConvTranspose2d(20, 8, 3), (3, 3, 20, 8), inits.CONV_TRANSPOSE_IN_AXIS),
])
def test_fan_in_and_bounds_are_torchs(torch_layer, flax_shape, in_axis):
    """Our fan_in is torch's; torch's own samples and ours stay within the same bound."""
    fan_in = inits.torch_fan_in(flax_shape, in_axis)
    assert fan_in == _torch_fan_in(torch_layer.weight)
    bound = inits.torch_bound(fan_in)
    torch_values = np.concatenate([torch_layer.weight.detach().numpy().ravel(),
                                   torch_layer.bias.detach().numpy().ravel()])
    assert np.max(np.abs(torch_values)) <= bound * (1 + 1e-6)
    # Many draws of the same shape, so the distribution checks have samples to work with.
    keys = jax.random.split(jax.random.key(0), 64)
    ours = jax.vmap(lambda key: inits.torch_kernel_init(in_axis)(key, flax_shape))(keys)
    _assert_uniform_within(ours, bound, f"kernel {flax_shape}")
    biases = jax.vmap(lambda key: inits.torch_bias_init(fan_in)(key, (200,)))(keys)
    _assert_uniform_within(biases, bound, f"bias of fan_in {fan_in}")


def test_conv_transpose_fan_in_is_the_output_side():
    """torch's ConvTranspose2d weight is [in, out, kh, kw]: its "fan_in" is out * k * k."""
    assert inits.torch_fan_in((3, 3, 2560, 8), inits.CONV_TRANSPOSE_IN_AXIS) == 8 * 9
    assert _torch_fan_in(torch.empty(2560, 8, 3, 3)) == 8 * 9


def _layers(params, path=()):
    """(path, {'kernel', 'bias'?}) of every leaf layer of a params tree."""
    if "kernel" in params:
        yield path, params
        return
    for name, child in params.items():
        if isinstance(child, dict):
            yield from _layers(child, path + (name,))


def _assert_layers_torch_initialised(params):
    checked = 0
    for path, layer in _layers(params):
        kernel = np.asarray(layer["kernel"])
        bound = inits.torch_bound(inits.torch_fan_in(kernel.shape))
        _assert_uniform_within(kernel, bound, "/".join(path) + "/kernel")
        if "bias" in layer:
            assert np.max(np.abs(np.asarray(layer["bias"]))) <= bound * (1 + 1e-6), path
            assert np.any(np.asarray(layer["bias"]) != 0), f"{path}: zero bias"
        checked += 1
    assert checked > 0


def test_text_adapter_starts_with_torch_default_init():
    embeddings = jnp.zeros((6, 64))
    params = TextAdapter().init(jax.random.key(1), embeddings, jnp.ones(64))["params"]
    _assert_layers_torch_initialised(params)


def test_image_adapter_starts_with_torch_default_init():
    config = ImageAdapterConfig(channels=(16, 24, 32, 32), num_res_blocks=1)
    params = ImageAdapter(config).init(jax.random.key(2), jnp.zeros((1, 64, 64, 3)))["params"]
    _assert_layers_torch_initialised(params)
    assert params["conv_in"]["kernel"].shape == (3, 3, 192, 16)


def test_qfd_starts_with_torch_default_init():
    config = QFDConfig(level_channels=(8, 16, 32, 32), hidden=32, se_reduction=4,
                       score_channels=(16, 8, 4), map_size=8, head_hidden=24)
    features = [jnp.zeros((1, 2, 2, 32)), jnp.zeros((1, 4, 4, 32)), jnp.zeros((1, 8, 8, 16)),
                jnp.zeros((1, 8, 8, 8))]
    params = QualityFeatureDecoder(config).init(jax.random.key(3), features)["params"]
    _assert_layers_torch_initialised(params)
    assert "bias" not in params["se1"]["fc_0"]


def test_conv_transpose_matches_torch_bound_at_the_authors_shape():
    """The student's ConvTranspose2d(2560 -> 8, k3): bound 1/sqrt(72), as torch draws it. (The
    student's fc1-3 are `quality_score_head`'s, checked in the QFD test.)"""
    torch_layer = torch.nn.ConvTranspose2d(2560, 8, 3, stride=2, padding=1, output_padding=1)
    params = TorchConvTranspose2d(8).init(jax.random.key(5), jnp.zeros((1, 2, 2, 2560)))["params"]
    bound = 1 / math.sqrt(72)
    _assert_uniform_within(params["kernel"], bound, "ours")
    assert np.max(np.abs(params["bias"])) <= bound and np.any(params["bias"] != 0)
    _assert_uniform_within(torch_layer.weight.detach().numpy(), bound, "torch's")


@pytest.mark.parametrize("use_bias", [True, False])
def test_pointwise_conv_draws_torch_bounds(use_bias):
    params = PointwiseConv(300, use_bias=use_bias).init(jax.random.key(6),
                                                        jnp.zeros((1, 2, 2, 100)))["params"]
    _assert_uniform_within(params["kernel"], 0.1, "kernel")
    assert ("bias" in params) == use_bias


def test_conv2d_is_flax_conv_with_torch_init():
    """Same parameters, values and gradients as `nn.Conv` given the same initialisers."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 9, 6)), jnp.float32)
    ours = Conv2d(5, 3, stride=2, padding=1)
    reference = nn.Conv(5, (3, 3), strides=2, padding=1, kernel_init=inits.torch_kernel_init(),
                        bias_init=inits.torch_bias_init(54))
    variables = reference.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(0), x), variables)
    # Same lowering (one conv_general_dilated), so exactly equal.
    np.testing.assert_array_equal(ours.apply(variables, x), reference.apply(variables, x))
