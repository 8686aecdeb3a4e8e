"""Quality maps drawn over the image they describe, for people to look at.

The map shown is the mean of the quality map's channels (DP-IQA: 8 channels, 64 x 64), min-max
normalised per image: colours compare regions of one image, not images with each other (the score
does that). It is upsampled bilinearly to the image size and alpha-blended over the image.
Colouring uses a matplotlib colormap object only, so no plotting backend (and no display) is needed.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image

DEFAULT_COLORMAP = "inferno"
DEFAULT_ALPHA = 0.5


def map_intensity(quality_map: np.ndarray) -> np.ndarray:
    """Quality map [H, W, C] (NHWC, one image) -> [H, W] channel mean scaled to [0, 1].

    A constant map (e.g. all zeros after the ReLU) gives all zeros rather than a division by zero.
    """
    quality_map = np.asarray(quality_map, np.float32)
    if quality_map.ndim != 3:
        raise ValueError(f"expected a quality map [H, W, C], got shape {quality_map.shape}")
    mean = quality_map.mean(axis=-1)
    low, high = float(mean.min()), float(mean.max())
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError("quality map holds non-finite values")
    if high <= low:
        return np.zeros_like(mean)
    return (mean - low) / (high - low)


def colorize(intensity: np.ndarray, size: tuple[int, int],
             colormap: str = DEFAULT_COLORMAP) -> Image.Image:
    """Intensity [h, w] in [0, 1] -> RGB image of `size` = (width, height), bilinear upsampling."""
    upsampled = Image.fromarray(intensity.astype(np.float32)).resize(
        size, resample=Image.BILINEAR)
    values = np.clip(np.asarray(upsampled), 0.0, 1.0)
    rgba = colormaps[colormap](values, bytes=True)
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]))


def overlay(image: Image.Image | np.ndarray, quality_map: np.ndarray, *,
            alpha: float = DEFAULT_ALPHA, colormap: str = DEFAULT_COLORMAP) -> Image.Image:
    """The quality map as a heatmap blended over `image`.

    Args:
      image: the image scored: an RGB `PIL.Image`, or an array [H, W, 3] uint8 or float in [0, 1]
        (e.g. the 512 x 512 model input).
      quality_map: [h, w, C] for that image (NHWC, as the model returns it).
      alpha: heatmap opacity in [0, 1].
      colormap: a matplotlib colormap name.

    Returns:
      An RGB image of the image's size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    base = _as_rgb_image(image)
    heat = colorize(map_intensity(quality_map), base.size, colormap)
    return Image.blend(base, heat, alpha)


def _as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an image array [H, W, 3], got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(array)


def save_overlay(path: str, image: Image.Image | np.ndarray, quality_map: np.ndarray, *,
                 alpha: float = DEFAULT_ALPHA, colormap: str = DEFAULT_COLORMAP) -> None:
    """Writes `overlay(...)` as a PNG file."""
    overlay(image, quality_map, alpha=alpha, colormap=colormap).save(path, format="PNG")
