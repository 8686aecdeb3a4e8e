"""The 1485 DP-IQA text prompts and their frozen CLIP embeddings.

The vocabularies and their order are those of the authors' `gene_text_embedding.py`
(github.com/RomGai/DP-IQA), which copies LIQE's lists (github.com/zwx8981/LIQE, `demo.py`:
`dists`, `scenes`, `qualitys`). Scene names go into the prompt as written there (`still_life`
keeps its underscore).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from dpiqa_jax.sd.clip_text import CLIPTextEncoder, TokenizedText

QUALITIES = ("bad", "poor", "fair", "good", "perfect")
SCENES = ("animal", "cityscape", "human", "indoor", "landscape", "night", "plant", "still_life",
          "others")
# LIQE's 33 distortion types (`dists` in LIQE demo.py and DP-IQA gene_text_embedding.py).
DISTORTIONS = (
    "jpeg2000 compression", "jpeg compression", "white noise", "gaussian blur", "fastfading",
    "fnoise", "contrast", "lens", "motion", "diffusion", "shifting", "color quantization",
    "oversaturation", "desaturation", "white with color", "impulse", "multiplicative",
    "white noise with denoise", "brighten", "darken", "shifting the mean", "jitter",
    "noneccentricity patch", "pixelate", "quantization", "color blocking", "sharpness",
    "realistic blur", "realistic noise", "underexposure", "overexposure",
    "realistic contrast change", "other realistic",
)
PROMPT_TEMPLATE = "a photo of a {scene} with {distortion} artifacts, which is of {quality} quality"
NUM_PROMPTS = len(QUALITIES) * len(SCENES) * len(DISTORTIONS)

CLIP_PROJECTED = "clip_projected"
MEAN_POOLED = "mean_pooled"
EMBEDDING_MODES = (CLIP_PROJECTED, MEAN_POOLED)

Tokenize = Callable[[Sequence[str]], TokenizedText]


def dpiqa_prompts() -> list[str]:
    """The K = 1485 prompts in the authors' order: quality (outer) x scene x distortion (inner)."""
    return [PROMPT_TEMPLATE.format(scene=scene, distortion=distortion, quality=quality)
            for quality, scene, distortion in itertools.product(QUALITIES, SCENES, DISTORTIONS)]


def prompt_list_hash(prompts: Sequence[str]) -> str:
    """sha256 (hex) of the prompts joined by newlines, to tie cached embeddings to their list."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


def _embedding_function(encoder: CLIPTextEncoder, mode: str
                        ) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    if mode not in EMBEDDING_MODES:
        raise ValueError(f"embedding mode {mode!r} is not one of {EMBEDDING_MODES}")
    if mode == CLIP_PROJECTED and not encoder.with_projection:
        raise ValueError(f"mode {CLIP_PROJECTED!r} needs a checkpoint with text_projection (a CLIP "
                         f"model directory); this text encoder has none, use {MEAN_POOLED!r}")

    def embed(params, input_ids, attention_mask):
        out = encoder.apply({"params": params}, input_ids, attention_mask)
        if mode == CLIP_PROJECTED:
            return out.projected.astype(jnp.float32)
        weights = attention_mask.astype(jnp.float32)[:, :, None]
        summed = jnp.sum(out.last_hidden_state.astype(jnp.float32) * weights, axis=1)
        return summed / jnp.sum(weights, axis=1)

    return jax.jit(embed)


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Repeats the last row up to `rows` so every batch has one shape (one compilation)."""
    return np.concatenate([array, np.repeat(array[-1:], rows - len(array), axis=0)])


def embed_prompts(encoder: CLIPTextEncoder, params: Any, tokenize: Tokenize,
                  prompts: Sequence[str], mode: str = CLIP_PROJECTED, batch_size: int = 64,
                  *, progress: bool = False) -> np.ndarray:
    """Embeds prompts with the CLIP text encoder; returns [K, D] float32.

    Args:
      encoder: the Flax CLIP text encoder.
      params: its params (the tree under `'params'`, as `load_clip_text_encoder` returns).
      tokenize: strings -> TokenizedText (ids and attention mask, [B, T]).
      prompts: K strings.
      mode: `clip_projected`: the EOS token's final state through `text_projection`
        (`CLIPModel.get_text_features`, what the authors' code caches), D = projection_dim.
        `mean_pooled`: the mean of the final-layer-norm token states over the real tokens
        (attention mask 1: BOS, the prompt's tokens and EOS; padding excluded), D = hidden_size.
      batch_size: prompts per forward pass.
      progress: show a progress bar over batches.
    """
    if not prompts:
        raise ValueError("no prompts to embed")
    embed = _embedding_function(encoder, mode)
    starts = range(0, len(prompts), batch_size)
    chunks = []
    for start in tqdm.tqdm(starts, desc=f"embedding prompts ({mode})", disable=not progress):
        batch = prompts[start:start + batch_size]
        tokens = tokenize(batch)
        vectors = embed(params, _pad_rows(tokens.input_ids, batch_size),
                        _pad_rows(tokens.attention_mask, batch_size))
        chunks.append(np.asarray(vectors)[:len(batch)])
    return np.concatenate(chunks).astype(np.float32)


