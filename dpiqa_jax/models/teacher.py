"""The DP-IQA teacher: SD 1.5 VAE encoder + UNet features, text/image adapters, QFD.

Children mirror the authors' `DPIQA` module (`vae`, `unet`, `img_adapter`, `text_adapter`, `gamma`,
`QFD`), so their checkpoint converts by name (`dpiqa_jax.convert.dpiqa`). The pieces are separate
methods so training can run the frozen VAE outside the differentiated function:

    latents = model.apply({"params": frozen}, images, method=Teacher.encode_latents)
    score, qmap = model.apply({"params": trainable}, latents, images, prompts,
                              method=Teacher.score_latents)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpiqa_jax.models.adapters import ImageAdapter, ImageAdapterConfig, TextAdapter
from dpiqa_jax.models.qfd import QFDConfig, QualityFeatureDecoder
from dpiqa_jax.sd.attention import AttentionKernel
from dpiqa_jax.sd.unet import SD15_UNET_CONFIG, UNet, UNetConfig
from dpiqa_jax.sd.vae import SD15_VAE_CONFIG, VAEConfig, VAEEncoder

Dtype = Any

LATENT_MODES = ("mean", "sample")
INPUT_RANGES = ("0_1", "-1_1")
# Name of the rng stream `Teacher` draws the posterior sample from when `latent="sample"`.
LATENT_RNG = "latent"


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """Architecture and input conventions of the teacher; defaults: the authors' SD 1.5 model.

    Attributes:
      unet, vae, image_adapter, qfd: the parts' configs.
      latent: 'mean' (deterministic, our default) or 'sample' (the authors' posterior sample; needs
        the `latent` rng stream).
      timestep: the UNet timestep (no noise is added).
      input_range: range the VAE sees: '0_1' feeds [0, 1] images straight in (the authors'
        convention, needed for their checkpoints); '-1_1' maps them to [-1, 1] first (SD's
        training range). The image adapter always sees the [0, 1] image.
      text_dim: width of the prompt embeddings (= the UNet's cross-attention width).
      text_hidden_dim: hidden width of the text adapter's MLP; None = text_dim.
      gamma_init: initial value of the text adapter's residual scale `gamma`.
    """

    unet: UNetConfig = dataclasses.field(
        default_factory=lambda: UNetConfig.from_diffusers(SD15_UNET_CONFIG))
    vae: VAEConfig = dataclasses.field(
        default_factory=lambda: VAEConfig.from_diffusers(SD15_VAE_CONFIG))
    image_adapter: ImageAdapterConfig = ImageAdapterConfig()
    qfd: QFDConfig = QFDConfig()
    latent: str = "mean"
    timestep: int = 1
    input_range: str = "0_1"
    text_dim: int = 768
    text_hidden_dim: int | None = None
    gamma_init: float = 1e-4

    def __post_init__(self):
        if self.latent not in LATENT_MODES:
            raise ValueError(f"TeacherConfig.latent={self.latent!r}; expected one of "
                             f"{LATENT_MODES}")
        if self.input_range not in INPUT_RANGES:
            raise ValueError(f"TeacherConfig.input_range={self.input_range!r}; expected one of "
                             f"{INPUT_RANGES}")
        blocks = tuple(self.unet.block_out_channels)
        if self.text_dim != self.unet.cross_attention_dim:
            raise ValueError(f"TeacherConfig.text_dim={self.text_dim} must equal the UNet's "
                             f"cross_attention_dim={self.unet.cross_attention_dim}")
        if tuple(self.image_adapter.channels) != blocks:
            raise ValueError(f"image adapter channels {self.image_adapter.channels} must equal "
                             f"the UNet's block_out_channels {blocks}")
        # conv1 reads the last up block (block_out_channels[0] wide), conv4 the first.
        if tuple(self.qfd.level_channels) != blocks:
            raise ValueError(f"QFD level_channels {self.qfd.level_channels} must equal the UNet's "
                             f"block_out_channels {blocks}")
        if self.vae.latent_channels != self.unet.in_channels:
            raise ValueError(f"VAE latent_channels={self.vae.latent_channels} must equal the "
                             f"UNet's in_channels={self.unet.in_channels}")


class Teacher(nn.Module):
    """DP-IQA teacher: images [B, H, W, 3] in [0, 1] + prompt embeddings [K, D] -> score, map.

    `attention_kernel` chooses how the UNet's attention is computed (`AttentionKernel`).
    """

    config: TeacherConfig = TeacherConfig()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention_kernel: AttentionKernel = AttentionKernel()

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.vae = VAEEncoder(cfg.vae, **kw)
        self.unet = UNet(cfg.unet, attention_kernel=self.attention_kernel, **kw)
        self.img_adapter = ImageAdapter(cfg.image_adapter, **kw)
        self.text_adapter = TextAdapter(cfg.text_hidden_dim, **kw)
        self.QFD = QualityFeatureDecoder(cfg.qfd, **kw)  # pylint: disable=invalid-name

    def encode_latents(self, images: jax.Array) -> jax.Array:
        """VAE latent × scaling_factor: images [B, H, W, 3] in [0, 1] -> [B, H/8, W/8, 4] (SD 1.5).

        With `latent="sample"` draws from the posterior using the `latent` rng stream.
        """
        cfg = self.config
        vae_input = images * 2.0 - 1.0 if cfg.input_range == "-1_1" else images
        mean, logvar = self.vae(vae_input)
        latents = mean
        if cfg.latent == "sample":
            noise = jax.random.normal(self.make_rng(LATENT_RNG), mean.shape, mean.dtype)
            latents = mean + jnp.exp(0.5 * logvar) * noise
        return latents * cfg.vae.scaling_factor

    # `gamma` is declared here rather than in setup so that methods not using it (encode_latents)
    # run with a params tree that lacks it.
    @nn.compact
    def text_context(self, prompt_embeddings: jax.Array) -> jax.Array:
        """Adapted prompts as a shared cross-attention context: [K, D] -> [1, K, D]."""
        gamma = self.param("gamma", nn.initializers.constant(self.config.gamma_init),
                           (self.config.text_dim,), self.param_dtype)
        return self.text_adapter(prompt_embeddings, gamma)

    def unet_features(self, latents: jax.Array, images: jax.Array,
                      prompt_embeddings: jax.Array) -> tuple[jax.Array, ...]:
        """The four up-block outputs of the adapter-conditioned UNet at t = timestep, no noise.

        Args:
          latents: [B, h, w, 4] from `encode_latents`.
          images: [B, H, W, 3] in [0, 1], the same images (the image adapter's input).
          prompt_embeddings: [K, D].

        Returns:
          up-block features in UNet order (SD 1.5 at 512x512: 1280@16, 1280@32, 640@64, 320@64).
        """
        adapter_features = self.img_adapter(images)
        output = self.unet(latents, self.config.timestep, self.text_context(prompt_embeddings),
                           adapter_features=adapter_features)
        return output.up_features

    def score_latents(self, latents: jax.Array, images: jax.Array,
                      prompt_embeddings: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Everything after the VAE: -> (score [B], quality map [B, 64, 64, 8] for SD 1.5)."""
        return self.QFD(self.unet_features(latents, images, prompt_embeddings))

    def __call__(self, images: jax.Array,
                 prompt_embeddings: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Scores images.

        Args:
          images: [B, H, W, 3] RGB in [0, 1] (512x512 for SD 1.5).
          prompt_embeddings: [K, D] fixed prompt vectors (K = 1485, D = 768 for the authors').

        Returns:
          (score [B], quality map [B, map_size, map_size, 8]).
        """
        return self.score_latents(self.encode_latents(images), images, prompt_embeddings)
