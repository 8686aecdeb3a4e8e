"""The packaged-photo IQA set: full-reference labels, half distortions, splits by photograph."""

import io

import numpy as np
import pytest
from PIL import Image

from dpiqa_jax import demo_data

SIDE = 48  # the smallest multiple of 16 that three-scale SSIM accepts: fast


def _pixels(record: demo_data.DemoRecord) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(record.image)), np.float32)


def test_records_cover_every_photo_distortion_and_level():
    records = demo_data.make_demo_records(side=SIDE)
    photos = {r.photo for r in records}
    assert len(photos) == 19  # 17 scikit-image photos, its stereo motorcycle, Grace Hopper
    per_photo = 1 + len(demo_data.DISTORTIONS) * demo_data.LEVELS
    assert len(records) == len(photos) * per_photo
    assert len({r.name for r in records}) == len(records)
    sample = Image.open(io.BytesIO(records[1].image))
    assert sample.size == (SIDE, SIDE) and sample.mode == "RGB"
    assert all(0.0 <= r.mos <= 100.0 for r in records)


def test_labels_are_the_full_reference_quality_against_the_pristine_photo():
    records = [r for r in demo_data.make_demo_records(side=SIDE) if r.photo == "astronaut"]
    pristine = Image.open(io.BytesIO(records[0].image))
    assert records[0].mos == 100.0
    for record in records[1:]:
        distorted = Image.open(io.BytesIO(record.image))
        assert record.mos == pytest.approx(demo_data.full_reference_quality(pristine, distorted))
        assert record.mos < 100.0


def test_stronger_degradation_lowers_the_label_and_the_scale_spans_distortions():
    records = [r for r in demo_data.make_demo_records(side=SIDE) if r.photo == "astronaut"]
    pristine = _pixels(records[0])
    for distortion in demo_data.DISTORTIONS:
        graded = sorted((r for r in records if r.distortion == distortion), key=lambda r: r.level)
        errors = [np.abs(_pixels(r) - pristine).mean() for r in graded]
        assert errors == sorted(errors), distortion
        assert [r.mos for r in graded] == sorted((r.mos for r in graded), reverse=True), distortion
    # One scale across kinds: the mildest level of any distortion beats the harshest of any.
    mildest = min(r.mos for r in records if r.level == 1)
    harshest = max(r.mos for r in records if r.level == demo_data.LEVELS)
    assert mildest > harshest


def test_full_reference_quality_refuses_images_too_small_for_its_scales():
    small = Image.new("RGB", (demo_data.MIN_SIDE - 1, demo_data.MIN_SIDE - 1))
    with pytest.raises(ValueError, match="too small"):
        demo_data.full_reference_quality(small, small)


@pytest.mark.parametrize("half", demo_data.HALVES)
def test_half_distorted_changes_one_half_only(half):
    image = demo_data.packaged_photos(SIDE)["astronaut"]
    result = np.asarray(demo_data.half_distorted(image, "noise", 3, half,
                                                 np.random.default_rng(0)), np.int32)
    original = np.asarray(image, np.int32)
    distorted_cols = slice(0, SIDE // 2) if half == "left" else slice(SIDE // 2, SIDE)
    clean_cols = slice(SIDE // 2, SIDE) if half == "left" else slice(0, SIDE // 2)
    assert np.array_equal(result[:, clean_cols], original[:, clean_cols])
    assert np.abs(result[:, distorted_cols] - original[:, distorted_cols]).mean() > 5.0


def test_split_by_photo_is_disjoint_and_deterministic():
    records = demo_data.make_demo_records(side=SIDE)
    parts = demo_data.split_by_photo(records, test_photos=4, val_photos=3, seed=3)
    photo_sets = {k: {r.photo for r in v} for k, v in parts.items()}
    assert len(photo_sets["test"]) == 4 and len(photo_sets["val"]) == 3
    assert not photo_sets["test"] & photo_sets["train"]
    assert not photo_sets["val"] & (photo_sets["train"] | photo_sets["test"])
    again = demo_data.split_by_photo(records, test_photos=4, val_photos=3, seed=3)
    assert [r.name for r in again["test"]] == [r.name for r in parts["test"]]
    other = demo_data.split_by_photo(records, test_photos=4, val_photos=3, seed=4)
    assert {r.photo for r in other["test"]} != photo_sets["test"]


def test_tiles_give_more_views_of_large_photographs_and_never_enlarge_small_ones():
    views = demo_data.photo_views(SIDE, tiles=2)
    per_photo = {}
    for photo, view in views:
        per_photo.setdefault(photo, []).append(view)
    assert sorted(per_photo["astronaut"]) == ["r0c0", "r0c1", "r1c0", "r1c1"]
    # text is 172 pixels high: two tiles of 96 would need 192, so it keeps its one view.
    assert [view for photo, view in demo_data.photo_views(96, tiles=2) if photo == "text"] == [
        "r0c0"]
    assert all(image.size == (SIDE, SIDE) for image in views.values())
    # The tiles are the quarters of the central square at twice the side.
    square = demo_data.packaged_photos(2 * SIDE)["astronaut"]
    np.testing.assert_array_equal(np.asarray(views[("astronaut", "r1c0")]),
                                  np.asarray(square)[SIDE:, :SIDE])


def test_every_view_is_labelled_against_its_own_pristine_tile():
    records = [r for r in demo_data.make_demo_records(side=SIDE, tiles=2)
               if r.photo == "astronaut"]
    assert {r.view for r in records} == {"r0c0", "r0c1", "r1c0", "r1c1"}
    pristine = {r.view: Image.open(io.BytesIO(r.image)) for r in records if r.level == 0}
    for record in records[1:6]:
        distorted = Image.open(io.BytesIO(record.image))
        assert record.mos == pytest.approx(
            demo_data.full_reference_quality(pristine[record.view], distorted))


def test_tiles_must_be_positive():
    with pytest.raises(ValueError, match="tiles must be at least 1"):
        demo_data.photo_views(SIDE, tiles=0)
