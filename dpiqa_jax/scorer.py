"""Scoring images with a finished DP-IQA model: the Python API behind `python -m launch.score`.

    scorer = Scorer.load("runs/koniq/best_model")    # see `resolve_model` for what a path may be
    scorer.score(["a.jpg", pil_image, array])         # np.ndarray [N] on `scorer.score_range`
    scorer.predict(images, return_maps=True)          # Predictions(score, raw, quality_map)
    for result in scorer.score_files(paths): ...      # one FileResult per path, errors included

Scores. The model's head predicts MOS / `mos_scale` (the authors train on MOS / 100); `raw` is that
head output and `score = raw * mos_scale`, on `score_range` (bundle metadata `score_range`, default
(0, mos_scale)). Higher is better (`lower_better = False`, as pyiqa). A bundle that does not record
`mos_scale` is refused unless the caller passes one: a score on an unknown scale is not trusted.

Inputs. Paths are decoded by `dpiqa_jax.data.images.load_rgb` (EXIF orientation applied; grey,
palette, alpha, CMYK and 16-bit images converted as documented there; a pixel limit against
decompression bombs), images smaller than `min_side` pixels on a side are refused, and everything
is resized to the model's input size with PIL bilinear (torchvision's `Resize` on PIL images; an
image already at that size is not resampled). PIL images take the same path after decoding (EXIF
orientation included, so `score(Image.open(p))` equals `score(p)`). NumPy arrays [H, W, 3] (or
[H, W] grey) are uint8, or float in [0, 1]; float arrays are resized channel by channel in PIL's
float mode with the same filter, so they are not quantised to 8 bits.

Determinism. Every batch is padded to `batch_size` (the padding rows are dropped), so one compiled
program serves the whole run. With a given batch size, compute dtype and machine, an image's score
is bit-identical in every run (on CPU, tested, also whatever its batch neighbours or position);
another batch size is another compiled program and agrees to float32 rounding (~1e-6 relative).
The teacher uses the posterior mean by default; `latent="sample"` draws the posterior sample from a
key derived from `seed` and the image's pixels, so a sampled score is just as repeatable.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import glob
import hashlib
import io
import itertools
import json
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from PIL import Image, ImageOps

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax import heatmap
from dpiqa_jax.data import images as image_lib

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jfif",
                    ".jpe", ".ppm", ".pgm", ".pbm", ".pnm")
# Below this, an image has too few pixels for a quality judgement (and a 1x1 file is more likely a
# tracking pixel or a placeholder than a photo).
MIN_IMAGE_SIDE = 8
DEFAULT_BATCH_SIZE = 8
DEFAULT_IMAGE_SIZE = 512
LATENT_MODES = ("mean", "sample")
BEST_MODEL_SUBDIR = "best_model"
RESULT_COLUMNS = ("path", "score", "raw", "status", "error")
OUTPUT_FORMATS = ("csv", "json")


class InputError(ValueError):
    """An input cannot be scored; the message names it and says why."""


# --------------------------------------------------------------------------- preprocessing


def _read_file(path: str) -> bytes:
    """The file's bytes; a missing, unreadable or non-regular path raises `InputError`."""
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, expected an image file")
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise InputError(f"{path}: cannot read file ({type(err).__name__}: {err.strerror or err})"
                         ) from err


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
                  min_side: int = MIN_IMAGE_SIDE, label: str | None = None) -> np.ndarray:
    """Any supported input -> model input float32 [config.height, config.width, 3] in [0, 1].

    Raises:
      InputError: (a subclass of ValueError) naming the input and the reason.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = label or path
        data = _read_file(path)
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
        raise InputError(f"{label}: cannot load image ({type(err).__name__}: {err})") from err


def image_seed(model_input: np.ndarray) -> int:
    """A 32-bit number fixed by the image's pixels: its posterior-sample key (latent="sample")."""
    return zlib.crc32(np.ascontiguousarray(model_input, np.float32).tobytes())


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Scores of N images.

    Attributes:
      score: [N] on the model's MOS scale (`Scorer.score_range`).
      raw: [N] the head output (MOS / mos_scale).
      quality_map: [N, h, w, C] (NHWC; 64 x 64 x 8 for DP-IQA) when asked for, else None.
    """

    score: np.ndarray
    raw: np.ndarray
    quality_map: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class FileResult:
    """The outcome for one input path: a score, or the reason there is none.

    `quality_map` [h, w, C] and `model_input` [H, W, 3] are kept only when maps were asked for.
    """

    path: str
    score: float | None = None
    raw: float | None = None
    error: str | None = None
    quality_map: np.ndarray | None = None
    model_input: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        return "ok" if self.ok else "error"

    def row(self) -> dict[str, Any]:
        """The output row: `RESULT_COLUMNS` (score/raw None and error set for failures)."""
        return {"path": self.path, "score": self.score, "raw": self.raw, "status": self.status,
                "error": self.error}


# --------------------------------------------------------------------------- model resolution


def resolve_model(path: str | os.PathLike) -> tuple[bundle_lib.Bundle, str]:
    """Reads a model from any of the places a user may point at; returns (bundle, path read).

    * a bundle directory (`model.json` + `params.safetensors`: our own or a converted authors'
      checkpoint),
    * a training workdir: its `best_model/` bundle,
    * a `.safetensors` file written by `launch.export --format safetensors`,
    * an ONNX student file (the authors' or ours; converted in memory, needs `onnx`).

    Raises:
      FileNotFoundError / ValueError: naming the path and what was expected there.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if bundle_lib.is_bundle(path):
            return bundle_lib.load_bundle(path), path
        best = os.path.join(path, BEST_MODEL_SUBDIR)
        if bundle_lib.is_bundle(best):
            return bundle_lib.load_bundle(best), best
        raise FileNotFoundError(
            f"{path}: neither a model bundle (no model.json) nor a training workdir (no "
            f"{BEST_MODEL_SUBDIR}/model.json)")
    if os.path.isfile(path):
        if path.endswith(".safetensors"):
            from dpiqa_jax import export  # pylint: disable=import-outside-toplevel
            return export.read_params_safetensors(path), path
        from dpiqa_jax.convert import onnx_student  # pylint: disable=import-outside-toplevel
        if onnx_student.looks_like_onnx(path):  # converted in memory, scored by our JAX model
            return onnx_student.onnx_student_bundle(path), path
        raise ValueError(f"{path}: expected a bundle directory, a training workdir or an "
                         f"exported .safetensors file")
    raise FileNotFoundError(f"model not found: {path}")


@dataclasses.dataclass(frozen=True)
class ScoreScale:
    """How the head output maps to the MOS scale: score = raw * mos_scale, on score_range."""

    mos_scale: float
    score_range: tuple[float, float]

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], mos_scale: float | None,
                      source: str) -> "ScoreScale":
        scale = metadata.get("mos_scale") if mos_scale is None else mos_scale
        if scale is None:
            raise ValueError(
                f"{source}: the model does not record `mos_scale` (the factor from its head "
                f"output to the MOS scale, e.g. 100 for the authors' checkpoints); pass it "
                f"explicitly (Scorer.load(..., mos_scale=...) or --mos_scale)")
        scale = float(scale)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"{source}: mos_scale must be a positive number, got {scale}")
        score_range = metadata.get("score_range") if mos_scale is None else None
        low, high = (0.0, scale) if score_range is None else map(float, score_range)
        return cls(scale, (low, high))


