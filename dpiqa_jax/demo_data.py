"""A small IQA set with a known quality order, made from photographs that ship inside packages.

Each photograph (scikit-image's sample photos and matplotlib's Grace Hopper portrait) is degraded
by several distortions at graded levels. The quality label is fixed by construction: the pristine
image scores 100 and every level of a distortion costs the same number of points, so within one
photo and distortion the order is known. Splits are by photograph, so a test photo is never seen in
training, in any version.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

LEVELS = 5
POINTS_PER_LEVEL = 18.0
_SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field",
                   "retina", "brick", "grass", "gravel", "moon", "clock", "coins",
                   "immunohistochemistry")


@dataclasses.dataclass(frozen=True)
class DemoRecord:
    name: str            # "<photo>/<distortion>_<level>.png"
    photo: str
    distortion: str      # "pristine" for the undistorted image
    level: int           # 0 for the pristine image, 1..LEVELS otherwise
    image: bytes         # PNG-encoded RGB
    mos: float           # 0..100, higher is better

    @property
    def mos_normalized(self) -> float:
        return self.mos / 100.0


def packaged_photos(side: int) -> dict[str, Image.Image]:
    """The photographs, RGB, squashed to side x side (skimage + matplotlib, no downloads)."""
    import matplotlib  # pylint: disable=import-outside-toplevel
    import skimage.data  # pylint: disable=import-outside-toplevel
    photos = {name: Image.fromarray(getattr(skimage.data, name)()) for name in _SKIMAGE_PHOTOS}
    hopper = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    with Image.open(hopper) as image:
        photos["grace_hopper"] = image.copy()
    return {name: image.convert("RGB").resize((side, side), Image.BILINEAR)
            for name, image in photos.items()}


def _blur(image: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=0.6 * level))


def _noise(image: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, np.float32)
    noisy = pixels + rng.normal(0.0, 7.0 * level, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=(45, 25, 12, 6, 2)[level - 1])
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _contrast(image: Image.Image, level: int, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(1.0 - 0.17 * level)


DISTORTIONS: dict[str, Callable[[Image.Image, int, np.random.Generator], Image.Image]] = {
    "blur": _blur, "noise": _noise, "jpeg": _jpeg, "contrast": _contrast}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_demo_records(side: int = 128, seed: int = 0) -> list[DemoRecord]:
    """Pristine + every distortion at levels 1..LEVELS, for every packaged photo."""
    rng = np.random.default_rng(seed)
    records = []
    for photo, image in sorted(packaged_photos(side).items()):
        records.append(DemoRecord(f"{photo}/pristine_0.png", photo, "pristine", 0, _png(image),
                                  100.0))
        for distortion, apply in DISTORTIONS.items():
            for level in range(1, LEVELS + 1):
                degraded = apply(image, level, rng)
                records.append(DemoRecord(f"{photo}/{distortion}_{level}.png", photo, distortion,
                                          level, _png(degraded), 100.0 - POINTS_PER_LEVEL * level))
    return records


def split_by_photo(records: Sequence[DemoRecord], test_photos: int, val_photos: int, seed: int
                   ) -> dict[str, list[DemoRecord]]:
    """Train/val/test parts with disjoint photographs."""
    photos = sorted({r.photo for r in records})
    if test_photos + val_photos >= len(photos):
        raise ValueError(f"{len(photos)} photos cannot give {test_photos} test and {val_photos} "
                         "validation photos and still leave some for training")
    order = np.random.default_rng(seed).permutation(len(photos))
    test = {photos[i] for i in order[:test_photos]}
    val = {photos[i] for i in order[test_photos:test_photos + val_photos]}
    parts: dict[str, list[DemoRecord]] = {"train": [], "val": [], "test": []}
    for record in records:
        part = "test" if record.photo in test else "val" if record.photo in val else "train"
        parts[part].append(record)
    return parts
