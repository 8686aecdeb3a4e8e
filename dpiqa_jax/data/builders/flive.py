"""LIVE-FB / FLIVE (Ying et al. 2020, "From Patches to Pictures"): 39,810 pictures."""

from __future__ import annotations

from pathlib import Path

from dpiqa_jax.data.builders import base

LABEL_FILE = "labels_image.csv"
NUM_IMAGES = 39810


class Flive(base.IqaBuilder):
    """LIVE-FB (FLIVE): whole-picture MOS 0-100. The patch labels are not used."""

    BUILDER_CONFIGS = [base.IqaConfig(name="default", expected_count=NUM_IMAGES)]
    DESCRIPTION = __doc__
    HOMEPAGE = "https://github.com/niu-haoran/FLIVE_Database"
    MOS_RANGE = (0.0, 100.0)
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Get the FLIVE database following {HOMEPAGE} (image labels in database/{LABEL_FILE}; the images
of the voc_emotic_ava, blur_dataset and EE371R collections). The manual directory is that
database/ folder; image names in {LABEL_FILE} are paths relative to it:
  {LABEL_FILE}            (columns name,mos)
  voc_emotic_ava/AVA__129332.jpg ...
  blur_dataset/motion0044.jpg ...
  EE371R/...
"""

    def read_labels(self, manual_dir: Path) -> list[base.LabeledImage]:
        csv_path = base.require_file(manual_dir / LABEL_FILE, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        return [
            self._labeled_image(row["name"], manual_dir,
                                base.parse_float(row["mos"], f"{csv_path}:{line} mos"),
                                f"{csv_path}:{line}")
            for line, row in base.read_csv_rows(csv_path, ["name", "mos"])
        ]
