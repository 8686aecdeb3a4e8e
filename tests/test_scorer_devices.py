"""A student's scoring split over several CPU devices gives the one-device scores and maps.

The two-device part runs in a child process (this file run as a script): JAX must be given two
CPU devices before it starts. Both scorers live in the child.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from dpiqa_jax import scorer

from helpers import (
    REPO_ROOT,
    child_environment,
    make_student_bundle,
    make_teacher_bundle,
    random_image,
)

# Each device runs the one-device loop on its share of the batch, but it is another compiled
# program (as another batch size is, test_scorer): equal up to float32 rounding.
RTOL, ATOL = 1e-5, 1e-6


def _child(bundle_dir: str) -> dict:
    images = [random_image(i) for i in range(3)]  # odd: the last device gets a padding row
    one = scorer.Scorer.load(bundle_dir, batch_size=4).predict(images, return_maps=True)
    two = scorer.Scorer.load(bundle_dir, batch_size=4, devices=2).predict(images,
                                                                           return_maps=True)
    return {"raw": [one.raw.tolist(), two.raw.tolist()],
            "map": [one.quality_map.tolist(), two.quality_map.tolist()]}


def test_two_cpu_devices_score_as_one(tmp_path):
    bundle_dir = make_student_bundle(tmp_path / "student")
    child = subprocess.run([sys.executable, __file__, bundle_dir], cwd=REPO_ROOT,
                           env=child_environment(2), capture_output=True, text=True, check=False)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(*result["raw"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(*result["map"], rtol=RTOL, atol=ATOL)
    assert len(result["raw"][1]) == 3 and np.ptp(result["raw"][1]) > 1e-3


def test_more_devices_than_the_process_has_is_refused(tmp_path):
    bundle_dir = make_student_bundle(tmp_path / "student")
    with pytest.raises(ValueError, match="cannot spread scoring over 64 devices"):
        scorer.Scorer.load(bundle_dir, devices=64)


def test_a_teacher_is_not_split(tmp_path):
    with pytest.raises(ValueError, match="only a student is split"):
        scorer.Scorer.load(make_teacher_bundle(tmp_path / "teacher"), devices=2)


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1])))