# --------------------------------------------------------------------------- the scorer


def cast_floats(tree: Any, dtype: Any) -> Any:
    """The tree as jax arrays, floating-point leaves (bfloat16 included) cast to `dtype`."""
    def cast(leaf):
        leaf = np.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            leaf = leaf.astype(dtype)  # on the host: the device holds only the cast copy
        return jnp.asarray(leaf)
    return jax.tree.map(cast, tree)


def build_module(model_bundle: bundle_lib.Bundle, *, latent: str = "mean",
                 dtype: Any = jnp.float32) -> Any:
    """The bundle's Flax module in compute `dtype`; a teacher uses the posterior `latent` mode."""
    config = bundle_lib.model_config_from_dict(model_bundle.kind, model_bundle.model_config)
    if model_bundle.kind == "teacher":
        from dpiqa_jax.models.teacher import Teacher  # pylint: disable=import-outside-toplevel
        return Teacher(config=dataclasses.replace(config, latent=latent), dtype=dtype)
    if latent != "mean":
        raise ValueError(f"latent={latent!r} applies to the teacher only; this is a "
                         f"{model_bundle.kind} model")
    from dpiqa_jax.models.student import Student  # pylint: disable=import-outside-toplevel
    return Student(config=config, dtype=dtype)


def apply_model(module: Any, variables: Any, prompts: jax.Array | None, images: jax.Array,
                rngs: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Teacher or student inference: images [B, H, W, 3] -> (raw [B], quality map [B, h, w, C]).

    `prompts` [K, D] is the teacher's (None for a student).
    """
    if prompts is None:
        return module.apply(variables, images, train=False)
    return module.apply(variables, images, prompts, rngs=rngs)


@functools.partial(jax.jit, static_argnames=("module", "sample_latent"))
def _forward(variables, prompts, images, image_seeds, base_seed, *, module, sample_latent: bool):
    """One padded batch: images [B, H, W, 3], image_seeds [B] uint32 -> (raw [B], map [B, h, w, C]).

    `base_seed` is traced, so scorers differing in seed share the compiled program too.

    Module-level and keyed on the (hashable) module, so scorers of the same architecture share
    one compiled program per batch shape.
    """
    if not sample_latent:
        return apply_model(module, variables, prompts, images, {})
    base = jax.random.key(base_seed)

    def one(image, image_seed_):
        key = jax.random.fold_in(base, image_seed_)
        raw, quality_map = apply_model(module, variables, prompts, image[None], {"latent": key})
        return raw[0], quality_map[0]

    # One image per call, so an image's posterior noise depends on its own key alone.
    return jax.vmap(one)(images, image_seeds)


class Scorer:
    """A loaded model that scores images; see the module docstring for the rules."""

    lower_better = False

    def __init__(self, model_bundle: bundle_lib.Bundle, *, source: str = "<bundle>",
                 batch_size: int = DEFAULT_BATCH_SIZE, latent: str = "mean", seed: int = 0,
                 dtype: Any = jnp.float32, max_pixels: int = image_lib.DEFAULT_MAX_PIXELS,
                 min_side: int = MIN_IMAGE_SIDE, mos_scale: float | None = None,
                 image_size: int | None = None, preprocess_workers: int | None = None):
        """Prepares `model_bundle` for scoring.

        Args:
          model_bundle: the model (see `resolve_model` / `Scorer.load`).
          source: where it came from, for messages.
          batch_size: images per device call; every call is padded to it.
          latent: teacher only: "mean" (deterministic posterior mean, default) or "sample".
          seed: base seed of the per-image posterior samples (latent="sample").
          dtype: compute dtype (float32, or bfloat16 for faster approximate scores).
          max_pixels: decoded images above this pixel count are refused (decompression bombs).
          min_side: images narrower or lower than this are refused.
          mos_scale: override of the bundle's `mos_scale` (required when it records none).
          image_size: model input side; default the bundle's `image_size` metadata, else 512.
          preprocess_workers: threads decoding images (default: min(batch_size, CPU count)).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if latent not in LATENT_MODES:
            raise ValueError(f"latent must be one of {LATENT_MODES}, got {latent!r}")
        if min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {min_side}")
        self.kind = model_bundle.kind
        self.source = source
        self.metadata = dict(model_bundle.metadata)
        self.batch_size = batch_size
        self.latent = latent
        self.min_side = min_side
        scale = ScoreScale.from_metadata(self.metadata, mos_scale, source)
        self.mos_scale, self.score_range = scale.mos_scale, scale.score_range
        side = int(image_size or self.metadata.get("image_size", DEFAULT_IMAGE_SIZE))
        self.image_config = image_lib.ImageConfig(height=side, width=side, max_pixels=max_pixels)
        self.module = build_module(model_bundle, latent=latent, dtype=dtype)
        self._variables = cast_floats(model_bundle.variables, dtype)
        self._prompts = (None if model_bundle.prompts is None
                         else jnp.asarray(model_bundle.prompts, dtype))
        self._seed = seed
        self._workers = preprocess_workers or max(1, min(batch_size, os.cpu_count() or 1))

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs: Any) -> "Scorer":
        """A scorer for a bundle directory, a training workdir or an exported .safetensors file.

        Keyword arguments are `Scorer.__init__`'s.
        """
        model_bundle, resolved = resolve_model(path)
        return cls(model_bundle, source=resolved, **kwargs)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model input [H, W, 3] every image is resized to."""
        return (self.image_config.height, self.image_config.width, 3)

    # ------------------------------------------------------------------ arrays -> predictions

    def _dispatch(self, arrays: Sequence[np.ndarray]) -> tuple[jax.Array, jax.Array]:
        """Starts one padded batch on the device (asynchronously); len(arrays) <= batch_size."""
        batch = np.zeros((self.batch_size,) + self.input_shape, np.float32)
        seeds = np.zeros((self.batch_size,), np.uint32)
        sample = self.latent == "sample"
        for row, array in enumerate(arrays):
            batch[row] = array
            seeds[row] = image_seed(array) if sample else 0
        return _forward(self._variables, self._prompts, batch, seeds, np.uint32(self._seed),
                        module=self.module, sample_latent=sample)

    def predict_arrays(self, arrays: Sequence[np.ndarray], return_maps: bool) -> Predictions:
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

    def prepare(self, image: ImageInput) -> np.ndarray:
        """One input -> the model input [H, W, 3] float32; raises `InputError` naming it."""
        return prepare_image(image, self.image_config, min_side=self.min_side)

    def predict(self, images: ImageInput | Iterable[ImageInput], *,
                return_maps: bool = False) -> Predictions:
        """Scores and raw head outputs (and quality maps) of images; raises on the first bad one.

        Args:
          images: one input or a sequence of paths, PIL images and arrays (module docstring).
          return_maps: also return the quality maps [N, h, w, C].
        """
        if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        arrays = [self.prepare(image) for image in images]
        return self.predict_arrays(arrays, return_maps)

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
        bar = tqdm.tqdm(total=len(paths), desc="scoring", unit="img", file=sys.stderr,
                        disable=not progress)
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
            yield FileResult(path=path, score=float(scores[row]), raw=float(raw[row]),
                             quality_map=None if maps is None else maps[row],
                             model_input=array if return_maps else None)
            row += 1


# --------------------------------------------------------------------------- command-line inputs


def load_predict_fn(checkpoint: str | os.PathLike, **kwargs: Any
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """The evaluation protocol's predict function for a checkpoint (`dpiqa_jax.eval.protocol`).

    Returns: model inputs [B, H, W, 3] float32 in [0, 1], already at the model's size -> raw head
    outputs [B] (MOS / mos_scale, the scale of the datasets' `mos_normalized`).
    """
    scorer = Scorer.load(checkpoint, **kwargs)

    def predict(images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != scorer.input_shape:
            raise ValueError(f"{checkpoint} expects inputs [B, {', '.join(map(str, scorer.input_shape))}]"
                             f", got {tuple(images.shape)}")
        return scorer.predict_arrays(list(images), return_maps=False).raw

    return predict


def _is_glob(argument: str) -> bool:
    return any(ch in argument for ch in "*?[")


def _images_under(directory: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(files)
                     if name.lower().endswith(IMAGE_EXTENSIONS))
    return found


def _list_file_entries(argument: str) -> list[str]:
    """Paths listed in `@list.txt` (one per line; blank lines and `#` comments skipped)."""
    list_path = argument[1:]
    try:
        with open(list_path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{argument}: cannot read the list file ({err})") from err
    base = os.path.dirname(list_path)
    return [line if os.path.isabs(line) else os.path.join(base, line)
            for line in lines if line and not line.startswith("#")]


def expand_inputs(arguments: Sequence[str]) -> tuple[list[str], list[FileResult]]:
    """Command-line inputs -> (image paths in order, each once; results for inputs that failed).

    * a directory: its image files (`IMAGE_EXTENSIONS`, any case), recursively, sorted;
    * a glob (`*`, `?`, `[`; `**` recurses): its matching files, sorted;
    * `@list.txt`: the paths listed in it, one per line (blank lines and `#` comments skipped;
      relative paths are relative to the list file; a directory listed there is an input error,
      not expanded);
    * anything else: a file path (a missing one becomes an error row when scored).

    A directory without images, a glob matching no file and an unreadable list file come back as
    error results, so they are reported rather than silently dropped.
    """
    paths: list[str] = []
    failed: list[FileResult] = []
    for argument in arguments:
        if argument.startswith("@") and len(argument) > 1:
            try:
                paths.extend(_list_file_entries(argument))
            except InputError as err:
                failed.append(FileResult(path=argument, error=str(err)))
        elif os.path.isdir(argument):
            found = _images_under(argument)
            paths.extend(found)
            if not found:
                failed.append(FileResult(path=argument, error=(
                    f"{argument}: directory holds no image files ({', '.join(IMAGE_EXTENSIONS)})")))
        elif _is_glob(argument) and not os.path.exists(argument):
            matches = [m for m in sorted(glob.glob(argument, recursive=True)) if os.path.isfile(m)]
            paths.extend(matches)
            if not matches:
                failed.append(FileResult(path=argument,
                                         error=f"{argument}: pattern matches no file"))
        else:
            paths.append(argument)
    return list(dict.fromkeys(paths)), failed


def map_stems(paths: Sequence[str]) -> dict[str, str]:
    """Path -> file stem for its quality-map files, unique over `paths`.

    A stem used by one path only is kept (`photos/a.jpg` -> `a`). Paths sharing a stem (`x/a.jpg`,
    `y/a.png`) all get `<stem>-<first 8 hex digits of sha1(absolute path)>`, so the name depends on
    the path alone, not on the input order or the other inputs' order.
    """
    stems = {path: os.path.splitext(os.path.basename(path))[0] or "image" for path in paths}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {path: stem if counts[stem] == 1 else
            f"{stem}-{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]}"
            for path, stem in stems.items()}


def save_map_files(directory: str, stem: str, result: FileResult) -> None:
    """Writes `<stem>.npy` (the quality map, float32 [C, h, w] as the authors' code returns it) and
    `<stem>.png` (its heatmap over the model input)."""
    quality_map = np.asarray(result.quality_map, np.float32)
    np.save(os.path.join(directory, stem + ".npy"), np.ascontiguousarray(
        quality_map.transpose(2, 0, 1)))
    heatmap.save_overlay(os.path.join(directory, stem + ".png"), result.model_input, quality_map)


class ResultWriter:
    """Writes result rows as CSV (streamed, flushed per row) or JSON (a list, written at close)."""

    def __init__(self, stream: io.TextIOBase, fmt: str):
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {fmt!r}")
        self._stream, self._fmt, self._rows = stream, fmt, []
        if fmt == "csv":
            self._csv = csv.DictWriter(stream, fieldnames=RESULT_COLUMNS, lineterminator="\n")
            self._csv.writeheader()

    def write(self, result: FileResult) -> None:
        row = result.row()
        if self._fmt == "json":
            self._rows.append(row)
            return
        self._csv.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else v)
                            for k, v in row.items()})
        self._stream.flush()

    def close(self) -> None:
        if self._fmt == "json":
            json.dump(self._rows, self._stream, indent=1)
            self._stream.write("\n")
        self._stream.flush()


def output_format(output: str | None, fmt: str | None) -> str:
    """`fmt` if given, else from the output's extension (.json -> json), else csv."""
    if fmt:
        return fmt
    return "json" if output and output.lower().endswith(".json") else "csv"


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Counts of a scoring run, and (path, reason) of every failed input."""

    scored: int
    failures: tuple[tuple[str, str], ...]

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def total(self) -> int:
        return self.scored + self.failed


def score_to_output(scorer: Scorer, paths: Sequence[str], stream: io.TextIOBase, fmt: str, *,
                    failed_inputs: Sequence[FileResult] = (), maps_dir: str | None = None,
                    progress: bool = False) -> RunSummary:
    """Scores `paths`, writing one row per path to `stream` (and map files to `maps_dir`).

    `failed_inputs` (from `expand_inputs`) are written first, then the paths in order.
    """
    if maps_dir:
        os.makedirs(maps_dir, exist_ok=True)
    stems = map_stems(paths) if maps_dir else {}
    writer = ResultWriter(stream, fmt)
    scored, failures = 0, []
    results = scorer.score_files(paths, return_maps=bool(maps_dir), progress=progress)
    for result in itertools.chain(failed_inputs, results):
        if result.ok:
            scored += 1
            if maps_dir:
                save_map_files(maps_dir, stems[result.path], result)
        else:
            failures.append((result.path, result.error))
        writer.write(result)
    writer.close()
    return RunSummary(scored, tuple(failures))
