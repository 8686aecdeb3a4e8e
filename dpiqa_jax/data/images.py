"""Image decoding and model-input preprocessing (PIL + NumPy, no TensorFlow).

Public API, shared by the input pipeline and the scoring CLI:

* `load_rgb(path_or_bytes)` decodes a file into an 8-bit RGB `PIL.Image`.
* `resize_image(img, config)` resizes (and crops) it to the model's input size.
* `to_float_array(img, value_range)` turns it into a float32 `[H, W, 3]` array.
* `resize_for_model(img, config)` = `resize_image` then `to_float_array`.
* `preprocess(path_or_bytes, config)` = all of the above.

Decoding rules (every mode PIL can produce ends as 8-bit RGB, or raises `ImageDecodeError`):

* EXIF orientation is applied (`ImageOps.exif_transpose`), as a viewer shows the photo.
* Multi-frame files (GIF, MPO, multi-page TIFF) use their first frame.
* `1`, `L`: grey replicated to R, G and B.
* `LA`, `La`, `RGBA`, `RGBa`, `PA`, and palette/grey/RGB images with a `transparency` entry:
  alpha-composited on opaque white, as a web page shows them to raters.
* `P`: palette expanded to RGB. `CMYK`: PIL's conversion (no ICC colour management).
  `YCbCr`, `LAB`, `HSV`, `RGBX`: PIL's conversion to RGB.
* `I;16*` (16-bit grey), and `I` holding values in [0, 65535]: `v >> 8` (the top 8 bits), then
  grey to RGB. Other `I` values and float images (`F`) are rejected: no 8-bit rendering of them
  is faithful without knowing how the file was made.

Resizing matches the reference (torchvision `Resize` on PIL images = `PIL.Image.resize(...,
BILINEAR)`, antialiased when shrinking). An image already at the target size is not resampled.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from typing import Literal, Union

import numpy as np
from PIL import Image, ImageOps

ImageSource = Union[str, os.PathLike, bytes]
ResizeMode = Literal["squash", "keep_aspect_crop"]

# 8192 x 8192: far above every IQA dataset (SPAQ's largest photos are ~16 MP), small enough that
# one decoded image cannot exhaust host memory.
DEFAULT_MAX_PIXELS = 1 << 26

_GREY_MODES = ("1", "L")
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")
_PIL_CONVERTIBLE_MODES = ("P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


# How PIL names the stream it read in its messages ("cannot identify image file <_io.BytesIO object
# at 0x7f...>"): meaningless to a user, so it is replaced by the input's name.
_STREAM_REPR = re.compile(r"<_io\.\w+ (?:object at 0x[0-9a-fA-F]+|name=[^>]*)>")


def without_stream_repr(message: str, label: str) -> str:
    """`message` with Python stream reprs replaced by `label` (how the user named the input)."""
    return _STREAM_REPR.sub(lambda _: label, message)


class ImageDecodeError(ValueError):
    """An image could not be decoded into RGB; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """How encoded images become model inputs.

    Attributes:
      height, width: output size in pixels.
      resize_mode: "squash" resizes the whole image to (height, width) ignoring its aspect ratio
        (DP-IQA's protocol); "keep_aspect_crop" scales it, aspect kept, to cover (height, width)
        and then crops.
      value_range: (low, high) that pixel values 0 and 255 map to: (0, 1) is DP-IQA's input
        convention, (-1, 1) the Stable Diffusion VAE's.
      max_pixels: decoded images with more pixels are rejected (decompression-bomb guard).
    """

    height: int = 512
    width: int = 512
    resize_mode: ResizeMode = "squash"
    value_range: tuple[float, float] = (0.0, 1.0)
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"ImageConfig: height and width must be positive, got "
                             f"{self.height}x{self.width}")
        if self.resize_mode not in ("squash", "keep_aspect_crop"):
            raise ValueError(f"ImageConfig.resize_mode must be 'squash' or 'keep_aspect_crop', "
                             f"got {self.resize_mode!r}")
        low, high = self.value_range
        if not low < high:
            raise ValueError(f"ImageConfig.value_range must be (low, high) with low < high, got "
                             f"{self.value_range!r}")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return (self.height, self.width)


def describe_source(source: ImageSource, name: str | None = None) -> str:
    """How to call `source` in error messages: `name`, else the path, else the byte count."""
    if name is not None:
        return name
    if isinstance(source, bytes):
        return f"<{len(source)} encoded bytes>"
    return os.fspath(source)


