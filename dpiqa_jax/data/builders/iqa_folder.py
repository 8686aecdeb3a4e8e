"""A user's own IQA data: a CSV of `filename,mos[,...]` and a folder of images.

Each dataset is one builder config, named by the user, so several coexist in one data_dir:

    config = IqaFolderConfig(name="my_photos", mos_range=(1.0, 5.0))
    builder = IqaFolder(config=config, data_dir=...)

Extra CSV columns are ignored. The MOS range is required (a wrong guess would silently distort
`mos_normalized`); set `higher_is_better=False` for DMOS-like scores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dpiqa_jax.data.builders import base


@dataclasses.dataclass(eq=False)
class IqaFolderConfig(base.IqaConfig):
    """Attributes:

      mos_range: (low, high) of the score scale; required.
      higher_is_better: False when a higher score means worse quality.
      csv_file: label file, relative to the manual directory.
      image_dir: image folder, relative to the manual directory; CSV names are relative to it.
      name_column, mos_column: CSV column names.
    """

    mos_range: tuple[float, float] | None = None
    higher_is_better: bool = True
    csv_file: str = "labels.csv"
    image_dir: str = "images"
    name_column: str = "filename"
    mos_column: str = "mos"

    def __post_init__(self):
        if self.mos_range is None or not self.mos_range[0] < self.mos_range[1]:
            raise ValueError(f"IqaFolderConfig {self.name!r}: mos_range must be (low, high) with "
                             f"low < high, got {self.mos_range!r}")


class IqaFolder(base.IqaBuilder):
    """Images listed in a CSV (filename, mos) with a user-given MOS scale."""

    DESCRIPTION = __doc__
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
The manual directory must hold the label CSV (default labels.csv, with a header row and at least
the columns filename,mos) and the image folder (default images/) the filenames are relative to.
"""

    def __init__(self, *, config: IqaFolderConfig, **kwargs):
        if not isinstance(config, IqaFolderConfig):
            raise TypeError(f"iqa_folder needs an IqaFolderConfig (it holds the MOS range), got "
                            f"{config!r}")
        super().__init__(config=config, **kwargs)

    @property
    def mos_range(self) -> tuple[float, float]:
        return tuple(self.builder_config.mos_range)

    @property
    def higher_is_better(self) -> bool:
        return self.builder_config.higher_is_better

    def read_labels(self, manual_dir: Path) -> list[base.LabeledImage]:
        config = self.builder_config
        csv_path = base.require_file(manual_dir / config.csv_file,
                                     self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        image_dir = manual_dir / config.image_dir
        return [
            self._labeled_image(
                row[config.name_column], image_dir,
                base.parse_float(row[config.mos_column], f"{csv_path}:{line} {config.mos_column}"),
                f"{csv_path}:{line}")
            for line, row in base.read_csv_rows(csv_path,
                                                [config.name_column, config.mos_column])
        ]
