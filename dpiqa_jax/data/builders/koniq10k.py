"""KonIQ-10k (Hosu et al. 2020): 10,073 in-the-wild photos with crowd-sourced MOS."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from dpiqa_jax.data.builders import base

LABEL_FILE = "koniq10k_scores_and_distributions.csv"
RESOLUTIONS = ("1024x768", "512x384")
NUM_IMAGES = 10073
MOS_1TO5_RANGE = (1.0, 5.0)  # the mean of 1-5 ratings


@dataclasses.dataclass(eq=False)
class Koniq10kConfig(base.IqaConfig):
    """Attributes: resolution: which image folder of the release to store, 1024x768 or 512x384."""

    resolution: str = "1024x768"


class Koniq10k(base.IqaBuilder):
    """KonIQ-10k.

    `mos` is the release's `MOS_zscore` column (0-100, rescaled z-scores): the scale of the
    official split file and of the DP-IQA authors' training target (MOS / 100). The 1-5 mean
    rating is kept as `mos_1to5` and its standard deviation (`SD`, 1-5 scale) as `mos_std`.
    """

    BUILDER_CONFIGS = [
        Koniq10kConfig(name=resolution, resolution=resolution, expected_count=NUM_IMAGES,
                       description=f"Images from the {resolution}/ folder.")
        for resolution in RESOLUTIONS
    ]
    DESCRIPTION = __doc__
    HOMEPAGE = "https://database.mmsp-kn.de/koniq-10k-database.html"
    MOS_RANGE = (0.0, 100.0)
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download KonIQ-10k from {HOMEPAGE}: the scores archive ({LABEL_FILE}) and the image archive of
the resolution you build (1024x768 and/or 512x384). The manual directory must hold:
  {LABEL_FILE}
  1024x768/10004473376.jpg ...   (for config 1024x768)
  512x384/10004473376.jpg ...    (for config 512x384)
"""

    def extra_features(self):
        return {
            "mos_1to5": tfds.features.Scalar(dtype=np.float32),
            "mos_std": tfds.features.Scalar(dtype=np.float32),
            "num_ratings": tfds.features.Scalar(dtype=np.int32),
        }

    def read_labels(self, manual_dir: Path) -> list[base.LabeledImage]:
        resolution = self.builder_config.resolution
        if resolution not in RESOLUTIONS:
            raise ValueError(f"koniq10k: resolution must be one of {RESOLUTIONS}, got "
                             f"{resolution!r}")
        csv_path = base.require_file(manual_dir / LABEL_FILE, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        rows = base.read_csv_rows(csv_path, ["image_name", "c_total", "MOS", "SD", "MOS_zscore"])
        return [self._label(row, f"{csv_path}:{line}", manual_dir / resolution)
                for line, row in rows]

    def _label(self, row: dict[str, str], where: str, image_dir: Path) -> base.LabeledImage:
        extras = {
            "mos_1to5": base.parse_float(row["MOS"], f"{where} MOS", *MOS_1TO5_RANGE),
            "mos_std": base.parse_std(row["SD"], f"{where} SD"),
            "num_ratings": base.parse_count(row["c_total"], f"{where} c_total"),
        }
        mos = base.parse_float(row["MOS_zscore"], f"{where} MOS_zscore")
        return self._labeled_image(row["image_name"], image_dir, mos, where, extras)
