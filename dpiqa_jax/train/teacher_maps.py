"""A cache of the frozen teacher's quality maps for student distillation.

Computing the teacher (SD 1.5 UNet) for every student step costs several times the student's own
step; the maps of the unaugmented training images never change, so they can be computed once.

The cache is keyed by content: the SHA-256 of the exact model input (the float32 image [H, W, 3]
the pipeline hands the model). A training batch finds its maps by hashing its images, so the
cache cannot silently serve a map of another image: a different split, image size, resize mode or
an augmented image has no entry, and the lookup fails naming how many images were missing.

File: safetensors with `maps` float32 [N, m, m, c] and `digests` uint8 [N, 32], plus metadata
(teacher, image config, count).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from dpiqa_jax import bundle as bundle_lib
from dpiqa_jax.convert import torch_layout
from dpiqa_jax.data import pipeline
from dpiqa_jax.primitives.dtypes import cast_floating
from dpiqa_jax.train import inputs, models, sharding, steps

MAPS, DIGESTS = "maps", "digests"


def image_digest(image: np.ndarray) -> bytes:
    """SHA-256 of a float32 [H, W, 3] model input (C order)."""
    return hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes()).digest()


def write_cache(path: str, maps: np.ndarray, digests: np.ndarray,
                metadata: Mapping[str, Any]) -> None:
    """Writes maps [N, m, m, c] and their image digests [N, 32]."""
    if len(maps) != len(digests):
        raise ValueError(f"{len(maps)} maps for {len(digests)} digests")
    bundle_lib.write_safetensors(
        path, {MAPS: np.asarray(maps, np.float32), DIGESTS: np.asarray(digests, np.uint8)},
        metadata={"dpiqa_jax": json.dumps(dict(metadata, count=len(maps)))})


class TeacherMapCache:
    """Teacher maps looked up by the content of the images they belong to."""

    def __init__(self, path: str):
        tensors = torch_layout.read_safetensors(path)
        missing = {MAPS, DIGESTS} - set(tensors)
        if missing:
            raise ValueError(f"{path}: not a teacher-map cache (missing {sorted(missing)})")
        self.path = path
        self._maps = tensors[MAPS]
        self._row = {bytes(d): i for i, d in enumerate(tensors[DIGESTS])}

    @property
    def map_shape(self) -> tuple[int, ...]:
        return tuple(self._maps.shape[1:])

    def __len__(self) -> int:
        return len(self._row)

    def lookup(self, images: np.ndarray) -> np.ndarray:
        """Maps [B, m, m, c] float32 of images [B, H, W, 3] (every image must be cached)."""
        rows = [self._row.get(image_digest(image)) for image in images]
        missing = sum(row is None for row in rows)
        if missing:
            raise KeyError(
                f"{missing} of {len(images)} training images are not in the teacher-map cache "
                f"{self.path}; it holds the unaugmented training images of the split and image "
                "config it was made for (is augmentation on, or the split / image size "
                "different?)")
        return np.asarray(self._maps[np.asarray(rows)], np.float32)


def _digests(images: np.ndarray) -> np.ndarray:
    return np.frombuffer(b"".join(image_digest(i) for i in images), np.uint8).reshape(-1, 32)


def compute_maps(batches: Any, maps_fn: Callable[[np.ndarray], np.ndarray]
                 ) -> dict[str, np.ndarray]:
    """Maps, digests and the real-image mask of this process's padded evaluation batches."""
    columns: dict[str, list[np.ndarray]] = {MAPS: [], DIGESTS: [], "mask": []}
    for batch in batches:
        columns[MAPS].append(np.asarray(maps_fn(batch["image"]), np.float32))
        columns[DIGESTS].append(_digests(batch["image"]))
        columns["mask"].append(np.asarray(batch["mask"], bool))
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def build_cache(config: ml_collections.ConfigDict, path: str) -> int:
    """Computes the teacher's maps of the training part of `config`'s split and writes the cache.

    Every process scores its share of the images; process 0 writes the file. Returns the number
    of images cached.
    """
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_global_batch_size(config.data.eval_batch_size, mesh)
    train_part = inputs.open_parts(config.data)["train"]
    teacher, weights = models.initial_teacher_for_distillation(config)
    logging.info("teacher maps of %d training images from the %s", len(train_part),
                 weights.source)
    frozen = cast_floating({"params": weights.params, "prompts": weights.prompts},
                           config.frozen_dtype)
    frozen_shardings = sharding.fsdp_shardings(frozen, mesh, config.fsdp_min_size)
    frozen = sharding.place(frozen, frozen_shardings)
    batch_sharding = sharding.batch_sharding(mesh)
    maps = jax.jit(steps.make_teacher_maps(teacher, seed=config.seed),
                   in_shardings=(frozen_shardings["params"], frozen_shardings["prompts"],
                                 batch_sharding), out_shardings=batch_sharding)

    def local_maps(local_images: np.ndarray) -> np.ndarray:
        images = pipeline.make_global_batch({"image": local_images}, mesh,
                                            sharding.BATCH_AXES)["image"]
        return np.asarray(multihost_utils.global_array_to_host_local_array(
            maps(frozen["params"], frozen["prompts"], images), mesh,
            PartitionSpec(sharding.BATCH_AXES)))

    batches = pipeline.eval_dataset(train_part, inputs.eval_batch_size(config),
                                    inputs.image_config(config), jax.process_index(),
                                    jax.process_count(), num_threads=config.data.num_threads)
    columns = compute_maps(batches, local_maps)
    if jax.process_count() > 1:
        columns = {name: np.asarray(multihost_utils.process_allgather(value, tiled=True))
                   for name, value in columns.items()}
    real = columns["mask"]
    if jax.process_index() == 0:
        write_cache(path, columns[MAPS][real], columns[DIGESTS][real], {
            "teacher": weights.source, "dataset": config.data.dataset,
            "split": config.data.split, "image_size": config.data.image_size})
    multihost_utils.sync_global_devices("teacher-map cache written")
    return int(real.sum())
