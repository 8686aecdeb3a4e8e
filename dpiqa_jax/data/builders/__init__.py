"""TFDS builders for IQA datasets, written and read without TensorFlow (array_record files).

    builder = build("koniq10k", data_dir="~/tensorflow_datasets", manual_dir="/data/koniq")
    records = builder.as_data_source(split="full")   # or dpiqa_jax.data.sources.open_source

`python -m launch.build_dataset` is the command-line form.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds
from etils import epath

from dpiqa_jax.data.builders.agiqa3k import Agiqa3k, Agiqa3kConfig
from dpiqa_jax.data.builders.base import FULL_SPLIT, IqaBuilder, IqaConfig, LabeledImage
from dpiqa_jax.data.builders.flive import Flive
from dpiqa_jax.data.builders.iqa_folder import IqaFolder, IqaFolderConfig
from dpiqa_jax.data.builders.kadid10k import Kadid10k
from dpiqa_jax.data.builders.koniq10k import Koniq10k, Koniq10kConfig
from dpiqa_jax.data.builders.live_challenge import LiveChallenge
from dpiqa_jax.data.builders.spaq import Spaq

BUILDERS: dict[str, type[IqaBuilder]] = {
    "koniq10k": Koniq10k,
    "live_challenge": LiveChallenge,
    "spaq": Spaq,
    "flive": Flive,
    "kadid10k": Kadid10k,
    "agiqa3k": Agiqa3k,
    "iqa_folder": IqaFolder,
}
DATASET_NAMES = tuple(BUILDERS)
SKIP_BAD_SUFFIX = "_skip_bad"


def builder_class(dataset: str) -> type[IqaBuilder]:
    if dataset not in BUILDERS:
        raise KeyError(f"Unknown dataset {dataset!r}; known: {', '.join(DATASET_NAMES)}")
    return BUILDERS[dataset]


def resolve_config(dataset: str, config: str | IqaConfig | None = None,
                   skip_bad_images: bool = False) -> IqaConfig:
    """The builder config named `config` (default: the dataset's first), optionally skipping.

    A skipping config gets its own name (suffix `_skip_bad`), so a build that left images out is
    never mistaken for a complete one.
    """
    cls = builder_class(dataset)
    if isinstance(config, IqaConfig):
        resolved = config
    elif not cls.BUILDER_CONFIGS:
        raise ValueError(f"{dataset} has no predefined configs; pass a config object "
                         f"(e.g. IqaFolderConfig(name=..., mos_range=...))")
    else:
        name = config or cls.BUILDER_CONFIGS[0].name
        by_name = {c.name: c for c in cls.BUILDER_CONFIGS}
        if name not in by_name:
            raise KeyError(f"{dataset} has no config {name!r}; known: {sorted(by_name)}")
        resolved = by_name[name]
    if skip_bad_images and not resolved.skip_bad_images:
        return dataclasses.replace(resolved, name=resolved.name + SKIP_BAD_SUFFIX,
                                   skip_bad_images=True)
    return resolved


def get_builder(dataset: str, data_dir: str | os.PathLike,
                config: str | IqaConfig | None = None,
                skip_bad_images: bool = False) -> IqaBuilder:
    """A builder writing array_record files under `data_dir`."""
    return builder_class(dataset)(
        data_dir=os.fspath(data_dir),
        config=resolve_config(dataset, config, skip_bad_images),
        file_format="array_record",
    )


def build(dataset: str, data_dir: str | os.PathLike, manual_dir: str | os.PathLike,
          config: str | IqaConfig | None = None, skip_bad_images: bool = False) -> IqaBuilder:
    """Builds (or reuses) the dataset from the user's copy in `manual_dir`; returns the builder."""
    builder = get_builder(dataset, data_dir, config, skip_bad_images)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder


def built_dataset_dir(dataset: str, data_dir: str | os.PathLike,
                      config_name: str | None = None) -> epath.Path:
    """Where a built dataset lives: <data_dir>/<dataset>/<config>/<version>.

    An epath.Path, so data_dir may also be a cloud URI (gs://...) that etils can read.
    """
    cls = builder_class(dataset)
    if config_name is None:
        if not cls.BUILDER_CONFIGS:
            raise ValueError(f"{dataset}: pass the config name the dataset was built with")
        config_name = cls.BUILDER_CONFIGS[0].name
    root = epath.Path(os.path.expanduser(os.fspath(data_dir)))
    return root / dataset / config_name / str(cls.VERSION)


def load_built(dataset: str, data_dir: str | os.PathLike,
               config_name: str | None = None) -> tfds.core.DatasetBuilder:
    """A read-only builder of an already built dataset (no generation code or config needed)."""
    path = built_dataset_dir(dataset, data_dir, config_name)
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(
            f"{dataset} is not built at {path}; build it first with `python -m "
            f"launch.build_dataset --dataset={dataset} --data_dir={data_dir} --manual_dir=...`")
    return tfds.builder_from_directory(os.fspath(path))


__all__ = [
    "Agiqa3k", "Agiqa3kConfig", "BUILDERS", "DATASET_NAMES", "FULL_SPLIT", "Flive", "IqaBuilder",
    "IqaConfig", "IqaFolder", "IqaFolderConfig", "Kadid10k", "Koniq10k", "Koniq10kConfig",
    "LabeledImage", "LiveChallenge", "Spaq", "build", "builder_class", "built_dataset_dir",
    "get_builder", "load_built", "resolve_config",
]
