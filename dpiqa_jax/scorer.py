"""Scoring images with a finished DP-IQA model: the Python API behind `python -m launch.score`.

    scorer = Scorer.load("runs/koniq/best_model")    # a bundle, a workdir or an exported file
    scorer.score(["a.jpg", pil_image, array])         # np.ndarray [N] on `scorer.score_range`
    scorer.score(batch)                               # an array [N, H, W, 3] is N images
    scorer.predict(images, return_maps=True)          # Predictions(score, raw, quality_map)
    for result in scorer.score_files(paths): ...      # one FileResult per path, errors included

Command-line runs (inputs expanded, rows and map files written) are `dpiqa_jax.score_files`'.

Scores. The model's head predicts MOS / `mos_scale` (the authors train on MOS / 100); `raw` is that
head output and `score = raw * mos_scale`, nominally on `score_range` (bundle metadata
`score_range`, default (0, mos_scale)). A score outside that range is kept as computed. Higher is
better (`lower_better = False`, as pyiqa). A bundle that does not record `mos_scale` is refused
unless the caller passes one: a score on an unknown scale is not trusted. A score that comes out
NaN or infinite is an error (`NonFiniteScoreError`; an error result in `score_files`).

Inputs. Paths are opened only if they are regular files no larger than `max_file_bytes` (a FIFO,
a device, a socket, a directory, a symlink loop or a dangling link is refused without being
opened, and a file is opened non-blocking, so nothing can hang the run), then decoded by
`dpiqa_jax.data.images.load_rgb` (EXIF orientation applied; grey, palette, alpha, CMYK and 16-bit
images converted as documented there; a pixel limit against decompression bombs). Images smaller
than `min_side` pixels on a side are refused, and everything is resized to the model's input size
with PIL bilinear (torchvision's `Resize` on PIL images; an image already at that size is not
resampled). PIL images take the same path after decoding (EXIF orientation included, so
`score(Image.open(p))` equals `score(p)`). NumPy arrays [H, W, 3] (or [H, W] grey, or a batch
[N, H, W, 3]) are uint8, or float in [0, 1]; float arrays are resized channel by channel in PIL's
float mode with the same filter, so they are not quantised to 8 bits. Error messages name a path
as given, and other inputs by their position in the call (`input 2 (ndarray)`).

Batches and determinism. Images are scored `batch_size` at a time; a shorter batch is padded only
to the next of 1, 2, 4, ... `batch_size` (`inference.bucket_sizes`), and inside the compiled
program the images pass through the model one at a time, so an image's score is bit-identical
whatever its batch neighbours, its position, the padding and `batch_size` (on one machine, compute
dtype and library version; tested on CPU). The teacher's attention runs in query chunks
(`inference.INFERENCE_QUERY_CHUNK`), and weights are loaded tensor by tensor straight into the
compute dtype on the device. The teacher uses the posterior mean by default; `latent="sample"`
draws the posterior sample from a key derived from `seed` and the image's pixels, so a sampled
score is just as repeatable.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import os
import stat
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Union

import jax.numpy as jnp
import numpy as np
import tqdm
from PIL import Image, ImageOps

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax import inference
from dpiqa_jax.data import images as image_lib
from dpiqa_jax.eval import rows as rows_lib
from dpiqa_jax.models.teacher import LATENT_MODES

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

# Below this, an image has too few pixels for a quality judgement (and a 1x1 file is more likely a
# tracking pixel or a placeholder than a photo).
MIN_IMAGE_SIDE = 8
# Larger files are refused before a byte is read: an 8192 x 8192 photo (the pixel limit) stores
# in well under 256 MiB in every format we decode, uncompressed 16-bit TIFF aside.
DEFAULT_MAX_FILE_BYTES = 1 << 28
DEFAULT_BATCH_SIZE = 8
DEFAULT_IMAGE_SIZE = inference.DEFAULT_IMAGE_SIZE
RESULT_COLUMNS = rows_lib.RESULT_COLUMNS
OUTPUT_FORMATS = rows_lib.OUTPUT_FORMATS
# Re-exported: the model-loading API that callers of the scorer also use.
resolve_model = inference.resolve_model
ScoreScale = inference.ScoreScale
BundleError = bundle_lib.BundleError


class InputError(ValueError):
    """An input cannot be scored; the message names it and says why."""


class NonFiniteScoreError(ValueError):
    """The model produced NaN or infinity for an input; the message names it."""


# --------------------------------------------------------------------------- reading files

_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind_of(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def _stat_error(path: str, err: OSError) -> InputError:
    if err.errno == errno.ELOOP:
        return InputError(f"{path}: symbolic link loop")
    if err.errno == errno.ENOENT:
        if os.path.lexists(path):
            return InputError(f"{path}: broken symbolic link (its target does not exist)")
        return InputError(f"{path}: no such file")
    return InputError(f"{path}: cannot read file ({type(err).__name__}: {err.strerror or err})")


def _check_regular(path: str, info: os.stat_result, max_bytes: int) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: is a directory, expected an image file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: {_kind_of(info.st_mode)}, not a regular file; not opened")
    if info.st_size > max_bytes:
        raise InputError(f"{path}: file is {info.st_size} bytes, larger than the limit of "
                         f"{max_bytes} (max_file_bytes)")


def read_file(path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; anything else raises `InputError`.

    The path is checked before it is opened, opened non-blocking (a FIFO swapped in after the
    check cannot block) and checked again on the open descriptor; at most `max_bytes` + 1 bytes are
    read, so a file that grows meanwhile is refused too.
    """
    try:
        _check_regular(path, os.stat(path), max_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise _stat_error(path, err) from err
    try:
        _check_regular(path, os.fstat(fd), max_bytes)
        with open(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise _stat_error(path, err) from err
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InputError(f"{path}: file grew beyond the limit of {max_bytes} bytes while read")
    return data


# --------------------------------------------------------------------------- preprocessing


def _check_min_side(width: int, height: int, min_side: int, label: str) -> None:
    if width < min_side or height < min_side:
        raise InputError(f"{label}: image is {width}x{height} pixels, smaller than the minimum "
                         f"{min_side}x{min_side}")


def _rgb_image_to_input(img: Image.Image, config: image_lib.ImageConfig, min_side: int,
                        label: str) -> np.ndarray:
    _check_min_side(img.width, img.height, min_side, label)
    return image_lib.resize_for_model(img, config)


def _array_to_input(array: np.ndarray, config: image_lib.ImageConfig, min_side: int,
                    label: str) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise InputError(f"{label}: expected an image array [H, W, 3] or [H, W], got shape "
                         f"{array.shape}")
    height, width = array.shape[:2]
    _check_min_side(width, height, min_side, label)
    if height * width > config.max_pixels:
        raise InputError(f"{label}: {width}x{height} pixels exceeds the limit of "
                         f"{config.max_pixels}")
    if array.dtype == np.uint8:
        return _rgb_image_to_input(Image.fromarray(array), config, min_side, label)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{label}: image arrays must be uint8 or float in [0, 1], got dtype "
                         f"{array.dtype}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{label}: float image values must lie in [0, 1], got NaN or infinity")
    if array.min() < 0.0 or array.max() > 1.0:
        raise InputError(f"{label}: float image values must lie in [0, 1], got range "
                         f"[{array.min()}, {array.max()}]")
    return _resize_float(array, config)


def _resize_float(array: np.ndarray, config: image_lib.ImageConfig) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> [height, width, 3], PIL bilinear per channel in float mode."""
    if array.shape[:2] == config.size:
        return array
    target = (config.width, config.height)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(array[:, :, c])).resize(
        target, resample=Image.BILINEAR)) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.float32)


def prepare_image(source: ImageInput, config: image_lib.ImageConfig, *,
                  min_side: int = MIN_IMAGE_SIDE, label: str | None = None,
                  max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> np.ndarray:
    """Any supported input -> model input float32 [config.height, config.width, 3] in [0, 1].

    `label` names the input in messages (default: the path as given, else its type).

    Raises:
      InputError: (a subclass of ValueError) naming the input and the reason.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = label or path
        data = read_file(path, max_file_bytes)
        try:
            img = image_lib.load_rgb(data, name=label, max_pixels=config.max_pixels)
        except image_lib.ImageDecodeError as err:
            raise InputError(str(err)) from err
        return _rgb_image_to_input(img, config, min_side, label)
    label = label or f"<{type(source).__name__}>"
    if isinstance(source, Image.Image):
        return _rgb_image_to_input(_pil_to_rgb(source, label), config, min_side, label)
    if isinstance(source, np.ndarray):
        return _array_to_input(source, config, min_side, label)
    raise InputError(f"{label}: cannot score a {type(source).__name__}; expected a path, a PIL "
                     f"image or a numpy array")


def _pil_to_rgb(img: Image.Image, label: str) -> Image.Image:
    """A caller's PIL image, oriented and converted as a decoded file is (scored as its path)."""
    try:
        return image_lib.to_rgb(ImageOps.exif_transpose(img), name=label)
    except image_lib.ImageDecodeError as err:
        raise InputError(str(err)) from err
    except (OSError, ValueError) as err:  # a lazily loaded image whose file is broken
        raise InputError(f"{label}: cannot load image ({type(err).__name__}: "
                         f"{image_lib.without_stream_repr(str(err), label)})") from err


def image_seed(model_input: np.ndarray) -> int:
    """A 32-bit number fixed by the image's pixels: its posterior-sample key (latent="sample")."""
    return zlib.crc32(np.ascontiguousarray(model_input, np.float32).tobytes())


def labelled_inputs(images: ImageInput | Iterable[ImageInput]) -> list[tuple[ImageInput, str]]:
    """The inputs of one call, each with how messages name it: a path as given, anything else by
    its position (`input 2 (ndarray)`). An array [N, H, W, 3] is N inputs."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    return [(image, os.fspath(image) if isinstance(image, (str, os.PathLike))
             else f"input {index} ({type(image).__name__})")
            for index, image in enumerate(images)]


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Scores of N images.

    Attributes:
      score: [N] on the model's MOS scale (`Scorer.score_range`).
      raw: [N] the head output (MOS / mos_scale).
      quality_map: [N, h, w, C] (channel-last; 64 x 64 x 8 for DP-IQA) when asked for, else None.
    """

    score: np.ndarray
    raw: np.ndarray
    quality_map: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class FileResult:
    """The outcome for one input path: a score, or the reason there is none.

    `quality_map` [h, w, C] and `model_input` [H, W, 3] are kept only when maps were asked for;
    `map_path` is the map file written for it (set by `score_to_output`).
    """

    path: str
    score: float | None = None
    raw: float | None = None
    error: str | None = None
    quality_map: np.ndarray | None = None
    model_input: np.ndarray | None = None
    map_path: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        return "ok" if self.ok else "error"

    def row(self) -> dict[str, Any]:
        """The output row: `RESULT_COLUMNS` (score/raw None and error set for failures)."""
        return {"path": self.path, "score": self.score, "raw": self.raw, "status": self.status,
                "error": self.error, "map_path": self.map_path}


def _non_finite_message(label: str, raw: float) -> str:
    return f"{label}: the model's score is not finite ({raw}); the model or its weights are broken"


# --------------------------------------------------------------------------- the scorer


class Scorer:
    """A loaded model that scores images; see the module docstring for the rules."""

    lower_better = False

    def __init__(self, model_bundle: bundle_lib.Bundle, *, source: str = "<bundle>",
                 batch_size: int = DEFAULT_BATCH_SIZE, latent: str = "mean", seed: int = 0,
                 dtype: Any = jnp.float32, max_pixels: int = image_lib.DEFAULT_MAX_PIXELS,
                 min_side: int = MIN_IMAGE_SIDE, mos_scale: float | None = None,
                 image_size: int | None = None, preprocess_workers: int | None = None,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, devices: int = 1):
        """Prepares `model_bundle` for scoring.

        Args:
          model_bundle: the model (see `inference.resolve_model` / `Scorer.load`).
          source: where it came from, for messages.
          batch_size: most images per device call (a shorter batch is padded to its bucket).
          latent: teacher only: "mean" (deterministic posterior mean, default) or "sample".
          seed: base seed of the per-image posterior samples (latent="sample").
          dtype: compute dtype (float32, or bfloat16 for faster approximate scores).
          max_pixels: decoded images above this pixel count are refused (decompression bombs).
          min_side: images narrower or lower than this are refused.
          mos_scale: override of the bundle's `mos_scale` (required when it records none).
          image_size: model input side; default the bundle's `image_size` metadata, else 512.
          preprocess_workers: threads decoding images (default: min(batch_size, CPU count)).
          max_file_bytes: larger image files are refused before they are read.
          devices: a student's batches are split over this many local devices (on a CPU,
            after `jax.config.update("jax_num_cpu_devices", n)`); a teacher uses one.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if latent not in LATENT_MODES:
            raise ValueError(f"latent must be one of {LATENT_MODES}, got {latent!r}")
        if min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {min_side}")
        if max_file_bytes < 1:
            raise ValueError(f"max_file_bytes must be >= 1, got {max_file_bytes}")
        if devices < 1 or (devices > 1 and model_bundle.kind != "student"):
            raise ValueError(f"devices must be >= 1 and only a student is split over several; "
                             f"got {devices} for a {model_bundle.kind}")
        self.kind = model_bundle.kind
        self.source = source
        self.metadata = dict(model_bundle.metadata)
        self.batch_size = batch_size
        self.latent = latent
        self.min_side = min_side
        self.max_file_bytes = max_file_bytes
        self.scale = inference.ScoreScale.from_metadata(self.metadata, mos_scale, source)
        self.mos_scale, self.score_range = self.scale.mos_scale, self.scale.score_range
        side = int(image_size or model_bundle.image_size)
        self.image_config = image_lib.ImageConfig(height=side, width=side, max_pixels=max_pixels)
        self.module = inference.build_module(model_bundle, latent=latent, dtype=dtype)
        self._variables = inference.cast_floats(inference.inference_variables(model_bundle),
                                                dtype)
        self._prompts = (None if model_bundle.prompts is None
                         else inference.to_device(model_bundle.prompts, dtype))
        self._devices = devices
        self._student_forward = (inference.student_forward(self.module, self._variables,
                                                           devices)
                                 if self.kind == "student" else None)
        self._seed = seed
        self._workers = preprocess_workers or max(1, min(batch_size, os.cpu_count() or 1))

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs: Any) -> "Scorer":
        """A scorer for a bundle directory, a training workdir or an exported .safetensors file.

        Keyword arguments are `Scorer.__init__`'s. Every weight goes to the device in the compute
        dtype as it is read, so the host never holds a second copy of the model; the bundle's
        extras (tensors of an imported checkpoint the model does not use) are not read.
        """
        dtype = kwargs.get("dtype", jnp.float32)
        model_bundle, resolved = inference.resolve_model(
            path, place=lambda array: inference.to_device(array, dtype), extras=False)
        return cls(model_bundle, source=resolved, **kwargs)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model input [H, W, 3] every image is resized to."""
        return (self.image_config.height, self.image_config.width, 3)

    # ------------------------------------------------------------------ arrays -> predictions

    def _dispatch(self, arrays: Sequence[np.ndarray]):
        """Starts one batch on the device (asynchronously); 1 <= len(arrays) <= batch_size.

        The batch is padded to its bucket with zeros; the padding rows are dropped by the caller.
        """
        size = inference.bucket_size(len(arrays), self.batch_size, self._devices)
        batch = np.zeros((size,) + self.input_shape, np.float32)
        seeds = np.zeros((size,), np.uint32)
        sample = self.latent == "sample"
        for row, array in enumerate(arrays):
            batch[row] = array
            seeds[row] = image_seed(array) if sample else 0
        if self._student_forward is not None:
            return self._student_forward(batch)
        return inference.forward(self._variables, self._prompts, batch, seeds,
                                 np.uint32(self._seed), module=self.module, sample_latent=sample)

    def predict_arrays(self, arrays: Sequence[np.ndarray], return_maps: bool) -> Predictions:
        """Model inputs [H, W, 3] -> predictions (non-finite scores included, unchecked)."""
        raws, maps = [], []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start:start + self.batch_size]
            raw, quality_map = self._dispatch(chunk)
            raws.append(np.asarray(raw, np.float32)[:len(chunk)])
            if return_maps:
                maps.append(np.asarray(quality_map, np.float32)[:len(chunk)])
        raw = np.concatenate(raws) if raws else np.zeros((0,), np.float32)
        quality_map = (np.concatenate(maps) if maps else None) if return_maps else None
        return Predictions(score=self._scaled(raw), raw=raw, quality_map=quality_map)

    def _scaled(self, raw: np.ndarray) -> np.ndarray:
        """Head outputs -> scores on the MOS scale (float32, the same in every API)."""
        return raw * np.float32(self.mos_scale)

    def prepare(self, image: ImageInput, label: str | None = None) -> np.ndarray:
        """One input -> the model input [H, W, 3] float32; raises `InputError` naming it."""
        return prepare_image(image, self.image_config, min_side=self.min_side, label=label,
                             max_file_bytes=self.max_file_bytes)

    def predict(self, images: ImageInput | Iterable[ImageInput], *,
                return_maps: bool = False) -> Predictions:
        """Scores and raw head outputs (and quality maps) of images; raises on the first bad one.

        Args:
          images: one input, a sequence of paths, PIL images and arrays, or an array
            [N, H, W, 3] (module docstring).
          return_maps: also return the quality maps [N, h, w, C].

        Raises:
          InputError: an input cannot be scored. NonFiniteScoreError: the model gave NaN or inf.
        """
        labelled = labelled_inputs(images)
        arrays = [self.prepare(image, label) for image, label in labelled]
        predictions = self.predict_arrays(arrays, return_maps)
        bad = [(label, raw) for (_, label), raw in zip(labelled, predictions.raw)
               if not np.isfinite(raw)]
        if bad:
            raise NonFiniteScoreError("; ".join(_non_finite_message(*b) for b in bad[:5]))
        return predictions

    def score(self, images: ImageInput | Iterable[ImageInput]) -> np.ndarray:
        """Scores [N] on `score_range` (higher is better); raises `InputError` on a bad input."""
        return self.predict(images).score

    # ------------------------------------------------------------------ files -> results

    def _prepare_result(self, path: str) -> tuple[np.ndarray | None, str | None]:
        try:
            return self.prepare(path), None
        except InputError as err:
            return None, str(err)
        except Exception as err:  # pylint: disable=broad-except
            # Image plugins can fail on hostile files in ways no list of types covers; one file
            # must never stop the others, so it becomes that file's error row.
            return None, f"{path}: unexpected error while decoding ({type(err).__name__}: {err})"

    def score_files(self, paths: Sequence[str], *, return_maps: bool = False,
                    progress: bool = False) -> Iterator[FileResult]:
        """One `FileResult` per path, in order; a bad file becomes an error result, never a stop.

        Decoding of the next batch overlaps the device's work on the current one.
        """
        chunks = [paths[i:i + self.batch_size] for i in range(0, len(paths), self.batch_size)]
        bar = tqdm.tqdm(total=len(paths), desc="scoring", unit="img", disable=not progress)
        pending = None
        with concurrent.futures.ThreadPoolExecutor(self._workers) as pool, bar:
            for chunk in chunks:
                prepared = list(pool.map(self._prepare_result, chunk))
                valid = [array for array, error in prepared if error is None]
                started = self._dispatch(valid) if valid else None
                if pending is not None:
                    yield from self._collect(*pending, return_maps, bar)
                pending = (chunk, prepared, started)
            if pending is not None:
                yield from self._collect(*pending, return_maps, bar)

    def _collect(self, chunk, prepared, started, return_maps: bool, bar) -> Iterator[FileResult]:
        raw = scores = maps = None
        if started is not None:
            raw = np.asarray(started[0], np.float32)
            scores = self._scaled(raw)
            maps = np.asarray(started[1], np.float32) if return_maps else None
        row = 0
        for path, (array, error) in zip(chunk, prepared):
            bar.update(1)
            if error is not None:
                yield FileResult(path=path, error=error)
                continue
            value, row = raw[row], row + 1
            if not np.isfinite(value):
                yield FileResult(path=path, error=_non_finite_message(path, float(value)))
                continue
            yield FileResult(path=path, score=float(scores[row - 1]), raw=float(value),
                             quality_map=None if maps is None else maps[row - 1],
                             model_input=array if return_maps else None)


def load_predict_fn(checkpoint: str | os.PathLike, **kwargs: Any
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """The evaluation protocol's predict function for a checkpoint (`dpiqa_jax.eval.protocol`).

    Returns: model inputs [B, H, W, 3] float32 in [0, 1], already at the model's size -> raw head
    outputs [B] (MOS / mos_scale, the scale of the datasets' `mos_normalized`). The function's
    attributes `input_size` (H = W) and `mos_scale` describe the model.
    """
    scorer = Scorer.load(checkpoint, **kwargs)

    def predict(images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != scorer.input_shape:
            raise ValueError(f"{checkpoint} expects inputs [B, "
                             f"{', '.join(map(str, scorer.input_shape))}], got "
                             f"{tuple(images.shape)}")
        return scorer.predict_arrays(list(images), return_maps=False).raw

    predict.input_size = scorer.image_config.height
    predict.mos_scale = scorer.mos_scale
    predict.score_range = scorer.score_range
    return predict
