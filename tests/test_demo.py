"""The demo end to end at a few steps: both models trained, evaluated on held-out photos,
reported."""

import json
import os

import pytest

from configs import student, teacher
from dpiqa_jax import demo


@pytest.mark.slow
def test_demo_writes_the_report(tmp_path):
    settings = demo.DemoSettings(image_size=64, teacher_steps=2, student_steps=2, batch_size=8)
    tiny_configs = {"teacher": teacher.get_config("tiny"), "student": student.get_config("tiny")}
    metrics = demo.run_demo(str(tmp_path), tiny_configs, settings)
    with open(tmp_path / "metrics.json", encoding="utf-8") as f:
        written = json.load(f)
    for name in ("teacher", "student"):
        assert set(written[name]) >= {"srcc", "plcc"}
        assert written[name]["num_images"] == 4 * 21  # four held-out photos, all versions
        assert written[name]["srcc"] == metrics[name]["srcc"]
        assert os.path.isfile(tmp_path / f"{name}_test" / "scatter.png")
        assert os.path.isfile(tmp_path / name / "best_model" / "model.json")
    assert os.path.getsize(tmp_path / "quality_maps.png") > 10_000
    assert "| student |" in (tmp_path / "summary.md").read_text()
