"""Crafted dataset copies: names leaving the image folder, lying numbers, undecodable label files.

Each case is built from the miniature official layouts of `helpers` with one edit, and asserts
the error type and that the message names the label file (and line) and the offending value.
"""

import os
import re
from pathlib import Path

import pytest

from dpiqa_jax.data import builders

import helpers


def _build(dataset: str, layout: helpers.Layout, tmp_path: Path, **overrides):
    return builders.build(dataset, tmp_path / "data", layout.manual_dir,
                          helpers.mini_config(dataset, layout, **overrides))


def _assert_refused(message: str, dataset: str, layout: helpers.Layout, tmp_path: Path,
                    **overrides) -> None:
    """The build fails with a ValueError that contains `message` verbatim."""
    with pytest.raises(ValueError, match=re.escape(message)):
        _build(dataset, layout, tmp_path, **overrides)


def _edit_csv_cell(csv_path: Path, line: int, column: str, value: str) -> None:
    """Sets `column` of the row on `line` (1-based, the header is line 1) to `value`."""
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    index = lines[0].split(",").index(column)
    cells = lines[line - 1].split(",")
    cells[index] = value
    lines[line - 1] = ",".join(cells)
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _folder_with_name(tmp_path: Path, name: str) -> helpers.Layout:
    """An iqa_folder copy whose second row names `name` as its image."""
    layout = helpers.make_iqa_folder(tmp_path / "mine")
    _edit_csv_cell(layout.manual_dir / "labels.csv", 2, "filename", name)
    return layout


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["../secret.jpg", "sub/../../secret.jpg", "/etc/passwd",
                                  "C:\\secret.jpg", "..\\secret.jpg"])
def test_a_name_leaving_the_image_folder_is_refused(tmp_path, name):
    layout = _folder_with_name(tmp_path, name)
    (layout.manual_dir / "secret.jpg").write_bytes(helpers.encoded_image(0))
    csv_path = layout.manual_dir / "labels.csv"
    _assert_refused(f"{csv_path}:2: image name {name!r} leaves the image folder",
                    "iqa_folder", layout, tmp_path)


@pytest.mark.parametrize("target", ["outside", "/dev/zero"])
def test_a_symlink_pointing_outside_the_image_folder_is_refused(tmp_path, target):
    layout = _folder_with_name(tmp_path, "link.jpg")
    if target == "outside":
        target = tmp_path / "outside.jpg"
        target.write_bytes(helpers.encoded_image(0))
    os.symlink(target, layout.image_root / "link.jpg")
    csv_path = layout.manual_dir / "labels.csv"
    _assert_refused(f"{csv_path}:2: image 'link.jpg' is a link to {Path(target).resolve()}, "
                    f"outside the image folder", "iqa_folder", layout, tmp_path)


def test_a_symlink_inside_the_image_folder_is_kept(tmp_path):
    layout = _folder_with_name(tmp_path, "link.jpg")
    os.symlink(layout.image_root / "sub" / "photo_0.jpg", layout.image_root / "link.jpg")
    builder = _build("iqa_folder", layout, tmp_path)
    assert "link.jpg" in builder.info.metadata["names"]


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("column, value, message", [
    ("c_total", "100.5", "c_total: expected a whole number, got '100.5'"),
    ("c_total", "0", "c_total: '0' is not a finite number in [1.0, inf]"),
    ("SD", "-0.2", "SD: '-0.2' is not a finite number in [0.0, inf]"),
    ("SD", "nan", "SD: 'nan' is not a finite number"),
    ("MOS", "7.5", "MOS: '7.5' is not a finite number in [1.0, 5.0]"),
    ("MOS_zscore", "inf", "MOS_zscore: 'inf' is not a finite number"),
    ("MOS_zscore", "abc", "MOS_zscore: expected a number, got 'abc'"),
])
def test_koniq_numbers_are_parsed_and_range_checked(tmp_path, column, value, message):
    layout = helpers.make_koniq10k(tmp_path / "koniq")
    csv_path = layout.manual_dir / "koniq10k_scores_and_distributions.csv"
    _edit_csv_cell(csv_path, 3, column, value)
    _assert_refused(f"{csv_path}:3 {message}",
                    "koniq10k", layout, tmp_path)


@pytest.mark.parametrize("dataset, label_file, column, value, message", [
    ("agiqa3k", "data.csv", "std_quality", "-1", "std_quality: '-1' is not a finite number"),
    ("agiqa3k", "data.csv", "mos_align", "9", "mos_align: '9' is not a finite number in [0.0, "
                                              "5.0]"),
    ("kadid10k", "dmos.csv", "var", "-0.5", "var: '-0.5' is not a finite number in [0.0, inf]"),
    ("flive", "labels_image.csv", "mos", "120", "MOS 120.0 is outside the dataset's native "
                                                "range"),
])
def test_csv_numbers_are_range_checked(tmp_path, dataset, label_file, column, value, message):
    layout = helpers.MAKERS[dataset](tmp_path / dataset)
    csv_path = layout.manual_dir / label_file
    # agiqa3k's prompt holds a quoted comma: split the row on commas outside quotes.
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    cells = re.split(r',(?=(?:[^"]*"[^"]*")*[^"]*$)', lines[1])
    cells[header.index(column)] = value
    lines[1] = ",".join(cells)
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        _build(dataset, layout, tmp_path)
    assert str(info.value).startswith(f"{csv_path}:2") and message in str(info.value)


