"""SPAQ (Fang et al. 2020): 11,125 smartphone photos with MOS and attribute scores."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
from openpyxl.utils.exceptions import InvalidFileException
import tensorflow_datasets as tfds

from dpiqa_jax.data.builders import base

LABEL_FILE = "MOS and Image attribute scores.xlsx"
# The release keeps the label file in Annotations/; some copies have it at the top level.
LABEL_FILE_LOCATIONS = (f"Annotations/{LABEL_FILE}", LABEL_FILE)
IMAGE_DIR = "TestImage"
NAME_COLUMN = "Image name"
ATTRIBUTE_COLUMNS = ("Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness")
NUM_IMAGES = 11125


class Spaq(base.IqaBuilder):
    """SPAQ: MOS 0-100 and five attribute scores (0-100) per photo."""

    BUILDER_CONFIGS = [base.IqaConfig(name="default", expected_count=NUM_IMAGES)]
    DESCRIPTION = __doc__
    HOMEPAGE = "https://github.com/h4nwei/SPAQ"
    MOS_RANGE = (0.0, 100.0)
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download SPAQ (links at {HOMEPAGE}). The manual directory must hold:
  Annotations/{LABEL_FILE}   (or {LABEL_FILE} at the top level)
  {IMAGE_DIR}/00001.jpg ... {IMAGE_DIR}/11125.jpg
"""

    def extra_features(self):
        return {column.lower(): tfds.features.Scalar(dtype=np.float32)
                for column in ATTRIBUTE_COLUMNS}

    def read_labels(self, manual_dir: Path) -> list[base.LabeledImage]:
        xlsx_path = find_label_file(manual_dir, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        labels = []
        for line, row in read_xlsx_rows(xlsx_path, (NAME_COLUMN, "MOS") + ATTRIBUTE_COLUMNS):
            where = f"{xlsx_path} row {line}"
            extras = {column.lower(): base.parse_float(row[column], f"{where} {column}",
                                                       *self.MOS_RANGE)
                      for column in ATTRIBUTE_COLUMNS}
            mos = base.parse_float(row["MOS"], f"{where} MOS")
            labels.append(self._labeled_image(str(row[NAME_COLUMN]), manual_dir / IMAGE_DIR, mos,
                                              where, extras))
        return labels


def find_label_file(manual_dir: Path, instructions: str) -> Path:
    candidates = [manual_dir / location for location in LABEL_FILE_LOCATIONS]
    found = [path for path in candidates if path.is_file()]
    if not found:
        raise FileNotFoundError(f"spaq: none of {[str(p) for p in candidates]} exists.\n"
                                f"{instructions}")
    if len(found) > 1:
        raise ValueError(f"spaq: both {found[0]} and {found[1]} exist; keep one so the labels "
                         f"used are unambiguous")
    return found[0]


def read_xlsx_rows(path: Path, required_columns: tuple[str, ...]
                   ) -> list[tuple[int, dict[str, Any]]]:
    """First sheet of an .xlsx with a header row -> (row number, row) pairs.

    Rows whose cells are all empty (Excel's trailing formatting) are not rows of data.
    """
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, InvalidFileException) as e:
        raise ValueError(f"{path}: not a readable .xlsx workbook ({e})") from None
    try:
        rows = workbook.worksheets[0].iter_rows(values_only=True)
        header = [str(cell).strip() if cell is not None else "" for cell in next(rows, ())]
        absent = [c for c in required_columns if c not in header]
        if absent:
            raise ValueError(f"{path}: missing column(s) {absent}; header is {header}")
        return [(number, dict(zip(header, values)))
                for number, values in enumerate(rows, start=2)
                if any(value is not None for value in values)]
    finally:
        workbook.close()
