"""The CLIP text transformer (SD 1.5's text encoder = CLIP ViT-L/14's text tower) and tokenizer.

Module and parameter names mirror transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`
(`text_model.encoder.layers.0.self_attn.q_proj.weight` <-> params
`text_model/encoder/layers_0/self_attn/q_proj/kernel`), so `torch_layout.torch_to_flax` converts
a transformers state dict without a key map. Tokenization is not reimplemented: it wraps
transformers' `CLIPTokenizer` read from a local directory.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# transformers' `CLIPTextConfig` defaults: a config.json written with `use_diff` omits keys that
# equal them, and transformers fills them back in the same way when it reads the file.
_TRANSFORMERS_TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 49407,
}
_SUPPORTED_MODEL_TYPES = ("clip", "clip_text_model")
_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # transformers' "gelu" is the erf form
}
# Before transformers PR #24773 CLIP configs carried eos_token_id=2; for those the EOS position
# is the argmax of the ids (EOS is the largest id of the original vocabulary).
_LEGACY_EOS_TOKEN_ID = 2
TOKENIZER_FILES = ("vocab.json", "merges.txt")
CLIP_MAX_LENGTH = 77


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Shape of a CLIP text transformer.

    `projection_dim` is the width of `text_projection` when the checkpoint has one; transformers
    writes a projection_dim into every CLIP text config (SD's text encoder included), so whether
    the projection exists is decided by the checkpoint (`CLIPTextEncoder.with_projection`).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    hidden_act: str
    layer_norm_eps: float
    eos_token_id: int
    projection_dim: int | None = None

    def __post_init__(self):
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"CLIPTextConfig.hidden_act={self.hidden_act!r} is not supported; "
                             f"expected one of {sorted(_ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"CLIPTextConfig.hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")

    @classmethod
    def from_transformers(cls, cfg: Mapping[str, Any]) -> "CLIPTextConfig":
        """From a transformers config.json: a `CLIPTextConfig` (SD's `text_encoder/config.json`)
        or a full `CLIPModel` config (its `text_config`, and the top-level `projection_dim`)."""
        model_type = cfg.get("model_type")
        if model_type is not None and model_type not in _SUPPORTED_MODEL_TYPES:
            raise ValueError(f"config model_type={model_type!r} is not a CLIP text model; "
                             f"expected one of {_SUPPORTED_MODEL_TYPES}")
        if "text_config" in cfg or "text_config_dict" in cfg:
            # Old CLIPModel configs carry both; transformers lets text_config_dict win.
            text = {**(cfg.get("text_config") or {}), **(cfg.get("text_config_dict") or {})}
            projection_dim = cfg.get("projection_dim", text.get("projection_dim"))
        else:
            text = dict(cfg)
            projection_dim = text.get("projection_dim")
        values = {name: text.get(name, default)
                  for name, default in _TRANSFORMERS_TEXT_DEFAULTS.items()}
        return cls(**values, projection_dim=projection_dim)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class CLIPTextOutput(NamedTuple):
    """last_hidden_state [B, T, D] after final_layer_norm; pooled [B, D] (the EOS token's state);
    projected [B, P] = pooled @ text_projection, or None without a projection."""

    last_hidden_state: jax.Array
    pooled: jax.Array
    projected: jax.Array | None


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with optional key padding mask."""

    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        """x [B, T, D], key_mask [B, T] bool (True = real token) or None -> [B, T, D]."""
        cfg = self.config
        batch, length, _ = x.shape
        heads_shape = (batch, length, cfg.num_attention_heads, cfg.head_dim)

        def project(name):
            return nn.Dense(cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                            name=name)(x).reshape(heads_shape)

        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, N=1, T=1, S]
        attended = jax.nn.dot_product_attention(
            project("q_proj"), project("k_proj"), project("v_proj"), mask=mask, is_causal=True)
        return nn.Dense(cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="out_proj")(attended.reshape(batch, length, cfg.hidden_size))


class CLIPMLP(nn.Module):
    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, T, D]."""
        cfg = self.config
        x = nn.Dense(cfg.intermediate_size, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="fc1")(x)
        x = _ACTIVATIONS[cfg.hidden_act](x)
        return nn.Dense(cfg.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="fc2")(x)


def _layer_norm(config: CLIPTextConfig, dtype: Dtype, param_dtype: Dtype, name: str
                ) -> nn.LayerNorm:
    # Two-pass variance as torch computes it; the fast E[x^2]-E[x]^2 form loses digits.
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, dtype=dtype,
                        param_dtype=param_dtype, name=name)


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block."""

    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        """x [B, T, D] -> [B, T, D]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _layer_norm(self.config, name="layer_norm1", **kw)(x)
        x = x + CLIPAttention(self.config, name="self_attn", **kw)(h, key_mask)
        h = _layer_norm(self.config, name="layer_norm2", **kw)(x)
        return x + CLIPMLP(self.config, name="mlp", **kw)(h)


class CLIPEncoder(nn.Module):
    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.layers = [CLIPEncoderLayer(self.config, dtype=self.dtype, param_dtype=self.param_dtype)
                       for _ in range(self.config.num_hidden_layers)]

    def __call__(self, x: jax.Array, key_mask: jax.Array | None) -> jax.Array:
        """[B, T, D] -> [B, T, D]."""
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


class CLIPTextEmbeddings(nn.Module):
    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        """input_ids [B, T] -> token + position embeddings [B, T, D]."""
        cfg = self.config
        length = input_ids.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding", **kw)(input_ids)
        positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                             name="position_embedding", **kw)(jnp.arange(length)[None, :])
        return tokens + positions


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """[B, T] ids -> [B] position of the token whose state is pooled (transformers' rule)."""
    if eos_token_id == _LEGACY_EOS_TOKEN_ID:
        return jnp.argmax(input_ids, axis=-1)
    # First EOS, since the pad token may equal the EOS token.
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class CLIPTextTransformer(nn.Module):
    """transformers' `text_model`: embeddings, causal encoder, final_layer_norm, EOS pooling."""

    config: CLIPTextConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, key_mask: jax.Array | None
                 ) -> tuple[jax.Array, jax.Array]:
        """input_ids [B, T] -> (last_hidden_state [B, T, D], pooled [B, D])."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = CLIPTextEmbeddings(self.config, name="embeddings", **kw)(input_ids)
        x = CLIPEncoder(self.config, name="encoder", **kw)(x, key_mask)
        x = _layer_norm(self.config, name="final_layer_norm", **kw)(x)
        pooled = x[jnp.arange(x.shape[0]), eos_positions(input_ids, self.config.eos_token_id)]
        return x, pooled


class CLIPTextEncoder(nn.Module):
    """CLIP text encoder; with `with_projection`, also `text_projection` (no bias) as in
    `CLIPModel.get_text_features` / `CLIPTextModelWithProjection.text_embeds`."""

    config: CLIPTextConfig
    with_projection: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None
                 ) -> CLIPTextOutput:
        """input_ids [B, T] int; attention_mask [B, T] (1 = real token), ANDed with the causal mask.

        Returns CLIPTextOutput(last_hidden_state [B, T, D], pooled [B, D], projected [B, P] | None).
        """
        if self.with_projection and self.config.projection_dim is None:
            raise ValueError("CLIPTextEncoder(with_projection=True) needs config.projection_dim")
        key_mask = None if attention_mask is None else attention_mask.astype(bool)
        hidden, pooled = CLIPTextTransformer(self.config, dtype=self.dtype,
                                             param_dtype=self.param_dtype,
                                             name="text_model")(input_ids, key_mask)
        projected = None
        if self.with_projection:
            projected = nn.Dense(self.config.projection_dim, use_bias=False, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name="text_projection")(pooled)
        return CLIPTextOutput(hidden, pooled, projected)


_TEXT_MODEL_PREFIX = "text_model."
_TEXT_MODEL_CHILDREN = ("embeddings.", "encoder.", "final_layer_norm.")


def with_text_model_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Keys of a bare `CLIPTextModel` checkpoint under `text_model.`, as our params are named.

    transformers < 5 and the SD 1.5 release write `text_model.embeddings...`; transformers 5 saves
    a `CLIPTextModel` without the prefix (its `CLIPTextModelWithProjection`/`CLIPModel` keep it).
    Keys already prefixed, and any other keys, pass through unchanged.
    """
    return {(_TEXT_MODEL_PREFIX + key if key.startswith(_TEXT_MODEL_CHILDREN) else key): value
            for key, value in state_dict.items()}


