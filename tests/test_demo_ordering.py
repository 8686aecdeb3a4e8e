"""The demo's split of the held-out SRCC into ordering within one content and between contents."""

import math

import pytest
import scipy.stats

from dpiqa_jax import demo, demo_data


def _records(labels_by_view: dict[str, dict[tuple[str, int], float]]) -> list:
    return [demo_data.DemoRecord(f"{view}/{kind}_{level}.png", view.split("/")[0],
                                 view.split("/")[1], kind, level, b"", label)
            for view, labels in labels_by_view.items()
            for (kind, level), label in labels.items()]


def _labels(drop_per_level: dict[str, float]) -> dict[tuple[str, int], float]:
    labels = {("pristine", 0): 100.0}
    for kind, drop in drop_per_level.items():
        labels.update({(kind, level): 100.0 - drop * level for level in range(1, 6)})
    return labels


DROPS = {"blur": 3.0, "noise": 7.0, "jpeg": 5.0, "contrast": 4.0}
RECORDS = _records({"moon/r0c0": _labels(DROPS),
                    "gravel/r0c0": _labels({k: 2 * v for k, v in DROPS.items()})})


def test_a_per_content_offset_lowers_only_the_plain_srcc():
    offsets = {"moon": -40.0, "gravel": 0.0}
    scores = {r.name: r.mos + offsets[r.photo] for r in RECORDS}
    figures = demo.ordering_figures(RECORDS, scores)
    plain = scipy.stats.spearmanr([scores[r.name] for r in RECORDS],
                                  [r.mos for r in RECORDS])[0]
    # Centring shifts each score by a float mean, so ties between views may differ by a rounding.
    assert figures == pytest.approx({"within_view_srcc": 1.0, "offset_removed_srcc": 1.0},
                                    abs=1e-9)
    assert plain < 0.5


def test_levels_in_the_wrong_order_score_minus_one_within_a_view():
    scores = {r.name: -r.mos for r in RECORDS}
    figures = demo.ordering_figures(RECORDS, scores)
    assert figures["within_view_srcc"] == -1.0
    assert figures["offset_removed_srcc"] < -0.9


def test_a_constant_model_has_no_ordering():
    figures = demo.ordering_figures(RECORDS, {r.name: 0.5 for r in RECORDS})
    assert all(math.isnan(v) for v in figures.values())