def load_rgb(source: ImageSource, *, name: str | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decodes an image file into a loaded 8-bit RGB image (rules in the module docstring).

    Args:
      source: a file path or the file's encoded bytes.
      name: how to call the image in error messages (default: the path).
      max_pixels: images with more pixels are rejected before their pixels are decoded.

    Raises:
      ImageDecodeError: not a decodable image, too large, or a pixel format without a faithful
        RGB rendering.
    """
    label = describe_source(source, name)
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream) as img:
            _check_pixel_count(img, max_pixels, label)
            img.load()
            oriented = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        if isinstance(e, ImageDecodeError):
            raise
        # PIL's messages do not say which file failed; ours must.
        raise ImageDecodeError(f"{label}: cannot decode image ({type(e).__name__}: "
                               f"{without_stream_repr(str(e), label)})") from e
    return to_rgb(oriented, name=label)


def _check_pixel_count(img: Image.Image, max_pixels: int, label: str) -> None:
    pixels = img.width * img.height
    if pixels > max_pixels:
        raise ImageDecodeError(
            f"{label}: {img.width}x{img.height} = {pixels} pixels exceeds the limit of "
            f"{max_pixels} (decompression-bomb guard; raise max_pixels if the image is genuine)")


def to_rgb(img: Image.Image, *, name: str = "<image>") -> Image.Image:
    """Converts a decoded image of any supported PIL mode to 8-bit RGB."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _ALPHA_MODES or "transparency" in img.info:
        return _composite_on_white(img.convert("RGBA"))
    if mode in _GREY_MODES or mode in _PIL_CONVERTIBLE_MODES:
        return img.convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(img, name)
    raise ImageDecodeError(f"{name}: unsupported pixel format (PIL mode {mode!r}); expected an "
                           f"8-bit, palette, CMYK or 16-bit integer image")


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _sixteen_bit_to_rgb(img: Image.Image, name: str) -> Image.Image:
    values = np.asarray(img).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 0xFFFF):
        raise ImageDecodeError(
            f"{name}: integer image (PIL mode {img.mode!r}) has values in [{values.min()}, "
            f"{values.max()}], outside the 16-bit range [0, 65535]; no 8-bit rendering is defined")
    return Image.fromarray((values >> 8).astype(np.uint8), mode="L").convert("RGB")


def resize_image(img: Image.Image, config: ImageConfig,
                 crop_fraction: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
    """Resizes an RGB image to `config.size` following `config.resize_mode`.

    Args:
      img: RGB image of any size.
      config: target size and mode.
      crop_fraction: (fy, fx) in [0, 1]: where the "keep_aspect_crop" window sits in the scaled
        image; (0.5, 0.5) is a centre crop, (0, 0) the top-left corner. Random crops pass uniform
        draws. Ignored by "squash".

    Returns:
      An RGB image of width `config.width` and height `config.height`.
    """
    if config.resize_mode == "squash":
        return _bilinear_resize(img, config.size)
    scaled = _bilinear_resize(img, covering_size(img.size, config.size))
    return scaled.crop(_crop_box(scaled.size, config.size, crop_fraction))


def _bilinear_resize(img: Image.Image, target_hw: tuple[int, int]) -> Image.Image:
    height, width = target_hw
    if img.size == (width, height):
        return img
    return img.resize((width, height), resample=Image.BILINEAR)


def covering_size(image_wh: tuple[int, int], target_hw: tuple[int, int]) -> tuple[int, int]:
    """Smallest (height, width) with the image's aspect ratio that covers `target_hw`."""
    width, height = image_wh
    target_h, target_w = target_hw
    if width * target_h >= height * target_w:  # Relatively wider than the target: fit height.
        return target_h, max(target_w, round(width * target_h / height))
    return max(target_h, round(height * target_w / width)), target_w


def _crop_box(image_wh: tuple[int, int], target_hw: tuple[int, int],
              crop_fraction: tuple[float, float]) -> tuple[int, int, int, int]:
    fy, fx = crop_fraction
    if not (0.0 <= fy <= 1.0 and 0.0 <= fx <= 1.0):
        raise ValueError(f"crop_fraction must lie in [0, 1] x [0, 1], got {crop_fraction}")
    width, height = image_wh
    target_h, target_w = target_hw
    top = round((height - target_h) * fy)
    left = round((width - target_w) * fx)
    return left, top, left + target_w, top + target_h


def to_float_array(img: Image.Image,
                   value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """RGB image -> float32 [H, W, 3]; pixel value 0 maps to `low`, 255 to `high`."""
    # Divide first, as torchvision's ToTensor does, so (0, 1) is bit-identical to the reference.
    unit = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    low, high = value_range
    if (low, high) == (0.0, 1.0):
        return unit
    return unit * np.float32(high - low) + np.float32(low)


def resize_for_model(img: Image.Image, config: ImageConfig,
                     crop_fraction: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """RGB image -> model input, float32 [config.height, config.width, 3]."""
    return to_float_array(resize_image(img, config, crop_fraction), config.value_range)


def preprocess(source: ImageSource, config: ImageConfig, *, name: str | None = None,
               crop_fraction: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """Encoded image (path or bytes) -> float32 [config.height, config.width, 3]."""
    img = load_rgb(source, name=name, max_pixels=config.max_pixels)
    return resize_for_model(img, config, crop_fraction)
