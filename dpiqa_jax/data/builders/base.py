"""What every IQA dataset builder shares: features, checks, example generation.

A builder reads the user's downloaded copy of a dataset from the TFDS manual directory (the
official layout and file names) and writes one split, "full", as array_record files. Train /
validation / test parts are not TFDS splits: they come from the split files in `splits/`.

Every record holds the image as its original encoded file (`image`, bytes: nothing is decoded or
re-encoded, and no TensorFlow is needed to write or read it), its `name` (path relative to the
dataset's image folder, the key used by split files), `mos` on the dataset's native scale and
`mos_normalized` in [0, 1] with higher = better, plus the dataset's own annotations.

Records are written in sorted-name order (shuffling is disabled) and the dataset's metadata lists
`names` in that order, so a reader maps names to record indices without reading any image. The
metadata also records `skipped` images (name -> reason) and the native `mos_range`.

Checks made while building, each an error naming the file (and line) / key / value:
* a missing label file or column, a label file that is not UTF-8 or lists no images, an
  unparsable, non-finite or out-of-range value (MOS outside the native scale, a negative standard
  deviation, a rating count that is not a positive integer), a duplicate name;
* an image name that leaves the image folder (`..`, an absolute path, a symlink pointing out);
* a label count other than the dataset's documented count (`expected_count`);
* a labelled image missing on disk or not decodable. With `skip_bad_images=True` in the builder
  config such images are left out instead, logged with their count, and listed in the metadata.
"""

from __future__ import annotations

import abc
import csv
import dataclasses
import io
import math
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from dpiqa_jax.data import images

FULL_SPLIT = "full"
_MAX_NAMES_IN_ERROR = 10


@dataclasses.dataclass(eq=False)
class IqaConfig(tfds.core.BuilderConfig):
    """Options every IQA builder accepts.

    Attributes:
      expected_count: number of labelled images the label file must hold; None disables the
        check (for miniature copies in tests and user subsets).
      skip_bad_images: leave out (and report) labelled images that are missing or do not decode,
        instead of failing. Use a distinct config name for such builds.
    """

    expected_count: int | None = None
    skip_bad_images: bool = False


