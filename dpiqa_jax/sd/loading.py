"""Pretrained Stable Diffusion 1.5 and CLIP weights from diffusers/transformers directories.

Strict: every tensor of the checkpoint must land on a parameter of ours with the right shape and
every parameter must be filled; anything else is an error naming the tensors. Never random init.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpiqa_jax.convert import torch_layout
from dpiqa_jax.primitives.dtypes import cast_floating
from dpiqa_jax.sd.clip_text import CLIPTextConfig, CLIPTextEncoder, with_text_model_prefix
from dpiqa_jax.sd.unet import UNet, UNetConfig
from dpiqa_jax.sd.vae import VAEConfig, VAEEncoder

Params = dict[str, Any]

# The VAE decoder is not used by DP-IQA; the loader reads the encoder half of AutoencoderKL.
VAE_DECODER_KEYS = (r"^decoder\.", r"^post_quant_conv\.")
# Buffers and the vision tower of a full CLIPModel are not part of the text encoder.
CLIP_IGNORED_KEYS = (r"position_ids$", r"^vision_model\.", r"^visual_projection\.",
                     r"^logit_scale$")
_DEPRECATED_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.",
                               ".proj_attn.": ".to_out.0."}
_WEIGHT_FILES = {
    "diffusers": ("diffusion_pytorch_model{v}.safetensors", "diffusion_pytorch_model{v}.bin"),
    "transformers": ("model{v}.safetensors", "pytorch_model{v}.bin"),
}


def read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def find_weight_files(directory: str, kind: str, variant: str | None = None) -> list[str]:
    """The weight file(s) of a diffusers/transformers model directory; safetensors preferred.

    Sharded checkpoints are found through their `*.index.json`.
    """
    suffix = f".{variant}" if variant else ""
    for pattern in _WEIGHT_FILES[kind]:
        name = pattern.format(v=suffix)
        single = os.path.join(directory, name)
        if os.path.isfile(single):
            return [single]
        index = os.path.join(directory, name + ".index.json")
        if os.path.isfile(index):
            shards = sorted(set(read_json(index)["weight_map"].values()))
            return [os.path.join(directory, s) for s in shards]
    tried = ", ".join(p.format(v=suffix) for p in _WEIGHT_FILES[kind])
    raise FileNotFoundError(f"no weights in {directory} (looked for {tried} and sharded indexes)")


def read_weights(files: Sequence[str]) -> dict[str, np.ndarray]:
    state: dict[str, np.ndarray] = {}
    for path in files:
        state.update(torch_layout.read_state_dict_file(path))
    return state


def _rename_deprecated_attention(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Older diffusers VAEs name the mid-block attention query/key/value/proj_attn."""
    renamed = {}
    for key, value in state.items():
        for old, new in _DEPRECATED_ATTENTION_NAMES.items():
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def finalize_params(variables: dict[str, Any], dtype: Any = None, sharding: Any = None) -> Params:
    """Casts floating leaves to `dtype` (if given) and places the tree (if a sharding is given)."""
    tree = jax.tree.map(np.asarray, variables)
    if dtype is not None:
        tree = cast_floating(tree, dtype)
    if sharding is not None:
        return jax.device_put(tree, sharding)
    return jax.tree.map(jnp.asarray, tree)


def _convert(module, example_args: tuple, state, *, ignore=(), source: str) -> Params:
    target = jax.eval_shape(module.init, jax.random.key(0), *example_args)
    return torch_layout.torch_to_flax(state, target, ignore=ignore, source=source)


def _subfolder(sd_dir: str, name: str) -> str:
    if not os.path.isfile(os.path.join(sd_dir, "model_index.json")):
        raise FileNotFoundError(
            f"{sd_dir} is not a diffusers pipeline directory (no model_index.json)")
    path = os.path.join(sd_dir, name)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{sd_dir} has no {name}/ folder")
    return path


def unet_example_inputs(config: UNetConfig) -> tuple:
    """Smallest inputs that trace every parameter of the UNet: [1, s, s, C], t, [1, 1, D]."""
    side = 2 ** (len(config.block_out_channels) - 1)
    return (jnp.zeros((1, side, side, config.in_channels)), jnp.ones((1,), jnp.int32),
            jnp.zeros((1, 1, config.cross_attention_dim)))


def vae_example_inputs(config: VAEConfig) -> tuple:
    side = 2 ** (len(config.block_out_channels) - 1)
    return (jnp.zeros((1, side, side, config.in_channels)),)


def clip_example_inputs(config: CLIPTextConfig) -> tuple:
    return (jnp.zeros((1, 2), jnp.int32),)


def load_unet(sd_dir: str, *, dtype: Any = jnp.float32, param_dtype: Any = None,
              sharding: Any = None, variant: str | None = None) -> tuple[UNet, Params]:
    """UNet and its params from `sd_dir/unet/` (config.json + weights)."""
    folder = _subfolder(sd_dir, "unet")
    config = UNetConfig.from_diffusers(read_json(os.path.join(folder, "config.json")))
    files = find_weight_files(folder, "diffusers", variant)
    module = UNet(config=config, dtype=dtype)
    variables = _convert(module, unet_example_inputs(config), read_weights(files),
                         source=", ".join(files))
    return module, finalize_params(variables["params"], param_dtype, sharding)


def load_vae_encoder(sd_dir: str, *, dtype: Any = jnp.float32, param_dtype: Any = None,
                     sharding: Any = None, variant: str | None = None
                     ) -> tuple[VAEEncoder, Params]:
    """VAE encoder + quant_conv and their params from `sd_dir/vae/` (decoder tensors skipped)."""
    folder = _subfolder(sd_dir, "vae")
    config = VAEConfig.from_diffusers(read_json(os.path.join(folder, "config.json")))
    files = find_weight_files(folder, "diffusers", variant)
    module = VAEEncoder(config=config, dtype=dtype)
    state = _rename_deprecated_attention(read_weights(files))
    variables = _convert(module, vae_example_inputs(config), state, ignore=VAE_DECODER_KEYS,
                         source=", ".join(files))
    return module, finalize_params(variables["params"], param_dtype, sharding)


def load_clip_text_encoder(directory: str, *, dtype: Any = jnp.float32, param_dtype: Any = None,
                           sharding: Any = None) -> tuple[CLIPTextEncoder, Params]:
    """The CLIP text transformer from a transformers directory (SD's `text_encoder/`, or a CLIP
    model).

    The projection head is built when the checkpoint holds `text_projection.weight`.
    """
    config = CLIPTextConfig.from_transformers(read_json(os.path.join(directory, "config.json")))
    files = find_weight_files(directory, "transformers")
    state = with_text_model_prefix(read_weights(files))
    module = CLIPTextEncoder(config=config, with_projection="text_projection.weight" in state,
                             dtype=dtype)
    variables = _convert(module, clip_example_inputs(config), state, ignore=CLIP_IGNORED_KEYS,
                         source=", ".join(files))
    return module, finalize_params(variables["params"], param_dtype, sharding)
