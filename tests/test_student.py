"""The DP-IQA student: size, the authors' state dict layout (round trip, strictness) and the head
against a PyTorch reference written here."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpiqa_jax.convert import efficientnet as convert
from dpiqa_jax.convert.torch_layout import StateDictMismatchError
from dpiqa_jax.models.efficientnet import EfficientNet, efficientnet_config
from dpiqa_jax.models.student import Student, StudentConfig, TorchConvTranspose2d

B7_STUDENT_PARAMS = 81_012_185  # design.md §2 and the authors' manifest `n_parameters`


def _abstract_variables(model, shape):
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.fixture(scope="module")
def b7_target():
    return _abstract_variables(Student(StudentConfig()), (1, 512, 512, 3))


@pytest.fixture(scope="module")
def official_state_dict():
    """Random tensors with the exact keys and shapes of the authors' released student."""
    rng = np.random.default_rng(0)
    state_dict = {}
    for key, shape in convert.official_student_shapes().items():
        if key.endswith("num_batches_tracked"):
            state_dict[key] = np.asarray(rng.integers(1, 10_000), dtype=np.int64)
        else:
            state_dict[key] = rng.standard_normal(shape, dtype=np.float32)
    return state_dict


def test_b7_student_has_the_authors_parameter_count(b7_target):
    count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(b7_target["params"]))
    assert count == B7_STUDENT_PARAMS


def test_official_round_trip_is_bit_exact(official_state_dict, b7_target):
    variables = convert.student_official_to_flax(official_state_dict, b7_target)
    exported = convert.student_flax_to_official(variables)
    assert list(exported) == list(official_state_dict)  # same keys, in torch's order
    for key, tensor in official_state_dict.items():
        if key.endswith("num_batches_tracked"):
            assert exported[key].shape == () and exported[key].dtype == np.int64
            assert exported[key] == 0, key
        else:
            assert exported[key].dtype == tensor.dtype, key
            np.testing.assert_array_equal(exported[key], tensor, err_msg=key)


def test_official_load_is_strict(official_state_dict, b7_target):
    missing = dict(official_state_dict)
    del missing["base_model.features.4.3.block.2.fc2.bias"]
    with pytest.raises(StateDictMismatchError, match="features_4_3/block_2/fc2/bias"):
        convert.student_official_to_flax(missing, b7_target)
    extra = dict(official_state_dict, **{"fc4.weight": np.zeros((1, 1), np.float32)})
    with pytest.raises(StateDictMismatchError, match=r"fc4\.weight"):
        convert.student_official_to_flax(extra, b7_target)
    misshaped = dict(official_state_dict, **{"conv_transpose.weight": np.zeros(
        (2560, 4, 3, 3), np.float32)})
    with pytest.raises(StateDictMismatchError, match=r"conv_transpose\.weight: \(2560, 4, 3, 3\)"):
        convert.student_official_to_flax(misshaped, b7_target)


def test_conv_transpose_matches_torch():
    torch.manual_seed(0)
    torch_layer = torch.nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1, output_padding=1)
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 6), dtype=np.float32)
    params = {"params": {
        "kernel": torch_layer.weight.detach().numpy().transpose(2, 3, 0, 1),
        "bias": torch_layer.bias.detach().numpy()}}
    out = TorchConvTranspose2d(5).apply(params, x)
    with torch.no_grad():
        expected = torch_layer(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert out.shape == (2, 8, 10, 5)
    np.testing.assert_allclose(out, expected.transpose(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


class _TorchStudentHead(torch.nn.Module):
    """The authors' head after `base_model.features`, with their module names."""

    def __init__(self, in_channels, map_size, map_channels=8, hidden=512):
        super().__init__()
        self.map_size = map_size
        self.conv_transpose = torch.nn.ConvTranspose2d(in_channels, map_channels, 3, stride=2,
                                                       padding=1, output_padding=1)
        self.fc1 = torch.nn.Linear(map_channels * map_size * map_size, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.fc3 = torch.nn.Linear(hidden, 1)

    def forward(self, features):
        quality_map = F.interpolate(F.relu(self.conv_transpose(features)),
                                    size=(self.map_size, self.map_size), mode="nearest")
        h = F.relu(self.fc1(torch.flatten(quality_map, 1)))
        return self.fc3(F.relu(self.fc2(h))).squeeze(1), quality_map


@pytest.mark.parametrize("input_size, map_size", [(96, 64), (64, 20)])
def test_head_matches_torch_reference_given_the_same_features(input_size, map_size):
    """Lite0 backbone; 96 -> 3x3 features -> 6x6 -> 64 and 64 -> 2x2 -> 4x4 -> 20: both resize
    ratios are non-integer, so the NCHW flatten order and torch's nearest indices both matter."""
    config = StudentConfig(backbone="lite0", map_size=map_size)
    model = Student(config)
    x = np.random.default_rng(2).uniform(size=(2, input_size, input_size, 3)).astype(np.float32)
    variables = _random_variables(_abstract_variables(model, x.shape), seed=3)
    score, quality_map = jax.jit(functools.partial(model.apply, train=False))(variables, x)

    backbone = EfficientNet(efficientnet_config("lite0"))
    backbone_variables = {collection: tree["base_model"] for collection, tree in variables.items()}
    features = jax.jit(functools.partial(backbone.apply, train=False))(backbone_variables, x)
    head = _TorchStudentHead(1280, map_size)
    exported = convert.student_flax_to_official(variables)
    head.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()
                          if not k.startswith("base_model.")})
    with torch.no_grad():
        torch_score, torch_map = head(torch.from_numpy(np.array(features).transpose(0, 3, 1, 2)))
    assert score.shape == (2,) and quality_map.shape == (2, map_size, map_size, 8)
    assert 0.1 < float(jnp.mean(quality_map > 0)) < 0.9  # the ReLU map is neither dead nor linear
    np.testing.assert_allclose(quality_map, torch_map.numpy().transpose(0, 2, 3, 1), atol=1e-5,
                               rtol=1e-5)
    np.testing.assert_allclose(score, torch_score.numpy(), atol=1e-5, rtol=1e-5)


def _random_variables(abstract, seed):
    """Random float32 leaves for an abstract variables tree: kernels ~ N(0, 1 / fan_in), small
    biases and means, BN scales near 1 and positive variances."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.standard_normal(leaf.shape) / np.sqrt(fan_in)
        elif name == "scale":
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif name == "var":
            value = rng.uniform(0.5, 2.0, leaf.shape)
        else:
            value = 0.1 * rng.standard_normal(leaf.shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def test_student_transforms_reject_a_non_square_map():
    variables = {"params": {"conv_transpose": {"bias": np.zeros(8)},
                            "fc1": {"kernel": np.zeros((8 * 12, 4))}}}
    with pytest.raises(ValueError, match="not a square map"):
        convert.student_transforms(variables)