class TokenizedText(NamedTuple):
    """input_ids [B, T] int32; attention_mask [B, T] int32 (1 on BOS..EOS, 0 on padding)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


class CLIPTextTokenizer:
    """transformers' CLIP BPE tokenizer, padded and truncated to a fixed length, numpy out."""

    def __init__(self, hf_tokenizer: Any, max_length: int = CLIP_MAX_LENGTH):
        self.hf_tokenizer = hf_tokenizer
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> TokenizedText:
        """texts (B strings) -> TokenizedText of [B, max_length] int32 arrays."""
        if isinstance(texts, str):
            raise TypeError("expected a sequence of strings, got a single string")
        encoded = self.hf_tokenizer(list(texts), padding="max_length", max_length=self.max_length,
                                    truncation=True, return_tensors="np")
        return TokenizedText(np.asarray(encoded["input_ids"], np.int32),
                             np.asarray(encoded["attention_mask"], np.int32))


def load_tokenizer(directory: str | os.PathLike, *, max_length: int = CLIP_MAX_LENGTH
                   ) -> CLIPTextTokenizer:
    """The CLIP tokenizer of a local directory (SD's `tokenizer/` or a CLIP model directory)."""
    import transformers  # pylint: disable=import-outside-toplevel  # only tokenization needs it

    directory = os.fspath(directory)
    missing = [name for name in TOKENIZER_FILES
               if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise FileNotFoundError(f"{directory} is not a CLIP tokenizer directory: missing "
                                f"{', '.join(missing)}")
    hf_tokenizer = transformers.CLIPTokenizer.from_pretrained(directory, local_files_only=True)
    return CLIPTextTokenizer(hf_tokenizer, max_length)
