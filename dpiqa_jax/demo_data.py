"""A small IQA set labelled by a full-reference measure, from photographs that ship in packages.

Every photograph that scikit-image and matplotlib install (no downloads) is cut to its central
square, resized to side x side (or, where the photograph is large enough, cut into tiles x tiles
views of side x side: more contents to learn from, at a finer scale) and degraded by blur, noise,
JPEG and contrast reduction at graded levels. Each distorted image is labelled, as large
synthetic IQA sets without human scores are (KADIS-700k), by a full-reference quality of the
distorted image against its pristine version:

    label = 100 x mean over 3 scales of SSIM(pristine, distorted)      (0..100, higher is better)

SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03, per colour channel, averaged)
is computed by scikit-image at full, half and quarter resolution (2 x 2 mean pooling) and the three
values are averaged, a multi-scale SSIM in the spirit of MS-SSIM. At full resolution alone, noise
dominates the scale: over these photographs at 128 x 128, noise of sigma 7 scores 81 (as low as a
1.2-pixel blur, 79) and sigma 35 falls to 33 while the harshest blur, JPEG and contrast levels
score 52-54. The coarser scales, where fine noise partly averages out but blur and lost contrast
remain, bring the four kinds onto comparable ranges (harshest level: blur 66, noise 59, JPEG 62,
contrast 50; mildest 92-98), and every kind is ordered by level on average. The task this
set poses is "predict the full-reference quality without the reference".

Splits are by photograph, so a test photograph is never seen in training, in any version.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
from collections.abc import Callable, Sequence

import matplotlib
import numpy as np
import skimage.data
from PIL import Image, ImageEnhance, ImageFilter
from skimage.metrics import structural_similarity

LEVELS = 5
SSIM_SCALES = 3
# SSIM's 11 x 11 Gaussian window must fit the coarsest scale.
MIN_SIDE = 11 * 2 ** (SSIM_SCALES - 1)
HALVES = ("left", "right")

# scikit-image's photographs (synthetic drawings, binary masks, stereo duplicates and images
# smaller than the demo's side are left out) and matplotlib's Grace Hopper portrait.
_SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field",
                   "retina", "brick", "grass", "gravel", "moon", "clock", "coins",
                   "immunohistochemistry", "cell", "page", "text")


@dataclasses.dataclass(frozen=True)
class DemoRecord:
    name: str            # "<photo>/<view>/<distortion>_<level>.png"
    photo: str
    view: str            # which tile of the photograph: "r<row>c<column>"
    distortion: str      # "pristine" for the undistorted image
    level: int           # 0 for the pristine image, 1..LEVELS otherwise
    image: bytes         # PNG-encoded RGB
    mos: float           # 0..100 full-reference quality against the pristine image

    @property
    def mos_normalized(self) -> float:
        return self.mos / 100.0


def _load_photos() -> dict[str, np.ndarray]:
    """Each photograph as an array [H, W] (grey) or [H, W, 3] uint8, as its package ships it."""
    photos = {name: getattr(skimage.data, name)() for name in _SKIMAGE_PHOTOS}
    photos["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    hopper = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    with Image.open(hopper) as image:
        photos["grace_hopper"] = np.asarray(image.convert("RGB"))
    return photos


def _central_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def packaged_photos(side: int) -> dict[str, Image.Image]:
    """The photographs, RGB (grey ones repeated over the channels), central square, side x side."""
    return {photo: image for (photo, _), image in photo_views(side, tiles=1).items()}


def photo_views(side: int, tiles: int) -> dict[tuple[str, str], Image.Image]:
    """(photo, view) -> side x side RGB image (grey photographs repeated over the channels).

    Each photograph's central square is resized to g*side and cut into g x g tiles, g =
    min(tiles, square side // side) but at least 1: a photograph is never enlarged to give more
    views."""
    if tiles < 1:
        raise ValueError(f"tiles must be at least 1, got {tiles}")
    views = {}
    for name, pixels in _load_photos().items():
        if min(pixels.shape[:2]) < side:
            raise ValueError(f"photo {name!r} is {pixels.shape[:2]}, smaller than side {side}")
        square = _central_square(Image.fromarray(pixels).convert("RGB"))
        grid = max(1, min(tiles, square.size[0] // side))
        large = square.resize((grid * side, grid * side), Image.BICUBIC, reducing_gap=2.0)
        for row in range(grid):
            for column in range(grid):
                box = (column * side, row * side, (column + 1) * side, (row + 1) * side)
                views[(name, f"r{row}c{column}")] = large.crop(box)
    return views


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


def _ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    return float(structural_similarity(reference, distorted, channel_axis=-1, data_range=255.0,
                                       gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def _halve(pixels: np.ndarray) -> np.ndarray:
    """[H, W, C] -> [H // 2, W // 2, C], the mean of each 2 x 2 block."""
    height, width = pixels.shape[0] // 2 * 2, pixels.shape[1] // 2 * 2
    blocks = pixels[:height, :width].reshape(height // 2, 2, width // 2, 2, -1)
    return blocks.mean(axis=(1, 3))


def full_reference_quality(reference: Image.Image, distorted: Image.Image) -> float:
    """0..100: 100 x the mean SSIM over SSIM_SCALES dyadic scales (module docstring)."""
    if reference.size != distorted.size:
        raise ValueError(f"reference {reference.size} and distorted {distorted.size} differ")
    if min(reference.size) < MIN_SIDE:
        raise ValueError(f"images of {reference.size} are too small for {SSIM_SCALES}-scale "
                         f"SSIM; the side must be at least {MIN_SIDE}")
    a = np.asarray(reference.convert("RGB"), np.float64)
    b = np.asarray(distorted.convert("RGB"), np.float64)
    values = []
    for _ in range(SSIM_SCALES):
        values.append(_ssim(a, b))
        a, b = _halve(a), _halve(b)
    return float(np.clip(100.0 * np.mean(values), 0.0, 100.0))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_demo_records(side: int = 128, seed: int = 0, tiles: int = 1) -> list[DemoRecord]:
    """Pristine + every distortion at levels 1..LEVELS, for every view of every packaged photo
    (`photo_views`; tiles=1: the central square only)."""
    return list(_demo_records(side, seed, tiles))


# A demo builds the same set for the teacher's run, the student's and its figures; the SSIM
# labels take seconds, so it is made once per (side, seed, tiles).
@functools.lru_cache(maxsize=2)
def _demo_records(side: int, seed: int, tiles: int) -> tuple[DemoRecord, ...]:
    rng = np.random.default_rng(seed)
    records = []
    for (photo, view), image in sorted(photo_views(side, tiles).items()):
        prefix = f"{photo}/{view}"
        records.append(DemoRecord(f"{prefix}/pristine_0.png", photo, view, "pristine", 0,
                                  _png(image), 100.0))
        for distortion, apply in DISTORTIONS.items():
            for level in range(1, LEVELS + 1):
                degraded = apply(image, level, rng)
                records.append(DemoRecord(f"{prefix}/{distortion}_{level}.png", photo, view,
                                          distortion, level, _png(degraded),
                                          full_reference_quality(image, degraded)))
    return tuple(records)


def half_distorted(image: Image.Image, distortion: str, level: int, half: str,
                   rng: np.random.Generator) -> Image.Image:
    """`image` with `distortion` at `level` on its left or right half only, the rest untouched."""
    if half not in HALVES:
        raise ValueError(f"half must be one of {HALVES}, got {half!r}")
    degraded = DISTORTIONS[distortion](image, level, rng)
    width, height = image.size
    box = (0, 0, width // 2, height) if half == "left" else (width - width // 2, 0, width, height)
    result = image.copy()
    result.paste(degraded.crop(box), box[:2])
    return result


def split_records(side: int, tiles: int, test_photos: int, val_photos: int, seed: int
                  ) -> dict[str, list[DemoRecord]]:
    """The demo set's train/val/test parts for split seed `seed` (the records themselves are
    always made with seed 0, so every split sees the same images)."""
    return split_by_photo(make_demo_records(side=side, seed=0, tiles=tiles), test_photos,
                          val_photos, seed=seed)


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