def sidecar_path(embeddings_path: str | os.PathLike) -> str:
    """`prompts.npy` -> `prompts.json`: the metadata file written beside the embeddings."""
    return os.path.splitext(os.fspath(embeddings_path))[0] + ".json"


def save_prompt_embeddings(path: str | os.PathLike, embeddings: np.ndarray,
                           prompts: Sequence[str], **metadata: Any) -> str:
    """Writes embeddings [K, D] (float32 .npy) and the JSON sidecar; returns the sidecar path.

    The sidecar holds the prompt count and hash plus `metadata` (model directory, mode, dtype...).
    """
    if embeddings.shape[0] != len(prompts):
        raise ValueError(f"{embeddings.shape[0]} embeddings for {len(prompts)} prompts")
    np.save(path, embeddings.astype(np.float32))
    sidecar = sidecar_path(path)
    record = dict(metadata, prompt_count=len(prompts), prompt_sha256=prompt_list_hash(prompts),
                  shape=list(embeddings.shape))
    with open(sidecar, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    return sidecar


def _npy_header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data start) from a .npy header, read without touching the data."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} is not supported")
        except (ValueError, SyntaxError, EOFError, TypeError) as err:
            raise ValueError(f"{path}: not a readable .npy file ({err})") from None
        return shape, dtype, f.tell()


def read_prompt_array(path: str | os.PathLike, *, dim: int | None = None,
                      rows: int | None = None) -> np.ndarray:
    """Prompt embeddings float32 [K, D] from a .npy, its header checked before anything is read.

    The declared shape must be 2-D (D = `dim`, K = `rows` when given) and the data it declares
    must be exactly what the file holds, so a header declaring 10^12 rows is refused instead of
    allocated. Pickled (object) arrays are never loaded.

    Raises:
      ValueError: naming the file and what is wrong.
    """
    path = os.fspath(path)
    shape, dtype, data_start = _npy_header(path)
    expected = f"float32 [{rows if rows is not None else 'K'}, {dim if dim is not None else 'D'}]"
    if (dtype != np.float32 or len(shape) != 2 or (dim is not None and shape[1] != dim)
            or (rows is not None and shape[0] != rows)):
        raise ValueError(f"{path}: prompt embeddings must be {expected} (K = {NUM_PROMPTS} for "
                         f"the authors' prompts), got {dtype} {list(shape)}")
    declared = shape[0] * shape[1] * dtype.itemsize
    held = os.path.getsize(path) - data_start
    if declared != held:
        raise ValueError(f"{path}: the header declares {list(shape)} float32 ({declared} bytes), "
                         f"the file holds {held} bytes of data")
    return np.load(path, allow_pickle=False)


def load_prompt_embeddings(path: str | os.PathLike, prompts: Sequence[str] | None = None
                           ) -> tuple[np.ndarray, dict[str, Any]]:
    """Reads embeddings [K, D] and their sidecar, checking they belong to `prompts`
    (default: the DP-IQA list)."""
    prompts = dpiqa_prompts() if prompts is None else prompts
    sidecar = sidecar_path(path)
    if not os.path.isfile(sidecar):
        raise FileNotFoundError(f"{sidecar} (the metadata of {path}) is missing")
    with open(sidecar, encoding="utf-8") as f:
        metadata = json.load(f)
    expected_hash = prompt_list_hash(prompts)
    if metadata.get("prompt_sha256") != expected_hash:
        raise ValueError(f"{path} was embedded from another prompt list (sha256 "
                         f"{metadata.get('prompt_sha256')}, expected {expected_hash})")
    return read_prompt_array(path, rows=len(prompts)), metadata
