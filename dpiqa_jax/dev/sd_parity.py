"""Side-by-side check of our SD 1.5 modules against diffusers/transformers (PyTorch).

The PyTorch reference is built with random weights (or read from a real SD 1.5 directory), written
in the diffusers pipeline layout, and read back by our own loader, so a pass proves the loader and
the modules together. Needs the dev requirements (torch, diffusers, transformers).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpiqa_jax.sd import loading
from dpiqa_jax.sd.unet import SD15_UNET_CONFIG, UNetConfig, tiny_unet_config
from dpiqa_jax.sd.vae import SD15_VAE_CONFIG, tiny_vae_config
from dpiqa_jax.train.state import count_params

FP32_MAX_REL_ERR = 1e-3
CONTEXT_TOKENS = 1485
TIMESTEP = 1

TINY_UNET_CONFIG = tiny_unet_config((32, 64, 64, 64), 32, layers_per_block=2, norm_num_groups=8)
TINY_VAE_CONFIG = tiny_vae_config((16, 32, 32, 32), norm_num_groups=8)
TINY_CLIP_CONFIG: dict[str, Any] = {
    "vocab_size": 120, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 24, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
SD15_CLIP_CONFIG: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}


@dataclasses.dataclass(frozen=True)
class ParityResult:
    module: str
    params: int
    params_torch: int
    max_abs_err: float
    max_rel_err: float
    dtype: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def failed(self) -> bool:
        """fp32 must match within FP32_MAX_REL_ERR; bf16 is reported, not judged."""
        if self.params != self.params_torch:
            return True
        return self.dtype == "float32" and not self.max_rel_err <= FP32_MAX_REL_ERR


def _errors(ours: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, float]:
    """Max abs error over all outputs, and the same relative to the reference's max magnitude."""
    abs_err = max(float(np.max(np.abs(np.asarray(o, np.float64) - r))) for o, r in
                  zip(ours, reference))
    scale = max(float(np.max(np.abs(r))) for r in reference)
    return abs_err, abs_err / max(scale, 1e-30)


def _nhwc(tensor) -> np.ndarray:
    return tensor.detach().float().permute(0, 2, 3, 1).numpy().astype(np.float64)


def build_reference_pipeline(size: str, directory: str, seed: int = 0) -> None:
    """Writes random-weight UNet, VAE and CLIP text encoder in the diffusers pipeline layout."""
    # PyTorch and its model libraries (dev requirements) load only when a check runs.
    import diffusers  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel

    tiny = size == "tiny"
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**(TINY_UNET_CONFIG if tiny else SD15_UNET_CONFIG))
    vae = diffusers.AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD15_VAE_CONFIG))
    clip = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        **(TINY_CLIP_CONFIG if tiny else SD15_CLIP_CONFIG)))
    if tiny:  # default inits leave norms at 1/0; perturb so every tensor matters
        for model in (unet, vae, clip):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
    unet.save_pretrained(os.path.join(directory, "unet"))
    del unet
    vae.save_pretrained(os.path.join(directory, "vae"))
    clip.save_pretrained(os.path.join(directory, "text_encoder"))
    with open(os.path.join(directory, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump({"_class_name": "StableDiffusionPipeline",
                   "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"],
                   "text_encoder": ["transformers", "CLIPTextModelWithProjection"]}, f)


def _unet_reference(sd_dir: str, latents, context, residuals):
    # PyTorch and its model libraries (dev requirements) load only when a check runs.
    import diffusers  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    unet = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(sd_dir, "unet")).eval()
    captured: list = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: captured.append(out))
             for block in unet.up_blocks]
    with torch.no_grad():
        out = unet(torch.from_numpy(latents), TIMESTEP, encoder_hidden_states=torch.from_numpy(
            context).expand(latents.shape[0], -1, -1),
            down_intrablock_additional_residuals=[torch.from_numpy(r) for r in residuals]).sample
    for hook in hooks:
        hook.remove()
    n_params = sum(p.numel() for p in unet.parameters())
    return [_nhwc(t) for t in captured] + [_nhwc(out)], n_params


def _down_block_shapes(config, latent_side: int) -> list[tuple[int, int]]:
    shapes, side = [], latent_side
    for i, channels in enumerate(config.block_out_channels):
        shapes.append((channels, side))
        if i < len(config.block_out_channels) - 1:
            side //= 2
    return shapes


