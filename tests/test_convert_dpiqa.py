"""The authors' teacher checkpoint converter: round trip, strictness, the full-size manifest."""

import numpy as np
import pytest

from dpiqa_jax.convert.dpiqa import (
    is_unused_teacher_key,
    nchw_flatten_transform,
    official_teacher_shapes,
    teacher_flax_to_official,
    teacher_official_to_flax,
)
from dpiqa_jax.convert.torch_layout import StateDictMismatchError
from dpiqa_jax.models.teacher import Teacher

from helpers import (
    PARITY_TEACHER,
    build_torch_teacher,
    official_state_dict,
    param_count,
    teacher_target,
)

UNUSED_PREFIXES = ("vae.decoder.", "vae.post_quant_conv.", "QFD.bnc1.", "QFD.classifier_dist.")


@pytest.fixture(scope="module")
def tiny_state_dict() -> dict[str, np.ndarray]:
    return official_state_dict(build_torch_teacher(seed=11))


@pytest.fixture(scope="module")
def tiny_target():
    return teacher_target(Teacher(PARITY_TEACHER))


def _shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def test_nchw_flatten_transform_matches_flatten_orders():
    rng = np.random.default_rng(0)
    channels, height, width, out = 3, 4, 5, 6
    weight = rng.standard_normal((out, channels * height * width)).astype(np.float32)
    quality_map = rng.standard_normal((2, channels, height, width)).astype(np.float32)
    transform = nchw_flatten_transform(channels, height, width)
    kernel = transform.to_flax(weight)
    nhwc_flat = quality_map.transpose(0, 2, 3, 1).reshape(2, -1)
    np.testing.assert_allclose(nhwc_flat @ kernel, quality_map.reshape(2, -1) @ weight.T,
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(transform.to_torch(kernel), weight)
    with pytest.raises(ValueError, match=r"\[out, 3\*4\*5=60\]"):
        transform.to_flax(weight[:, :-1])


def test_tiny_round_trip_is_bit_exact(tiny_state_dict, tiny_target):
    variables, extras = teacher_official_to_flax(tiny_state_dict, tiny_target)
    assert set(extras) == {k for k in tiny_state_dict if k.startswith(UNUSED_PREFIXES)}
    assert "QFD.bnc1.num_batches_tracked" in extras
    exported = teacher_flax_to_official(variables, extras, torch_shapes=_shapes(tiny_state_dict))
    assert list(exported) == list(tiny_state_dict)
    for key, value in tiny_state_dict.items():
        assert exported[key].dtype == value.dtype, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_fc1_rows_are_permuted_to_nhwc(tiny_state_dict, tiny_target):
    variables, _ = teacher_official_to_flax(tiny_state_dict, tiny_target)
    kernel = variables["params"]["QFD"]["fc1"]["kernel"]
    weight = tiny_state_dict["QFD.fc1.weight"]
    channels, side = 4, 8  # PARITY_TEACHER's quality map: 4 channels, 8x8
    # flax row of (h=1, w=2, c=3) is torch column c*H*W + h*W + w
    np.testing.assert_array_equal(kernel[(1 * side + 2) * channels + 3],
                                  weight[:, 3 * side * side + 1 * side + 2])


def test_strictness_names_the_offending_keys(tiny_state_dict, tiny_target):
    missing = dict(tiny_state_dict)
    del missing["unet.conv_in.bias"]
    with pytest.raises(StateDictMismatchError, match=r"unet/conv_in/bias"):
        teacher_official_to_flax(missing, tiny_target)

    unexpected = {**tiny_state_dict, "unet.extra_head.weight": np.zeros((2, 2), np.float32)}
    with pytest.raises(StateDictMismatchError, match=r"unet\.extra_head\.weight"):
        teacher_official_to_flax(unexpected, tiny_target)

    misshaped = {**tiny_state_dict, "gamma": np.zeros(3, np.float32)}
    with pytest.raises(StateDictMismatchError, match=r"gamma: \(3,\)"):
        teacher_official_to_flax(misshaped, tiny_target)


def test_export_needs_the_extras_it_was_given(tiny_state_dict, tiny_target):
    variables, extras = teacher_official_to_flax(tiny_state_dict, tiny_target)
    partial = {k: v for k, v in extras.items() if k != "QFD.classifier_dist.bias"}
    with pytest.raises(StateDictMismatchError, match=r"QFD\.classifier_dist\.bias"):
        teacher_flax_to_official(variables, partial, torch_shapes=_shapes(tiny_state_dict))


def test_full_size_manifest_maps_exactly_onto_the_teacher():
    """Every key of the authors' SD 1.5 checkpoint is used by our model or listed as unused."""
    shapes = official_teacher_shapes()
    assert len(shapes) == 1016
    # Zero-stride views: the shapes of a ~4 GB checkpoint without its memory.
    state_dict = {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in shapes.items()}
    target = teacher_target(Teacher(), batch=1, image_size=512)
    variables, extras = teacher_official_to_flax(state_dict, target)
    assert set(extras) == {k for k in shapes if is_unused_teacher_key(k)}
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in extras} == {
        "vae.decoder", "vae.post_quant_conv", "QFD.bnc1", "QFD.classifier_dist"}
    n_used = param_count(variables)
    n_extra = param_count(extras)
    assert n_used == 1_015_170_557
    assert n_used + n_extra == 1_064_675_117  # the manifest's n_elements
    assert variables["params"]["QFD"]["fc1"]["kernel"].shape == (32768, 512)
