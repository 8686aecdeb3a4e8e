"""What the demo's quality maps show: images distorted on one half, and the map on each half.

A model's quality map (DP-IQA: [h, w, 8], non-negative after a ReLU) is an intermediate feature
that its head reads the score from; nothing trains it to be low where an image is bad, and its
sign or scale carries no meaning of its own. What can be tested is whether it *responds to where*
an image is distorted. Each held-out photograph is shown pristine and with one distortion on its
left or right half only; for each such image

    half difference = mean map over the distorted half - mean map over the clean half
                      - (the same two halves of the pristine photograph's map)

where the map is the mean over its channels. Subtracting the pristine map removes what does not
depend on the distortion: the photograph's own content and the architecture's fixed border pattern
(the student's ConvTranspose with output_padding=1 leaves its last row and column with fewer taps,
so they are systematically different at any input size). The figure draws the maps on one colour
scale per model (not min-max per image, which would let that border pattern dominate every panel)
and, beside each, the difference from the pristine photograph's map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from dpiqa_jax import demo_data

# (distortion, level, half): strong enough to be plainly visible at 128 x 128.
HALF_CASES = (("blur", 4, "left"), ("noise", 3, "right"), ("jpeg", 5, "left"),
              ("contrast", 4, "right"))


@dataclasses.dataclass(frozen=True)
class MapCase:
    """One image of the map study: a photograph, pristine (half None) or distorted on one half."""

    photo: str
    distortion: str          # "pristine" or a demo_data.DISTORTIONS key
    level: int
    half: str | None         # "left" / "right": the distorted half
    image: np.ndarray        # [H, W, 3] uint8
    label: float             # full-reference quality of the whole image, 0..100

    @property
    def title(self) -> str:
        if self.half is None:
            return f"{self.photo} pristine"
        return f"{self.photo} {self.distortion} {self.level}, {self.half} half"


def make_cases(photos: Mapping[str, Image.Image], seed: int) -> list[MapCase]:
    """For each photograph: the pristine image, then one image per HALF_CASES entry."""
    rng = np.random.default_rng(seed)
    cases = []
    for photo, image in sorted(photos.items()):
        cases.append(MapCase(photo, "pristine", 0, None, np.asarray(image), 100.0))
        for distortion, level, half in HALF_CASES:
            distorted = demo_data.half_distorted(image, distortion, level, half, rng)
            cases.append(MapCase(photo, distortion, level, half, np.asarray(distorted),
                                 demo_data.full_reference_quality(image, distorted)))
    return cases


def channel_mean(quality_maps: np.ndarray) -> np.ndarray:
    """[N, h, w, C] -> [N, h, w] float64."""
    quality_maps = np.asarray(quality_maps, np.float64)
    if quality_maps.ndim != 4:
        raise ValueError(f"expected quality maps [N, h, w, C], got shape {quality_maps.shape}")
    return quality_maps.mean(axis=-1)


def _half_columns(width: int, half: str) -> slice:
    if width % 2:
        raise ValueError(f"a map {width} wide has no two equal halves")
    return slice(0, width // 2) if half == "left" else slice(width // 2, width)


def raw_half_difference(mean_map: np.ndarray, half: str) -> float:
    """[h, w] map: mean over the `half` columns minus mean over the other half."""
    other = "right" if half == "left" else "left"
    width = mean_map.shape[1]
    return float(mean_map[:, _half_columns(width, half)].mean()
                 - mean_map[:, _half_columns(width, other)].mean())


def pristine_maps(cases: Sequence[MapCase], mean_maps: np.ndarray) -> dict[str, np.ndarray]:
    """photo -> the [h, w] mean map of its pristine image."""
    return {case.photo: mean_maps[i] for i, case in enumerate(cases) if case.half is None}


def half_differences(cases: Sequence[MapCase], mean_maps: np.ndarray) -> list[float | None]:
    """The half difference (module docstring) of each case; None for the pristine ones."""
    reference = pristine_maps(cases, mean_maps)
    return [None if case.half is None else
            raw_half_difference(mean_maps[i], case.half)
            - raw_half_difference(reference[case.photo], case.half)
            for i, case in enumerate(cases)]


def map_statistics(cases: Sequence[MapCase], quality_maps: np.ndarray) -> dict[str, Any]:
    """The study's numbers for one model.

    half_map_difference: mean half difference over the half-distorted images (map units); a
    distortion may raise the map or lower it, so also half_map_difference_by_distortion (mean
    per distortion kind) and half_map_abs_difference_in_spread (mean |half difference| / spread).
    map_spread: mean standard deviation of a pristine image's map over its cells (how much a map
    varies at all); pristine_right_minus_left: mean over pristine images of right half - left
    half (the fixed asymmetry, border column included, plus content).
    """
    mean_maps = channel_mean(quality_maps)
    per_case = half_differences(cases, mean_maps)
    distorted = [(case, d) for case, d in zip(cases, per_case) if d is not None]
    differences = np.asarray([d for _, d in distorted])
    pristine = np.stack(list(pristine_maps(cases, mean_maps).values()))
    spread = float(np.mean([m.std() for m in pristine]))
    kinds = sorted({case.distortion for case, _ in distorted})
    return {
        "half_map_difference": float(differences.mean()),
        "half_map_difference_by_distortion": {
            kind: float(np.mean([d for case, d in distorted if case.distortion == kind]))
            for kind in kinds},
        "half_map_abs_difference_in_spread": (float(np.abs(differences).mean()) / spread
                                              if spread > 0 else 0.0),
        "map_spread": spread,
        "pristine_right_minus_left": float(np.mean([raw_half_difference(m, "right")
                                                    for m in pristine])),
        "num_half_distorted": int(differences.size),
    }


def draw_figure(cases: Sequence[MapCase], predictions: Mapping[str, tuple[np.ndarray, np.ndarray]],
                path: str) -> None:
    """PNG: per case a row (image | per model: its map, its map - the pristine photo's map).

    predictions: model name -> (scores [N], quality maps [N, h, w, C]) for `cases`.
    """

    columns = 1 + 2 * len(predictions)
    figure = Figure(figsize=(2.1 * columns, 2.2 * len(cases)), dpi=90)
    axes = figure.subplots(len(cases), columns, squeeze=False)
    for row, case in enumerate(cases):
        axes[row, 0].imshow(case.image)
        axes[row, 0].set_title(f"{case.title}\nlabel {case.label:.0f}", fontsize=7)
    for index, (name, (scores, quality_maps)) in enumerate(predictions.items()):
        mean_maps = channel_mean(quality_maps)
        _draw_model_columns(axes, 1 + 2 * index, name, cases, scores, mean_maps)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path)


def _draw_model_columns(axes: np.ndarray, column: int, name: str, cases: Sequence[MapCase],
                        scores: np.ndarray, mean_maps: np.ndarray) -> None:
    """Two columns: the map on the model's shared scale, and its difference from pristine."""
    reference = pristine_maps(cases, mean_maps)
    differences = np.stack([mean_maps[i] - reference[c.photo] for i, c in enumerate(cases)])
    half = half_differences(cases, mean_maps)
    low, high = float(mean_maps.min()), float(mean_maps.max())
    limit = float(np.abs(differences).max()) or 1.0
    for row, case in enumerate(cases):
        map_axis, diff_axis = axes[row, column], axes[row, column + 1]
        map_axis.imshow(mean_maps[row], cmap="inferno", vmin=low, vmax=high,
                        interpolation="nearest")
        map_axis.set_title(f"{name} map, score {scores[row]:.0f}", fontsize=7)
        diff_axis.imshow(differences[row], cmap="coolwarm", vmin=-limit, vmax=limit,
                         interpolation="nearest")
        title = f"{name} - pristine"
        if half[row] is not None:
            title += f"\nhalf difference {half[row]:+.3f}"
        diff_axis.set_title(title, fontsize=7)
        middle = mean_maps.shape[2] / 2 - 0.5
        for axis in (map_axis, diff_axis):
            axis.axvline(middle, color="white", linewidth=0.6, linestyle=":")
