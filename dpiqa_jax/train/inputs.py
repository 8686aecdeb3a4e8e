"""The training run's data: train / validation / test sources and how batches are made.

`config.data.source='tfds'` reads a dataset built by `python -m launch.build_dataset` through a
split file (dpiqa_jax.data.sources); `'demo'` generates the small in-memory set of
dpiqa_jax.demo_data (no files), split by photograph with the seed of the split key `seedN`.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from dpiqa_jax import demo_data
from dpiqa_jax.data import images as images_lib
from dpiqa_jax.data import pipeline, sources

PARTS = ("train", "val", "test")
# 'ours': train / validation / test, selection on validation. 'authors': the validation part joins
# training (their 80 / 20 split), and the test part is evaluated every epoch and selects.
PROTOCOLS = ("ours", "authors")


class JoinedSource:
    """Several sources read as one, in order (names must stay unique)."""

    def __init__(self, parts: list[sources.IqaSource]):
        self._parts = list(parts)
        self.names = tuple(name for part in self._parts for name in part.names)
        if len(set(self.names)) != len(self.names):
            raise ValueError("JoinedSource: the joined parts share image names")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.names):
            raise IndexError(f"JoinedSource: index {index} out of range [0, {len(self.names)})")
        for part in self._parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise AssertionError("unreachable: the index was checked against the total length")


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"config.protocol={protocol!r}; expected one of {PROTOCOLS}")
    return protocol


def protocol_parts(parts: dict[str, sources.IqaSource], protocol: str
                   ) -> dict[str, sources.IqaSource]:
    """The parts a protocol trains and evaluates on: ours as they are; the authors' with the
    validation part joined to training and no validation part."""
    if check_protocol(protocol) == "ours":
        return parts
    return {"train": JoinedSource([parts["train"], parts["val"]]), "test": parts["test"]}


def image_config(config: ml_collections.ConfigDict) -> images_lib.ImageConfig:
    """Square model inputs of side `data.image_size`, pixels in [0, 1]."""
    side = config.data.image_size
    return images_lib.ImageConfig(height=side, width=side, resize_mode=config.data.resize_mode)


def _demo_split_seed(split_key: str) -> int:
    if not split_key.startswith("seed") or not split_key[4:].isdigit():
        raise ValueError(f"data.source='demo' splits are 'seedN', got {split_key!r}")
    return int(split_key[4:])


def open_parts(data: ml_collections.ConfigDict) -> dict[str, sources.IqaSource]:
    """The train, val and test sources of the configured split."""
    if data.source == "demo":
        parts = demo_data.split_records(data.demo_side, data.demo_tiles, data.demo_test_photos,
                                        data.demo_val_photos, _demo_split_seed(data.split))
        return {part: sources.InMemorySource([(r.name, r.image, r.mos_normalized) for r in rows])
                for part, rows in parts.items()}
    if data.source != "tfds":
        raise ValueError(f"config.data.source={data.source!r}; expected 'tfds' or 'demo'")
    return {part: sources.open_source(data.dataset, os.path.expanduser(data.data_dir),
                                      data.split_file, data.split, part,
                                      data.config_name or None)
            for part in PARTS}


def pipeline_config(config: ml_collections.ConfigDict) -> pipeline.PipelineConfig:
    """Training batches of this process: its share of the global batch, repeated forever."""
    data = config.data
    return pipeline.PipelineConfig(
        batch_size=config.batch_size // jax.process_count(), image=image_config(config),
        augment=pipeline.AugmentConfig(hflip=data.hflip, random_crop=data.random_crop),
        seed=config.seed, num_epochs=None, num_threads=data.num_threads,
        prefetch_images=data.prefetch_images)


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """This process's share of the global evaluation batch."""
    return config.data.eval_batch_size // jax.process_count()