@dataclasses.dataclass(frozen=True)
class LabeledImage:
    """One row of a dataset's label file.

    Attributes:
      name: path of the image relative to the dataset's image folder; the key in split files.
      path: the image file on disk.
      mos: mean opinion score on the dataset's native scale.
      extras: the dataset's other per-image features, keyed like its `extra_features()`.
    """

    name: str
    path: Path
    mos: float
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class IqaBuilder(tfds.core.GeneratorBasedBuilder):
    """Base class of the IQA builders; subclasses read their label files.

    Abstract (`read_labels`), so TFDS does not register it as a dataset.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: encoded images, array_record."}
    HOMEPAGE: str = ""
    DESCRIPTION: str = ""
    # Native MOS scale (low, high) and whether a higher score means better quality.
    MOS_RANGE: tuple[float, float] = (0.0, 100.0)
    HIGHER_IS_BETTER: bool = True

    @abc.abstractmethod
    def read_labels(self, manual_dir: Path) -> list[LabeledImage]:
        """Parses the label file(s) in `manual_dir`; does not open any image."""

    def extra_features(self) -> dict[str, tfds.features.FeatureConnector]:
        """The dataset's own per-image features (std, distortion type, ...)."""
        return {}

    @property
    def mos_range(self) -> tuple[float, float]:
        return self.MOS_RANGE

    @property
    def higher_is_better(self) -> bool:
        return self.HIGHER_IS_BETTER

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "name": tfds.features.Text(),
            "mos": tfds.features.Scalar(dtype=np.float32),
            "mos_normalized": tfds.features.Scalar(dtype=np.float32),
            **self.extra_features(),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(features),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = Path(dl_manager.manual_dir)
        if not manual_dir.is_dir():
            raise FileNotFoundError(f"{self.name}: manual directory {manual_dir} does not exist.\n"
                                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        labels = self.read_labels(manual_dir)
        if not labels:
            raise ValueError(f"{self.name}: the label file(s) in {manual_dir} list no images")
        check_count(labels, self.builder_config.expected_count, f"{self.name} ({manual_dir})")
        check_unique_names(labels, self.name)
        missing = [label for label in labels if not label.path.is_file()]
        if missing and not self.builder_config.skip_bad_images:
            raise FileNotFoundError(
                f"{self.name}: {len(missing)} labelled image(s) missing on disk: "
                f"{_first_names([str(m.path) for m in missing])}. Set skip_bad_images=True in the "
                f"builder config to build without them.")
        present = [label for label in labels if label.path.is_file()]
        skipped = {label.name: "missing file" for label in missing}
        return {FULL_SPLIT: self._generate_examples(present, skipped)}

    def _generate_examples(self, labels: Sequence[LabeledImage],
                           skipped: dict[str, str]) -> Iterator[tuple[int, dict[str, Any]]]:
        kept = []
        for key, label in enumerate(sorted(labels, key=lambda label: label.name)):
            encoded = label.path.read_bytes()
            try:
                images.load_rgb(encoded, name=str(label.path))
            except images.ImageDecodeError as e:
                if not self.builder_config.skip_bad_images:
                    raise
                skipped[label.name] = str(e)
                continue
            kept.append(label.name)
            # Keys are positions in sorted-name order: with shuffling disabled the records are
            # written in key order, which is what makes metadata["names"] an index.
            yield key, self._example(label, encoded)
        if not kept:
            raise ValueError(f"{self.name}: none of the {len(skipped)} labelled image(s) could be "
                             f"read: {_first_names(sorted(skipped))}")
        self._record_metadata(kept, skipped)

    def _example(self, label: LabeledImage, encoded: bytes) -> dict[str, Any]:
        return {
            "image": encoded,
            "name": label.name,
            "mos": label.mos,
            "mos_normalized": normalize_mos(label.mos, self.mos_range, self.higher_is_better),
            **label.extras,
        }

    def _record_metadata(self, kept: list[str], skipped: dict[str, str]) -> None:
        if skipped:
            logging.warning("%s: skipped %d bad image(s) (skip_bad_images=True): %s", self.name,
                            len(skipped), _first_names(sorted(skipped)))
        self.info.metadata.update({
            "names": kept,
            "skipped": skipped,
            "mos_range": list(self.mos_range),
            "higher_is_better": self.higher_is_better,
        })

    def _labeled_image(self, name: Any, image_dir: Path, mos: float, where: str,
                       extras: Mapping[str, Any] | None = None) -> LabeledImage:
        """A LabeledImage whose name stays inside `image_dir` and whose MOS was checked against
        the dataset's native range."""
        path = image_path(image_dir, name, where)
        check_mos_in_range(mos, self.mos_range, f"{where}: image {name!r}")
        return LabeledImage(name=name, path=path, mos=mos, extras=extras or {})


def image_path(image_dir: Path, name: Any, where: str) -> Path:
    """`image_dir / name`, refusing a name that leaves the folder: empty, absolute (POSIX or
    Windows), with a `..` component, or a symlink (anywhere on the way) resolving outside it."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise ValueError(f"{where}: image name {name!r} is not a file name")
    parts = PurePosixPath(name).parts
    if (PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute()
            or PureWindowsPath(name).drive or ".." in parts or ".." in PureWindowsPath(name).parts):
        raise ValueError(f"{where}: image name {name!r} leaves the image folder {image_dir} "
                         f"(absolute or containing ..)")
    path = image_dir / name
    try:
        target = path.resolve()
    except (RuntimeError, OSError) as e:  # RuntimeError: a symlink loop
        raise ValueError(f"{where}: image {name!r} cannot be resolved ({e})") from None
    if not target.is_relative_to(image_dir.resolve()):
        raise ValueError(f"{where}: image {name!r} is a link to {target}, outside the image "
                         f"folder {image_dir}")
    return path


def normalize_mos(mos: float, mos_range: tuple[float, float], higher_is_better: bool) -> float:
    """Maps a native-scale MOS to [0, 1] with 1 = best quality."""
    low, high = mos_range
    unit = (mos - low) / (high - low)
    return unit if higher_is_better else 1.0 - unit


def check_mos_in_range(mos: float, mos_range: tuple[float, float], where: str) -> None:
    low, high = mos_range
    if not (math.isfinite(mos) and low <= mos <= high):
        raise ValueError(f"{where}: MOS {mos} is outside the dataset's native range [{low}, "
                         f"{high}]")


def check_count(labels: Sequence[LabeledImage], expected: int | None, where: str) -> None:
    if expected is not None and len(labels) != expected:
        raise ValueError(f"{where}: the label file lists {len(labels)} images, expected "
                         f"{expected}. Is the download complete and the official version?")


def check_unique_names(labels: Sequence[LabeledImage], where: str) -> None:
    seen, duplicates = set(), set()
    for label in labels:
        (duplicates if label.name in seen else seen).add(label.name)
    if duplicates:
        raise ValueError(f"{where}: the label file lists these images more than once: "
                         f"{_first_names(sorted(duplicates))}")


def require_file(path: Path, instructions: str) -> Path:
    """Returns `path` if it is a file, else raises an error naming it, with instructions."""
    if not path.is_file():
        raise FileNotFoundError(f"Expected file {path} is missing.\n{instructions}")
    return path


def _decode_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[e.start:e.start + 1]!r} at "
                         f"offset {e.start}); save the label file as UTF-8") from None


def read_csv_rows(path: Path, required_columns: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Reads a UTF-8 CSV with a header row; returns (line number, row) pairs.

    Raises:
      ValueError: naming the file (and line): not UTF-8, malformed CSV, a required column missing
        (the message lists the header found), or no data rows.
    """
    reader = csv.DictReader(io.StringIO(_decode_utf8(path), newline=""))
    try:
        header = reader.fieldnames or []
        absent = [c for c in required_columns if c not in header]
        if absent:
            raise ValueError(f"{path}: missing column(s) {absent}; header is {header}")
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as e:
        # line_num counts the lines of the records read so far; the bad one is the next.
        raise ValueError(f"{path}:{reader.line_num + 1}: malformed CSV ({e})") from None
    if not rows:
        raise ValueError(f"{path}: no rows after the header")
    return rows


def parse_float(text: Any, where: str, low: float = -math.inf, high: float = math.inf) -> float:
    """float(text), finite and within [low, high], with an error naming where it came from."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {text!r}") from None
    if not (math.isfinite(value) and low <= value <= high):
        shown = repr(text) if isinstance(text, str) else str(text)
        raise ValueError(f"{where}: {shown} is not a finite number in [{low}, {high}]")
    return value


def parse_std(text: Any, where: str) -> float:
    """A standard deviation or variance: a finite number >= 0."""
    return parse_float(text, where, low=0.0)


def parse_count(text: Any, where: str) -> int:
    """A positive whole number (a rating count); a fraction is an error, not truncated."""
    value = parse_float(text, where, low=1.0)
    if not value.is_integer():
        raise ValueError(f"{where}: expected a whole number, got {text!r}")
    return int(value)


def _first_names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_IN_ERROR])
    more = len(names) - _MAX_NAMES_IN_ERROR
    return shown + (f" … and {more} more" if more > 0 else "")
