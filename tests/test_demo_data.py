"""The packaged-photo IQA set: labels follow the degradation, splits never share a photo."""

import io

import numpy as np
from PIL import Image

from dpiqa_jax import demo_data


def test_records_cover_every_photo_distortion_and_level():
    records = demo_data.make_demo_records(side=32)
    photos = {r.photo for r in records}
    assert len(photos) == 15
    per_photo = 1 + len(demo_data.DISTORTIONS) * demo_data.LEVELS
    assert len(records) == len(photos) * per_photo
    assert len({r.name for r in records}) == len(records)
    sample = Image.open(io.BytesIO(records[1].image))
    assert sample.size == (32, 32) and sample.mode == "RGB"


def test_stronger_degradation_moves_further_from_the_pristine_image():
    records = [r for r in demo_data.make_demo_records(side=64) if r.photo == "astronaut"]
    pristine = np.asarray(Image.open(io.BytesIO(records[0].image)), np.float32)
    for distortion in demo_data.DISTORTIONS:
        graded = sorted((r for r in records if r.distortion == distortion), key=lambda r: r.level)
        errors = [np.abs(np.asarray(Image.open(io.BytesIO(r.image)), np.float32) - pristine).mean()
                  for r in graded]
        assert errors == sorted(errors), distortion
        assert [r.mos for r in graded] == sorted((r.mos for r in graded), reverse=True)


def test_split_by_photo_is_disjoint_and_deterministic():
    records = demo_data.make_demo_records(side=16)
    parts = demo_data.split_by_photo(records, test_photos=4, val_photos=2, seed=3)
    photo_sets = {k: {r.photo for r in v} for k, v in parts.items()}
    assert len(photo_sets["test"]) == 4 and len(photo_sets["val"]) == 2
    assert not photo_sets["test"] & photo_sets["train"]
    assert not photo_sets["val"] & (photo_sets["train"] | photo_sets["test"])
    again = demo_data.split_by_photo(records, test_photos=4, val_photos=2, seed=3)
    assert [r.name for r in again["test"]] == [r.name for r in parts["test"]]
