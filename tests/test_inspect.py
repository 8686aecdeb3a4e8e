"""launch.inspect: parameter counts from abstract shapes (the full-size models, without weights),
and the memory line of a compiled train step on a fake-device mesh (tiny model)."""

import json
import os
import subprocess
import sys

import pytest

from configs import student, teacher
from dpiqa_jax.train import footprint

from helpers import REPO_ROOT, child_environment

# design.md: SD 1.5 UNet, T2I full adapter, text adapter + gamma, QFD; torchvision B7 student.
EXPECTED_TEACHER = {"unet": 859_520_964, "image_adapter": 77_369_280, "text_adapter": 1_181_952,
                    "qfd": 42_934_697, "vae_encoder": 34_163_664}
EXPECTED_STUDENT = {"student": 81_012_185}


def test_full_size_teacher_parameter_counts():
    assert footprint.parameter_counts(teacher.get_config("koniq10k")) == EXPECTED_TEACHER


def test_full_size_student_parameter_count():
    assert footprint.parameter_counts(student.get_config("koniq10k")) == EXPECTED_STUDENT


@pytest.mark.parametrize("spec,count", [("data=2,fsdp=4", 8), ("data=-1,fsdp=2", None)])
def test_launcher_emulates_the_mesh_devices(spec, count):
    env = dict(os.environ, XLA_FLAGS="")
    code = ("import sys; sys.argv = ['inspect', '--mesh', sys.argv[1]]; import launch.inspect, os;"
            " print(os.environ['XLA_FLAGS'])")
    out = subprocess.run([sys.executable, "-c", code, spec], env=env, cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == ("" if count is None else f"--xla_force_host_platform_device_count={count}")


def test_launcher_prints_one_line_per_module_and_the_step_memory():
    env = child_environment(1)
    env["XLA_FLAGS"] = env["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=1", "")
    result = subprocess.run(
        [sys.executable, "-m", "launch.inspect", "--config=configs/student.py:tiny",
         "--mesh=data=2,fsdp=1"], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert lines[0]["module"] == "student" and lines[0]["params"] > 0
    memory = lines[1]
    assert memory["mesh"] == {"data": 2, "fsdp": 1} and memory["global_batch"] == 8
    assert 0 < memory["memory_gib"]["peak"] < 4
