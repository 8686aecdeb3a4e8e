"""KADID-10k (Lin et al. 2019): 81 references x 25 synthetic distortions x 5 levels."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from dpiqa_jax.data.builders import base

LABEL_FILE = "dmos.csv"
IMAGE_DIR = "images"
NUM_IMAGES = 10125
# Distortion number (the middle field of I01_<type>_<level>.png) -> name, in the release's order.
DISTORTION_NAMES = (
    "gaussian_blur", "lens_blur", "motion_blur", "color_diffusion", "color_shift",
    "color_quantization", "color_saturation_hsv", "color_saturation_lab", "jpeg2000", "jpeg",
    "white_noise", "white_noise_ycbcr", "impulse_noise", "multiplicative_noise", "denoise",
    "brighten", "darken", "mean_shift", "jitter", "non_eccentricity_patch", "pixelate",
    "quantization", "color_block", "high_sharpen", "contrast_change",
)
_NAME_PATTERN = re.compile(r"^I(\d{2})_(\d{2})_(\d{2})\.png$")


class Kadid10k(base.IqaBuilder):
    """KADID-10k. The label column is named `dmos` but is a MOS: 1-5, higher is better."""

    BUILDER_CONFIGS = [base.IqaConfig(name="default", expected_count=NUM_IMAGES)]
    DESCRIPTION = __doc__
    HOMEPAGE = "https://database.mmsp-kn.de/kadid-10k-database.html"
    MOS_RANGE = (1.0, 5.0)
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download kadid10k.zip from {HOMEPAGE} and unpack it. The manual directory is kadid10k/:
  {LABEL_FILE}                  (columns dist_img,ref_img,dmos,var)
  {IMAGE_DIR}/I01.png ...          (references)
  {IMAGE_DIR}/I01_01_01.png ...    (distorted images)
"""

    def extra_features(self):
        return {
            "mos_variance": tfds.features.Scalar(dtype=np.float32),
            "reference_name": tfds.features.Text(),
            "distortion_type": tfds.features.Scalar(dtype=np.int32),
            "distortion_name": tfds.features.Text(),
            "distortion_level": tfds.features.Scalar(dtype=np.int32),
        }

    def read_labels(self, manual_dir: Path) -> list[base.LabeledImage]:
        csv_path = base.require_file(manual_dir / LABEL_FILE, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        labels = []
        for line, row in base.read_csv_rows(csv_path, ["dist_img", "ref_img", "dmos", "var"]):
            where = f"{csv_path}:{line}"
            distortion_type, level = parse_distortion(row["dist_img"], where)
            extras = {
                "mos_variance": base.parse_std(row["var"], f"{where} var"),
                "reference_name": row["ref_img"],
                "distortion_type": distortion_type,
                "distortion_name": DISTORTION_NAMES[distortion_type - 1],
                "distortion_level": level,
            }
            mos = base.parse_float(row["dmos"], f"{where} dmos")
            labels.append(self._labeled_image(row["dist_img"], manual_dir / IMAGE_DIR, mos, where,
                                              extras))
        return labels


def parse_distortion(name: str, where: str) -> tuple[int, int]:
    """'I01_07_03.png' -> (distortion type 7, level 3)."""
    match = _NAME_PATTERN.match(name)
    if not match:
        raise ValueError(f"{where}: image name {name!r} does not follow I<ref>_<type>_<level>.png")
    distortion_type, level = int(match.group(2)), int(match.group(3))
    if not (1 <= distortion_type <= len(DISTORTION_NAMES) and 1 <= level <= 5):
        raise ValueError(f"{where}: image name {name!r} has distortion type {distortion_type} / "
                         f"level {level}; expected type 1-{len(DISTORTION_NAMES)}, level 1-5")
    return distortion_type, level
