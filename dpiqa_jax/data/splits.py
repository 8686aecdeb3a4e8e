"""Train / validation / test splits keyed by image name, and the split files that ship them.

Protocol (design §3): ten seeded random splits per dataset, 80 % train+val / 20 % test, the
validation part (default 10 % of train+val) carved from the training side and used for model
selection; never select on test. KADID-10k splits by reference image, so no scene is in two
parts. KonIQ-10k also has its official split (7058 / 1000 / 2015).

The random assignment ranks units (images, or groups of them) by SHA-256 of "<seed>/<unit>":
it depends only on the seed and the unit names, not on NumPy's generator or the list order.

A split file (JSON, `splits/<dataset>/<protocol>.json`, written by `python -m
launch.make_splits`) holds the sorted image names once and, per split key, one letter per name:

    {"format": "dpiqa_jax.splits/1", "dataset": "koniq10k", "legend": {"T": "train", ...},
     "names": ["10004473376.jpg", ...],
     "splits": {"seed0": {"seed": 0, ..., "parts": "TTETVT..."}, ..., "seed9": {...}}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

PARTS = ("train", "val", "test")
_PART_CODE = {"train": "T", "val": "V", "test": "E"}
_CODE_PART = {code: part for part, code in _PART_CODE.items()}
FORMAT = "dpiqa_jax.splits/1"
DEFAULT_NUM_SPLITS = 10
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_VAL_FRACTION = 0.1
GENERATING_COMMAND = "python -m launch.make_splits"
# The builder of your own folders; each folder (builder config) gets its own split file.
CUSTOM_DATASET = "iqa_folder"
KONIQ_OFFICIAL_SIZES = {"train": 7058, "val": 1000, "test": 2015}


@dataclasses.dataclass(frozen=True)
class Split:
    """Image names of each part; the parts are disjoint."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self):
        overlap = (set(self.train) & set(self.val)) | (set(self.train) & set(self.test)) | (
            set(self.val) & set(self.test))
        if overlap:
            raise ValueError(f"Split parts overlap on {len(overlap)} name(s), e.g. "
                             f"{sorted(overlap)[:5]}")

    def part(self, part: str) -> tuple[str, ...]:
        if part not in PARTS:
            raise ValueError(f"Unknown split part {part!r}; expected one of {PARTS}")
        return getattr(self, part)

    def sizes(self) -> dict[str, int]:
        return {part: len(self.part(part)) for part in PARTS}


@dataclasses.dataclass(frozen=True)
class SplitFile:
    """Contents of a split file: the dataset's names and named splits of them."""

    dataset: str
    names: tuple[str, ...]
    splits: Mapping[str, Split]
    info: Mapping[str, Mapping[str, Any]]  # Per split key: how it was made (seed, fractions...).
    provenance: Mapping[str, Any]  # Where the names came from, the generating command.

    def split(self, key: str) -> Split:
        if key not in self.splits:
            raise KeyError(f"Split file for {self.dataset} has no split {key!r}; it has "
                           f"{sorted(self.splits)}")
        return self.splits[key]


def _rank_key(seed: int, unit: str) -> str:
    return hashlib.sha256(f"{seed}/{unit}".encode("utf-8")).hexdigest()


def random_split(names: Iterable[str], seed: int,
                 test_fraction: float = DEFAULT_TEST_FRACTION,
                 val_fraction: float = DEFAULT_VAL_FRACTION,
                 groups: Mapping[str, str] | None = None) -> Split:
    """A seeded random split of `names`.

    Args:
      names: image names; order does not matter.
      seed: the split's seed.
      test_fraction: share of units in test.
      val_fraction: share of the remaining (non-test) units in validation.
      groups: name -> group (e.g. KADID reference image); when given, whole groups are assigned
        and the fractions count groups.

    Returns:
      The split; each part sorted by name.
    """
    names = sorted(set(names))
    if not (0.0 < test_fraction < 1.0 and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"Need 0 < test_fraction < 1 and 0 <= val_fraction < 1, got "
                         f"{test_fraction}, {val_fraction}")
    if groups is not None:
        ungrouped = [n for n in names if n not in groups]
        if ungrouped:
            raise ValueError(f"{len(ungrouped)} name(s) have no group, e.g. {ungrouped[:5]}")
    unit_of = (lambda n: groups[n]) if groups is not None else (lambda n: n)
    units = sorted({unit_of(n) for n in names}, key=lambda u: _rank_key(seed, u))
    num_test = round(test_fraction * len(units))
    num_val = round(val_fraction * (len(units) - num_test))
    part_of_unit = {u: "test" for u in units[:num_test]}
    part_of_unit.update({u: "val" for u in units[num_test:num_test + num_val]})
    assigned = {part: [] for part in PARTS}
    for name in names:
        assigned[part_of_unit.get(unit_of(name), "train")].append(name)
    return Split(**{part: tuple(assigned[part]) for part in PARTS})


def seed_key(seed: int) -> str:
    return f"seed{seed}"


def random_splits(names: Sequence[str], num_splits: int = DEFAULT_NUM_SPLITS,
                  test_fraction: float = DEFAULT_TEST_FRACTION,
                  val_fraction: float = DEFAULT_VAL_FRACTION,
                  groups: Mapping[str, str] | None = None
                  ) -> tuple[dict[str, Split], dict[str, dict[str, Any]]]:
    """Splits with seeds 0..num_splits-1, keyed "seed<k>", and how each was made."""
    splits, info = {}, {}
    for seed in range(num_splits):
        splits[seed_key(seed)] = random_split(names, seed, test_fraction, val_fraction, groups)
        info[seed_key(seed)] = {"seed": seed, "test_fraction": test_fraction,
                                "val_fraction": val_fraction,
                                "grouped_by": "reference image" if groups else None}
    return splits, info


