"""The demo end to end at a few steps: both models trained, evaluated on held-out photos,
reported."""

import json
import math
import os

import pytest

from configs import student, teacher
from dpiqa_jax import demo, demo_maps


@pytest.mark.slow
def test_demo_writes_the_report(tmp_path):
    settings = demo.DemoSettings(image_size=64, teacher_steps=2, student_steps=2, batch_size=8,
                                 evaluations=1)
    tiny_configs = {"teacher": teacher.get_config("tiny"), "student": student.get_config("tiny")}
    metrics = demo.run_demo(str(tmp_path), tiny_configs, settings)
    with open(tmp_path / "metrics.json", encoding="utf-8") as f:
        written = json.load(f)
    held_out = len(demo.split_records(settings)["test"])
    for name in demo.MODELS:
        assert set(written[name]) >= {"srcc", "plcc"}
        assert written[name]["num_images"] == held_out
        assert written[name]["srcc"] == metrics[name]["srcc"]
        assert os.path.isfile(tmp_path / f"{name}_test" / "scatter.png")
        assert os.path.isfile(tmp_path / name / "best_model" / "model.json")
        maps = written["maps"][name]
        assert maps["num_half_distorted"] == settings.test_photos * len(demo_maps.HALF_CASES)
        assert math.isfinite(maps["half_map_difference"]) and maps["map_spread"] >= 0.0
        assert set(written["ordering"][name]) == {"within_view_srcc", "offset_removed_srcc"}
    assert written["held_out_photos"] == demo.held_out_photos(settings)
    assert os.path.getsize(tmp_path / demo.MAP_FIGURE) > 10_000
    summary = (tmp_path / "summary.md").read_text()
    assert "| student |" in summary and "**Where the order is lost**" in summary
