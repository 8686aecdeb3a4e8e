"""The generic torch <-> Flax layout mapping: default rules, strictness, file reading."""

import json
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from dpiqa_jax.convert import torch_layout


class _TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
        self.norm = torch.nn.GroupNorm(2, 4)
        self.head = torch.nn.Linear(4, 2)
        self.gamma = torch.nn.Parameter(torch.randn(2))


class _FlaxNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), padding=1, name="body_0")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, name="body_1")(x)
        x = nn.GroupNorm(num_groups=2, epsilon=1e-5, name="norm")(x)
        x = nn.Dense(2, name="head")(x.mean(axis=(1, 2)))
        return x * self.param("gamma", nn.initializers.ones, (2,))


def _torch_net():
    torch.manual_seed(0)
    net = _TorchNet().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        net.body[1].running_mean.normal_()
        net.body[1].running_var.uniform_(0.5, 2.0)
    return net


def _numpy_state_dict(net):
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def _target():
    return jax.eval_shape(_FlaxNet().init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_flax_path_for_torch_key_joins_numbers():
    assert torch_layout.flax_path_for_torch_key("down_blocks.0.resnets.1.conv1.weight") == (
        "down_blocks_0", "resnets_1", "conv1", "weight")
    assert torch_layout.flax_path_for_torch_key("features.1.0.block.0.0.weight") == (
        "features_1_0", "block_0_0", "weight")
    assert torch_layout.flax_path_for_torch_key("time_embedding.linear_1.bias") == (
        "time_embedding", "linear_1", "bias")


def test_converted_model_computes_what_torch_computes():
    net = _torch_net()
    variables = torch_layout.torch_to_flax(
        _numpy_state_dict(net), _target(), ignore=[r"num_batches_tracked$"])
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
    ours = _FlaxNet().apply(variables, x)
    with torch.no_grad():
        h = net.norm(net.body(torch.from_numpy(x).permute(0, 3, 1, 2)))
        ref = net.head(h.mean(dim=(2, 3))) * net.gamma
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5, rtol=1e-5)


def test_round_trip_is_bit_exact():
    state = _numpy_state_dict(_torch_net())
    state.pop("body.1.num_batches_tracked")
    variables = torch_layout.torch_to_flax(state, _target())
    back = torch_layout.flax_to_torch(variables, {k: v.shape for k, v in state.items()})
    assert back.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_mismatches_are_named():
    state = _numpy_state_dict(_torch_net())
    state.pop("head.bias")
    state["extra.weight"] = np.zeros(3, np.float32)
    state["norm.weight"] = np.zeros(5, np.float32)
    with pytest.raises(torch_layout.StateDictMismatchError) as info:
        torch_layout.torch_to_flax(state, _target(), ignore=[r"num_batches_tracked$"],
                                   source="net.safetensors")
    message = str(info.value)
    assert "net.safetensors" in message
    assert "head/bias" in message and "extra.weight" in message and "norm.weight: (5,)" in message


def _write_safetensors(path, tensors, truncate=0):
    header, blobs, offset = {}, [], 0
    for name, (code, array) in tensors.items():
        data = array.tobytes()
        header[name] = {"dtype": code, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    payload = struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs)
    path.write_bytes(payload[:len(payload) - truncate])


def test_read_safetensors_handles_bf16_and_names_truncated_files(tmp_path):
    bf16 = np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)
    f32 = np.linspace(0, 1, 4, dtype=np.float32)
    good = tmp_path / "good.safetensors"
    _write_safetensors(good, {"a": ("BF16", bf16), "b": ("F32", f32)})
    loaded = torch_layout.read_state_dict_file(good)
    np.testing.assert_array_equal(loaded["a"].astype(np.float32), bf16.astype(np.float32))
    np.testing.assert_array_equal(loaded["b"], f32)
    bad = tmp_path / "bad.safetensors"
    _write_safetensors(bad, {"a": ("BF16", bf16), "b": ("F32", f32)}, truncate=5)
    with pytest.raises(ValueError, match="bad.safetensors: not a readable safetensors file: truncated"):
        torch_layout.read_state_dict_file(bad)


def test_read_torch_file_names_corrupt_file(tmp_path):
    path = tmp_path / "model.bin"
    torch.save({"w": torch.ones(2)}, path)
    np.testing.assert_array_equal(torch_layout.read_state_dict_file(path)["w"], np.ones(2))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="model.bin"):
        torch_layout.read_state_dict_file(path)


@pytest.mark.parametrize("zip_format", [True, False])
def test_torch_pickles_read_without_torch_equal_torch_load(tmp_path, zip_format):
    generator = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(3, 4, generator=generator),
             "t": torch.randn(4, 3, generator=generator).t(),  # non-contiguous strides
             "h": torch.randn(5, generator=generator).half(),
             "b": torch.randn(2, 2, generator=generator).bfloat16(),
             "n": torch.tensor(7, dtype=torch.int64),
             "view": torch.arange(10.0)[2:6]}
    path = tmp_path / "state.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    ours = torch_layout.read_state_dict_file(path)
    assert ours.keys() == state.keys()
    for key, tensor in state.items():
        expected = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        assert ours[key].shape == tuple(tensor.shape), key
        np.testing.assert_array_equal(np.asarray(ours[key], np.float64),
                                      np.asarray(expected, np.float64), err_msg=key)


def test_torch_pickle_with_foreign_objects_is_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save({"w": torch.ones(1), "opt": torch.optim.SGD}, path)
    with pytest.raises(ValueError, match="module.pth.*torch.optim"):
        torch_layout.read_state_dict_file(path)