def write_random_split_file(path: str | os.PathLike, dataset: str, names: Sequence[str],
                            groups: Mapping[str, str] | None, names_source: str,
                            num_splits: int = DEFAULT_NUM_SPLITS,
                            test_fraction: float = DEFAULT_TEST_FRACTION,
                            val_fraction: float = DEFAULT_VAL_FRACTION) -> Path:
    """Writes the seeded random splits "seed0".."seed<num_splits-1>" of `names` to `path`."""
    split_map, info = random_splits(names, num_splits, test_fraction, val_fraction, groups)
    provenance = {"names_source": names_source, "generated_by": GENERATING_COMMAND,
                  "protocol": "seeded random splits; train/val/test by SHA-256 rank of "
                              "'<seed>/<unit>'" + (", by group" if groups else "")}
    return write_split_file(path, dataset, names, split_map, info, provenance)


def official_koniq_split(sets_csv: str | os.PathLike) -> Split:
    """KonIQ-10k's official split from `koniq10k_distributions_sets.csv` (column `set`).

    That file is in the KonIQ release and at github.com/subpic/koniq (metadata/); its `set`
    column holds training / validation / test.
    """
    from dpiqa_jax.data.builders import base  # Lazy: keeps split files readable without TFDS.

    mapping = {"training": "train", "validation": "val", "test": "test"}
    assigned = {part: [] for part in PARTS}
    for line, row in base.read_csv_rows(Path(sets_csv), ["image_name", "set"]):
        if row["set"] not in mapping:
            raise ValueError(f"{sets_csv}:{line}: set {row['set']!r} is not one of "
                             f"{sorted(mapping)}")
        assigned[mapping[row["set"]]].append(row["image_name"])
    split = Split(**{part: tuple(sorted(assigned[part])) for part in PARTS})
    if split.sizes() != KONIQ_OFFICIAL_SIZES:
        raise ValueError(f"{sets_csv}: part sizes {split.sizes()}, the official split has "
                         f"{KONIQ_OFFICIAL_SIZES}")
    return split


def split_file_path(root: str | os.PathLike, dataset: str, file_name: str,
                    variant: str | None = None) -> Path:
    """ROOT/<dataset>/FILE; your own folders (iqa_folder) ROOT/iqa_folder/<variant>/FILE, so two
    folders never share a split file."""
    if dataset == CUSTOM_DATASET:
        if not variant:
            raise ValueError(f"{CUSTOM_DATASET} split files are named by the folder's variant; "
                             "none given")
        return Path(root) / dataset / variant / file_name
    return Path(root) / dataset / file_name


def write_split_file(path: str | os.PathLike, dataset: str, names: Iterable[str],
                     splits: Mapping[str, Split], info: Mapping[str, Mapping[str, Any]],
                     provenance: Mapping[str, Any]) -> Path:
    """Writes a split file; every split must assign every name to exactly one part."""
    names = sorted(set(names))
    encoded = {key: {**info.get(key, {}), "sizes": split.sizes(),
                     "parts": _encode_parts(names, split, key)}
               for key, split in splits.items()}
    document = {"format": FORMAT, "dataset": dataset, "provenance": dict(provenance),
                "legend": _CODE_PART, "names": names, "splits": encoded}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # indent=1 puts one name per line: readable diffs when a list changes.
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _encode_parts(names: Sequence[str], split: Split, key: str) -> str:
    part_of = {name: part for part in PARTS for name in split.part(part)}
    unassigned = [n for n in names if n not in part_of]
    unknown = sorted(set(part_of) - set(names))
    if unassigned or unknown:
        raise ValueError(f"Split {key!r}: {len(unassigned)} name(s) in no part (e.g. "
                         f"{unassigned[:5]}), {len(unknown)} part name(s) not in the name list "
                         f"(e.g. {unknown[:5]})")
    return "".join(_PART_CODE[part_of[name]] for name in names)


def read_split_file(path: str | os.PathLike) -> SplitFile:
    """Reads and validates a split file written by `write_split_file`."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if document.get("format") != FORMAT:
        raise ValueError(f"{path}: format {document.get('format')!r}, expected {FORMAT!r}")
    names = tuple(document["names"])
    splits, info = {}, {}
    for key, entry in document["splits"].items():
        splits[key] = _decode_parts(names, entry["parts"], f"{path} split {key!r}")
        info[key] = {k: v for k, v in entry.items() if k != "parts"}
    return SplitFile(dataset=document["dataset"], names=names, splits=splits, info=info,
                     provenance=document.get("provenance", {}))


def _decode_parts(names: Sequence[str], codes: str, where: str) -> Split:
    if len(codes) != len(names):
        raise ValueError(f"{where}: {len(codes)} part codes for {len(names)} names")
    bad = sorted(set(codes) - set(_CODE_PART))
    if bad:
        raise ValueError(f"{where}: unknown part code(s) {bad}; legend is {_CODE_PART}")
    assigned = {part: [] for part in PARTS}
    for name, code in zip(names, codes):
        assigned[_CODE_PART[code]].append(name)
    return Split(**{part: tuple(assigned[part]) for part in PARTS})


def load_split(path: str | os.PathLike, key: str) -> Split:
    """The split named `key` ("seed0".."seed9", "official") of a split file."""
    return read_split_file(path).split(key)
