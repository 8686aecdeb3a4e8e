"""Random-access record sources the input pipeline and the evaluation read from.

A source has `len(source)`, `source[i]` -> record and `source.names` (the name of every record,
in order). A record is a dict:

    {"image": bytes (the encoded file), "name": str, "mos_normalized": float (0-1, 1 = best)}

* `open_source(dataset, data_dir, split_file, split, part)`: records of one part of one split of
  a built TFDS dataset (array_record), or all of it (`part="all"`).
* `InMemorySource`: records from a list of (name, encoded bytes, mos_normalized), so tests and
  demos run without TFDS.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, Sequence

from absl import logging

from dpiqa_jax.data import builders, splits

ALL = "all"
PARTS = splits.PARTS + (ALL,)


class IqaSource(Protocol):
    """What the pipeline needs from a source (Grain's RandomAccessDataSource protocol + names)."""

    names: Sequence[str]

    def __len__(self) -> int:
        ...

    def __getitem__(self, index: int) -> dict[str, Any]:
        ...


class InMemorySource:
    """Records held in memory: (name, encoded image bytes, mos_normalized) triples."""

    def __init__(self, items: Sequence[tuple[str, bytes, float]]):
        self._items = [(str(name), bytes(data), float(mos)) for name, data, mos in items]
        self.names = tuple(name for name, _, _ in self._items)
        if len(set(self.names)) != len(self.names):
            raise ValueError("InMemorySource: image names must be unique")

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, data, mos = self._items[index]
        return {"image": data, "name": name, "mos_normalized": mos}


class TfdsSource:
    """The records of a built dataset at `indices` (positions in its "full" split)."""

    def __init__(self, records: Sequence[dict[str, Any]], indices: Sequence[int],
                 names: Sequence[str]):
        if len(indices) != len(names):
            raise ValueError(f"TfdsSource: {len(indices)} indices for {len(names)} names")
        self._records = records
        self._indices = list(indices)
        self.names = tuple(names)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._records[self._indices[index]]
        return {"image": record["image"], "name": record["name"].decode("utf-8"),
                "mos_normalized": float(record["mos_normalized"])}


def open_source(dataset: str, data_dir: str | os.PathLike,
                split_file: str | os.PathLike | None = None, split: str | None = None,
                part: str = ALL, config_name: str | None = None,
                allow_missing: bool = False) -> TfdsSource:
    """Records of `part` of split `split` in `split_file`, read from the built dataset.

    Args:
      dataset: builder name (see dpiqa_jax.data.builders.DATASET_NAMES), e.g. "koniq10k" or
        "iqa_folder".
      data_dir: TFDS data directory the dataset was built in.
      split_file: JSON split file (splits/<dataset>/*.json); not needed for part="all".
      split: split key in the file: "seed0".."seed9" or "official".
      part: "train", "val", "test", or "all" (every record; split file ignored).
      config_name: builder config the dataset was built with (default: the dataset's first;
        required for iqa_folder).
      allow_missing: if the split names images the built dataset lacks (left out by a
        skip_bad_images build), drop them with a warning instead of failing.

    Returns:
      A TfdsSource whose records are in the split file's (sorted-name) order.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    builder = builders.load_built(dataset, data_dir, config_name)
    built_names = list(builder.info.metadata["names"])
    records = builder.as_data_source(split=builders.FULL_SPLIT)
    if part == ALL:
        wanted = built_names
    else:
        if split_file is None or split is None:
            raise ValueError(f"part={part!r} needs split_file and split")
        wanted = list(splits.load_split(split_file, split).part(part))
    index_of = {name: i for i, name in enumerate(built_names)}
    wanted = _drop_missing(wanted, index_of, f"{dataset} ({split_file} {split} {part})",
                           allow_missing)
    source = TfdsSource(records, [index_of[name] for name in wanted], wanted)
    _check_record_order(source, dataset)
    return source


def _drop_missing(wanted: list[str], index_of: dict[str, int], where: str,
                  allow_missing: bool) -> list[str]:
    missing = [name for name in wanted if name not in index_of]
    if not missing:
        return wanted
    message = (f"{where}: {len(missing)} image(s) of the split are not in the built dataset, "
               f"e.g. {missing[:5]}")
    if not allow_missing:
        raise KeyError(message + " (was it built with skip_bad_images? pass allow_missing=True "
                                 "to evaluate without them)")
    logging.warning("%s; leaving them out (allow_missing=True)", message)
    missing = set(missing)
    return [name for name in wanted if name not in missing]


def _check_record_order(source: TfdsSource, dataset: str) -> None:
    """The name index relies on records being in metadata order; spot-check both ends."""
    for i in {0, len(source) - 1} if len(source) else ():
        stored = source[i]["name"]
        if stored != source.names[i]:
            raise RuntimeError(f"{dataset}: record order does not match metadata['names'] "
                               f"(position {i}: {stored!r} vs {source.names[i]!r}); rebuild it")
