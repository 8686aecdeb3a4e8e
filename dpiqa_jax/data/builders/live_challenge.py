"""LIVE In the Wild Image Quality Challenge (CLIVE, Ghadiyaram & Bovik 2016)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from dpiqa_jax.data.builders import base

NAMES_FILE = "Data/AllImages_release.mat"
MOS_FILE = "Data/AllMOS_release.mat"
STD_FILE = "Data/AllStdDev_release.mat"
# The release lists its 7 training images first (files in Images/trainingImages/); IQA papers
# evaluate on the other 1162.
TRAINING_IMAGES = tuple(f"t{i}.bmp" for i in range(1, 8))
NUM_IMAGES = 1162


class LiveChallenge(base.IqaBuilder):
    """LIVE Challenge (CLIVE): 1162 test images, MOS 0-100, without the 7 training images."""

    BUILDER_CONFIGS = [base.IqaConfig(name="default", expected_count=NUM_IMAGES)]
    DESCRIPTION = __doc__
    HOMEPAGE = "https://live.ece.utexas.edu/research/ChallengeDB/index.html"
    MOS_RANGE = (0.0, 100.0)
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Request and download ChallengeDB_release from {HOMEPAGE}. The manual directory is the unpacked
ChallengeDB_release/ folder:
  {NAMES_FILE}   {MOS_FILE}   {STD_FILE}
  Images/3.bmp ... Images/1000.JPG ...   (Images/trainingImages/ is not used)
"""

    def extra_features(self):
        return {"mos_std": tfds.features.Scalar(dtype=np.float32)}

    def read_labels(self, manual_dir: Path) -> list[base.LabeledImage]:
        names = self._mat_vector(manual_dir / NAMES_FILE, "AllImages_release")
        mos = self._mat_vector(manual_dir / MOS_FILE, "AllMOS_release")
        std = self._mat_vector(manual_dir / STD_FILE, "AllStdDev_release")
        if not len(names) == len(mos) == len(std):
            raise ValueError(f"live_challenge: {NAMES_FILE}, {MOS_FILE} and {STD_FILE} list "
                             f"{len(names)}, {len(mos)} and {len(std)} entries; they must match")
        names = [_mat_string(entry) for entry in names]
        check_training_images_first(names, manual_dir / NAMES_FILE)
        return [self._label(manual_dir, index, name, m, s)
                for index, (name, m, s) in enumerate(zip(names, mos, std))
                if index >= len(TRAINING_IMAGES)]

    def _label(self, manual_dir: Path, index: int, name: str, mos: Any, std: Any
               ) -> base.LabeledImage:
        """The test image at `index` of the .mat files (entries numbered from 1 in messages)."""
        where = f"{manual_dir / MOS_FILE} entry {index + 1}"
        std = base.parse_std(std, f"{manual_dir / STD_FILE} entry {index + 1}")
        return self._labeled_image(name, manual_dir / "Images", base.parse_float(mos, where),
                                   where, {"mos_std": std})

    def _mat_vector(self, path: Path, key: str) -> np.ndarray:
        base.require_file(path, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        try:
            contents = scipy.io.loadmat(path)
        # What scipy raises on a malformed .mat, by the part of the file it trips on.
        except (ValueError, TypeError, IndexError, KeyError, EOFError, NotImplementedError,
                scipy.io.matlab.MatReadError) as e:
            raise ValueError(f"{path}: not a readable MATLAB file ({e})") from None
        if key not in contents:
            raise KeyError(f"{path}: no variable {key!r}; found "
                           f"{sorted(k for k in contents if not k.startswith('__'))}")
        return np.ravel(contents[key])


def _mat_string(entry) -> str:
    """A MATLAB cell entry (nested arrays around one string) -> the string."""
    return str(np.ravel(entry)[0])


def check_training_images_first(names: list[str], where: Path) -> None:
    head = tuple(names[:len(TRAINING_IMAGES)])
    if head != TRAINING_IMAGES:
        raise ValueError(f"{where}: expected the first entries to be the training images "
                         f"{TRAINING_IMAGES}, got {head}; is this the official release?")
