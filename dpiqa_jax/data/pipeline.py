"""Grain input pipelines: shuffled augmented training batches and padded evaluation batches.

Training (`train_dataset` / `train_iterator`): every process builds the same globally shuffled
stream (one seed; each epoch reshuffled and padded with masked images to ceil(N / B) global
batches), decodes and augments element i with an RNG derived from (seed, i), and keeps every
process_count-th element starting at process_index. The order is a pure function of the seed, so
`iterator.get_state()` / `set_state()` resume exactly.

Evaluation (`eval_dataset`): the source in order, padded to a whole number of global batches;
`mask` marks real images and `index` their position in the source (-1 for padding), so every
image counts exactly once however many processes share the work.

Batches are dicts of NumPy arrays, per process:
  image           float32 [B, H, W, 3]
  mos_normalized  float32 [B]
  mask            bool    [B]   (False: padding)
  index           int32   [B]   (evaluation only)
`make_global_batch` turns process-local batches into global `jax.Array`s on a mesh.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping, Sequence

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dpiqa_jax.data import images
from dpiqa_jax.data.sources import IqaSource


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation.

    Attributes:
      hflip: flip each image horizontally with probability 1/2.
      random_crop: place the crop window uniformly at random; requires the image config's
        resize_mode "keep_aspect_crop" (otherwise there is nothing to crop).
    """

    hflip: bool = False
    random_crop: bool = False


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Attributes:

      batch_size: images per batch in this process.
      image: decoding / resizing / value range.
      augment: training augmentation (evaluation never augments).
      seed: shuffle and augmentation seed; a resumed run must use the same one.
      num_epochs: passes over the data; None repeats forever.
      num_threads: decoding threads per process.
      prefetch_images: decoded images buffered ahead, per process.
    """

    batch_size: int
    image: images.ImageConfig = images.ImageConfig()
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0
    num_epochs: int | None = None
    num_threads: int = 8
    prefetch_images: int = 64

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.augment.random_crop and self.image.resize_mode != "keep_aspect_crop":
            raise ValueError("augment.random_crop needs image.resize_mode='keep_aspect_crop'; "
                             f"got {self.image.resize_mode!r}, which does not crop")


def decode_example(record: Mapping[str, Any], image_config: images.ImageConfig,
                   crop_fraction: tuple[float, float] = (0.5, 0.5),
                   hflip: bool = False) -> dict[str, np.ndarray]:
    """Record -> {"image": float32 [H, W, 3], "mos_normalized": float32 []}."""
    pixels = images.preprocess(record["image"], image_config, name=record["name"],
                               crop_fraction=crop_fraction)
    if hflip:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return {"image": pixels, "mos_normalized": np.float32(record["mos_normalized"])}


def _augmented_example(record: Mapping[str, Any], rng: np.random.Generator,
                       config: PipelineConfig) -> dict[str, np.ndarray]:
    # Draw every random number unconditionally so one option does not shift another's stream.
    crop = tuple(rng.uniform(0.0, 1.0, size=2))
    flip = bool(rng.integers(2))
    return decode_example(
        record, config.image,
        crop_fraction=crop if config.augment.random_crop else (0.5, 0.5),
        hflip=flip and config.augment.hflip)


def _read_options(config: PipelineConfig) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=config.num_threads,
                             prefetch_buffer_size=config.prefetch_images)


def steps_per_epoch(num_items: int, global_batch: int) -> int:
    """Batches in one pass over `num_items` images, the last partial one kept: ceil(N / B)."""
    if num_items <= 0 or global_batch <= 0:
        raise ValueError(f"steps_per_epoch: need positive sizes, got {num_items} images and a "
                         f"global batch of {global_batch}")
    return math.ceil(num_items / global_batch)


def _padding_example(image_config: images.ImageConfig) -> dict[str, Any]:
    return {"image": np.zeros(image_config.size + (3,), np.float32),
            "mos_normalized": np.float32(0.0)}


def train_dataset(source: IqaSource, config: PipelineConfig, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
    """Shuffled, augmented, batched training data of this process (see module docstring).

    An epoch is ceil(N / global batch) batches, as a torch DataLoader that keeps its last
    partial batch: the shuffled epoch is followed by zero images with `mask` False up to a whole
    global batch, and the losses average over the real images only. Every epoch is reshuffled.
    """
    _check_process(process_index, process_count)
    num_items = len(source)
    if num_items == 0:
        raise ValueError("train_dataset: the source is empty")
    global_batch = config.batch_size * process_count
    padded_epoch = steps_per_epoch(num_items, global_batch) * global_batch
    shuffled = grain.MapDataset.source(source).shuffle(seed=config.seed).repeat(None)
    positions = grain.MapDataset.range(padded_epoch).repeat(config.num_epochs)
    # Position q of the stream is place r = q mod padded_epoch of epoch q // padded_epoch; the
    # real places read that epoch's shuffled order, the rest are padding (-1).
    indices = positions.map_with_index(
        lambda q, r: (q // padded_epoch) * num_items + r if r < num_items else -1)
    padding = {**_padding_example(config.image), "mask": False}

    def example(index: int, rng: np.random.Generator) -> dict[str, Any]:
        if index < 0:
            return padding
        return {**_augmented_example(shuffled[index], rng, config), "mask": True}

    stream = indices.random_map(example, seed=config.seed)
    local = stream[process_index::process_count]
    return local.to_iter_dataset(_read_options(config)).batch(config.batch_size,
                                                              drop_remainder=True)


def train_iterator(source: IqaSource, config: PipelineConfig, process_index: int = 0,
                   process_count: int = 1, state: Mapping[str, Any] | None = None
                   ) -> grain.DatasetIterator:
    """An iterator over `train_dataset`; pass a saved `iterator.get_state()` to resume."""
    iterator = iter(train_dataset(source, config, process_index, process_count))
    if state is not None:
        iterator.set_state(state)
    return iterator


def padded_length(num_items: int, batch_size: int, process_count: int) -> int:
    """num_items rounded up to a whole number of global batches (at least one)."""
    global_batch = batch_size * process_count
    return max(1, math.ceil(num_items / global_batch)) * global_batch


def eval_dataset(source: IqaSource, batch_size: int, image_config: images.ImageConfig,
                 process_index: int = 0, process_count: int = 1, num_threads: int = 8,
                 prefetch_images: int = 64) -> grain.IterDataset:
    """Padded, masked evaluation batches of this process's contiguous share of `source`."""
    _check_process(process_index, process_count)
    total = padded_length(len(source), batch_size, process_count)
    per_process = total // process_count
    positions = grain.MapDataset.range(total)[process_index * per_process:
                                              (process_index + 1) * per_process]
    padding = {**_padding_example(image_config), "index": np.int32(-1), "mask": False}

    def example(position: int) -> dict[str, Any]:
        if position >= len(source):
            return padding
        return {**decode_example(source[position], image_config), "index": np.int32(position),
                "mask": True}

    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_images)
    return positions.map(example).to_iter_dataset(read_options).batch(batch_size)


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh,
                      batch_axes: str | Sequence[str] = "data") -> dict[str, jax.Array]:
    """Assembles process-local batches into global arrays sharded over `batch_axes` of `mesh`.

    Every process calls this with its own batch (leading dimension = local batch size); the
    result has leading dimension local batch size * process_count, split along `batch_axes`
    (other dimensions replicated).
    """
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    sharding = NamedSharding(mesh, PartitionSpec(axes))
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in local_batch.items()}


def measure_throughput(batches: Any, num_batches: int, warmup_batches: int = 1) -> dict[str, float]:
    """Images per second of a batch iterable, timed over `num_batches` after a warm-up.

    Returns {"images_per_s", "seconds", "images"}. Usable on any pipeline above, e.g.
    `measure_throughput(eval_dataset(...), 20)`; dpiqa_jax/data/throughput.py drives it.
    """
    iterator = iter(batches)
    for _ in range(warmup_batches):
        next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(num_batches):
        count += len(next(iterator)["image"])
    seconds = time.perf_counter() - start
    return {"images_per_s": count / seconds, "seconds": seconds, "images": float(count)}