def unet_parity(sd_dir: str, res: int, batch: int, dtypes: tuple[str, ...]
                ) -> Iterator[ParityResult]:
    rng = np.random.default_rng(1)
    config = UNetConfig.from_diffusers(loading.read_json(os.path.join(sd_dir, "unet",
                                                                      "config.json")))
    side = res // 8
    latents = rng.standard_normal((batch, config.in_channels, side, side)).astype(np.float32)
    context = rng.standard_normal((1, CONTEXT_TOKENS, config.cross_attention_dim)
                                  ).astype(np.float32)
    residuals = [rng.standard_normal((batch, c, s, s)).astype(np.float32)
                 for c, s in _down_block_shapes(config, side)]
    reference, n_torch = _unet_reference(sd_dir, latents, context, residuals)
    module, params = loading.load_unet(sd_dir)  # after the torch model is freed: peak RAM
    for dtype in dtypes:
        run = jax.jit(lambda p, x, c, r, m=module.clone(dtype=jnp.dtype(dtype)): m.apply(
            {"params": p}, x, TIMESTEP, c, adapter_features=r, return_output=True))
        cast = jax.tree.map(lambda x, d=dtype: x.astype(d), params)
        out = run(cast, np.transpose(latents, (0, 2, 3, 1)), context,
                  [np.transpose(r, (0, 2, 3, 1)) for r in residuals])
        ours = [np.asarray(o, np.float64) for o in list(out.up_features) + [out.out]]
        abs_err, rel_err = _errors(ours, reference)
        yield ParityResult("unet", count_params(params), n_torch, abs_err, rel_err, dtype)


def vae_parity(sd_dir: str, res: int, batch: int, dtypes: tuple[str, ...]
               ) -> Iterator[ParityResult]:
    # PyTorch and its model libraries (dev requirements) load only when a check runs.
    import diffusers  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 1, (batch, 3, res, res)).astype(np.float32)
    vae = diffusers.AutoencoderKL.from_pretrained(os.path.join(sd_dir, "vae")).eval()
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(images)).latent_dist
    reference = [_nhwc(dist.mean), _nhwc(dist.logvar)]
    n_torch = sum(p.numel() for name, p in vae.named_parameters()
                  if name.startswith(("encoder.", "quant_conv.")))
    del vae
    module, params = loading.load_vae_encoder(sd_dir)
    for dtype in dtypes:
        cast = jax.tree.map(lambda x, d=dtype: x.astype(d), params)
        mean, logvar = jax.jit(module.clone(dtype=jnp.dtype(dtype)).apply)(
            {"params": cast}, np.transpose(images, (0, 2, 3, 1)))
        abs_err, rel_err = _errors([np.asarray(mean), np.asarray(logvar)], reference)
        yield ParityResult("vae_encoder", count_params(params), n_torch, abs_err, rel_err, dtype)


def clip_parity(sd_dir: str, batch: int, dtypes: tuple[str, ...]) -> Iterator[ParityResult]:
    # PyTorch and its model libraries (dev requirements) load only when a check runs.
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    folder = os.path.join(sd_dir, "text_encoder")
    has_projection = "text_projection.weight" in loading.read_weights(
        loading.find_weight_files(folder, "transformers"))
    model_class = (transformers.CLIPTextModelWithProjection if has_projection
                   else transformers.CLIPTextModel)
    reference_model = model_class.from_pretrained(folder).eval()
    config = reference_model.config
    rng = np.random.default_rng(3)
    ids = rng.integers(3, config.vocab_size, (batch, config.max_position_embeddings))
    ids[:, 0] = config.bos_token_id
    lengths = rng.integers(4, config.max_position_embeddings, batch)
    for row, length in enumerate(lengths):
        ids[row, length] = config.eos_token_id
        ids[row, length + 1:] = config.pad_token_id
    with torch.no_grad():
        out = reference_model(torch.from_numpy(ids))
    head = out.text_embeds if has_projection else out.pooler_output
    reference = [out.last_hidden_state.numpy().astype(np.float64),
                 head.numpy().astype(np.float64)]
    n_torch = sum(p.numel() for p in reference_model.parameters())
    del reference_model
    module, params = loading.load_clip_text_encoder(folder)
    for dtype in dtypes:
        cast = jax.tree.map(lambda x, d=dtype: x.astype(d), params)
        ours = jax.jit(module.clone(dtype=jnp.dtype(dtype)).apply)(
            {"params": cast}, ids.astype(np.int32))
        head = ours.projected if has_projection else ours.pooled
        abs_err, rel_err = _errors([np.asarray(ours.last_hidden_state), np.asarray(head)],
                                   reference)
        yield ParityResult("clip_text", count_params(params), n_torch, abs_err, rel_err, dtype)


def run_parity(size: str, res: int, sd_dir: str | None = None, batch: int = 2,
               dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> Iterator[ParityResult]:
    """Yields one result per (module, dtype): VAE encoder, UNet, CLIP text encoder."""
    if sd_dir is not None:
        yield from _run_all(sd_dir, res, batch, dtypes)
        return
    with tempfile.TemporaryDirectory(prefix="dpiqa_parity_") as directory:
        build_reference_pipeline(size, directory)
        yield from _run_all(directory, res, batch, dtypes)


def _run_all(sd_dir: str, res: int, batch: int, dtypes: tuple[str, ...]
             ) -> Iterator[ParityResult]:
    yield from vae_parity(sd_dir, res, batch, dtypes)
    yield from unet_parity(sd_dir, res, batch, dtypes)
    yield from clip_parity(sd_dir, batch, dtypes)
