"""Fixtures shared by the test files (the helpers they use: helpers.py)."""

import pytest

from dpiqa_jax import scorer

from helpers import make_student_bundle, make_teacher_bundle


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return make_student_bundle(tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def student(student_dir):
    return scorer.Scorer.load(student_dir, batch_size=2)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return make_teacher_bundle(tmp_path_factory.mktemp("teacher"))

