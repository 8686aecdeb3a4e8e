"""AGIQA-3K (Li et al. 2023): 2,982 AI-generated images with quality and alignment MOS."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from dpiqa_jax.data.builders import base

LABEL_FILE = "data.csv"
NUM_IMAGES = 2982
_COLUMNS = ["name", "prompt", "mos_quality", "std_quality", "mos_align", "std_align"]


@dataclasses.dataclass(eq=False)
class Agiqa3kConfig(base.IqaConfig):
    """Attributes: image_subdir: folder of the images, relative to the manual directory."""

    image_subdir: str = "images"


class Agiqa3k(base.IqaBuilder):
    """AGIQA-3K: `mos` is the perceptual-quality MOS (`mos_quality`, 0-5).

    Text-image alignment (`mos_align`, `mos_align_std`) and the prompt are kept as extra features.
    """

    BUILDER_CONFIGS = [Agiqa3kConfig(name="default", expected_count=NUM_IMAGES)]
    DESCRIPTION = __doc__
    HOMEPAGE = "https://github.com/lcysyzxdxc/AGIQA-3k-Database"
    MOS_RANGE = (0.0, 5.0)
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download AGIQA-3K (links at {HOMEPAGE}). The manual directory must hold:
  {LABEL_FILE}     (columns name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align)
  images/AttnGAN_normal_000.jpg ...   (the image folder; if yours has another name, set
                                      image_subdir in the builder config)
"""

    def extra_features(self):
        return {
            "mos_std": tfds.features.Scalar(dtype=np.float32),
            "mos_align": tfds.features.Scalar(dtype=np.float32),
            "mos_align_std": tfds.features.Scalar(dtype=np.float32),
            "prompt": tfds.features.Text(),
        }

    def read_labels(self, manual_dir: Path) -> list[base.LabeledImage]:
        csv_path = base.require_file(manual_dir / LABEL_FILE, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        image_dir = manual_dir / self.builder_config.image_subdir
        labels = []
        for line, row in base.read_csv_rows(csv_path, _COLUMNS):
            where = f"{csv_path}:{line}"
            extras = {
                "mos_std": base.parse_std(row["std_quality"], f"{where} std_quality"),
                "mos_align": base.parse_float(row["mos_align"], f"{where} mos_align",
                                              *self.MOS_RANGE),
                "mos_align_std": base.parse_std(row["std_align"], f"{where} std_align"),
                "prompt": row["prompt"],
            }
            mos = base.parse_float(row["mos_quality"], f"{where} mos_quality")
            labels.append(self._labeled_image(row["name"], image_dir, mos, where, extras))
        return labels
