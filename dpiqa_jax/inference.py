"""A model from a bundle, built and applied: what scoring, evaluation and export run.

* `resolve_model(path)`: a bundle directory, a training workdir (its `best_model/`) or an exported
  params .safetensors file -> a checked `Bundle` (`dpiqa_jax.bundle`).
* `ScoreScale`: head output -> score on the MOS scale (score = raw * mos_scale, on score_range).
* `build_module`: the bundle's Flax module for inference (teacher attention in query chunks).
* `forward`: a batch of model inputs -> (raw [B], quality map [B, h, w, C]), one image at a time
  inside one compiled program, so an image's result does not depend on its batch neighbours or on
  how far the batch was padded.
* `inference_variables`: the variables a model scores with (a student's BatchNorms folded).
* `student_forward`: `forward` for one student with its weights compiled in as constants.
* `bucket_size`: how far a batch is padded (the next of 1, 2, 4, ... up to the batch size), so a
  run compiles a handful of programs and a lone image does one image's work.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax.convert import onnx_student
from dpiqa_jax.models import fold
from dpiqa_jax.models.efficientnet import efficientnet_config
from dpiqa_jax.primitives.dtypes import cast_floating
from dpiqa_jax.sd.attention import AttentionKernel

DEFAULT_IMAGE_SIZE = bundle_lib.DEFAULT_IMAGE_SIZE
# Queries per attention chunk at inference: at 512x512 the teacher's first UNet level attends 4096
# tokens to 4096; in chunks of 1024 the logits take 128 MiB per image (8 heads, float32) instead
# of 512 MiB, for the same results up to float32 rounding (the training configs' chunk too).
INFERENCE_QUERY_CHUNK = 1024


def resolve_model(path: str | os.PathLike, *, place: bundle_lib.Place | None = None,
                  extras: bool = True) -> tuple[bundle_lib.Bundle, str]:
    """Reads a model from any of the places a user may point at; returns (bundle, path read).

    * a bundle directory (`model.json` + `params.safetensors`: our own or a converted authors'
      checkpoint),
    * a training workdir: its `best_model/` bundle,
    * a `.safetensors` file written by `launch.export --format safetensors`,
    * an ONNX student file (the authors' or ours; converted in memory, needs `onnx`).

    `place` is applied to every variable as it is read, and `extras=False` skips the tensors the
    model does not use (see `bundle.load_bundle`).

    Raises:
      FileNotFoundError: nothing there. BundleError (a ValueError): naming what is wrong.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if bundle_lib.is_bundle(path):
            return bundle_lib.load_bundle(path, place=place, extras=extras), path
        best = os.path.join(path, bundle_lib.BEST_MODEL_DIR)
        if bundle_lib.is_bundle(best):
            return bundle_lib.load_bundle(best, place=place, extras=extras), best
        raise FileNotFoundError(
            f"{path}: neither a model bundle (no model.json) nor a training workdir (no "
            f"{bundle_lib.BEST_MODEL_DIR}/model.json)")
    if os.path.isfile(path):
        if path.endswith(".safetensors"):
            return bundle_lib.load_params_safetensors(path, place=place), path
        if onnx_student.looks_like_onnx(path):
            return onnx_student.onnx_student_bundle(path), path
        raise bundle_lib.BundleError(f"{path}: expected a bundle directory, a training workdir, "
                                     f"an exported .safetensors file or an ONNX student")
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

    def count_outside(self, scores: np.ndarray) -> int:
        """How many finite scores fall outside `score_range`."""
        scores = np.asarray(scores, np.float64)
        low, high = self.score_range
        return int(np.count_nonzero(np.isfinite(scores) & ((scores < low) | (scores > high))))


def to_device(leaf: Any, dtype: Any) -> jax.Array:
    """One variable on the default device, floating-point values in `dtype`.

    A numpy leaf is cast on the host first, so the device receives only the cast copy; a jax
    array already in place is returned as it is.
    """
    if isinstance(leaf, jax.Array):
        return cast_floating(leaf, dtype)
    return jax.device_put(cast_floating(np.asarray(leaf), dtype))


def cast_floats(tree: Any, dtype: Any) -> Any:
    """The tree as jax arrays, floating-point leaves (bfloat16 included) cast to `dtype`."""
    return jax.tree.map(lambda leaf: to_device(leaf, dtype), tree)


def build_module(model_bundle: bundle_lib.Bundle, *, latent: str = "mean",
                 dtype: Any = jnp.float32, query_chunk: int = INFERENCE_QUERY_CHUNK) -> Any:
    """The bundle's Flax module in compute `dtype`; a teacher uses the posterior `latent` mode and
    attends `query_chunk` queries at a time (0: all at once)."""
    config = bundle_lib.model_config_from_dict(model_bundle.kind, model_bundle.model_config)
    if model_bundle.kind == "teacher":
        return bundle_lib.build_model(
            "teacher", dataclasses.replace(config, latent=latent), dtype=dtype,
            attention_kernel=AttentionKernel(query_chunk=query_chunk))
    if latent != "mean":
        raise ValueError(f"latent={latent!r} applies to the teacher only; this is a "
                         f"{model_bundle.kind} model")
    return bundle_lib.build_model("student", config, dtype=dtype)


def inference_variables(model_bundle: bundle_lib.Bundle) -> Any:
    """The variables the bundle's model scores with: a student's BatchNorms folded into the
    convolutions before them (`models.fold`: the same function up to float32 rounding, one add
    per BatchNorm instead of four operations), a teacher's as they are."""
    if model_bundle.kind != "student":
        return model_bundle.variables
    config = bundle_lib.model_config_from_dict("student", model_bundle.model_config)
    return fold.fold_batch_norms(model_bundle.variables,
                                 efficientnet_config(config.backbone).bn_eps)


def apply_model(module: Any, variables: Any, prompts: jax.Array | None, images: jax.Array,
                rngs: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Teacher or student inference: images [B, H, W, 3] -> (raw [B], quality map [B, h, w, C]).

    `prompts` [K, D] is the teacher's (None for a student).
    """
    if prompts is None:
        return module.apply(variables, images, train=False)
    return module.apply(variables, images, prompts, rngs=rngs)


@functools.partial(jax.jit, static_argnames=("module", "sample_latent"))
def forward(variables, prompts, images, image_seeds, base_seed, *, module, sample_latent: bool):
    """Images [B, H, W, 3], image_seeds [B] uint32 -> (raw [B], quality map [B, h, w, C]).

    The images go through the model one at a time (`lax.map`): every batch size runs the same
    one-image computation, so an image's outputs are bit-identical whatever its neighbours, its
    position and the padding, and the activations in memory are one image's.
    `base_seed` is traced, so scorers differing in seed share the compiled program; keyed on the
    (hashable) module, scorers of the same architecture share one program per batch shape (a
    scorer runs a student through `student_forward` instead).
    """
    base = jax.random.key(base_seed)

    def apply_one(image: jax.Array, image_seed: jax.Array) -> tuple[jax.Array, jax.Array]:
        rngs = {"latent": jax.random.fold_in(base, image_seed)} if sample_latent else {}
        return apply_model(module, variables, prompts, image, rngs)

    return _one_image_at_a_time(apply_one, images, image_seeds)


def _one_image_at_a_time(apply_one: Any, images: jax.Array, *per_image: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """`lax.map` of `apply_one` ([1, H, W, 3] and each `per_image` entry -> raw [1], map [1, ...])
    over images [B, H, W, 3]: (raw [B], quality map [B, h, w, C])."""

    def one(args):
        image, *rest = args
        raw, quality_map = apply_one(image[None], *rest)
        return raw[0], quality_map[0]

    return jax.lax.map(one, (images, *per_image))


def student_forward(module: Any, variables: Any, devices: int = 1) -> Any:
    """`forward` for one student, its variables compiled into the program as constants:
    images [B, H, W, 3] -> (raw [B], quality map [B, h, w, C]), one image at a time as `forward`.

    XLA then does at compile time what depends on the weights alone (the folded BatchNorms'
    identity arithmetic, each kernel's layout) instead of on every call: on a 2-core CPU, Lite0 at
    224x224 scores ~18% more images/s (measured beside ONNX Runtime: the README's CPU table).
    The programs belong to this one model (not shared between scorers as `forward`'s are).

    `devices` > 1 splits the batch (B a multiple of it) over the first `devices` local devices,
    each running the same one-image-at-a-time loop on its share. On a CPU split into several JAX
    devices (`jax_num_cpu_devices`) the loops run side by side, which keeps the cores busy
    through XLA's single-threaded element-wise passes.
    """
    constants = jax.tree.map(np.asarray, variables)  # host arrays become literals, not arguments

    def run(images):
        return _one_image_at_a_time(
            lambda image: apply_model(module, constants, None, image, {}), images)

    return jax.jit(split_batch(run, devices))


def split_batch(fn: Any, devices: int) -> Any:
    """`fn` (images [B, ...] -> outputs [B, ...]) run on each of the first `devices` local
    devices over its share of the batch (B a multiple of `devices`); `fn` itself for one."""
    if devices == 1:
        return fn
    local = jax.local_devices()
    if devices > len(local):
        raise ValueError(f"cannot spread scoring over {devices} devices: this process has "
                         f"{len(local)} ({local[0].platform})")
    mesh = jax.sharding.Mesh(np.asarray(local[:devices]), ("images",))
    images = jax.sharding.PartitionSpec("images")
    return jax.shard_map(fn, mesh=mesh, in_specs=images, out_specs=images)


def bucket_sizes(batch_size: int) -> tuple[int, ...]:
    """The batch shapes a scorer compiles: powers of two below `batch_size`, and `batch_size`."""
    sizes = {batch_size}
    size = 1
    while size < batch_size:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


def bucket_size(count: int, batch_size: int, multiple: int = 1) -> int:
    """The smallest bucket holding `count` images (1 <= count <= batch_size), rounded up to a
    multiple of `multiple` (the devices a batch is split over)."""
    if not 1 <= count <= batch_size:
        raise ValueError(f"a batch holds 1 to {batch_size} images, got {count}")
    size = next(size for size in bucket_sizes(batch_size) if size >= count)
    return -(-size // multiple) * multiple
