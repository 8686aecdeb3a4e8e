"""The half-distortion map study: what it measures, on maps whose answer is known."""

import numpy as np
import pytest

from dpiqa_jax import demo, demo_data, demo_maps


def _cases():
    photos = demo_data.packaged_photos(64)
    return demo_maps.make_cases({p: photos[p] for p in ("astronaut", "coffee")}, seed=0)


def _maps_with_response(cases, response: float) -> np.ndarray:
    """[N, 8, 8, 2] maps: a per-photo content pattern, a bright border column in every map (as
    the student's ConvTranspose leaves), and `response` added on each distorted half."""
    rng = np.random.default_rng(0)
    content = {c.photo: rng.uniform(0, 1, (8, 8)) for c in cases}
    maps = np.zeros((len(cases), 8, 8, 2))
    for i, case in enumerate(cases):
        maps[i] = content[case.photo][..., None]
        maps[i, :, -1] += 5.0
        if case.half is not None:
            columns = slice(0, 4) if case.half == "left" else slice(4, 8)
            maps[i, :, columns] += response
    return maps


def test_cases_are_pristine_then_each_half_distortion_per_photo():
    cases = _cases()
    assert len(cases) == 2 * (1 + len(demo_maps.HALF_CASES))
    assert [c.half for c in cases[:5]] == [None] + [h for _, _, h in demo_maps.HALF_CASES]
    assert cases[0].label == 100.0 and all(c.label < 100.0 for c in cases if c.half)


def test_half_difference_recovers_the_response_despite_content_and_border():
    cases = _cases()
    stats = demo_maps.map_statistics(cases, _maps_with_response(cases, response=0.3))
    assert stats["half_map_difference"] == pytest.approx(0.3)
    for value in stats["half_map_difference_by_distortion"].values():
        assert value == pytest.approx(0.3)
    assert stats["num_half_distorted"] == 2 * len(demo_maps.HALF_CASES)
    # The border column is on the right: pristine maps lean right by 5 / 4 plus content.
    assert stats["pristine_right_minus_left"] > 1.0


def test_no_response_gives_no_half_difference():
    cases = _cases()
    stats = demo_maps.map_statistics(cases, _maps_with_response(cases, response=0.0))
    assert stats["half_map_difference"] == pytest.approx(0.0, abs=1e-12)
    assert stats["half_map_abs_difference_in_spread"] == pytest.approx(0.0, abs=1e-12)


def test_figure_is_written(tmp_path):
    cases = _cases()
    maps = _maps_with_response(cases, response=0.3)
    scores = np.linspace(50, 90, len(cases))
    path = tmp_path / "maps.png"
    demo_maps.draw_figure(cases, {"teacher": (scores, maps), "student": (scores, maps)},
                          str(path))
    assert path.stat().st_size > 10_000


def test_seed_statistics_are_median_and_range():
    per_seed = {seed: {name: {"srcc": srcc, "plcc": srcc - 0.01} for name in demo.MODELS}
                for seed, srcc in ((0, 0.9), (1, 0.8), (2, 0.95))}
    table = demo.seed_statistics(per_seed)
    assert table["student"]["srcc_median"] == 0.9
    assert table["student"]["srcc_min"] == 0.8 and table["student"]["srcc_max"] == 0.95
    assert table["teacher"]["plcc_median"] == pytest.approx(0.89)
