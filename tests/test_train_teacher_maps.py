"""The teacher-map cache made by launch.cache_teacher_maps serves the training pipeline: every
training batch finds its images in it, with the maps the frozen teacher computes for them."""

import json
import os
import subprocess
import sys

from helpers import REPO_ROOT, child_environment

MAP_ATOL = 1e-5  # fp32; the same teacher program on batches made by two pipelines


def test_cache_serves_the_training_batches(tmp_path):
    out = tmp_path / "maps.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "launch.cache_teacher_maps", "--config=configs/student.py:tiny",
         f"--out={out}"], env=child_environment(1), cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    check = subprocess.run([sys.executable, os.path.abspath(__file__), str(out)],
                           env=child_environment(1), cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=900, check=False)
    assert check.returncode == 0, check.stderr[-4000:]
    report = json.loads(check.stdout.strip().splitlines()[-1])
    assert report["cached"] == report["train_images"] > 0
    assert report["max_map_diff"] <= MAP_ATOL
    assert report["checked"] == 16


# --------------------------------------------------------------------------- child process


def _child(path: str) -> dict:
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    from configs import student  # pylint: disable=import-outside-toplevel
    from dpiqa_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    from dpiqa_jax.train import inputs, models, steps  # pylint: disable=import-outside-toplevel
    from dpiqa_jax.train.teacher_maps import TeacherMapCache  # pylint: disable=import-outside-toplevel

    config = student.get_config("tiny")
    cache = TeacherMapCache(path)
    train_part = inputs.open_parts(config.data)["train"]
    teacher, weights = models.initial_teacher_for_distillation(config)
    maps_fn = jax.jit(steps.make_teacher_maps(teacher, seed=config.seed))
    iterator = pipeline.train_iterator(train_part, inputs.pipeline_config(config))
    diffs = []
    for _ in range(2):
        images = next(iterator)["image"]
        cached = cache.lookup(images)
        fresh = np.asarray(maps_fn(weights.params, weights.prompts, images))
        diffs.append(float(np.max(np.abs(cached - fresh))))
    return {"cached": len(cache), "train_images": len(train_part), "checked": 2 * len(images),
            "max_map_diff": max(diffs)}


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1])))