def test_spaq_attributes_are_range_checked(tmp_path):
    layout = helpers.make_spaq(tmp_path / "spaq")
    path = layout.manual_dir / "Annotations" / "MOS and Image attribute scores.xlsx"
    helpers.write_spaq_xlsx(path, [("00001.jpg", 30.0, 10.0, 20.0, 150.0, 40.0, 50.0),
                                   ("00002.jpg", 50.0, 1.0, 2.0, 3.0, 4.0, 5.0),
                                   ("00003.jpg", 70.0, 1.0, 2.0, 3.0, 4.0, 5.0)])
    _assert_refused(f"{path} row 2 Contrast: 150 is not a finite number in [0.0, 100.0]",
                    "spaq", layout, tmp_path)


def test_live_challenge_negative_std_is_named(tmp_path):
    manual = tmp_path / "clive"
    layout = helpers.make_live_challenge(manual)
    helpers.write_clive_mats(manual, sorted(layout.expected), [20.0, 45.0, 70.0],
                             [10.0, -3.0, 12.0])
    stds = manual / "Data" / "AllStdDev_release.mat"
    _assert_refused(f"{stds} entry 9: -3.0 is not a finite number", "live_challenge", layout,
                    tmp_path)


def test_an_unreadable_mat_file_is_named(tmp_path):
    manual = tmp_path / "clive"
    layout = helpers.make_live_challenge(manual)
    (manual / "Data" / "AllMOS_release.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(20))
    _assert_refused(f"{manual / 'Data' / 'AllMOS_release.mat'}: not a readable MATLAB file",
                    "live_challenge", layout, tmp_path)


def test_an_unreadable_xlsx_is_named(tmp_path):
    layout = helpers.make_spaq(tmp_path / "spaq")
    path = layout.manual_dir / "Annotations" / "MOS and Image attribute scores.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a workbook")
    _assert_refused(f"{path}: not a readable .xlsx workbook",
                    "spaq", layout, tmp_path)


# --------------------------------------------------------------------------- label files


def test_a_label_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    layout = helpers.make_flive(tmp_path / "flive")
    csv_path = layout.manual_dir / "labels_image.csv"
    lines = csv_path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"blur", "blür".encode("latin-1"))
    csv_path.write_bytes(b"\n".join(lines))
    _assert_refused(f"{csv_path}:3: not UTF-8 text (byte b'\\xfc'",
                    "flive", layout, tmp_path)


def test_a_label_file_without_rows_is_named(tmp_path):
    layout = helpers.make_iqa_folder(tmp_path / "mine")
    csv_path = layout.manual_dir / "labels.csv"
    csv_path.write_text("filename,mos\n", encoding="utf-8")
    _assert_refused(f"{csv_path}: no rows after the header",
                    "iqa_folder", layout, tmp_path, expected_count=None)


def test_a_nul_byte_in_a_name_is_named(tmp_path):
    layout = helpers.make_iqa_folder(tmp_path / "mine")
    csv_path = layout.manual_dir / "labels.csv"
    csv_path.write_text(csv_path.read_text() + "x\0.png,1,1\n", encoding="utf-8")
    _assert_refused(f"{csv_path}:5: image name 'x\\x00.png' is not a file name",
                    "iqa_folder", layout, tmp_path, expected_count=None)


def test_no_readable_image_is_an_error_naming_them(tmp_path):
    layout = helpers.make_iqa_folder(tmp_path / "mine")
    for name in layout.expected:
        (layout.image_root / name).write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"iqa_folder: none of the 3 labelled image\(s\) could be "
                                         r"read: photo_1.png"):
        _build("iqa_folder", layout, tmp_path, skip_bad_images=True)


def test_live_challenge_without_test_images_is_named(tmp_path):
    manual = tmp_path / "clive"
    layout = helpers.make_live_challenge(manual)
    helpers.write_clive_mats(manual, [], [], [])  # only the 7 training images
    _assert_refused(f"live_challenge: the label file(s) in {manual} list no images",
                    "live_challenge", layout, tmp_path, expected_count=None)


def test_a_field_over_the_csv_limit_is_named(tmp_path):
    layout = helpers.make_iqa_folder(tmp_path / "mine")
    csv_path = layout.manual_dir / "labels.csv"
    csv_path.write_text(csv_path.read_text() + "x" * 200_000 + ".png,1,1\n", encoding="utf-8")
    _assert_refused(f"{csv_path}:5: malformed CSV (field larger",
                    "iqa_folder", layout, tmp_path, expected_count=None)


def test_a_symlink_loop_is_named(tmp_path):
    layout = _folder_with_name(tmp_path, "loop.jpg")
    os.symlink(layout.image_root / "loop.jpg", layout.image_root / "loop.jpg")
    csv_path = layout.manual_dir / "labels.csv"
    _assert_refused(f"{csv_path}:2: image 'loop.jpg' cannot be resolved",
                    "iqa_folder", layout, tmp_path)
